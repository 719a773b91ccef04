"""RUN/.lock: one process writes a run folder at a time. A second `run` (or `export`) of a folder in use stops with
one line naming the process and leaves the folder as it was; a lock left by a killed run is taken over (at once on
this machine, after `LOCK_STALE` seconds from another); two runs started together into one new folder end with
one finished run. Fake stages (tests/_fakes.py) run real Lightning trainings of a few steps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import _fakes
import pytest

from dynapose4d.cli import main
from dynapose4d.core.errors import InputError
from dynapose4d.pipeline import run_folder
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.run_folder import LOCK, read_manifest, run_lock
from dynapose4d.pipeline.runner import StageRunner


@pytest.fixture
def scene(tmp_path):
    return _fakes.write_tiny_scene(tmp_path / "scene")


def _run(scene, run, resume=False, steps=3):
    lines: list[str] = []
    cfg = load_config(None, _fakes.fake_overrides(steps))
    manifest = StageRunner(scene, run, cfg, resume=resume, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    return manifest, lines


def _start(scene, run, resume=False, steps=40, sleep_cape="0.1") -> subprocess.Popen:
    return _fakes.start_pipeline(scene, run, _fakes.fake_overrides(steps), resume, cape=sleep_cape)


def _snapshot(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_folder_in_use_is_refused_then_a_killed_runs_lock_is_taken_over(scene, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(scene, run)
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and proc.poll() is None:
            m = read_manifest(run) if (run / "manifest.json").is_file() else None
            if m and m["stages"].get("cape", {}).get("status") == "running" and (run / "cape").is_dir():
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        holder = json.loads((run / LOCK).read_text())
        assert holder["pid"] == proc.pid and holder["host"] == socket.gethostname()

        # a second run of the folder (resumed, as a user would) is refused before it writes anything
        (run / "cape" / "checkpoints").mkdir(parents=True, exist_ok=True)
        before = {k: v for k, v in _snapshot(run).items() if not k.startswith("cape")}  # cape is training
        with pytest.raises(InputError, match=rf"in use by another dynapose4d process \(process {proc.pid} on "):
            _run(scene, run, resume=True)
        assert main(["run", str(scene), "--out", str(run), "--resume", "--config", "smoke"]) == 2
        assert main(["export", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 2 and err.count(f"process {proc.pid} on") == 2, err
        after = {k: v for k, v in _snapshot(run).items() if not k.startswith("cape")}
        assert after == before  # config, manifest, command.txt, static/ untouched
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert json.loads((run / LOCK).read_text())["pid"] == proc.pid  # left behind by the killed process

    manifest, lines = _run(scene, run, resume=True, steps=40)  # its process is gone: taken over at once
    assert any(f"took over {run / LOCK}, left behind by process {proc.pid}" in ln for ln in lines), lines
    assert all(manifest["stages"][s]["status"] == "done" for s in ("static", "cape", "dynamic"))
    assert not (run / LOCK).exists()


def test_two_runs_started_together_into_one_new_folder_end_as_one_finished_run(scene, tmp_path):
    run = tmp_path / "run"
    procs = [_start(scene, run, steps=5, sleep_cape="0.2") for _ in range(2)]
    results = [(p.wait(180), p.stderr.read().decode()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for rc, err in results if rc != 0).strip().splitlines()[-1]
    assert ("in use by another dynapose4d process" in loser or "run folder exists and is not empty" in loser
            or "another run wrote to it" in loser), loser
    manifest = read_manifest(run)
    assert all(manifest["stages"][s]["status"] == "done" for s in ("static", "cape", "dynamic"))
    assert (run / "config.yaml").exists() and not (run / LOCK).exists()


def _lock_file(run: Path, holder: dict, age: float = 0.0) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK).write_text(json.dumps(holder))
    t = time.time() - age
    os.utime(run / LOCK, (t, t))


def test_a_lock_from_another_machine_waits_until_it_is_stale(tmp_path):
    run = tmp_path / "run"
    other = {"pid": os.getpid(), "host": "node-17", "started": "2026-12-06T10:00:00+00:00"}
    _lock_file(run, other)
    with pytest.raises(InputError, match=r"in use by another dynapose4d process \(process \d+ on node-17, since "
                                         r"2026-12-06T10:00:00\+00:00\); wait for it to end, or delete .*\.lock"):
        with run_lock(run):
            pass
    _lock_file(run, other, age=run_folder.LOCK_STALE + 5)  # its holder stopped touching it: gone
    with run_lock(run, "cmd") as note:
        assert note is not None and "left behind by process" in note and "node-17" in note
        mine = json.loads((run / LOCK).read_text())
        assert mine["pid"] == os.getpid() and mine["command"] == "cmd"
    assert not (run / LOCK).exists()


def test_a_live_process_on_this_machine_holds_and_a_dead_one_does_not(tmp_path):
    run = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _lock_file(run, {"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"}, age=60)
        with pytest.raises(InputError, match=rf"process {sleeper.pid} on"):
            with run_lock(run):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    with run_lock(run) as note:  # the same lock, its process now gone
        assert note is not None and f"process {sleeper.pid}" in note
    (run / LOCK).write_text("{")  # being written by someone: held, by an unknown process
    with pytest.raises(InputError, match=r"in use by another dynapose4d process \(unknown\)"):
        with run_lock(run):
            pass


def test_the_lock_is_released_on_errors_and_kept_fresh_while_held(tmp_path, monkeypatch):
    run = tmp_path / "new" / "run"
    with pytest.raises(RuntimeError):
        with run_lock(run):
            assert (run / LOCK).is_file()
            raise RuntimeError("a stage failed")
    assert run.is_dir() and not (run / LOCK).exists()
    monkeypatch.setattr(run_folder, "LOCK_REFRESH", 0.05)
    with run_lock(run):
        old = time.time() - 100
        os.utime(run / LOCK, (old, old))
        time.sleep(0.3)
        assert time.time() - (run / LOCK).stat().st_mtime < 5  # touched by the holder's heartbeat
    assert not (run / LOCK).exists()
    assert not [t for t in threading.enumerate() if t.name == "dynapose4d-lock"]  # the heartbeat ended with it


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_that_wrote_while_this_one_loaded_its_scene_is_not_overwritten(scene, tmp_path, monkeypatch, resume):
    """Run B starts and finishes in the folder while run A is loading its scene (after A's look at the folder, before
    A takes the lock): A stops with one line and B's finished run stays as it was."""
    run = tmp_path / "run"
    if resume:
        _run(scene, run)
    load = StageRunner._load_scene
    calls = []

    def load_while_another_runs(self):
        if not calls:
            calls.append(1)
            cfg = load_config(None, _fakes.fake_overrides(3) + ["seed=7"])
            StageRunner(scene, run, cfg, resume=resume, stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
        return load(self)

    monkeypatch.setattr(StageRunner, "_load_scene", load_while_another_runs)
    before = _snapshot(run) if resume else None
    with pytest.raises(InputError, match=r"another run wrote to it while this one was loading the scene"
                       if resume else r"run folder exists and is not empty"):
        _run(scene, run, resume=resume)
    assert read_manifest(run)["seed"] == 7 and not (run / LOCK).exists()
    if resume:
        assert before != _snapshot(run)  # B reran (new seed); A changed nothing after it


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    import errno

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    run = tmp_path / "run"
    monkeypatch.setattr(run_folder.json, "dump", full)
    with pytest.raises(OSError, match="No space left"):
        with run_lock(run):
            pass
    assert not (run / LOCK).exists()  # an empty lock would have held the folder for LOCK_STALE seconds
    monkeypatch.undo()
    with run_lock(run) as note:
        assert note is None
