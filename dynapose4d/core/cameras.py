"""Orbit cameras and pinhole intrinsics (the contract of docs/cameras.md).

World: right-handed, +y up, object centred at the origin inside the unit sphere.
Cameras: 4x4 world-to-camera matrices in the OpenCV convention (x right, y down, z forward).
Camera centre = radius * (cos e * sin a, sin e, cos e * cos a): azimuth 0 is the front view (camera on
+z), azimuth 90 puts the camera on +x, elevation > 0 is above the object looking down.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dynapose4d.core.errors import InputError

REFERENCE_RADIUS = 2.0
REFERENCE_FOV_Y = 49.1  # degrees; the DreamGaussian4D / Consistent4D setting


@dataclass(frozen=True)
class Camera:
    """An orbit camera around the origin. Angles in degrees."""

    name: str = "ref"
    elevation: float = 0.0
    azimuth: float = 0.0
    radius: float = REFERENCE_RADIUS
    fov_y: float = REFERENCE_FOV_Y

    def viewmat(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """World-to-camera matrix [4, 4]."""
        return orbit_camera(self.elevation, self.azimuth, self.radius, dtype=dtype)

    def K(self, width: int, height: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Intrinsics [3, 3] for an image of `width` x `height` pixels."""
        return intrinsics(self.fov_y, width, height, dtype=dtype)

    def centre(self) -> torch.Tensor:
        """Camera centre in world coordinates [3]."""
        return camera_centre(self.elevation, self.azimuth, self.radius)

    def to_dict(self) -> dict:
        return asdict(self)


REFERENCE_CAMERA = Camera("ref", 0.0, 0.0, REFERENCE_RADIUS, REFERENCE_FOV_Y)

#: Consistent4D's evaluation cameras: azimuths -75, 15, 105, 195 at elevation 0, radius 2, fov_y 49.1.
CONSISTENT4D_CAMERAS: tuple[Camera, ...] = tuple(
    Camera(f"c4d_az{a:+04d}", 0.0, float(a), REFERENCE_RADIUS, REFERENCE_FOV_Y) for a in (-75, 15, 105, 195)
)


def camera_centre(elevation_deg: float, azimuth_deg: float, radius: float) -> torch.Tensor:
    """Camera centre [3] (float64) of an orbit camera."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return torch.tensor(
        [radius * math.cos(e) * math.sin(a), radius * math.sin(e), radius * math.cos(e) * math.cos(a)],
        dtype=torch.float64,
    )


def look_at(eye: torch.Tensor, target: torch.Tensor | None = None, up: torch.Tensor | None = None) -> torch.Tensor:
    """OpenCV world-to-camera matrix [4, 4] (float64) of a camera at `eye` [3] looking at `target` [3]."""
    eye = eye.to(torch.float64)
    target = torch.zeros(3, dtype=torch.float64) if target is None else target.to(torch.float64)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) if up is None else up.to(torch.float64)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)  # right = forward x up; then y = forward x right points down
    if x.norm() < 1e-9:  # looking straight up/down: any right vector perpendicular to z
        x = torch.linalg.cross(z, torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z], dim=0)  # rows: camera axes in world coordinates
    M = torch.eye(4, dtype=torch.float64)
    M[:3, :3] = R
    M[:3, 3] = -R @ eye
    return M


def orbit_camera(
    elevation_deg: float, azimuth_deg: float, radius: float = REFERENCE_RADIUS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """World-to-camera matrix [4, 4] (OpenCV) of a camera on the orbit, looking at the origin."""
    return look_at(camera_centre(elevation_deg, azimuth_deg, radius)).to(dtype)


def intrinsics(fov_y_deg: float, width: int, height: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pinhole intrinsics [3, 3]: fy = fx = H / (2 tan(fov_y / 2)), cx = W / 2, cy = H / 2."""
    f = height / (2.0 * math.tan(math.radians(fov_y_deg) / 2.0))
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)


def project(points: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points [..., 3] to pixels [..., 2] (pixel centres at +0.5) and camera depth [...]."""
    R, t = viewmat[:3, :3].to(points.dtype), viewmat[:3, 3].to(points.dtype)
    pc = points @ R.T + t  # [..., 3]
    z = pc[..., 2]
    uv = pc[..., :2] / z.unsqueeze(-1).clamp(min=1e-8)
    K = K.to(points.dtype)
    px = torch.stack([K[0, 0] * uv[..., 0] + K[0, 2], K[1, 1] * uv[..., 1] + K[1, 2]], dim=-1)
    return px, z


def depth_visibility(points: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, depth: torch.Tensor,
                     alpha: torch.Tensor, width: int, height: int, tolerance: float | torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which world points [N, 3] each of C views sees, given that view's rendered expected depth [C, H, W] and
    alpha [C, H, W]: (pixels [C, N, 2] float32, visible [C, N], inside [C, N]). inside: in the image and in front
    of the camera; visible: inside and, where the pixel is covered (alpha > 0.5), not more than `tolerance`
    (world units, a float or one per point [N]) behind the rendered surface. The points are projected with
    `viewmats` [C, 4, 4] and `Ks` [C, 3, 3] in the dtype given (float64 points and matrices for exact pixels)."""
    pts, vis, ins = [], [], []
    for c in range(viewmats.shape[0]):
        px, d = project(points, viewmats[c], Ks[c])  # [N, 2], [N]
        inside = (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height) & (d > 0)
        col = px[:, 0].floor().long().clamp(0, width - 1)
        row = px[:, 1].floor().long().clamp(0, height - 1)
        hidden = (alpha[c, row, col] > 0.5) & (depth[c, row, col].double() < d - tolerance)
        pts.append(px.float())
        vis.append(inside & ~hidden)
        ins.append(inside)
    return torch.stack(pts), torch.stack(vis), torch.stack(ins)


def unproject(pixels: torch.Tensor, depth: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Inverse of `project`: pixels [..., 2] and camera depth [...] to world points [..., 3]."""
    K = K.to(pixels.dtype)
    x = (pixels[..., 0] - K[0, 2]) / K[0, 0] * depth
    y = (pixels[..., 1] - K[1, 2]) / K[1, 1] * depth
    pc = torch.stack([x, y, depth], dim=-1)
    R, t = viewmat[:3, :3].to(pixels.dtype), viewmat[:3, 3].to(pixels.dtype)
    return (pc - t) @ R  # R^T (pc - t)


def _camera_from_dict(d: dict, path: Path, default_name: str) -> Camera:
    if not isinstance(d, dict):
        raise InputError(f"{path}: each camera must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"name", "elevation", "azimuth", "radius", "fov_y"}
    if unknown:
        raise InputError(f"{path}: unknown camera key(s) {sorted(unknown)}")
    try:
        cam = Camera(
            name=str(d.get("name", default_name)),
            elevation=float(d.get("elevation", 0.0)),
            azimuth=float(d.get("azimuth", 0.0)),
            radius=float(d.get("radius", REFERENCE_RADIUS)),
            fov_y=float(d.get("fov_y", REFERENCE_FOV_Y)),
        )
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: camera values must be numbers ({e})") from None
    values = (cam.elevation, cam.azimuth, cam.radius, cam.fov_y)
    if not all(math.isfinite(v) for v in values) or cam.radius <= 0 or not 0 < cam.fov_y < 180:
        raise InputError(f"{path}: camera {cam.name!r} needs finite numbers, radius > 0 and fov_y in (0, 180), got "
                         f"elevation {cam.elevation}, azimuth {cam.azimuth}, radius {cam.radius}, fov_y {cam.fov_y}")
    return cam


def read_json(path: str | Path):
    """Parsed JSON of `path`; a missing or unreadable file is a one-line InputError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8-sig"))  # a byte-order mark is skipped
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable JSON ({e})") from None


def load_camera(path: str | Path) -> Camera:
    """Read a single camera JSON ({"elevation", "azimuth", "radius", "fov_y"}), e.g. a scene's camera.json."""
    path = Path(path)
    return _camera_from_dict(read_json(path), path, "ref")


def load_cameras(path: str | Path) -> list[Camera]:
    """Read a camera list JSON ([{"name", "elevation", "azimuth", "radius", "fov_y"}, ...])."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise InputError(f"{path}: expected a non-empty JSON list of cameras")
    cams = [_camera_from_dict(d, path, f"cam{i:02d}") for i, d in enumerate(data)]
    names = [c.name for c in cams]
    if len(set(names)) != len(names):
        raise InputError(f"{path}: camera names must be unique, got {names}")
    return cams


def save_camera(camera: Camera, path: str | Path) -> None:
    """Write a single camera JSON (no name), the scene's camera.json format."""
    d = camera.to_dict()
    d.pop("name")
    Path(path).write_text(json.dumps(d, indent=2))


def save_cameras(cameras: list[Camera] | tuple[Camera, ...], path: str | Path) -> None:
    """Write a camera list JSON (the gt/cameras.json and views/cameras.json format)."""
    Path(path).write_text(json.dumps([c.to_dict() for c in cameras], indent=2))


def stack_cameras(
    cameras: list[Camera] | tuple[Camera, ...], width: int, height: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """viewmats [C, 4, 4] and Ks [C, 3, 3] of a camera list, float32 on `device`."""
    viewmats = torch.stack([c.viewmat() for c in cameras]).to(device)
    Ks = torch.stack([c.K(width, height) for c in cameras]).to(device)
    return viewmats, Ks
