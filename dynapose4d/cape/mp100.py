"""MP-100 format: COCO-style keypoint JSON with per-category skeletons, its 5 category splits, episodes, PCK.

A file (`mp100_split{k}_{train,val,test}.json`, k = 1..5; the splits divide the 100 categories into disjoint
train / val / test sets) holds
  images:      [{"id", "file_name", "width", "height"}, ...]
  annotations: [{"id", "image_id", "category_id", "keypoints": [x, y, v] * N, "bbox": [x, y, w, h],
                 "num_keypoints"}, ...]   (v > 0 = labelled)
  categories:  [{"id", "name", "keypoints": [names], "skeleton": [[i, j], ...]}, ...]
Skeleton indices come in either convention: the original MP-100 files are COCO-style 1-based, PoseAnything's
updated files (the ones its models read, indexing keypoints with them directly) are 0-based. The convention is
detected per file (`skeleton_base`) and skeletons are held 0-based here. An episode is a support and a query
annotation of the same category; the benchmark's PCK@0.2 counts the keypoints labelled in both, correct when
||pred - gt|| / max(w, h) of the query box < 0.2. The exact test protocol (PoseAnything's: cleaned boxes,
256-px crops, fixed episodes) is `dynapose4d.cape.mp100_protocol`; `EpisodeSampler` / `mp100_pck` here are the
light training-time versions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dynapose4d.core import seeding
from dynapose4d.core.errors import InputError
from dynapose4d.core.io import read_image

SUBSETS = ("train", "val", "test")


@dataclass
class MP100Category:
    id: int
    name: str
    keypoints: list[str]  # keypoint names (N)
    skeleton: list[tuple[int, int]]  # 0-based pairs


@dataclass
class MP100Annotation:
    id: int
    image_id: int
    category_id: int
    keypoints: torch.Tensor  # [N, 3]: x, y (pixels), v (> 0 labelled)
    bbox: tuple[float, float, float, float]  # x, y, w, h
    area: float | None = None  # the file's "area" (None when absent)
    num_keypoints: int | None = None  # the file's "num_keypoints" (None when absent)
    iscrowd: bool = False  # the file's "iscrowd" (absent = False)
    raw_keypoints_max: float = 1.0  # max over the file's flat [x, y, v] list (0 = an empty annotation)

    @property
    def visible(self) -> torch.Tensor:
        return self.keypoints[:, 2] > 0  # [N]


@dataclass
class MP100Set:
    """One MP-100-format file: images, annotations and categories (skeletons 0-based)."""

    path: Path
    image_root: Path
    images: dict[int, dict[str, Any]]
    annotations: list[MP100Annotation]
    categories: dict[int, MP100Category]  # in the file's order
    by_category: dict[int, list[int]] = field(default_factory=dict)  # category id -> annotation indices
    skeleton_base: int = 0  # the file's skeleton index convention (0 or 1), see `detect_skeleton_base`
    dropped_edges: list[str] = field(default_factory=list)  # "category: [i, j]" left out by `drop_bad_edges`

    def image_path(self, ann: MP100Annotation) -> Path:
        return self.image_root / self.images[ann.image_id]["file_name"]


def _fail(path: Path, msg: str) -> InputError:
    return InputError(f"{path}: {msg}")


def detect_skeleton_base(categories: list[dict[str, Any]]) -> int:
    """The skeleton index convention of a whole file: 0 or 1.

    A 1-based file never holds index 0 and may hold N (a category's keypoint count); a 0-based file never holds
    N. So: any 0 -> 0-based; else any index equal to its category's N -> 1-based; else (every index in 1..N-1,
    valid either way) 0-based, the convention of PoseAnything's updated annotation files that the benchmark's
    models read. A file holding both 0 and some N is caught by the range check of the caller."""
    has_zero = has_n = False
    for c in categories:
        n = len(c.get("keypoints", []) or [])
        for e in c.get("skeleton", []) or []:
            for v in e:
                has_zero |= int(v) == 0
                has_n |= int(v) == n
    return 0 if has_zero or not has_n else 1


def load_mp100(path: str | Path, image_root: str | Path | None = None, drop_bad_edges: bool = False,
               skeleton_base: int | None = None) -> MP100Set:
    """Read an MP-100-format JSON file. `image_root` (default: the file's folder, or its parent's images/ when
    the file sits in annotations/) is where `file_name`s are looked up. Skeletons are read in the file's own
    convention (`detect_skeleton_base`, or `skeleton_base` 0 / 1 when given) and held 0-based. An edge out of
    range raises InputError, or with
    `drop_bad_edges` is left out (what PoseAnything's model does in effect: such an index lands on a padded,
    masked keypoint slot). Annotations without "bbox" or "keypoints" are skipped (as COCO tools skip them).
    InputError naming the file when bad."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "MP-100 annotation file not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise _fail(path, "not an MP-100/COCO keypoint file (top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if key not in data or not isinstance(data[key], list):
            raise _fail(path, f"missing list '{key}' (not an MP-100/COCO keypoint file)")
    if image_root is None:
        image_root = path.parent.parent / "images" if path.parent.name == "annotations" else path.parent
    try:
        base = detect_skeleton_base(data["categories"]) if skeleton_base is None else int(skeleton_base)
    except (TypeError, ValueError, AttributeError) as e:
        raise _fail(path, f"malformed category skeleton ({e})") from None
    if base not in (0, 1):
        raise _fail(path, f"skeleton_base must be 0 or 1, got {base}")
    cats: dict[int, MP100Category] = {}
    dropped: list[str] = []
    for c in data["categories"]:
        names = list(c.get("keypoints", []))
        n = len(names)
        sk = []
        for e in c.get("skeleton", []) or []:
            i, j = int(e[0]) - base, int(e[1]) - base
            if not (0 <= i < n and 0 <= j < n):
                if drop_bad_edges:
                    dropped.append(f"{c.get('name')}: {list(e)}")
                    continue
                raise _fail(path, f"category {c.get('name')!r}: skeleton edge {e} out of range for {n} keypoints "
                                  f"(the file's skeletons read as {base}-based; MP-100 files are 0-based or "
                                  "1-based throughout)")
            sk.append((i, j))
        cats[int(c["id"])] = MP100Category(int(c["id"]), str(c.get("name", c["id"])), names, sk)
    images = {int(im["id"]): im for im in data["images"]}
    anns: list[MP100Annotation] = []
    by_cat: dict[int, list[int]] = {}
    for a in data["annotations"]:
        if "bbox" not in a or "keypoints" not in a:
            continue
        cid = int(a["category_id"])
        if cid not in cats:
            raise _fail(path, f"annotation {a.get('id')}: unknown category_id {cid}")
        if int(a["image_id"]) not in images:
            raise _fail(path, f"annotation {a.get('id')}: unknown image_id {a['image_id']}")
        kp = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(-1, 3)
        if kp.shape[0] != len(cats[cid].keypoints):
            raise _fail(path, f"annotation {a.get('id')}: {kp.shape[0]} keypoints, category {cats[cid].name!r} "
                              f"has {len(cats[cid].keypoints)}")
        bbox = tuple(float(v) for v in a["bbox"])
        if len(bbox) != 4:
            raise _fail(path, f"annotation {a.get('id')}: bbox must be [x, y, w, h]")
        anns.append(MP100Annotation(
            int(a["id"]), int(a["image_id"]), cid, kp, bbox,  # type: ignore[arg-type]
            area=float(a["area"]) if a.get("area") is not None else None,
            num_keypoints=int(a["num_keypoints"]) if a.get("num_keypoints") is not None else None,
            iscrowd=bool(a.get("iscrowd", 0)),
            raw_keypoints_max=float(max(a["keypoints"])) if len(a["keypoints"]) else 0.0))
        if bool((kp[:, 2] > 0).any()):
            by_cat.setdefault(cid, []).append(len(anns) - 1)
    return MP100Set(path, Path(image_root), images, anns, cats, by_cat, base, dropped)


def split_path(root: str | Path, split: int, subset: str) -> Path:
    """Path of `mp100_split{split}_{subset}.json` under root/annotations/ (or root/)."""
    if split not in (1, 2, 3, 4, 5):
        raise InputError(f"MP-100 split must be 1..5, got {split}")
    if subset not in SUBSETS:
        raise InputError(f"MP-100 subset must be one of {SUBSETS}, got {subset!r}")
    root = Path(root)
    name = f"mp100_split{split}_{subset}.json"
    for cand in (root / "annotations" / name, root / name):
        if cand.is_file():
            return cand
    raise InputError(f"{root / 'annotations' / name}: MP-100 split file not found")


def load_split(root: str | Path, split: int, subset: str, drop_bad_edges: bool = False,
               skeleton_base: int | None = None) -> MP100Set:
    """One of the 5 splits' train / val / test files (images under root/images/ or root/); the other arguments
    as `load_mp100`'s."""
    p = split_path(root, split, subset)
    images = Path(root) / "images"
    return load_mp100(p, images if images.is_dir() else Path(root), drop_bad_edges=drop_bad_edges,
                      skeleton_base=skeleton_base)


# ------------------------------------------------------------------------------------------------ episodes


@dataclass
class Episode:
    category: MP100Category
    support: MP100Annotation
    query: MP100Annotation


class EpisodeSampler:
    """Episodes (support + query of the same category, distinct annotations); episode i is deterministic in
    (seed, i). Categories with fewer than 2 usable annotations are skipped."""

    def __init__(self, ds: MP100Set, seed: int = 0) -> None:
        self.ds, self.seed = ds, seed
        self.cats = sorted(c for c, idx in ds.by_category.items() if len(idx) >= 2)
        if not self.cats:
            raise InputError(f"{ds.path}: no category has two annotations with labelled keypoints")

    def __getitem__(self, i: int) -> Episode:
        rng = seeding.rng(self.seed, int(i))
        cid = self.cats[int(rng.integers(len(self.cats)))]
        idx = self.ds.by_category[cid]
        a, b = rng.choice(len(idx), size=2, replace=False)
        return Episode(self.ds.categories[cid], self.ds.annotations[idx[int(a)]], self.ds.annotations[idx[int(b)]])

    def episodes(self, n: int) -> list[Episode]:
        return [self[i] for i in range(n)]


def mp100_pck(pred: torch.Tensor, episode: Episode, threshold: float = 0.2) -> float:
    """The benchmark's PCK of one episode: predictions [N, 2] (query image pixels) vs the query's keypoints,
    counting those labelled in both support and query, normalised by max(w, h) of the query box. nan when no
    keypoint counts."""
    q = episode.query
    valid = episode.support.visible & q.visible
    if not valid.any():
        return float("nan")
    norm = max(q.bbox[2], q.bbox[3])
    err = (pred.float() - q.keypoints[:, :2]).norm(dim=-1)
    return float((err[valid] / norm < threshold).float().mean())


def mean_pck(values: list[float]) -> float:
    """Average of per-episode PCKs, episodes without counted keypoints left out."""
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def evaluate_episodes(predict_fn: Any, episodes: list[Episode], ds: MP100Set, threshold: float = 0.2) -> float:
    """Mean PCK over episodes of `predict_fn(support_image [3,H,W], support_kps [N,2], skeleton, query_image
    [1,3,H,W], support_mask [N]) -> points [1, N, 2]` (e.g. a wrapper of `dynapose4d.cape.predict`)."""
    vals = []
    for ep in episodes:
        s = read_image(ds.image_path(ep.support))[..., :3].permute(2, 0, 1)
        q = read_image(ds.image_path(ep.query))[..., :3].permute(2, 0, 1)[None]
        pts = predict_fn(s, ep.support.keypoints[:, :2], ep.category.skeleton, q, ep.support.visible)
        vals.append(mp100_pck(pts[0].detach().cpu(), ep, threshold))
    return mean_pck(vals)


# ------------------------------------------------------------------------------------------------ training pairs


def crop_box(image: torch.Tensor, bbox: tuple[float, float, float, float], size: int, pad: float = 1.25
             ) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """Square crop around a box (side = pad x max(w, h), white outside the image), resized to size x size.

    image [3, H, W] -> ([3, size, size], scale, (x0, y0)): a pixel point p maps to (p - (x0, y0)) * scale."""
    x, y, w, h = bbox
    side = max(w, h, 1.0) * pad
    x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
    H, W = image.shape[-2:]
    # affine grid sampling the square [x0, x0 + side]^2 (pixel edges) from the image
    xs = x0 + (torch.arange(size) + 0.5) * side / size
    ys = y0 + (torch.arange(size) + 0.5) * side / size
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx / W * 2 - 1, gy / H * 2 - 1], -1)[None]
    out = F.grid_sample(image[None] - 1.0, grid.to(image.dtype), mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0] + 1.0
    return out, size / side, (x0, y0)


class MP100Pairs(Dataset):
    """Training pairs from MP-100 episodes in the procedural pair format (`dynapose4d.cape.data.collate_pairs`)."""

    def __init__(self, ds: MP100Set, size: int, length: int, seed: int = 0) -> None:
        self.ds, self.size, self.length = ds, size, int(length)
        self.sampler = EpisodeSampler(ds, seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ep = self.sampler[i]
        out: dict[str, torch.Tensor] = {}
        for name, ann in (("support", ep.support), ("query", ep.query)):
            img = read_image(self.ds.image_path(ann))[..., :3].permute(2, 0, 1)
            crop, scale, (x0, y0) = crop_box(img, ann.bbox, self.size)
            k = (ann.keypoints[:, :2] - torch.tensor([x0, y0])) * scale / self.size
            inside = ((k >= 0) & (k < 1)).all(-1) & ann.visible
            out[name], out[name + "_keypoints"], out[name + "_vis"] = crop, k.clamp(0, 1), inside
        mask = out["support_vis"]
        n = mask.shape[0]
        adj = torch.zeros(n, n)
        for a, b in ep.category.skeleton:
            adj[a, b] = adj[b, a] = 1.0
        return {"support": out["support"], "query": out["query"], "support_keypoints": out["support_keypoints"],
                "query_keypoints": out["query_keypoints"], "mask": mask,
                "weight": (out["query_vis"] & mask).float(), "heat_mask": out["query_vis"] & mask, "adjacency": adj}


class MixedPairs(Dataset):
    """Item i from `b` with probability `fraction` (deterministic in (seed, i)), else from `a`."""

    def __init__(self, a: Dataset, b: Dataset, fraction: float, seed: int = 0) -> None:
        self.a, self.b, self.fraction, self.seed = a, b, float(fraction), seed

    def __len__(self) -> int:
        return len(self.a)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        use_b = seeding.rng(self.seed, int(i), seeding.MP100_MIX).uniform() < self.fraction
        return self.b[i % len(self.b)] if use_b else self.a[i]  # type: ignore[arg-type]
