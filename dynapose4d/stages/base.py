"""What every stage's `run()` receives, and the Trainer they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynapose4d.data.scene import Scene


@dataclass
class StageContext:
    """Inputs of one stage: the validated scene, the run folder, earlier stages' artifacts and shared settings.

    A stage's `run(ctx, cfg) -> dict[str, str]` writes its files under `ctx.run_dir / <stage>/` (atomically:
    temporary name then rename), and returns its artifacts as paths relative to `ctx.run_dir`; the runner
    records them in manifest.json, and later stages read them from `ctx.artifacts[<stage>][<name>]`.
    """

    scene: Scene
    run_dir: Path
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> name -> relative path
    trainer: Any = None  # dynapose4d.config.TrainerConfig
    wandb: Any = None  # dynapose4d.config.WandbConfig
    seed: int = 0
    resume: bool = False  # resume an interrupted stage from RUN/<stage>/checkpoints/last.ckpt

    def artifact(self, stage: str, name: str) -> Path:
        """Absolute path of an earlier stage's artifact; a clear error if that stage has not run."""
        try:
            return self.run_dir / self.artifacts[stage][name]
        except KeyError:
            raise RuntimeError(
                f"{self.run_dir}/manifest.json: stage '{stage}' has no artifact '{name}' (run that stage first)"
            ) from None

    def stage_dir(self, stage: str) -> Path:
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d
