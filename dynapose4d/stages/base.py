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


def build_trainer(ctx: StageContext, stage: str, max_steps: int, multi_device: bool = True, **kwargs: Any):
    """A Lightning Trainer for one stage: step-based, checkpoints to RUN/<stage>/checkpoints/last.ckpt,
    the stage's W&B logger (if any), CPU/GPU per `ctx.trainer`. `multi_device=False` pins one device
    (the static stage). Extra kwargs go to `lightning.Trainer`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dynapose4d.logging import make_logger

    tc = ctx.trainer
    devices = tc.devices if (multi_device and tc is not None) else 1
    ckpt = ModelCheckpoint(
        dirpath=ctx.stage_dir(stage) / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=max(1, getattr(tc, "checkpoint_every_n_steps", 50)),
    )
    args: dict[str, Any] = dict(
        max_steps=max_steps,
        accelerator=getattr(tc, "accelerator", "auto"),
        devices=devices,
        strategy=getattr(tc, "strategy", "auto") if devices != 1 else "auto",
        precision=getattr(tc, "precision", "32-true"),
        logger=make_logger(ctx, stage),
        callbacks=[ckpt],
        log_every_n_steps=getattr(tc, "log_every_n_steps", 10),
        enable_progress_bar=getattr(tc, "progress_bar", True),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(ctx.stage_dir(stage)),
    )
    args.update(kwargs)
    return L.Trainer(**args)


def resume_checkpoint(ctx: StageContext, stage: str) -> str | None:
    """Path of the stage's last checkpoint when resuming an interrupted stage, else None."""
    last = ctx.run_dir / stage / "checkpoints" / "last.ckpt"
    return str(last) if ctx.resume and last.is_file() else None
