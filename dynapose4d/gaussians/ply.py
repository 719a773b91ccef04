"""Standard 3DGS PLY (binary little-endian): x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3.

The layout of the original 3DGS code (`gsplat.export_splats(format="ply")`, which `dynapose4d export` uses,
writes the same without the zero normals nx ny nz; `load_ply` reads both): raw parameters (log scales, logit
opacity, SH coefficients), `f_rest_*` channel-major ([3, K] flattened). Opens in common splat viewers. Round
trip is exact (float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dynapose4d.errors import InputError
from dynapose4d.gaussians.model import GaussianModel
from dynapose4d.io import write_bytes


def _property_names(k: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * k)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(model: GaussianModel, path: str | Path) -> None:
    """Write `model` as a 3DGS PLY; written to a temporary name and renamed (never half-written)."""
    s = {k: v.detach().cpu().float() for k, v in model.splats.items()}
    n, k = s["means"].shape[0], s["shN"].shape[1]
    cols = [
        s["means"], torch.zeros(n, 3), s["sh0"][:, 0, :],
        s["shN"].transpose(1, 2).reshape(n, 3 * k),  # channel-major, as 3DGS
        s["opacities"][:, None], s["scales"], s["quats"],
    ]
    data = torch.cat(cols, dim=1).numpy().astype("<f4")
    names = _property_names(k)
    header = "ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
    header += "".join(f"property float {name}\n" for name in names) + "end_header\n"
    write_bytes(path, header.encode("ascii") + np.ascontiguousarray(data).tobytes())


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
