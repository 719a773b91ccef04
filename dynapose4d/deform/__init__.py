"""Deformation fields φ(S, τ) that move canonical Gaussians over normalised time τ ∈ [0, 1].

Two kinds, chosen by `dynamic.deform`: `HexPlaneDeformation` (DreamGaussian4D / 4DGaussians) and
`ControlPointDeformation` (SC4D sparse controls). Both are plain `nn.Module`s with the same call:
`phi(means[N,3], scales[N,3] log, quats[N,4], tau[B]) -> {"means": [B,N,3], "scales": [B,N,3] log,
"quats": [B,N,4]}`, both start at the identity, and both give Adam groups through `param_groups()`.
"""

from __future__ import annotations

from dynapose4d.deform.control import ControlConfig, ControlPointDeformation
from dynapose4d.deform.fields import (
    DEFORM_KINDS,
    Deformation,
    build_deformation,
    deformation_from_state,
    deformation_state,
)
from dynapose4d.deform.hexplane import HexPlaneConfig, HexPlaneDeformation, time_coordinate
from dynapose4d.deform.model4d import (
    gaussians_at,
    geometry_at,
    load_dynamic,
    read_dynamic,
    render_4d,
    save_dynamic,
)

__all__ = [
    "ControlConfig", "ControlPointDeformation", "DEFORM_KINDS", "Deformation", "HexPlaneConfig",
    "HexPlaneDeformation", "build_deformation", "deformation_from_state", "deformation_state", "gaussians_at",
    "geometry_at", "load_dynamic", "read_dynamic", "render_4d", "save_dynamic", "time_coordinate",
]
