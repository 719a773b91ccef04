"""Diffusion priors built from diffusers / transformers parts: lazy, frozen, never in a checkpoint.

- `dynapose4d.priors.sds`: score-distillation helpers shared by the stages (timestep annealing, w = 1 − ᾱ_t,
  classifier-free guidance, the SDS surrogate loss).
- `dynapose4d.priors.zero123`: Zero-1-to-3 / Stable-Zero123 novel-view SDS (static stage, optional in the dynamic
  stage), one `Zero123Config` (the run config's top-level `zero123` section) for both.
- `dynapose4d.priors.svd`: Stable Video Diffusion driving videos (dynamic stage), a hashed artifact of the run.
- `dynapose4d.priors.framing`: non-square images padded with white to the models' aspect, and mapped back.

Import the submodule you need; this package imports nothing heavy.
"""
