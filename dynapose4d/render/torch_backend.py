"""Pure-torch compositing of projected Gaussians (the CPU fallback; autograd gives the backward pass).

Front-to-back alpha compositing with gsplat's constants, evaluated for blocks of pixels against the
Gaussians sorted by depth. Exact but memory-bound; the compiled CPU kernel replaces it where it builds.
"""

from __future__ import annotations

import torch

from dynapose4d.render.projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_STOP


def composite_torch(
    means2d: torch.Tensor,  # [N, 2] one camera
    conics: torch.Tensor,  # [N, 3]
    colors: torch.Tensor,  # [N, D]
    opacities: torch.Tensor,  # [N]
    depths: torch.Tensor,  # [N]
    visible: torch.Tensor,  # [N] bool (radii > 0)
    width: int,
    height: int,
    pixels_per_chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite one camera; returns colour [H, W, D] (no background) and alpha [H, W, 1]."""
    D = colors.shape[-1]
    idx = torch.nonzero(visible, as_tuple=False).squeeze(-1)
    if idx.numel() == 0:
        z = means2d.sum() * 0 + colors.sum() * 0 + opacities.sum() * 0 + conics.sum() * 0
        return z + torch.zeros(height, width, D, dtype=colors.dtype), z + torch.zeros(height, width, 1, dtype=colors.dtype)
    order = idx[torch.argsort(depths.detach()[idx], stable=True)]
    m, q, col, op = means2d[order], conics[order], colors[order], opacities[order]  # [M, ...]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=m.dtype) + 0.5, torch.arange(width, dtype=m.dtype) + 0.5, indexing="ij"
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # [P, 2]
    out_c, out_a = [], []
    for s in range(0, pix.shape[0], pixels_per_chunk):
        p = pix[s : s + pixels_per_chunk]  # [B, 2]
        d = m[None, :, :] - p[:, None, :]  # [B, M, 2]
        sigma = 0.5 * (q[:, 0] * d[..., 0] ** 2 + q[:, 2] * d[..., 1] ** 2) + q[:, 1] * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(op * torch.exp(-sigma), MAX_ALPHA)  # [B, M]
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))
        T_after = torch.cumprod(1.0 - alpha, dim=-1)  # [B, M]
        keep = T_after.detach() > TRANSMITTANCE_STOP  # monotone: the first failure stops the pixel
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        T_before = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], dim=-1), dim=-1)
        w = alpha * T_before  # [B, M]
        out_c.append(w @ col)
        out_a.append(w.sum(-1, keepdim=True))
    return torch.cat(out_c).reshape(height, width, D), torch.cat(out_a).reshape(height, width, 1)
