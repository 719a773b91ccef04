"""PoseAnything's MP-100 test protocol (1-shot PCK@0.2 per test category), for any keypoint predictor.

`dynapose4d eval-cape --mp100 ROOT --split K [--checkpoint F]` reads ROOT/annotations/mp100_split{K}_test.json
and the images under ROOT/images/, and reproduces the evaluation that PoseAnything's `test.py` runs (as its
data code and configs state it):

  * Instances. The file's images in order, each image's annotations in order; an annotation is kept when it
    has a box and keypoints, is not a crowd, its area (when given) is > 0, its box cleaned to the image
    (x1 = max(0, x), x2 = min(W - 1, x1 + max(0, w - 1)), likewise y; w' = x2 - x1, h' = y2 - y1) has
    w', h' > 0, its flat keypoint list is not all zero and its num_keypoints (when given) is not 0.
  * Episodes. Python's `random` seeded with 1; for every category in the file's order, 200 times: 16
    distinct instances of the category drawn with `random.sample` (1 support, then 15 queries), i.e. 3000
    query samples per category. A category with fewer than 16 instances cannot be drawn (the original stops
    with an error; so does this).
  * Crops. Centre (x1 + w'/2, y1 + h'/2); the shorter side raised to the longer one; side s = 1.25 x that,
    with PoseAnything's float32 arithmetic (scale = side / 200 x 1.25 in float32, s = 200 x scale). Each
    image is warped to 256 x 256 by x_in = (x - cx) 256 / s + 128 (pixel index = coordinate), bilinear,
    black (0) outside the image, rounded to 8 bits, then RGB / 255 and ImageNet mean/std. Keypoints use the
    same map.
  * Model input. The support's keypoints with their visibility; a keypoint also counts as absent when its
    7x7 patch on the 64 x 64 heatmap grid falls off the map (PoseAnything's target weight).
  * Decoding. Predictions in 256-px input coordinates are mapped back with x = x_in s / 256 + cx - s / 2.
  * PCK. Keypoints labelled (v > 0) in both the query and the support; correct when ||pred - gt|| (original
    pixels) / max(w', h') < 0.2 (strict). Per query sample, the fraction correct; a sample with no keypoint
    counted scores 0 (mmpose's `keypoint_pck_accuracy` returns 0 there). A category's PCK is the mean of its
    samples; the reported mean is the mean over all samples (every category has the same count, so it is
    also the mean of the categories).

Images are decoded and warped with OpenCV, as the original's mmcv pipeline does: `imdecode` with IMREAD_COLOR
(EXIF orientation applied, 8-bit BGR, then RGB), the crop matrix from three float32 point pairs
(`getAffineTransform`, mmpose's construction) and the bilinear warp of the original's OpenCV 4 (`warpAffine`,
INTER_LINEAR, constant 0 border: a 1/32-pixel fixed-point grid and 15-bit weights, reproduced through `cv2.remap`
so that a newer OpenCV, whose warpAffine samples at full precision, gives the same crops).

Running a predictor through it, the results table and `dynapose4d eval-cape`: `dynapose4d.cape.mp100_eval`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dynapose4d.cape.mp100 import MP100Annotation, MP100Set
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import IMAGENET_MEAN, IMAGENET_STD

INPUT_SIZE = 256  # crop side in pixels (PoseAnything's image_size)
HEATMAP_SIZE = 64  # the support heatmaps' side (stride 4), for the target-weight rule
BOX_PADDING = 1.25  # crop side / the box's longer side
PIXEL_STD = 200.0  # mmpose's scale unit
NUM_EPISODES = 200  # episodes per test category (PoseAnything's test config)
NUM_QUERIES = 15  # query samples per episode
NUM_SHOTS = 1  # supports per episode (the 1-shot benchmark)
EPISODE_SEED = 1  # `random.seed(1)` before drawing the test episodes
PCK_THRESHOLD = 0.2


# ------------------------------------------------------------------------------------------------ instances


@dataclass
class EvalInstance:
    """One kept annotation of the test file, with its crop geometry."""

    index: int  # position in the instance list (the original's object id)
    ann: MP100Annotation
    image_path: Path
    clean_bbox: tuple[float, float, float, float]  # x1, y1, w', h' (cleaned to the image)
    center: np.ndarray  # [2] float32, box centre in image pixels
    side: float  # float32 crop side s in image pixels (200 x scale)

    @property
    def visible(self) -> np.ndarray:
        return self.ann.keypoints[:, 2].numpy() > 0  # [N] labelled (v > 0)

    @property
    def norm(self) -> float:
        return float(max(self.clean_bbox[2], self.clean_bbox[3]))  # PCK normaliser max(w', h')


def clean_bbox(bbox: Sequence[float], width: float, height: float) -> tuple[float, float, float, float] | None:
    """A box [x, y, w, h] cleaned to lie inside a W x H image as the original does; None when it collapses."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 > x1 and y2 > y1:
        return (x1, y1, x2 - x1, y2 - y1)
    return None


def box_center_side(box: Sequence[float], padding: float = BOX_PADDING) -> tuple[np.ndarray, float]:
    """Centre [2] (float32) and crop side s (float32 arithmetic as mmpose: scale = longer side / 200 x 1.25,
    s = 200 x scale) of a cleaned box (x, y, w, h)."""
    x, y, w, h = box
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    longer = max(w, h)  # target aspect 1: the shorter side is raised to the longer one
    scale = np.array([longer / PIXEL_STD, longer / PIXEL_STD], dtype=np.float32) * np.float32(padding)
    return center, float((scale * np.float32(PIXEL_STD))[0])


def benchmark_instances(ds: MP100Set) -> tuple[list[EvalInstance], dict[int, list[int]]]:
    """The instances the original keeps, in its order, and category id -> instance indices (every category of
    the file, in the file's order, possibly empty)."""
    by_image: dict[int, list[MP100Annotation]] = {}
    for a in ds.annotations:
        by_image.setdefault(a.image_id, []).append(a)
    out: list[EvalInstance] = []
    cat2obj: dict[int, list[int]] = {cid: [] for cid in ds.categories}
    for image_id, im in ds.images.items():
        for a in by_image.get(image_id, []):
            if a.iscrowd or (a.area is not None and a.area <= 0):
                continue
            try:
                W, H = float(im["width"]), float(im["height"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{ds.path}: image {image_id} has no width/height") from None
            box = clean_bbox(a.bbox, W, H)
            if box is None or a.raw_keypoints_max == 0 or a.num_keypoints == 0:
                continue
            center, side = box_center_side(box)
            cat2obj[a.category_id].append(len(out))
            out.append(EvalInstance(len(out), a, ds.image_path(a), box, center, side))
    return out, cat2obj


@dataclass
class EvalEpisode:
    category_id: int
    supports: list[int]  # instance indices (NUM_SHOTS)
    queries: list[int]  # instance indices


def make_episodes(cat2obj: dict[int, list[int]], num_episodes: int = NUM_EPISODES, num_queries: int = NUM_QUERIES,
                  num_shots: int = NUM_SHOTS, seed: int = EPISODE_SEED, source: str = "") -> list[EvalEpisode]:
    """The test episodes as the original draws them: one `random.Random(seed)` stream, categories in order,
    `num_episodes` times `sample(instances, num_shots + num_queries)` each. Categories without instances are
    left out (they consume no random numbers); one with 1 .. num_shots + num_queries - 1 raises InputError."""
    rng = random.Random(seed)
    k = num_shots + num_queries
    eps = []
    for cid, objs in cat2obj.items():
        if not objs:
            continue
        if len(objs) < k:
            raise InputError(f"{source}category {cid}: {len(objs)} usable instances, an episode needs {k} "
                             f"({num_shots} support + {num_queries} queries)")
        for _ in range(num_episodes):
            shots = rng.sample(objs, k)
            eps.append(EvalEpisode(cid, shots[:num_shots], shots[num_shots:]))
    return eps


# ------------------------------------------------------------------------------------------------ crops


def to_input(points: torch.Tensor | np.ndarray, center: np.ndarray, side: float, size: int = INPUT_SIZE
             ) -> torch.Tensor:
    """Image pixels [..., 2] -> crop input coordinates [..., 2] (float64): (p - c) size / s + size / 2."""
    p = torch.as_tensor(np.asarray(points, dtype=np.float64))
    c = torch.as_tensor(center.astype(np.float64))
    return (p - c) * (size / side) + size / 2


def from_input(points: torch.Tensor, center: np.ndarray, side: float, size: int = INPUT_SIZE) -> torch.Tensor:
    """Crop input coordinates [..., 2] -> image pixels [..., 2] (float64): p s / size + c - s / 2."""
    c = torch.as_tensor(center.astype(np.float64))
    return points.double() * (side / size) + c - side / 2


def read_rgb_uint8(path: Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB, decoded as the original does (OpenCV, IMREAD_COLOR: EXIF orientation
    applied, grey or 16-bit files brought to 8-bit colour)."""
    import cv2

    try:
        data = np.fromfile(path, dtype=np.uint8)  # bytes, then imdecode: any path, unicode included
    except FileNotFoundError:
        raise InputError(f"{path}: MP-100 image not found") from None
    except OSError as e:
        raise InputError(f"{path}: unreadable image ({e})") from None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InputError(f"{path}: unreadable image (OpenCV cannot decode it)")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def crop_matrix(center: np.ndarray, side: float, size: int = INPUT_SIZE) -> np.ndarray:
    """The 2 x 3 affine map image pixels -> crop input coordinates, built as mmpose builds it (rotation 0): three
    float32 point pairs (the centre, the point s/2 above it, the point s/2 left of that) through OpenCV's
    `getAffineTransform`. Equal to (p - c) size / s + size / 2 up to float32 rounding of the points."""
    import cv2

    def three_points(c: np.ndarray, half: float) -> np.ndarray:
        pts = np.zeros((3, 2), dtype=np.float32)
        pts[0] = c
        pts[1] = c + np.array([0.0, -half], dtype=np.float32)  # up (image y grows downwards)
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], dtype=np.float32)  # d turned by 90 degrees: half to the left
        return pts

    src = three_points(np.asarray(center, dtype=np.float32), np.float32(side) * np.float32(0.5))
    dst = three_points(np.array([size * 0.5, size * 0.5], dtype=np.float32), np.float32(size) * np.float32(0.5))
    return cv2.getAffineTransform(src, dst)  # [2, 3] float64


def fixed_point_grid(m: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV 4's warpAffine sampling grid for an image -> crop map m [2, 3]: the inverse map's terms in 1/1024
    pixel (rounded half to even), summed, then to 1/32 pixel. Returns the integer source pixel [size, size, 2]
    int16 (x, y) and the 1/32-pixel fraction index [size, size] uint16 (32 y_frac + x_frac), the fixed-point
    maps `cv2.remap` takes."""
    a, b, c = (float(v) for v in m[0])
    d, e, f = (float(v) for v in m[1])
    det = a * e - b * d
    det = 1.0 / det if det != 0 else 0.0
    inv = np.array([[e * det, -b * det, 0.0], [-d * det, a * det, 0.0]])
    inv[0, 2] = -inv[0, 0] * c - inv[0, 1] * f
    inv[1, 2] = -inv[1, 0] * c - inv[1, 1] * f
    k = np.arange(size, dtype=np.float64)
    half_step = 1024 // 32 // 2  # rounding to the 1/32 grid

    def coord(row: np.ndarray) -> np.ndarray:  # [size (y), size (x)] in 1/32 pixel
        per_x = np.rint(row[0] * k * 1024).astype(np.int64)  # [size]
        per_y = np.rint((row[1] * k + row[2]) * 1024).astype(np.int64) + half_step  # [size]
        return (per_y[:, None] + per_x[None, :]) >> 5

    X, Y = coord(inv[0]), coord(inv[1])
    xy = np.stack([X >> 5, Y >> 5], -1).clip(-32768, 32767).astype(np.int16)  # [size, size, 2]
    frac = ((Y & 31) * 32 + (X & 31)).astype(np.uint16)  # [size, size]
    return xy, frac


def warp_crop(image: np.ndarray, center: np.ndarray, side: float, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 [H, W, 3] -> uint8 [3, size, size]: the image warped by `crop_matrix` as the original's OpenCV 4
    `warpAffine` (INTER_LINEAR, constant 0 border) does it: samples on its 1/32-pixel fixed-point grid, weights in
    15-bit fixed point (`cv2.remap` with fixed-point maps). OpenCV 5's own warpAffine samples at full precision
    instead, which differs by up to a few grey levels on fine texture."""
    import cv2

    xy, frac = fixed_point_grid(crop_matrix(center, side, size), size)
    out = cv2.remap(np.ascontiguousarray(image), xy, frac, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0)  # [size, size, 3]
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def normalize_crop(crop: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32 RGB / 255 with ImageNet mean/std (the model input)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (crop.float() / 255.0 - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of `normalize_crop`: ImageNet-normalised [..., 3, S, S] -> RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(3, 1, 1)
    return images * std + mean


def heatmap_weight(points_in: torch.Tensor, visible: torch.Tensor | np.ndarray, size: int = INPUT_SIZE,
                   heatmap: int = HEATMAP_SIZE) -> torch.Tensor:
    """PoseAnything's support target weight [N] bool: labelled and its 7x7 patch (sigma 1) around the rounded
    heatmap cell touches the heatmap grid. points_in [N, 2] input coordinates."""
    stride = size / heatmap
    out = []
    for (x, y), v in zip(points_in.tolist(), np.asarray(visible).tolist()):
        mx, my = int(x / stride + 0.5), int(y / stride + 0.5)  # int() truncates toward 0, as the original
        x0, y0 = mx - 3, my - 3
        inside = not (x0 >= heatmap or y0 >= heatmap or x0 + 7 < 0 or y0 + 7 < 0)
        out.append(bool(v) and inside)
    return torch.tensor(out, dtype=torch.bool)


def pck_sample(pred: torch.Tensor, gt: torch.Tensor, counted: torch.Tensor, norm: float,
               threshold: float = PCK_THRESHOLD) -> float:
    """One query sample's PCK: the fraction of `counted` keypoints with ||pred - gt|| / norm < threshold, in
    original pixels; 0 when none is counted or norm <= 0 (mmpose's keypoint_pck_accuracy). NaN predictions
    count as wrong."""
    if norm <= 0 or not bool(counted.any()):
        return 0.0
    err = (pred.double() - gt.double()).norm(dim=-1)[counted] / norm
    return float((err < threshold).double().mean())
