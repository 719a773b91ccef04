"""Scenes from a second, independent generator: ray-marched, shaded capsule creatures (docs/scene-folder.md folders).

    .venv/bin/python experiments/sdf_scenes.py TEMPLATE --out DIR [--seed 0] [--frames 16] [--size 128]
    .venv/bin/python experiments/sdf_scenes.py --list

The project's own scenes (dynapose4d/data/synthetic.py) are 3D Gaussians drawn by the project's rasterizer,
and the shipped CAPE checkpoint was trained on renders of that generator. This one shares none of it, so
that the pipeline can be measured on scenes it has never seen, made another way:

  - surfaces: a signed distance field (smooth union of capsules and spheres), sphere-traced per pixel with
    2×2 supersampling (anti-aliased alpha), not Gaussians;
  - appearance: one flat albedo per part, Lambertian light from above-front plus ambient light, so shading
    changes as parts turn (the Gaussian scenes carry bands and two-tone colours painted on the surface);
  - cameras: its own look-at code written from the docs/cameras.md contract (not dynapose4d.core.cameras), and its own
    camera sets and names: views/ = az072, az144, az216, az288 (elevation 10); gt/ = front (the reference
    view), az045, az110, az200 and el35_az300;
  - motion: sinusoidal joint angles over 60-85% of their period (the clip does not loop back to frame 0),
    the whole creature turned by a random yaw of up to 40° from facing the camera;
  - templates not among the project's: `puppet` (a biped with a neck and feet), `spider` (a round body
    and six two-segment legs), `crane` (a turning base with a three-link arm) and `eel` (a chain of seven
    segments swimming in a travelling wave);
  - no gt/keypoints2d.json (it is not part of the contract): evaluations count every keypoint in the frame.

It writes image.png (RGBA, frame 0), keypoints.json (frame-0 joints at the reference camera, skeleton,
names), camera.json, video/000.png… (reference camera), views/, gt/ (every frame of every gt camera) and
gt/keypoints3d.json. The object is centred on its animated bounding box and stays inside radius 0.75.
A 16-frame 128 px scene takes ~20 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

FOV_Y = 49.1
RADIUS = 2.0
VIEW_CAMERAS = [{"name": f"az{a:03d}", "elevation": 10.0, "azimuth": float(a), "radius": RADIUS, "fov_y": FOV_Y}
                for a in (72, 144, 216, 288)]
GT_CAMERAS = [{"name": "front", "elevation": 0.0, "azimuth": 0.0, "radius": RADIUS, "fov_y": FOV_Y},
              {"name": "az045", "elevation": 0.0, "azimuth": 45.0, "radius": RADIUS, "fov_y": FOV_Y},
              {"name": "az110", "elevation": 0.0, "azimuth": 110.0, "radius": RADIUS, "fov_y": FOV_Y},
              {"name": "az200", "elevation": 0.0, "azimuth": 200.0, "radius": RADIUS, "fov_y": FOV_Y},
              {"name": "el35_az300", "elevation": 35.0, "azimuth": 300.0, "radius": RADIUS, "fov_y": FOV_Y}]
TEMPLATES = ("puppet", "spider", "crane", "eel")


# ----------------------------------------------------------------------------------------------- rigs


@dataclass
class Joint:
    """One joint of a kinematic tree: its rest offset from the parent (world axes), the axis it turns about,
    and the motion angle(τ) = amplitude · sin(2π·cycles·τ + phase) (radians). The turn moves the bones from
    this joint to its children (a shoulder's turn swings the upper arm)."""

    name: str
    parent: int  # -1 for the root
    offset: tuple[float, float, float]
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    amplitude: float = 0.0
    cycles: float = 1.0
    phase: float = 0.0
    radius: float = 0.05  # of the capsule from the parent to this joint


@dataclass
class Creature:
    joints: list[Joint]
    blobs: list[tuple[int, float]]  # extra spheres: (joint index, radius)
    parts: list[int]  # colour group of each joint's capsule (and blob)
    span: float = 1.0  # the clip shows τ·span of the motion's time: < 1, so it does not loop back to frame 0
    yaw: float = 0.0  # turn of the whole creature about +y (radians), so it does not always face the camera


def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix [3, 3]."""
    a = axis / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def _creature(template: str, rng: np.random.Generator) -> Creature:
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    deg = math.radians
    J: list[Joint] = []
    if template == "puppet":
        torso, thigh, shin, upper, fore = u(0.35, 0.5), u(0.25, 0.35), u(0.25, 0.35), u(0.2, 0.3), u(0.2, 0.3)
        J += [Joint("pelvis", -1, (0, 0, 0), (0, 1, 0), deg(u(5, 15)), 1, u(0, 6), radius=0.0),
              Joint("chest", 0, (0, torso, 0), (1, 0, 0), deg(u(5, 15)), 2, u(0, 6), radius=u(0.08, 0.12)),
              Joint("head", 1, (0, u(0.15, 0.22), 0), radius=0.04)]
        for s, side in ((1, "l"), (-1, "r")):
            p = rng.uniform(0, 2 * math.pi)
            J += [Joint(f"{side}_shoulder", 1, (s * u(0.12, 0.18), -0.02, 0), (1, 0, 0), deg(u(30, 50)), 1, p,
                        radius=0.05),
                  Joint(f"{side}_elbow", len(J), (s * upper * 0.3, -upper, 0), (1, 0, 0), deg(u(20, 45)), 1,
                        p + 0.7, radius=0.045),
                  Joint(f"{side}_hand", len(J) + 1, (0, -fore, 0.05), radius=0.04)]
        for s, side in ((1, "l"), (-1, "r")):
            p = rng.uniform(0, 2 * math.pi)
            b = len(J)
            J += [Joint(f"{side}_hip", 0, (s * u(0.08, 0.12), -0.03, 0), (1, 0, 0), deg(u(25, 40)), 1, p,
                        radius=0.06),
                  Joint(f"{side}_knee", b, (0, -thigh, 0), (1, 0, 0), deg(u(20, 40)), 1, p - 1.0, radius=0.055),
                  Joint(f"{side}_ankle", b + 1, (0, -shin, 0), (1, 0, 0), deg(u(10, 20)), 1, p - 1.5,
                        radius=0.045),
                  Joint(f"{side}_toe", b + 2, (0, -0.02, u(0.1, 0.14)), radius=0.035)]
        blobs = [(2, u(0.09, 0.12))]
        parts = [0, 0, 1] + [2, 2, 2, 3, 3, 3] + [4, 4, 4, 4, 5, 5, 5, 5]
    elif template == "spider":
        J.append(Joint("body", -1, (0, 0, 0), (0, 1, 0), deg(u(5, 15)), 1, u(0, 6), radius=0.0))
        J.append(Joint("head", 0, (0, 0.02, u(0.2, 0.28)), radius=0.08))
        femur, tibia = u(0.25, 0.35), u(0.3, 0.4)
        for k, ang in enumerate((-50, 0, 50, 130, 180, 230)):
            a = math.radians(ang)
            d = np.array([math.sin(a), 0, math.cos(a) * 0.6])
            d /= np.linalg.norm(d)
            ph = (k % 2) * math.pi + u(-0.3, 0.3)
            tangent = tuple(np.cross(d, [0, 1, 0]))
            b = len(J)
            J += [Joint(f"hip{k}", 0, tuple(0.17 * d), tangent, deg(u(20, 35)), 1, ph, radius=0.0),
                  Joint(f"knee{k}", b, tuple(femur * d + np.array([0, femur * 0.6, 0])), tangent,
                        deg(u(15, 30)), 1, ph + 0.8, radius=0.04),
                  Joint(f"foot{k}", b + 1, tuple(tibia * 0.4 * d + np.array([0, -tibia, 0])), radius=0.03)]
        blobs = [(0, u(0.17, 0.21)), (1, u(0.1, 0.13))]
        parts = [0, 1] + sum([[2 + k % 3] * 3 for k in range(6)], [])
    elif template == "crane":
        h1, l1, l2, l3 = u(0.15, 0.25), u(0.35, 0.45), u(0.3, 0.4), u(0.15, 0.25)
        J += [Joint("base", -1, (0, 0, 0), radius=0.0),
              Joint("turret", 0, (0, h1, 0), (0, 1, 0), deg(u(50, 80)), 1, u(0, 6), radius=u(0.1, 0.13)),
              Joint("shoulder", 1, (0, 0.05, 0), (0, 0, 1), deg(u(15, 30)), 1, u(0, 6), radius=0.08),
              Joint("elbow", 2, (l1 * 0.6, l1 * 0.8, 0), (0, 0, 1), deg(u(25, 40)), 1, u(0, 6), radius=0.06),
              Joint("wrist", 3, (l2, -l2 * 0.3, 0), (0, 0, 1), deg(u(30, 50)), 1.5, u(0, 6), radius=0.05),
              Joint("tip", 4, (l3 * 0.3, -l3, 0), radius=0.035)]
        blobs = [(0, u(0.16, 0.2)), (2, 0.09)]
        parts = [0, 1, 1, 2, 3, 4]
    elif template == "eel":
        seg = u(0.16, 0.2)
        J.append(Joint("snout", -1, (0, 0, 0), radius=0.0))
        amp, cyc = deg(u(20, 35)), u(0.8, 1.5)
        for k in range(1, 8):
            J.append(Joint(f"seg{k}", k - 1, (-seg, 0.0, 0.0), (0, 1, 0), amp * (0.5 + 0.1 * k), cyc, -0.9 * k,
                           radius=0.075 - 0.007 * k))
        J[1].axis, J[1].amplitude = (0.0, 0.0, 1.0), deg(u(10, 20))  # the head also nods up and down
        blobs = [(0, 0.085)]
        parts = [0, 0, 1, 1, 2, 2, 3, 3]
    else:
        raise SystemExit(f"unknown template {template!r}: choose from {', '.join(TEMPLATES)}")
    return Creature(J, blobs, parts, span=u(0.6, 0.85), yaw=deg(u(-40, 40)))


def _pose(c: Creature, tau: float) -> np.ndarray:
    """Joint positions [J, 3] at normalised time τ (forward kinematics, parents before children)."""
    R = [np.eye(3)] * len(c.joints)
    P = np.zeros((len(c.joints), 3))
    for i, j in enumerate(c.joints):
        angle = j.amplitude * math.sin(2 * math.pi * j.cycles * c.span * tau + j.phase)
        local = _rot(np.array(j.axis, float), angle)
        if j.parent < 0:
            R[i], P[i] = local, np.array(j.offset, float)
        else:
            R[i] = R[j.parent] @ local
            P[i] = P[j.parent] + R[j.parent] @ np.array(j.offset, float)
    return P @ _rot(np.array([0.0, 1.0, 0.0]), c.yaw).T


# ------------------------------------------------------------------------------------------ rendering


def look_at(elevation: float, azimuth: float, radius: float) -> np.ndarray:
    """World-to-camera [4, 4], OpenCV axes (x right, y down, z forward), camera on the orbit looking at 0."""
    e, a = math.radians(elevation), math.radians(azimuth)
    centre = radius * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    fwd = -centre / np.linalg.norm(centre)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    if np.linalg.norm(right) < 1e-8:  # looking straight down or up
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    R = np.stack([right, -up, fwd])
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, -R @ centre
    return M


def _focal(size: int) -> float:
    return size / (2 * math.tan(math.radians(FOV_Y) / 2))


def project(points: np.ndarray, cam: dict, size: int) -> np.ndarray:
    """World points [..., 3] to pixels [..., 2] (pixel i spans [i, i+1])."""
    M = look_at(cam["elevation"], cam["azimuth"], cam["radius"])
    pc = points @ M[:3, :3].T + M[:3, 3]
    f = _focal(size)
    return np.stack([f * pc[..., 0] / pc[..., 2] + size / 2, f * pc[..., 1] / pc[..., 2] + size / 2], -1)


def _sdf(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Distance [P, K] of points p [P, 3] to K capsules a-b [K, 3] with radii r [K]."""
    ab = b - a  # [K, 3]
    ap = p[:, None, :] - a[None]  # [P, K, 3]
    h = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)).clamp(0, 1)  # [P, K]
    return (ap - h[..., None] * ab).norm(dim=-1) - r


def _smin(d: torch.Tensor, k: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth minimum over the last axis (exponential blend) and the index of the nearest primitive."""
    return -k * torch.logsumexp(-d / k, dim=-1), d.argmin(-1)


def render(prims: tuple[torch.Tensor, ...], cam: dict, size: int, light: np.ndarray, ss: int = 2) -> np.ndarray:
    """RGBA image [size, size, 4] in [0, 1] of the primitives (a, b, r, colour [K, 3]) over transparency."""
    a, b, r, col = prims
    M = torch.from_numpy(look_at(cam["elevation"], cam["azimuth"], cam["radius"]))
    n = size * ss
    f = _focal(size) * ss
    ij = (torch.arange(n, dtype=torch.float64) + 0.5)
    v, u = torch.meshgrid(ij, ij, indexing="ij")
    d_cam = torch.stack([(u - n / 2) / f, (v - n / 2) / f, torch.ones_like(u)], -1).reshape(-1, 3)
    R, t = M[:3, :3], M[:3, 3]
    origin = -R.T @ t
    dirs = d_cam @ R  # R^T d, world directions [P, 3]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    s = torch.full((dirs.shape[0],), float(origin.norm()) - 1.0, dtype=torch.float64)  # start at the unit sphere
    hit = torch.zeros_like(s, dtype=torch.bool)
    active = torch.arange(s.shape[0])  # rays still marching
    far = float(origin.norm()) + 1.0
    for _ in range(128):
        dist, _ = _smin(_sdf(origin + s[active, None] * dirs[active], a, b, r))
        done = dist < 1e-4
        hit[active[done]] = True
        s[active] = s[active] + torch.where(done, torch.zeros_like(dist), dist.clamp(min=0) * 0.95)
        active = active[~done & (s[active] < far)]
        if active.numel() == 0:
            break
    p = origin + s[:, None] * dirs
    e = 1e-4
    grad = torch.stack([(_smin(_sdf(p + e * ax, a, b, r))[0] - _smin(_sdf(p - e * ax, a, b, r))[0])
                        for ax in torch.eye(3, dtype=torch.float64)], -1)
    normal = grad / grad.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    _, nearest = _smin(_sdf(p, a, b, r))
    lam = (normal @ torch.from_numpy(light)).clamp(min=0)
    rgb = col[nearest] * (0.35 + 0.65 * lam[:, None])
    rgb = torch.where(hit[:, None], rgb, torch.zeros_like(rgb))
    rgba = torch.cat([rgb, hit[:, None].double()], -1).reshape(size, ss, size, ss, 4).mean((1, 3))
    rgba[..., :3] = rgba[..., :3] / rgba[..., 3:].clamp(min=1e-8)  # un-premultiply
    return rgba.clamp(0, 1).numpy()


# ------------------------------------------------------------------------------------------- scenes


def make_scene(template: str, out: Path, seed: int = 0, frames: int = 16, size: int = 128) -> Path:
    """Write a scene folder (docs/scene-folder.md) for `template` at `out` (atomically: a temporary folder renamed)."""
    rng = np.random.default_rng([seed, TEMPLATES.index(template) if template in TEMPLATES else 99])
    c = _creature(template, rng)
    taus = [f / max(frames - 1, 1) for f in range(frames)]
    poses = np.stack([_pose(c, t) for t in taus])  # [T, J, 3]
    rad = np.array([j.radius for j in c.joints])
    lo = (poses - rad.max()).min((0, 1))
    hi = (poses + rad.max()).max((0, 1))
    centre = (lo + hi) / 2
    extent = np.linalg.norm(poses - centre, axis=-1).max() + max(rad.max(), max(r for _, r in c.blobs))
    scale = 0.75 / extent
    poses = (poses - centre) * scale
    hues = rng.permutation(np.linspace(0, 1, max(c.parts) + 1, endpoint=False)) + rng.uniform(0, 1)
    palette = np.array([colorsys.hsv_to_rgb(h % 1.0, rng.uniform(0.45, 0.8), rng.uniform(0.6, 0.9)) for h in hues])
    light = np.array([0.4, 0.8, 0.6])
    light /= np.linalg.norm(light)

    def prims(P: np.ndarray) -> tuple[torch.Tensor, ...]:
        A, B, R, C = [], [], [], []
        for i, j in enumerate(c.joints):
            if j.parent >= 0 and j.radius > 0:
                A.append(P[j.parent]), B.append(P[i]), R.append(j.radius * scale), C.append(palette[c.parts[i]])
        for i, r in c.blobs:
            A.append(P[i]), B.append(P[i]), R.append(r * scale), C.append(palette[c.parts[i]])
        return tuple(torch.tensor(np.array(x), dtype=torch.float64) for x in (A, B, R, C))

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for d in ("video", "views", "gt", *(f"gt/{g['name']}" for g in GT_CAMERAS)):
            (tmp / d).mkdir(parents=True, exist_ok=True)
        png = lambda p, img: iio.imwrite(p, (img * 255 + 0.5).astype(np.uint8))  # noqa: E731
        for f in range(frames):
            pr = prims(poses[f])
            for g in GT_CAMERAS:
                img = render(pr, g, size, light)
                png(tmp / "gt" / g["name"] / f"{f:03d}.png", img)
                if g["name"] == "front":
                    png(tmp / "video" / f"{f:03d}.png", img)
                    if f == 0:
                        png(tmp / "image.png", img)
            if f == 0:
                for v in VIEW_CAMERAS:
                    png(tmp / "views" / f"{v['name']}.png", render(pr, v, size, light))
        names = [j.name for j in c.joints]
        skeleton = [[j.parent, i] for i, j in enumerate(c.joints) if j.parent >= 0]
        kp = project(poses[0], GT_CAMERAS[0], size)
        (tmp / "keypoints.json").write_text(json.dumps(
            {"keypoints": np.round(kp, 3).tolist(), "skeleton": skeleton, "names": names}))
        ref = {k: GT_CAMERAS[0][k] for k in ("elevation", "azimuth", "radius", "fov_y")}
        (tmp / "camera.json").write_text(json.dumps(ref))
        (tmp / "views" / "cameras.json").write_text(json.dumps(VIEW_CAMERAS))
        (tmp / "gt" / "cameras.json").write_text(json.dumps(GT_CAMERAS))
        (tmp / "gt" / "keypoints3d.json").write_text(json.dumps({"frames": np.round(poses, 5).tolist()}))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("template", nargs="?", choices=TEMPLATES)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--list", action="store_true", help="print the templates and exit")
    args = ap.parse_args()
    if args.list or args.template is None:
        print("\n".join(TEMPLATES))
        return
    if args.out is None:
        ap.error("--out is required")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(make_scene(args.template, args.out, args.seed, args.frames, args.size))


if __name__ == "__main__":
    main()
