"""A driving video without weights: the picture moved as a 2D puppet on its own skeleton (`puppet_video`).

Where Stable Video Diffusion's weights are not at hand (a CPU, a first try) and no video is given, the picture
can still be animated: its keypoints and skeleton (the keypoints file, or the automatic ones) become a
kinematic tree, each bone swings about its parent joint, and the picture's pixels follow the bones.
It is a rule-made motion, not a learned one: every movement is a rotation in the picture's plane, so the 4D
result moves in that plane too (what a one-picture animation tool does), and it is the same kind of motion
whatever the object is.

The method:
  tree:     the skeleton's bones as a tree grown from a root in each connected part: the keypoint nearest the
            object's centroid among those joining two bones or more (any keypoint when none does), or the one
            named by `root`.
  skinning: each pixel's weight on each bone falls off with its geodesic distance to the bone (path length
            inside the object, scikit-image's minimum-cost paths; outside the object a step costs `OUTSIDE`
            times more): w_b ∝ exp(-(d_b - min_b d_b) / τ), τ = `blend` x the object's longer side. Pixels at a
            joint are shared by the bones that meet there, so the picture bends smoothly.
  motion:   bone b swings about its parent joint by θ_b(t) = s_b A_b (sin(2πt/T + φ_b) - sin φ_b) / 2 over one
            loop of T frames (θ = 0 at t = 0 and t = T): A_b = `amplitude` x (1 - the share of the object the
            bone carries, itself and the bones below it; at least `MIN_SWING`), so a bone carrying a torso moves
            little and a limb swings fully; φ_b = `lag` x the bone's depth in the tree, so a swing runs towards
            the tips; the signs s_b alternate between sibling bones, and the seed picks the overall sign. The bones
            ending at a keypoint named in `still` have A_b = 0.
            Forward kinematics turns the angles into one rigid motion per bone.
  drawing:  every pixel moves by the blend of its bones' motions (linear blend skinning). Each frame is drawn
            backwards: for every output pixel and every bone, the source point is found by inverting that
            bone's motion and refining (Newton steps on the blended motion); points that land where the pixel
            is are candidates, and the front one wins: an opaque one before a transparent one, then the one
            deepest in the tree (a limb is drawn over the body it hangs from). Colours are sampled bilinearly
            (premultiplied), so edges stay anti-aliased.

The keypoints' own positions in every frame are known (the bones' motions applied to them): `PuppetMotion`
returns them beside the frames.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.structured import ANY, Bound, Rule

OUTSIDE = 50.0  # cost of a step outside the object relative to one inside it (geodesic skinning distances)
NEWTON_STEPS = 4  # refinement steps of each bone's inverse (the blended motion is near-rigid at a bone)
CONVERGED = 0.5  # a candidate source point is kept when it moves to within this many pixels of the output pixel
MIN_SWING = 0.25  # the least share of `amplitude` a bone swings, however much of the object it carries (a single
# bone carries all of it: without a floor a two-keypoint skeleton would not move)


@dataclass
class PuppetConfig:
    """Settings of the puppet driving video (dynamic.driver = "puppet", used only when the scene has no video)."""

    num_frames: int = 16  # T frames, one loop of the motion; frame 0 is the picture itself
    amplitude: float = 20.0  # largest swing of a bone about its parent joint (degrees), for a bone carrying little
    # of the object; a bone that carries a share s of it (with the bones below it) swings max(1 - s, 0.25) times this
    lag: float = 0.6  # phase delay (radians) of a bone's swing per level down the tree: swings run to the tips
    blend: float = 0.03  # skinning blend width at the joints, as a fraction of the object's longer side
    root: str = ""  # name of the keypoint the tree grows from (it stays in place; its part of the skeleton swings
    # about it); "": the keypoint joining two bones or more nearest the object's centroid
    still: list[str] = field(default_factory=list)  # names of keypoints whose bone from their parent does not
    # swing (the part beyond them moves only as their parent does), e.g. [tail] or the legs of a standing animal

    RULES: ClassVar[dict[str, Rule]] = {"num_frames": Bound(2), "amplitude": Bound(0, 90), "lag": ANY,
                                        "blend": Bound(0, 1, above=True)}


@dataclass
class PuppetMotion:
    """The puppet's motion: `bones` [(parent keypoint, child keypoint)] in tree order (a bone's parent bone comes
    before it), `depth` [B] (1 for a bone leaving a root), `angles` [T, B] radians (each about its parent joint,
    relative to the parent bone), `transforms` [T, B, 2, 3] (pixels -> pixels, x and y, per bone after forward
    kinematics), `keypoints` [T, N, 2] (where each keypoint is in every frame)."""

    bones: list[tuple[int, int]]
    depth: torch.Tensor  # [B]
    angles: torch.Tensor  # [T, B]
    transforms: torch.Tensor  # [T, B, 2, 3]
    keypoints: torch.Tensor  # [T, N, 2]


def named_keypoints(cfg: PuppetConfig, names: list[str]) -> tuple[int | None, set[int]]:
    """The keypoint indices of `cfg.root` (None for "") and `cfg.still` among the scene's keypoint `names`; a name
    that is not one of them is a ConfigError naming the key and the keypoints there are."""
    index = {n: i for i, n in enumerate(names)}
    for key, wanted in (("root", [cfg.root] if cfg.root else []), ("still", list(cfg.still))):
        unknown = [w for w in wanted if w not in index]
        if unknown:
            raise ConfigError(f"config key 'dynamic.puppet.{key}': no keypoint named {', '.join(map(repr, unknown))}; "
                              f"the keypoints are {', '.join(names)}")
    return (index[cfg.root] if cfg.root else None), {index[w] for w in cfg.still}


def puppet_video(image: torch.Tensor, keypoints: torch.Tensor, skeleton: list[tuple[int, int]],
                 cfg: PuppetConfig | None = None, seed: int = 0, names: list[str] | None = None
                 ) -> tuple[torch.Tensor, PuppetMotion]:
    """Frames [T, H, W, 4] (straight RGBA, frame 0 = `image`) of the picture `image` [H, W, 4] moved as a puppet on
    its `keypoints` [N, 2] (pixels, centres at +0.5) and `skeleton` (0-based pairs), and the motion itself.
    `names` [N] (default kp00, kp01, ...) are what `cfg.root` and `cfg.still` refer to. See the module docstring.
    Raises InputError when the skeleton has no bone or the picture no object, ConfigError on an unknown name."""
    cfg = cfg or PuppetConfig()
    root, still = named_keypoints(cfg, names or [f"kp{i:02d}" for i in range(int(keypoints.shape[0]))])
    alpha = image[..., 3].detach().float().cpu()  # [H, W]
    mask = (alpha > 0.5).numpy()
    if not mask.any():
        raise InputError("the picture has no object (alpha <= 0.5 everywhere): nothing to move as a puppet")
    bones, depth = skeleton_tree(keypoints, skeleton, alpha, root)
    if not bones:
        raise InputError("the puppet motion needs a skeleton with at least one bone; the keypoints have none")
    weights = skinning_weights(mask, keypoints, bones, cfg.blend)  # [B, H, W]
    motion = plan_motion(keypoints, bones, depth, weights * alpha, cfg, seed, still)
    frames = [image.detach().float().cpu()]
    for t in range(1, cfg.num_frames):
        frames.append(draw_frame(image, weights, depth, motion.transforms[t]))
    return torch.stack(frames), motion


def skeleton_tree(keypoints: torch.Tensor, skeleton: list[tuple[int, int]], alpha: torch.Tensor,
                  root: int | None = None) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """The skeleton's bones as trees, one per connected part, each grown breadth-first from its root (see the module
    docstring; `root`, a keypoint index, is the root of its part): bones [(parent, child)] in tree order, depth [B]
    (1 for a bone at a root). A bone that would close a loop is left out."""
    n = int(keypoints.shape[0])
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for a, b in skeleton:
        if a != b and 0 <= a < n and 0 <= b < n:
            nbrs[a].append(b)
            nbrs[b].append(a)
    H, W = alpha.shape
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    total = alpha.sum().clamp_min(1e-8)
    centroid = torch.stack([(xs * alpha).sum() / total, (ys * alpha).sum() / total])  # [2] x, y
    dist = (keypoints.float().cpu() - centroid).norm(dim=-1)  # [N]
    seen = [False] * n
    bones: list[tuple[int, int]] = []
    depth: list[int] = []
    for start in range(n):
        if seen[start]:
            continue
        part = _part(start, nbrs)
        hubs = [k for k in part if len(set(nbrs[k])) >= 2] or part
        top = root if root in part else min(hubs, key=lambda k: (float(dist[k]), k))
        level = {top: 0}
        seen[top] = True
        queue = deque([top])
        while queue:
            p = queue.popleft()
            for c in sorted(set(nbrs[p])):
                if not seen[c]:
                    seen[c] = True
                    level[c] = level[p] + 1
                    bones.append((p, c))
                    depth.append(level[c])
                    queue.append(c)
    return bones, torch.tensor(depth, dtype=torch.float32)


def _part(start: int, nbrs: list[list[int]]) -> list[int]:
    """The keypoints connected to `start` by bones."""
    found, stack = {start}, [start]
    while stack:
        for c in nbrs[stack.pop()]:
            if c not in found:
                found.add(c)
                stack.append(c)
    return sorted(found)


def skinning_weights(mask: np.ndarray, keypoints: torch.Tensor, bones: list[tuple[int, int]], blend: float
                     ) -> torch.Tensor:
    """Each pixel's weight on each bone [B, H, W] (summing to 1 over bones) from its geodesic distance to the bone
    inside the object `mask` [H, W] bool (see the module docstring)."""
    from skimage.graph import MCP_Geometric

    H, W = mask.shape
    cost = np.where(mask, 1.0, OUTSIDE)
    ys, xs = np.nonzero(mask)
    size = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    tau = max(1.0, blend * float(size))
    kp = keypoints.detach().float().cpu().numpy() - 0.5  # [N, 2] x, y in pixel-index units
    dist = np.empty((len(bones), H, W))
    for i, (a, b) in enumerate(bones):
        steps = max(2, int(np.ceil(np.linalg.norm(kp[b] - kp[a]) * 2)) + 1)
        line = kp[a][None] + np.linspace(0, 1, steps)[:, None] * (kp[b] - kp[a])[None]  # [S, 2]
        pix = np.unique(np.stack([np.clip(np.round(line[:, 1]), 0, H - 1), np.clip(np.round(line[:, 0]), 0, W - 1)],
                                 1).astype(int), axis=0)  # [S', 2] row, col
        dist[i], _ = MCP_Geometric(cost).find_costs([tuple(p) for p in pix])
    w = np.exp(-(dist - dist.min(0, keepdims=True)) / tau)
    return torch.from_numpy(w / w.sum(0, keepdims=True)).float()


def plan_motion(keypoints: torch.Tensor, bones: list[tuple[int, int]], depth: torch.Tensor, mass: torch.Tensor,
                cfg: PuppetConfig, seed: int = 0, still: set[int] | None = None) -> PuppetMotion:
    """Angles, per-bone rigid motions and keypoint positions of the puppet's loop (see the module docstring);
    `mass` [B, H, W] is each bone's skinning weight times the object's alpha (what share of the object it moves);
    the bones ending at a keypoint of `still` do not swing."""
    T, B = cfg.num_frames, len(bones)
    share = mass.flatten(1).sum(1)  # [B]
    share = share / share.sum().clamp_min(1e-8)
    children: dict[int, list[int]] = {}
    for i, (p, _c) in enumerate(bones):
        children.setdefault(p, []).append(i)
    carried = share.clone()
    for i in reversed(range(B)):  # children come after their parent bone: add each subtree upwards
        for j in children.get(bones[i][1], []):
            carried[i] += carried[j]
    sign = 1.0 if np.random.default_rng(seed).random() < 0.5 else -1.0
    s = torch.ones(B)
    for kids in children.values():
        for rank, j in enumerate(kids):
            s[j] = sign * (1.0 if rank % 2 == 0 else -1.0)
    amp = math.radians(cfg.amplitude) * (1.0 - carried.clamp(0, 1)).clamp_min(MIN_SWING)  # [B]
    amp = amp * torch.tensor([0.0 if c in (still or set()) else 1.0 for _p, c in bones])
    phase = cfg.lag * depth  # [B]
    t = torch.arange(T, dtype=torch.float32)[:, None]  # [T, 1]
    angles = s * amp * (torch.sin(2 * math.pi * t / T + phase) - torch.sin(phase)) / 2  # [T, B]
    kp = keypoints.detach().float().cpu()  # [N, 2]
    transforms = torch.zeros(T, B, 2, 3)
    moved = kp[None].repeat(T, 1, 1)  # [T, N, 2]
    bone_of_child = {c: i for i, (_p, c) in enumerate(bones)}
    for i, (p, c) in enumerate(bones):
        parent = bone_of_child.get(p)
        base = transforms[:, parent] if parent is not None else _identity(T)  # [T, 2, 3]
        rot = _rotation_about(angles[:, i], kp[p])  # [T, 2, 3]
        transforms[:, i] = _compose(base, rot)
        moved[:, c] = _apply(transforms[:, i], kp[c][None].expand(T, 2))
    return PuppetMotion(bones, depth, angles, transforms, moved)


def _identity(T: int) -> torch.Tensor:
    return torch.eye(2, 3)[None].repeat(T, 1, 1)


def _rotation_about(theta: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Rotations by `theta` [T] (radians, x towards y: clockwise on screen) about `centre` [2] -> [T, 2, 3]."""
    c, s = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [T, 2, 2]
    t = centre - (R @ centre[:, None])[..., 0]  # [T, 2]
    return torch.cat([R, t[..., None]], -1)


def _compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ∘ b for affine maps [..., 2, 3]."""
    R = a[..., :2] @ b[..., :2]
    t = (a[..., :2] @ b[..., 2:])[..., 0] + a[..., 2]
    return torch.cat([R, t[..., None]], -1)


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Affine maps [..., 2, 3] applied to points [..., 2] (broadcast over the leading dimensions)."""
    return (m[..., :2] @ x[..., None])[..., 0] + m[..., 2]


def draw_frame(image: torch.Tensor, weights: torch.Tensor, depth: torch.Tensor, transforms: torch.Tensor
               ) -> torch.Tensor:
    """One frame [H, W, 4] (straight RGBA) of `image` [H, W, 4] moved by the per-bone rigid motions `transforms`
    [B, 2, 3] blended by `weights` [B, H, W] (linear blend skinning), drawn backwards (see the module docstring)."""
    img = image.detach().float().cpu()
    H, W = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    grid = torch.stack([xs, ys], -1)  # [H, W, 2] pixel centres, x and y
    forward = torch.einsum("bhw,bij->hwij", weights, transforms)  # [H, W, 2, 3] blended motion per source pixel
    moved = _apply(forward, grid)  # [H, W, 2] where each source pixel goes
    layer = torch.einsum("bhw,b->hw", weights, depth)  # [H, W] how deep in the tree each pixel hangs
    premul = torch.cat([img[..., :3] * img[..., 3:], img[..., 3:]], -1)  # [H, W, 4]
    motion = torch.cat([moved, layer[..., None]], -1).permute(2, 0, 1)[None]  # [1, 3, H, W]
    colour = premul.permute(2, 0, 1)[None]  # [1, 4, H, W]
    inv_R = transforms[:, :, :2].transpose(1, 2)  # [B, 2, 2] each bone's inverse rotation
    x = _apply(_invert(transforms)[:, None, None], grid[None])  # [B, H, W, 2] start: each bone's exact inverse
    for _ in range(NEWTON_STEPS):
        at = _sample(motion[:, :2], x, "border")  # [B, H, W, 2] where the current source points go
        x = x + (inv_R[:, None, None] @ (grid[None] - at)[..., None])[..., 0]
    got = torch.cat([_sample(motion, x, "border"), _sample(colour, x, "zeros")], -1)  # [B, H, W, 7]
    ok = (got[..., :2] - grid[None]).norm(dim=-1) < CONVERGED  # [B, H, W]
    a = got[..., 6]  # [B, H, W] candidate alpha
    score = torch.where(ok, (a >= 0.5).float() * (1000.0 + got[..., 2]) + a, torch.full_like(a, -1.0))
    best = score.argmax(0)  # [H, W]
    pick = got.gather(0, best[None, ..., None].expand(1, H, W, 7))[0]  # [H, W, 7]
    hit = ok.any(0)[..., None].float()  # [H, W, 1] pixels some source point reaches
    rgba_p = pick[..., 3:] * hit  # [H, W, 4] premultiplied
    alpha = rgba_p[..., 3:].clamp(0, 1)
    rgb = torch.where(alpha > 1e-6, rgba_p[..., :3] / alpha.clamp_min(1e-6), torch.zeros_like(rgba_p[..., :3]))
    return torch.cat([rgb.clamp(0, 1), alpha], -1)


def _invert(m: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid maps [..., 2, 3] (rotation and translation)."""
    Rt = m[..., :2].transpose(-1, -2)
    return torch.cat([Rt, -(Rt @ m[..., 2:])], -1)


def _sample(fields: torch.Tensor, x: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear samples [B, H, W, C] of `fields` [1, C, H, W] at pixel positions `x` [B, H, W, 2] (x, y; centres at
    +0.5); outside the image as grid_sample's `padding` ("zeros" or "border") says."""
    B = x.shape[0]
    H, W = fields.shape[-2:]
    g = torch.stack([x[..., 0] / W * 2 - 1, x[..., 1] / H * 2 - 1], -1)  # [B, H, W, 2] in [-1, 1]
    out = F.grid_sample(fields.expand(B, -1, -1, -1), g, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.permute(0, 2, 3, 1)
