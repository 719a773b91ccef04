"""The 4D model: canonical Gaussians moved by a deformation φ over normalised time τ = f / (T − 1).

`load_dynamic(run_dir) -> (canonical GaussianModel, deformation)` rebuilds what the dynamic stage trained (from
RUN/dynamic/deform.ckpt); `geometry_at` gives the raw geometry at τ (the export's splat files),
`gaussians_at` the rasterizer inputs, and `render_4d` renders it: the one 4D renderer (the dynamic stage's
videos and report, `dynapose4d render`/`eval`, the showcase).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dynapose4d.core.cameras import Camera, stack_cameras
from dynapose4d.core.errors import InputError
from dynapose4d.core.io import load_checkpoint, save_checkpoint
from dynapose4d.deform.fields import Deformation, deformation_from_state, deformation_state
from dynapose4d.gaussians import GaussianModel
from dynapose4d.render import rasterize

CHECKPOINT_FORMAT = "dynapose4d-dynamic/1"


def save_dynamic(path: str | Path, canonical: GaussianModel, phi: Deformation, extra: dict[str, Any] | None = None
                 ) -> None:
    """Write the canonical Gaussians, the deformation and `extra` (plain data) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": CHECKPOINT_FORMAT,
        "canonical": {k: v.detach().cpu() for k, v in canonical.splats.items()},
        "deformation": deformation_state(phi),
        "extra": extra or {},
    }
    save_checkpoint(path, data)


def read_dynamic(path: str | Path) -> dict[str, Any]:
    """The raw content of a deform.ckpt (InputError when missing or not one)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no dynamic-stage checkpoint (run the dynamic stage first)")
    return load_checkpoint(path, CHECKPOINT_FORMAT, "dynamic checkpoint")


def load_dynamic(run_dir: str | Path) -> tuple[GaussianModel, Deformation]:
    """(canonical GaussianModel, deformation φ in eval mode) from RUN/dynamic/deform.ckpt, on the CPU.

    `phi.num_frames` is T; frame f is at τ = f / (T − 1). The reference camera and image size are the run's
    (the scene's camera.json or the default camera; the manifest's image_size), not stored here."""
    data = read_dynamic(Path(run_dir) / "dynamic" / "deform.ckpt")
    canonical = GaussianModel(**data["canonical"])
    phi = deformation_from_state(data["deformation"]).eval()
    return canonical, phi


def gaussians_at(canonical: GaussianModel, deform: Deformation | None, tau: float | torch.Tensor
                 ) -> dict[str, torch.Tensor]:
    """Activated rasterizer inputs (means, quats, scales, opacities, colors) of the Gaussians at time `tau`.

    `tau` a float (or 0-d tensor) gives means [N,3], quats [N,4], scales [N,3]; a 1-d tensor [B] gives them with a
    leading B. opacities [N] and colors [N,3] do not change over time. `deform=None` gives the canonical Gaussians.
    Differentiable (call under `torch.no_grad()` for rendering only)."""
    means, scales, quats = geometry_at(canonical.splats, deform, tau)
    return canonical.activated(means=means, quats=quats, scales=scales)


def geometry_at(splats: dict[str, torch.Tensor], deform: Deformation | None, tau: float | torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw geometry of canonical splats (gsplat's names) at time `tau`: means [N,3], log-scales [N,3], quats [N,4]
    (a 1-d `tau` [B]: with a leading B); `deform=None` keeps the canonical geometry."""
    s = splats
    t = torch.as_tensor(tau, dtype=torch.float32, device=s["means"].device)
    single = t.dim() == 0
    if deform is None:
        means, scales, quats = s["means"], s["scales"], s["quats"]
        if not single:
            B = t.shape[0]
            means, scales, quats = (x.unsqueeze(0).expand(B, *x.shape) for x in (means, scales, quats))
    else:
        d = deform(s["means"], s["scales"], s["quats"], t.reshape(-1))
        means, scales, quats = d["means"], d["scales"], d["quats"]
        if single:
            means, scales, quats = means[0], scales[0], quats[0]
    return means, scales, quats


@torch.no_grad()
def render_4d(canonical: GaussianModel, deform: Deformation | None, cameras: Sequence[Camera],
              taus: Sequence[float] | torch.Tensor, width: int, height: int, background: float | None = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4D model seen from `cameras` at times `taus`: RGB [F, C, H, W, 3] and alpha [F, C, H, W, 1] on the
    CPU. RGB is composited over the grey level `background`, or premultiplied when it is None
    (`io.straight_rgba` turns that into the scene folder's straight RGBA). `deform=None`: held still."""
    dev = canonical.splats["means"].device
    viewmats, Ks = stack_cameras(list(cameras), width, height, device=dev)
    bg = None if background is None else torch.full((len(cameras), 3), float(background), device=dev)
    rgbs, alphas = [], []
    for t in (taus.tolist() if torch.is_tensor(taus) else list(taus)):
        g = gaussians_at(canonical, deform, float(t))
        rgb, alpha, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                                  width, height, backgrounds=bg)  # [C, H, W, 3], [C, H, W, 1]
        rgbs.append(rgb.cpu())
        alphas.append(alpha.cpu())
    return torch.stack(rgbs), torch.stack(alphas)
