"""The one scorer of a 4D model (canonical Gaussians + deformation φ) against a scene's gt/ folder.

`score_4d` is what both `dynapose4d eval` / `dynapose4d experiment` (through `pipeline.evaluate.evaluate_run`,
which reads a run folder) and the dynamic stage's end-of-training report call. It owns: picking the cameras
(protocol), rendering them at every gt frame f at normalised time τ = f / (T_gt − 1) (so a run with another
frame count is compared at the same moments), compositing over the background, the Consistent4D resize, the
"held" baseline, aligning the 3D keypoint tracks to the gt frames by normalised time, and assembling the
per-camera metrics into {"mean", "novel", "per_view"} (`evaluation.gt.summarise`). The metric formulas are in
`evaluation.metrics`, the gt folder reading and keypoint metrics in `evaluation.gt`, the table in
`evaluation.table`.

Per gt camera, each metric beside its baselines (averages over the frames in which something moves, see
`metrics.motion_image_metrics`):
  psnr, ssim, lpips    whole frame (lpips only with `with_lpips` and local weights)
  psnr_moving          PSNR on the moving pixels (gt frame f differs from gt frame 0)
  *_no_motion          gt frame 0 held still
  *_held               the model without motion, held still: `held="frame0"` the model's own frame 0 (what
                       `dynapose4d eval` reports), `held="canonical"` the canonical Gaussians without φ (what the
                       dynamic stage reports: the static result before any motion)
  pck, pck_no_motion   PCK@pck_threshold of the tracks projected into the camera (`evaluation.gt`), when the
                       gt has keypoints3d.json with as many frames as the camera has images
"mean" also carries kp_error_3d (+ _no_motion, _frame0) and jitter (+ jitter_gt) of the aligned tracks.

Two compositing paths exist and differ by up to ~4e-3 per pixel where a render's straight colour would exceed 1
(so in the 4th–5th significant digit of PSNR): `composite="straight"` renders premultiplied, turns it into the
straight RGBA that `dynapose4d render` writes (colour clamped to [0, 1]) and composites that over the background
(`dynapose4d eval`); `composite="rasteriser"` lets the rasteriser composite over the background itself (the dynamic
stage). Each caller keeps its own, so every number it reported before stays the same.

`score_static` scores the static stage's Gaussians at gt frame 0 alone (PSNR and SSIM per gt camera over white,
whole image, the rasteriser compositing): the static stage's own report, before anything moves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from dynapose4d.core.cameras import CONSISTENT4D_CAMERAS, Camera, load_cameras
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import over_background, resize, straight_rgba
from dynapose4d.core.io import read_image
from dynapose4d.deform import render_4d
from dynapose4d.evaluation import metrics as M
from dynapose4d.evaluation.gt import (
    gt_frame_size,
    load_gt,
    read_gt_frames,
    same_camera,
    scale_gt_frames,
    summarise,
    track_view_metrics,
)
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.render.views import render_cameras

C4D_SIZE = 512  # the Consistent4D protocol compares images resized to C4D_SIZE x C4D_SIZE

Protocol = Literal["gt", "consistent4d"]
Held = Literal["frame0", "canonical"]
Composite = Literal["straight", "rasteriser"]


@dataclass(frozen=True)
class ScoreOptions:
    """How `score_4d` scores (module docstring)."""

    protocol: Protocol = "gt"  # "gt": every gt camera at its own size; "consistent4d": its four cameras, 512x512
    held: Held = "frame0"  # the *_held baseline: "frame0" the model's own frame 0, "canonical" the Gaussians without φ
    with_lpips: bool = False  # also LPIPS (None per value when its weights are not local: metrics.lpips_available)
    background: float = 1.0  # grey level that renders and gt are composited over
    composite: Composite = "straight"  # "straight": straight RGBA then over the background; "rasteriser": its own
    pck_threshold: float = 0.2  # a keypoint is correct within this fraction of the gt keypoints' bbox size
    max_size: int = 0  # "gt" protocol: gt frames longer than this are scaled down to it, renders made at that size
    # (the run's max_image_size, as for the scene's files; 0: gt's own size). consistent4d keeps its own 512 x 512

    def __post_init__(self) -> None:
        for name, allowed in (("protocol", ("gt", "consistent4d")), ("held", ("frame0", "canonical")),
                              ("composite", ("straight", "rasteriser"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ScoreOptions.{name}: choose one of {allowed}, got {getattr(self, name)!r}")


@dataclass
class Score:
    """What `score_4d` measured: the metrics and what they were measured on."""

    metrics: dict[str, Any]  # {"mean", "novel", "per_view"} (evaluation.gt.summarise); the dynamic stage's metrics.json
    cameras: list[Camera]  # the cameras scored (the protocol's choice from gt/cameras.json), in order
    frames: int  # gt frames per camera
    image_size: tuple[int, int] | None  # (width, height) images were resized to for the comparison, None: gt's own
    # (also when gt frames were scaled down within options.max_size: then the size of the first camera's frames)
    keypoints: bool  # tracks and gt keypoints3d.json were both there: pck, kp_error_3d and jitter were measured


def protocol_cameras(gt_dir: str | Path, protocol: Protocol, cameras: list[Camera]) -> list[Camera]:
    """The cameras a protocol scores: all of gt/cameras.json for "gt"; for "consistent4d" its four cameras (found
    by pose, names aside) in its order, a one-line InputError naming gt/cameras.json when one is missing."""
    if protocol == "gt":
        return list(cameras)
    picked, missing = [], []
    for want in CONSISTENT4D_CAMERAS:
        hit = next((c for c in cameras if same_camera(c, want)), None)
        (picked.append(hit) if hit else missing.append(f"azimuth {want.azimuth:g}"))
    if missing:
        raise InputError(f"{Path(gt_dir) / 'cameras.json'}: the consistent4d protocol needs its four cameras "
                         f"(elevation 0, radius 2, fov_y 49.1); missing {', '.join(missing)}")
    return picked


def time_index(t_run: int, t_gt: int) -> torch.Tensor:
    """Indices [t_gt] into a run's t_run frames nearest to each gt frame's normalised time f / (t_gt − 1)
    (Python's round, so ties go to the even index); the identity when the counts match."""
    if t_run == t_gt:
        return torch.arange(t_gt)
    return torch.tensor([round(f * (t_run - 1) / max(t_gt - 1, 1)) for f in range(t_gt)])


def _render(canonical: Any, phi: Any, camera: Camera, taus: list[float], width: int, height: int,
            options: ScoreOptions) -> torch.Tensor:
    """RGB [F, H, W, 3] of the model from `camera` at `taus`, over the background (options.composite)."""
    if options.composite == "rasteriser":
        return render_4d(canonical, phi, [camera], taus, width, height, options.background)[0][:, 0]
    rgb, alpha = render_4d(canonical, phi, [camera], taus, width, height, background=None)  # [F, 1, H, W, 3|1]
    return over_background(straight_rgba(rgb[:, 0], alpha[:, 0]), options.background)


@torch.no_grad()
def score_4d(canonical: Any, phi: Any, gt_dir: str | Path, tracks: torch.Tensor | None, reference: Camera, *,
             options: ScoreOptions | None = None) -> Score:
    """Score the 4D model (canonical GaussianModel + deformation φ, None = held still) against gt/ (module
    docstring). `tracks` [T_run, N, 3] world keypoint tracks (None: no keypoint metrics), aligned to the gt frames
    by normalised time; `reference` the camera the model was fitted from ("novel" averages the others).
    InputError when the gt folder is incomplete or its cameras have different frame counts."""
    options = options or ScoreOptions()
    gt_dir = Path(gt_dir)
    gt = load_gt(gt_dir)
    cams = protocol_cameras(gt_dir, options.protocol, gt.cameras)
    kp_gt = gt.keypoints3d  # [T_kp, N, 3] or None
    aligned = None  # [T_kp, N, 3] the tracks at the gt keypoints' frames
    if tracks is not None and kp_gt is not None:
        tr = tracks.detach().cpu().float()
        aligned = tr[time_index(tr.shape[0], kp_gt.shape[0])]

    per_view: dict[str, dict[str, float | None]] = {}
    T_gt, scaled = None, None
    max_size = options.max_size if options.protocol == "gt" else 0
    for cam in cams:
        gt_rgba = read_gt_frames(gt_dir / cam.name, max_size)  # [T, H, W, 4] scaled down within max_size
        T, H, W = gt_rgba.shape[:3]
        if scaled is None and max_size and max(gt_frame_size(gt_dir / cam.name)) > max_size:
            scaled = (W, H)
        if T_gt is not None and T != T_gt:
            raise InputError(f"{gt_dir / cam.name}: {T} frames, but other cameras have {T_gt}")
        T_gt = T
        taus = [f / (T - 1) if T > 1 else 0.0 for f in range(T)]
        pred = _render(canonical, phi, cam, taus, W, H, options)  # [T, H, W, 3]
        held = (pred[:1] if options.held == "frame0" else
                _render(canonical, None, cam, [0.0], W, H, options))  # [1, H, W, 3]
        gt_rgb = over_background(gt_rgba, options.background)  # [T, H, W, 3]
        if options.protocol == "consistent4d":
            pred, held, gt_rgb = (resize(x, C4D_SIZE) for x in (pred, held, gt_rgb))
        v: dict[str, float | None] = M.motion_image_metrics(pred, gt_rgb, held=held, with_lpips=options.with_lpips)
        if aligned is not None and kp_gt.shape[0] == T:
            v.update(track_view_metrics(aligned, kp_gt, cam, W, H, gt.visible.get(cam.name), options.pck_threshold))
        per_view[cam.name] = v

    metrics = summarise(per_view, cams, reference, aligned, kp_gt if aligned is not None else None)
    return Score(metrics=metrics, cameras=cams, frames=int(T_gt or 0),
                 image_size=(C4D_SIZE, C4D_SIZE) if options.protocol == "consistent4d" else scaled,
                 keypoints=aligned is not None)


def score_static(gaussians: GaussianModel, gt_dir: str | Path | None, max_size: int = 0
                 ) -> tuple[dict[str, dict[str, float]], list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """PSNR and SSIM of static Gaussians against gt frame 0 of each gt camera (RGB over white, whole image; a
    frame longer than `max_size` > 0 scaled down to it, as `ScoreOptions.max_size`). Returns ({camera: {"psnr",
    "ssim"}}, [(camera, render [H, W, 3], gt [H, W, 3])]); both empty without a gt folder (no
    gt_dir/cameras.json); a camera without 000.png is left out."""
    if gt_dir is None or not (Path(gt_dir) / "cameras.json").is_file():
        return {}, []
    gt_dir = Path(gt_dir)
    per_view: dict[str, dict[str, float]] = {}
    pairs = []
    for cam in load_cameras(gt_dir / "cameras.json"):
        path = gt_dir / cam.name / "000.png"
        if not path.is_file():
            continue
        gt = read_image(path)  # [H, W, 3 or 4]
        if max_size > 0 and max(gt.shape[:2]) > max_size:  # scaled down as RGBA, like read_gt_frames
            rgba = gt if gt.shape[-1] == 4 else torch.cat([gt, torch.ones_like(gt[..., :1])], -1)
            gt = scale_gt_frames(rgba[None], max_size)[0]
        gt_rgb = over_background(gt, 1.0) if gt.shape[-1] == 4 else gt
        pred, _ = render_cameras(gaussians, [cam], gt.shape[1], gt.shape[0], background=1.0)  # [1, H, W, 3]
        per_view[cam.name] = {"psnr": M.psnr(pred, gt_rgb[None]), "ssim": M.ssim(pred, gt_rgb[None])}
        pairs.append((cam.name, pred[0], gt_rgb))
    return per_view, pairs
