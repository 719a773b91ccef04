"""The cape stage's LightningModule: `CAPEModule` trains a `CAPEModel` on support/query pairs (the per-object
fine-tuning of the cape stage, and the generic model of `dynapose4d train-cape`), with `pair_loader` and `fit`.

Loss per step (`dynapose4d.cape.model.cape_loss`): λ_heat × heatmap MSE + L1 of the proposal + L1 of every
decoder layer, each normalised by the number of weighted keypoints. The stage's wiring and outputs:
`dynapose4d.stages.cape.stage`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from dynapose4d.cape.data import PairDataset, collate_pairs
from dynapose4d.cape.model import CAPEModel, cape_loss
from dynapose4d.stages.base import quiet_fit

STAGE = "cape"


class CAPEModule(L.LightningModule):
    """Trains a `CAPEModel` on pair batches (`collate_pairs`): heatmap MSE + L1 of the proposal and every layer.

    Learning rate: linear warm-up, then cosine decay to 2% over `steps`. With `time_limit_s` > 0 the number of
    steps is re-estimated at step 20 and then every 50 steps from the measured time per step (since step 20,
    so start-up is not counted) so that training ends, with the schedule completed, within that time even when
    the machine's speed changes; the estimate is rank zero's, broadcast to every rank."""

    def __init__(self, model: CAPEModel, lr: float = 5e-4, weight_decay: float = 1e-4, warmup_steps: int = 100,
                 steps: int = 1000, lambda_heat: float = 10.0, heat_sigma: float = 1.0, time_limit_s: float = 0.0,
                 prefix: str = STAGE, shared_support: bool = False) -> None:
        super().__init__()
        self.model = model
        self.shared_support = shared_support  # batches whose pairs all have the same support image
        self.lr, self.weight_decay, self.warmup = lr, weight_decay, warmup_steps
        self.steps = self.planned_steps = int(steps)
        self.lambda_heat, self.heat_sigma = lambda_heat, heat_sigma
        self.time_limit_s, self.prefix = float(time_limit_s), prefix
        self._t0: float | None = None
        self._t20 = 0.0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if self.shared_support:  # every pair has the same support image: one backbone pass for the batch
            tokens = self.model.support_tokens(batch["support"][:1], batch["support_keypoints"][:1], batch["mask"])
            return self.model.forward_tokens(tokens, batch["mask"], batch["adjacency"], batch["query"])
        return self.model(batch["support"], batch["support_keypoints"], batch["mask"], batch["adjacency"],
                          batch["query"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)  # heatmaps, proposal and every decoder layer's points (normalised)
        # loss = λ_heat · heatmap MSE + L1 of the proposal + Σ over decoder layers of the points' L1 (cape_loss)
        losses = cape_loss(out, batch["query_keypoints"], batch["weight"], self.heat_sigma, self.lambda_heat,
                           heat_mask=batch["heat_mask"])
        self.log_dict({f"{self.prefix}/{k}": v for k, v in losses.items()}, prog_bar=False,
                      batch_size=batch["query"].shape[0])
        self.log(f"{self.prefix}/lr", self.optimizers().param_groups[0]["lr"], batch_size=1)
        self.log(f"{self.prefix}/step", float(self.global_step + 1), batch_size=1)  # survives ddp_spawn
        return losses["loss"]

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        p = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * p))

    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        step = self.global_step
        if self.time_limit_s > 0 and self._t0 is not None and (step == 20 or (step > 20 and step % 50 == 0)):
            now = time.perf_counter()
            if step == 20:
                self._t20 = now
                per_step = (now - self._t0) / step
            else:
                per_step = (now - self._t20) / (step - 20)
            est = step + int((self.time_limit_s - (now - self._t0)) / per_step)
            est = int(self.trainer.strategy.broadcast(min(self.planned_steps, max(est, step + 1)), src=0))
            self.steps = est
        for g in self.optimizers().param_groups:
            g["lr"] = self.lr * self.lr_factor(step)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step >= self.steps:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cape_steps"] = self.steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.steps = int(checkpoint.get("cape_steps", self.steps))


def pair_loader(dataset: PairDataset, batch_size: int, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The training DataLoader of pairs (sequential indices: items are deterministic; DDP splits them)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_pairs,
                      drop_last=True, persistent_workers=num_workers > 0, pin_memory=pin_memory)


def fit(module: CAPEModule, trainer: Any, loader: DataLoader, ckpt_path: str | None = None) -> None:
    """`trainer.fit` without the warnings that do not apply (few workers, step-based training)."""
    with quiet_fit():
        trainer.fit(module, loader, ckpt_path=ckpt_path)
