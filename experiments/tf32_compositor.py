"""What TF32 matmuls do to the pure-torch rasterizer, measured on the CPU: `python experiments/tf32_compositor.py`.

On CUDA, `torch.set_float32_matmul_precision("high")` makes float32 matmuls (einsum, bmm, @) round their inputs
to a 10-bit mantissa (TF32). This script renders the scene of tests/test_render.py's
`test_torch_compositor_and_dense_reference_run_on_cuda` with the torch compositor twice on the CPU, once in plain
float32 and once with every matmul input rounded to TF32 the same way, and compares both with the compiled C++
kernel (which matches gsplat's CUDA kernels). Prints, per output, the fraction of values off by more than 1e-4 and
the largest difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_render import _grads, make_scene  # noqa: E402

from dynapose4d.render.rasterize import rasterize_cpu  # noqa: E402


def tf32(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to TF32's 10-bit mantissa (round to nearest), kept in its dtype."""
    if not x.is_floating_point():
        return x
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32).to(x.dtype)


def compare(tag: str, rgb: torch.Tensor, alpha: torch.Tensor, ref_rgb: torch.Tensor, ref_alpha: torch.Tensor) -> None:
    for what, x, y in (("rgb", rgb, ref_rgb), ("alpha", alpha, ref_alpha)):
        err = (x - y).abs()
        print(f"{tag:<28} {what:<5} off by > 1e-4: {(err > 1e-4).float().mean().item():7.2%}   "
              f"max {err.max().item():.4f}")


def main() -> None:
    scene = make_scene(n=2000, W=64, H=48, C=1, seed=4, dtype=torch.float32, scale=(0.01, 0.04))
    (rc, ac, _), _ = _grads(lambda *x: rasterize_cpu(*x, compositor="cpp"), scene)
    (rt, at, _), _ = _grads(lambda *x: rasterize_cpu(*x, compositor="torch"), scene)
    compare("torch tiles, float32", rt, at, rc, ac)
    saved = torch.einsum, torch.bmm, torch.matmul, torch.Tensor.__matmul__
    try:
        torch.einsum = lambda eq, *ops: saved[0](eq, *[tf32(o) for o in ops])
        torch.bmm = lambda a, b, **k: saved[1](tf32(a), tf32(b), **k)
        torch.matmul = lambda a, b, **k: saved[2](tf32(a), tf32(b), **k)
        torch.Tensor.__matmul__ = lambda a, b: saved[3](tf32(a), tf32(b))
        (r2, a2, _), _ = _grads(lambda *x: rasterize_cpu(*x, compositor="torch"), scene)
    finally:
        torch.einsum, torch.bmm, torch.matmul, torch.Tensor.__matmul__ = saved
    compare("torch tiles, TF32 matmuls", r2, a2, rc, ac)


if __name__ == "__main__":
    main()
