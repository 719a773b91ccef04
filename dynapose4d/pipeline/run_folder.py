"""The run folder: RUN/manifest.json (read and written atomically), RUN/.lock (one process writes a run folder at a
time), what an export is made from, the videos of the finished stages, and starting a run folder from another's
finished stages.

The manifest's fields are described in `dynapose4d.pipeline.runner` (and docs/run-folder.md).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import atomic_folder, write_json

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
EXPORT_DIR = "export"  # RUN/export: the outputs for other tools (dynapose4d.export)
LOCK = ".lock"  # RUN/.lock: which process is writing the run folder (`run_lock`)
LOCK_REFRESH = 30.0  # seconds between the holder's touches of its lock
LOCK_STALE = 300.0  # a lock untouched this long was left by a process that is gone, on whatever machine


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


@contextmanager
def run_lock(run_dir: str | Path, command: str | None = None) -> Iterator[str | None]:
    """Hold RUN/.lock (made with the folder if needed) while this process writes the run folder; yields a note when
    it took over a lock left behind, else None. A lock held by another process is an InputError naming it and
    what to do. A lock is left behind when its process was killed: on this machine that is seen at once (its
    process id is not running), on another machine (a shared file system) once it has not been touched for
    `LOCK_STALE` seconds; the holder touches it every `LOCK_REFRESH` seconds."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(), "command": command}
    note = None
    if not _create_lock(path, me):
        holder, age = _read_lock(path)
        if holder is not None and not _lock_left_behind(holder, age):
            raise InputError(f"{run_dir}: in use by another dynapose4d process ({_describe(holder)}); wait for it "
                             f"to end, or delete {path} if that process is gone")
        if holder is not None:
            path.unlink(missing_ok=True)
        if not _create_lock(path, me):  # another process took the left-behind lock first
            raise InputError(f"{run_dir}: in use by another dynapose4d process ({_describe(_read_lock(path)[0])})")
        if holder is not None:  # (None: its holder removed it meanwhile)
            note = f"note: took over {path}, left behind by {_describe(holder)}"
    stop = threading.Event()
    beat = threading.Thread(target=_touch_until, args=(path, stop), name="dynapose4d-lock", daemon=True)
    beat.start()
    try:
        yield note
    finally:
        stop.set()
        beat.join()
        if (_read_lock(path)[0] or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


def _create_lock(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
    except BaseException:  # e.g. a full disk: no empty lock left to hold the folder for LOCK_STALE seconds
        path.unlink(missing_ok=True)
        raise
    return True


def _read_lock(path: Path) -> tuple[dict[str, Any] | None, float]:
    """(the holder's record, seconds since the lock was last touched); (None, 0) when there is no lock. A record
    that cannot be read (being written) reads as an unknown holder."""
    age = 0.0
    try:
        age = time.time() - path.stat().st_mtime
        data = json.loads(path.read_text())
        return (data if isinstance(data, dict) else {}), age
    except FileNotFoundError:
        return None, 0.0
    except (OSError, ValueError):
        return {}, age


def _lock_left_behind(holder: dict[str, Any], age: float) -> bool:
    if age > LOCK_STALE:
        return True
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:  # running, as another user
        return False
    return False


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "unknown"
    return f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}"


def _touch_until(path: Path, stop: threading.Event) -> None:
    while not stop.wait(LOCK_REFRESH):
        try:
            os.utime(path)
        except OSError:  # removed (the run folder of a failed start, or by hand): nothing to keep fresh
            pass


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
