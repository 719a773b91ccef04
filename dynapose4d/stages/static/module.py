"""The static stage: fit 3D Gaussians to the single input image (DreamGaussian's stage 1).

Losses per step: reference-view RGB and mask MSE at the scene's reference camera (DreamGaussian's weights
10000 / 1000, both ramped up linearly with training progress as DreamGaussian does), plus a novel-view prior:
  - "zero123": Zero-1-to-3 score distillation on random novel views (DreamGaussian: Δelevation in [−30, 30],
    Δazimuth in [−180, 180), render size 128 → 256 → 512 at 30% / 60% of training, background black with
    probability 0.5, guidance scale 5, t annealed 0.98 → 0.02, w = 1 − ᾱ_t, weight 1);
  - "views": the same RGB and mask losses on the scene's views/ images (a multi-view prior's output or a real
    capture), weighted by `lambda_views` relative to the reference-view losses;
  - "none": reference view only;
  - "auto" (the presets' choice): "views" when the scene has views/, else "zero123" when the weights of the
    top-level `zero123` setting are on this machine, else "none"; `run` prints which and why in one line.
Zero-1-to-3 sees the reference padded with white to a square, and the novel views are rendered square with that
square's field of view. The prior is freed when training ends; on CUDA the stage's peak memory goes to its summary.
Optimisation: one Adam per Gaussian attribute (gsplat's contract; DreamGaussian's learning rates, the means'
decaying exponentially), densification by gsplat's DefaultStrategy through `Densifier`, which also resets
opacities on its own schedule. Outputs: RUN/static/gaussians.ply, orbit.mp4 / orbit.gif, grid.png and, when the
scene has gt/, metrics.json with PSNR / SSIM per gt camera at frame 0 (over a white background).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from dynapose4d.core.cameras import Camera, load_cameras, stack_cameras
from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.images import over_background
from dynapose4d.core.io import read_image, write_image, write_json, write_video
from dynapose4d.core.memory import free_memory, peak_memory_summary, reset_peak_memory
from dynapose4d.core.seeding import STATIC_NOVEL_VIEWS, torch_generator
from dynapose4d.data.scene import Scene
from dynapose4d.evaluation.metrics import psnr as metrics_psnr
from dynapose4d.evaluation.metrics import ssim as metrics_ssim
from dynapose4d.gaussians.densify import Densifier
from dynapose4d.gaussians.init import image_init, sphere_init
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.gaussians.ply import save_ply
from dynapose4d.priors import zero123 as zero123_prior
from dynapose4d.priors.framing import square_fov_y
from dynapose4d.priors.zero123 import Zero123Config, Zero123Prior, resolve_zero123
from dynapose4d.render import rasterize
from dynapose4d.render.views import image_grid, orbit_cameras, render_cameras, write_orbit_video
from dynapose4d.stages.base import StageContext, build_trainer, quiet_fit, resume_checkpoint
from dynapose4d.stages.logger import log_images, log_summary, log_videos
from dynapose4d.stages.settings import StaticConfig, check_config

STAGE = "static"
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def _targets(images: list[torch.Tensor], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB over white [V, h, w, 3] and alpha [V, h, w, 1] of straight RGBA images [H, W, 4], resized so that
    the longer side is `size` (0 = unchanged)."""
    x = torch.stack(images).float()  # [V, H, W, 4]
    rgb, alpha = over_background(x, 1.0), x[..., 3:4]
    H, W = x.shape[1:3]
    if size > 0 and size != max(H, W):
        h, w = round(H * size / max(H, W)), round(W * size / max(H, W))
        def rs(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t.permute(0, 3, 1, 2), (h, w), mode="bilinear", align_corners=False,
                                 antialias=True).permute(0, 2, 3, 1).contiguous()
        rgb, alpha = rs(rgb), rs(alpha)
    return rgb.clamp(0, 1), alpha.clamp(0, 1)


def resolve_prior(cfg: StaticConfig, scene: Scene, zero123: Zero123Config) -> tuple[str, str]:
    """(prior, why) for `cfg.prior`; "auto" becomes "views" when the scene has views/, else "zero123" when the
    Zero-1-to-3 weights are on this machine (`zero123.path` or the local Hugging Face cache; nothing is
    downloaded), else "none". An explicit prior is returned as it is."""
    if cfg.prior != "auto":
        return cfg.prior, "static.prior"
    if scene.views:
        return "views", f"auto: the scene has {len(scene.views)} images in views/"
    root = zero123_prior.find_local_zero123(zero123)  # looked up when called: tests stand in for the cache
    if root is not None:
        return "zero123", f"auto: no views/, Zero-1-to-3 weights found at {root}"
    return "none", (f"auto: no views/ and no Zero-1-to-3 weights on this machine ('{zero123.source}'; "
                    f"set zero123.path=DIR); reference view only")


def supervised_views(scene: Scene, cfg: StaticConfig) -> list[tuple[Camera, torch.Tensor]]:
    """The (camera, RGBA) pairs of the "views" prior: scene views/ filtered by `view_names`."""
    if cfg.prior != "views":
        return []
    if not scene.views:
        raise InputError(f"{scene.root}/views: the 'views' prior (static.prior=views) needs views/cameras.json and "
                         f"views/<name>.png; use static.prior=none or zero123 instead")
    names = [c.name for c, _ in scene.views]
    if not cfg.view_names:
        return list(scene.views)
    unknown = [n for n in cfg.view_names if n not in names]
    if unknown:
        raise ConfigError(f"config key 'static.view_names': {unknown} not in {scene.root}/views ({names})")
    return [v for v in scene.views if v[0].name in cfg.view_names]


class _Steps(IterableDataset):
    """An endless stream of dummy batches: the stage samples its own cameras."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0


class StaticGaussianModule(L.LightningModule):
    """Fits `gaussians` to the reference image (+ the prior). Manual optimisation, one Adam per attribute."""

    def __init__(self, cfg: StaticConfig, scene: Scene, gaussians: GaussianModel, seed: int = 0,
                 zero123: Zero123Config | None = None) -> None:
        super().__init__()
        check_config(cfg)
        self.zero123 = zero123 or Zero123Config()  # the Zero-1-to-3 prior's setting (prior "zero123")
        if cfg.prior == "auto":
            cfg = replace(cfg, prior=resolve_prior(cfg, scene, self.zero123)[0])
        self.automatic_optimization = False
        self.cfg = cfg
        self.seed = seed
        self.gaussians = gaussians
        self.reference = scene.camera
        views = supervised_views(scene, cfg)
        self.cameras = [scene.camera] + [c for c, _ in views]  # supervised cameras: reference first
        rgb, alpha = _targets([scene.image] + [v for _, v in views], cfg.ref_size)
        self.height, self.width = int(rgb.shape[1]), int(rgb.shape[2])
        viewmats, Ks = stack_cameras(self.cameras, self.width, self.height)
        self.register_buffer("target_rgb", rgb, persistent=False)  # [V, h, w, 3] over white
        self.register_buffer("target_alpha", alpha, persistent=False)  # [V, h, w, 1]
        self.register_buffer("viewmats", viewmats, persistent=False)  # [V, 4, 4]
        self.register_buffer("Ks", Ks, persistent=False)  # [V, 3, 3]
        self.densifier = Densifier(cfg.densify)
        self.prior: Any = None  # Zero123Prior, built in on_fit_start; a plain object, never in a checkpoint

    # optimisers ---------------------------------------------------------------------------------
    def _lrs(self) -> dict[str, float]:
        c = self.cfg
        return {"means": c.lr_means, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities,
                "sh0": c.lr_sh0, "shN": c.lr_sh0 / 20.0}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        lrs = self._lrs()
        return [torch.optim.Adam([self.gaussians.splats[n]], lr=lrs[n], eps=1e-15) for n in PARAM_NAMES]

    def _optimizer_dict(self) -> dict[str, torch.optim.Optimizer]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return {n: getattr(o, "optimizer", o) for n, o in zip(PARAM_NAMES, opts)}

    def means_lr(self, step: int) -> float:
        """Exponential decay from lr_means to lr_means_final over the stage's steps."""
        c = self.cfg
        t = min(max(step / max(c.steps, 1), 0.0), 1.0)
        return math.exp((1 - t) * math.log(c.lr_means) + t * math.log(c.lr_means_final))

    # lifecycle ----------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        check = self._optimizer_dict()
        self.densifier.check(self.gaussians.splats, check)
        if self.cfg.prior == "zero123" and self.prior is None:
            self.prior = Zero123Prior.from_config(self.zero123, device=self.device)
            ref = self.target_rgb[:1].permute(0, 3, 1, 2)  # [1, 3, h, w] over white (padded to a square)
            self.prior.set_reference(ref, elevation=self.reference.elevation)

    def on_fit_end(self) -> None:
        """The prior is freed as soon as training ends (before the outputs are rendered)."""
        self.prior = None
        free_memory()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["densifier"] = self.densifier.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "densifier" in checkpoint:
            self.densifier.load_state_dict(checkpoint["densifier"], device=self.device)

    # training -----------------------------------------------------------------------------------
    def render(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               backgrounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        g = self.gaussians.activated()
        return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                         width, height, backgrounds=backgrounds)

    def novel_size(self, progress: float) -> int:
        c = self.cfg
        for size, until in zip(c.novel_sizes, c.novel_size_until):
            if progress < until:
                return int(size)
        return int(c.novel_sizes[-1])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        c = self.cfg
        step = int(self.global_step)  # completed steps before this one
        progress = min(1.0, (step + 1) / c.steps)
        opts = self._optimizer_dict()
        for group in opts["means"].param_groups:
            group["lr"] = self.means_lr(step)

        # reference view (+ supervised views), one rasterizer call
        v = self.viewmats.shape[0]
        white = torch.ones(v, 3, device=self.device)
        rgb, alpha, meta = self.render(self.viewmats, self.Ks, self.width, self.height, white)
        se_rgb = ((rgb - self.target_rgb) ** 2).mean(dim=(1, 2, 3))  # [V]
        se_mask = ((alpha - self.target_alpha) ** 2).mean(dim=(1, 2, 3))  # [V]
        warm = progress if c.ref_warmup else 1.0
        loss = warm * (c.lambda_rgb * se_rgb[0] + c.lambda_mask * se_mask[0])
        logs = {"loss_rgb": se_rgb[0].detach(), "loss_mask": se_mask[0].detach()}
        if v > 1:
            views = (c.lambda_rgb * se_rgb[1:] + c.lambda_mask * se_mask[1:]).mean()
            loss = loss + warm * c.lambda_views * views
            logs["loss_views_rgb"] = se_rgb[1:].mean().detach()
        metas = [meta]

        if self.prior is not None:
            sds, meta_novel = self._sds_step(step, progress)
            loss = loss + c.lambda_sds * sds
            logs["loss_sds"] = sds.detach()
            metas.append(meta_novel)

        splats = self.gaussians.splats
        self.densifier.before_backward(splats, opts, step + 1, metas)
        self.manual_backward(loss)
        lightning_opts = self.optimizers()
        lightning_opts[0].step()  # the Lightning wrapper counts global_step once per training step ...
        for o in list(opts.values())[1:]:
            o.step()  # ... the other attributes' optimisers are stepped directly
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        dstats = self.densifier.after_backward(splats, opts, step + 1, metas)

        logs["loss"] = loss.detach()
        self.log_dict({f"{STAGE}/{k}": v for k, v in logs.items()}, prog_bar=False)
        self.log(f"{STAGE}/num_gaussians", float(dstats["num_gaussians"]))
        return loss.detach()

    def _sds_step(self, step: int, progress: float) -> tuple[torch.Tensor, dict]:
        """Zero-1-to-3 SDS on `novel_views` random cameras around the reference (deterministic per step)."""
        c = self.cfg
        g = torch_generator(self.seed, STATIC_NOVEL_VIEWS, step)
        b = c.novel_views
        ref = self.reference
        lo = max(c.novel_elevation[0], -80.0 - ref.elevation)  # keep the absolute elevation in [-80, 80]
        hi = min(c.novel_elevation[1], 80.0 - ref.elevation)
        d_elev = lo + (hi - lo) * torch.rand(b, generator=g)
        d_azim = -180.0 + 360.0 * torch.rand(b, generator=g)
        fov = square_fov_y(ref.fov_y, self.width, self.height)  # the square the prior's reference was padded to
        cams = [Camera("novel", ref.elevation + float(e), ref.azimuth + float(a), ref.radius, fov)
                for e, a in zip(d_elev, d_azim)]
        size = self.novel_size(progress)
        viewmats, Ks = stack_cameras(cams, size, size, device=self.device)
        black = torch.rand(b, generator=g) < c.black_background
        bg = (~black).float()[:, None].expand(b, 3).to(self.device)
        rgb, _, meta = self.render(viewmats, Ks, size, size, bg.contiguous())
        sds = self.prior.sds(rgb.permute(0, 3, 1, 2), d_elev, d_azim, torch.zeros(b), progress, c.sds)
        return sds, meta


# --- run --------------------------------------------------------------------------------------------


def initial_gaussians(scene: Scene, cfg: StaticConfig, seed: int) -> GaussianModel:
    """The configured initialisation ("image" lift of the mask, or "sphere")."""
    g = torch_generator(seed)
    if cfg.init == "sphere":
        return sphere_init(cfg.num_points, cfg.init_radius, cfg.init_opacity, generator=g)
    try:
        return image_init(scene.image, scene.camera, cfg.num_points, cfg.inflate, cfg.init_opacity, generator=g)
    except ValueError as e:
        raise InputError(f"{scene.image_path or scene.root / 'image.png'}: {e}") from None


def evaluate_gt(gaussians: GaussianModel, scene: Scene) -> tuple[dict[str, float], list[tuple[str, torch.Tensor,
                                                                                               torch.Tensor]]]:
    """PSNR / SSIM per gt camera at frame 0 (RGB over white, whole image). Returns (metrics, [(name, render
    [H,W,3], gt [H,W,3])]). Empty when the scene has no gt/."""
    if scene.gt_dir is None or not (scene.gt_dir / "cameras.json").is_file():
        return {}, []
    cams = load_cameras(scene.gt_dir / "cameras.json")
    metrics: dict[str, float] = {}
    pairs = []
    for cam in cams:
        path = scene.gt_dir / cam.name / "000.png"
        if not path.is_file():
            continue
        gt = read_image(path)
        gt_rgb = over_background(gt, 1.0) if gt.shape[-1] == 4 else gt
        pred, _ = render_cameras(gaussians, [cam], gt.shape[1], gt.shape[0], background=1.0)
        psnr, ssim = metrics_psnr(pred, gt_rgb[None]), metrics_ssim(pred, gt_rgb[None])
        metrics[f"{STAGE}/psnr/{cam.name}"] = psnr
        metrics[f"{STAGE}/ssim/{cam.name}"] = ssim
        pairs.append((cam.name, pred[0], gt_rgb))
    return metrics, pairs


def write_outputs(gaussians: GaussianModel, ctx: StageContext, cfg: StaticConfig, logger: Any,
                  seconds: float) -> dict[str, str]:
    """PLY, orbit video (mp4 + gif), render grid, metrics.json; logged through `logger`. Returns artifacts."""
    scene = ctx.scene
    out = ctx.stage_dir(STAGE)
    gaussians = gaussians.cpu()
    save_ply(gaussians, out / "gaussians.ply")
    size = cfg.render_size or scene.height
    ref = scene.camera
    frames = write_orbit_video(gaussians, out / "orbit.mp4", size, cfg.orbit_frames, cfg.orbit_elevation,
                               ref.radius, ref.fov_y, fps=cfg.video_fps)

    write_video(out / "orbit.gif", frames, fps=cfg.video_fps)
    metrics, pairs = evaluate_gt(gaussians, scene)
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
    return {"gaussians": f"{STAGE}/gaussians.ply", "orbit": f"{STAGE}/orbit.mp4", "orbit_gif": f"{STAGE}/orbit.gif",
            "grid": f"{STAGE}/grid.png", "metrics": f"{STAGE}/metrics.json"}


def check_weights(cfg: StaticConfig, scene: Scene, zero123: Zero123Config) -> None:
    """Raise MissingWeightsError now (before a run folder exists) when the prior this stage will use needs
    weights that this machine does not have."""
    if resolve_prior(cfg, scene, zero123)[0] == "zero123":
        resolve_zero123(zero123.source)


def run(ctx: StageContext, cfg: StaticConfig, zero123: Zero123Config | None = None) -> dict[str, str]:
    """Fit the static Gaussians for `ctx.scene` and write RUN/static/ (see the module docstring). `zero123`:
    the Zero-1-to-3 setting (default: the run config's top-level `zero123` section)."""
    check_config(cfg)
    zero123 = zero123 or ctx.zero123
    prior, why = resolve_prior(cfg, ctx.scene, zero123)
    if cfg.prior == "auto":
        print(f"[{STAGE}] prior: {prior} ({why})", flush=True)
        cfg = replace(cfg, prior=prior)
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


def fit(module: StaticGaussianModule, ctx: StageContext, max_steps: int, ckpt_path: str | None = None) -> Any:
    """Train `module` up to `max_steps` with the stage's Trainer (resuming from `ckpt_path`); returns the Trainer."""
    trainer = build_trainer(ctx, STAGE, max_steps=max_steps, multi_device=False, max_epochs=-1)
    with quiet_fit():
        trainer.fit(module, train_dataloaders=DataLoader(_Steps(), batch_size=None), ckpt_path=ckpt_path)
    return trainer
