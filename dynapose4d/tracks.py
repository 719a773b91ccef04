"""3D keypoint tracks: the support keypoints lifted onto the canonical Gaussians and carried by φ.

1. `lift_keypoints`: render the canonical Gaussians' expected depth at the reference camera, read it at each
   keypoint pixel (or at the nearest pixel on the object when the keypoint falls off it), unproject.
2. `attach_points`: tie each 3D point to its k nearest Gaussian centres (normalised inverse-square-distance
   weights, offsets kept in each Gaussian's local frame).
3. `carry_points`: move the points with the deformed Gaussians: p' = Σ_j w_j (m'_j + R_j (p − m_j)), R_j the
   rotation φ applied to Gaussian j (identity when φ leaves its quaternion alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dynapose4d.cameras import Camera, project, unproject
from dynapose4d.deform.control import quat_to_matrix
from dynapose4d.render import rasterize


@dataclass
class Attachment:
    """Points tied to Gaussians: idx [K, k] Gaussian indices, weights [K, k] (rows sum to 1), offsets [K, k, 3]
    (point minus Gaussian centre, canonical world frame)."""

    idx: torch.Tensor
    weights: torch.Tensor
    offsets: torch.Tensor


def expected_depth(gaussians: dict[str, torch.Tensor], camera: Camera, width: int, height: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected depth [H, W] (normalised by alpha) and alpha [H, W] of activated Gaussians seen by `camera`."""
    viewmats = camera.viewmat()[None].to(gaussians["means"].device)
    Ks = camera.K(width, height)[None].to(gaussians["means"].device)
    with torch.no_grad():
        render, alpha, _ = rasterize(gaussians["means"], gaussians["quats"], gaussians["scales"],
                                     gaussians["opacities"], gaussians["colors"], viewmats, Ks, width, height,
                                     render_mode="RGB+ED")
    return render[0, ..., -1], alpha[0, ..., 0]


def lift_keypoints(
    gaussians: dict[str, torch.Tensor],  # activated canonical Gaussians (GaussianModel.activated())
    keypoints: torch.Tensor,  # [K, 2] pixels at the reference camera
    camera: Camera,
    width: int,
    height: int,
    alpha_threshold: float = 0.5,
    mode: str = "centre",
    max_inset: float = 0.15,
) -> torch.Tensor:
    """World points [K, 3]: each keypoint unprojected along its ray at the rendered expected depth under it
    (taken from the nearest pixel whose alpha ≥ `alpha_threshold` when its own pixel is off the object).

    mode "surface": at that depth (the visible surface). mode "centre": pushed behind the surface by the
    part's half-width in the image — the distance from the pixel to the silhouette, in world units at that
    depth, at most `max_inset` — since keypoints (joints) sit inside limbs whose depth ≈ their width."""
    if mode not in ("surface", "centre"):
        raise ValueError(f"lift mode must be 'surface' or 'centre', got {mode!r}")
    depth, alpha = expected_depth(gaussians, camera, width, height)  # [H, W]
    depth, alpha = depth.cpu(), alpha.cpu()
    kp = keypoints.detach().cpu().float()
    fg = alpha >= alpha_threshold
    on = fg.nonzero().float()  # [P, 2] (row, col)
    if on.shape[0] == 0:
        on = (alpha > 0).nonzero().float()
    off = (~fg).nonzero().float()  # background pixels
    focal = float(camera.K(width, height)[1, 1])
    depths = []
    for x, y in kp.tolist():
        i, j = min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)
        if alpha[i, j] < alpha_threshold and on.shape[0] > 0:
            centre = torch.tensor([y - 0.5, x - 0.5])
            i, j = (int(v) for v in on[((on - centre) ** 2).sum(-1).argmin()].tolist())
        d = float(depth[i, j])
        if mode == "centre" and off.shape[0] > 0:
            r_px = float(((off - torch.tensor([float(i), float(j)])) ** 2).sum(-1).min().sqrt()) - 0.5
            d += min(max(r_px, 0.0) * d / focal, max_inset)
        depths.append(d)
    return unproject(kp, torch.tensor(depths), camera.viewmat(), camera.K(width, height)).to(keypoints.device)


def attach_points(points: torch.Tensor, means: torch.Tensor, k: int = 8) -> Attachment:
    """Tie points [K, 3] to their k nearest Gaussian centres means [N, 3]."""
    k = min(k, means.shape[0])
    d2 = torch.cdist(points.detach(), means.detach()) ** 2  # [K, N]
    val, idx = d2.topk(k, largest=False)  # [K, k]
    w = 1.0 / (val + 1e-6)
    w = w / w.sum(-1, keepdim=True)
    return Attachment(idx=idx, weights=w, offsets=points.detach().unsqueeze(1) - means.detach()[idx])


def carry_points(
    att: Attachment,
    canonical_quats: torch.Tensor,  # [N, 4]
    deformed_means: torch.Tensor,  # [B, N, 3]
    deformed_quats: torch.Tensor,  # [B, N, 4]
) -> torch.Tensor:
    """Positions [B, K, 3] of attached points under deformed Gaussians."""
    q0 = torch.nn.functional.normalize(canonical_quats[att.idx], dim=-1)  # [K, k, 4]
    q1 = torch.nn.functional.normalize(deformed_quats[:, att.idx], dim=-1)  # [B, K, k, 4]
    R = quat_to_matrix(q1) @ quat_to_matrix(q0).transpose(-1, -2).unsqueeze(0)  # [B, K, k, 3, 3]
    moved = deformed_means[:, att.idx] + torch.einsum("bkjxy,kjy->bkjx", R, att.offsets.to(R))  # [B, K, k, 3]
    return (att.weights.to(moved).unsqueeze(0).unsqueeze(-1) * moved).sum(2)


def project_tracks(world: torch.Tensor, camera: Camera, width: int, height: int) -> torch.Tensor:
    """Pixels [..., 2] of world points [..., 3] in `camera` (pixel centres at +0.5)."""
    px, _ = project(world.float(), camera.viewmat(), camera.K(width, height))
    return px


def keypoint_tracks(
    canonical: Any,  # GaussianModel
    phi: Any,  # Deformation or None
    keypoints: torch.Tensor,  # [K, 2] pixels at the reference camera
    camera: Camera,
    width: int,
    height: int,
    num_frames: int,
    k: int = 8,
    lift: str = "centre",
) -> torch.Tensor:
    """World tracks [T, K, 3] of the support keypoints: lifted on the canonical Gaussians (`lift_keypoints`
    mode `lift`), carried by φ."""
    from dynapose4d.deform import gaussians_at

    with torch.no_grad():
        g0 = canonical.activated()
        world0 = lift_keypoints(g0, keypoints.to(g0["means"].device), camera, width, height, mode=lift)
        att = attach_points(world0, g0["means"], k)
        if phi is None:
            return world0.unsqueeze(0).expand(num_frames, -1, -1).clone()
        taus = torch.arange(num_frames, dtype=torch.float32, device=g0["means"].device) / max(num_frames - 1, 1)
        out = []
        for i in range(0, num_frames, 8):
            g = gaussians_at(canonical, phi, taus[i:i + 8])
            out.append(carry_points(att, g0["quats"], g["means"], g["quats"]))
        return torch.cat(out)
