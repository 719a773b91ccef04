"""Losses of the dynamic stage as plain functions (the stage weighs them with its λs and logs each one).

- `reference_loss`: MSE of RGB and alpha between renders at the reference camera and driving frames.
- `keypoint_match_loss` (KML): confidence-weighted mean over keypoints and frames of the squared distance
  between keypoints detected on the render and the driving frame's keypoints, in coordinates normalised by
  the image size (x / W, y / H), so its λ does not depend on the resolution: a 1-pixel error at 128 px
  costs (1/128)² whatever the image size would be in pixels.
- `spatiotemporal_consistency_loss` (SCL): mean over Gaussians of ‖P_{τ+1} − P_τ‖² on centres.
- Pose Alignment Loss (PAL) = λ_kml · KML + λ_scl · SCL (`pose_alignment_loss`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dynapose4d.core.images import over_background

#: A differentiable keypoint detector on images [B, 3, H, W] in [0, 1] -> (points [B, N, 2] px, conf [B, N]).
KeypointFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def reference_loss(
    render_rgb: torch.Tensor,  # [B, H, W, 3] (composited over `background`)
    render_alpha: torch.Tensor,  # [B, H, W, 1]
    target_rgba: torch.Tensor,  # [B, H, W, 4] straight RGBA
    background: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE of RGB, MSE of alpha); the target RGB is composited over the same background as the render."""
    a = target_rgba[..., 3:4]
    target_rgb = over_background(target_rgba, background)
    return ((render_rgb - target_rgb) ** 2).mean(), ((render_alpha - a) ** 2).mean()


def keypoint_match_loss(
    pred: torch.Tensor,  # [B, N, 2] pixels (keypoints on the renders)
    target: torch.Tensor,  # [B, N, 2] pixels (keypoints on the driving frames)
    confidence: torch.Tensor | None,  # [B, N] weights of the targets (None = all 1)
    width: int,
    height: int,
) -> torch.Tensor:
    """KML: Σ c ‖(pred − target) / (W, H)‖² / Σ c over keypoints and frames (0 when they coincide)."""
    scale = pred.new_tensor([float(width), float(height)])
    d2 = (((pred - target.to(pred)) / scale) ** 2).sum(-1)  # [B, N]
    if confidence is None:
        return d2.mean()
    c = confidence.to(d2).clamp(min=0.0)
    return (c * d2).sum() / c.sum().clamp(min=1e-8)


def spatiotemporal_consistency_loss(positions: torch.Tensor) -> torch.Tensor:
    """SCL over a sequence of consecutive frames: positions [S, N, 3] (S ≥ 2) ->
    mean over the S − 1 steps and N Gaussians of ‖P_{s+1} − P_s‖². Pairs of frames: pass [2, N, 3] each or
    use `scl_pairs`."""
    if positions.shape[0] < 2:
        return positions.new_zeros(())
    return ((positions[1:] - positions[:-1]) ** 2).sum(-1).mean()


def scl_pairs(p_now: torch.Tensor, p_next: torch.Tensor) -> torch.Tensor:
    """SCL on B independent pairs of consecutive frames: p_now, p_next [B, N, 3] -> mean ‖P_{τ+1} − P_τ‖²."""
    return ((p_next - p_now) ** 2).sum(-1).mean()


def pose_alignment_loss(kml: torch.Tensor | float, scl: torch.Tensor | float, lambda_kml: float,
                        lambda_scl: float) -> torch.Tensor | float:
    """PAL = λ_kml · KML + λ_scl · SCL."""
    return lambda_kml * kml + lambda_scl * scl


def knn_indices(points: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Indices [N, k] of the k nearest other points of each of points [N, 3] (chunked; no gradient)."""
    p = points.detach()
    k = min(k, p.shape[0] - 1)
    out = []
    for i in range(0, p.shape[0], chunk):
        d = torch.cdist(p[i:i + chunk], p)  # [c, N]
        d[torch.arange(d.shape[0]), torch.arange(i, i + d.shape[0])] = float("inf")  # not itself
        out.append(d.topk(k, largest=False).indices)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long)


def rigidity_loss(means: torch.Tensor, canonical: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Local isometry: mean over Gaussians i, neighbours j and frames of (‖x_i − x_j‖ − ‖s_i − s_j‖)², deformed
    centres means [B, N, 3], canonical centres [N, 3], neighbours [N, k] (`knn_indices` of the canonical).
    Not part of the paper's losses: a standard regulariser (as-rigid-as-possible, SC4D / Dynamic 3D Gaussians)
    against motion that only the reference view constrains (off by default)."""
    d_t = (means.unsqueeze(2) - means[:, neighbours]).norm(dim=-1)  # [B, N, k]
    d_0 = (canonical.unsqueeze(1) - canonical[neighbours]).norm(dim=-1)  # [N, k]
    return ((d_t - d_0.detach().unsqueeze(0)) ** 2).mean()


def bone_length_loss(points: torch.Tensor, rest: torch.Tensor, bones: torch.Tensor) -> torch.Tensor:
    """Constant bone lengths: mean over frames and bones (i, j) of ((‖p_i − p_j‖ − l_ij) / l_ij)², points
    [B, K, 3] (keypoint tracks at B frames), rest [K, 3] (their canonical positions, l_ij = ‖r_i − r_j‖),
    bones [E, 2] keypoint indices (the support's skeleton). Relative, so its λ does not depend on the object's
    size. Not part of the paper's losses: the articulated-object prior behind "the skeleton keeps its bones"
    (zero-length bones are skipped)."""
    if bones.numel() == 0:
        return points.new_zeros(())
    i, j = bones[:, 0], bones[:, 1]
    l0 = (rest[i] - rest[j]).norm(dim=-1).detach()  # [E]
    ok = l0 > 1e-6
    if not bool(ok.any()):
        return points.new_zeros(())
    lt = (points[:, i[ok]] - points[:, j[ok]]).norm(dim=-1)  # [B, E']
    return (((lt - l0[ok]) / l0[ok]) ** 2).mean()
