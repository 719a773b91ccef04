"""Training precision: `"auto"` picks bf16 autocast only where the hardware computes bf16 natively.

bf16 autocast is a good trade on GPUs and on CPUs with AVX512-BF16 or AMX (1.3-1.7x faster CAPE steps, same
PCK), but on a CPU without them (AVX2 only, e.g. many AMD EPYC hosts) every bf16 matmul and convolution is
emulated: measured 25x slower matmuls and 15x slower convolutions than float32, i.e. the CPU preset's CAPE
fine-tuning would take an hour instead of minutes. The presets therefore say `precision: auto`.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

AUTO = "auto"
BF16 = "bf16-mixed"
FP32 = "32-true"
# The precision settings a run config accepts: "auto", and the strings Lightning's Trainer takes
PRECISIONS = (AUTO, FP32, BF16, "16-mixed", "bf16-true", "16-true", "64-true", "32", "16", "bf16", "64")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 /proc/cpuinfo flags with native bf16 arithmetic


def native_bf16_in_cpuinfo(cpuinfo: str, machine: str) -> bool:
    """Whether a /proc/cpuinfo text lists native bf16 arithmetic (x86: AVX512-BF16 or AMX; Arm: BF16)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    if machine.lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return any(f in flags for f in _CPU_BF16_FLAGS)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware; False where /proc/cpuinfo cannot be read (float32 is
    then the safe choice)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return native_bf16_in_cpuinfo(text, platform.machine())


def uses_cuda(accelerator: str) -> bool:
    """Whether a Trainer with this `accelerator` setting trains on CUDA (it is available, and asked for or "auto")."""
    return torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto")


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision string to train with.

    `"auto"` -> `"bf16-mixed"` on a CUDA device that supports bf16 or a CPU with native bf16, else `"32-true"`.
    Any other value is passed through unchanged; an explicit `"bf16-mixed"` on a CPU without native bf16 is
    honoured with a warning that it is emulated there (slow)."""
    cuda = uses_cuda(accelerator)
    if precision == AUTO:
        if cuda:
            return BF16 if torch.cuda.is_bf16_supported() else FP32
        return BF16 if cpu_has_native_bf16() else FP32
    if precision.startswith("bf16") and not cuda and not cpu_has_native_bf16():
        warnings.warn(f"precision {precision!r}: this CPU has no native bf16 (no AVX512-BF16 / AMX), so autocast "
                      f"is emulated and runs ~15x slower than float32; use precision 'auto' or '{FP32}'",
                      stacklevel=2)
    return precision


@contextmanager
def float32_matmul_precision(level: str | None) -> Iterator[None]:
    """Run the block with torch's float32 matmul precision at `level` ("high": TF32 matmuls on CUDA) and put the
    previous level back after it, also on an error. The setting is process-wide: left set, it would make every
    later float32 matmul of the process TF32 (the pure-torch rasterizer on CUDA then differs from gsplat by up to
    0.02 in colour). None leaves the setting alone."""
    before = torch.get_float32_matmul_precision()
    if level is not None:
        torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
