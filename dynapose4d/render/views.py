"""Rendering helpers for outputs and evaluation: orbit camera lists, renders of Gaussians for camera lists,
image grids, orbit videos.

Gaussians are given either as a `GaussianModel` or as a dict of rasterizer inputs (means, quats, scales,
opacities, colors) — what `GaussianModel.activated()` returns, or a deformed copy of it at some time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dynapose4d.core.cameras import REFERENCE_FOV_Y, REFERENCE_RADIUS, Camera, stack_cameras
from dynapose4d.core.io import write_video
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.render import rasterize


def orbit_cameras(num: int = 36, elevation: float = 0.0, radius: float = REFERENCE_RADIUS,
                  fov_y: float = REFERENCE_FOV_Y, start_azimuth: float = 0.0) -> list[Camera]:
    """`num` cameras evenly spaced over a 360° orbit (azimuth start, start + 360/num, ...)."""
    return [Camera(f"orbit{i:03d}", elevation, start_azimuth + 360.0 * i / num, radius, fov_y) for i in range(num)]


def _inputs(gaussians: GaussianModel | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = gaussians.activated() if isinstance(gaussians, GaussianModel) else gaussians
    return {k: g[k] for k in ("means", "quats", "scales", "opacities", "colors")}


@torch.no_grad()
def render_cameras(
    gaussians: GaussianModel | dict[str, torch.Tensor],
    cameras: Sequence[Camera],
    width: int,
    height: int,
    background: float = 1.0,
    chunk: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render every camera: RGB composited over a grey level `background` [C, H, W, 3] and alpha [C, H, W, 1]
    (on the CPU, float32; no gradient)."""
    g = _inputs(gaussians)
    dev = g["means"].device
    rgbs, alphas = [], []
    for i in range(0, len(cameras), chunk):
        cams = list(cameras[i:i + chunk])
        viewmats, Ks = stack_cameras(cams, width, height, device=dev)
        bg = torch.full((len(cams), 3), float(background), device=dev)
        rgb, alpha, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                                  width, height, backgrounds=bg)
        rgbs.append(rgb.clamp(0, 1).float().cpu())
        alphas.append(alpha.clamp(0, 1).float().cpu())
    return torch.cat(rgbs), torch.cat(alphas)


def image_grid(images: torch.Tensor, cols: int | None = None, pad: int = 2, fill: float = 1.0) -> torch.Tensor:
    """Tile images [N, H, W, C] into one image [rows·(H+pad)−pad, cols·(W+pad)−pad, C]."""
    n, h, w, c = images.shape
    cols = cols or int(n ** 0.5 + 0.999)
    rows = (n + cols - 1) // cols
    out = torch.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), float(fill), dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = images[i]
    return out


def write_orbit_video(gaussians: GaussianModel | dict[str, torch.Tensor], path: str | Path, size: int,
                      num: int = 36, elevation: float = 0.0, radius: float = REFERENCE_RADIUS,
                      fov_y: float = REFERENCE_FOV_Y, fps: int = 12, background: float = 1.0) -> torch.Tensor:
    """Render a 360° orbit and write it to `path` (.mp4 or .gif, atomically). Returns the frames [T, H, W, 3]."""
    frames, _ = render_cameras(gaussians, orbit_cameras(num, elevation, radius, fov_y), size, size, background)
    write_video(path, frames, fps=fps)
    return frames
