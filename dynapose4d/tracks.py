"""3D keypoint tracks: the support keypoints lifted onto the canonical Gaussians and carried by φ.

1. `lift_keypoints`: unproject each keypoint at the middle of the canonical Gaussians along its ray from the
   reference camera (`ray_depths`; or at the rendered surface depth, mode "surface").
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


def ray_depths(
    gaussians: dict[str, torch.Tensor],  # activated Gaussians (GaussianModel.activated())
    keypoints: torch.Tensor,  # [K, 2] pixels
    camera: Camera,
    width: int,
    height: int,
    k_nearest: int = 8,
) -> torch.Tensor:
    """Camera depth [K] of the middle of the object along each keypoint's ray.

    The weighted mean depth of every Gaussian whose footprint covers the pixel, weight = opacity x
    exp(-d²/2r²) (d: pixel distance to the projected centre, r: the largest scale projected), ignoring
    occlusion: joints sit inside limbs, not on their visible surface, and a joint hidden behind another part
    still lies on its ray. A keypoint that no footprint covers (off the object) takes the opacity-weighted
    depth of the `k_nearest` Gaussians projected nearest to it."""
    vm = camera.viewmat().to(gaussians["means"])
    K = camera.K(width, height).to(gaussians["means"])
    cam = gaussians["means"].detach() @ vm[:3, :3].T + vm[:3, 3]  # [N, 3] camera frame
    z = cam[:, 2]
    front = z > 1e-6
    zc = z.clamp(min=1e-6)
    uv = cam[:, :2] / zc[:, None] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])  # [N, 2]
    r = (gaussians["scales"].detach().amax(-1) * K[1, 1] / zc).clamp(min=0.5)  # [N] footprint std in pixels
    d2 = torch.cdist(keypoints.detach().to(uv).float(), uv.float()) ** 2  # [K, N]
    opac = gaussians["opacities"].detach().float() * front
    w = opac[None] * torch.exp(-0.5 * d2 / r[None].float() ** 2)  # [K, N]
    depth = (w * zc[None]).sum(-1) / w.sum(-1).clamp(min=1e-12)
    off = w.sum(-1) < 1e-3  # nothing covers the pixel
    if off.any():
        far = torch.where(front[None], d2[off], torch.full_like(d2[off], float("inf")))
        _, idx = far.topk(min(k_nearest, far.shape[1]), largest=False)  # [K', k]
        wk = opac[idx].clamp(min=1e-6)
        depth[off] = (wk * zc[idx]).sum(-1) / wk.sum(-1)
    return depth


def lift_keypoints(
    gaussians: dict[str, torch.Tensor],  # activated canonical Gaussians (GaussianModel.activated())
    keypoints: torch.Tensor,  # [K, 2] pixels at the reference camera
    camera: Camera,
    width: int,
    height: int,
    mode: str = "ray",
    alpha_threshold: float = 0.5,
) -> torch.Tensor:
    """World points [K, 3]: each keypoint unprojected along its ray.

    mode "ray" (default): at `ray_depths`, the middle of the object along the ray (where joints are).
    mode "surface": at the rendered expected depth (the visible surface), read at the nearest pixel whose
    alpha ≥ `alpha_threshold` when the keypoint's own pixel is off the object.
    On synthetic scenes the ray lift is 2-7x closer to the true 3D joints than the surface (mean error over
    the keypoints of three scenes: 0.005-0.05 vs 0.025-0.11 world units)."""
    kp = keypoints.detach().cpu().float()
    if mode == "ray":
        g = {k: v.detach().cpu().float() for k, v in gaussians.items()}
        depths = ray_depths(g, kp, camera, width, height)
    elif mode == "surface":
        depth, alpha = (x.cpu() for x in expected_depth(gaussians, camera, width, height))  # [H, W]
        on = (alpha >= alpha_threshold).nonzero().float()  # [P, 2] (row, col)
        if on.shape[0] == 0:
            on = (alpha > 0).nonzero().float()
        vals = []
        for x, y in kp.tolist():
            i, j = min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)
            if alpha[i, j] < alpha_threshold and on.shape[0] > 0:
                i, j = (int(v) for v in on[((on - torch.tensor([y - 0.5, x - 0.5])) ** 2).sum(-1).argmin()].tolist())
            vals.append(float(depth[i, j]))
        depths = torch.tensor(vals)
    else:
        raise ValueError(f"lift mode must be 'ray' or 'surface', got {mode!r}")
    return unproject(kp, depths, camera.viewmat(), camera.K(width, height)).to(keypoints.device)


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


def attach_keypoints(
    g0: dict[str, torch.Tensor],  # activated canonical Gaussians (GaussianModel.activated())
    keypoints: torch.Tensor,  # [K, 2] pixels at the reference camera
    camera: Camera,
    width: int,
    height: int,
    k: int = 8,
    lift: str = "ray",
) -> tuple[torch.Tensor, Attachment]:
    """The support keypoints lifted on the canonical Gaussians (`lift_keypoints` mode `lift`): world points [K, 3],
    and their attachment to the k nearest Gaussians (`attach_points`)."""
    world0 = lift_keypoints(g0, keypoints.to(g0["means"].device), camera, width, height, mode=lift)
    return world0, attach_points(world0, g0["means"], k)


def keypoint_tracks(
    canonical: Any,  # GaussianModel
    phi: Any,  # Deformation or None
    keypoints: torch.Tensor,  # [K, 2] pixels at the reference camera
    camera: Camera,
    width: int,
    height: int,
    num_frames: int,
    k: int = 8,
    lift: str = "ray",
) -> torch.Tensor:
    """World tracks [T, K, 3] of the support keypoints: lifted on the canonical Gaussians (`lift_keypoints`
    mode `lift`), carried by φ."""
    from dynapose4d.deform import gaussians_at

    with torch.no_grad():
        g0 = canonical.activated()
        world0, att = attach_keypoints(g0, keypoints, camera, width, height, k, lift)
        if phi is None:
            return world0.unsqueeze(0).expand(num_frames, -1, -1).clone()
        taus = torch.arange(num_frames, dtype=torch.float32, device=g0["means"].device) / max(num_frames - 1, 1)
        out = []
        for i in range(0, num_frames, 8):
            g = gaussians_at(canonical, phi, taus[i:i + 8])
            out.append(carry_points(att, g0["quats"], g["means"], g["quats"]))
        return torch.cat(out)
