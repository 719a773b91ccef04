"""Diffusion priors built from diffusers / transformers parts: lazy, frozen, never in a checkpoint; and the
weight-free stand-in for the driving-video prior.

- `dynapose4d.priors.sds`: score-distillation helpers shared by the stages (timestep annealing, w = 1 − ᾱ_t,
  classifier-free guidance, the SDS surrogate loss).
- `dynapose4d.priors.zero123`: Zero-1-to-3 / Stable-Zero123 novel-view SDS (static stage, optional in the dynamic
  stage), one `Zero123Config` (the run config's top-level `zero123` section) for both.
- `dynapose4d.priors.svd`: Stable Video Diffusion driving videos (dynamic stage), a hashed artifact of the run.
- `dynapose4d.priors.puppet`: the driving video without weights, the picture moved on its own skeleton by rule
  (`dynamic.driver: puppet`); made, hashed and reused through `svd.driving_video` like SVD's.
- `dynapose4d.priors.framing`: non-square images padded with white to the models' aspect, and mapped back.

Nothing is downloaded at run time: a model is read from a local folder or the local Hugging Face cache, and a
missing one is a one-line `MissingWeightsError` with the command that fetches it (on a machine with a network).
Import the submodule you need; this package imports nothing heavy.
"""


def load_failure(e: BaseException, limit: int = 160) -> str:
    """A loader's exception as a short clause for a one-line missing-weights message."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "cached snapshot" in msg or "offline" in msg.lower() or type(e).__name__ == "LocalEntryNotFoundError":
        return "not in the local Hugging Face cache (nothing is downloaded at run time)"
    return msg if len(msg) <= limit else msg[: limit - 1].rsplit(" ", 1)[0] + "…"
