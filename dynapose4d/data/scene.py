"""Scene folder loading and validation (the contract users read: docs/scene-folder.md).

`load_scene(path)` reads a scene folder and returns a validated `Scene`, or raises `InputError` with a one-line
message that names the offending file and the problem. It never leaves anything behind (it writes nothing).

Files:
  image.png       RGBA: alpha is the object mask. RGB (or RGBA whose alpha is fully opaque): the background is
                  removed by border-colour estimation (`remove_background`, limits below).
  keypoints.json  {"keypoints": [[x, y] | [x, y, v], ...] pixels, "skeleton": [[i, j], ...], "names": [...]}.
                  "names" is optional (default kp00, kp01, ...). A third entry v is a visibility flag: v > 0 is
                  accepted, v = 0 (invisible) is an error, since the support keypoints must all be visible.
                  Optional: without it the keypoints and a tree skeleton are made from the mask's medial axis
                  (`dynapose4d.data.auto_keypoints`, kept in `Scene.auto_keypoints` so the run can write them).
  video/000.png … driving frames, sorted by the number in their names (png/jpg). Preferred over video.mp4 when
  video.mp4       both exist. RGB frames (and every mp4 frame) get the same background removal as image.png.
  camera.json     reference camera. Without it the default reference camera is used and the scene is recentred.
  views/          cameras.json + <name>.png (RGBA, or RGB with background removal), same size as image.png.
  gt/             checked here (cameras.json, a folder of 000.png … per camera, equal frame counts, and
                  keypoints3d.json of [T][N][3] with this scene's N and the gt frame count T), so that a broken
                  gt/ stops the run before training and not when a stage evaluates; its path is kept
                  (`Scene.gt_dir`); the stages and `dynapose4d eval` read it. An empty gt/ counts as none.

A picture alone (png/jpg, `load_scene(picture, video=...)`) is a scene with only image.png: no camera.json,
views/ or gt/ (recentred), video and keypoints only when passed (`video`: an mp4 or a folder of frames;
`keypoints`: a keypoints.json file, also accepted for a folder, where they replace the folder's own files).

Recentring (no camera.json, the DreamGaussian convention): image, keypoints and every video frame go through one
2D similarity (one bilinear resample, antialiased when shrinking; output size = input size) that puts the centre
of image.png's mask bounding box at the image centre and scales the box to fill 80% of the frame (of the tighter
of width and height). The scale is reduced when needed so that every keypoint and the mask boxes of all video
frames stay inside the frame. Parts of the frame that come from outside the input are transparent. A scene with
camera.json is used exactly as given (so views/ and gt/ stay aligned with it); views/ or gt/ without camera.json
is an error, because recentring would misalign them. The similarity is kept (`Scene.recentring`) so that 2D
outputs can be written back in the pixels of the scene's own files.

Background removal for images without alpha, and its limits (`remove_background`):
  the background colour is the median of the image's border pixels (a ring of ~1.5% of the size, >= 1 px);
  a pixel is object when its RGB Euclidean distance to that colour exceeds `threshold` (0.1 on [0, 1] RGB);
  the mask is cleaned: components smaller than 10% of the largest are dropped (noise, stray specks), and
  enclosed background holes smaller than 0.5% of the object area are filled.
  It needs a uniform background: if fewer than 90% of the border pixels are within `threshold` of the median
  colour (gradients, textures, real photographs, an object covering much of the border) it refuses with
  "no alpha and the background is not a uniform colour: provide an RGBA image". It cannot separate object
  parts whose colour is within `threshold` of the background (a white shirt on white): those become holes,
  or are cut off where they touch the outside; large enclosed background-coloured regions stay transparent.
  Shadows count as object when they differ enough. Alpha is binary except on the mask's 1-px edge, where it is
  unmixed against the colour of the neighbouring interior (`_soft_edges`); thin parts without interior pixels
  and textured edges get alpha 1, and alpha below ~threshold / |object - background| is cut to 0.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dynapose4d.core.cameras import REFERENCE_CAMERA, Camera, load_camera, load_cameras
from dynapose4d.core.errors import InputError
from dynapose4d.core.io import read_image, read_video
from dynapose4d.data.auto_keypoints import AutoKeypoints, auto_keypoints
from dynapose4d.evaluation.gt import gt_frame_files, load_gt

FILL = 0.8  # recentring: the mask bounding box fills this fraction of the frame (DreamGaussian's 1 - border 0.2)
BG_THRESHOLD = 0.1  # background removal: RGB distance to the border colour above which a pixel is object
BORDER_UNIFORM = 0.9  # background removal: fraction of border pixels that must match the border colour
MIN_SIZE = 8  # smallest accepted image side, pixels
AUTO_MIN_GAP = 0.035  # automatic keypoints of a scene with camera.json: least spacing, x the image's longer side
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Recentring:
    """The 2D similarity of recentring (`recentring_of`, `apply_recentring`): a scene-file pixel q maps to the
    pipeline pixel p = (q - centre) * scale + size / 2 (pixel centres at +0.5 in both)."""

    scale: float
    centre: tuple[float, float]  # (cx, cy): the scene-file point that lands on the frame centre, pixels
    size: tuple[int, int]  # (W, H) of the frame (equal before and after)

    def _centre_and_half(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.tensor(self.centre, dtype=x.dtype, device=x.device)
        return c, torch.tensor(self.size, dtype=x.dtype, device=x.device) / 2.0

    def from_scene(self, q: torch.Tensor) -> torch.Tensor:
        """Scene-file pixels [..., 2] -> pipeline pixels [..., 2]."""
        c, half = self._centre_and_half(q)
        return (q - c) * self.scale + half

    def to_scene(self, p: torch.Tensor) -> torch.Tensor:
        """Pipeline pixels [..., 2] -> scene-file pixels [..., 2] (the inverse of `from_scene`)."""
        c, half = self._centre_and_half(p)
        return (p - half) / self.scale + c


@dataclass
class Scene:
    """A validated scene. Images are float32 in [0, 1], RGBA with straight (not premultiplied) colour."""

    root: Path
    image: torch.Tensor  # [H, W, 4] RGBA; alpha = object mask
    keypoints: torch.Tensor  # [N, 2] pixels on image (pixel centres at +0.5)
    skeleton: list[tuple[int, int]]  # 0-based keypoint index pairs
    names: list[str]  # N keypoint names ("kp00".. when not given)
    camera: Camera  # reference camera (camera.json, or the default reference camera)
    has_camera_json: bool  # False: the scene was recentred/rescaled (object ~80% of the frame)
    video: torch.Tensor | None = None  # [T, H, W, 4] driving frames, RGBA (background removed), or None
    views: list[tuple[Camera, torch.Tensor]] = field(default_factory=list)  # (camera, [H, W, 4]) extra views
    gt_dir: Path | None = None  # scene/gt when present (eval only)
    recentring: Recentring | None = None  # the transform applied to the scene files (None: used as given)
    image_path: Path | None = None  # the image file read (root/image.png, or the picture given alone)
    keypoints_path: Path | None = None  # the keypoints file read; None when the keypoints are automatic
    auto_keypoints: AutoKeypoints | None = None  # automatic keypoints in the image file's pixels (no keypoints file)
    gt_keypoints: bool = False  # gt/keypoints3d.json holds this scene's keypoints (False for automatic keypoints)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_keypoints(self) -> int:
        return int(self.keypoints.shape[0])


# ------------------------------------------------------------------------------------------------ public


def load_scene(path: str | Path, video: str | Path | None = None, keypoints: str | Path | None = None) -> Scene:
    """Load and validate the scene folder at `path` (docs/scene-folder.md), or a picture (png/jpg) given alone. Raises
    `InputError` (one line, naming the file) on any bad input; see the module docstring for the files,
    recentring and background removal.

    `video` (an mp4, or a folder of numbered frames) replaces the folder's video/ or video.mp4; `keypoints` (a
    file in keypoints.json's format) replaces its keypoints.json. Without either keypoints file the keypoints
    and skeleton are made from the mask (`dynapose4d.data.auto_keypoints`) and kept in `Scene.auto_keypoints`."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root}: scene folder or picture not found")
    picture = root.is_file()
    if picture:
        if root.suffix.lower() not in _IMAGE_SUFFIXES:
            raise InputError(f"{root}: not a picture (png/jpg) nor a scene folder (a folder with image.png)")
        image_path, root = root, root.parent
    elif not root.is_dir():
        raise InputError(f"{root}: a scene must be a folder (with image.png) or a picture (png/jpg)")
    else:
        image_path = root / "image.png"
        if not image_path.is_file():
            raise InputError(f"{image_path}: file not found (a scene needs image.png)")
    image = _read_rgba(image_path)  # [H, W, 4]
    H, W = image.shape[:2]
    if H < MIN_SIZE or W < MIN_SIZE:
        raise InputError(f"{image_path}: image is {W}x{H} pixels; at least {MIN_SIZE}x{MIN_SIZE} is needed")
    has_camera = not picture and (root / "camera.json").exists()
    kp_path = Path(keypoints) if keypoints is not None else (None if picture else root / "keypoints.json")
    auto = None
    if kp_path is not None and (keypoints is not None or kp_path.exists()):
        kps, skeleton, names = _read_keypoints(kp_path, W, H, image_path.name)
    else:
        auto = _auto_keypoints(image, image_path, has_camera)
        kps, skeleton, names = torch.tensor(auto.keypoints, dtype=torch.float32), list(auto.skeleton), list(auto.names)
    if video is not None:
        vid = _read_video_path(Path(video), H, W, image_path.name)
    else:
        vid = None if picture else _read_video(root, H, W)

    camera = load_camera(root / "camera.json") if has_camera else REFERENCE_CAMERA
    views_dir, gt_dir = root / "views", root / "gt"
    if not has_camera and not picture:
        for d, what in ((views_dir, "views/"), (gt_dir, "gt/")):
            if d.exists():
                raise InputError(f"{d}: {what} needs camera.json (the reference camera it is aligned with); "
                                 "without it the scene is recentred and would no longer match")
    views = _read_views(views_dir, H, W) if not picture and views_dir.exists() else []
    # an empty gt/ counts as none
    has_gt = not picture and gt_dir.exists() and (not gt_dir.is_dir() or any(gt_dir.iterdir()))
    gt_keypoints = False
    if has_gt:  # automatic keypoints are not the gt's: their tracks are not compared with gt/keypoints3d.json
        gt_keypoints = _check_gt(gt_dir, int(kps.shape[0]), check_keypoints=auto is None)  # False for auto

    recentring = None
    if not has_camera:
        recentring = recentring_of(image, kps, vid, fill=FILL)
        image, kps, vid = apply_recentring(recentring, image, kps, vid)
    return Scene(
        root=root, image=image.contiguous(), keypoints=kps, skeleton=skeleton, names=names, camera=camera,
        has_camera_json=has_camera, video=None if vid is None else vid.contiguous(), views=views,
        gt_dir=gt_dir if has_gt else None, recentring=recentring, image_path=image_path,
        keypoints_path=None if auto is not None else kp_path, auto_keypoints=auto, gt_keypoints=gt_keypoints,
    )


def _auto_keypoints(image: torch.Tensor, image_path: Path, has_camera: bool) -> AutoKeypoints:
    """Keypoints from the mask of `image` [H, W, 4] (pixels of the file); a mask without enough object is an
    InputError naming the file. Their spacing keeps them apart by the cape stage's coincidence distance: a
    recentred image (no camera.json) scales the object to 80% of the frame, which the default spacing (4% of the
    object's size) allows for; used as given, they are kept 3.5% of the image's longer side apart."""
    try:
        gap = AUTO_MIN_GAP * max(image.shape[0], image.shape[1]) if has_camera else 0.0
        return auto_keypoints(image[..., 3].numpy() > 0.5, min_gap=gap)
    except ValueError as e:
        raise InputError(f"{image_path}: no keypoints.json, and automatic keypoints failed: {e}") from None


def remove_background(rgb: torch.Tensor, threshold: float = BG_THRESHOLD, uniform: float = BORDER_UNIFORM
                      ) -> torch.Tensor | None:
    """RGBA [H, W, 4] of an RGB image [H, W, 3] on a uniform background, or None when the border is not uniform
    enough to estimate the background colour (see the module docstring for the method and its limits)."""
    img = rgb.detach().float().cpu()[..., :3]
    H, W = img.shape[:2]
    b = max(1, round(0.015 * min(H, W)))
    ring = torch.ones(H, W, dtype=torch.bool)
    ring[b:H - b, b:W - b] = False
    border = img[ring]  # [P, 3]
    bg = border.median(dim=0).values  # [3]
    if (border - bg).norm(dim=-1).le(threshold).float().mean().item() < uniform:
        return None
    mask = torch.from_numpy(clean_mask(((img - bg).norm(dim=-1) > threshold).numpy()))  # [H, W] bool
    return _soft_edges(img, bg, mask, threshold)


def _soft_edges(img: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fractional alpha on the mask's edge pixels: with F the colour of the nearest interior pixels (those whose
    8 neighbours are all in the mask), an edge pixel I = a F + (1 - a) bg gives a = (I - bg).(F - bg) / |F - bg|^2,
    and its straight colour becomes F. Edge pixels with no interior nearby, or F too close to bg, keep alpha 1."""
    m = mask.float()[None, None]  # [1, 1, H, W]
    interior = (-F.max_pool2d(-m, 3, stride=1, padding=1))[0, 0] > 0.5  # eroded mask [H, W]
    edge = mask & ~interior
    alpha = mask.float()
    colour = img.clone()
    if not edge.any() or not interior.any():
        return torch.cat([colour, alpha[..., None]], -1)
    fg = torch.zeros_like(img)  # [H, W, 3] estimated object colour of edge pixels
    have = torch.zeros_like(mask)  # edge pixels with an estimate
    for _ in range(2):  # spread interior colours 2 px outwards (normalised 3x3 average of known colours)
        known = (interior | have).float()  # [H, W]
        field = torch.where(interior[..., None], img, fg) * known[..., None]  # [H, W, 3]
        cnt = F.avg_pool2d(known[None, None], 3, stride=1, padding=1)[0, 0]
        avg = F.avg_pool2d(field.permute(2, 0, 1)[None], 3, stride=1, padding=1)[0].permute(1, 2, 0)
        new = edge & ~have & (cnt > 0)
        fg[new] = (avg / cnt.clamp(min=1e-8)[..., None])[new]
        have = have | new
    d = fg - bg  # [H, W, 3]
    ok = have & (d.norm(dim=-1) > threshold)
    a = ((img - bg) * d).sum(-1) / d.pow(2).sum(-1).clamp(min=1e-8)
    alpha[ok] = a[ok].clamp(0.0, 1.0)
    colour[ok] = fg[ok]
    return torch.cat([colour, alpha[..., None]], -1)


def clean_mask(mask: np.ndarray, keep_ratio: float = 0.1, hole_ratio: float = 0.005) -> np.ndarray:
    """Drop 8-connected components smaller than `keep_ratio` x the largest, then fill enclosed (4-connected)
    background holes smaller than `hole_ratio` x the object area (at least 4 px). [H, W] bool -> [H, W] bool."""
    labels, sizes = connected_components(mask, diagonal=True)
    if len(sizes) <= 1:
        return mask.copy()
    keep = sizes >= keep_ratio * sizes[1:].max()
    keep[0] = False
    out = keep[labels]
    bg_labels, bg_sizes = connected_components(~out, diagonal=False)
    edge = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
    fill = bg_sizes <= max(4.0, hole_ratio * out.sum())
    fill[0] = False
    fill[edge] = False
    return out | fill[bg_labels]


def connected_components(mask: np.ndarray, diagonal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of a bool mask [H, W] (8-connected if `diagonal`, else 4-connected).

    Returns labels [H, W] int64 (0 outside the mask, 1..K inside) and sizes [K + 1] (sizes[0] = 0). Run-length
    union-find in plain numpy + Python: the cost grows with the number of horizontal runs, not of pixels."""
    mask = np.asarray(mask, dtype=bool)
    H, W = mask.shape
    padded = np.zeros((H, W + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)  # +1 at a run start, -1 one past its end
    rows_s, cols_s = np.nonzero(d == 1)
    _, cols_e = np.nonzero(d == -1)  # same row-major order as the starts
    n = len(rows_s)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    slack = 1 if diagonal else 0
    row_first = np.searchsorted(rows_s, np.arange(H + 1))  # runs of row r: row_first[r] .. row_first[r+1]
    for r in range(1, H):
        a, a_end = int(row_first[r - 1]), int(row_first[r])
        b, b_end = a_end, int(row_first[r + 1])
        while a < a_end and b < b_end:
            if cols_s[a] < cols_e[b] + slack and cols_s[b] < cols_e[a] + slack:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if cols_e[a] < cols_e[b]:
                a += 1
            else:
                b += 1
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    uniq, run_label = np.unique(roots, return_inverse=True)
    labels = np.zeros((H, W), dtype=np.int64)
    lengths = cols_e - cols_s
    run_label = run_label.reshape(-1) + 1
    for i in range(n):
        labels[rows_s[i], cols_s[i]:cols_e[i]] = run_label[i]
    sizes = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.add.at(sizes, run_label, lengths)
    return labels, sizes


def recentring_of(image: torch.Tensor, keypoints: torch.Tensor, video: torch.Tensor | None = None,
                  fill: float = FILL) -> Recentring | None:
    """The similarity that moves the mask bounding box of `image` [H, W, 4] to the frame centre, scaled to fill
    `fill` of the frame, shrunk if needed to keep all `keypoints` [N, 2] (pixels) and the mask boxes of `video`
    [T, H, W, 4] inside the frame. None when it is the identity."""
    H, W = image.shape[:2]
    box = _bbox(image[..., 3] > 0.5)
    if box is None:
        raise ValueError("recentring_of: the image mask is empty")
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    s = min(fill * W / (x1 - x0), fill * H / (y1 - y0))
    # points that must stay in the frame: keypoints and the corners of every video frame's mask box
    pts = [keypoints.double()]
    if video is not None:
        for t in range(video.shape[0]):
            vb = _bbox(video[t, ..., 3] > 0.5)
            if vb is not None:
                pts.append(torch.tensor([[vb[0], vb[1]], [vb[2], vb[3]]], dtype=torch.float64))
    allp = torch.cat(pts)
    ex, ey = (allp[:, 0] - cx).abs().max().item(), (allp[:, 1] - cy).abs().max().item()
    if ex > 0:
        s = min(s, 0.98 * (W / 2.0) / ex)
    if ey > 0:
        s = min(s, 0.98 * (H / 2.0) / ey)
    if abs(s - 1.0) < 1e-9 and cx == W / 2.0 and cy == H / 2.0:
        return None
    return Recentring(scale=float(s), centre=(float(cx), float(cy)), size=(int(W), int(H)))


def apply_recentring(rec: Recentring | None, image: torch.Tensor, keypoints: torch.Tensor,
                     video: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`image` [H, W, 4], `keypoints` [N, 2] and `video` [T, H, W, 4] moved by `rec` (returned as given when None):
    one bilinear resample, antialiased when shrinking."""
    if rec is None:
        return image, keypoints, video
    H, W = image.shape[:2]
    s, (cx, cy) = rec.scale, rec.centre
    # output pixel x' shows source x = (x' - W / 2) / s + cx (likewise y): one exact similarity for everything
    kp = rec.from_scene(keypoints.double())

    frames = image[None] if video is None else torch.cat([image[None], video])  # [B = 1 + T, H, W, 4]
    x = frames.permute(0, 3, 1, 2).float()  # [B, 4, H, W]
    x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], dim=1)  # premultiplied, so edges do not blend with black
    if s < 1.0:  # shrinking: low-pass first (antialiased resize); grid_sample's normalised coords are unchanged
        x = F.interpolate(x, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear",
                          align_corners=False, antialias=True)
    xs = ((torch.arange(W, dtype=torch.float64) + 0.5 - W / 2.0) / s + cx) * (2.0 / W) - 1.0  # [W]
    ys = ((torch.arange(H, dtype=torch.float64) + 0.5 - H / 2.0) / s + cy) * (2.0 / H) - 1.0  # [H]
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).float()  # [H, W, 2] (x, y) in [-1, 1]
    x = F.grid_sample(x, grid.expand(x.shape[0], H, W, 2), mode="bilinear", padding_mode="zeros",
                      align_corners=False)  # zeros outside = transparent
    a = x[:, 3:].clamp(0.0, 1.0)
    rgb = torch.where(a > 1e-6, x[:, :3] / a.clamp(min=1e-6), torch.zeros_like(x[:, :3])).clamp(0.0, 1.0)
    out = torch.cat([rgb, a], 1).permute(0, 2, 3, 1).contiguous()  # [B, H, W, 4]
    return out[0], kp.to(keypoints.dtype), (None if video is None else out[1:])


# ------------------------------------------------------------------------------------------------ helpers


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixel-edge bounding box (x1, y1 exclusive) of a bool mask [H, W], None if empty."""
    ys = torch.nonzero(mask.any(dim=1)).flatten()
    xs = torch.nonzero(mask.any(dim=0)).flatten()
    if len(ys) == 0:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _to_rgba(img: torch.Tensor, path: Path | str) -> torch.Tensor:
    """[H, W, 3|4] -> [H, W, 4]: alpha kept when it is not fully opaque, else background removal."""
    if img.shape[-1] == 4 and img[..., 3].min().item() < 1.0:
        if img[..., 3].max().item() <= 0.0:
            raise InputError(f"{path}: the alpha channel is empty (fully transparent): no object to use")
        return img.float()
    out = remove_background(img[..., :3])
    if out is None:
        kind = "alpha is fully opaque" if img.shape[-1] == 4 else "no alpha"
        raise InputError(f"{path}: {kind} and the background is not a uniform colour: provide an RGBA image")
    frac = (out[..., 3] > 0.5).float().mean().item()
    if frac == 0.0:
        raise InputError(f"{path}: no alpha and no object found on the uniform background: provide an RGBA image")
    if frac > 0.95:
        raise InputError(f"{path}: no alpha and the background colour covers almost nothing "
                         f"({100 * (1 - frac):.1f}% of the image): provide an RGBA image")
    return out


def _read_rgba(path: Path) -> torch.Tensor:
    return _to_rgba(read_image(path), path)


def _read_json(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: unreadable file ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_keypoints(path: Path, W: int, H: int, image_name: str = "image.png"
                    ) -> tuple[torch.Tensor, list[tuple[int, int]], list[str]]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with 'keypoints' and 'skeleton', got {type(data).__name__}")
    if "keypoints" not in data:
        raise InputError(f"{path}: missing 'keypoints' (a list of [x, y] pixel positions on {image_name})")
    kps = data["keypoints"]
    if not isinstance(kps, list) or len(kps) == 0:
        raise InputError(f"{path}: 'keypoints' must be a non-empty list of [x, y] pixel positions")
    pts = []
    for i, p in enumerate(kps):
        if not isinstance(p, list) or len(p) not in (2, 3) or not all(_is_number(v) for v in p):
            raise InputError(f"{path}: keypoint {i} must be [x, y] or [x, y, v] numbers, got {json.dumps(p)[:60]}")
        if not all(math.isfinite(v) for v in p):
            raise InputError(f"{path}: keypoint {i} is not finite: {p}")
        if len(p) == 3 and p[2] <= 0:
            raise InputError(f"{path}: keypoint {i} has visibility v={p[2]}; the support keypoints must all be "
                             f"visible on {image_name} (remove it, or give it v > 0)")
        x, y = float(p[0]), float(p[1])
        if not (0.0 <= x <= W and 0.0 <= y <= H):
            raise InputError(f"{path}: keypoint {i} at ({x:g}, {y:g}) is outside {image_name} ({W}x{H} pixels)")
        pts.append((x, y))
    N = len(pts)
    if "skeleton" not in data:
        raise InputError(f"{path}: missing 'skeleton' (a list of [i, j] keypoint index pairs; [] for none)")
    sk = data["skeleton"]
    if not isinstance(sk, list):
        raise InputError(f"{path}: 'skeleton' must be a list of [i, j] keypoint index pairs")
    skeleton: list[tuple[int, int]] = []
    for k, e in enumerate(sk):
        if (not isinstance(e, list) or len(e) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in e)):
            raise InputError(f"{path}: skeleton edge {k} must be a pair of integer indices, got {json.dumps(e)[:60]}")
        i, j = e
        if not (0 <= i < N and 0 <= j < N):
            raise InputError(f"{path}: skeleton edge {k} {e} has an index out of range (there are {N} keypoints, "
                             f"indices 0..{N - 1})")
        if i == j:
            raise InputError(f"{path}: skeleton edge {k} {e} connects keypoint {i} to itself")
        skeleton.append((i, j))
    names = data.get("names")
    if names is None:
        names = [f"kp{i:02d}" for i in range(N)]
    elif not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise InputError(f"{path}: 'names' must be a list of strings")
    elif len(names) != N:
        raise InputError(f"{path}: 'names' has {len(names)} entries but there are {N} keypoints")
    elif len(set(names)) != N:
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{path}: keypoint names must be unique, repeated: {dup}")
    return torch.tensor(pts, dtype=torch.float32), skeleton, list(names)


def _frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES]
    numbered: dict[int, Path] = {}
    for p in files:
        m = re.fullmatch(r"\D*?(\d+)", p.stem)
        if m is None:
            raise InputError(f"{p}: video frame names must be numbered (000.png, 001.png, ...)")
        k = int(m.group(1))
        if k in numbered:
            raise InputError(f"{p}: frame number {k} is given twice (also {numbered[k].name})")
        numbered[k] = p
    return [numbered[k] for k in sorted(numbered)]


def _read_video(root: Path, H: int, W: int) -> torch.Tensor | None:
    """A scene folder's video/ (preferred) or video.mp4, or None."""
    folder, mp4 = root / "video", root / "video.mp4"
    if folder.exists():
        return _read_video_path(folder, H, W)
    if mp4.exists():
        return _read_video_path(mp4, H, W)
    return None


def _read_video_path(path: Path, H: int, W: int, image_name: str = "image.png") -> torch.Tensor:
    """Frames RGBA [T, H, W, 4] of a folder of numbered frames or of an mp4 file, each the image's size."""
    if not path.exists():
        raise InputError(f"{path}: video not found (an mp4 file or a folder of frames 000.png, 001.png, ...)")
    if path.is_dir():
        files = _frame_files(path)
        if not files:
            raise InputError(f"{path}: the video has 0 frames (no 000.png, 001.png, ...)")
        frames = []
        first: tuple[int, int] | None = None
        for f in files:
            img = read_image(f)
            size = tuple(img.shape[:2])
            if first is None:
                first = size  # type: ignore[assignment]
            elif size != first:
                raise InputError(f"{f}: video frames of different sizes: {size[1]}x{size[0]}, "
                                 f"but {files[0].name} is {first[1]}x{first[0]}")
            if size != (H, W):
                raise InputError(f"{f}: video frame is {size[1]}x{size[0]} but {image_name} is {W}x{H}")
            frames.append(_to_rgba(img, f))
        return torch.stack(frames)  # [T, H, W, 4]
    if path.name == "video" and not path.suffix:
        raise InputError(f"{path}: expected a folder of frames (000.png, 001.png, ...)")
    vid = read_video(path)  # [T, H, W, 3]; InputError when unreadable or 0 frames
    if tuple(vid.shape[1:3]) != (H, W):
        raise InputError(f"{path}: video frames are {vid.shape[2]}x{vid.shape[1]} but {image_name} is {W}x{H}")
    return torch.stack([_to_rgba(vid[t], f"{path} (frame {t})") for t in range(vid.shape[0])])


def _read_views(folder: Path, H: int, W: int) -> list[tuple[Camera, torch.Tensor]]:
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder with cameras.json and one <name>.png per camera")
    cams = load_cameras(folder / "cameras.json")
    views = []
    for cam in cams:
        p = folder / f"{cam.name}.png"
        if not p.is_file():
            raise InputError(f"{p}: file not found (views/cameras.json lists camera '{cam.name}')")
        img = _read_rgba(p)
        if tuple(img.shape[:2]) != (H, W):
            raise InputError(f"{p}: view is {img.shape[1]}x{img.shape[0]} but image.png is {W}x{H}")
        views.append((cam, img))
    return views


def _check_gt(folder: Path, num_keypoints: int, check_keypoints: bool = True) -> bool:
    """Validate a gt/ folder's structure without reading its images (see the module docstring). Returns whether
    gt/keypoints3d.json exists and holds the scene's keypoints: with `check_keypoints` a count other than
    `num_keypoints` is an error; without (automatic keypoints, which are not the gt's) it is False."""
    if not folder.is_dir():
        raise InputError(f"{folder}: expected a folder with cameras.json and one folder of frames per camera")
    gt = load_gt(folder)
    counts = {cam.name: len(gt_frame_files(folder / cam.name)) for cam in gt.cameras}
    if len(set(counts.values())) > 1:
        raise InputError(f"{folder}: gt cameras have different frame counts {counts}")
    kp = gt.keypoints3d
    if kp is None:
        return False
    T = next(iter(counts.values()))
    if kp.shape[0] != T or (check_keypoints and kp.shape[1] != num_keypoints):
        raise InputError(f"{folder / 'keypoints3d.json'}: {kp.shape[0]} frames of {kp.shape[1]} keypoints, but the "
                         f"gt cameras have {T} frames and keypoints.json has {num_keypoints} keypoints")
    return check_keypoints
