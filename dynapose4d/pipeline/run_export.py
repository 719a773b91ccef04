"""RUN/export, the run's files for other tools (`dynapose4d.export`), kept in step with the dynamic stage's output:
dropped when that output changes, rebuilt after the dynamic stage, listed in the manifest's "export" record and
logged to W&B as an Artifact; and the `dynapose4d export` command that rewrites it.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynapose4d.core.errors import InputError
from dynapose4d.export import DEFAULT_FORMATS, export_files, export_run
from dynapose4d.pipeline.config import load_run_config
from dynapose4d.pipeline.run_folder import EXPORT_DIR, export_source, now_iso, read_manifest, write_manifest
from dynapose4d.stages import logger as dlog


def drop_stale_export(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Remove RUN/export and its manifest record when they were not made from the dynamic stage's current
    output (it is about to rerun, was marked stale, or is not done): nothing stale stays behind."""
    rec = manifest.get("export")
    if rec is not None and rec.get("source") == export_source(manifest) and rec.get("source") is not None:
        return
    manifest.pop("export", None)
    shutil.rmtree(run_dir / EXPORT_DIR, ignore_errors=True)


def export_after_run(run_dir: Path, manifest: dict[str, Any], wandb_cfg: Any, echo: Callable[[str], None]) -> None:
    """After the dynamic stage: RUN/export/ (splat PLY sequence, skeleton glb and bvh, mesh glb, videos), listed
    in the manifest and logged to W&B as an Artifact; kept when it was made from the same dynamic output. A failure is
    recorded and reported, not raised: the stages' results stand and `dynapose4d export RUN` retries."""
    source = export_source(manifest)
    old = manifest.get("export")
    if source is None:
        return
    if (old and old.get("status") == "done" and old.get("source") == source
            and set(DEFAULT_FORMATS) <= set(old.get("formats", []))  # made by a version that wrote them all
            and all((run_dir / EXPORT_DIR / f).is_file() for f in old.get("files", []))):
        echo(f"[export] up to date: {run_dir / EXPORT_DIR}")
        return
    try:
        record = export_run(run_dir, run_dir / EXPORT_DIR)
        record_export(run_dir, manifest, record, wandb_cfg)
    except Exception as e:  # noqa: BLE001 - reported in the manifest and on the console
        manifest["export"] = {"status": "failed", "source": source, "error": f"{type(e).__name__}: {e}",
                              "ended": now_iso()}
        write_manifest(run_dir, manifest)
        echo(f"[export] failed ({type(e).__name__}: {e}); retry with `dynapose4d export {run_dir}`")
        return
    for note in record.get("notes", []):
        echo(f"[export] {note}")
    echo(f"[export] {run_dir / EXPORT_DIR}: {len(manifest['export']['files'])} files "
         "(splats/frame_*.ply, skeleton.glb, skeleton.bvh, mesh.glb, videos/)")


def record_export(run_dir: str | Path, manifest: dict[str, Any], record: dict[str, Any], wandb_cfg: Any) -> None:
    """List an export of RUN/export in the manifest ("export": status, files, up axes, source) and log it to
    W&B (`logging.log_export`) when the run's config enables W&B."""
    run_dir = Path(run_dir)
    files = export_files(record)
    manifest["export"] = {
        "status": "done", "dir": EXPORT_DIR, "source": export_source(manifest), "files": files,
        "up": {k: v["up"] for k, v in record["outputs"].items() if "up" in v}, "ended": now_iso(),
        "formats": sorted({*record["outputs"], *record.get("skipped", [])}),  # written, or tried and noted
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
    record = export_run(run_dir, out, up=args.up, formats=args.format, mesh_level=getattr(args, "mesh_level", None),
                        mesh_resolution=getattr(args, "mesh_resolution", None),
                        mesh_texture=getattr(args, "mesh_texture", None))  # absent: the defaults
    manifest = read_manifest(run_dir)
    if manifest is not None and out.resolve() == (run_dir / EXPORT_DIR).resolve():
        try:
            wandb_cfg = load_run_config(run_dir).wandb if (run_dir / "config.yaml").is_file() else None
        except InputError:
            wandb_cfg = None
        record_export(run_dir, manifest, record, wandb_cfg)
    files = export_files(record)
    for note in record.get("notes", []):
        print(note)
    print(f"wrote {out}: {len(files)} files ({', '.join(sorted(record['outputs']))})")
    return 0
