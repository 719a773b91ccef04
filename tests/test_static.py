"""Static stage: outputs, resume from a densified checkpoint, config/input errors, quality floors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynapose4d.core.errors import ConfigError, InputError, MissingWeightsError
from dynapose4d.data.scene import load_scene
from dynapose4d.data.synthetic import write_scene
from dynapose4d.gaussians.ply import load_ply
from dynapose4d.pipeline.config import TrainerConfig, WandbConfig, load_config
from dynapose4d.stages.base import StageContext
from dynapose4d.stages.static import stage as static

THREE_VIEWS = ["az120", "az240", "el30_az180"]
NOVEL = ["az090", "az180", "az270", "el30_az045"]  # gt cameras that are neither the reference nor a view


@pytest.fixture(scope="module")
def scene64(tmp_path_factory):
    return load_scene(write_scene("humanoid", tmp_path_factory.mktemp("s") / "scene", seed=0, num_frames=1, size=64))


def _ctx(scene, run_dir: Path, resume: bool = False, every: int = 50) -> StageContext:
    tc = TrainerConfig(accelerator="cpu", progress_bar=False, checkpoint_every_n_steps=every, log_every_n_steps=1)
    return StageContext(scene=scene, run_dir=run_dir, trainer=tc, wandb=WandbConfig(enabled=False), seed=0,
                        resume=resume)


def _cfg(*overrides: str) -> static.StaticConfig:
    return load_config("configs/cpu.yaml", list(overrides)).static


def test_run_writes_outputs_and_metrics(scene64, tmp_path) -> None:
    cfg = load_config("configs/smoke.yaml").static
    arts = static.run(_ctx(scene64, tmp_path), cfg)
    for name in ("gaussians", "orbit", "orbit_gif", "grid", "metrics"):
        assert (tmp_path / arts[name]).is_file(), name
    assert arts["gaussians"] == "static/gaussians.ply" and arts["orbit"] == "static/orbit.mp4"
    model = load_ply(tmp_path / arts["gaussians"])
    assert len(model) > 100
    metrics = json.loads((tmp_path / arts["metrics"]).read_text())
    for cam in ["az000", *NOVEL]:
        assert 5.0 < metrics[f"static/psnr/{cam}"] < 60.0 and 0.0 < metrics[f"static/ssim/{cam}"] <= 1.0
    summary = json.loads((tmp_path / "static" / "summary.json").read_text())  # what the runner reads
    assert summary["static/psnr/az090"] == metrics["static/psnr/az090"]
    logged = (tmp_path / "static" / "logs" / "metrics.jsonl").read_text()
    assert "static/loss_rgb" in logged and "static/loss_views_rgb" in logged
    assert not list(tmp_path.rglob("*.tmp*"))  # nothing half-written


def test_config_and_input_errors(scene64, tmp_path) -> None:
    with pytest.raises(ConfigError, match="static.prior"):
        static.run(_ctx(scene64, tmp_path), _cfg("static.prior=zero1234"))
    with pytest.raises(ConfigError, match="static.view_names"):
        static.run(_ctx(scene64, tmp_path), _cfg("static.view_names=[az999]"))
    no_views = static.Scene(**{**scene64.__dict__, "views": []})
    with pytest.raises(InputError, match="views"):
        static.run(_ctx(no_views, tmp_path), _cfg("static.prior=views"))
    with pytest.raises(MissingWeightsError, match=r"zero123\.path"):
        static.run(_ctx(scene64, tmp_path), _cfg("static.prior=zero123"),
                   zero123=load_config("configs/cpu.yaml", [f"zero123.path={tmp_path}/none"]).zero123)
    assert not (tmp_path / "static").exists()  # failed before writing anything


def _fit(module, ctx, max_steps, ckpt=None):
    static.fit(module, ctx, max_steps, ckpt_path=ckpt)
    return module


def test_resume_from_a_densified_checkpoint_continues_exactly(scene64, tmp_path) -> None:
    # growth by cloning only (no random splits), views prior: the run is deterministic
    cfg = _cfg("static.steps=6", "static.densify.start_step=1", "static.densify.every=2",
               "static.densify.grow_grad2d=0.05", "static.densify.grow_scale3d=10.0",
               "static.densify.reset_opacity_every=3", "static.view_names=[az120]")
    init = static.initial_gaussians(scene64, cfg, 0)
    n0 = len(init)
    full = _fit(static.StaticGaussianModule(cfg, scene64, static.initial_gaussians(scene64, cfg, 0)),
                _ctx(scene64, tmp_path / "a"), 6)
    first = _fit(static.StaticGaussianModule(cfg, scene64, init), _ctx(scene64, tmp_path / "b", every=2), 4)
    n4 = len(first.gaussians)
    assert n4 != n0  # densified before the checkpoint
    ckpt = tmp_path / "b" / "static" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    resumed = static.StaticGaussianModule(cfg, scene64, static.initial_gaussians(scene64, cfg, 0))
    _fit(resumed, _ctx(scene64, tmp_path / "b", resume=True), 6, ckpt=str(ckpt))
    assert resumed.global_step == 6
    for k, p in full.gaussians.splats.items():
        q = resumed.gaussians.splats[k]
        assert p.shape == q.shape, k
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), k
    checked = 0
    # the Adam moments went through the checkpoint (same step count and moments as the uninterrupted run)
    for o_full, o_res in zip(full.optimizers(), resumed.optimizers()):
        s_full = o_full.optimizer.state[o_full.optimizer.param_groups[0]["params"][0]]
        s_res = o_res.optimizer.state[o_res.optimizer.param_groups[0]["params"][0]]
        assert bool(s_full) == bool(s_res)
        if not s_full:  # shN (degree 0: no gradient, no Adam state)
            continue
        assert float(s_full["step"]) == float(s_res["step"])
        assert torch.allclose(s_full["exp_avg_sq"], s_res["exp_avg_sq"], rtol=1e-3, atol=1e-12)
        checked += 1
    assert checked == 5


def _novel_psnr(metrics: dict) -> float:
    vals = [metrics[f"static/psnr/{c}"] for c in NOVEL]
    return sum(vals) / len(vals)


def test_quality_floor_small(scene64, tmp_path) -> None:
    """64 px, 60 steps: three supervised views beat the reference-only baseline by a wide margin (measured:
    novel-view mean 25.8 dB (sphere init) vs 15.3 dB (none, image init), reference 31.0 / 64.2 dB)."""
    views = json.loads((tmp_path / "v" / static.run(_ctx(scene64, tmp_path / "v"), _cfg(
        "static.steps=60", f"static.view_names=[{','.join(THREE_VIEWS)}]", "static.orbit_frames=4",
        "static.densify.start_step=30", "static.densify.every=30"))["metrics"]).read_text())
    none = json.loads((tmp_path / "n" / static.run(_ctx(scene64, tmp_path / "n"), _cfg(
        "static.steps=60", "static.prior=none", "static.init=image", "static.orbit_frames=4"))["metrics"]).read_text())
    assert views["static/psnr/az000"] >= 28.0 and none["static/psnr/az000"] >= 30.0
    assert _novel_psnr(views) >= 23.5
    assert _novel_psnr(views) >= _novel_psnr(none) + 5.0


def test_quality_floor_128px_cpu_preset(tmp_path) -> None:
    """The issue's floor: cpu preset at 128 px, three views -> >= 25 dB on novel gt cameras, >= 30 dB at the
    reference (measured: novel 28.9 / 33.4 / 30.0 / 29.9 dB, reference 39.8 dB; ~10 s with the fast CPU
    rasterizer, 80 s with the old one)."""
    scene = load_scene(write_scene("humanoid", tmp_path / "scene", seed=0, num_frames=1, size=128))
    arts = static.run(_ctx(scene, tmp_path / "run"), _cfg(f"static.view_names=[{','.join(THREE_VIEWS)}]"))
    m = json.loads((tmp_path / "run" / arts["metrics"]).read_text())
    assert m["static/psnr/az000"] >= 30.0
    assert _novel_psnr(m) >= 25.0 and max(m[f"static/psnr/{c}"] for c in NOVEL) >= 25.0
