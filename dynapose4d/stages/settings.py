"""The settings every stage shares: the Lightning Trainer's and W&B's (`trainer:` and `wandb:` in a run config).

Plain dataclasses (no Lightning), so the run config (`dynapose4d.pipeline.config.RunConfig`) composes them without
loading the stages. Each stage's own section is its package's `config.py` (`dynapose4d.stages.static.config`,
`.cape.config`, `.dynamic.config`). Each field is documented on the line where it is defined (`dynapose4d config
show` prints these docs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dynapose4d.core.precision import PRECISIONS
from dynapose4d.core.structured import AT_LEAST_1, Rule


@dataclass
class TrainerConfig:
    """Lightning Trainer settings shared by the stages."""

    accelerator: str = "auto"  # "cpu", "gpu" or "auto" (gpu when CUDA is available)
    devices: int = 1  # >1 trains the cape and dynamic stages with DDP (static stays on one device)
    strategy: str = "auto"  # Lightning strategy; "ddp_spawn" for CPU multi-process tests
    precision: str = "32-true"  # Lightning precision string, or "auto": bf16-mixed where the hardware has it
    log_every_n_steps: int = 10  # scalar logging interval in steps
    checkpoint_every_n_steps: int = 50  # interval of the resumable "last.ckpt" of each stage
    progress_bar: bool = True  # a progress bar per stage with the current losses

    RULES: ClassVar[dict[str, Rule]] = {
        "accelerator": ("auto", "cpu", "gpu", "cuda"), "devices": AT_LEAST_1, "precision": PRECISIONS,
        "log_every_n_steps": AT_LEAST_1, "checkpoint_every_n_steps": AT_LEAST_1,
    }


@dataclass
class WandbConfig:
    """Weights & Biases tracking through Lightning's WandbLogger (rank zero only)."""

    enabled: bool = True  # log to W&B at all (files in the run folder are written either way)
    project: str = "dynapose4d"  # W&B project
    entity: str | None = None  # W&B entity (team/user); None = the default one
    # "offline" (default; `wandb sync RUN/wandb/offline-run-*` uploads later), "online" or "disabled"
    mode: str = "offline"
    group: str | None = None  # W&B group; None = the run folder's name (one group per pipeline run)
    tags: list[str] = field(default_factory=list)  # W&B tags

    RULES: ClassVar[dict[str, Rule]] = {"mode": ("offline", "online", "disabled")}
