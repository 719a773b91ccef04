"""The static stage's LightningModule: fit 3D Gaussians to the single input image (DreamGaussian's stage 1).

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
square's field of view. The prior is freed when training ends.
Optimisation: one Adam per Gaussian attribute (gsplat's contract; DreamGaussian's learning rates, the means'
decaying exponentially), densification by gsplat's DefaultStrategy through `Densifier`, which also resets
opacities on its own schedule. The stage's wiring and outputs: `dynapose4d.stages.static.stage`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from dynapose4d.core.cameras import Camera, stack_cameras
from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.images import over_background
from dynapose4d.core.memory import free_memory
from dynapose4d.core.seeding import STATIC_NOVEL_VIEWS, torch_generator
from dynapose4d.data.scene import Scene
from dynapose4d.gaussians.densify import Densifier
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.priors import zero123 as zero123_prior
from dynapose4d.priors.framing import square_fov_y
from dynapose4d.priors.zero123 import Zero123Config, Zero123Prior
from dynapose4d.render import rasterize
from dynapose4d.stages.static.config import StaticConfig, check_config

STAGE = "static"
PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


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

    # training -----------------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        c = self.cfg
        step = int(self.global_step)  # completed steps before this one
        progress = min(1.0, (step + 1) / c.steps)
        opts = self._optimizer_dict()
        for group in opts["means"].param_groups:
            group["lr"] = means_lr(c, step)
        warm = progress if c.ref_warmup else 1.0  # the reference-view losses' ramp

        se_rgb, se_mask, meta = self._supervised_errors()  # [V], [V]: the reference camera first, then views/
        loss = warm * (c.lambda_rgb * se_rgb[0] + c.lambda_mask * se_mask[0])  # reference view: RGB + mask
        logs = {"loss_rgb": se_rgb[0], "loss_mask": se_mask[0]}
        metas = [meta]
        if se_rgb.shape[0] > 1:  # prior "views": the same losses on each view, λ_views relative to the reference
            views = (c.lambda_rgb * se_rgb[1:] + c.lambda_mask * se_mask[1:]).mean()
            loss = loss + warm * c.lambda_views * views
            logs["loss_views_rgb"] = se_rgb[1:].mean()
        if self.prior is not None:  # prior "zero123": SDS on random novel views
            sds, meta_novel = self._sds_step(step, progress)
            loss = loss + c.lambda_sds * sds
            logs["loss_sds"] = sds
            metas.append(meta_novel)

        num_gaussians = self._optimise(loss, opts, step, metas)  # backward, Adam steps, densification
        logs["loss"] = loss
        self.log_dict({f"{STAGE}/{k}": v.detach() for k, v in logs.items()}, prog_bar=False)
        self.log(f"{STAGE}/num_gaussians", float(num_gaussians))
        return loss.detach()

    def render(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               backgrounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        g = self.gaussians.activated()
        return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                         width, height, backgrounds=backgrounds)

    def _supervised_errors(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Mean squared RGB and alpha errors [V], [V] at the supervised cameras (the reference, then the views/
        of the "views" prior), rendered over white in one rasterizer call; and the render's meta."""
        v = self.viewmats.shape[0]
        white = torch.ones(v, 3, device=self.device)
        rgb, alpha, meta = self.render(self.viewmats, self.Ks, self.width, self.height, white)
        se_rgb = ((rgb - self.target_rgb) ** 2).mean(dim=(1, 2, 3))  # [V]
        se_mask = ((alpha - self.target_alpha) ** 2).mean(dim=(1, 2, 3))  # [V]
        return se_rgb, se_mask, meta

    def _sds_step(self, step: int, progress: float) -> tuple[torch.Tensor, dict]:
        """Zero-1-to-3 SDS on `novel_views` random cameras around the reference (deterministic per step)."""
        cams, d_elev, d_azim, black = novel_views(self.cfg, self.reference, self.width, self.height, self.seed, step)
        size = novel_size(self.cfg, progress)
        viewmats, Ks = stack_cameras(cams, size, size, device=self.device)
        b = len(cams)
        bg = (~black).float()[:, None].expand(b, 3).to(self.device)
        rgb, _, meta = self.render(viewmats, Ks, size, size, bg.contiguous())
        sds = self.prior.sds(rgb.permute(0, 3, 1, 2), d_elev, d_azim, torch.zeros(b), progress, self.cfg.sds)
        return sds, meta

    def _optimise(self, loss: torch.Tensor, opts: dict[str, torch.optim.Optimizer], step: int,
                  metas: list[dict]) -> int:
        """Backward, one step of every attribute's Adam, then densification (`Densifier`, on the renders' metas).
        Returns the number of Gaussians after it."""
        splats = self.gaussians.splats
        self.densifier.before_backward(splats, opts, step + 1, metas)
        self.manual_backward(loss)
        lightning_opts = self.optimizers()
        lightning_opts[0].step()  # the Lightning wrapper counts global_step once per training step ...
        for o in list(opts.values())[1:]:
            o.step()  # ... the other attributes' optimisers are stepped directly
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        return int(self.densifier.after_backward(splats, opts, step + 1, metas)["num_gaussians"])

    # optimisers ---------------------------------------------------------------------------------
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        c = self.cfg
        lrs = {"means": c.lr_means, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities,
               "sh0": c.lr_sh0, "shN": c.lr_sh0 / 20.0}
        return [torch.optim.Adam([self.gaussians.splats[n]], lr=lrs[n], eps=1e-15) for n in PARAM_NAMES]

    def _optimizer_dict(self) -> dict[str, torch.optim.Optimizer]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return {n: getattr(o, "optimizer", o) for n, o in zip(PARAM_NAMES, opts)}

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


# --- the module's pieces ----------------------------------------------------------------------------


def means_lr(cfg: StaticConfig, step: int) -> float:
    """The means' learning rate at `step`: exponential decay from lr_means to lr_means_final over the steps."""
    t = min(max(step / max(cfg.steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(cfg.lr_means) + t * math.log(cfg.lr_means_final))


def novel_size(cfg: StaticConfig, progress: float) -> int:
    """Render size of the novel views at training progress in [0, 1] (`novel_sizes` / `novel_size_until`)."""
    for size, until in zip(cfg.novel_sizes, cfg.novel_size_until):
        if progress < until:
            return int(size)
    return int(cfg.novel_sizes[-1])


def novel_views(cfg: StaticConfig, ref: Camera, width: int, height: int, seed: int, step: int
                ) -> tuple[list[Camera], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `novel_views` random cameras of one step (deterministic per seed and step) around the reference
    camera `ref`: (cameras, Δelevation [B], Δazimuth [B] degrees, black background [B] bool). Square, with the
    field of view of the square the `width` x `height` reference was padded to for the prior."""
    g = torch_generator(seed, STATIC_NOVEL_VIEWS, step)
    b = cfg.novel_views
    lo = max(cfg.novel_elevation[0], -80.0 - ref.elevation)  # keep the absolute elevation in [-80, 80]
    hi = min(cfg.novel_elevation[1], 80.0 - ref.elevation)
    d_elev = lo + (hi - lo) * torch.rand(b, generator=g)
    d_azim = -180.0 + 360.0 * torch.rand(b, generator=g)
    fov = square_fov_y(ref.fov_y, width, height)
    cams = [Camera("novel", ref.elevation + float(e), ref.azimuth + float(a), ref.radius, fov)
            for e, a in zip(d_elev, d_azim)]
    black = torch.rand(b, generator=g) < cfg.black_background
    return cams, d_elev, d_azim, black


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


class Steps(IterableDataset):
    """An endless stream of dummy batches: the stage samples its own cameras."""

    def __iter__(self) -> Iterator[int]:
        while True:
            yield 0
