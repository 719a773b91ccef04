"""The rasterizer entry point (`rasterize()`, see dynapose4d.render)."""

from __future__ import annotations

from typing import Literal

import torch

from dynapose4d.render.cpu_kernel import composite_cpp, extension_available
from dynapose4d.render.projection import project_gaussians, quat_scale_to_covar
from dynapose4d.render.torch_backend import TILE_SIZE, composite_torch

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
    return rasterize_cpu(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
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


Compositor = Literal["auto", "cpp", "torch"]


def rasterize_cpu(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor,  # [N, D]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    compositor: Compositor = "auto",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The project's own backend (any device torch runs on; meant for CPU), same outputs as `rasterize()`.

    Projection in torch (autograd); compositing in the compiled C++ kernel (`compositor="cpp"`), the pure-torch
    tile compositor (`"torch"`), or the first that is available (`"auto"`: C++ unless it cannot be built).
    """
    if compositor not in ("auto", "cpp", "torch"):
        raise ValueError(f"compositor must be 'auto', 'cpp' or 'torch', got {compositor!r}")
    C, N, D = viewmats.shape[0], means.shape[0], colors.shape[-1]
    covars = quat_scale_to_covar(quats, scales)  # [N, 3, 3]
    proj = project_gaussians(means, covars, opacities, viewmats, Ks, width, height)
    feats = colors.to(proj.means2d.dtype).expand(C, N, D)  # [C, N, D]
    bg = backgrounds
    if render_mode == "RGB+ED":
        feats = torch.cat([feats, proj.depths[..., None]], dim=-1)  # [C, N, D+1]
        if bg is not None:
            bg = torch.cat([bg, bg.new_zeros(C, 1)], dim=-1)  # [C, D+1]: no background depth
    ops = opacities.to(proj.means2d.dtype).expand(C, N)  # [C, N]

    use_cpp = compositor == "cpp" or (compositor == "auto" and means.device.type == "cpu" and extension_available())
    if use_cpp:
        if not extension_available():
            raise RuntimeError("the compiled CPU rasterizer is not available (see the warning above)")
        render, alphas = composite_cpp(proj.means2d, proj.conics, feats, ops, bg, proj.radii, proj.depths,
                                       width, height)  # [C, H, W, D'], [C, H, W, 1]
    else:
        renders, alphas_l = [], []
        for c in range(C):
            img, alpha = composite_torch(proj.means2d[c], proj.conics[c], feats[c], ops[c], proj.radii[c],
                                         proj.depths[c], width, height)  # [H, W, D'], [H, W, 1]
            if bg is not None:
                img = img + (1.0 - alpha) * bg[c]
            renders.append(img)
            alphas_l.append(alpha)
        render, alphas = torch.stack(renders), torch.stack(alphas_l)
    if render_mode == "RGB+ED":
        render = torch.cat([render[..., :-1], render[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)
    meta = {
        "means2d": proj.means2d,  # [C, N, 2], non-leaf: DefaultStrategy calls retain_grad() on it
        "radii": proj.radii,  # [C, N, 2] int32
        "depths": proj.depths,  # [C, N]
        "conics": proj.conics,  # [C, N, 3]
        "opacities": ops,  # [C, N]
        "width": width,
        "height": height,
        "n_cameras": C,
        "gaussian_ids": None,
        "tile_size": TILE_SIZE,
        "compositor": "cpp" if use_cpp else "torch",
    }
    return render, alphas, meta
