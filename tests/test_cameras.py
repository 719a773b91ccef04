"""The camera convention of docs/cameras.md, pinned."""

import json
import math

import pytest
import torch

from dynapose4d.core.cameras import (
    CONSISTENT4D_CAMERAS,
    REFERENCE_CAMERA,
    Camera,
    camera_centre,
    intrinsics,
    load_camera,
    load_cameras,
    orbit_camera,
    project,
    save_camera,
    save_cameras,
    unproject,
)
from dynapose4d.core.errors import InputError


def centre_of(viewmat: torch.Tensor) -> torch.Tensor:
    R, t = viewmat[:3, :3].double(), viewmat[:3, 3].double()
    return -R.T @ t


@pytest.mark.parametrize(
    "elev,azim,expected",
    [(0, 0, (0, 0, 2)), (0, 90, (2, 0, 0)), (0, 180, (0, 0, -2)), (0, -90, (-2, 0, 0)), (90, 0, (0, 2, 0))],
)
def test_camera_positions(elev, azim, expected):
    c = centre_of(orbit_camera(elev, azim, 2.0, dtype=torch.float64))
    assert torch.allclose(c, torch.tensor(expected, dtype=torch.float64), atol=1e-9)


def test_elevation_is_above_and_looks_down():
    vm = orbit_camera(30, 0, 2.0, dtype=torch.float64)
    assert centre_of(vm)[1] > 0.9  # 2 sin 30
    forward = vm[2, :3]  # camera z axis in world coordinates
    assert forward[1] < 0  # looking down


def test_rotation_is_orthonormal_and_right_handed():
    for e, a in [(0, 0), (20, 37), (-40, 200), (89, 10)]:
        R = orbit_camera(e, a, 3.0, dtype=torch.float64)[:3, :3]
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
        assert torch.det(R) == pytest.approx(1.0, abs=1e-9)


def test_opencv_axes_front_view():
    """Front view: world +x appears right (u grows), world +y appears up (v shrinks), origin at the centre."""
    K = intrinsics(49.1, 128, 96)
    vm = orbit_camera(0, 0, 2.0)
    o, z = project(torch.zeros(1, 3), vm, K)
    assert torch.allclose(o, torch.tensor([[64.0, 48.0]]))
    assert z.item() == pytest.approx(2.0)
    px, _ = project(torch.tensor([[0.3, 0.0, 0.0]]), vm, K)
    py, _ = project(torch.tensor([[0.0, 0.3, 0.0]]), vm, K)
    assert px[0, 0] > 64 and px[0, 1] == pytest.approx(48.0, abs=1e-4)
    assert py[0, 1] < 48 and py[0, 0] == pytest.approx(64.0, abs=1e-4)


def test_side_view_sees_front_on_the_left():
    """Camera on +x (azimuth 90): the object's front (+z) projects to the left half of the image."""
    K = intrinsics(49.1, 128, 128)
    p, _ = project(torch.tensor([[0.0, 0.0, 0.5]]), orbit_camera(0, 90, 2.0), K)
    assert p[0, 0] < 64


def test_origin_projects_to_centre_everywhere():
    K = intrinsics(30.0, 200, 100)
    for e, a in [(0, 0), (30, 45), (-20, 250), (60, -120)]:
        p, _ = project(torch.zeros(1, 3), orbit_camera(e, a, 2.5), K)
        assert torch.allclose(p, torch.tensor([[100.0, 50.0]]), atol=1e-4)


def test_intrinsics_from_fov():
    K = intrinsics(49.1, 256, 128)
    f = 128 / (2 * math.tan(math.radians(49.1) / 2))
    assert K[0, 0].item() == pytest.approx(f, rel=1e-6) and K[1, 1].item() == pytest.approx(f, rel=1e-6)
    assert (K[0, 2].item(), K[1, 2].item()) == (128.0, 64.0)


def test_project_unproject_roundtrip():
    torch.manual_seed(0)
    pts = torch.rand(50, 3, dtype=torch.float64) - 0.5
    vm, K = orbit_camera(15, 70, 2.0, dtype=torch.float64), intrinsics(49.1, 64, 64, dtype=torch.float64)
    px, z = project(pts, vm, K)
    assert torch.allclose(unproject(px, z, vm, K), pts, atol=1e-10)


def test_consistent4d_preset():
    assert [c.azimuth for c in CONSISTENT4D_CAMERAS] == [-75, 15, 105, 195]
    assert all(c.elevation == 0 and c.radius == 2.0 and c.fov_y == 49.1 for c in CONSISTENT4D_CAMERAS)
    # a point on +x is seen from azimuth 105 almost head-on (near the image centre), from -75 behind the origin
    point = torch.tensor([[0.5, 0.0, 0.0]])
    c105, cm75 = CONSISTENT4D_CAMERAS[2], CONSISTENT4D_CAMERAS[0]
    p, z = project(point, c105.viewmat(), c105.K(64, 64))
    assert abs(p[0, 0].item() - 32) < 6 and z.item() < 2.0
    _, z = project(point, cm75.viewmat(), cm75.K(64, 64))
    assert z.item() > 2.0


def test_camera_json_roundtrip(tmp_path):
    save_camera(Camera("x", 10, 20, 2.5, 40), tmp_path / "camera.json")
    c = load_camera(tmp_path / "camera.json")
    assert (c.elevation, c.azimuth, c.radius, c.fov_y) == (10, 20, 2.5, 40)
    cams = [REFERENCE_CAMERA, Camera("az090", 0, 90)]
    save_cameras(cams, tmp_path / "cameras.json")
    assert load_cameras(tmp_path / "cameras.json") == cams
    assert torch.allclose(camera_centre(0, 90, 2.0), torch.tensor([2.0, 0, 0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(
    "content,message",
    [("{", "unreadable JSON"), ('{"elevation": "high"}', "must be numbers"), ('{"elev": 1}', "unknown camera key"),
     ('{"radius": -1}', "radius > 0"), ('{"radius": NaN}', "finite numbers"), ('{"elevation": Infinity}', "finite"),
     ('{"fov_y": 180}', "fov_y in")],
)
def test_camera_json_errors_name_the_file(tmp_path, content, message):
    p = tmp_path / "camera.json"
    p.write_text(content)
    with pytest.raises(InputError, match=message) as e:
        load_camera(p)
    assert str(p) in str(e.value)


def test_cameras_json_errors(tmp_path):
    p = tmp_path / "cameras.json"
    p.write_text(json.dumps([{"name": "a"}, {"name": "a"}]))
    with pytest.raises(InputError, match="unique"):
        load_cameras(p)
    p.write_text('[{"name": "a"}, {"name": "b", "radius": NaN}]')  # json.loads takes NaN: a list is checked too
    with pytest.raises(InputError, match="camera 'b' needs finite numbers"):
        load_cameras(p)
    with pytest.raises(InputError, match="not found"):
        load_cameras(tmp_path / "missing.json")
