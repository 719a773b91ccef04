"""The rasterizer entry point (DESIGN §4)."""

from __future__ import annotations

from typing import Literal

import torch

from dynapose4d.render.projection import project_gaussians, quat_scale_to_covar
from dynapose4d.render.torch_backend import composite_torch

RenderMode = Literal["RGB", "RGB+ED"]
Backend = Literal["auto", "torch", "gsplat"]


def rasterize(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] (w, x, y, z), need not be unit
    scales: torch.Tensor,  # [N, 3] (activated, not log)
    opacities: torch.Tensor,  # [N] in [0, 1]
    colors: torch.Tensor,  # [N, D] (D = 3 for RGB)
    viewmats: torch.Tensor,  # [C, 4, 4] world-to-camera, OpenCV
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    backend: Backend = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render Gaussians into C cameras.

    Returns `render` [C, H, W, D] (D+1 with "RGB+ED": expected depth, normalised by alpha, last),
    `alphas` [C, H, W, 1] and `meta` with what gsplat's densification strategies read: `means2d`
    [C, N, 2] (a non-leaf tensor whose gradient they collect), `radii` [C, N, 2] int32, `width`,
    `height`, `n_cameras`, `gaussian_ids` (None: not packed), plus `depths` [C, N] and `conics` [C, N, 3].
    Differentiable in every floating input. Same numbers as gsplat 1.5.3 (classic mode, not packed).
    """
    if render_mode not in ("RGB", "RGB+ED"):
        raise ValueError(f"render_mode must be 'RGB' or 'RGB+ED', got {render_mode!r}")
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                 backgrounds, render_mode)
    return _rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                          backgrounds, render_mode)


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                      render_mode):
    from gsplat import rasterization

    render, alphas, info = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        backgrounds=backgrounds, render_mode=render_mode, rasterize_mode="classic", packed=False,
    )
    info = dict(info)
    info.setdefault("n_cameras", viewmats.shape[0])
    return render, alphas, info


def _rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds,
                   render_mode):
    C = viewmats.shape[0]
    covars = quat_scale_to_covar(quats, scales)  # [N, 3, 3]
    proj = project_gaussians(means, covars, opacities, viewmats, Ks, width, height)
    renders, alphas = [], []
    for c in range(C):
        feats = colors
        if render_mode == "RGB+ED":
            feats = torch.cat([colors, proj.depths[c, :, None]], dim=-1)  # [N, D+1]
        visible = (proj.radii[c] > 0).all(dim=-1)
        img, alpha = composite_torch(proj.means2d[c], proj.conics[c], feats, opacities, proj.depths[c],
                                     visible, width, height)
        if backgrounds is not None:
            bg = backgrounds[c]
            if render_mode == "RGB+ED":
                bg = torch.cat([bg, bg.new_zeros(1)])
            img = img + (1.0 - alpha) * bg
        if render_mode == "RGB+ED":
            img = torch.cat([img[..., :-1], img[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
        renders.append(img)
        alphas.append(alpha)
    meta = {
        "means2d": proj.means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "width": width,
        "height": height,
        "n_cameras": C,
        "gaussian_ids": None,
        "tile_size": 16,
    }
    return torch.stack(renders), torch.stack(alphas), meta
