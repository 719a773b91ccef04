"""`dynapose4d train-cape`: train the generic CAPE model on procedural pairs and write a checkpoint.

    dynapose4d train-cape [--out runs/cape/cape.ckpt] [--config cape/gpu] [--set k=v ...]

Without `--out` the checkpoint goes to runs/cape/cape.ckpt; the shipped dynapose4d/assets/cape_small.ckpt is
written only when `--out` names it (as `make train-cape` does).

Steps: the training render set and the held-out evaluation set are generated (or read from the cache, see
`dynapose4d.cape.data`), the model trains with `CAPEModule` (Lightning; DDP with trainer.devices > 1), then rank
zero evaluates it on the held-out protocol beside the trivial baseline, prints the table and writes the
checkpoint atomically with its config, metrics and training time embedded. Optionally MP-100-format data
(`mp100.root`) is mixed into the procedural pairs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import OmegaConf

from dynapose4d.cape import load_cape, save_cape
from dynapose4d.cape.data import AugmentConfig, EvalSetConfig, PairDataset, ProceduralConfig, load_or_generate
from dynapose4d.cape.evaluation import evaluate, format_table
from dynapose4d.cape.model import CAPEModel, CAPEModelConfig
from dynapose4d.cape.mp100 import MixedPairs, MP100Pairs, load_split
from dynapose4d.core.errors import ConfigError
from dynapose4d.core.precision import float32_matmul_precision, resolve_precision, uses_cuda
from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, FRACTION, POSITIVE, Bound, Rule, merge_structured
from dynapose4d.stages.base import check_strategy
from dynapose4d.stages.cape.module import CAPEModule, fit, pair_loader
from dynapose4d.stages.settings import TrainerConfig


@dataclass
class MP100DataConfig:
    """Optional MP-100-format training data mixed into the procedural pairs."""

    root: str = ""  # folder with annotations/mp100_split{k}_{train,val,test}.json and the images; "" = none
    split: int = 1  # which of the 5 category splits trains
    fraction: float = 0.5  # share of the pairs drawn from MP-100 when root is set

    RULES: ClassVar[dict[str, Rule]] = {"split": Bound(1, 5), "fraction": FRACTION}


@dataclass
class CapeTrainConfig:
    """Settings of `dynapose4d train-cape` (defaults: the small CPU model)."""

    seed: int = 0  # seeds the model init and the pair sampling
    # warm start: a CAPE checkpoint whose weights start the training ("" = random init); its model config must
    # equal `model` (the schedule, warm-up included, starts afresh)
    init: str = ""
    model: CAPEModelConfig = field(default_factory=CAPEModelConfig)
    data: ProceduralConfig = field(default_factory=ProceduralConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalSetConfig = field(default_factory=EvalSetConfig)
    mp100: MP100DataConfig = field(default_factory=MP100DataConfig)
    steps: int = 1500  # optimisation steps (the upper bound when time_limit_minutes is set)
    time_limit_minutes: float = 0.0  # > 0: fit the step count (and LR schedule) to this training time
    batch_size: int = 16  # pairs per step and device
    lr: float = 5e-4  # AdamW peak learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up steps, then cosine decay
    lambda_heat: float = 10.0  # weight of the heatmap MSE
    heat_sigma: float = 1.0  # heatmap target std (stride-4 cells)
    num_workers: int = 1  # DataLoader workers
    print_every: int = 100  # print the mean loss every this many steps (0 = never)
    cache: bool = True  # cache the render sets under ~/.cache/dynapose4d (or $DYNAPOSE4D_CACHE)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(accelerator="auto", progress_bar=True,
                                                                         log_every_n_steps=20))

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": Bound(0, 2**32 - 1), "steps": AT_LEAST_1, "time_limit_minutes": AT_LEAST_0, "batch_size": AT_LEAST_1,
        "lr": AT_LEAST_0, "weight_decay": AT_LEAST_0, "warmup_steps": AT_LEAST_0, "lambda_heat": AT_LEAST_0,
        "heat_sigma": POSITIVE, "num_workers": AT_LEAST_0, "print_every": AT_LEAST_0,
    }


def load_train_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> CapeTrainConfig:
    """Defaults, then a YAML file, then `key.sub=value` overrides; ConfigError naming the key on a bad one."""
    obj = merge_structured(CapeTrainConfig, path, overrides)
    check_strategy(obj.trainer)
    try:
        obj.model.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return obj


def _on_cuda(cfg: CapeTrainConfig) -> bool:
    return uses_cuda(cfg.trainer.accelerator)


class _PrintProgress:
    """A Lightning callback printing the mean loss every `every` steps on rank zero (train-cape has no logger)."""

    def __init__(self, every: int, log: Any = print) -> None:
        from lightning.pytorch.callbacks import Callback

        outer = self

        class _CB(Callback):
            def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
                outer.losses.append(float(outputs["loss"]))
                step = trainer.global_step
                if trainer.is_global_zero and (step % outer.every == 0 or step >= pl_module.steps):
                    mean = sum(outer.losses) / len(outer.losses)
                    outer.log(f"cape: step {step}/{pl_module.steps} loss {mean:.4f} "
                              f"({time.perf_counter() - outer.t0:.0f} s)")
                    outer.losses.clear()

        self.every, self.log, self.losses, self.t0 = max(1, every), log, [], time.perf_counter()
        self.callback = _CB()


def _initial_model(cfg: CapeTrainConfig) -> Any:
    """A random CAPEModel of `cfg.model`, or the weights of `cfg.init` (ConfigError when its model differs)."""
    if not cfg.init:
        return CAPEModel(cfg.model)
    model = load_cape(cfg.init)
    have, want = asdict(model.cfg), asdict(cfg.model)
    if have != want:
        diff = sorted(k for k, v in want.items() if have.get(k) != v)
        raise ConfigError(f"{cfg.init}: init checkpoint's model differs from the config's model in {', '.join(diff)}")
    return model.train()


def train_cape(cfg: CapeTrainConfig, out: str | Path, log: Any = print) -> dict[str, Any] | None:
    """Train, evaluate and write the checkpoint at `out` (rank zero). Returns the metrics (None on other ranks).
    On CUDA the float32 matmuls run as TF32 for this call only (the process's setting is restored after it)."""
    with float32_matmul_precision("high" if _on_cuda(cfg) else None):
        return _train(cfg, out, log)


def _train(cfg: CapeTrainConfig, out: str | Path, log: Any) -> dict[str, Any] | None:
    t_start = time.perf_counter()
    cuda = _on_cuda(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    devices = max(1, int(cfg.trainer.devices))
    model = _initial_model(cfg)  # before the data: a bad init fails first, and the init does not depend on the cache
    train_set = load_or_generate("train", cfg.data, cfg.cache, log)
    t_data = time.perf_counter() - t_start
    length = (cfg.steps + 1) * cfg.batch_size * devices
    dataset: Any = PairDataset(train_set, cfg.augment, length, seed=cfg.seed)
    if cfg.mp100.root:
        mp = MP100Pairs(load_split(cfg.mp100.root, cfg.mp100.split, "train"), cfg.model.input_size, length,
                        seed=cfg.seed)
        dataset = MixedPairs(dataset, mp, cfg.mp100.fraction, seed=cfg.seed)
    module = CAPEModule(model, cfg.lr, cfg.weight_decay, cfg.warmup_steps, cfg.steps, cfg.lambda_heat, cfg.heat_sigma,
                        time_limit_s=cfg.time_limit_minutes * 60.0)
    tc = cfg.trainer
    trainer = L.Trainer(
        max_steps=cfg.steps, max_epochs=-1, accelerator=tc.accelerator, devices=devices,
        strategy=tc.strategy if devices > 1 else "auto", precision=resolve_precision(tc.precision, tc.accelerator),
        logger=False,
        enable_checkpointing=False, enable_progress_bar=tc.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=tc.log_every_n_steps, default_root_dir=str(Path(out).parent),
        callbacks=[_PrintProgress(max(1, cfg.print_every), log).callback] if cfg.print_every > 0 else None,
    )
    t0 = time.perf_counter()
    fit(module, trainer, pair_loader(dataset, cfg.batch_size, cfg.num_workers, pin_memory=cuda))
    t_train = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    eval_set = load_or_generate("eval", cfg.eval, cfg.cache, log)
    model = module.model.eval().to("cuda" if cuda else "cpu")
    t1 = time.perf_counter()
    res = evaluate(model, eval_set)
    t_eval = time.perf_counter() - t1
    table = format_table(res, f"held-out procedural objects ({len(eval_set.seeds)} objects, seeds >= 10^6), "
                              f"support frame 0, queries: every frame, azimuth offset groups")
    log(table)
    steps = int(trainer.global_step) or int(trainer.callback_metrics.get("cape/step", 0))  # (ddp_spawn: 0 here)
    metrics = {"eval": res, "steps": steps, "train_seconds": round(t_train, 1),
               "data_seconds": round(t_data, 1), "eval_seconds": round(t_eval, 1),
               "total_seconds": round(time.perf_counter() - t_start, 1),
               "device": torch.cuda.get_device_name(0) if cuda else "cpu", "devices": devices}
    save_cape(out, model.cpu(), {"config": OmegaConf.to_container(OmegaConf.structured(cfg)), "metrics": metrics,
                                  "command": " ".join(sys.argv)})
    size_mb = Path(out).stat().st_size / 2**20
    log(f"cape: wrote {out} ({size_mb:.1f} MB): {metrics['steps']} steps, train {t_train:.0f} s, data {t_data:.0f} s, "
        f"eval {t_eval:.0f} s, total {metrics['total_seconds']:.0f} s")
    return metrics


DEFAULT_OUT = "runs/cape/cape.ckpt"  # where `train-cape` writes without --out (never the shipped checkpoint)


def train_cape_cli(args: Any) -> int:
    """`dynapose4d train-cape [--out PATH] [--config FILE] [--set key=value ...]` (default out: DEFAULT_OUT)."""
    cfg = load_train_config(args.config, list(args.overrides))
    train_cape(cfg, args.out or DEFAULT_OUT)
    return 0
