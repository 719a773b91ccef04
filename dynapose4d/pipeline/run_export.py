"""RUN/export, the run's files for other tools (`dynapose4d.export`), kept in step with the dynamic stage's output:
dropped when that output changes, rebuilt after the dynamic stage, listed in the manifest's "export" record and
logged to W&B as an Artifact; and the `dynapose4d export` command that rewrites it.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from dynapose4d.core.errors import InputError
from dynapose4d.export import DEFAULT_FORMATS, ExportConfig, export_files, export_run, export_settings_problem
from dynapose4d.pipeline.config import load_run_config
from dynapose4d.pipeline.run_folder import EXPORT_DIR, export_source, now_iso, read_manifest, run_lock, write_manifest
from dynapose4d.stages import logger as dlog


def drop_stale_export(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Remove RUN/export and its manifest record when they were not made from the dynamic stage's current
    output (it is about to rerun, was marked stale, or is not done): nothing stale stays behind."""
    rec = manifest.get("export")
    if rec is not None and rec.get("source") == export_source(manifest) and rec.get("source") is not None:
        return
    manifest.pop("export", None)
    shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)


def export_after_run(run_dir: Path, manifest: dict[str, Any], wandb_cfg: Any, echo: Callable[[str], None],
                     cfg: ExportConfig | None = None) -> None:
    """After the dynamic stage: RUN/export/ as the run config's `export` section says (`cfg`; None: its defaults),
    listed in the manifest and logged to W&B as an Artifact; kept when it was made from the same dynamic output
    with the same settings. A failure is recorded and reported, not raised: the stages' results stand and
    `dynapose4d export RUN` retries."""
    cfg = cfg or ExportConfig()
    source = export_source(manifest)
    old = manifest.get("export")
    if source is None:
        return
    if not cfg.formats:  # none asked for: none kept
        if manifest.pop("export", None) is not None:
            write_manifest(run_dir, manifest)
        shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)
        return
    settings = export_settings(cfg)
    if (old and old.get("status") == "done" and old.get("source") == source
            and old.get("settings") == settings  # made with these settings (an earlier version recorded none)
            and set(cfg.formats) <= set(old.get("formats", []))  # and every format written (or tried and noted)
            and all((run_dir / EXPORT_DIR / f).is_file() for f in old.get("files", []))):
        echo(f"[export] up to date: {run_dir / EXPORT_DIR}")
        return
    shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)  # RUN/export holds what the section asks for, no more
    try:
        record = export_run(run_dir, run_dir / EXPORT_DIR, formats=list(cfg.formats), mesh_level=cfg.mesh_level,
                            mesh_resolution=cfg.mesh_resolution, mesh_texture=cfg.mesh_texture)
        record_export(run_dir, manifest, record, wandb_cfg, settings)
    except Exception as e:  # noqa: BLE001 - reported in the manifest and on the console
        manifest["export"] = {"status": "failed", "source": source, "error": f"{type(e).__name__}: {e}",
                              "ended": now_iso()}
        write_manifest(run_dir, manifest)
        echo(f"[export] failed ({type(e).__name__}: {e}); retry with `dynapose4d export {run_dir}`")
        return
    for note in record.get("notes", []):
        echo(f"[export] {note}")
    echo(f"[export] {run_dir / EXPORT_DIR}: {len(manifest['export']['files'])} files "
         f"({', '.join(sorted(record['outputs']))})")


def export_settings(cfg: ExportConfig) -> dict[str, Any]:
    """The settings an export was made with, as the manifest's export record keeps them."""
    return {"formats": sorted(cfg.formats), "mesh_level": float(cfg.mesh_level),
            "mesh_resolution": int(cfg.mesh_resolution), "mesh_texture": int(cfg.mesh_texture)}


def record_export(run_dir: str | Path, manifest: dict[str, Any], record: dict[str, Any], wandb_cfg: Any,
                  settings: dict[str, Any] | None = None) -> None:
    """List an export of RUN/export in the manifest ("export": status, files, up axes, source, and the
    `settings` it was made with when they are the run config's) and log it to W&B (`logging.log_export`) when the
    run's config enables W&B."""
    run_dir = Path(run_dir)
    files = export_files(record)
    manifest["export"] = {
        "status": "done", "dir": EXPORT_DIR, "source": export_source(manifest), "files": files,
        "up": {k: v["up"] for k, v in record["outputs"].items() if "up" in v}, "ended": now_iso(),
        "formats": sorted({*record["outputs"], *record.get("skipped", [])}),  # written, or tried and noted
        **({"settings": settings} if settings is not None else {}),
    }
    write_manifest(run_dir, manifest)
    name = dlog.log_export(run_dir, wandb_cfg, run_dir / EXPORT_DIR, files,
                           metadata={"up": manifest["export"]["up"], "fps": record.get("fps")})
    if name:
        manifest["export"]["wandb_artifact"] = name
        write_manifest(run_dir, manifest)


def export_cli(args: argparse.Namespace) -> int:
    """`dynapose4d export RUN [--format ...] [--up +y|-y|+z] [--out DIR] [--mesh-level L] [--mesh-resolution R]
    [--mesh-texture N]`:
    rewrite a run's exported outputs.
    Into RUN/export (the default) it also updates the manifest's "export" record and the W&B artifact."""
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    out = Path(args.out) if args.out else run_dir / EXPORT_DIR
    try:  # the run's export section, which the options override
        run_cfg = load_run_config(run_dir) if (run_dir / "config.yaml").is_file() else None
    except InputError:
        run_cfg = None
    section = run_cfg.export if run_cfg is not None else ExportConfig()
    if export_settings_problem(section):  # an edited config.yaml: its defaults, as for a run without one
        section = ExportConfig()
    formats = args.format or (None if sorted(section.formats) == sorted(DEFAULT_FORMATS) else section.formats)
    picked = {k: getattr(args, k, None) for k in ("mesh_level", "mesh_resolution", "mesh_texture")}
    picked = {k: getattr(section, k) if v is None else v for k, v in picked.items()}
    into_run = out.resolve() == (run_dir / EXPORT_DIR).resolve()
    with run_lock(run_dir, "dynapose4d export") if into_run else nullcontext() as took_over:  # no run writing it
        if took_over:
            print(took_over)
        record = export_run(run_dir, out, up=args.up, formats=formats, **picked)
        manifest = read_manifest(run_dir)
        if manifest is not None and into_run:
            same = not args.format and args.up is None and all(picked[k] == getattr(section, k) for k in picked)
            record_export(run_dir, manifest, record, run_cfg.wandb if run_cfg is not None else None,
                          export_settings(section) if same else None)  # other settings: rebuilt after a rerun
    files = export_files(record)
    for note in record.get("notes", []):
        print(note)
    print(f"wrote {out}: {len(files)} files ({', '.join(sorted(record['outputs']))})")
    return 0
