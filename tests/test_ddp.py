"""Multi-device training of the cape and dynamic stages: 2 CPU processes (ddp_spawn, gloo) through the runner,
with the static stage on one device; and, where 2+ CUDA devices exist, `dynapose4d run` with DDP on GPUs
(Lightning re-launches the command for rank 1, which follows rank zero's plan)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.run_folder import read_manifest
from dynapose4d.pipeline.runner import StageRunner

ROOT = Path(__file__).resolve().parents[1]
DDP_CPU = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"]


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    from dynapose4d.data.synthetic import write_scene

    return write_scene("humanoid", tmp_path_factory.mktemp("ddp") / "scene", seed=0, num_frames=4, size=32)


def _run(scene, run, overrides, stages):
    cfg = load_config(ROOT / "configs" / "smoke.yaml", overrides + [f"stages=[{stages}]"])
    return StageRunner(scene, run, cfg, echo=lambda s: None).run()


def test_cape_stage_ddp_spawn_two_cpu_processes(tiny_scene, tmp_path):
    run = tmp_path / "run"
    m = _run(tiny_scene, run, DDP_CPU + ["cape.steps=4"], "static,cape")
    assert m["stages"]["cape"]["status"] == "done"
    assert json.loads((run / "cape" / "driving_keypoints.json").read_text())["points"]
    steps = [json.loads(x)["step"] for x in (run / "cape" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps))  # rank zero logged, once per step


def test_dynamic_stage_ddp_spawn_two_cpu_processes(tiny_scene, tmp_path):
    run = tmp_path / "run"
    ov = DDP_CPU + ["dynamic.steps=4", "dynamic.lambda_kml=0", "dynamic.orbit_frames=4"]
    m = _run(tiny_scene, run, ov, "static,dynamic")
    assert m["stages"]["static"]["status"] == m["stages"]["dynamic"]["status"] == "done"
    kp = json.loads((run / "dynamic" / "keypoints.json").read_text())
    assert len(kp["world"]) == 4
    steps = [json.loads(x)["step"] for x in (run / "dynamic" / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps))


def test_subprocess_ddp_rank_one_follows_rank_zero(tmp_path):
    """strategy=ddp re-launches the command for rank 1 when the first DDP stage starts (here on CPU, as on
    GPUs). Rank 1 must skip the finished static stage, join cape and dynamic, and never write the manifest."""
    import _fakes

    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    ov = _fakes.fake_overrides(3) + ["trainer.devices=2", "trainer.strategy=ddp"]
    args = json.dumps({"scene": str(scene), "run": str(run), "resume": False, "overrides": ov})
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = subprocess.run([sys.executable, str(ROOT / "tests" / "_fakes.py"), args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    calls = sorted((run / "calls.txt").read_text().split("\n")[:-1])
    assert calls == ["cape rank=0 resume=False", "cape rank=1 resume=False", "dynamic rank=0 resume=False",
                     "dynamic rank=1 resume=False", "static rank=0 resume=False"]
    m = read_manifest(run)
    assert {s: (r["status"], r["attempts"]) for s, r in m["stages"].items()} == {
        "static": ("done", 1), "cape": ("done", 1), "dynamic": ("done", 1)}


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_run_ddp_on_two_gpus(tiny_scene, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dynapose4d", "run", str(tiny_scene), "--out", str(run), "--config",
           str(ROOT / "configs" / "smoke.yaml"), "--set", "trainer.accelerator=gpu", "trainer.devices=2",
           "trainer.strategy=ddp", "cape.steps=4", "dynamic.steps=4"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ})
    assert p.returncode == 0, p.stderr[-3000:]
    m = read_manifest(run)
    assert all(m["stages"][s]["status"] == "done" for s in ("static", "cape", "dynamic"))
    assert m["stages"]["dynamic"]["attempts"] == 1  # rank 1 followed, it did not restart anything
