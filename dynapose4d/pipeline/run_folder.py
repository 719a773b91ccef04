"""The run folder: RUN/manifest.json (read and written atomically), what an export is made from, the videos of
the finished stages, and starting a run folder from another's finished stages.

The manifest's fields are described in `dynapose4d.pipeline.runner` (and docs/run-folder.md).
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import atomic_folder, write_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
EXPORT_DIR = "export"  # RUN/export: the outputs for other tools (dynapose4d.export)


def now_iso() -> str:
    """The local time now, ISO 8601 to the second with its UTC offset (the manifest's time stamps)."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The run folder's manifest, or None when it has none. A corrupt one is an InputError naming it."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(data, dict) or "stages" not in data:
        raise InputError(f"{path}: not a dynapose4d manifest (no 'stages')")
    return data


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Stamp `manifest["updated"]` and write RUN/manifest.json atomically."""
    manifest["updated"] = now_iso()
    write_json(Path(run_dir) / MANIFEST, manifest)


def export_source(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What an export is made from: the done dynamic stage's config hash and end time (None when not done)."""
    rec = manifest.get("stages", {}).get("dynamic")
    if not rec or rec.get("status") != "done":
        return None
    return {"config_hash": rec.get("config_hash"), "ended": rec.get("ended")}


def run_videos(run_dir: str | Path, manifest: dict[str, Any] | None = None) -> list[Path]:
    """The mp4 videos of a run's finished stages (gif twins left out; logs, media copies and W&B excluded)."""
    run_dir = Path(run_dir)
    manifest = manifest or read_manifest(run_dir) or {"stages": {}}
    out: list[Path] = []
    for name, rec in manifest["stages"].items():
        if rec.get("status") != "done" or not (run_dir / name).is_dir():
            continue
        out += sorted(p for p in (run_dir / name).rglob("*.mp4")
                      if not {"media", "logs", "checkpoints"} & set(p.relative_to(run_dir / name).parts[:-1]))
        gifs = [run_dir / p for p in rec.get("artifacts", {}).values() if str(p).endswith(".gif")]
        out += [g for g in gifs if g.with_suffix(".mp4") not in out]
    return out


def copy_finished_stages(src_run: str | Path, dst_run: str | Path) -> list[str]:
    """Start a new run folder from another run's finished stages (their folders and manifest records), so
    that `--resume` with a config that differs only in later stages skips them (experiments use this).
    The hashes decide on resume: a copied stage whose config differs is rerun as usual. Returns the stages."""
    src_run, dst_run = Path(src_run), Path(dst_run)
    m = read_manifest(src_run)
    if m is None:
        return []
    done = [s for s, r in m["stages"].items() if r.get("status") == "done"]
    if dst_run.exists() and any(dst_run.iterdir()):
        raise InputError(f"{dst_run}: exists and is not empty; cannot start it from {src_run}")
    with atomic_folder(dst_run) as tmp:
        for s in done:
            if (src_run / s).is_dir():
                shutil.copytree(src_run / s, tmp / s)
        new = {**m, "run_name": dst_run.name, "created": now_iso(), "copied_from": str(src_run),
               "stages": {s: m["stages"][s] for s in done}}
        write_manifest(tmp, new)
    return done
