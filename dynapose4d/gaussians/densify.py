"""Densification and pruning: the one adapter in front of `gsplat.strategy.DefaultStrategy`.

gsplat's strategy (clone small / split large Gaussians with a high image-plane gradient, prune transparent and
oversized ones) is plain torch and runs on CPU with our rasterizer's `meta`. It expects one optimizer per
parameter of the `splats` dict, and reads `meta["means2d"].grad`. This adapter

- accepts the metas of several rasterizer calls in one step (e.g. a reference render and novel views at
  another resolution) and merges them, so their gradients count exactly as gsplat would count them one by one;
- resets opacities on its own schedule (gsplat 1.5.3's reset test `step % n == 0 & step > 0` is always False);
- caps the number of Gaussians (no growth past `max_gaussians`);
- carries the strategy's running statistics through checkpoints (`state_dict` / `load_state_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Rule


@dataclass
class DensifyConfig:
    """Densification settings (DreamGaussian's schedule by default; gsplat's DefaultStrategy does the work)."""

    enabled: bool = True  # densify and prune at all
    start_step: int = 100  # first refinement after this step (DreamGaussian: 100)
    stop_step: int = 3000  # no refinement (and no opacity reset) from this step on (DreamGaussian: 3000)
    every: int = 100  # refinement interval in steps (DreamGaussian: 100)
    grow_grad2d: float = 0.5  # mean image-plane gradient (NDC units, gsplat's) above which Gaussians grow
    grow_scale3d: float = 0.05  # world size below which a growing Gaussian is cloned, above which it is split
    prune_opacity: float = 0.01  # Gaussians less opaque than this are removed (DreamGaussian: 0.01)
    prune_scale3d: float = 0.1  # after the first opacity reset, Gaussians larger than this are removed
    reset_opacity_every: int = 700  # opacity reset interval in steps, our own schedule (0 = never; DG: 700)
    reset_opacity_value: float = 0.01  # opacities are clamped to at most this value at a reset
    max_gaussians: int = 100000  # no growth beyond this many Gaussians (pruning continues)

    RULES: ClassVar[dict[str, Rule]] = {
        "start_step": AT_LEAST_0, "stop_step": AT_LEAST_0, "every": AT_LEAST_1, "grow_grad2d": POSITIVE,
        "grow_scale3d": POSITIVE, "prune_opacity": FRACTION, "prune_scale3d": POSITIVE,
        "reset_opacity_every": AT_LEAST_0, "reset_opacity_value": FRACTION, "max_gaussians": AT_LEAST_1,
    }


class Densifier:
    """Drives `gsplat.strategy.DefaultStrategy` from our rasterizer's metas; see the module docstring.

    Call `before_backward(params, optimizers, step, metas)` after rendering and before `backward()`, then
    `after_backward(...)` after the optimisers stepped. `params` is the model's `splats` ParameterDict (modified
    in place: densification replaces its tensors), `optimizers` maps the same names to torch optimizers.
    """

    def __init__(self, cfg: DensifyConfig, scene_scale: float = 1.0) -> None:
        self.cfg = cfg
        reset = cfg.reset_opacity_every if cfg.reset_opacity_every > 0 else 10**9
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opacity,
            grow_grad2d=cfg.grow_grad2d,
            grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d,
            refine_start_iter=cfg.start_step,
            refine_stop_iter=cfg.stop_step,
            refine_every=cfg.every,
            reset_every=reset,  # used by gsplat for "prune too large after the first reset" only
        )
        self.state: dict[str, Any] = self.strategy.initialize_state(scene_scale=scene_scale)

    def check(self, params: Any, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """gsplat's sanity check: one optimizer with one parameter group per parameter."""
        self.strategy.check_sanity(params, optimizers)

    def before_backward(self, params: Any, optimizers: dict[str, torch.optim.Optimizer], step: int,
                        metas: list[dict]) -> None:
        """Keep the gradients of the 2D means of every render of this step."""
        if not self.cfg.enabled:
            return
        for meta in metas:
            self.strategy.step_pre_backward(params, optimizers, self.state, step, meta)

    @torch.no_grad()
    def after_backward(self, params: Any, optimizers: dict[str, torch.optim.Optimizer], step: int,
                       metas: list[dict]) -> dict[str, int]:
        """Accumulate statistics, refine on schedule, reset opacities on schedule.
        Returns {"num_gaussians": N after this step, "reset": 1 if opacities were reset} for logging."""
        out = {"num_gaussians": len(params["means"]), "reset": 0}
        if not self.cfg.enabled or not metas:
            return out
        meta = metas[0] if len(metas) == 1 else merge_metas(metas)
        dev = params["means"].device  # statistics restored from a checkpoint may sit on another device
        self.state = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in self.state.items()}
        # growth is switched off past the cap; pruning still runs
        full = len(params["means"]) >= self.cfg.max_gaussians
        self.strategy.grow_grad2d = math.inf if full else self.cfg.grow_grad2d
        self.strategy.step_post_backward(params, optimizers, self.state, step, meta, packed=False)
        every = self.cfg.reset_opacity_every
        if every > 0 and step > 0 and step % every == 0 and step < self.cfg.stop_step:
            reset_opa(params, optimizers, self.state, value=self.cfg.reset_opacity_value)
            out["reset"] = 1
        out["num_gaussians"] = len(params["means"])
        return out

    # checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The strategy's running statistics (tensors sized like the current Gaussians, or None)."""
        return {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.state = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in state.items()}


def merge_metas(metas: list[dict]) -> dict:
    """One meta for several rasterizer calls over the same Gaussians: cameras concatenated, and each call's
    `means2d` gradient pre-scaled by its own (width/2 · n_cameras, height/2 · n_cameras), as gsplat's
    DefaultStrategy would scale it, so that the merged meta (width = height = 2, one camera) accumulates the
    same statistics as the calls fed one at a time. Call after `backward()`."""
    grads, radii = [], []
    for m in metas:
        g = m["means2d"].grad
        if g is None:
            g = torch.zeros_like(m["means2d"])
        n = m["n_cameras"]
        scale = g.new_tensor([m["width"] / 2.0 * n, m["height"] / 2.0 * n])
        grads.append(g * scale)
        radii.append(m["radii"])
    grad = torch.cat(grads, dim=0)  # [C_total, N, 2]
    means2d = torch.zeros_like(grad)
    means2d.grad = grad
    return {"means2d": means2d, "radii": torch.cat(radii, dim=0), "width": 2, "height": 2, "n_cameras": 1,
            "gaussian_ids": None}
