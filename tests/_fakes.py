"""Test helpers for the runner, W&B and evaluation tests: a tiny hand-written scene folder and fake stages
(small Lightning trainings through `build_trainer`, so checkpoints, logging and resume are the real ones).

Importable from subprocesses: `PYTHONPATH=tests python -c "import _fakes; ..."`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from dynapose4d.core.cameras import REFERENCE_CAMERA, save_camera
from dynapose4d.core.io import write_image, write_json, write_video
from dynapose4d.stages.base import StageContext, build_trainer, resume_checkpoint
from dynapose4d.stages.logger import log_images, log_summary, log_videos

CALLS: list[tuple[str, bool]] = []  # (stage, ctx.resume) of every fake stage call in this process


def write_tiny_scene(root: Path, size: int = 32, frames: int = 4) -> Path:
    """A valid scene folder (docs/scene-folder.md): RGBA disc image, 3 keypoints, camera.json and a short video."""
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for f in range(frames):
        cx = size / 2 + 2 * f
        a = ((xx - cx) ** 2 + (yy - size / 2) ** 2 < (size / 4) ** 2).astype(np.float32)
        img = np.stack([0.8 * a, 0.3 * a, 0.2 + 0 * a, a], -1)
        write_image(root / "video" / f"{f:03d}.png", img)
        if f == 0:
            write_image(root / "image.png", img)
    c = size / 2
    write_json(root / "keypoints.json", {"keypoints": [[c - 4, c], [c, c], [c + 4, c]], "skeleton": [[0, 1], [1, 2]],
                                          "names": ["l", "m", "r"]})
    save_camera(REFERENCE_CAMERA, root / "camera.json")
    return root


class FakeModule(L.LightningModule):
    """Fits a scalar to 0 with SGD: loss falls; optional sleep per step (for kill tests) and a failure step."""

    def __init__(self, sleep: float = 0.0, fail_at: int = -1, stage: str = "fake") -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.sleep, self.fail_at, self.stage = sleep, fail_at, stage
        self.start_step = None

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(10_000, 1), batch_size=1)

    def on_train_start(self) -> None:
        self.start_step = self.global_step

    def training_step(self, batch, batch_idx):
        if self.sleep:
            time.sleep(self.sleep)
        if self.global_step == self.fail_at:
            raise RuntimeError(f"fake failure at step {self.global_step}")
        loss = self.w ** 2 + 0 * batch.sum()
        self.log(f"{self.stage}/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@dataclass
class FakeOpts:
    sleep: float = 0.0
    fail_at: int = -1


OPTS: dict[str, FakeOpts] = {}  # stage -> behaviour, set by tests (or by env FAKE_SLEEP_<STAGE> in subprocesses)


def _opts(stage: str) -> FakeOpts:
    o = OPTS.get(stage, FakeOpts())
    env = os.environ.get(f"FAKE_SLEEP_{stage.upper()}")
    return FakeOpts(sleep=float(env), fail_at=o.fail_at) if env else o


def _train(ctx: StageContext, stage: str, steps: int, multi_device: bool = True):
    """Fit a FakeModule; returns the Trainer (after ddp_spawn the module is detached: use `trainer.logger`)."""
    o = _opts(stage)
    CALLS.append((stage, ctx.resume))
    with open(ctx.run_dir / "calls.txt", "a") as f:  # every call in every process, with its rank
        f.write(f"{stage} rank={os.environ.get('LOCAL_RANK', '0')} resume={ctx.resume}\n")
    module = FakeModule(o.sleep, o.fail_at, stage)
    trainer = build_trainer(ctx, stage, max_steps=steps, multi_device=multi_device)
    trainer.fit(module, ckpt_path=resume_checkpoint(ctx, stage))
    if trainer.is_global_zero:
        write_json(ctx.stage_dir(stage) / "start_step.json",
                   {"start_step": module.start_step, "w": float(module.w.detach())})
    return trainer


def fake_static(ctx: StageContext, cfg) -> dict[str, str]:
    """Trains briefly, then writes a real 3DGS PLY (a small coloured blob) as `gaussians`."""
    from dynapose4d.gaussians import GaussianModel, save_ply

    trainer = _train(ctx, "static", cfg.steps, multi_device=False)
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(300, 3, generator=g) * 0.25
    rgb = torch.rand(300, 3, generator=g)
    model = GaussianModel.from_points(pts, rgb, scale=0.06, opacity=0.8)
    out = ctx.stage_dir("static") / "gaussians.ply"
    save_ply(model, out)
    log_images(trainer.logger, "static/render", [torch.rand(8, 8, 3)])
    log_summary(trainer.logger, {"static/psnr": 30.5})
    return {"gaussians": "static/gaussians.ply"}


def fake_cape(ctx: StageContext, cfg) -> dict[str, str]:
    ctx.artifact("static", "gaussians")  # needs the static stage
    trainer = _train(ctx, "cape", cfg.steps)
    if trainer.is_global_zero:
        path = ctx.stage_dir("cape") / "driving_keypoints.json"
        write_json(path, {"points": [[[1.0, 2.0]] * 3] * 4, "confidence": [[1.0] * 3] * 4})
    log_summary(trainer.logger, {"cape/pck": 0.9})
    return {"driving_keypoints": "cape/driving_keypoints.json"}


def fake_dynamic(ctx: StageContext, cfg) -> dict[str, str]:
    """Trains briefly, then writes a real deform.ckpt (identity HexPlane on the static Gaussians) and
    keypoints.json (every keypoint at the origin), so `render` and `eval` work on its output."""
    from dynapose4d.deform import build_deformation, save_dynamic
    from dynapose4d.gaussians import load_ply

    ctx.artifact("cape", "driving_keypoints")
    trainer = _train(ctx, "dynamic", cfg.steps)
    arts = {"deform": "dynamic/deform.ckpt", "keypoints": "dynamic/keypoints.json",
            "orbit_video": "dynamic/videos/orbit.gif"}
    if not trainer.is_global_zero:  # outputs are written once, by rank zero
        return arts
    T = ctx.scene.video.shape[0] if ctx.scene.video is not None else 4
    canonical = load_ply(ctx.artifact("static", "gaussians"))
    out = ctx.stage_dir("dynamic")
    save_dynamic(out / "deform.ckpt", canonical, build_deformation("hexplane", canonical.means, T))
    N = ctx.scene.num_keypoints
    write_json(out / "keypoints.json", {"names": ctx.scene.names, "world": [[[0.0, 0.0, 0.0]] * N] * T,
                                        "reference_2d": [[[0.0, 0.0]] * N] * T, "confidence": [[1.0] * N] * T})
    frames = torch.linspace(0, 1, 4)[:, None, None, None].expand(4, 16, 16, 3).contiguous()
    video = write_video(out / "videos" / "orbit.gif", frames)
    log_videos(trainer.logger, "dynamic/orbit", [video])
    log_summary(trainer.logger, {"dynamic/psnr": 25.0 + math.pi})
    return arts


FAKE_STAGES = (
    ("static", fake_static, lambda c: c.static),
    ("cape", fake_cape, lambda c: c.cape),
    ("dynamic", fake_dynamic, lambda c: c.dynamic),
)


def fake_overrides(steps: int = 3) -> list[str]:
    """Config overrides for the fake pipeline: tiny steps, CPU, checkpoint every step, no bar, W&B off, the mesh
    exported with vertex colours (its UV atlas costs ~5 s an export; tests/test_export_mesh.py checks the texture)."""
    return [f"static.steps={steps}", f"cape.steps={steps}", f"dynamic.steps={steps}", "trainer.accelerator=cpu",
            "trainer.checkpoint_every_n_steps=1", "trainer.progress_bar=false", "trainer.log_every_n_steps=1",
            "wandb.enabled=false", "export.mesh_texture=0"]


def start_pipeline(scene, run, overrides: list[str], resume: bool = False, **sleep: str):
    """The fake pipeline in a subprocess (`main_subprocess`), e.g. for kill tests; `sleep` gives a stage's seconds
    per step (`cape="0.1"` sets FAKE_SLEEP_CAPE). Returns the Popen (stderr piped)."""
    import subprocess
    import sys

    tests = Path(__file__).parent
    args = {"scene": str(scene), "run": str(run), "resume": resume, "overrides": overrides}
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           **{f"FAKE_SLEEP_{k.upper()}": v for k, v in sleep.items()}}
    return subprocess.Popen([sys.executable, str(tests / "_fakes.py"), json.dumps(args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main_subprocess(scene: str, run: str, resume: bool, overrides: list[str]) -> None:
    """Entry for kill tests: run the fake pipeline in this process."""
    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner

    StageRunner(scene, run, load_config(None, overrides), resume=resume, stages=FAKE_STAGES).run()



if __name__ == "__main__":
    import sys

    args = json.loads(sys.argv[1])
    main_subprocess(**args)


def spy_zero123_loads(monkeypatch) -> list:
    """Record a weakref to every Zero123Prior that `Zero123Prior.from_config` builds from now on (the list fills
    as priors load); for tests that check a stage frees its prior."""
    import weakref

    from dynapose4d.priors.zero123 import Zero123Prior

    refs: list[weakref.ref] = []
    load = Zero123Prior.from_config.__func__

    def spy(cls, cfg, device="cpu"):
        prior = load(cls, cfg, device)
        refs.append(weakref.ref(prior))
        return prior

    monkeypatch.setattr(Zero123Prior, "from_config", classmethod(spy))
    return refs


def load_sdf_scenes():
    """experiments/sdf_scenes.py (the second scene generator, not part of the package) as a module."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "sdf_scenes", Path(__file__).resolve().parents[1] / "experiments" / "sdf_scenes.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sdf_scenes"] = mod
    spec.loader.exec_module(mod)
    return mod
