"""What `dynapose4d eval` and the dynamic stage's report share when they score a 4D model against gt/.

A gt/ folder (docs/scene-folder.md) holds cameras.json, <camera>/000.png … and optionally keypoints3d.json; the
project's own generator also writes keypoints2d.json with per-camera visibility flags (another generator need not: then
every keypoint counts). Both callers render the gt cameras themselves, at the size of the gt frames as read, and
compute the image metrics; gt frames larger than the run's `max_image_size` are read scaled down to it
(`read_gt_frames`), as the scene's own files are, so renders are made and compared at the run's size. Here are
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
from dynapose4d.data.recentring import downscale_of, resample_frames
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
        if not torch.isfinite(gt.keypoints3d).all():
            raise InputError(f"{path}: positions must be finite numbers (NaN or infinity found)")
    path = gt_dir / "keypoints2d.json"
    if path.is_file():
        data = read_json(path)
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object {{<camera>: {{\"points\", \"visible\"}}}}, got "
                             f"{type(data).__name__}")
        for k, v in data.items():
            if not (isinstance(v, dict) and "visible" in v):
                continue
            try:
                gt.visible[k] = torch.tensor(v["visible"], dtype=torch.bool)
            except (TypeError, ValueError, RuntimeError) as e:
                raise InputError(f"{path}: camera {k!r}: 'visible' must be [T][N] flags ({e})") from None
            if gt.visible[k].ndim != 2:
                raise InputError(f"{path}: camera {k!r}: 'visible' must be [T][N] flags, got shape "
                                 f"{list(gt.visible[k].shape)}")
    return gt


def gt_frame_files(folder: str | Path) -> list[Path]:
    """gt/<camera>/000.png, 001.png … in order; none is a one-line InputError naming the folder."""
    folder = Path(folder)
    files = sorted(folder.glob("[0-9][0-9][0-9].png"))
    if not files:
        raise InputError(f"{folder}: no gt frames (000.png, 001.png, ...)")
    return files


def check_gt_frames(folder: str | Path) -> list[Path]:
    """`gt_frame_files`, each checked from its header (the pixels are not read): readable, and all of one size."""
    from PIL import Image

    files = gt_frame_files(folder)
    first: tuple[int, int] | None = None
    for f in files:
        try:
            with Image.open(f) as im:
                size = (int(im.size[0]), int(im.size[1]))
        except OSError as e:
            raise InputError(f"{f}: unreadable gt frame ({type(e).__name__})") from None
        if first is None:
            first = size
        elif size != first:
            raise _other_size(f, size, files[0], first)
    return files


def _other_size(f: Path, size: tuple[int, int], first_file: Path, first: tuple[int, int]) -> InputError:
    """The error of a gt frame `f` of (W, H) `size` beside `first_file`'s `first`."""
    return InputError(f"{f}: gt frame is {size[0]}x{size[1]}, but {first_file.name} is {first[0]}x{first[1]} "
                      "(a camera's frames must share one size)")


def read_gt_frames(folder: str | Path, max_size: int = 0) -> torch.Tensor:
    """gt/<camera>/000.png … as RGBA [T, H, W, 4] in [0, 1] (an RGB frame gets alpha 1). Frames whose longer side
    is over `max_size` (> 0) are scaled down to it, each as it is read, by the scene loader's downscale
    (`dynapose4d.data.recentring.downscale_of`: the same resample; the gt cameras' intrinsics follow the frame
    size), so that they are compared with renders made at the run's size."""
    folder = Path(folder)
    files = gt_frame_files(folder)
    imgs, first = [], None
    for f in files:
        img = read_image(f)
        if first is None:
            first = img.shape[:2]
        elif img.shape[:2] != first:  # RGB and RGBA frames may mix: an RGB frame gets alpha 1
            raise _other_size(f, (img.shape[1], img.shape[0]), files[0], (first[1], first[0]))
        rgba = img if img.shape[-1] == 4 else torch.cat([img, torch.ones_like(img[..., :1])], -1)
        imgs.append(scale_gt_frames(rgba[None], max_size)[0])
    return torch.stack(imgs)


def scale_gt_frames(rgba: torch.Tensor, max_size: int) -> torch.Tensor:
    """gt frames RGBA [T, H, W, 4] scaled down within `max_size` on their longer side (`read_gt_frames`); as given
    when they fit or `max_size` is 0."""
    rec = downscale_of(int(rgba.shape[2]), int(rgba.shape[1]), max_size)
    return rgba if rec is None else resample_frames(rec, rgba)


def gt_frame_size(folder: str | Path) -> tuple[int, int]:
    """(W, H) of gt/<camera>/000.png, from the file's header (the frames are not read)."""
    from PIL import Image

    path = gt_frame_files(folder)[0]
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except OSError as e:
        raise InputError(f"{path}: unreadable gt frame ({type(e).__name__})") from None


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
