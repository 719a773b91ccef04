"""Synthetic articulated scenes: ground truth consistency, determinism, motion large enough to measure, CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dynapose4d.cli import main
from dynapose4d.core.cameras import REFERENCE_CAMERA, load_camera, load_cameras, project
from dynapose4d.core.errors import InputError
from dynapose4d.core.io import read_image
from dynapose4d.data import rig as rigs
from dynapose4d.data.rig_surface import matrix_to_quat
from dynapose4d.data.synthetic import (
    GT_CAMERAS,
    NOVEL_GT_CAMERAS,
    TEMPLATES,
    VIEW_CAMERAS,
    make_object,
    no_motion_psnr,
    render_object,
    write_scene,
)

T, SIZE = 6, 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {t: write_scene(t, root / t, seed=3, num_frames=T, size=SIZE) for t in TEMPLATES}


def _json(path: Path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("template", TEMPLATES)
def test_scene_folder_is_complete(scenes, template):
    root = scenes[template]
    img = read_image(root / "image.png")
    assert img.shape == (SIZE, SIZE, 4)
    assert 0.02 < (img[..., 3] > 0.5).float().mean() < 0.6  # an object, not empty, not everything
    kp = _json(root / "keypoints.json")
    n = len(kp["names"])
    assert len(kp["keypoints"]) == n >= 5 and len(set(kp["names"])) == n
    assert all(0 <= i < n and 0 <= j < n for i, j in kp["skeleton"])
    assert load_camera(root / "camera.json").to_dict() | {"name": "ref"} == REFERENCE_CAMERA.to_dict()
    assert sorted(p.name for p in (root / "video").iterdir()) == [f"{f:03d}.png" for f in range(T)]
    views = load_cameras(root / "views" / "cameras.json")
    assert [c.name for c in views] == [c.name for c in VIEW_CAMERAS]
    assert all(read_image(root / "views" / f"{c.name}.png").shape == (SIZE, SIZE, 4) for c in views)
    gt = load_cameras(root / "gt" / "cameras.json")
    assert [c.name for c in gt] == ["az000", "az090", "az180", "az270", "el30_az045"]
    for c in gt:
        assert len(list((root / "gt" / c.name).glob("*.png"))) == T
    # the novel gt cameras really are none of the views/ cameras
    view_poses = {(c.elevation, c.azimuth % 360) for c in views}
    assert all((c.elevation, c.azimuth % 360) not in view_poses for c in gt if c.name in NOVEL_GT_CAMERAS)
    k3 = np.array(_json(root / "gt" / "keypoints3d.json")["frames"])
    assert k3.shape == (T, n, 3)
    assert np.linalg.norm(k3, axis=-1).max() < 0.8  # inside the unit sphere (and the frame) at all times


@pytest.mark.parametrize("template", TEMPLATES)
def test_video_frame0_is_image_and_keypoints_are_projections(scenes, template):
    root = scenes[template]
    assert (root / "video" / "000.png").read_bytes() == (root / "image.png").read_bytes()
    assert (root / "gt" / "az000" / "000.png").read_bytes() == (root / "image.png").read_bytes()
    k3 = torch.tensor(_json(root / "gt" / "keypoints3d.json")["frames"][0], dtype=torch.float64)
    cam = load_camera(root / "camera.json")
    px, depth = project(k3, cam.viewmat(torch.float64), cam.K(SIZE, SIZE, torch.float64))
    kp = torch.tensor(_json(root / "keypoints.json")["keypoints"], dtype=torch.float64)
    assert (px - kp).abs().max().item() < 1e-3
    assert (depth > 0).all()


@pytest.mark.parametrize("template", TEMPLATES)
def test_gt_keypoints_fall_inside_gt_silhouettes(scenes, template):
    root = scenes[template]
    frames = torch.tensor(_json(root / "gt" / "keypoints3d.json")["frames"], dtype=torch.float64)
    kp2d = _json(root / "gt" / "keypoints2d.json")
    inside_all, total_all, inside_vis, total_vis = 0, 0, 0, 0
    for cam in load_cameras(root / "gt" / "cameras.json"):
        for f in range(T):
            alpha = read_image(root / "gt" / cam.name / f"{f:03d}.png")[..., 3]
            px, _ = project(frames[f], cam.viewmat(torch.float64), cam.K(SIZE, SIZE, torch.float64))
            assert (px - torch.tensor(kp2d[cam.name]["points"][f], dtype=torch.float64)).abs().max() < 1e-3
            vis = torch.tensor(kp2d[cam.name]["visible"][f])
            ok = (px >= 0).all(-1) & (px < SIZE).all(-1)
            assert ok.all(), "the object leaves the frame"
            a = alpha[px[:, 1].long(), px[:, 0].long()]
            inside_all += int((a > 0.5).sum())
            total_all += a.numel()
            inside_vis += int((a[vis] > 0.5).sum())
            total_vis += int(vis.sum())
    assert total_vis > 0.4 * total_all
    assert inside_vis >= 0.95 * total_vis
    assert inside_all >= 0.95 * total_all


def test_visibility_comes_from_depth():
    """A side view hides some keypoints of a person behind the body; the front view shows most."""
    obj = make_object("humanoid", 0, num_frames=8)
    hidden_side, shown_front, n = 0, 0, 0
    for f in range(0, 8, 2):
        _, _, vis_side = render_object(obj, f, GT_CAMERAS[1], 96)
        _, _, vis_front = render_object(obj, f, GT_CAMERAS[0], 96)
        hidden_side += int((~vis_side).sum())
        shown_front += int(vis_front.sum())
        n += vis_side.numel()
    assert hidden_side >= 2
    assert shown_front >= 0.55 * n


def test_render_object_api_and_backgrounds():
    obj = make_object("quadruped", 1, num_frames=5)
    assert obj.num_frames == 5 and len(obj.names) == 17 and obj.keypoints3d(2.5).shape == (17, 3)
    g = obj.gaussians(1.5)
    G = g["means"].shape[0]
    assert 300 <= G <= 3000
    assert {k: tuple(v.shape) for k, v in g.items()} == {
        "means": (G, 3), "quats": (G, 4), "scales": (G, 3), "opacities": (G,), "colors": (G, 3)}
    straight, kps, vis = render_object(obj, 1.5, REFERENCE_CAMERA, 48, background=None)
    white, kps2, _ = render_object(obj, 1.5, REFERENCE_CAMERA, 48)
    assert straight.shape == (48, 48, 4) and kps.shape == (17, 2) and vis.dtype == torch.bool
    a = straight[..., 3:]
    assert torch.allclose(straight[..., :3] * a + 1 - a, white[..., :3], atol=1e-4)
    assert torch.equal(kps, kps2)


@pytest.mark.parametrize("template", TEMPLATES)
def test_objects_are_centred_and_move_smoothly(template):
    for seed in (0, 7):
        obj = make_object(template, seed, num_frames=16)
        lo, hi = torch.full((3,), 9.0), torch.full((3,), -9.0)
        for f in np.linspace(0, 15, 16):
            m = obj.gaussians(f)["means"]
            assert m.norm(dim=-1).max() < 0.85
            lo, hi = torch.minimum(lo, m.min(0).values), torch.maximum(hi, m.max(0).values)
        assert ((lo + hi) / 2).abs().max() < 0.1  # the animated bounding box is centred
        k = torch.stack([obj.keypoints3d(f) for f in np.linspace(0, 15, 31)])  # [31, N, 3]
        step = (k[1:] - k[:-1]).norm(dim=-1).max()  # half-frame steps
        travel = (k - k[:1]).norm(dim=-1).max()
        assert step < 0.5 * travel and travel > 0.2  # moves a lot, but continuously


def test_bones_are_rigid_and_quaternions_round_trip():
    rig = make_object("random", 11).rig
    _, P = rig.pose(np.linspace(0, 1, 9))  # [9, J, 3]
    for j, p in enumerate(rig.parents):
        if p >= 0:
            d = np.linalg.norm(P[:, j] - P[:, p], axis=-1)
            assert np.allclose(d, d[0], atol=1e-9)
    R = rigs.axis_angle(np.array([0.3, -0.5, 0.8]), np.linspace(-3, 3, 7))
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    q = matrix_to_quat(R)
    w, x, y, z = q.T
    back = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], 1)
    assert np.allclose(back, R, atol=1e-9)


def test_random_template_varies_topology():
    counts = {len(make_object("random", s).names) for s in range(12)}
    assert len(counts) >= 4 and min(counts) >= 5 and max(counts) <= 20


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = write_scene("humanoid", tmp_path / "a", seed=5, num_frames=3, size=SIZE)
    b = write_scene("humanoid", tmp_path / "b", seed=5, num_frames=3, size=SIZE)
    c = write_scene("humanoid", tmp_path / "c", seed=6, num_frames=3, size=SIZE)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) > 20
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "image.png").read_bytes() != (c / "image.png").read_bytes()
    assert (a / "gt" / "keypoints3d.json").read_bytes() != (c / "gt" / "keypoints3d.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_no_motion_psnr_definition():
    f0 = torch.zeros(8, 8, 4)
    f0[..., 3] = 1.0  # black, opaque
    f1 = f0.clone()
    f1[:2, :, :3] = 0.5  # 16 moving pixels, each off by 0.5 in every channel
    assert no_motion_psnr(torch.stack([f0, f0])) == math.inf
    assert no_motion_psnr(torch.stack([f0, f1])) == pytest.approx(-10 * math.log10(0.25))


@pytest.mark.parametrize("template", TEMPLATES)
def test_motion_is_large_enough_to_measure(scenes, template):
    """Frame 0 held still is a poor prediction of the later frames on a novel camera's moving pixels."""
    root = scenes[template]
    frames = torch.stack([read_image(root / "gt" / "az090" / f"{f:03d}.png") for f in range(T)])
    psnr = no_motion_psnr(frames)
    assert psnr < 16.0
    assert _json(root / "gt" / "meta.json")["no_motion_psnr"]["az090"] == pytest.approx(psnr, abs=1e-3)


def test_scene_loads_with_load_scene(scenes):
    from dynapose4d.data import scene as scene_mod

    for t in TEMPLATES:
        s = scene_mod.load_scene(scenes[t])
        assert s.image.shape == (SIZE, SIZE, 4) and s.video.shape[0] == T and len(s.views) == len(VIEW_CAMERAS)
        assert s.has_camera_json and s.num_keypoints == len(_json(scenes[t] / "keypoints.json")["names"])


def test_cli_list_and_make_scene(tmp_path, capsys):
    assert main(["make-scene", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in TEMPLATES)
    out_dir = tmp_path / "lamp"
    assert main(["make-scene", "lamp", "--out", str(out_dir), "--frames", "3", "--size", "48", "--orbit-video"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "az090" in out
    assert (out_dir / "orbit.mp4").stat().st_size > 0 and (out_dir / "orbit.gif").stat().st_size > 0
    # rewriting a synthetic scene replaces it; an unrelated folder is never overwritten
    assert main(["make-scene", "lamp", "--out", str(out_dir), "--frames", "2", "--size", "48"]) == 0
    assert len(list((out_dir / "video").iterdir())) == 2 and not (out_dir / "orbit.mp4").exists()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main(["make-scene", "lamp", "--out", str(other)]) == 2
    assert main(["make-scene", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown template" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lamp", "mine"]
    with pytest.raises(InputError):
        make_object("nope", 0)
