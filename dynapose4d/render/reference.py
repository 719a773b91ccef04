"""A plain dense renderer (every pixel against every Gaussian) and object-like test scenes.

The dense renderer is the speed baseline of `python -m dynapose4d.bench` and an oracle in the tests. It has
gsplat's constants but no tiles: it differs from gsplat only for Gaussians whose radius was clamped to 3.33
sigma (opacity above ~0.998), where gsplat's tiles cut the faint rim.
"""

from __future__ import annotations

import math

import torch

from dynapose4d.core import seeding
from dynapose4d.render.projection import (
    ALPHA_THRESHOLD,
    MAX_ALPHA,
    TRANSMITTANCE_STOP,
    project_gaussians,
    quat_scale_to_covar,
)


def composite_dense(
    means2d: torch.Tensor,  # [N, 2] one camera
    conics: torch.Tensor,  # [N, 3]
    colors: torch.Tensor,  # [N, D]
    opacities: torch.Tensor,  # [N]
    depths: torch.Tensor,  # [N]
    visible: torch.Tensor,  # [N] bool
    width: int,
    height: int,
    pixels_per_chunk: int = 4096,
    checkpoint: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite one camera densely; returns colour [H, W, D] (no background) and alpha [H, W, 1].

    `checkpoint=True` recomputes each pixel chunk in the backward pass (memory of one chunk instead of all).
    """
    D = colors.shape[-1]
    idx = torch.nonzero(visible, as_tuple=False).squeeze(-1)
    zero = (means2d.sum() + colors.sum() + opacities.sum() + conics.sum()) * 0
    if idx.numel() == 0:
        return zero + colors.new_zeros(height, width, D), zero + colors.new_zeros(height, width, 1)
    order = idx[torch.argsort(depths.detach()[idx].float(), stable=True)]
    m, q, col, op = means2d[order], conics[order], colors[order], opacities[order]  # [M, ...]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=m.dtype, device=m.device) + 0.5,
        torch.arange(width, dtype=m.dtype, device=m.device) + 0.5, indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [P, 2]
    out_c, out_a = [], []
    for s in range(0, pix.shape[0], pixels_per_chunk):
        p = pix[s : s + pixels_per_chunk]  # [B, 2]
        if checkpoint:
            from torch.utils.checkpoint import checkpoint as ckpt

            c_out, a_out = ckpt(_dense_chunk, p, m, q, col, op, use_reentrant=False)
        else:
            c_out, a_out = _dense_chunk(p, m, q, col, op)
        out_c.append(c_out)
        out_a.append(a_out)
    return torch.cat(out_c).reshape(height, width, D), torch.cat(out_a).reshape(height, width, 1)


def _dense_chunk(p, m, q, col, op):
    """Pixels p [B, 2] against depth-sorted Gaussians m [M, 2], q [M, 3], col [M, D], op [M]."""
    dx = m[None, :, 0] - p[:, None, 0]  # [B, M]
    dy = m[None, :, 1] - p[:, None, 1]
    sigma = 0.5 * (q[:, 0] * dx * dx + q[:, 2] * dy * dy) + q[:, 1] * dx * dy
    alpha = torch.clamp_max(op * torch.exp(-sigma), MAX_ALPHA)  # [B, M]
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
    keep = torch.cumprod(1.0 - alpha.detach(), dim=-1) > TRANSMITTANCE_STOP  # the first failure stops the pixel
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    one_minus = 1.0 - alpha
    T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), one_minus[:, :-1]], dim=-1), dim=-1)
    w = alpha * T_before  # [B, M]
    return w @ col, 1.0 - T_before[:, -1:] * one_minus[:, -1:]  # [B, D], [B, 1]


def rasterize_dense(
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
    render_mode: str = "RGB",
    pixels_per_chunk: int = 4096,
    checkpoint: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`rasterize()` without tiles: render [C, H, W, D(+1)] and alphas [C, H, W, 1] (no meta)."""
    covars = quat_scale_to_covar(quats, scales)  # [N, 3, 3]
    proj = project_gaussians(means, covars, opacities, viewmats, Ks, width, height)
    renders, alphas = [], []
    for c in range(viewmats.shape[0]):
        feats = colors
        if render_mode == "RGB+ED":
            feats = torch.cat([colors, proj.depths[c, :, None]], dim=-1)  # [N, D+1]
        visible = (proj.radii[c] > 0).all(dim=-1)
        img, alpha = composite_dense(proj.means2d[c], proj.conics[c], feats, opacities, proj.depths[c], visible,
                                     width, height, pixels_per_chunk, checkpoint)
        if backgrounds is not None:
            bg = backgrounds[c]
            if render_mode == "RGB+ED":
                bg = torch.cat([bg, bg.new_zeros(1)])
            img = img + (1.0 - alpha) * bg
        if render_mode == "RGB+ED":
            img = torch.cat([img[..., :-1], img[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
        renders.append(img)
        alphas.append(alpha)
    return torch.stack(renders), torch.stack(alphas)


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, -1.0, 0.0)) -> torch.Tensor:
    """World-to-camera [4, 4] (OpenCV: x right, y down, z forward) looking from `eye` at `target`."""
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, torch.tensor(up, dtype=eye.dtype).expand_as(z))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    V = torch.eye(4, dtype=eye.dtype)
    V[:3, :3] = R
    V[:3, 3] = -R @ eye
    return V


def object_scene(
    n: int,
    n_cameras: int = 1,
    size: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    scale_range: tuple[float, float] = (0.01, 0.03),
    opacity_range: tuple[float, float] = (0.5, 0.9),
) -> dict:
    """A humanoid-ish object: n Gaussians on the surfaces of a few spheres and capsules (radius ~0.5 m).

    Returns a dict with the `rasterize()` inputs: means [n, 3], quats [n, 4], scales [n, 3], opacities [n],
    colors [n, 3], viewmats [C, 4, 4] (cameras on a circle at 1.6 m, looking at the origin), Ks [C, 3, 3],
    width, height, backgrounds [C, 3].
    """
    g = seeding.torch_generator(seed)
    # (centre, axis end offset, radius): a capsule is the set of points within radius of a segment
    parts = [
        ((0.0, -0.35, 0.0), (0.0, 0.0, 0.0), 0.13),  # head (sphere)
        ((0.0, -0.15, 0.0), (0.0, 0.3, 0.0), 0.16),  # torso
        ((-0.1, 0.2, 0.0), (-0.04, 0.3, 0.0), 0.06),  # legs
        ((0.1, 0.2, 0.0), (0.04, 0.3, 0.0), 0.06),
        ((-0.18, -0.12, 0.0), (-0.22, 0.15, 0.05), 0.045),  # arms
        ((0.18, -0.12, 0.0), (0.22, 0.15, -0.05), 0.045),
    ]
    a = torch.tensor([p[0] for p in parts], dtype=torch.float64)  # [K, 3]
    d = torch.tensor([p[1] for p in parts], dtype=torch.float64)
    rad = torch.tensor([p[2] for p in parts], dtype=torch.float64)
    area = 2 * math.pi * rad * d.norm(dim=-1) + 4 * math.pi * rad**2
    part = torch.multinomial(area / area.sum(), n, replacement=True, generator=g)  # [n]
    t = torch.rand(n, generator=g, dtype=torch.float64)
    normal = torch.randn(n, 3, generator=g, dtype=torch.float64)
    normal = normal / normal.norm(dim=-1, keepdim=True)
    means = a[part] + t[:, None] * d[part] + rad[part, None] * normal
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    lo, hi = scale_range
    scales = lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=torch.float64)
    scales[:, 2] *= 0.3  # flat, surfel-like
    olo, ohi = opacity_range
    opacities = olo + (ohi - olo) * torch.rand(n, generator=g, dtype=torch.float64)
    colors = 0.5 + 0.5 * normal * torch.rand(n, 1, generator=g, dtype=torch.float64)
    viewmats, Ks = [], []
    f = 1.4 * size  # ~40 deg field of view: the object fills most of the image height
    for c in range(n_cameras):
        ang = 2 * math.pi * c / max(n_cameras, 1) + 0.3
        eye = torch.tensor([1.6 * math.sin(ang), -0.2, -1.6 * math.cos(ang)], dtype=torch.float64)
        viewmats.append(look_at(eye, torch.zeros(3, dtype=torch.float64)))
        Ks.append(torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64))
    backgrounds = torch.rand(n_cameras, 3, generator=g, dtype=torch.float64)
    out = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
               viewmats=torch.stack(viewmats), Ks=torch.stack(Ks), backgrounds=backgrounds)
    out = {k: v.to(dtype) for k, v in out.items()}
    out.update(width=size, height=size)
    return out
