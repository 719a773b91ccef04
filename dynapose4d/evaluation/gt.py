"""What `dynapose4d eval` and the dynamic stage's report share when they score a 4D model against gt/.

A gt/ folder (docs/scene-folder.md) holds cameras.json, <camera>/000.png … and optionally keypoints3d.json; the
project's own generator also writes keypoints2d.json with per-camera visibility flags (another generator need not: then
every keypoint counts). Both callers render the gt cameras themselves and compute the image metrics; here are
reading the folder, the keypoint metrics of one camera, and the averages over cameras:
  pck, pck_no_motion   PCK@threshold of the 3D tracks projected into the camera, normalised by the gt
                       keypoints' bounding box per frame; no motion = gt frame-0 keypoints held still
  kp_error_3d          mean ‖track − gt‖ in world units (*_no_motion: gt frame 0 held still; *_frame0: the
                       error at frame 0 alone, i.e. how well the keypoints were lifted to 3D)
  jitter               mean ‖x_{t+1} − 2 x_t + x_{t−1}‖ of the tracks (jitter_gt: of the gt tracks)
"mean" averages every camera, "novel" those that are not the reference camera (never seen moving); each
camera's entry in "per_view" carries novel = 1.0 or 0.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dynapose4d.core.cameras import Camera, load_cameras, project, read_json
from dynapose4d.core.errors import InputError
from dynapose4d.core.io import read_image
from dynapose4d.evaluation import metrics as M


@dataclass
class GroundTruth:
    """The non-image content of a gt/ folder."""

    cameras: list[Camera]
    keypoints3d: torch.Tensor | None = None  # [T, N, 3] world coordinates (keypoints3d.json)
    visible: dict[str, torch.Tensor] = field(default_factory=dict)  # camera name -> [T, N] bool (keypoints2d.json)


def load_gt(gt_dir: str | Path) -> GroundTruth:
    """Read gt/cameras.json, gt/keypoints3d.json and gt/keypoints2d.json (the last two optional)."""
    gt_dir = Path(gt_dir)
    if not (gt_dir / "cameras.json").is_file():
        raise InputError(f"{gt_dir}: not a gt folder (no cameras.json)")
    gt = GroundTruth(load_cameras(gt_dir / "cameras.json"))
    path = gt_dir / "keypoints3d.json"
    if path.is_file():
        try:
            gt.keypoints3d = torch.tensor(read_json(path)["frames"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: expected {{\"frames\": [T][N][3]}} ({e})") from None
        if gt.keypoints3d.ndim != 3 or gt.keypoints3d.shape[-1] != 3:
            raise InputError(f"{path}: expected frames of shape [T][N][3], got {list(gt.keypoints3d.shape)}")
    path = gt_dir / "keypoints2d.json"
    if path.is_file():
        gt.visible = {k: torch.tensor(v["visible"], dtype=torch.bool)
                      for k, v in read_json(path).items() if isinstance(v, dict) and "visible" in v}
    return gt


def gt_frame_files(folder: str | Path) -> list[Path]:
    """gt/<camera>/000.png, 001.png … in order; none is a one-line InputError naming the folder."""
    folder = Path(folder)
    files = sorted(folder.glob("[0-9][0-9][0-9].png"))
    if not files:
        raise InputError(f"{folder}: no gt frames (000.png, 001.png, ...)")
    return files


def read_gt_frames(folder: str | Path) -> torch.Tensor:
    """gt/<camera>/000.png … as RGBA [T, H, W, 4] in [0, 1] (an RGB frame gets alpha 1)."""
    folder = Path(folder)
    files = gt_frame_files(folder)
    imgs = [read_image(f) for f in files]
    if any(i.shape != imgs[0].shape for i in imgs):
        raise InputError(f"{folder}: gt frames of different sizes")
    return torch.stack([i if i.shape[-1] == 4 else torch.cat([i, torch.ones_like(i[..., :1])], -1) for i in imgs])


def same_camera(a: Camera, b: Camera) -> bool:
    """Whether two orbit cameras are the same (names aside; azimuths compared modulo 360)."""
    da = (a.azimuth - b.azimuth + 180.0) % 360.0 - 180.0
    return (abs(a.elevation - b.elevation) < 1e-3 and abs(da) < 1e-3 and abs(a.radius - b.radius) < 1e-3
            and abs(a.fov_y - b.fov_y) < 1e-3)


def track_view_metrics(tracks: torch.Tensor, keypoints3d: torch.Tensor, camera: Camera, width: int, height: int,
                       visible: torch.Tensor | None = None, threshold: float = 0.2) -> dict[str, float]:
    """PCK of 3D tracks [T, N, 3] projected into `camera`, and of gt frame 0 held still, against the projected
    gt keypoints [T, N, 3]; `visible` [T, N] (ignored unless its shape matches) limits the keypoints counted."""
    vm, K = camera.viewmat(), camera.K(width, height)
    gt2d = project(keypoints3d, vm, K)[0]  # [T, N, 2]
    vis = visible if visible is not None and tuple(visible.shape) == tuple(gt2d.shape[:2]) else None
    norm = M.bbox_size(gt2d, vis).clamp(min=1e-6)  # [T]
    return {"pck": M.pck(project(tracks.float(), vm, K)[0], gt2d, norm, threshold, vis),
            "pck_no_motion": M.pck(gt2d[:1].expand_as(gt2d), gt2d, norm, threshold, vis)}


def _mean(xs: list[float | None]) -> float:
    v = [x for x in xs if x is not None and math.isfinite(x)]
    return float(sum(v) / len(v)) if v else float("nan")


def clean(d: dict[str, float | None]) -> dict[str, float | None]:
    """Round to 5 decimals; NaN, inf and None become None (JSON-safe)."""
    return {k: (round(float(x), 5) if x is not None and math.isfinite(x) else None) for k, x in d.items()}


def summarise(per_view: dict[str, dict[str, float | None]], cameras: list[Camera], reference: Camera,
              tracks: torch.Tensor | None = None, keypoints3d: torch.Tensor | None = None) -> dict[str, Any]:
    """{"mean", "novel", "per_view"} from per-camera metrics (module docstring); the 3D keypoint error and
    jitter join "mean" when both tracks and gt keypoints [T, N, 3] are given (same T)."""
    novel_names = {c.name for c in cameras if not same_camera(c, reference)}
    keys = sorted({k for v in per_view.values() for k in v if k != "novel"})
    mean = {k: _mean([v.get(k) for v in per_view.values()]) for k in keys}
    novel = {k: _mean([v.get(k) for n, v in per_view.items() if n in novel_names]) for k in keys}
    if tracks is not None and keypoints3d is not None:
        tr = tracks.float()
        mean["kp_error_3d"] = M.keypoint_error_3d(tr, keypoints3d)
        mean["kp_error_3d_no_motion"] = M.keypoint_error_3d(keypoints3d[:1].expand_as(keypoints3d), keypoints3d)
        mean["kp_error_3d_frame0"] = M.keypoint_error_3d(tr[:1], keypoints3d[:1])
        mean["jitter"] = M.jitter(tr)
        mean["jitter_gt"] = M.jitter(keypoints3d)
    views = {k: clean({**v, "novel": float(k in novel_names)}) for k, v in per_view.items()}
    return {"mean": clean(mean), "novel": clean(novel), "per_view": views}
