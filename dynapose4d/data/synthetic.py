"""Synthetic articulated objects made of 3D Gaussians, with ground truth (scene folders of docs/scene-folder.md).

An object is a seeded `Rig` (dynapose4d/data/rig.py: joints, capsules, sinusoidal joint-angle motion) whose
capsules are covered with flat Gaussians, coloured and skinned to the skeleton (dynapose4d/data/rig_surface.py).
The object is centred on its animated bounding box and stays within radius 0.75 at all times, so it is inside
the unit sphere and inside the frame of every orbit camera of radius 2 and fov 49.1.

Public API (CAPE's procedural data renders random pairs with it on the fly):
  - `TEMPLATES`, `DESCRIPTIONS`
  - `make_object(template, seed, num_frames=16) -> SyntheticObject` (`.names`, `.skeleton`, `.num_frames`,
    `.gaussians(frame)`, `.keypoints3d(frame)`; fractional frames allowed)
  - `render_object(obj, frame, camera, size, background) -> (rgba [H,W,4], kps2d [N,2], visible [N])`
  - `render_views(...)`: the same for several cameras in one rasterizer call
  - `write_scene(template, out_dir, seed, num_frames, size) -> Path`: the whole scene folder, atomically
  - `no_motion_psnr(frames)`: PSNR of frame 0 held still on the moving pixels (the trivial baseline)
  - `make_scene_cli(args)`: `dynapose4d make-scene NAME --out DIR [--seed --frames --size --list --orbit-video]`

Cameras of a written scene (all radius 2, fov_y 49.1): the reference camera (elevation 0, azimuth 0) for
image.png and video/; gt/ = az000 (the reference view itself), az090, az180, az270 (elevation 0) and
el30_az045 (elevation 30, azimuth 45); views/ = az120, az240 (elevation 0), el30_az180, el30_az300.
No gt camera is a views/ camera, so az090, az180, az270 and el30_az045 are novel views for a static stage
trained on image.png + views/ (`NOVEL_GT_CAMERAS`); az000 is the reference view.

It stays one module (~400 lines): the object, its renders and the scene folder they make are one job, and the
rig and its surface already live in their own modules.
"""

from __future__ import annotations

import json
import math
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from dynapose4d.core import seeding
from dynapose4d.core.cameras import (
    REFERENCE_CAMERA,
    Camera,
    depth_visibility,
    project,
    save_camera,
    save_cameras,
    stack_cameras,
)
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import over_background, premultiplied_over, to_uint8
from dynapose4d.core.io import atomic_folder, write_video
from dynapose4d.core.rotations import quat_multiply
from dynapose4d.data import rig as rigs
from dynapose4d.data import rig_templates
from dynapose4d.data.rig_surface import cover_rig, matrix_to_quat
from dynapose4d.render import rasterize

TEMPLATES: tuple[str, ...] = ("humanoid", "quadruped", "lamp", "hand", "bird", "random")

DESCRIPTIONS: dict[str, str] = {
    "humanoid": "a person, 14 keypoints (head, neck, shoulders, elbows, wrists, hips, knees, ankles)",
    "quadruped": "a four-legged animal seen from the side, 17 keypoints (nose, head, ears, neck, back, tail, legs)",
    "lamp": "a bending desk lamp, 7 keypoints (base, pivot, elbow, wrist, head, shade, handle)",
    "hand": "a hand, 21 keypoints (wrist and four joints per finger); the fingers curl and spread",
    "bird": "a bird with spread wings, 15 keypoints (beak, head, neck, body, tail, wings, legs); the wings flap",
    "random": "a random tree skeleton: 5-20 joints, random branch lengths, angles, thickness and motion",
}

_BUILDERS: dict[str, Callable[[np.random.Generator], rigs.Rig]] = {
    "humanoid": rig_templates.humanoid,
    "quadruped": rig_templates.quadruped,
    "lamp": rig_templates.lamp,
    "hand": rig_templates.hand,
    "bird": rig_templates.bird,
    "random": rig_templates.random_tree,
}

OBJECT_RADIUS = 0.75  # every capsule stays within this distance of the origin at all times
MIN_CAPSULE_RADIUS = 0.02  # about 1.4 px at 128 px: thinner limbs would vanish between pixels
NUM_GAUSSIANS = 2000  # target Gaussian count per object (the capsule spacing is chosen to match it)
OPACITY = 0.95

GT_CAMERAS: tuple[Camera, ...] = (
    Camera("az000", 0.0, 0.0),
    Camera("az090", 0.0, 90.0),
    Camera("az180", 0.0, 180.0),
    Camera("az270", 0.0, 270.0),
    Camera("el30_az045", 30.0, 45.0),
)
VIEW_CAMERAS: tuple[Camera, ...] = (
    Camera("az120", 0.0, 120.0),
    Camera("az240", 0.0, 240.0),
    Camera("el30_az180", 30.0, 180.0),
    Camera("el30_az300", 30.0, 300.0),
)
NOVEL_GT_CAMERAS: tuple[str, ...] = ("az090", "az180", "az270", "el30_az045")  # gt cameras not in views/
NO_MOTION_CAMERA = "az090"  # the novel camera on which the no-motion baseline is reported
MOVING_THRESHOLD = 0.05  # a pixel moves when a channel (RGBA over white) changes by more than this


# ------------------------------------------------------------------------------------------ the object


class SyntheticObject:
    """A seeded articulated object made of Gaussians. Frames are floats in [0, num_frames - 1]."""

    def __init__(self, rig: rigs.Rig, template: str, seed: int, num_frames: int, rng: np.random.Generator,
                 num_gaussians: int = NUM_GAUSSIANS):
        self.template = template
        self.seed = seed
        self.num_frames = int(num_frames)
        self.rig = rig
        self.names: list[str] = rig.keypoint_names
        self.skeleton: list[tuple[int, int]] = list(rig.skeleton)
        self._kp = np.asarray(rig.keypoints)
        g = cover_rig(rig, num_gaussians, rng)
        self._rest = torch.from_numpy(g["means"]).float()  # [G, 3]
        self._quats = torch.from_numpy(g["quats"]).float()  # [G, 4]
        self._scales = torch.from_numpy(g["scales"]).float()  # [G, 3]
        self._colors = torch.from_numpy(g["colors"]).float()  # [G, 3]
        self._opacities = torch.full((self._rest.shape[0],), OPACITY)  # [G]
        self._drive = torch.from_numpy(g["drive"])  # [G] joint moving each Gaussian
        self._partner = torch.from_numpy(g["partner"])  # [G] joint blended in (= drive when none)
        self._w = torch.from_numpy(g["weight"]).float()[:, None]  # [G, 1] weight of the partner
        self.keypoint_radii = torch.from_numpy(g["kp_radius"]).float()  # [N] own-surface depth bound per kp

    @property
    def num_gaussians(self) -> int:
        return int(self._rest.shape[0])

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def tau(self, frame: float) -> float:
        """Normalised time in [0, 1] of a (fractional) frame index."""
        return float(frame) / (self.num_frames - 1) if self.num_frames > 1 else 0.0

    def joints(self, frame: float) -> tuple[np.ndarray, np.ndarray]:
        """World rotations [J, 3, 3] and positions [J, 3] (float64) of every joint at `frame`."""
        Rw, P = self.rig.pose(np.array([self.tau(frame)]))
        return Rw[0], P[0]

    def gaussians(self, frame: float) -> dict[str, torch.Tensor]:
        """Rasterizer inputs at `frame`: means [G,3], quats [G,4], scales [G,3], opacities [G], colors [G,3]."""
        Rw, P = self.joints(frame)
        t = P - np.einsum("jab,jb->ja", Rw, self.rig.rest)  # [J, 3] so that x -> Rw x + t
        A = torch.from_numpy(Rw).float()  # [J, 3, 3]
        t = torch.from_numpy(t).float()  # [J, 3]
        x = self._rest
        m1 = torch.einsum("gab,gb->ga", A[self._drive], x) + t[self._drive]
        m2 = torch.einsum("gab,gb->ga", A[self._partner], x) + t[self._partner]
        means = m1 + self._w * (m2 - m1)  # [G, 3]
        qj = torch.from_numpy(matrix_to_quat(Rw)).float()  # [J, 4]
        quats = quat_multiply(qj[self._drive], self._quats)  # [G, 4]
        return {"means": means, "quats": quats, "scales": self._scales, "opacities": self._opacities,
                "colors": self._colors}

    def keypoints3d(self, frame: float) -> torch.Tensor:
        """Keypoints in world coordinates [N, 3] (float32) at `frame`."""
        return torch.from_numpy(self.keypoints3d_np(frame)).float()

    def keypoints3d_np(self, frame: float) -> np.ndarray:
        """Keypoints [N, 3] in float64 (what the scene files are written from)."""
        return self.joints(frame)[1][self._kp]


def _rng(template: str, seed: int) -> np.random.Generator:
    return seeding.rng(int(seed) & 0xFFFFFFFF, zlib.crc32(template.encode()))


def make_object(template: str, seed: int, num_frames: int = 16, num_gaussians: int = NUM_GAUSSIANS
                ) -> SyntheticObject:
    """Build the seeded object of `template` (one of `TEMPLATES`). Deterministic in (template, seed)."""
    if template not in _BUILDERS:
        raise InputError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1, got {num_frames}")
    rng = _rng(template, seed)
    rig = _BUILDERS[template](rng).normalised(OBJECT_RADIUS - MIN_CAPSULE_RADIUS, MIN_CAPSULE_RADIUS)
    return SyntheticObject(rig, template, seed, num_frames, rng, num_gaussians)


# ------------------------------------------------------------------------------------------- rendering


def render_views(
    obj: SyntheticObject,
    frame: float,
    cameras: Sequence[Camera],
    size: int,
    background: tuple[float, float, float] | None = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render `obj` at `frame` into several square cameras in one rasterizer call.

    Returns rgba [C, H, W, 4] (colour over `background`, or straight colour when it is None; alpha = the
    object's coverage), keypoints [C, N, 2] in pixels (centres at +0.5) and visible [C, N] bool: inside the
    image and not hidden, i.e. the rendered expected depth at the keypoint's pixel is not in front of the
    keypoint by more than the local capsule radius (+ margin) where the pixel is covered (alpha > 0.5).
    """
    g = obj.gaussians(frame)
    viewmats, Ks = stack_cameras(list(cameras), size, size)
    with torch.no_grad():
        render, alpha, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"],
                                     viewmats, Ks, size, size, render_mode="RGB+ED")
    prem, ed, a = render[..., :3], render[..., 3], alpha[..., 0]  # [C,H,W,3], [C,H,W], [C,H,W]
    if background is None:
        rgb = torch.where(a[..., None] > 0, prem / a[..., None].clamp(min=1e-8), torch.ones_like(prem))
    else:
        rgb = premultiplied_over(prem, a[..., None], torch.tensor(background, dtype=prem.dtype))
    rgba = torch.cat([rgb.clamp(0.0, 1.0), a[..., None]], dim=-1)
    kp3 = torch.from_numpy(obj.keypoints3d_np(frame))  # [N, 3] float64
    tol = obj.keypoint_radii.double() * 1.1 + 0.02  # [N]
    kps, vis, _ = depth_visibility(kp3, viewmats.double(), Ks.double(), ed, a, size, size, tol)
    return rgba, kps, vis


def render_object(
    obj: SyntheticObject,
    frame: float,
    camera: Camera,
    size: int,
    background: tuple[float, float, float] | None = (1.0, 1.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render `obj` at `frame` from one camera: rgba [H, W, 4], keypoints [N, 2] px, visible [N] bool.

    See `render_views` for the meaning of `background` and of visibility.
    """
    rgba, kps, vis = render_views(obj, frame, [camera], size, background)
    return rgba[0], kps[0], vis[0]


def no_motion_psnr(frames: torch.Tensor, threshold: float = MOVING_THRESHOLD) -> float:
    """The no-motion baseline: PSNR (dB) of frame 0 held still against each later frame, on the moving pixels.

    `frames` [T, H, W, 4] RGBA are composited over white; a pixel of frame t moves when a channel differs from
    frame 0 by more than `threshold`. Averaged over the frames that have moving pixels (inf if none do).
    """
    rgb = over_background(frames.double(), 1.0)  # [T, H, W, 3]
    vals = []
    for t in range(1, rgb.shape[0]):
        diff = rgb[t] - rgb[0]
        moving = diff.abs().amax(-1) > threshold
        if moving.any():
            mse = diff[moving].pow(2).mean().item()
            vals.append(-10.0 * math.log10(max(mse, 1e-12)))
    return float(np.mean(vals)) if vals else math.inf


def no_motion_psnr_full(frames: torch.Tensor) -> float:
    """The same baseline on whole frames (RGBA over white), averaged over frames 1..T-1 (inf if T == 1)."""
    rgb = over_background(frames.double(), 1.0)  # [T, H, W, 3]
    vals = [-10.0 * math.log10(max((rgb[t] - rgb[0]).pow(2).mean().item(), 1e-12)) for t in range(1, rgb.shape[0])]
    return float(np.mean(vals)) if vals else math.inf


# ------------------------------------------------------------------------------------------ scene files


def _write_png(path: Path, img: torch.Tensor) -> None:
    iio.imwrite(path, to_uint8(img))


def _quantised(img: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(to_uint8(img)).float() / 255.0


def write_scene(
    template: str,
    out_dir: str | Path,
    seed: int = 0,
    num_frames: int = 16,
    size: int = 128,
    orbit_video: bool = False,
) -> Path:
    """Write the scene folder (docs/scene-folder.md) for the seeded object of `template`, atomically.

    Files: image.png (RGBA, frame 0, reference camera), keypoints.json (projection of the 3D keypoints at
    frame 0, skeleton, names), video/000.png ... (RGBA, reference camera), camera.json, views/ (frame 0 from
    `VIEW_CAMERAS`, views/cameras.json), gt/ (cameras.json = `GT_CAMERAS`, gt/<name>/000.png ... every frame,
    keypoints3d.json {"frames": [T][N][3]}, keypoints2d.json {name: {"points": [T][N][2], "visible":
    [T][N]}} for the gt cameras and "ref", meta.json with the generator settings and the no-motion PSNR per
    gt camera). With `orbit_video`: orbit.mp4 and orbit.gif (a 360 degree orbit while the object moves).
    The folder is written as a hidden sibling and renamed when complete (`io.atomic_folder`); an existing
    synthetic scene at `out_dir` is replaced, any other non-empty folder is refused.
    """
    out_dir = Path(out_dir)
    if num_frames < 1:
        raise InputError(f"{out_dir}: the number of frames must be >= 1, got {num_frames}")
    if size < 16:
        raise InputError(f"{out_dir}: the image size must be >= 16 pixels, got {size}")
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                      and not (out_dir / "gt" / "meta.json").is_file())):
        raise InputError(f"{out_dir}: exists and is not a synthetic scene folder; refusing to overwrite it")
    obj = make_object(template, seed, num_frames)
    with atomic_folder(out_dir) as tmp:
        _write_scene_files(obj, tmp, size, orbit_video)
    return out_dir


def _write_scene_files(obj: SyntheticObject, root: Path, size: int, orbit_video: bool) -> None:
    T, N = obj.num_frames, obj.num_keypoints
    ref_name = GT_CAMERAS[0].name  # az000 is the reference camera
    assert GT_CAMERAS[0].to_dict() | {"name": "ref"} == REFERENCE_CAMERA.to_dict()
    for d in ("video", "views", "gt", *(f"gt/{c.name}" for c in GT_CAMERAS)):
        (root / d).mkdir(parents=True, exist_ok=True)
    gt_frames = {c.name: [] for c in GT_CAMERAS}
    kp2d = {c.name: {"points": [], "visible": []} for c in GT_CAMERAS}
    for f in range(T):
        cams = list(GT_CAMERAS) + (list(VIEW_CAMERAS) if f == 0 else [])
        rgba, kps, vis = render_views(obj, f, cams, size, background=None)
        for i, c in enumerate(cams):
            if i >= len(GT_CAMERAS):
                _write_png(root / "views" / f"{c.name}.png", rgba[i])
                continue
            _write_png(root / "gt" / c.name / f"{f:03d}.png", rgba[i])
            gt_frames[c.name].append(_quantised(rgba[i]))
            kp2d[c.name]["points"].append(kps[i].tolist())
            kp2d[c.name]["visible"].append(vis[i].tolist())
            if c.name == ref_name:
                _write_png(root / "video" / f"{f:03d}.png", rgba[i])
                if f == 0:
                    _write_png(root / "image.png", rgba[i])
    kp3 = [obj.keypoints3d_np(f).tolist() for f in range(T)]
    vm, K = REFERENCE_CAMERA.viewmat(torch.float64), REFERENCE_CAMERA.K(size, size, torch.float64)
    px0, _ = project(torch.tensor(kp3[0], dtype=torch.float64), vm, K)
    _write_json(root / "keypoints.json", {"keypoints": px0.tolist(), "skeleton": [list(e) for e in obj.skeleton],
                                          "names": obj.names})
    save_camera(REFERENCE_CAMERA, root / "camera.json")
    save_cameras(VIEW_CAMERAS, root / "views" / "cameras.json")
    save_cameras(GT_CAMERAS, root / "gt" / "cameras.json")
    _write_json(root / "gt" / "keypoints3d.json", {"frames": kp3})
    kp2d["ref"] = kp2d[ref_name]
    _write_json(root / "gt" / "keypoints2d.json", kp2d)
    psnr = {c.name: no_motion_psnr(torch.stack(gt_frames[c.name])) for c in GT_CAMERAS}
    psnr_full = {c.name: no_motion_psnr_full(torch.stack(gt_frames[c.name])) for c in GT_CAMERAS}

    def rounded(d: dict[str, float]) -> dict[str, float | None]:
        return {k: (round(v, 4) if math.isfinite(v) else None) for k, v in d.items()}

    _write_json(root / "gt" / "meta.json", {
        "generator": "dynapose4d.data.synthetic", "template": obj.template, "seed": obj.seed, "num_frames": T,
        "size": size, "num_gaussians": obj.num_gaussians, "num_keypoints": N,
        "novel_cameras": list(NOVEL_GT_CAMERAS), "reference_camera": ref_name,
        "no_motion_psnr": rounded(psnr), "no_motion_psnr_full_frame": rounded(psnr_full),
        "no_motion_camera": NO_MOTION_CAMERA, "moving_threshold": MOVING_THRESHOLD,
    })
    if orbit_video:
        frames = orbit_frames(obj, size)
        write_video(root / "orbit.mp4", frames)
        write_video(root / "orbit.gif", frames)


def orbit_frames(obj: SyntheticObject, size: int, num: int | None = None, elevation: float = 15.0
                 ) -> torch.Tensor:
    """A 360 degree orbit while the object moves (twice back and forth through its animation), over white:
    [num, H, W, 3]."""
    num = num or max(48, 4 * obj.num_frames)
    out = []
    for i in range(num):
        s = i / num
        frame = (obj.num_frames - 1) * 0.5 * (1.0 - math.cos(4.0 * math.pi * s))
        cam = Camera("orbit", elevation, 360.0 * s)
        rgba, _, _ = render_object(obj, frame, cam, size, background=(1.0, 1.0, 1.0))
        out.append(rgba[..., :3])
    return torch.stack(out)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------- CLI


def make_scene_cli(args) -> int:
    """`dynapose4d make-scene NAME --out DIR [--seed --frames --size --list --orbit-video]`."""
    if args.list:
        width = max(len(t) for t in TEMPLATES)
        for t in TEMPLATES:
            print(f"{t:<{width}}  {DESCRIPTIONS[t]}")
        return 0
    if args.name is None:
        raise InputError(f"make-scene: name a template ({', '.join(TEMPLATES)}) or pass --list")
    if args.name not in TEMPLATES:
        raise InputError(f"make-scene: unknown template {args.name!r}; choose one of {', '.join(TEMPLATES)}")
    if args.out is None:
        raise InputError("make-scene: --out DIR is required")
    path = write_scene(args.name, args.out, seed=args.seed, num_frames=args.frames, size=args.size,
                       orbit_video=args.orbit_video)
    meta = json.loads((path / "gt" / "meta.json").read_text())
    psnr = meta["no_motion_psnr"][NO_MOTION_CAMERA]
    print(f"wrote {path}: {args.name} seed {args.seed}, {args.frames} frames, {args.size} px, "
          f"{meta['num_gaussians']} Gaussians, {meta['num_keypoints']} keypoints")
    full = meta["no_motion_psnr_full_frame"][NO_MOTION_CAMERA]
    if psnr is None:
        print("no-motion baseline: n/a (a single frame)")
    else:
        print(f"no-motion baseline (gt frame 0 held still) on {NO_MOTION_CAMERA}: PSNR {psnr:.2f} dB on the moving "
              f"pixels, {full:.2f} dB on whole frames")
    if args.orbit_video:
        print(f"orbit video: {path / 'orbit.mp4'}, {path / 'orbit.gif'}")
    sys.stdout.flush()
    return 0
