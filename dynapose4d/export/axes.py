"""Up axes of the exported files: one proper rotation from our world frame to the frame a tool expects.

Our world (docs/cameras.md, dynapose4d.core.cameras) is right-handed with +y up and the object's front facing +z (the
reference camera sits on +z). `--up` names the axis of the written file that our +y becomes:

  "+y": the identity. glTF 2.0 is +Y up with the front facing +Z, exactly our frame; Blender's glTF and BVH
        importers take +Y up files and turn them to Blender's +Z up themselves.
  "-y": a half turn about z, (x, y, z) -> (-x, -y, z). Splat viewers that follow the original 3DGS data
        (COLMAP/OpenCV world frames, y down), SuperSplat and the PlayCanvas engine among them, roll every
        splat file a half turn about z when they load it; the half turn here cancels theirs, so the object
        stands upright and faces the viewer's default camera as it faced our reference camera.
  "+z": a quarter turn about x, (x, y, z) -> (x, -z, y): our up becomes +z and our front -y, the front of
        Blender's and most CAD tools' z-up worlds (for tools that import files without converting axes).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dynapose4d.core.rotations import quat_multiply

UP_CHOICES: tuple[str, ...] = ("+y", "-y", "+z")


def up_matrix(up: str) -> np.ndarray:
    """The rotation [3, 3] (float64) taking our world frame to the frame whose up axis is `up`."""
    if up == "+y":
        return np.eye(3)
    if up == "-y":
        return np.diag([-1.0, -1.0, 1.0])
    if up == "+z":
        return np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    raise ValueError(f"up axis {up!r}: choose from {list(UP_CHOICES)}")


def up_quaternion(up: str) -> torch.Tensor:
    """The same rotation as a unit quaternion [4] (w, x, y, z)."""
    if up == "+y":
        return torch.tensor([1.0, 0.0, 0.0, 0.0])
    if up == "-y":
        return torch.tensor([0.0, 0.0, 0.0, 1.0])  # half turn about z
    if up == "+z":
        h = math.sqrt(0.5)
        return torch.tensor([h, h, 0.0, 0.0])  # quarter turn about x
    raise ValueError(f"up axis {up!r}: choose from {list(UP_CHOICES)}")


def rotate_points(points: np.ndarray | torch.Tensor, up: str) -> np.ndarray | torch.Tensor:
    """Points [..., 3] in the frame of `up` (same type as given)."""
    R = up_matrix(up)
    if torch.is_tensor(points):
        return points @ torch.as_tensor(R, dtype=points.dtype, device=points.device).T
    return np.asarray(points) @ R.T


def rotate_quats(quats: torch.Tensor, up: str) -> torch.Tensor:
    """Gaussian orientations [N, 4] (w, x, y, z, unnormalised; norms kept) in the frame of `up`: q' = q_up ⊗ q."""
    q = up_quaternion(up).to(quats)
    return quat_multiply(q.expand_as(quats), quats)
