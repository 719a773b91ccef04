"""The static stage's wiring: the scene in, `StaticGaussianModule` trained, RUN/static/ out.

Inputs: the scene's image (RGBA), keypoints and reference camera; with the "views" prior its views/; with
"zero123" the top-level `zero123` weights (checked before any training). Outputs: RUN/static/gaussians.ply,
keypoints_3d.json (the support keypoints lifted onto those Gaussians, read by the later stages), orbit.mp4 /
orbit.gif, grid.png and metrics.json (with gt/: PSNR / SSIM per gt camera at frame 0, over a white background);
on CUDA the stage's peak memory goes to its summary.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import write_image, write_json, write_video
from dynapose4d.core.memory import free_memory, peak_memory_summary, reset_peak_memory
from dynapose4d.core.seeding import torch_generator
from dynapose4d.data.scene import Scene
from dynapose4d.evaluation.score import score_static
from dynapose4d.gaussians.init import image_init, sphere_init
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.gaussians.ply import load_ply, save_ply
from dynapose4d.priors.zero123 import Zero123Config, resolve_zero123
from dynapose4d.render.views import image_grid, orbit_cameras, render_cameras, write_orbit_video
from dynapose4d.stages.base import StageContext, build_trainer, quiet_fit, resume_checkpoint
from dynapose4d.stages.keypoints import lift_support_keypoints, write_keypoints_3d
from dynapose4d.stages.logger import log_images, log_summary, log_videos
from dynapose4d.stages.static.config import StaticConfig, check_config
from dynapose4d.stages.static.module import STAGE, StaticGaussianModule, Steps, resolve_prior


def run(ctx: StageContext, cfg: StaticConfig, zero123: Zero123Config | None = None) -> dict[str, str]:
    """Fit the static Gaussians for `ctx.scene` and write RUN/static/ (see the module docstring). `zero123`:
    the Zero-1-to-3 setting (default: the run config's top-level `zero123` section)."""
    check_config(cfg)
    zero123 = zero123 or ctx.zero123
    prior, why = resolve_prior(cfg, ctx.scene, zero123)
    if cfg.prior == "auto":
        print(f"[{STAGE}] prior: {prior} ({why})", flush=True)
        cfg = replace(cfg, prior=prior)
    if cfg.init == "auto":
        cfg = replace(cfg, init=resolve_init(cfg))
        why_init = "the mask lifted, for the reference view alone" if cfg.init == "image" else "DreamGaussian's ball"
        print(f"[{STAGE}] init: {cfg.init} (auto: {why_init})", flush=True)
    if prior == "zero123":  # fail before any training when the weights are missing
        resolve_zero123(zero123.source)
    t0 = time.perf_counter()
    module = StaticGaussianModule(cfg, ctx.scene, initial_gaussians(ctx.scene, cfg, ctx.seed), seed=ctx.seed,
                                  zero123=zero123)
    device = reset_peak_memory(ctx.trainer)
    trainer = fit(module, ctx, cfg.steps, ckpt_path=resume_checkpoint(ctx, STAGE))
    module.prior = None  # (on_fit_end did it too) the prior never outlives training
    free_memory()
    arts = write_outputs(module.gaussians, ctx, cfg, trainer.logger, time.perf_counter() - t0)
    log_summary(trainer.logger, {f"{STAGE}/prior": prior, **peak_memory_summary(STAGE, device)})
    return arts


def check_weights(cfg: StaticConfig, scene: Scene, zero123: Zero123Config) -> None:
    """Raise MissingWeightsError now (before a run folder exists) when the prior this stage will use needs
    weights that this machine does not have."""
    if resolve_prior(cfg, scene, zero123)[0] == "zero123":
        resolve_zero123(zero123.source)


def fit(module: StaticGaussianModule, ctx: StageContext, max_steps: int, ckpt_path: str | None = None) -> Any:
    """Train `module` up to `max_steps` with the stage's Trainer (resuming from `ckpt_path`); returns the Trainer."""
    trainer = build_trainer(ctx, STAGE, max_steps=max_steps, multi_device=False, max_epochs=-1)
    with quiet_fit():
        trainer.fit(module, train_dataloaders=DataLoader(Steps(), batch_size=None), ckpt_path=ckpt_path)
    return trainer


def resolve_init(cfg: StaticConfig) -> str:
    """What `static.init` means: "image" or "sphere" as set; "auto": the inflated lift of the mask ("image") when the
    prior is "none" (the reference view alone: better on every novel view, measured), else the DreamGaussian ball
    ("sphere"; with extra views it is the better start). `cfg.prior` must be resolved already (not "auto")."""
    if cfg.init != "auto":
        return cfg.init
    return "image" if cfg.prior == "none" else "sphere"


def initial_gaussians(scene: Scene, cfg: StaticConfig, seed: int) -> GaussianModel:
    """The configured initialisation ("image" lift of the mask, or "sphere"; "auto": `resolve_init`)."""
    g = torch_generator(seed)
    if resolve_init(cfg) == "sphere":
        return sphere_init(cfg.num_points, cfg.init_radius, cfg.init_opacity, generator=g)
    try:
        return image_init(scene.image, scene.camera, cfg.num_points, cfg.inflate, cfg.init_opacity, generator=g)
    except ValueError as e:
        raise InputError(f"{scene.image_path or scene.root / 'image.png'}: {e}") from None


def write_outputs(gaussians: GaussianModel, ctx: StageContext, cfg: StaticConfig, logger: Any,
                  seconds: float) -> dict[str, str]:
    """PLY, the lifted support keypoints (keypoints_3d.json, `dynapose4d.stages.keypoints`), orbit video (mp4 +
    gif), render grid, metrics.json; logged through `logger`. Returns artifacts."""
    scene = ctx.scene
    out = ctx.stage_dir(STAGE)
    gaussians = gaussians.cpu()
    save_ply(gaussians, out / "gaussians.ply")
    world = lift_support_keypoints(load_ply(out / "gaussians.ply"), scene)  # [N, 3] from the file later stages read
    write_keypoints_3d(out / "keypoints_3d.json", list(scene.names), world)
    size = cfg.render_size or scene.height
    ref = scene.camera
    frames = write_orbit_video(gaussians, out / "orbit.mp4", size, cfg.orbit_frames, cfg.orbit_elevation,
                               ref.radius, ref.fov_y, fps=cfg.video_fps)
    write_video(out / "orbit.gif", frames, fps=cfg.video_fps)
    per_view, pairs = score_static(gaussians, scene.gt_dir, scene.gt_max_size)  # gt frames at the run's size
    metrics = {f"{STAGE}/{k}/{cam}": v for cam, d in per_view.items() for k, v in d.items()}
    if pairs:  # top row ground truth, bottom row renders
        h, w = pairs[0][1].shape[:2]
        same = [p for p in pairs if p[1].shape[:2] == (h, w)]
        grid = image_grid(torch.stack([p[2] for p in same] + [p[1] for p in same]), cols=len(same))
    else:
        cams = orbit_cameras(8, cfg.orbit_elevation, ref.radius, ref.fov_y, start_azimuth=ref.azimuth)
        grid = image_grid(render_cameras(gaussians, cams, size, size)[0], cols=4)
    write_image(out / "grid.png", grid)
    novel = [v for k, v in metrics.items() if k.startswith(f"{STAGE}/psnr/")]
    summary = dict(metrics)
    if novel:
        summary[f"{STAGE}/psnr_mean"] = sum(novel) / len(novel)
    summary[f"{STAGE}/num_gaussians"] = len(gaussians)
    summary[f"{STAGE}/seconds"] = round(seconds, 2)
    write_json(out / "metrics.json", summary)
    if logger is not None:
        if metrics:
            logger.log_metrics(metrics)
        log_summary(logger, summary)
        log_images(logger, f"{STAGE}/grid", [grid])
        log_videos(logger, f"{STAGE}/orbit", [out / "orbit.mp4"])
    return {"gaussians": f"{STAGE}/gaussians.ply", "keypoints_3d": f"{STAGE}/keypoints_3d.json",
            "orbit": f"{STAGE}/orbit.mp4", "orbit_gif": f"{STAGE}/orbit.gif", "grid": f"{STAGE}/grid.png",
            "metrics": f"{STAGE}/metrics.json"}
