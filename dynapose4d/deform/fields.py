"""Building a deformation field φ of either kind, and its state (kind, frame count, config, weights) for
checkpoints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from dynapose4d.deform.control import ControlConfig, ControlPointDeformation
from dynapose4d.deform.hexplane import HexPlaneConfig, HexPlaneDeformation

Deformation = HexPlaneDeformation | ControlPointDeformation
DEFORM_KINDS: tuple[str, ...] = ("hexplane", "control")


def build_deformation(
    kind: str,
    canonical_means: torch.Tensor,  # [N, 3]
    num_frames: int,
    hexplane: HexPlaneConfig | None = None,
    control: ControlConfig | None = None,
    seed: int = 0,
) -> Deformation:
    """A fresh (identity) deformation of `kind` ("hexplane" or "control") for T = `num_frames` frames."""
    if kind == "hexplane":
        return HexPlaneDeformation(num_frames, hexplane)
    if kind == "control":
        return ControlPointDeformation.init_from(canonical_means, num_frames, control, seed=seed)
    raise ValueError(f"unknown deformation kind {kind!r}; choose from {list(DEFORM_KINDS)}")


def deformation_state(phi: Deformation) -> dict[str, Any]:
    """Everything needed to rebuild `phi`: kind, frame count, its config and its weights."""
    state: dict[str, Any] = {
        "kind": phi.kind,
        "num_frames": phi.num_frames,
        "config": asdict(phi.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in phi.state_dict().items()},
    }
    if isinstance(phi, ControlPointDeformation):
        state["num_controls"] = int(phi.controls.shape[0])
    return state


def deformation_from_state(state: dict[str, Any]) -> Deformation:
    """Inverse of `deformation_state`."""
    kind = state["kind"]
    if kind == "hexplane":
        phi: Deformation = HexPlaneDeformation(state["num_frames"], HexPlaneConfig(**state["config"]))
    elif kind == "control":
        phi = ControlPointDeformation(state["num_frames"], torch.zeros(state["num_controls"], 3),
                                      ControlConfig(**state["config"]))
    else:
        raise ValueError(f"unknown deformation kind {kind!r} in checkpoint")
    phi.load_state_dict(state["state_dict"])
    return phi
