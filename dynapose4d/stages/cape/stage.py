"""The cape stage's wiring: fine-tune the CAPE keypoint model on the scene's object, then find the keypoints on
every driving frame.

1. Render RUN/static/gaussians.ply from random views (and a few at the reference camera); project the support
   keypoints the static stage lifted to 3D (RUN/static/keypoints_3d.json) into each view (visibility by a depth
   test). Pairs: support = the scene image with its keypoints, query = a render.
2. Fine-tune the shipped checkpoint (or `cape.checkpoint`) on those pairs for `steps` steps (`CAPEModule`).
3. Predict the keypoints on every driving frame (the scene's video, else the SVD video of RUN/inputs/video/).
Outputs: RUN/cape/model.ckpt (a CAPE checkpoint, `dynapose4d.cape.load_cape`), driving_keypoints.json
({"points": [T][N][2] px, "confidence": [T][N]}; pixels of the driving frames' own files: the scene's video
with its recentring undone, or RUN/inputs/video/ for SVD; `dynapose4d.stages.keypoints`), overlay.mp4 /
overlay.gif (keypoints and skeleton on the driving frames) and, when the scene has gt/, metrics.json:
PCK@0.1/0.2 on the gt cameras over all frames for the trivial baseline (support keypoints copied), the starting
checkpoint and the fine-tuned model.

With `cape.arch=poseanything` the official PoseAnything model (`cape.checkpoint`, 1-shot Tiny or Small,
`dynapose4d.cape.poseanything`) runs frozen instead: no renders, no fine-tuning (`cape.steps` is ignored); it
predicts the driving keypoints (confidence 1: PoseAnything has none), and RUN/cape/model.ckpt is a small pointer
to the official file (`dynapose4d.cape.load_keypoint_model` follows it, so the dynamic stage's KML runs the same
model); metrics.json compares it ("poseanything") with the trivial baseline.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from dynapose4d.cape import (
    SHIPPED_CHECKPOINT,
    load_cape,
    predict_prepared,
    prepare_support,
    save_cape,
    save_poseanything_pointer,
)
from dynapose4d.cape.data import PairDataset
from dynapose4d.cape.evaluation import evaluate_scene_gt, format_scene_table
from dynapose4d.cape.finetune import object_render_set
from dynapose4d.cape.model import CAPEModel
from dynapose4d.cape.overlay import draw_keypoints
from dynapose4d.cape.poseanything import OFFICIAL_WEIGHTS_HINT, load_poseanything
from dynapose4d.core.errors import MissingWeightsError
from dynapose4d.core.images import over_background
from dynapose4d.core.io import write_json, write_text, write_video
from dynapose4d.gaussians.ply import load_ply
from dynapose4d.priors.svd import driving_video, generated_video_folder, read_source
from dynapose4d.stages.base import StageContext, build_trainer, resume_checkpoint, stage_logger
from dynapose4d.stages.cape.config import CapeStageConfig
from dynapose4d.stages.cape.module import STAGE, CAPEModule, fit, pair_loader
from dynapose4d.stages.keypoints import read_keypoints_3d, write_driving_keypoints
from dynapose4d.stages.logger import log_images, log_summary, log_videos


def run(ctx: StageContext, cfg: CapeStageConfig) -> dict[str, str]:
    """Fine-tune CAPE on the scene's static Gaussians, predict the driving keypoints; writes RUN/cape/."""
    cfg.validate()
    if cfg.arch == "poseanything":
        return _run_poseanything(ctx, cfg)
    t0 = time.perf_counter()
    base = load_cape(cfg.checkpoint or None)  # fails first (clear message) when the weights are missing
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    scene = ctx.scene
    warn_coincident(scene)
    dev = _render_device(ctx)
    g = {k: v.detach().to(dev) for k, v in load_ply(ctx.artifact("static", "gaussians")).activated().items()}
    support_rgb = over_background(scene.image, 1.0)  # [H, W, 3]
    rs, _ = object_render_set(g, scene.camera, support_rgb, scene.image[..., 3], scene.keypoints, scene.skeleton,
                              base.cfg.input_size, cfg.num_views, tuple(cfg.elevation), cfg.reference_views,
                              cfg.depth_tolerance, seed=ctx.seed, pose_angle=cfg.pose_angle,
                              posed_fraction=cfg.posed_fraction, keypoints_3d=read_keypoints_3d(ctx))
    del g
    model = base.train()
    module = CAPEModule(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps, cfg.lambda_heat, cfg.heat_sigma,
                        shared_support=cfg.plain_support)
    ctx.stage_dir(STAGE)
    if cfg.steps > 0:
        trainer = build_trainer(ctx, STAGE, cfg.steps, max_epochs=-1, precision=cfg.precision)
        devices = max(1, int(ctx.trainer.devices or 1))
        data = PairDataset(rs, cfg.augment, (cfg.steps + 1) * cfg.batch_size * devices, seed=ctx.seed, support_view=0,
                           plain_support=cfg.plain_support)
        fit(module, trainer, pair_loader(data, cfg.batch_size, cfg.num_workers), resume_checkpoint(ctx, STAGE))
        logger = trainer.logger
        if not trainer.is_global_zero:
            return _artifacts(scene)
    else:
        logger = stage_logger(ctx, STAGE)
    model = module.model.eval()  # on the device it trained on
    start = CAPEModel(model.cfg)
    start.load_state_dict(base_state)
    write_outputs(ctx, cfg, model, start.to(next(model.parameters()).device).eval(), logger, time.perf_counter() - t0)
    return _artifacts(scene)


def _run_poseanything(ctx: StageContext, cfg: CapeStageConfig) -> dict[str, str]:
    """cape.arch=poseanything: the official model, frozen, on the driving frames; RUN/cape/model.ckpt points to it."""
    t0 = time.perf_counter()
    check_weights(cfg)
    model = load_poseanything(cfg.checkpoint).to(_render_device(ctx)).requires_grad_(False)
    ctx.stage_dir(STAGE)
    write_outputs(ctx, cfg, model, None, stage_logger(ctx, STAGE), time.perf_counter() - t0)
    return _artifacts(ctx.scene)


def check_weights(cfg: CapeStageConfig) -> None:
    """Raise MissingWeightsError now (before a run folder exists) when the CAPE checkpoint is not there."""
    if cfg.arch == "poseanything":
        if not cfg.checkpoint or not Path(cfg.checkpoint).is_file():
            what = f"{cfg.checkpoint}: not found" if cfg.checkpoint else "cape.checkpoint is empty"
            raise MissingWeightsError(f"{what}: cape.arch=poseanything needs the official PoseAnything checkpoint; "
                                      f"{OFFICIAL_WEIGHTS_HINT}")
    elif not Path(cfg.checkpoint or SHIPPED_CHECKPOINT).is_file():
        raise MissingWeightsError(f"{cfg.checkpoint or SHIPPED_CHECKPOINT}: CAPE checkpoint not found")


def _render_device(ctx: StageContext) -> torch.device:
    acc = ctx.trainer.accelerator
    return torch.device("cuda" if torch.cuda.is_available() and acc in ("gpu", "cuda", "auto") else "cpu")


COINCIDENT_FRACTION = 0.03  # support keypoints closer than this x the longer image side get a warning


def warn_coincident(scene: Any) -> None:
    """A warning naming the keypoints file for each group of support keypoints closer than `COINCIDENT_FRACTION`
    of the longer image side (one image cannot tell them apart)."""
    for group in coincident_keypoints(scene.keypoints, COINCIDENT_FRACTION * max(scene.width, scene.height)):
        names = ", ".join(scene.names[i] for i in group)
        source = scene.keypoints_path or ("the automatic keypoints (RUN/inputs/keypoints.json)"
                                                            if scene.auto_keypoints is not None
                                                            else scene.root / "keypoints.json")
        warnings.warn(f"{source}: keypoints {names} are within "
                      f"{COINCIDENT_FRACTION:.0%} of the image size of each other; one image cannot tell them "
                      "apart, so CAPE will confuse them where they separate", stacklevel=3)


def coincident_keypoints(keypoints: torch.Tensor, radius: float) -> list[list[int]]:
    """Groups (connected by distance < `radius` pixels, >= 2 members, sorted) of support keypoints [N, 2]."""
    close = torch.cdist(keypoints.double(), keypoints.double()) < radius  # [N, N]
    n, seen, groups = keypoints.shape[0], set(), []
    for i in range(n):
        if i in seen:
            continue
        group, stack = set(), [i]
        while stack:
            j = stack.pop()
            if j not in group:
                group.add(j)
                stack.extend(int(k) for k in close[j].nonzero().flatten() if int(k) not in group)
        seen |= group
        if len(group) > 1:
            groups.append(sorted(group))
    return groups


def _artifacts(scene: Any) -> dict[str, str]:
    arts = {"model": "cape/model.ckpt", "driving_keypoints": "cape/driving_keypoints.json",
            "overlay": "cape/overlay.mp4"}
    if scene.gt_dir is not None and scene.auto_keypoints is None:  # auto: not the gt's keypoints
        arts["metrics"] = "cape/metrics.json"
    return arts


def _driving_frames(ctx: StageContext) -> tuple[torch.Tensor, str]:
    """Driving frames RGBA [T, H, W, 4] and where they came from; the scene image alone when no video exists and
    none can be generated (no SVD weights)."""
    try:
        return driving_video(ctx.scene, ctx.run_dir, ctx.driving, seed=ctx.seed), "video"
    except MissingWeightsError as e:
        warnings.warn(f"cape: no driving video ({str(e).splitlines()[0]}); keypoints of the input image only",
                      stacklevel=2)
        return ctx.scene.image[None], "image"


@torch.no_grad()
def predict_frames(model: CAPEModel, scene: Any, frames: torch.Tensor, batch: int = 16
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """CAPE keypoints [T, N, 2] px and confidence [T, N] on RGBA frames [T, H, W, 4] (over white)."""
    support = prepare_support(over_background(scene.image, 1.0).permute(2, 0, 1), scene.keypoints, scene.skeleton,
                              checkpoint=model)
    imgs = over_background(frames, 1.0).permute(0, 3, 1, 2)
    pts, conf = [], []
    for i in range(0, imgs.shape[0], batch):
        p, c = predict_prepared(support, imgs[i:i + batch])
        pts.append(p.cpu())
        conf.append(c.cpu())
    return torch.cat(pts), torch.cat(conf)


def write_outputs(ctx: StageContext, cfg: CapeStageConfig, model: Any, start: CAPEModel | None, logger: Any,
                  seconds: float) -> dict[str, Any]:
    """model.ckpt, driving_keypoints.json, overlay.mp4/.gif and (with gt/) metrics.json. Returns the metrics.
    `model` is the fine-tuned CAPEModel and `start` its starting point, or a PoseAnything and None."""
    import numpy as np
    from omegaconf import OmegaConf

    out = ctx.stage_dir(STAGE)
    scene = ctx.scene
    frames, source = _driving_frames(ctx)
    pts, conf = predict_frames(model, scene, frames, cfg.predict_batch)  # [T, N, 2] px of the pipeline's frame
    write_driving_keypoints(ctx, pts, conf, generated=scene.video is None and source == "video")
    rgb = over_background(frames, 1.0)
    drawn = np.stack([draw_keypoints(rgb[t], pts[t], scene.skeleton, conf[t]) for t in range(rgb.shape[0])])
    write_video(out / "overlay.mp4", drawn, fps=cfg.overlay_fps)
    write_video(out / "overlay.gif", drawn, fps=cfg.overlay_fps)
    summary: dict[str, Any] = {"cape/seconds": round(seconds, 1), "cape/driving_frames": int(frames.shape[0]),
                               "cape/mean_confidence": float(conf.mean())}
    made = read_source(generated_video_folder(ctx.run_dir)) if scene.video is None and source == "video" else None
    truth = torch.tensor(made["keypoints"]) if made and "keypoints" in made else None  # [T, N, 2] the puppet's
    if truth is not None and truth.shape == pts.shape:  # where the puppet put them: CAPE's error is known
        summary["cape/puppet_error_px"] = float((pts[1:] - truth[1:]).norm(dim=-1).mean())
        summary["cape/puppet_held_still_px"] = float((truth[1:] - truth[:1]).norm(dim=-1).mean())  # the baseline
    metrics: dict[str, Any] = {}
    if scene.gt_dir is not None and scene.auto_keypoints is None:  # auto: not the gt's keypoints
        metrics = evaluate_scene_gt(scene, {"start": start, "finetuned": model} if start is not None
                                    else {"poseanything": model})
        write_json(out / "metrics.json", metrics)
        write_text(out / "metrics.txt", format_scene_table(metrics) + "\n")
        a = metrics["all"]
        # cape/pck@t: the model used (fine-tuned or PoseAnything); cape/start_pck@t, cape/trivial_pck@t
        summary.update({"cape/" + k.removeprefix("finetuned_").removeprefix("poseanything_"): v
                        for k, v in a.items() if "_pck@" in k})
    extra = {"config": OmegaConf.to_container(OmegaConf.structured(cfg)),
             "base_checkpoint": cfg.checkpoint or "shipped", "metrics": metrics, "driving_source": source}
    if start is None:  # PoseAnything, unchanged: a pointer to the official file
        save_poseanything_pointer(out / "model.ckpt", cfg.checkpoint, extra)
    else:
        save_cape(out / "model.ckpt", model, extra)
    log_summary(logger, summary)
    log_images(logger, "cape/overlay_first_frame", [drawn[0].astype(np.float32) / 255.0])
    log_videos(logger, "cape/overlay", [out / "overlay.mp4"])
    return metrics
