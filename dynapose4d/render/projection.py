"""EWA projection of 3D Gaussians to the image plane, with gsplat 1.5.3's numbers (plain torch, differentiable).

Follows `gsplat.fully_fused_projection` for the pinhole camera: world-to-camera, clamped Jacobian, eps2d
blur added to the 2D covariance, opacity-aware axis-aligned radii (3.33 sigma, shrunk where the opacity is
low), culling by near/far plane and image bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: alphas below it are skipped
MAX_ALPHA = 0.999  # gsplat 1.5.3 clamps alpha to min(0.999, o * exp(-sigma))
TRANSMITTANCE_STOP = 1e-4  # compositing stops (exclusive) when the next transmittance would be <= this


@dataclass
class Projected:
    """Per-camera 2D Gaussians. Shapes: C cameras, N Gaussians."""

    means2d: torch.Tensor  # [C, N, 2] pixels, pixel centres at +0.5
    conics: torch.Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): sigma = .5(a dx^2 + c dy^2) + b dx dy
    depths: torch.Tensor  # [C, N] camera z
    radii: torch.Tensor  # [C, N, 2] int32 half-extent of the bounding box in pixels; 0 = culled


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """3D covariances [N, 3, 3] from quaternions [N, 4] (w, x, y, z; normalised here) and scales [N, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))
    M = R * scales.unsqueeze(-2)  # R @ diag(s)
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,  # [N, 3]
    covars: torch.Tensor,  # [N, 3, 3]
    opacities: torch.Tensor,  # [N]
    viewmats: torch.Tensor,  # [C, 4, 4]
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projected:
    """Project 3D Gaussians into C pinhole cameras (gsplat's classic, non-packed projection)."""
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    mc = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    cov_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # [C, N, 3, 3]

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tx, ty, tz_raw = mc.unbind(-1)  # [C, N]
    depth_ok = (tz_raw >= near_plane) & (tz_raw <= far_plane)  # gsplat culls z < near or z > far
    # culled Gaussians get z = 1 so that nothing divides by ~0 (their gradients are then exactly zero, not NaN)
    tz = torch.where(depth_ok, tz_raw, torch.ones_like(tz_raw))
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    txc = tz * torch.clamp(tx / tz, min=-lim_x_neg, max=lim_x_pos)
    tyc = tz * torch.clamp(ty / tz, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(tz)
    J = torch.stack(
        [fx / tz, zero, -fx * txc / tz**2, zero, fy / tz, -fy * tyc / tz**2], dim=-1
    ).reshape(mc.shape[:-1] + (2, 3))  # [C, N, 2, 3]
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * tx / tz + cx, fy * ty / tz + cy], dim=-1)  # [C, N, 2]

    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_safe = det.clamp(min=1e-10)
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]

    with torch.no_grad():
        o = opacities.detach().expand_as(tz)
        extend = torch.clamp(torch.sqrt(2.0 * torch.log(o.clamp(min=1e-30) / ALPHA_THRESHOLD).clamp(min=0)), max=3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp(min=0)))
        mx, my = means2d.detach().unbind(-1)
        valid = (
            (det.detach() > 0)
            & depth_ok
            & (o >= ALPHA_THRESHOLD)
            & ((rx > 0) | (ry > 0))
            & (mx + rx > 0)
            & (mx - rx < width)
            & (my + ry > 0)
            & (my - ry < height)
        )
        radii = torch.stack([rx, ry], dim=-1) * valid.unsqueeze(-1)
        radii = radii.to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=tz_raw, radii=radii)
