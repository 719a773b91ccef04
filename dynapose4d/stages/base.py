"""What every stage's `run()` receives, and the Trainer they share."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.strategies import StrategyRegistry
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.io import atomic_path
from dynapose4d.core.precision import resolve_precision
from dynapose4d.data.scene import Scene
from dynapose4d.priors.puppet import PuppetConfig
from dynapose4d.priors.svd import SVDConfig
from dynapose4d.priors.zero123 import Zero123Config
from dynapose4d.stages.logger import RunLogger, make_logger
from dynapose4d.stages.settings import TrainerConfig, WandbConfig


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
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the Lightning Trainer settings
    wandb: WandbConfig | None = None  # the W&B settings; None = no W&B run
    seed: int = 0
    resume: bool = False  # resume an interrupted stage from RUN/<stage>/checkpoints/last.ckpt
    zero123: Zero123Config = field(default_factory=Zero123Config)  # the run's Zero-1-to-3 (static, dynamic SDS)
    driving: SVDConfig | PuppetConfig = field(default_factory=SVDConfig)  # what makes a driving video for a scene
    # without one (dynamic.driving_source(); read by the cape and dynamic stages)
    config: dict[str, Any] = field(default_factory=dict)  # the whole resolved run config, plain (the W&B config)
    is_last: bool = True  # the last stage of this invocation (under `wandb agent` it reports to the sweep's run)

    @property
    def run_name(self) -> str:
        return self.run_dir.name

    def artifact(self, stage: str, name: str) -> Path:
        """Absolute path of an earlier stage's artifact; a clear error if that stage has not run."""
        try:
            return self.run_dir / self.artifacts[stage][name]
        except KeyError:
            raise InputError(
                f"{self.run_dir}/manifest.json: stage '{stage}' has no artifact '{name}' (run that stage first)"
            ) from None

    def stage_dir(self, stage: str) -> Path:
        d = self.run_dir / stage
        d.mkdir(parents=True, exist_ok=True)
        return d


def stage_logger(ctx: StageContext, stage: str) -> RunLogger:
    """The stage's logger (`make_logger`) with this run's W&B settings and resolved config."""
    return make_logger(ctx.run_dir, stage, ctx.wandb, ctx.config, ctx.is_last)


def check_strategy(tc: TrainerConfig) -> None:
    """ConfigError unless `trainer.strategy` is "auto" or a strategy Lightning registers (the run config loads
    without Lightning, so this is checked here, before a run writes anything)."""
    strategies = ("auto", *StrategyRegistry.available_strategies())
    if tc.strategy not in strategies:
        raise ConfigError(f"config key 'trainer.strategy': {tc.strategy!r} is not one of {list(strategies)}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing to a temporary name beside the checkpoint and renaming it over the old
    one: a write cut short (a full disk, a kill) leaves the previous checkpoint whole, not a truncated file that
    `--resume` cannot read (Lightning's own writer left one on a full disk)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class CheckpointOnStop(Callback):
    """Writes the stage's last.ckpt at the step reached when the process is told to stop (SIGTERM, as a batch
    scheduler preempting a job does; or Ctrl-C), so `--resume` goes on from there rather than from the last
    periodic checkpoint. Other exceptions (a bug, a full disk) keep the last periodic one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if is_stop(exception) and trainer.global_step > 0:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state: optimiser and loops too


def is_stop(exception: BaseException) -> str | None:
    """"SIGTERM" or "interrupted" when `exception` is Lightning's reaction to SIGTERM or to Ctrl-C (a
    KeyboardInterrupt, or the SystemExit Lightning raises after one), else None."""
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt) or (
            isinstance(exception, SystemExit) and isinstance(exception.__context__, KeyboardInterrupt)):
        return "interrupted"
    return None


def build_trainer(ctx: StageContext, stage: str, max_steps: int, multi_device: bool = True, **kwargs: Any):
    """A Lightning Trainer for one stage: step-based, checkpoints to RUN/<stage>/checkpoints/last.ckpt,
    the stage's W&B logger (if any), CPU/GPU per `ctx.trainer`. `multi_device=False` pins one device
    (the static stage). Extra kwargs go to `lightning.Trainer`."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    tc = ctx.trainer
    devices = tc.devices if multi_device else 1
    ckpt = ModelCheckpoint(
        dirpath=ctx.stage_dir(stage) / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=max(1, tc.checkpoint_every_n_steps),
        enable_version_counter=False,  # a resumed stage keeps writing last.ckpt, never last-v1.ckpt
    )
    show_bar = bool(tc.progress_bar)
    callbacks: list[Any] = [ckpt, CheckpointOnStop(ctx.stage_dir(stage) / "checkpoints" / "last.ckpt")]
    callbacks += [StageProgressBar(stage)] if show_bar else []
    args: dict[str, Any] = dict(
        max_steps=max_steps,
        accelerator=tc.accelerator,
        devices=devices,
        strategy=tc.strategy if devices != 1 else "auto",
        precision=tc.precision,  # resolved below ("auto": bf16 only where native)
        logger=stage_logger(ctx, stage),
        callbacks=callbacks,
        log_every_n_steps=tc.log_every_n_steps,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(ctx.stage_dir(stage)),
        plugins=[AtomicCheckpointIO()],
    )
    if "callbacks" in kwargs:
        kwargs = dict(kwargs)
        args["callbacks"] = callbacks + list(kwargs.pop("callbacks"))
    args.update(kwargs)
    args["precision"] = resolve_precision(str(args["precision"]), str(args["accelerator"]))
    return L.Trainer(**args)


def resume_checkpoint(ctx: StageContext, stage: str) -> str | None:
    """Path of the stage's last checkpoint when resuming an interrupted stage, else None. A checkpoint that is not
    a whole torch archive (cut short by a full disk or a kill, or by a version that wrote in place) is set aside as
    last.ckpt.damaged and the stage starts from its first step, with a warning."""
    last = ctx.run_dir / stage / "checkpoints" / "last.ckpt"
    if not (ctx.resume and last.is_file()):
        return None
    if not zipfile.is_zipfile(last):
        os.replace(last, last.with_name("last.ckpt.damaged"))
        warnings.warn(f"{last}: damaged (a write cut short); set aside as last.ckpt.damaged, the {stage} stage "
                      "starts again from its first step", stacklevel=2)
        return None
    return str(last)


class StageProgressBar(TQDMProgressBar):
    """One bar per stage over its optimisation steps (global_step / max_steps), showing the current losses
    (every logged metric whose name contains "loss", plus those logged with prog_bar=True)."""

    def __init__(self, stage: str, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.stage = stage

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = dict(super().get_metrics(trainer, pl_module))
        items.pop("v_num", None)
        for k, v in trainer.callback_metrics.items():
            if "loss" in k and k not in items and getattr(v, "numel", lambda: 1)() == 1:
                items[k] = float(v)
        return {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in items.items()}

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if bar.total != total:
            bar.reset(total=total)
            bar.n = trainer.global_step  # a resumed stage starts where it stopped
        bar.set_description(self.stage)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *_: Any) -> None:
        bar = self.train_progress_bar
        n = trainer.global_step
        if bar.disable or not self._should_update(n, bar.total or n):
            return
        bar.n = n
        bar.set_postfix(self.get_metrics(trainer, pl_module))
        bar.refresh()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


def summary_line(stage: str, seconds: float, losses: dict[str, float], metrics: dict[str, Any],
                 max_items: int = 6) -> str:
    """The one-line report of a finished stage: time, final losses, then metrics (scalars only)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    items = [f"{k}={fmt(v)}" for k, v in losses.items() if "loss" in k][:max_items]
    items += [f"{k}={fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float))][:max_items]
    return f"[{stage}] done in {seconds:.1f} s" + ("  " + "  ".join(items) if items else "")


#: Lightning's advice that does not apply to the stages' step-based training: few DataLoader workers, an
#: IterableDataset without a length, few batches per epoch, and ModelCheckpoint with manual optimisation (the
#: static stage's checkpoint holds the state after the step, which is what resuming needs).
FIT_WARNINGS: tuple[str, ...] = (
    ".*does not have many workers.*",
    ".*IterableDataset.*",
    ".*The number of training batches.*",
    "Using ModelCheckpoint with manual optimization",
)


@contextlib.contextmanager
def quiet_fit() -> Iterator[None]:
    """Around `trainer.fit`: the `FIT_WARNINGS` silenced (every other warning shows)."""
    with warnings.catch_warnings():
        for message in FIT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def quiet_lightning() -> None:
    """Drop Lightning's noise from every stage's output: an advert for litlogger, "GPU available: False",
    "TPU available: False" and "`Trainer.fit` stopped: `max_steps=N` reached" printed by each Trainer, and a
    torch-version deprecation warning from Lightning's own pytree helper. "GPU available: True, used: False"
    stays (a GPU left unused)."""
    class _NoAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = str(record.msg)
            return "litlogger" not in msg and not msg.startswith(
                ("GPU available: False", "TPU available: False", "`Trainer.fit` stopped: `max_steps="))

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
