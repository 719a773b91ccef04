"""Device memory bookkeeping of the stages: free what a stage no longer holds, record its CUDA peak."""

from __future__ import annotations

import gc
from typing import Any

import torch


def free_memory() -> None:
    """Collect unreachable objects (models caught in reference cycles included) and, when CUDA is in use,
    hand the cached blocks back to the driver."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def stage_uses_cuda(trainer_cfg: Any = None) -> bool:
    """Whether a stage with this TrainerConfig (accelerator "gpu", "cuda" or "auto") runs on CUDA."""
    acc = str(getattr(trainer_cfg, "accelerator", "auto"))
    return acc in ("gpu", "cuda", "auto") and torch.cuda.is_available()


def reset_peak_memory(trainer_cfg: Any = None) -> torch.device | None:
    """Start a stage's peak-memory count: resets CUDA's peak statistics when the stage runs on CUDA. Returns the
    CUDA device (pass it to `peak_memory_summary`) or None."""
    if not stage_uses_cuda(trainer_cfg):
        return None
    device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.reset_peak_memory_stats(device)
    return device


def peak_memory_summary(stage: str, device: torch.device | None) -> dict[str, float]:
    """{"<stage>/cuda_max_memory_allocated_gb": GiB} since `reset_peak_memory` (torch.cuda.max_memory_allocated),
    or {} off CUDA."""
    if device is None:
        return {}
    return {f"{stage}/cuda_max_memory_allocated_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}
