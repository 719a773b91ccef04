"""Per-object CAPE training pairs from a scene's static Gaussians (the cape stage's fine-tuning data).

The support keypoints (pixels on the scene image) are lifted to 3D in the middle of the part of the Gaussians
along their rays from the reference camera that keeps the skeleton's bones inside the object
(`dynapose4d.deform.tracks.lift_keypoints`), then projected into random views of the
Gaussians; a keypoint is visible in a view when it is inside the image and not more than a tolerance behind the
rendered surface (the lifted points sit inside the parts). The result is a one-object `RenderSet` in the
model's square input frame: view 0 = the scene image (the support, every keypoint present), views 1.. =
renders (the queries).

The queries also show the object in other poses: `articulate` bends the Gaussians along the skeleton (each
Gaussian follows its nearest bone, each bone turns about its parent joint by a random rotation), so the
fine-tuned model sees the object's parts move as they will in the driving video, not only its rest pose.
"""

from __future__ import annotations

import numpy as np
import torch

from dynapose4d.cape import letterbox
from dynapose4d.cape.render_sets import RenderSet
from dynapose4d.core import seeding
from dynapose4d.core.cameras import Camera, depth_visibility, stack_cameras
from dynapose4d.core.images import premultiplied_over
from dynapose4d.core.rotations import quat_multiply, quat_to_matrix
from dynapose4d.deform.tracks import lift_keypoints, skeleton_forest, tree_depth
from dynapose4d.render import rasterize


@torch.no_grad()
def render_rgbd(g: dict[str, torch.Tensor], cameras: list[Camera], width: int, height: int, chunk: int = 8
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGB over white [C, H, W, 3], expected depth [C, H, W] and alpha [C, H, W] of Gaussians (rasterize inputs)."""
    dev = g["means"].device
    rgbs, eds, als = [], [], []
    for i in range(0, len(cameras), chunk):
        vm, K = stack_cameras(list(cameras[i:i + chunk]), width, height)
        r, a, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], vm.to(dev), K.to(dev),
                            width, height, render_mode="RGB+ED")
        r, a = r.float().cpu(), a.float().cpu()
        rgbs.append(premultiplied_over(r[..., :3], a).clamp(0, 1))
        eds.append(r[..., 3])
        als.append(a[..., 0])
    return torch.cat(rgbs), torch.cat(eds), torch.cat(als)


def random_cameras(reference: Camera, num: int, elevation: tuple[float, float], seed: int,
                   reference_views: int = 0) -> list[Camera]:
    """`reference_views` copies of the reference camera, then random cameras around the object: azimuth
    uniform over the orbit, elevation in `elevation` (absolute degrees), radius x [0.9, 1.1], same fov."""
    rng = seeding.rng(seed)
    cams = [reference] * reference_views
    for i in range(num):
        elev, az = float(rng.uniform(*elevation)), float(reference.azimuth + rng.uniform(-180, 180))
        cams.append(Camera(f"ft{i:03d}", elev, az, float(reference.radius * rng.uniform(0.9, 1.1)), reference.fov_y))
    return cams


def _random_quat(max_angle_deg: float, rng: np.random.Generator) -> torch.Tensor:
    """A rotation about a uniformly random axis by an angle uniform in [-max, max] degrees: quaternion [4] (wxyz)."""
    axis = rng.normal(size=3)
    axis /= max(np.linalg.norm(axis), 1e-12)
    half = np.deg2rad(rng.uniform(-max_angle_deg, max_angle_deg)) / 2.0
    return torch.tensor([np.cos(half), *(np.sin(half) * axis)], dtype=torch.float64)


def articulate(g: dict[str, torch.Tensor], keypoints3d: torch.Tensor, skeleton: list[tuple[int, int]],
               max_angle_deg: float, rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A random pose of Gaussians (rasterize inputs) rigged by their keypoints [N, 3] and skeleton.

    Each bone (parent joint p -> keypoint c of `skeleton_forest`) turns about p by a random rotation (up to
    `max_angle_deg`) composed down the tree; a Gaussian moves rigidly with its nearest bone (its centre's
    distance to the segment), a keypoint with the bone that ends at it, roots stay. Returns the posed Gaussians
    (means and quats changed) and keypoints [N, 3]; unchanged without a skeleton."""
    n = keypoints3d.shape[0]
    parent = skeleton_forest(skeleton, n)
    children = [c for c in range(n) if parent[c] >= 0]
    if not children or max_angle_deg <= 0:
        return g, keypoints3d
    kp = keypoints3d.double().cpu()
    # world transform x -> R(quat[j]) x + trans[j] of the bone ending at each keypoint (identity at roots)
    quat = [torch.tensor([1.0, 0, 0, 0], dtype=torch.float64) for _ in range(n)]
    trans = [torch.zeros(3, dtype=torch.float64) for _ in range(n)]
    for c in sorted(children, key=lambda c: tree_depth(parent, c)):  # parents before children
        p = parent[c]
        q = _random_quat(max_angle_deg, rng)
        # x -> W_p(R_q (x - k_p) + k_p), W_p the parent's bone transform
        quat[c] = quat_multiply(quat[p], q)
        trans[c] = quat_to_matrix(quat[p]) @ (kp[p] - quat_to_matrix(q) @ kp[p]) + trans[p]
    quats = torch.stack([quat[c] for c in children])  # [E, 4]
    trans_e = torch.stack([trans[c] for c in children])  # [E, 3]
    rots = quat_to_matrix(quats)  # [E, 3, 3]
    posed_kp = kp.clone()
    posed_kp[children] = (rots @ kp[children][..., None])[..., 0] + trans_e
    dev, dt = g["means"].device, g["means"].dtype
    a = kp[[parent[c] for c in children]].to(dev, dt)  # [E, 3] bone starts
    b = kp[children].to(dev, dt)  # [E, 3] bone ends
    x = g["means"]  # [G, 3]
    ab = b - a
    t = (((x[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-12)[None]).clamp(0, 1)  # [G, E]
    dist = (x[:, None] - (a[None] + t[..., None] * ab[None])).norm(dim=-1)  # [G, E]
    bone = dist.argmin(1)  # [G]
    R, T, Q = rots.to(dev, dt)[bone], trans_e.to(dev, dt)[bone], quats.to(dev, dt)[bone]  # [G, 3, 3], [G, 3], [G, 4]
    out = dict(g)
    out["means"] = (R @ x[..., None])[..., 0] + T
    out["quats"] = quat_multiply(Q, g["quats"])
    return out, posed_kp.to(keypoints3d.dtype)


def visibility(points3d: torch.Tensor, cameras: list[Camera], ed: torch.Tensor, alpha: torch.Tensor, width: int,
               height: int, tolerance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels [C, N, 2], visible [C, N] and inside [C, N] of world points [N, 3] in views with rendered expected
    depth ed [C, H, W] and alpha: visible = inside and not more than `tolerance` behind the covered surface."""
    viewmats = torch.stack([cam.viewmat(torch.float64) for cam in cameras])  # [C, 4, 4]
    Ks = torch.stack([cam.K(width, height, torch.float64) for cam in cameras])  # [C, 3, 3]
    return depth_visibility(points3d.double(), viewmats, Ks, ed, alpha, width, height, tolerance)


def object_render_set(g: dict[str, torch.Tensor], camera: Camera, support_rgb: torch.Tensor,
                      support_alpha: torch.Tensor, keypoints: torch.Tensor, skeleton: list[tuple[int, int]],
                      size: int, num_views: int, elevation: tuple[float, float], reference_views: int = 4,
                      tolerance: float = 0.1, seed: int = 0, pose_angle: float = 0.0, posed_fraction: float = 0.0,
                      keypoints_3d: torch.Tensor | None = None) -> tuple[RenderSet, torch.Tensor]:
    """The fine-tuning set of one object: (RenderSet with 1 object, 1 + views images at `size`, the lifted
    keypoints [N, 3]). support_rgb [H, W, 3] over white, support_alpha [H, W], keypoints [N, 2] px. A share
    `posed_fraction` of the query views shows a random articulation (`articulate`, up to `pose_angle` degrees
    per joint), one per view; the rest show the rest pose. `keypoints_3d` [N, 3]: the keypoints already lifted
    (the static stage's keypoints_3d.json); None lifts them here (`lift_keypoints`, with the skeleton)."""
    H, W = support_rgb.shape[:2]
    N = keypoints.shape[0]
    kp3 = keypoints_3d if keypoints_3d is not None else lift_keypoints(g, keypoints.float(), camera, W, H,
                                                                       skeleton=skeleton)
    cams = random_cameras(camera, num_views, elevation, seed, reference_views)
    rng = seeding.rng(seed + seeding.CAPE_POSES)
    posed = rng.random(len(cams)) < posed_fraction if pose_angle > 0 else np.zeros(len(cams), dtype=bool)
    rest = [i for i in range(len(cams)) if not posed[i]]
    parts = []  # (view indices, rgb, alpha, px, vis, ins): the rest-pose views in one batch, then each posed view
    for idx, gv, kv in ([(rest, g, kp3)] if rest else []) + [
            ([i], *articulate(g, kp3, skeleton, pose_angle, rng)) for i in np.flatnonzero(posed).tolist()]:
        sub = [cams[i] for i in idx]
        r, e, a = render_rgbd(gv, sub, W, H)
        parts.append((idx, r, a, *visibility(kv, sub, e, a, W, H, tolerance)))
    order = torch.tensor([i for p in parts for i in p[0]]).argsort()
    rgb, alpha, px, vis, ins = (torch.cat([p[k] for p in parts])[order] for k in range(1, 6))
    imgs = torch.cat([support_rgb[None], rgb]).permute(0, 3, 1, 2)  # [V, 3, H, W]
    als = torch.cat([support_alpha[None], alpha])[:, None]  # [V, 1, H, W]
    # letterbox colour over white and alpha (padded with 0) into the model's square frame
    rgb_s, scale, off = letterbox(imgs, size)
    al_s, _, _ = letterbox(als.expand(-1, 3, -1, -1) * -1.0 + 1.0, size)
    al_s = 1.0 - al_s[:, :1]
    images = torch.cat([rgb_s, al_s], 1).permute(0, 2, 3, 1)  # [V, S, S, 4]
    kps = torch.cat([keypoints[None].float(), px]) + torch.tensor(off)  # [V, N, 2] in the padded frame
    kps = kps * scale
    vis = torch.cat([torch.ones(1, N, dtype=torch.bool), vis])
    ins = torch.cat([torch.ones(1, N, dtype=torch.bool), ins])
    adj = torch.zeros(N, N, dtype=torch.bool)
    for i, j in skeleton:
        adj[i, j] = adj[j, i] = True
    meta = torch.tensor([[0.0, c.elevation, c.azimuth - camera.azimuth] for c in [camera] + cams])
    rs = RenderSet(
        images=(images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)[None], keypoints=kps[None], visible=vis[None],
        inside=ins[None], num_keypoints=torch.tensor([N]), adjacency=adj[None], meta=meta[None].float(),
        templates=["scene"], seeds=[0],
    )
    return rs, kp3
