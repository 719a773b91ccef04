"""Experiments: the ablation machinery with fake stages (variants, shared upstream stages, tables, W&B table,
resume), the sweep file's agent command, and every file in experiments/ run on the real stages for a few steps."""

from __future__ import annotations

import csv
from pathlib import Path

import _fakes
import pytest
from test_wandb import summarize_run

from dynapose4d.cli import build_parser
from dynapose4d.pipeline.experiment_file import load_experiment, sweep_command_args
from dynapose4d.pipeline.experiments import run_experiment

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))
TINY = "synthetic:humanoid:0:4:32"  # 4 frames, 32 px


@pytest.fixture(autouse=True)
def _reset():
    _fakes.CALLS.clear()
    _fakes.OPTS.clear()


def test_ablation_with_fake_stages_shares_upstream_and_tabulates(tmp_path):
    ov = [o for o in _fakes.fake_overrides(2) if not o.startswith("wandb.")] + ["wandb.mode=offline"]
    lines: list[str] = []
    res = run_experiment(ROOT / "experiments" / "ablation_pose.yaml", tmp_path, overrides=ov, scenes=[TINY],
                         stages=_fakes.FAKE_STAGES, echo=lines.append)
    jobs = res["jobs"]
    assert [j.variant for j in jobs] == ["full", "no_kml", "no_scl", "no_pose"]
    assert all(j.status == "done" for j in jobs), [j.error for j in jobs]
    # static and cape ran once (the other variants started from copies); dynamic once per variant
    assert [s for s, _ in _fakes.CALLS] == ["static", "cape", "dynamic", "dynamic", "dynamic", "dynamic"]
    root = tmp_path / "ablation_pose"
    for j in jobs:
        assert (j.run_dir / "metrics.json").is_file() and j.metrics["stage"] == "dynamic"
        assert "dynamic.lambda_kml=0" in (j.run_dir / "command.txt").read_text() or j.variant in ("full", "no_scl")
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert [r["variant"] for r in rows] == ["full", "no_kml", "no_scl", "no_pose"] * 2 + ["no-motion baseline"]
    assert all(float(r["novel/psnr"]) > 0 for r in rows[:4])
    md = (root / "results.md").read_text()
    assert "| no_pose |" in md and "| no-motion baseline |" in md and res["table"] == md
    # the W&B table: its own offline run (job_type experiment) in the experiment's group
    runs = [summarize_run(r) for r in (root / "wandb").glob("offline-run-*")]
    assert len(runs) == 1 and runs[0]["run"]["job_type"] == "experiment"
    assert runs[0]["run"]["group"] == "ablation_pose"
    assert any(h.get("results/_type") == "table-file" for h in runs[0]["history"])
    assert list((root / "runs").glob("full-*/wandb/offline-run-*"))  # the variants' own W&B runs, grouped
    stage_run = summarize_run(next((root / "runs").glob("no_kml-*/wandb/offline-run-*")))
    assert stage_run["run"]["group"] == "ablation_pose"

    _fakes.CALLS.clear()  # rerunning the experiment resumes: nothing to do
    res = run_experiment(ROOT / "experiments" / "ablation_pose.yaml", tmp_path, overrides=ov, scenes=[TINY],
                         stages=_fakes.FAKE_STAGES, echo=lines.append)
    assert _fakes.CALLS == [] and all(j.status == "done" for j in res["jobs"])


def test_failing_variant_is_reported_and_others_finish(tmp_path):
    ov = _fakes.fake_overrides(2)
    _fakes.OPTS["dynamic"] = _fakes.FakeOpts(fail_at=0)
    res = run_experiment(ROOT / "experiments" / "ablation_pose.yaml", tmp_path, overrides=ov, scenes=[TINY],
                         variants=["full", "no_kml"], stages=_fakes.FAKE_STAGES, echo=lambda s: None)
    assert [j.status for j in res["jobs"]] == ["failed", "failed"]
    assert "fake failure" in res["jobs"][0].error
    assert "Failed: full on humanoid-0-4-32" in res["table"]


def test_sweep_command_is_a_valid_run_command_and_expands_to_a_grid():
    path = ROOT / "experiments" / "sweep_pal.yaml"
    import yaml

    data = yaml.safe_load(path.read_text())
    argv = sweep_command_args(data, {"dynamic.lambda_kml": 0.3, "dynamic.lambda_scl": 10.0})
    args = build_parser().parse_args(argv)  # what `wandb agent` runs, through our real parser
    assert args.func.__name__ == "_run" and args.scene == "synthetic:humanoid:0"
    assert args.out == "runs/sweep_pal/$WANDB_RUN_ID"  # expanded by `dynapose4d run`
    assert args.overrides[-2:] == ["dynamic.lambda_kml=0.3", "dynamic.lambda_scl=10.0"]
    exp = load_experiment(path)
    assert len(exp.variants) == 4 * 3
    assert exp.variants["lambda_kml=0.3,lambda_scl=10.0"] == ["wandb.group=sweep_pal", "dynamic.lambda_kml=0.3",
                                                              "dynamic.lambda_scl=10.0"]
    assert Path(exp.config).resolve() == (ROOT / "configs" / "cpu.yaml").resolve()  # configs links to the package
    assert exp.metrics[0] == "novel/psnr_moving"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_file_runs_on_the_real_stages(path, tmp_path):
    """Each experiments/*.yaml with configs/smoke.yaml on a tiny synthetic scene (the sweep: two grid points)."""
    exp = load_experiment(path)
    variants = list(exp.variants)[:4] if len(exp.variants) > 4 else None
    variants = variants[:2] if variants else None
    res = run_experiment(path, tmp_path, config=str(ROOT / "configs" / "smoke.yaml"), scenes=[TINY],
                         variants=variants, echo=lambda s: None)
    assert all(j.status == "done" for j in res["jobs"]), [(j.variant, j.error) for j in res["jobs"]]
    for j in res["jobs"]:
        assert j.metrics["stage"] == "dynamic" and j.metrics["mean"]["psnr"] is not None


def test_gpus_run_one_job_per_device_in_parallel(tmp_path, monkeypatch):
    """--gpus 2: jobs go to a pool of two GPU ids, never two at once on one id; the first variant of each
    scene runs before the others (which start from its finished stages)."""
    import threading
    import time

    import dynapose4d.pipeline.experiments as E

    busy: dict[int, int] = {}
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()
    peak = [0]

    def fake_subprocess(job, scene_dir, gt, gpu):
        with lock:
            busy[gpu] = busy.get(gpu, 0) + 1
            assert busy[gpu] == 1, f"two jobs on GPU {gpu}"
            peak[0] = max(peak[0], sum(busy.values()))
            seen.append((job.variant, gpu))
        time.sleep(0.3)
        with lock:
            busy[gpu] -= 1

    monkeypatch.setattr(E, "_run_subprocess", fake_subprocess)
    res = run_experiment(ROOT / "experiments" / "ablation_pose.yaml", tmp_path, gpus=2, scenes=[TINY],
                         overrides=["wandb.enabled=false"], echo=lambda s: None)
    assert [v for v, _ in seen][0] == "full" and sorted(v for v, _ in seen) == sorted(E.load_experiment(
        ROOT / "experiments" / "ablation_pose.yaml").variants)
    assert {g for _, g in seen} == {0, 1} and peak[0] == 2
    assert all(j.status == "done" for j in res["jobs"])
