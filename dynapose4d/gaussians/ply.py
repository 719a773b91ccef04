"""Standard 3DGS PLY (binary little-endian): x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3.

Written by `gsplat.export_splats(format="ply")` (as `dynapose4d export` does); `load_ply` also reads files with the
original 3DGS code's zero normals nx ny nz: raw parameters (log scales, logit
opacity, SH coefficients), `f_rest_*` channel-major ([3, K] flattened). Opens in common splat viewers. Round
trip is exact (float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import write_bytes
from dynapose4d.gaussians.model import GaussianModel


def save_ply(model: GaussianModel, path: str | Path) -> None:
    """Write `model` as a 3DGS PLY through `gsplat.export_splats` (the standard layout: x y z f_dc_0..2 f_rest_*
    opacity scale_0..2 rot_0..3), written to a temporary name and renamed (never half-written). Raises ValueError
    on non-finite parameters (gsplat would drop those Gaussians silently)."""
    from gsplat import export_splats

    s = {k: v.detach().cpu().float() for k, v in model.splats.items()}
    bad = ~torch.cat([v.reshape(v.shape[0], -1) for v in s.values()], dim=1).isfinite().all(dim=1)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} Gaussians with non-finite parameters")
    data = export_splats(s["means"], s["scales"], s["quats"], s["opacities"], s["sh0"], s["shN"], format="ply")
    write_bytes(path, data)


def load_ply(path: str | Path) -> GaussianModel:
    """Read a 3DGS PLY (binary little-endian, float properties) into a GaussianModel."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read PLY ({e.strerror})") from None
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply") or end < 0:
        raise InputError(f"{path}: not a PLY file")
    header = raw[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise InputError(f"{path}: only binary_little_endian PLY is supported")
    n, names, types = 0, [], []
    for line in header:
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts[:1] == ["property"]:
            types.append(parts[1])
            names.append(parts[2])
    dtype_map = {"float": "<f4", "float32": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4", "uint8": "u1"}
    try:
        dt = np.dtype([(nm, dtype_map[t]) for nm, t in zip(names, types)])
    except KeyError as e:
        raise InputError(f"{path}: unsupported PLY property type {e}") from None
    body = raw[end + len(b"end_header\n"):]
    if len(body) < n * dt.itemsize:
        raise InputError(f"{path}: truncated PLY ({len(body)} bytes for {n} vertices)")
    arr = np.frombuffer(body, dtype=dt, count=n)
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [m for m in need if m not in names]
    if missing:
        raise InputError(f"{path}: not a 3DGS PLY, missing properties {missing}")

    def col(*ks: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([arr[k].astype(np.float32) for k in ks], axis=1).copy())

    rest = sorted((nm for nm in names if nm.startswith("f_rest_")), key=lambda s: int(s.split("_")[-1]))
    k = len(rest) // 3
    shN = col(*rest).reshape(n, 3, k).transpose(1, 2) if k else torch.zeros(n, 0, 3)
    return GaussianModel(
        means=col("x", "y", "z"),
        scales=col("scale_0", "scale_1", "scale_2"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        opacities=col("opacity")[:, 0],
        sh0=col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        shN=shN.contiguous(),
    )
