"""Diffusion priors built from diffusers / transformers parts: lazy, frozen, never in a checkpoint.

- `dynapose4d.priors.sds`: score-distillation helpers shared by the stages (timestep annealing, w = 1 − ᾱ_t,
  classifier-free guidance, the SDS surrogate loss).
- `dynapose4d.priors.zero123`: Zero-1-to-3 novel-view SDS (static stage, optional in the dynamic stage).
- `dynapose4d.priors.svd`: Stable Video Diffusion driving videos (dynamic stage).

Import the submodule you need; this package imports nothing heavy.
"""
