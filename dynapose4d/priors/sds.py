"""Score distillation sampling (SDS, DreamFusion) helpers, independent of the diffusion model.

For latents z of a rendered image, a timestep t and noise ε: z_t = sqrt(ᾱ_t)·z + sqrt(1 − ᾱ_t)·ε, the frozen
model predicts ε̂ (with classifier-free guidance ε̂ = ε̂_u + s·(ε̂_c − ε̂_u)), and the SDS gradient on z is
w(t)·(ε̂ − ε) with w(t) = 1 − ᾱ_t. `sds_loss` returns the usual surrogate 0.5·‖z − sg(z − grad)‖² (summed,
as DreamGaussian does), whose gradient with respect to z is exactly that.

Timesteps: DreamGaussian anneals t deterministically from 0.98·T to 0.02·T over training
(t = round((1 − progress)·T) clipped to [0.02·T, 0.98·T]); `anneal=False` samples t uniformly in that range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dynapose4d.core.structured import AT_LEAST_0, FRACTION, Rule


@dataclass
class SDSConfig:
    """Score-distillation settings (DreamGaussian's Zero-1-to-3 defaults)."""

    guidance_scale: float = 5.0  # classifier-free guidance scale s (DreamGaussian / Zero-1-to-3: 5)
    t_min: float = 0.02  # smallest timestep, as a fraction of the model's training timesteps
    t_max: float = 0.98  # largest timestep (fraction)
    anneal: bool = True  # t goes from t_max to t_min over training; False: uniform in [t_min, t_max]

    RULES: ClassVar[dict[str, Rule]] = {"guidance_scale": AT_LEAST_0, "t_min": FRACTION, "t_max": FRACTION}


def sds_timesteps(progress: float, batch: int, num_train_timesteps: int, cfg: SDSConfig,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer timesteps [batch] for training progress in [0, 1] (see the module docstring)."""
    lo = int(num_train_timesteps * cfg.t_min)
    hi = int(num_train_timesteps * cfg.t_max)
    if cfg.anneal:
        t = min(max(round((1.0 - float(progress)) * num_train_timesteps), lo), hi)
        return torch.full((batch,), t, dtype=torch.long)
    return torch.randint(lo, hi + 1, (batch,), generator=generator, dtype=torch.long)


def sds_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """w(t) = 1 − ᾱ_t, shaped [B, 1, 1, 1] for latents [B, C, h, w]."""
    return (1.0 - alphas_cumprod.to(t.device)[t]).view(-1, 1, 1, 1)


def cfg_combine(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ε̂_u + s·(ε̂_c − ε̂_u)."""
    return pred_uncond + scale * (pred_cond - pred_uncond)


def sds_loss(latents: torch.Tensor, noise_pred: torch.Tensor, noise: torch.Tensor,
             weight: torch.Tensor) -> torch.Tensor:
    """The SDS surrogate: a scalar whose gradient with respect to `latents` [B, C, h, w] is
    weight·(noise_pred − noise) (non-finite entries zeroed). Computed in float32."""
    grad = torch.nan_to_num(weight.float() * (noise_pred.float() - noise.float()))
    target = (latents.float() - grad).detach()
    return 0.5 * ((latents.float() - target) ** 2).sum()
