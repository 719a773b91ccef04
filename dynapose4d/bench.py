"""Rasterizer benchmark: `python -m dynapose4d.bench` prints a table and writes bench/results.json.

One view of an object-like scene (`reference.object_scene`: Gaussians on the surface of a humanoid made of
spheres and capsules, scales 0.01-0.03, opacities 0.5-0.9), forward = `rasterize` (projection + compositing),
backward = `loss.backward()` through both. Backends: the compiled CPU kernel ("cpp"), the pure-torch tile
fallback ("torch"), with `--device cuda` gsplat's CUDA rasterizer ("gsplat") and the torch fallback on the GPU,
and the dense reference (every pixel against every Gaussian, chunked with checkpointing so
that it fits in memory), the baseline of the speed-up column. The dense time of large configurations is
extrapolated from the smallest one (cost ~ pixels x Gaussians) and marked "est.". Times are medians; the load
average is recorded because other processes on the machine slow everything down: with the CPU shared, OpenMP's
default spin-waiting stalls every parallel region (medians grow ~10x); `OMP_WAIT_POLICY=PASSIVE` in the
environment, or `--threads 1`, avoids most of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dynapose4d.render.cpu_kernel import extension_available
from dynapose4d.render.rasterize import rasterize, rasterize_cpu
from dynapose4d.render.reference import object_scene, rasterize_dense

_INPUTS = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "width", "height", "backgrounds")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(backend: str, scene: dict) -> tuple[float, float]:
    device = scene["means"].device
    leaves = {k: (v.clone().requires_grad_(True) if torch.is_tensor(v) and k not in ("viewmats", "Ks") else v)
              for k, v in scene.items()}
    args = [leaves[k] for k in _INPUTS]
    _sync(device)
    t0 = time.perf_counter()
    if backend == "dense":
        render, alphas = rasterize_dense(*args, pixels_per_chunk=1024, checkpoint=True)
    elif backend == "gsplat":
        render, alphas, _ = rasterize(*args, backend="gsplat")
    else:
        render, alphas, _ = rasterize_cpu(*args, compositor=backend)
    _sync(device)
    t1 = time.perf_counter()
    (render.square().mean() + alphas.mean()).backward()
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def time_backend(backend: str, size: int, n: int, repeats: int, device: str = "cpu") -> dict:
    """Median forward / backward milliseconds of one view on `device` (after one warm-up run)."""
    scene = {k: (v.to(device) if torch.is_tensor(v) else v)
             for k, v in object_scene(n, n_cameras=1, size=size, seed=0).items()}
    _time_once(backend, scene)  # warm-up (and the one-off build of the extension)
    fw, bw = [], []
    for _ in range(repeats):
        f, b = _time_once(backend, scene)
        fw.append(f)
        bw.append(b)
    return {"backend": backend, "size": size, "gaussians": n, "repeats": repeats,
            "forward_ms": 1e3 * statistics.median(fw), "backward_ms": 1e3 * statistics.median(bw),
            "forward_ms_all": [round(1e3 * x, 2) for x in fw], "backward_ms_all": [round(1e3 * x, 2) for x in bw]}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, write the JSON file; returns the results."""
    ap = argparse.ArgumentParser(prog="python -m dynapose4d.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="128x10000,256x50000", help="comma-separated SIZExGAUSSIANS")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per backend (median reported)")
    ap.add_argument("--dense-repeats", type=int, default=1, help="timed runs of the dense reference")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (gsplat and the torch fallback on the GPU)")
    ap.add_argument("--out", default="bench/results.json")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",") if c]
    if args.device == "cpu":
        backends = (["cpp"] if extension_available() else []) + ["torch"]
    elif args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device")
        backends = ["gsplat", "torch"]
    else:
        ap.error(f"--device must be cpu or cuda, got {args.device!r}")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    rows = []
    dense_ref = None  # (size, n, total ms) of the measured dense run, for extrapolation
    for size, n in configs:
        for backend in backends:
            rows.append(time_backend(backend, size, n, args.repeats, args.device))
        if not args.no_dense:
            if dense_ref is None:
                row = time_backend("dense", size, n, args.dense_repeats, args.device)
                row["estimated"] = False
                dense_ref = (size, n, row["forward_ms"], row["backward_ms"])
            else:
                s0, n0, f0, b0 = dense_ref
                k = (size * size * n) / (s0 * s0 * n0)
                row = {"backend": "dense", "size": size, "gaussians": n, "repeats": 0,
                       "forward_ms": f0 * k, "backward_ms": b0 * k, "estimated": True}
            rows.append(row)
    for row in rows:
        dense = next((r for r in rows if r["backend"] == "dense" and (r["size"], r["gaussians"]) ==
                      (row["size"], row["gaussians"])), None)
        total = row["forward_ms"] + row["backward_ms"]
        row["total_ms"] = total
        row["speedup_vs_dense"] = None if dense is None else (dense["forward_ms"] + dense["backward_ms"]) / total

    info = {
        "cpu": _cpu_name(),
        "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "scene": "reference.object_scene(n, n_cameras=1, size, seed=0), one view, loss = mean(render^2)+mean(alpha)",
    }
    header = (f"{'backend':<8}{'size':>6}{'gaussians':>11}{'forward ms':>12}{'backward ms':>13}{'total ms':>10}"
              f"{'speed-up':>11}")
    print(header)
    print("-" * len(header))
    for r in rows:
        est = " est." if r.get("estimated") else ""
        sp = "" if r["speedup_vs_dense"] is None else f"{r['speedup_vs_dense']:.0f}x"
        print(f"{r['backend']:<8}{r['size']:>5}²{r['gaussians']:>11}{r['forward_ms']:>12.1f}{r['backward_ms']:>13.1f}"
              f"{r['total_ms']:>10.1f}{sp:>11}{est}")
    print(f"device: {info['device']}; cpu: {info['cpu']}, {info['threads']} threads, torch {info['torch']}, "
          f"load average before/after: {info['loadavg_before']} / {info['loadavg_after']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "results": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
