"""Procedural CAPE data: renders of random articulated objects from the synthetic generator, cached.

A `RenderSet` holds, per object, V renders (frame, camera) with their keypoints and visibility. Training pairs
are two renders of the same object (support, query) with augmentation (`PairDataset`); the evaluation set
(`EvalSetConfig`) holds objects from seeds never trained on, a support at frame 0 and queries at every frame
from views 30-90 degrees of azimuth away.

Sets are generated once, deterministically under their config (seeded per object), and cached as
`~/.cache/dynapose4d/cape_<kind>_<hash>.pt` (or `$DYNAPOSE4D_CACHE`); generation runs in worker processes on
CPU, or renders on a CUDA device (gsplat) with the objects built in the workers (`dynapose4d.cape.render_sets`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from dynapose4d.cape.render_sets import RenderSet, render_objects
from dynapose4d.core import seeding
from dynapose4d.core.cameras import Camera
from dynapose4d.core.io import save_checkpoint
from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Bound, Rule
from dynapose4d.data.synthetic import TEMPLATES

CACHE_VERSION = 1
TRAIN_SEED_LIMIT = 10**6  # training objects use seeds below this; evaluation objects seeds from it upwards


@dataclass
class ProceduralConfig:
    """The training render set: objects x frames x views of the synthetic generator."""

    size: int = 128  # render size in pixels (square)
    num_objects: int = 400  # objects in the set (seeds seed_start .. seed_start + num_objects - 1)
    seed_start: int = 0  # first object seed (training seeds stay below 10^6)
    templates: list[str] = field(default_factory=lambda: ["humanoid", "quadruped", "lamp", "hand", "bird",
                                                          "random", "random"])  # object i uses templates[i % len]
    num_frames: int = 16  # animation length of each object
    frames_per_object: int = 3  # random frames rendered per object
    views_per_frame: int = 4  # random cameras per rendered frame
    elevation: list[float] = field(default_factory=lambda: [-10.0, 35.0])  # camera elevation range (degrees)
    azimuth_spread: float = 90.0  # views within +- this of the object's random base azimuth (degrees)
    radius: list[float] = field(default_factory=lambda: [1.8, 2.4])  # camera distance range
    workers: int = 0  # generation processes (0 = in this process)
    render_device: str = "auto"  # "cpu", "cuda" or "auto" (cuda when available)

    RULES: ClassVar[dict[str, Rule]] = {
        "size": Bound(16), "num_objects": AT_LEAST_1, "seed_start": AT_LEAST_0, "templates": TEMPLATES,
        "num_frames": AT_LEAST_1, "frames_per_object": AT_LEAST_1, "views_per_frame": AT_LEAST_1,
        "elevation": Bound(-90, 90), "azimuth_spread": Bound(0, 180), "radius": POSITIVE, "workers": AT_LEAST_0,
        "render_device": ("auto", "cpu", "cuda"),
    }


@dataclass
class EvalSetConfig:
    """The held-out evaluation protocol: unseen seeds, support at frame 0, queries at every frame 30-90 deg away."""

    size: int = 128  # render size in pixels
    objects_per_template: int = 4  # objects per template (seeds 10^6 + i)
    templates: list[str] = field(default_factory=lambda: ["humanoid", "quadruped", "lamp", "hand", "bird",
                                                          "random"])  # object templates of the set
    offsets: list[float] = field(default_factory=lambda: [-90.0, -60.0, -30.0, 30.0, 60.0, 90.0])  # query azimuths
    elevation: float = 0.0  # support and query elevation
    num_frames: int = 16  # frames per object (queries at every frame)
    frame_stride: int = 1  # use every k-th frame as a query (1 = all frames)
    workers: int = 0  # generation processes (0 = in this process)
    render_device: str = "auto"  # "cpu", "cuda" or "auto" (cuda when available)

    RULES: ClassVar[dict[str, Rule]] = {
        "size": Bound(16), "objects_per_template": AT_LEAST_1, "templates": TEMPLATES, "offsets": Bound(-180, 180),
        "elevation": Bound(-90, 90), "num_frames": AT_LEAST_1, "frame_stride": AT_LEAST_1, "workers": AT_LEAST_0,
        "render_device": ("auto", "cpu", "cuda"),
    }


@dataclass
class AugmentConfig:
    """Augmentation of training pairs (support and query warped independently, colours changed per pair)."""

    scale: list[float] = field(default_factory=lambda: [0.8, 1.2])  # zoom range
    rotation: float = 15.0  # max in-plane rotation (degrees)
    translate: float = 0.08  # max shift as a fraction of the image
    hue: float = 0.5  # max hue rotation (fraction of a turn), same for support and query
    saturation: list[float] = field(default_factory=lambda: [0.7, 1.3])  # saturation factor range, per pair
    brightness: list[float] = field(default_factory=lambda: [0.8, 1.2])  # brightness factor range, per pair
    image_brightness: float = 0.05  # extra per-image brightness jitter (+-)
    background: float = 0.3  # probability of a random background colour (per image), else white
    flip: float = 0.5  # probability of mirroring the pair (both images)
    drop_keypoints: float = 0.2  # probability of keeping only a random subset of the keypoints
    occluded_weight: float = 0.3  # loss weight of query keypoints that are hidden (but inside the image)
    elastic: float = 0.0  # std of a smooth random displacement of the query (fraction of the image; 0 = off)
    elastic_grid: int = 4  # control points per side of that displacement field

    RULES: ClassVar[dict[str, Rule]] = {
        "scale": POSITIVE, "rotation": Bound(0, 180), "translate": FRACTION, "hue": FRACTION,
        "saturation": AT_LEAST_0, "brightness": AT_LEAST_0, "image_brightness": AT_LEAST_0, "background": FRACTION,
        "flip": FRACTION, "drop_keypoints": FRACTION, "occluded_weight": AT_LEAST_0, "elastic": AT_LEAST_0,
        "elastic_grid": Bound(2),
    }


# ------------------------------------------------------------------------------------------------ render sets


def cache_dir() -> Path:
    return Path(os.environ.get("DYNAPOSE4D_CACHE", Path.home() / ".cache" / "dynapose4d"))


def _cfg_hash(kind: str, cfg: Any) -> str:
    d = {k: v for k, v in asdict(cfg).items() if k not in ("workers", "render_device")}
    blob = json.dumps({"kind": kind, "v": CACHE_VERSION, **d}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_path(kind: str, cfg: Any) -> Path:
    return cache_dir() / f"cape_{kind}_{_cfg_hash(kind, cfg)}.pt"


def load_or_generate(kind: str, cfg: ProceduralConfig | EvalSetConfig, use_cache: bool = True,
                     log: Any = print) -> RenderSet:
    """The render set of `cfg` ("train" or "eval"), from the cache or generated now (and cached atomically)."""
    path = cache_path(kind, cfg)
    if use_cache and path.is_file():
        try:
            return RenderSet(**torch.load(path, weights_only=False))
        except Exception:  # a corrupt cache file is regenerated
            pass
    import time

    t0 = time.perf_counter()
    rs = generate_train_set(cfg) if kind == "train" else generate_eval_set(cfg)  # type: ignore[arg-type]
    if log is not None:
        log(f"cape: generated the {kind} set ({rs.images.shape[0]} objects x {rs.images.shape[1]} views) in "
            f"{time.perf_counter() - t0:.1f} s")
    if use_cache:
        save_checkpoint(path, rs.to_dict())
    return rs


def _object_rng(kind: str, seed: int) -> np.random.Generator:
    return seeding.rng(seed, seeding.CAPE_TRAIN_OBJECTS if kind == "train" else seeding.CAPE_EVAL_OBJECTS)


def _train_plan(cfg: ProceduralConfig, i: int) -> tuple[str, int, list[tuple[float, list[Camera]]]]:
    """Template, seed and the (frame, cameras) renders of training object i (deterministic)."""
    seed = cfg.seed_start + i
    template = cfg.templates[i % len(cfg.templates)]
    rng = _object_rng("train", seed)
    base = rng.uniform(0.0, 360.0)
    plan = []
    for _ in range(cfg.frames_per_object):
        frame = float(rng.uniform(0.0, cfg.num_frames - 1))
        cams = [Camera("v", float(rng.uniform(*cfg.elevation)),
                       float(base + rng.uniform(-cfg.azimuth_spread, cfg.azimuth_spread)),
                       float(rng.uniform(*cfg.radius))) for _ in range(cfg.views_per_frame)]
        plan.append((frame, cams))
    return template, seed, plan


def _eval_plan(cfg: EvalSetConfig, i: int) -> tuple[str, int, list[tuple[float, list[Camera]]]]:
    """Evaluation object i: support (frame 0, base azimuth) then queries (every frame x offsets)."""
    t = cfg.templates[i % len(cfg.templates)]
    seed = TRAIN_SEED_LIMIT + i // len(cfg.templates)
    base = float(_object_rng("eval", seed).uniform(0.0, 360.0))
    plan = [(0.0, [Camera("support", cfg.elevation, base)])]
    for f in range(0, cfg.num_frames, cfg.frame_stride):
        plan.append((float(f), [Camera(f"q{o:+.0f}", cfg.elevation, base + o) for o in cfg.offsets]))
    return t, seed, plan


def generate_train_set(cfg: ProceduralConfig) -> RenderSet:
    """Render the training objects of `cfg` (deterministic)."""
    if cfg.seed_start + cfg.num_objects > TRAIN_SEED_LIMIT:
        raise ValueError(f"training seeds must stay below {TRAIN_SEED_LIMIT} (evaluation objects use the rest)")
    return render_objects(_train_plan, cfg, cfg.num_objects, eval_offsets=False)


def generate_eval_set(cfg: EvalSetConfig) -> RenderSet:
    """Render the held-out evaluation objects of `cfg`: view 0 = support, the others the queries."""
    return render_objects(_eval_plan, cfg, cfg.objects_per_template * len(cfg.templates), eval_offsets=True)


# ------------------------------------------------------------------------------------------------ pairs


def hue_matrix(angle: float) -> torch.Tensor:
    """3x3 RGB rotation about the grey axis by `angle` radians (a hue rotation that keeps grey grey)."""
    u = torch.full((3,), 1.0 / math.sqrt(3.0))
    ux = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    c, s = math.cos(angle), math.sin(angle)
    return c * torch.eye(3) + (1.0 - c) * torch.outer(u, u) + s * ux


def warp(prem_alpha: torch.Tensor, keypoints: torch.Tensor, scale: float, angle_deg: float, shift: tuple[float, float],
         flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Zoom by `scale`, rotate, shift (fractions of the image) and optionally mirror an image [C, S, S]
    (premultiplied colour + alpha; zero padding) and its normalised keypoints [N, 2]."""
    th = math.radians(angle_deg)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    A = R / scale  # output -> input (in [-1, 1] coordinates)
    if flip:
        A = A @ torch.diag(torch.tensor([-1.0, 1.0]))
    t = torch.tensor([2.0 * shift[0], 2.0 * shift[1]])
    theta = torch.cat([A, t[:, None]], 1)[None]  # [1, 2, 3]
    grid = F.affine_grid(theta, [1, *prem_alpha.shape], align_corners=False)
    out = F.grid_sample(prem_alpha[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    k = keypoints * 2.0 - 1.0
    k = (k - t) @ torch.linalg.inv(A).T
    return out, (k + 1.0) / 2.0


def elastic_warp(img: torch.Tensor, keypoints: torch.Tensor, amplitude: float, grid: int, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random non-rigid warp (bicubic upsampling of a grid x grid field of displacements with std
    `amplitude`, a fraction of the image) of an image [C, S, S] (zero padding) and its normalised keypoints
    [N, 2] (moved with the image: the inverse of the sampling map, by fixed-point iteration)."""
    S = img.shape[-1]
    d = torch.from_numpy(rng.normal(0.0, 2.0 * amplitude, size=(1, 2, grid, grid))).float()  # [-1, 1] units
    flow = F.interpolate(d, size=(S, S), mode="bicubic", align_corners=True)  # [1, 2, S, S]
    base = F.affine_grid(torch.eye(2, 3)[None], [1, 1, S, S], align_corners=False)  # [1, S, S, 2]
    out = F.grid_sample(img[None], base + flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    k = keypoints * 2.0 - 1.0  # output point p satisfies p + flow(p) = k
    p = k.clone()
    for _ in range(20):
        f = F.grid_sample(flow, p[None, None], mode="bilinear", padding_mode="border", align_corners=False)
        p = k - f[0, :, 0].T
    return out, (p + 1.0) / 2.0


class PairDataset(Dataset):
    """Augmented (support, query) pairs of two different views of the same object from a `RenderSet`; item i
    is deterministic in (seed, i). Items are dicts of tensors (see `collate_pairs`): support/query [3, S, S],
    support_keypoints/query_keypoints [n, 2] normalised, mask [n] (present in the support), weight [n] (loss
    weight: 1 visible in the query, `occluded_weight` hidden but inside, 0 else), heat_mask [n], adjacency [n, n]."""

    def __init__(self, renders: RenderSet, aug: AugmentConfig, length: int, seed: int = 0,
                 support_view: int | None = None, plain_support: bool = False) -> None:
        self.r, self.aug, self.length, self.seed = renders, aug, int(length), int(seed)
        self.support_view = support_view  # None: any view; else always this one (the per-object fine-tuning)
        # with a support_view: that view unaugmented, the same support image in every item (a batch of them can
        # share one backbone pass: `CAPEModule(shared_support=True)`)
        self.plain_support = plain_support and support_view is not None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = seeding.rng(self.seed, int(i))
        r, a = self.r, self.aug
        O, V = r.images.shape[:2]
        o = int(rng.integers(O))
        vs = int(rng.integers(V)) if self.support_view is None else self.support_view
        vq = int(rng.integers(V - 1))
        vq = vq + (vq >= vs)
        n = int(r.num_keypoints[o])
        S = r.size
        # colour transform shared by support and query
        M = hue_matrix(float(rng.uniform(-a.hue, a.hue)) * 2.0 * math.pi)
        sat = float(rng.uniform(*a.saturation))
        bright = float(rng.uniform(*a.brightness))
        flip = bool(rng.uniform() < a.flip)
        keep = torch.ones(n, dtype=torch.bool)
        if rng.uniform() < a.drop_keypoints and n > 1:
            keep = torch.from_numpy(rng.uniform(size=n) < rng.uniform(0.4, 1.0))
            if not keep.any():
                keep[int(rng.integers(n))] = True
        out: dict[str, torch.Tensor] = {}
        for name, v in (("support", vs), ("query", vq)):
            img = r.images[o, v].float().permute(2, 0, 1) / 255.0  # [4, S, S]
            if name == "support" and self.plain_support:
                kp = r.keypoints[o, v, :n] / S
                inside = ((kp >= 0) & (kp < 1)).all(-1) & r.inside[o, v, :n]
                out.update(support=img[:3].clone(), support_keypoints=kp.clamp(0.0, 1.0), support_inside=inside,
                           support_visible=inside & r.visible[o, v, :n])
                continue
            al = img[3:]
            prem = img[:3] - (1.0 - al)  # colour x alpha
            grey = prem.mean(0, keepdim=True)
            prem = torch.einsum("ij,jhw->ihw", M, prem)
            prem = grey + sat * (prem - grey)
            prem = prem * bright * (1.0 + float(rng.uniform(-a.image_brightness, a.image_brightness)))
            prem = torch.minimum(prem.clamp(min=0.0), al)
            kp = r.keypoints[o, v, :n] / S  # [n, 2] normalised
            w, kw = warp(torch.cat([prem, al]), kp, float(rng.uniform(*a.scale)),
                         float(rng.uniform(-a.rotation, a.rotation)),
                         (float(rng.uniform(-a.translate, a.translate)), float(rng.uniform(-a.translate, a.translate))),
                         flip)
            if name == "query" and a.elastic > 0:
                w, kw = elastic_warp(w, kw, a.elastic, a.elastic_grid, rng)
            bg = torch.ones(3) if rng.uniform() >= a.background else torch.from_numpy(rng.uniform(size=3)).float()
            rgb = (w[:3] + (1.0 - w[3:]) * bg[:, None, None]).clamp(0.0, 1.0)
            inside = ((kw >= 0) & (kw < 1)).all(-1) & r.inside[o, v, :n]
            out[name] = rgb
            out[name + "_keypoints"] = kw.clamp(0.0, 1.0)
            out[name + "_inside"] = inside
            out[name + "_visible"] = inside & r.visible[o, v, :n]
        mask = keep & out["support_inside"]
        if not mask.any():  # every support keypoint left the image: keep the first one that is inside anywhere
            mask = keep.clone()
        weight = torch.where(out["query_visible"], 1.0, torch.where(out["query_inside"], a.occluded_weight, 0.0))
        return {
            "support": out["support"], "query": out["query"],
            "support_keypoints": out["support_keypoints"], "query_keypoints": out["query_keypoints"],
            "mask": mask, "weight": weight * mask, "heat_mask": out["query_visible"] & mask,
            "adjacency": r.adjacency[o, :n, :n].float(),
        }


def collate_pairs(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack pair dicts, padding keypoints to the batch's largest N (padded: mask False, weight 0)."""
    N = max(it["mask"].shape[0] for it in items)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in items[0]}
    for it in items:
        p = N - it["mask"].shape[0]
        for k, v in it.items():
            if k in ("support", "query"):
                out[k].append(v)
            elif k == "adjacency":
                out[k].append(F.pad(v, (0, p, 0, p)))
            else:  # [n] or [n, 2]
                out[k].append(torch.cat([v, v.new_zeros((p, *v.shape[1:]))]))
    return {k: torch.stack(v) for k, v in out.items()}
