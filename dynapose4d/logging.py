"""Media and metrics to W&B through Lightning's WandbLogger (rank zero), and the same files into the run folder.

PLACEHOLDER API (being completed): stages call these helpers and never `wandb.log` directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def make_logger(ctx: Any, stage: str):
    """The stage's WandbLogger (offline by default; group = run name, job_type = stage), or False."""
    wc = getattr(ctx, "wandb", None)
    if wc is None or not wc.enabled or wc.mode == "disabled":
        return False
    from lightning.pytorch.loggers import WandbLogger

    run_dir = Path(ctx.run_dir)
    return WandbLogger(
        project=wc.project, entity=wc.entity, group=wc.group or run_dir.name, job_type=stage,
        name=f"{run_dir.name}-{stage}", save_dir=str(run_dir), mode=wc.mode, tags=list(wc.tags),
    )


def _wandb_logger(logger: Any):
    from lightning.pytorch.loggers import WandbLogger

    return logger if isinstance(logger, WandbLogger) else None


def log_images(logger: Any, key: str, images: list[torch.Tensor | np.ndarray], step: int | None = None,
               captions: list[str] | None = None) -> None:
    """Log float [H, W, 3] images in [0, 1] to W&B (no-op without a WandbLogger)."""
    wl = _wandb_logger(logger)
    if wl is None:
        return
    from dynapose4d.io import to_uint8

    wl.log_image(key=key, images=[to_uint8(i) for i in images], step=step, caption=captions)


def log_videos(logger: Any, key: str, paths: list[str | Path], step: int | None = None) -> None:
    """Log video files (mp4 or gif) already written to the run folder to W&B."""
    wl = _wandb_logger(logger)
    if wl is None:
        return
    import wandb

    wl.experiment.log({key: [wandb.Video(str(p)) for p in paths]}, step=step)


def log_summary(logger: Any, metrics: dict[str, float]) -> None:
    """Put final metrics in the W&B run summary."""
    wl = _wandb_logger(logger)
    if wl is None:
        return
    for k, v in metrics.items():
        wl.experiment.summary[k] = v
