"""Any keypoint predictor through PoseAnything's MP-100 test protocol (1-shot PCK@0.2 per test category; the
protocol's instances, episodes, crops and PCK are `dynapose4d.cape.mp100_protocol`): the evaluation loop, its
table, the predictor adapters and `dynapose4d eval-cape --mp100 ROOT --split K [--checkpoint F]`.

A predictor is any callable (`Predictor`); adapters: `graph_predictor` (this project's CAPE model),
`poseanything_predictor` (the official PoseAnything checkpoints through `dynapose4d.cape.poseanything`) and
`support_copy_predictor` (the trivial baseline: the support's keypoints, unmoved, in crop coordinates).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynapose4d.cape.mp100 import MP100Set, load_split
from dynapose4d.cape.mp100_protocol import (
    EPISODE_SEED,
    INPUT_SIZE,
    NUM_EPISODES,
    NUM_QUERIES,
    NUM_SHOTS,
    PCK_THRESHOLD,
    EvalInstance,
    benchmark_instances,
    denormalize,
    from_input,
    heatmap_weight,
    make_episodes,
    normalize_crop,
    pck_sample,
    read_rgb_uint8,
    to_input,
    warp_crop,
)
from dynapose4d.core.errors import InputError, MissingWeightsError

# support image [3, S, S] ImageNet-normalised, support keypoints [N, 2] (S-px input coordinates), support
# keypoints present [N] bool, skeleton (0-based pairs), query images [B, 3, S, S] -> predictions [B, N, 2]
# in S-px input coordinates (S = INPUT_SIZE; pixel index = coordinate, as `mp100_protocol`'s crop map)
Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list, torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------------------------ evaluation


@dataclass
class CategoryResult:
    id: int
    name: str
    samples: int  # query samples scored
    pck: float  # mean per-sample PCK


@dataclass
class MP100Result:
    split: int | None
    categories: list[CategoryResult]
    mean: float  # over all query samples
    samples: int
    episodes: int  # per category
    queries: int  # per episode
    seconds: float = 0.0
    per_sample: list[float] = field(default_factory=list, repr=False)  # in episode order


class _CropCache:
    """Crops and input-coordinate keypoints of the instances of one category (each image decoded once)."""

    def __init__(self, instances: list[EvalInstance]) -> None:
        self.instances = instances
        self.items: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self.items:
            inst = self.instances[i]
            crop = warp_crop(read_rgb_uint8(inst.image_path), inst.center, inst.side)
            self.items[i] = (crop, to_input(inst.ann.keypoints[:, :2].numpy(), inst.center, inst.side))
        return self.items[i]

    def clear(self) -> None:
        self.items.clear()


@torch.no_grad()
def evaluate_mp100(ds: MP100Set, predictor: Predictor, num_episodes: int = NUM_EPISODES,
                   num_queries: int = NUM_QUERIES, threshold: float = PCK_THRESHOLD, seed: int = EPISODE_SEED,
                   split: int | None = None, progress: Callable[[CategoryResult], None] | None = None
                   ) -> MP100Result:
    """PCK@threshold per category and overall of `predictor` on an MP-100 test file (1 shot, the episodes of
    `make_episodes`). `progress` is called with each category's result as it finishes."""
    t0 = time.time()
    instances, cat2obj = benchmark_instances(ds)
    episodes = make_episodes(cat2obj, num_episodes, num_queries, NUM_SHOTS, seed, source=f"{ds.path}: ")
    if not episodes:
        raise InputError(f"{ds.path}: no category has usable instances")
    cache = _CropCache(instances)
    per_cat: dict[int, list[float]] = {}
    per_sample: list[float] = []
    results: list[CategoryResult] = []

    def finish(cid: int) -> None:
        v = per_cat[cid]
        r = CategoryResult(cid, ds.categories[cid].name, len(v), float(np.mean(v)))
        results.append(r)
        cache.clear()
        if progress is not None:
            progress(r)

    current = None
    for ep in episodes:
        if current is not None and ep.category_id != current:
            finish(current)
        current = ep.category_id
        cat = ds.categories[ep.category_id]
        s = instances[ep.supports[0]]
        s_crop, s_kps = cache.get(s.index)
        s_present = heatmap_weight(s_kps, s.visible)
        q_crops = torch.stack([cache.get(q)[0] for q in ep.queries])
        pred = predictor(normalize_crop(s_crop), s_kps.float(), s_present, list(cat.skeleton),
                         normalize_crop(q_crops))
        pred = torch.as_tensor(pred).detach().cpu()
        if pred.shape != (len(ep.queries), s_kps.shape[0], 2):
            raise InputError(f"predictor returned shape {tuple(pred.shape)}, expected "
                             f"{(len(ep.queries), s_kps.shape[0], 2)}")
        s_vis = torch.from_numpy(s.visible)
        for b, qi in enumerate(ep.queries):
            q = instances[qi]
            p = from_input(pred[b], q.center, q.side)
            v = pck_sample(p, q.ann.keypoints[:, :2], torch.from_numpy(q.visible) & s_vis, q.norm, threshold)
            per_cat.setdefault(ep.category_id, []).append(v)
            per_sample.append(v)
    finish(current)  # type: ignore[arg-type]
    return MP100Result(split, results, float(np.mean(per_sample)), len(per_sample), num_episodes, num_queries,
                       time.time() - t0, per_sample)


def format_row(r: CategoryResult, width: int = 32) -> str:
    return f"{r.name[:width]:<{width}} {r.samples:>8d} {100 * r.pck:>9.2f}"


def format_table(result: MP100Result, model: str = "", width: int = 32) -> str:
    """The per-category table and the mean (PCK in percent, as the paper reports it)."""
    lines = [table_header(result.split, result.episodes, result.queries, model, width)]
    lines += [format_row(r, width) for r in result.categories]
    lines.append(format_mean(result, width))
    return "\n".join(lines)


def table_header(split: int | None, episodes: int, queries: int, model: str = "", width: int = 32) -> str:
    what = f"MP-100 split {split} test" if split is not None else "MP-100 test"
    head = f"{what}, 1-shot, {episodes} episodes x {queries} queries per category, PCK@{PCK_THRESHOLD}"
    if model:
        head += f", {model}"
    return head + "\n" + f"{'category':<{width}} {'samples':>8} {'PCK@0.2':>9}"


def format_mean(result: MP100Result, width: int = 32) -> str:
    return f"{'mean':<{width}} {result.samples:>8d} {100 * result.mean:>9.2f}"


# ------------------------------------------------------------------------------------------------ predictors


def support_copy_predictor() -> Predictor:
    """The trivial baseline: every query gets the support's keypoints, unmoved in crop coordinates."""

    def predict(support: torch.Tensor, kps: torch.Tensor, present: torch.Tensor, skeleton: list,
                query: torch.Tensor) -> torch.Tensor:
        return kps[None].expand(query.shape[0], -1, -1).clone()

    return predict


def graph_predictor(checkpoint: str | Path | Any | None = None, device: str | torch.device = "cpu") -> Predictor:
    """This project's CAPE model (`dynapose4d.cape`; None = the shipped checkpoint) as a Predictor.

    The model takes RGB in [0, 1] with no normalisation of its own, so the ImageNet-normalised crops are
    mapped back to [0, 1] (the black border stays black); its pixel convention puts pixel centres at +0.5,
    the crop's at integers, so keypoints are shifted by +0.5 on the way in and -0.5 on the way out."""
    from dynapose4d.cape import CAPEModel, load_cape, predict_prepared, prepare_support

    model = (checkpoint if isinstance(checkpoint, CAPEModel) else load_cape(checkpoint)).to(device).eval()

    def predict(support: torch.Tensor, kps: torch.Tensor, present: torch.Tensor, skeleton: list,
                query: torch.Tensor) -> torch.Tensor:
        mask = present if bool(present.any()) else torch.ones_like(present)  # the model needs one keypoint
        prep = prepare_support(denormalize(support).clamp(0, 1), kps + 0.5, skeleton, model, mask)
        pts, _ = predict_prepared(prep, denormalize(query).clamp(0, 1))
        return pts.float().cpu() - 0.5

    return predict


def poseanything_predictor(model: Any, device: str | torch.device | None = None) -> Predictor:
    """A PoseAnything model (`dynapose4d.cape.poseanything_model.PoseAnything`) as a Predictor: it takes the
    ImageNet-normalised crops and keypoints in input pixels as they are, and returns every decoder layer's
    points in [0, 1]; the last layer x 256 is the prediction (as the original's decoding). With
    `support_tokens` / `forward_tokens` the support is encoded once per episode, else `forward` sees it
    repeated for each query."""
    if device is None:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            device = "cpu"
    split = hasattr(model, "support_tokens") and hasattr(model, "forward_tokens")

    def predict(support: torch.Tensor, kps: torch.Tensor, present: torch.Tensor, skeleton: list,
                query: torch.Tensor) -> torch.Tensor:
        B = query.shape[0]
        sk = [[int(i), int(j)] for i, j in skeleton]  # 0-based pairs shared by the batch
        q, s, k = query.to(device), support[None].to(device), kps[None].to(device)
        v = present[None].to(device=device, dtype=s.dtype)
        if split:
            tokens, valid = model.support_tokens(s, k, v)
            out = model.forward_tokens(q, tokens, valid, sk)
        else:
            out = model(q, s.expand(B, -1, -1, -1), k.expand(B, -1, -1), v.expand(B, -1), sk)
        return out[-1].float().cpu() * INPUT_SIZE

    return predict


def load_predictor(checkpoint: str | Path | None, device: str = "cpu") -> tuple[Predictor, str]:
    """(predictor, description) for `eval-cape --checkpoint`, through `dynapose4d.cape.load_keypoint_model`:
    None = the shipped graph model; a dynapose4d CAPE checkpoint = the graph model; an official PoseAnything
    file (mmcv format), or a dynapose4d pointer to one = PoseAnything. Files are read with weights_only."""
    from dynapose4d.cape import SHIPPED_CHECKPOINT, CAPEModel, load_keypoint_model

    path = Path(checkpoint) if checkpoint is not None else SHIPPED_CHECKPOINT
    if not path.is_file():
        raise MissingWeightsError(f"{path}: checkpoint not found")
    model = load_keypoint_model(path)
    if isinstance(model, CAPEModel):
        return graph_predictor(model, device), f"graph model {path.name}"
    model = model.to(device).eval()
    return poseanything_predictor(model, device), f"PoseAnything-{getattr(model, 'variant', '?')} {path.name}"


# ------------------------------------------------------------------------------------------------ CLI


def eval_cape_cli(args: Any) -> int:
    """`dynapose4d eval-cape --mp100 ROOT --split K [--checkpoint F] [--support-copy] [--device D]`."""
    root = Path(args.mp100)
    if not root.is_dir():
        raise InputError(f"{root}: MP-100 folder not found (expected ROOT/annotations/mp100_split{{K}}_test.json "
                         "and ROOT/images/)")
    base = {"auto": None, "0": 0, "1": 1}[str(getattr(args, "skeleton_base", "auto"))]
    ds = load_split(root, int(args.split), "test", drop_bad_edges=True, skeleton_base=base)
    if ds.dropped_edges:  # PoseAnything's model masks such edges out (they land on padded keypoint slots)
        print(f"note: {ds.path.name}: {len(ds.dropped_edges)} skeleton edge(s) out of range for "
              f"{ds.skeleton_base}-based indices left out ({', '.join(ds.dropped_edges[:3])}"
              f"{', ...' if len(ds.dropped_edges) > 3 else ''})", file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.support_copy:
        predictor, desc = support_copy_predictor(), "support-copy baseline"
    else:
        predictor, desc = load_predictor(args.checkpoint, device)
    print(table_header(int(args.split), args.episodes, args.queries, desc), flush=True)
    res = evaluate_mp100(ds, predictor, args.episodes, args.queries, split=int(args.split),
                         progress=lambda r: print(format_row(r), flush=True))
    print(format_mean(res), flush=True)
    print(f"({res.samples} query samples in {res.seconds:.0f} s on {device})", file=sys.stderr)
    if math.isnan(res.mean):
        return 1
    return 0
