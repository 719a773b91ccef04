"""The 4D Gaussians as one splat file per frame, written by `gsplat.export_splats`.

Formats (gsplat's): "ply" (the standard 3DGS layout: x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3,
raw parameters: log scales, logit opacity, SH coefficients with f_rest channel-major; read by almost every
viewer), "ply_compressed" (SuperSplat's compressed PLY: quantised chunks, splats of opacity < 1/255 dropped),
"splat" (antimatter15's .splat: 32 bytes per splat, sorted by a Morton code, degree-0 colour only).

Frame names: `frame_000.ply`, `frame_001.ply`, ... (`frame_000.compressed.ply`, `frame_000.splat`), zero-padded to
at least three digits so that name order is frame order. SuperSplat plays a dropped set of PLY files as an
animation ordered by the trailing number (its PLY-sequence loader also accepts `.compressed.ply`), and
sequence converters such as ply-to-splatv expect the same `frame_NNN.ply` names.

Frame f is the canonical Gaussians moved by φ at τ = f / (T − 1), turned to the requested up axis
(`dynapose4d.export.axes`): means and orientations are rotated, and so are the view-dependent colours (SH
degrees >= 1, exactly, degree by degree); the pipeline's own models are degree 0 (shN empty), for which
colours do not depend on the rotation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gsplat import export_splats

from dynapose4d.core import seeding
from dynapose4d.core.io import atomic_path
from dynapose4d.deform import Deformation, geometry_at
from dynapose4d.export.axes import rotate_points, rotate_quats, up_matrix
from dynapose4d.gaussians import GaussianModel

SPLAT_FORMATS: tuple[str, ...] = ("ply", "ply_compressed", "splat")
_SUFFIX = {"ply": ".ply", "ply_compressed": ".compressed.ply", "splat": ".splat"}


def frame_name(frame: int, num_frames: int, fmt: str = "ply") -> str:
    """File name of frame `frame` of `num_frames` in format `fmt` ('frame_007.ply')."""
    width = max(3, len(str(max(num_frames - 1, 0))))
    return f"frame_{frame:0{width}d}{_SUFFIX[fmt]}"


def sh_rotation(degree: int, R: np.ndarray) -> torch.Tensor:
    """The linear map [2d+1, 2d+1] taking SH coefficients of degree `degree` (gsplat/3DGS real basis) of a
    function f to those of f∘Rᵀ, i.e. the colour seen along R·v after rotating the scene by R equals the colour
    seen along v before. Each degree's span is closed under rotation, so a least-squares fit on sample
    directions is exact (to float64 rounding)."""
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast  # gsplat's reference SH basis (pure torch)

    g = seeding.torch_generator(0)
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=g, dtype=torch.float64), dim=-1)
    lo, hi = degree * degree, (degree + 1) ** 2
    Y = _eval_sh_bases_fast(hi, dirs)[:, lo:hi]  # [M, 2d+1]
    Yr = _eval_sh_bases_fast(hi, dirs @ torch.as_tensor(R, dtype=torch.float64))[:, lo:hi]  # Y(Rᵀ d)
    return torch.linalg.lstsq(Y, Yr).solution  # [2d+1, 2d+1]: Y(Rᵀ d) = Y(d) · M


def rotate_sh(shN: torch.Tensor, up: str) -> torch.Tensor:
    """SH coefficients of degrees >= 1 [N, K, 3] (K = (d+1)² − 1) in the frame of `up`."""
    K = shN.shape[1]
    if K == 0 or up == "+y":
        return shN
    degree = int(round((K + 1) ** 0.5)) - 1
    if (degree + 1) ** 2 - 1 != K:
        raise ValueError(f"shN has {K} coefficients per channel, not (d+1)^2 - 1 for any degree d")
    R = up_matrix(up)
    out = torch.empty_like(shN)
    for d in range(1, degree + 1):
        lo, hi = d * d - 1, (d + 1) ** 2 - 1  # shN leaves out degree 0
        M = sh_rotation(d, R).to(shN)
        out[:, lo:hi] = torch.einsum("ij,njc->nic", M, shN[:, lo:hi])
    return out


def frame_gaussians(canonical: GaussianModel, phi: Deformation | None, frame: int, num_frames: int, up: str
                    ) -> dict[str, torch.Tensor]:
    """Raw parameters (gsplat's `splats` names) of the Gaussians at frame `frame` in the frame of `up`:
    means [N, 3], scales [N, 3] (log), quats [N, 4], opacities [N] (logit), sh0 [N, 1, 3], shN [N, K, 3]."""
    s = {k: v.detach().float().cpu() for k, v in canonical.splats.items()}
    with torch.no_grad():
        means, scales, quats = geometry_at(s, phi, frame / max(num_frames - 1, 1))
    return {
        "means": rotate_points(means, up), "scales": scales, "quats": rotate_quats(quats, up),
        "opacities": s["opacities"], "sh0": s["sh0"], "shN": rotate_sh(s["shN"], up),
    }


def write_splats(gaussians: dict[str, torch.Tensor], path: str | Path, fmt: str = "ply") -> Path:
    """Write raw Gaussian parameters with `gsplat.export_splats` (to a temporary name, then renamed)."""
    if fmt not in SPLAT_FORMATS:
        raise ValueError(f"splat format {fmt!r}: choose from {list(SPLAT_FORMATS)}")
    g = gaussians
    with atomic_path(path) as tmp:
        export_splats(g["means"], g["scales"], g["quats"], g["opacities"], g["sh0"], g["shN"], format=fmt,
                      save_to=str(tmp))
    return Path(path)


def export_splat_sequence(canonical: GaussianModel, phi: Deformation | None, num_frames: int,
                          out_dir: str | Path, up: str = "-y", fmt: str = "ply") -> list[Path]:
    """One splat file per frame (`frame_name`) of the 4D model in `out_dir`; returns the paths in frame order."""
    out_dir = Path(out_dir)
    return [write_splats(frame_gaussians(canonical, phi, f, num_frames, up), out_dir / frame_name(f, num_frames, fmt),
                         fmt) for f in range(num_frames)]
