"""Runs on several devices: a launcher (Lightning's DDP subprocess launcher, torchrun, SLURM) starts the same
command once per rank. Rank zero plans the run and writes the manifest; every other rank follows it here: it joins
the stages rank zero is running or will run, waits for each to be done before joining the next, and never writes
the manifest.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynapose4d.pipeline.run_folder import MANIFEST, read_manifest

#: execute(stage, scene, manifest, resume, is_last): run one stage on this rank without writing anything.
FollowFn = Callable[[str, Any, dict[str, Any], bool, bool], None]


def rank() -> int:
    """Global rank of this process when a launcher (Lightning's DDP subprocess launcher, torchrun, SLURM) set it."""
    for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if k in os.environ:
            return int(os.environ[k])
    return 0


def follow(run_dir: Path, selected: Sequence[str], load_scene: Callable[[], Any], execute: FollowFn) -> dict[str, Any]:
    """Non-zero DDP rank started by a launcher that re-runs the command: join the `selected` stages rank zero is
    running or will run (status running/pending) through `execute`, in order; returns the last manifest read."""
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise RuntimeError(f"{run_dir}: rank {rank()} found no {MANIFEST}")
    scene = load_scene()
    todo = [n for n in selected if manifest["stages"].get(n, {}).get("status") in ("running", "pending")]
    for i, name in enumerate(todo):
        if i > 0:  # rank zero writes the previous stage's outputs after training: wait until it is done
            manifest = wait_until_done(run_dir, todo[i - 1])
        resume = bool(manifest["stages"][name].get("resume_from_checkpoint"))
        execute(name, scene, manifest, resume, name == todo[-1])
    return manifest


def wait_until_done(run_dir: Path, stage: str, poll: float = 0.5) -> dict[str, Any]:
    """The manifest once rank zero marked `stage` done (an error when it failed, or after
    $DYNAPOSE4D_FOLLOW_TIMEOUT seconds, 7200 by default)."""
    timeout = float(os.environ.get("DYNAPOSE4D_FOLLOW_TIMEOUT", "7200"))
    t0 = time.monotonic()
    while True:
        m = read_manifest(run_dir) or {"stages": {}}
        status = m["stages"].get(stage, {}).get("status")
        if status == "done":
            return m
        if status == "failed":
            raise RuntimeError(f"rank {rank()}: rank zero's stage '{stage}' failed; stopping")
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"rank {rank()}: waited {timeout:.0f} s for rank zero to finish '{stage}'")
        time.sleep(poll)
