"""W&B offline: one run per stage (group = run name, job_type = stage), the resolved config, per-step losses,
media and summary metrics, read back from RUN/wandb/offline-run-*/run-*.wandb."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import _fakes
import pytest

from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.runner import StageRunner


def read_wandb_records(path: Path):
    """Records of an offline .wandb file (leveldb-log framing: 7-byte header, 32 KiB blocks, 7-byte record
    headers crc/len/type; FULL=1, FIRST=2, MIDDLE=3, LAST=4), parsed as wandb's protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        space = block - pos % block
        if space < 7:
            pos += space
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:  # zero padding up to the block end
            pos += space - 7
            continue
        if pos + n > len(data):  # a record still being written
            return
        buf += data[pos:pos + n]
        pos += n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


def summarize_run(run_dir: Path, wait: float = 20.0) -> dict:
    """{run: {group, job_type, name}, config: {...}, history: [{key: value}], summary: {key: value}}.
    wandb-core may still be flushing the file right after `finish()`: wait (up to `wait` s) for its exit record."""
    deadline = time.time() + wait
    while True:
        out = _summarize(run_dir)
        if out.get("exited") or time.time() > deadline:
            return out
        time.sleep(0.25)


def _summarize(run_dir: Path) -> dict:
    out: dict = {"history": [], "summary": {}, "config": {}}
    files = list(run_dir.glob("run-*.wandb"))
    if not files:
        return out
    wandb_file = files[0]
    def items(updates):
        return {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}

    for rec in read_wandb_records(wandb_file):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"group": rec.run.run_group, "job_type": rec.run.job_type, "name": rec.run.display_name}
            out["config"].update({u.key: json.loads(u.value_json) for u in rec.run.config.update})
        elif kind == "config":
            out["config"].update(items(rec.config.update))
        elif kind == "history":
            out["history"].append(items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(items(rec.summary.update))
        elif kind == "exit":
            out["exited"] = True
    return out


@pytest.fixture(autouse=True)
def _reset():
    _fakes.CALLS.clear()
    _fakes.OPTS.clear()


def test_offline_runs_have_config_losses_media_and_summary(tmp_path):
    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "myrun"
    ov = _fakes.fake_overrides(4)
    ov = [o for o in ov if not o.startswith("wandb.")] + ["wandb.mode=offline", "wandb.tags=[unit]"]
    StageRunner(scene, run, load_config(None, ov), stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()

    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 4  # one per stage, and the export's (RUN/export as an Artifact: tests/test_export.py)
    by_stage = {}
    for r in runs:
        s = summarize_run(r)
        by_stage[s["run"]["job_type"]] = (r, s)
    assert set(by_stage) == {"static", "cape", "dynamic", "export"}
    _r, s = by_stage.pop("export")
    assert s["run"]["group"] == "myrun" and s["run"]["name"] == "myrun-export"
    for stage, (_r, s) in by_stage.items():
        assert s["run"]["group"] == "myrun" and s["run"]["name"] == f"myrun-{stage}"
        assert s["config"]["stage"] == stage
        assert s["config"]["static"]["steps"] == 4 and s["config"]["trainer"]["accelerator"] == "cpu"
        losses = [h[f"{stage}/loss"] for h in s["history"] if f"{stage}/loss" in h]
        assert len(losses) == 4 and losses[-1] < losses[0]  # per-step losses, falling
    r, s = by_stage["static"]
    assert s["summary"]["static/psnr"] == 30.5
    assert list((r / "files" / "media" / "images").rglob("*.png"))
    assert any("static/render" in k for h in s["history"] for k in h)
    r, s = by_stage["dynamic"]
    assert list((r / "files" / "media" / "videos").rglob("*.gif"))
    assert any(h.get("dynamic/orbit/_type") == "videos" for h in s["history"])
    assert s["summary"]["dynamic/psnr"] == pytest.approx(28.14159, abs=1e-4)


def test_ddp_spawn_stage_logs_once_on_rank_zero(tmp_path):
    """The cape and dynamic fakes train with 2 CPU processes (ddp_spawn, gloo); static stays on one device.
    The W&B run of each stage is attached from the spawned rank-zero process; files are written once."""
    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "ddp"
    ov = [o for o in _fakes.fake_overrides(3) if not o.startswith("wandb.")]
    ov += ["wandb.mode=offline", "trainer.devices=2", "trainer.strategy=ddp_spawn", "stages=[static,cape]"]
    m = StageRunner(scene, run, load_config(None, ov), stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    assert m["stages"]["cape"]["status"] == "done"
    steps = [json.loads(line)["step"] for line in (run / "cape" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # one writer
    runs = {summarize_run(r)["run"]["job_type"]: summarize_run(r) for r in (run / "wandb").glob("offline-run-*")}
    assert set(runs) == {"static", "cape"}
    assert len([h for h in runs["cape"]["history"] if "cape/loss" in h]) == 3
    assert runs["cape"]["summary"]["cape/pck"] == 0.9


def _no_key(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_online_without_a_key_or_a_network_logs_offline_with_one_warning(tmp_path, monkeypatch):
    """`wandb.mode=online` where it cannot work: W&B stopped the stage with a traceback (no API key) or blocked for
    90 s and then stopped it (no network). Now the runs are offline, the run finishes, and one warning says why."""
    import socket

    from dynapose4d.stages import logger

    logger.online_problem.cache_clear()
    logger._WARNED.clear()
    _no_key(monkeypatch, tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))  # a server that is there: reachable
    port = listener.getsockname()[1]
    try:
        assert logger.online_problem(f"http://127.0.0.1:{port}", False) == "no API key for 127.0.0.1 (`wandb " \
                                                                          "login`, or WANDB_API_KEY)"
        (tmp_path / "netrc").write_text(f"machine 127.0.0.1 login user password {'k' * 40}\n")
        monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # what `wandb login` writes
        logger.online_problem.cache_clear()
        assert logger.online_problem(f"http://127.0.0.1:{port}", False) is None
        assert logger.online_problem(f"http://127.0.0.1:{port}", True) is None
    finally:
        listener.close()
    logger.online_problem.cache_clear()
    assert logger.online_problem(f"http://127.0.0.1:{port}", True).startswith(f"cannot reach 127.0.0.1:{port} (")

    logger.online_problem.cache_clear()
    _no_key(monkeypatch, tmp_path)
    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    ov = [o for o in _fakes.fake_overrides(3) if not o.startswith("wandb.")] + ["wandb.mode=online"]
    with pytest.warns(UserWarning, match=r"W&B online mode: no API key for .*; logging offline under .*run/wandb "
                                         r"instead \(`wandb sync .*run/wandb/offline-run-\*` uploads it later\)") as w:
        StageRunner(scene, run, load_config(None, ov), stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    assert sum("W&B online mode" in str(x.message) for x in w) == 1  # once per run, not per stage
    assert len(list((run / "wandb").glob("offline-run-*"))) == 4  # the three stages' and the export's
