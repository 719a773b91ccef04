"""Reporting a 4D model (canonical Gaussians + φ) at the end of the dynamic stage: its videos.

Owns `write_videos` (reference: render | driving frame, orbit while moving, keypoints: the projected 3D tracks
over the render) and `draw_points`. Plain torch (no Lightning). Scoring against gt/ is
`dynapose4d.evaluation.score.score_4d` (the one scorer).
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
