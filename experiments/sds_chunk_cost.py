"""Time and memory of the dynamic stage's Zero-1-to-3 SDS term by `dynamic.sds_chunk` (frames per prior call),
with the full-size random-weight Zero-1-to-3 XL of tests/full_size_models.py, 14 frames (the preset's batch on an
SVD video) at 256 px: `python experiments/sds_chunk_cost.py [cpu|cuda] [CHUNK ...]`.

Each chunk size runs in its own process (peak memory per setting): one warm-up call (conditionings cached,
kernels chosen), then `REPEATS` timed calls of forward + backward into the renders. Prints one line per chunk:
seconds per call, peak host RSS (CPU) or torch's allocated peak (CUDA).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import full_size_models as fsm  # noqa: E402

FRAMES, SIZE, REPEATS = 14, 256, 2


def one(device: str, chunk: int) -> dict:
    """Time `REPEATS` SDS calls with chunk `chunk` on `device`; the numbers as a dict."""
    from dynapose4d.priors.zero123 import Zero123Config
    from dynapose4d.stages.dynamic.config import DynamicConfig
    from dynapose4d.stages.dynamic.stage import Zero123PerFrame

    torch.manual_seed(0)
    video = torch.cat([torch.rand(FRAMES, SIZE, SIZE, 3), torch.ones(FRAMES, SIZE, SIZE, 1)], -1)  # [T, H, W, 4]
    fn = Zero123PerFrame(DynamicConfig(sds_chunk=chunk), video,
                         Zero123Config(path=str(fsm.ensure("zero123-xl"))))
    frames = torch.arange(FRAMES)
    d_elev, d_azim = torch.empty(FRAMES).uniform_(-30, 30), torch.empty(FRAMES).uniform_(-180, 180)
    images = torch.rand(FRAMES, 3, SIZE, SIZE, device=device)  # [B, 3, S, S] stand-in renders

    def call() -> None:
        x = images.clone().requires_grad_(True)
        fn(x, frames, d_elev, d_azim, 0.5).backward()
        if device == "cuda":
            torch.cuda.synchronize()

    call()  # warm-up: the model loads, each frame's conditioning is computed once
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(REPEATS):
        call()
    out = {"chunk": chunk, "seconds_per_call": (time.perf_counter() - t0) / REPEATS, "frames": FRAMES}
    if device == "cuda":
        out["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["gpu"] = torch.cuda.get_device_name()
    else:
        out["host_peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]))))
        return
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    chunks = [int(c) for c in sys.argv[2:]] or [1, 4, 0]
    fsm.ensure("zero123-xl")
    for c in chunks:
        r = subprocess.run([sys.executable, __file__, "--one", device, str(c)], capture_output=True, text=True)
        if r.returncode:
            print(f"sds_chunk={c}: failed\n{r.stderr[-2000:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        peak = d.get("cuda_peak_gib", d.get("host_peak_gib"))
        kind = "cuda allocated" if "cuda_peak_gib" in d else "host RSS"
        print(f"sds_chunk={c} ({'all' if c == 0 else c} of {FRAMES} frames per call) on {device}: "
              f"{d['seconds_per_call']:.2f} s per SDS call (forward + backward), peak {peak:.2f} GiB {kind}",
              flush=True)


if __name__ == "__main__":
    main()
