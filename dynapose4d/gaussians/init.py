"""Initial Gaussians for the static stage: an inflated lift of the input image, or a random ball.

- `image_init`: the object mask of the input image is lifted into 3D around the plane through the origin that
  faces the reference camera. Every sampled mask pixel becomes two Gaussians, one on a front surface (towards
  the camera) and one on a back surface, at camera depth `z0 ∓ h(d)` where `d` is the pixel's distance to the
  background (the mask's distance transform, in pixels) and `h(d) = inflate · sqrt(d · (2·d_max − d))`
  converted to world units at depth z0. A disc-shaped mask becomes a sphere (inflate = 1); thin parts stay thin
  near their outline. Both surfaces take the pixel's colour (the back one is the front mirrored through the
  plane). Needs no weights and works on any RGBA image.
- `sphere_init`: points uniform in a ball, grey-ish random colours (DreamGaussian's default: 5000 points in
  radius 0.5).

Scales start at the mean distance to the 3 nearest neighbours (as 3DGS / DreamGaussian do), opacities at a
constant.
"""

from __future__ import annotations

import math

import torch

from dynapose4d.core.cameras import Camera, unproject
from dynapose4d.gaussians.model import GaussianModel


def distance_transform(mask: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Exact Euclidean distance [H, W] (pixels) from each pixel of a boolean `mask` [H, W] to the nearest pixel
    outside it (outside the image counts as outside the mask); 0 outside the mask."""
    H, W = mask.shape
    padded = torch.zeros(H + 2, W + 2, dtype=torch.bool)
    padded[1:-1, 1:-1] = mask.bool()
    bg = ~padded
    # the nearest background pixel of a mask pixel is a background pixel with a mask neighbour
    near = torch.zeros_like(bg)
    near[1:, :] |= padded[:-1, :]
    near[:-1, :] |= padded[1:, :]
    near[:, 1:] |= padded[:, :-1]
    near[:, :-1] |= padded[:, 1:]
    border = torch.nonzero(bg & near).float()  # [B, 2]
    inside = torch.nonzero(padded)  # [M, 2]
    out = torch.zeros(H + 2, W + 2)
    if inside.numel() and border.numel():
        d = torch.cat([torch.cdist(inside[i:i + chunk].float(), border).amin(dim=1)
                       for i in range(0, inside.shape[0], chunk)])
        out[inside[:, 0], inside[:, 1]] = d
    return out[1:-1, 1:-1]


def knn_scale(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """Mean distance [N] from every point [N, 3] to its k nearest neighbours (a Gaussian's initial size)."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01)
    k = min(k, n - 1)
    out = []
    for i in range(0, n, chunk):
        d = torch.cdist(points[i:i + chunk], points)  # [c, N]
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, 1:].mean(dim=1))
    return torch.cat(out)


def sphere_init(num_points: int = 5000, radius: float = 0.5, opacity: float = 0.1,
                generator: torch.Generator | None = None) -> GaussianModel:
    """`num_points` Gaussians uniform in a ball of `radius` around the origin, random colours around grey."""
    g = generator
    direction = torch.randn(num_points, 3, generator=g)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-8)
    r = radius * torch.rand(num_points, 1, generator=g).pow(1.0 / 3.0)
    points = direction * r  # [N, 3]
    rgb = 0.5 + 0.1 * (torch.rand(num_points, 3, generator=g) - 0.5)
    return GaussianModel.from_points(points, rgb, scale=knn_scale(points).clamp_min(1e-4)[:, None].repeat(1, 3),
                                     opacity=opacity)


def image_init(
    image: torch.Tensor,  # [H, W, 4] straight RGBA in [0, 1]
    camera: Camera,
    num_points: int = 5000,
    inflate: float = 1.0,
    opacity: float = 0.1,
    alpha_threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> GaussianModel:
    """Lift the mask of `image`, seen from `camera`, into an inflated front + back surface of `num_points`
    (rounded down to even) Gaussians coloured from the image (see the module docstring)."""
    H, W = image.shape[:2]
    mask = image[..., 3] > alpha_threshold  # [H, W]
    if not bool(mask.any()):
        raise ValueError("image_init: the image's alpha channel has no pixel above the threshold (empty mask)")
    dist = distance_transform(mask)  # [H, W] pixels
    ij = torch.nonzero(mask)  # [M, 2]
    m = ij.shape[0]
    count = max(1, num_points // 2)
    if count <= m:  # fewer points than mask pixels: a random subset, jittered over the pixels they stand for
        pick = torch.randperm(m, generator=generator)[:count]
    else:  # more: every pixel, then random pixels again (jittered inside the pixel)
        pick = torch.cat([torch.arange(m), torch.randint(0, m, (count - m,), generator=generator)])
    ij = ij[pick]
    jitter = torch.rand(count, 2, generator=generator) - 0.5  # sub-pixel position, in pixels
    spread = max(1.0, math.sqrt(m / count))
    px = torch.stack([ij[:, 1].float() + 0.5, ij[:, 0].float() + 0.5], dim=-1) + jitter * spread
    d = dist[ij[:, 0], ij[:, 1]] - 0.5  # [count] distance of the pixel centre to the outline (>= 0.5)
    d_max = float(dist.max()) - 0.5
    h_px = inflate * torch.sqrt((d * (2.0 * d_max - d)).clamp_min(0.0))  # [count]
    viewmat, K = camera.viewmat(), camera.K(W, H)
    z0 = float(viewmat[2, 3])  # camera depth of the origin (the plane the object is lifted around)
    h = h_px * z0 / float(K[1, 1])  # world units at depth z0
    front = unproject(px, z0 - h, viewmat, K)  # [count, 3]
    back = unproject(px, z0 + h, viewmat, K)
    points = torch.cat([front, back])  # [2 count, 3]
    rgb = image[ij[:, 0], ij[:, 1], :3].clamp(0.0, 1.0)
    rgb = torch.cat([rgb, rgb])
    return GaussianModel.from_points(points, rgb, scale=knn_scale(points).clamp_min(1e-4)[:, None].repeat(1, 3),
                                     opacity=opacity)
