"""Reporting of a 4D model (canonical Gaussians + φ): videos, and metrics against a scene's gt/ folder.

Used by the dynamic stage at its end; plain torch (no Lightning). Metrics (`evaluate_4d`, with
dynapose4d.evaluation.metrics and the conventions of `dynapose4d eval`), per gt camera over all gt frames, each beside
its no-motion baseline:
  psnr, ssim           whole frame, mean over frames 1..T-1     (*_no_motion: gt frame 0 held still)
  psnr_moving          PSNR on the moving pixels (gt frame f differs from gt frame 0), mean over frames 1..T-1
  pck                  PCK@0.2 of the 3D tracks projected into the camera (bbox-normalised; *_no_motion: gt
                       frame-0 keypoints held still)
  *_held               the canonical Gaussians held still (the static stage's result without any motion)
"novel" averages the gt cameras other than the reference camera (never seen moving); "mean" all of them, plus
kp_error_3d (mean ‖track − gt‖, world units; *_no_motion: gt frame 0 held; *_frame0: the lifting error at
frame 0) and jitter (mean ‖x_{t+1} − 2 x_t + x_{t−1}‖; jitter_gt: of the gt tracks).
Renders and gt are compared as RGB over the same background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynapose4d.core.cameras import Camera, project
from dynapose4d.core.images import over_background, to_uint8
from dynapose4d.core.io import write_video
from dynapose4d.deform import render_4d
from dynapose4d.evaluation import metrics as M
from dynapose4d.evaluation.gt import load_gt, read_gt_frames, summarise, track_view_metrics

# ------------------------------------------------------------------------------------------------
# videos
# ------------------------------------------------------------------------------------------------


def draw_points(img: np.ndarray, points: np.ndarray, colour: tuple[int, int, int], radius: int = 1) -> np.ndarray:
    """Draw filled squares at pixel points [N, 2] on a uint8 image [H, W, 3] (in place; returns it)."""
    H, W = img.shape[:2]
    for x, y in np.asarray(points, dtype=np.float64):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        j, i = int(np.floor(x)), int(np.floor(y))
        img[max(i - radius, 0):min(i + radius + 1, H), max(j - radius, 0):min(j + radius + 1, W)] = colour
    return img


def write_videos(out_dir: Path, canonical: Any, phi: Any, camera: Camera, video: torch.Tensor,
                 tracks: torch.Tensor | None, kp_targets: torch.Tensor | None, background: float = 1.0,
                 fps: int = 8, orbit_frames: int = 36) -> dict[str, Path]:
    """reference (render | driving frame), orbit (one turn while moving) and keypoints (render with the
    projected 3D tracks in red, CAPE's driving keypoints in green) as .mp4, plus .gif of the first two."""
    T, H, W = video.shape[:3]
    taus = torch.arange(T, dtype=torch.float32) / max(T - 1, 1)
    rgb = render_4d(canonical, phi, [camera], taus, W, H, background)[0][:, 0]  # [T, H, W, 3]
    driving = over_background(video.cpu().float(), background)
    paths: dict[str, Path] = {}
    ref = torch.cat([rgb, driving], dim=2)  # [T, H, 2W, 3]
    paths["reference"] = write_video(out_dir / "reference.mp4", ref, fps=fps)
    write_video(out_dir / "reference.gif", ref, fps=fps)
    orbit_taus = [(i % T) / max(T - 1, 1) for i in range(orbit_frames)]
    frames = []
    for i, t in enumerate(orbit_taus):
        cam = Camera("orbit", camera.elevation, camera.azimuth + 360.0 * i / orbit_frames, camera.radius,
                     camera.fov_y)
        frames.append(render_4d(canonical, phi, [cam], [t], W, H, background)[0][0, 0])
    orbit = torch.stack(frames)
    paths["orbit"] = write_video(out_dir / "orbit.mp4", orbit, fps=fps)
    write_video(out_dir / "orbit.gif", orbit, fps=fps)
    r = max(1, H // 96)
    overlay = to_uint8(torch.cat([rgb, driving], dim=2))
    for f in range(T):
        if tracks is not None:
            px, _ = project(tracks[f].cpu().float(), camera.viewmat(), camera.K(W, H))
            draw_points(overlay[f], px.numpy(), (230, 30, 30), r)
        if kp_targets is not None:
            draw_points(overlay[f, :, W:], kp_targets[f].cpu().numpy(), (30, 200, 30), r)
    paths["keypoints"] = write_video(out_dir / "keypoints.mp4", overlay, fps=fps)
    return paths


# ------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------


def evaluate_4d(canonical: Any, phi: Any, gt_dir: str | Path, tracks: torch.Tensor | None,
                reference: Camera, background: float = 1.0, pck_threshold: float = 0.2) -> dict[str, Any]:
    """Metrics of the 4D model against gt/ beside the no-motion baselines (module docstring), with the
    conventions of `dynapose4d eval` (dynapose4d.evaluation.metrics): {"mean", "novel", "per_view": {camera: ...}}."""
    gt = load_gt(gt_dir)
    per_view: dict[str, dict[str, float | None]] = {}
    for cam in gt.cameras:
        gt_rgba = read_gt_frames(Path(gt_dir) / cam.name)  # [T, H, W, 4]
        T, H, W = gt_rgba.shape[:3]
        taus = torch.arange(T, dtype=torch.float32) / max(T - 1, 1)
        pred = render_4d(canonical, phi, [cam], taus, W, H, background)[0][:, 0]  # [T, H, W, 3]
        static = render_4d(canonical, None, [cam], [0.0], W, H, background)[0][:, 0]  # [1, H, W, 3]
        v: dict[str, float | None] = M.motion_image_metrics(pred, over_background(gt_rgba, background), held=static)
        if tracks is not None and gt.keypoints3d is not None and gt.keypoints3d.shape[0] == T == tracks.shape[0]:
            v.update(track_view_metrics(tracks.cpu(), gt.keypoints3d, cam, W, H, gt.visible.get(cam.name),
                                        pck_threshold))
        per_view[cam.name] = v
    aligned = tracks is not None and gt.keypoints3d is not None and gt.keypoints3d.shape[0] == tracks.shape[0]
    return summarise(per_view, gt.cameras, reference, tracks.cpu() if aligned else None,
                     gt.keypoints3d if aligned else None)


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """{"mean/psnr": …, "novel/psnr": …, "az090/psnr": …} of an `evaluate_4d` result (for logs and tables)."""
    out = {f"{g}/{k}": v for g in ("mean", "novel") for k, v in metrics.get(g, {}).items() if v is not None}
    for cam, v in metrics.get("per_view", {}).items():
        out.update({f"{cam}/{k}": x for k, x in v.items() if x is not None and k != "novel"})
    return out
