"""CPU (or CUDA) cost of PoseAnything: one forward (support + query) for Tiny and Small, and the dynamic stage's KML
cost per step (keypoints of `batch` renders, forward + backward to the renders) with PoseAnything Tiny against the
graph model (the shipped checkpoint). Weights are random (speed does not depend on them).

    .venv/bin/python experiments/poseanything_timing.py [--threads 2] [--batch 4] [--size 256] [--device cpu]

Prints wall and process-CPU seconds (median of --repeats after one warm-up call)."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dynapose4d import cape
from dynapose4d.cape.poseanything_model import PoseAnything


def _timed(fn, repeats: int, device: str) -> tuple[float, float, float]:
    """(first call wall s, median wall s, median CPU s) of fn()."""
    def one() -> tuple[float, float]:
        if device == "cuda":
            torch.cuda.synchronize()
        w, c = time.perf_counter(), time.process_time()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - w, time.process_time() - c

    first = one()[0]
    runs = [one() for _ in range(repeats)]
    return first, statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _object(size: int, seed: int) -> torch.Tensor:
    """An object-like image [3, size, size] over white (a textured blob in the middle)."""
    g = torch.Generator().manual_seed(seed)
    img = torch.ones(3, size, size)
    a, b = size // 5, size - size // 5
    img[:, a:b, a:b] = 0.2 + 0.6 * torch.rand(3, b - a, b - a, generator=g)
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", type=int, default=4, help="renders per KML step (dynamic.batch_frames)")
    ap.add_argument("--size", type=int, default=256, help="render side in pixels")
    ap.add_argument("--keypoints", type=int, default=14)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    print(f"torch {torch.__version__}, {args.threads} threads, device {dev}")
    S, Q = torch.randn(1, 3, 256, 256, device=dev), torch.randn(1, 3, 256, 256, device=dev)
    kp = torch.rand(1, args.keypoints, 2, device=dev) * 200 + 28
    vis = torch.ones(1, args.keypoints, device=dev)
    skel = [[i, i + 1] for i in range(args.keypoints - 1)]
    models = {v: PoseAnything(v).to(dev).eval().requires_grad_(False) for v in ("tiny", "small")}
    for v, m in models.items():
        with torch.no_grad():
            first, wall, cpu = _timed(lambda m=m: m(Q, S, kp, vis, skel), args.repeats, dev)
        print(f"forward {v:5s} (support + query, 256 px): first {first:.2f} s, then {wall:.2f} s wall, {cpu:.2f} s CPU")

    sup = _object(args.size, 0)
    kps = torch.rand(args.keypoints, 2) * args.size * 0.6 + args.size * 0.2
    renders = torch.stack([_object(args.size, i + 1) for i in range(args.batch)]).to(dev)
    graph = cape.load_cape().to(dev).eval().requires_grad_(False)
    for name, model in (("graph (shipped)", graph), ("poseanything tiny", models["tiny"])):
        with torch.no_grad():
            prep = cape.prepare_support(sup.to(dev), kps.to(dev), skel, checkpoint=model)

        def step(prep=prep) -> None:
            x = renders.clone().requires_grad_(True)
            pts, _ = cape.predict_prepared(prep, x)
            pts.sum().backward()

        first, wall, cpu = _timed(step, args.repeats, dev)
        print(f"KML {name:18s} {args.batch} renders of {args.size} px, forward + backward: first {first:.2f} s, "
              f"then {wall:.2f} s wall, {cpu:.2f} s CPU")


if __name__ == "__main__":
    main()
