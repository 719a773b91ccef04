"""The puppet driving video (`dynapose4d.priors.puppet`): a picture moved on its own skeleton, checked against
rigid motions drawn independently (scipy's map_coordinates), the kinematics by hand, and its run-folder artifact."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.priors import svd
from dynapose4d.priors.puppet import PuppetConfig, puppet_video, skeleton_tree
from dynapose4d.priors.svd import driving_video


def _bar(h: int = 48, w: int = 96, tip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """RGBA [h, w, 4]: a horizontal bar (rows h/2 ± 6, columns 8..w-8) whose colour changes along x and y (so a
    misplaced sample shows), and keypoints [3, 2] at its left end, middle and right end. `tip`: a red disc at the
    right end."""
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    inside = ((yy - h / 2).abs() < 6) & (xx > 8) & (xx < w - 8)
    rgb = torch.stack([0.2 + 0.6 * xx / w, 0.3 + 0.4 * (yy - h / 2 + 6) / 12, torch.full_like(xx, 0.5)], -1)
    img = torch.cat([rgb * inside[..., None], inside[..., None].float()], -1)
    if tip:
        disc = (yy - h / 2) ** 2 + (xx - (w - 14)) ** 2 < 16
        img[disc] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    kp = torch.tensor([[12.0, h / 2], [w / 2, h / 2], [w - 12.0, h / 2]])
    return img, kp


def _rotated(img: torch.Tensor, theta: float, centre: torch.Tensor) -> torch.Tensor:
    """`img` [H, W, 4] turned by `theta` about `centre` (x, y pixels; x towards y), drawn backwards with scipy's
    bilinear map_coordinates (premultiplied): the reference for a rigid part of the puppet."""
    from scipy.ndimage import map_coordinates

    H, W = img.shape[:2]
    ys, xs = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    dx, dy = xs - float(centre[0]), ys - float(centre[1])
    sx, sy = c * dx + s * dy + float(centre[0]), -s * dx + c * dy + float(centre[1])  # R^-1 (y - c) + c
    a = img[..., 3:].numpy()
    pre = np.concatenate([img[..., :3].numpy() * a, a], -1)
    out = np.stack([map_coordinates(pre[..., k], [sy - 0.5, sx - 0.5], order=1, mode="constant")
                    for k in range(4)], -1)
    alpha = out[..., 3:]
    rgb = np.where(alpha > 1e-6, out[..., :3] / np.maximum(alpha, 1e-6), 0)
    return torch.from_numpy(np.concatenate([rgb, alpha], -1)).float()


def test_frame_zero_is_the_picture_and_each_half_of_a_bar_turns_rigidly():
    """A bar hinged at its middle (the root: the keypoint with two bones nearest the centroid): away from the
    joint, every frame's half equals the picture turned about the joint by that bone's angle, drawn independently;
    the moved keypoints are the rest ones turned the same way; frame 0 is the picture."""
    img, kp = _bar()
    cfg = PuppetConfig(num_frames=8, amplitude=30.0, blend=0.03)
    frames, motion = puppet_video(img, kp, [(0, 1), (1, 2)], cfg, seed=0)
    assert frames.shape == (8, 48, 96, 4) and torch.equal(frames[0], img)
    assert motion.bones == [(1, 0), (1, 2)] and motion.depth.tolist() == [1.0, 1.0]
    assert motion.angles[0].abs().max() == 0 and motion.angles.abs().max() > math.radians(5)
    # the two halves swing opposite ways (sibling bones alternate)
    assert (torch.sign(motion.angles[1:, 0]) == -torch.sign(motion.angles[1:, 1])).all()
    xs = torch.arange(96) + 0.5
    for t in range(1, 8):
        for b, side in ((0, xs < 48 - 10), (1, xs > 48 + 10)):  # beyond the blend zone around the joint
            theta = float(motion.angles[t, b])
            ref = _rotated(img, theta, kp[1])
            sel = side[None].expand(48, 96)
            err = (frames[t, ..., 3] - ref[..., 3])[sel].abs()
            assert err.mean() < 0.01, (t, b, float(err.mean()))
            both = sel & (ref[..., 3] > 0.99) & (frames[t, ..., 3] > 0.99)
            assert both.sum() > 100
            assert (frames[t, ..., :3] - ref[..., :3])[both].abs().mean() < 0.005
            end = kp[2 * b]
            c, s = math.cos(theta), math.sin(theta)
            d = end - kp[1]
            want = kp[1] + torch.tensor([c * d[0] - s * d[1], s * d[0] + c * d[1]])
            assert torch.allclose(motion.keypoints[t, 2 * b], want, atol=1e-4)


def test_a_chain_moves_its_tip_where_the_kinematics_put_it():
    """A bar as a chain of four keypoints (root: the one nearest the centroid among those with two bones): the
    red disc at the tip follows the tip keypoint (its centroid within half a pixel of the kinematic position, which
    composes the angles down the chain), and the object's area is kept (no holes, nothing drawn twice)."""
    img, _ = _bar(64, 128, tip=True)
    kp = torch.tensor([[12.0, 32.0], [50.0, 32.0], [82.0, 32.0], [114.0, 32.0]])
    frames, motion = puppet_video(img, kp, [(0, 1), (1, 2), (2, 3)], PuppetConfig(num_frames=6, amplitude=25.0))
    assert motion.bones == [(1, 0), (1, 2), (2, 3)] and motion.depth.tolist() == [1.0, 1.0, 2.0]
    # the tip keypoint by hand: bone (1,2) turns about keypoint 1, then bone (2,3) about keypoint 2 moved
    for t in range(1, 6):
        a1, a2 = float(motion.angles[t, 1]), float(motion.angles[t, 2])

        def turn(p, c, a):
            d = p - c
            return c + torch.tensor([math.cos(a) * d[0] - math.sin(a) * d[1], math.sin(a) * d[0] + math.cos(a) * d[1]])

        k2 = turn(kp[2], kp[1], a1)
        k3 = turn(turn(kp[3], kp[2], a2), kp[1], a1)
        assert torch.allclose(motion.keypoints[t, 2], k2, atol=1e-4)
        assert torch.allclose(motion.keypoints[t, 3], k3, atol=1e-4)
        f = frames[t]
        red = ((f[..., 0] > 0.9) & (f[..., 1] < 0.1) & (f[..., 3] > 0.9)).float()  # [H, W]
        ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(128) + 0.5, indexing="ij")
        centre = torch.stack([(xs * red).sum(), (ys * red).sum()]) / red.sum()
        moved_disc = k3 + (torch.tensor([114.0, 32.0]) - kp[3])  # the disc sits at the tip keypoint
        assert (centre - moved_disc).norm() < 0.5, (t, centre, moved_disc)
        area0, area = frames[0, ..., 3].sum(), f[..., 3].sum()
        assert abs(float(area / area0) - 1) < 0.03


def test_a_limb_is_drawn_over_the_body_it_hangs_from():
    """An arm swung across a body: where they overlap, the arm (deeper in the tree) is in front."""
    h, w = 96, 96
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    body = ((xx - 30).abs() < 10) & ((yy - 48).abs() < 36)
    arm = ((yy - 20).abs() < 4) & (xx >= 30) & (xx < 88)
    img = torch.zeros(h, w, 4)
    img[body] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    img[arm] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    kp = torch.tensor([[30.0, 80.0], [30.0, 48.0], [30.0, 20.0], [84.0, 20.0]])
    frames, motion = puppet_video(img, kp, [(0, 1), (1, 2), (2, 3)], PuppetConfig(num_frames=4, amplitude=90.0))
    assert motion.bones[-1] == (2, 3)
    tip = motion.keypoints[:, 3]
    t = int((tip[:, 0] - 30).abs().argmin())  # the frame where the arm's tip is nearest the body's axis
    f = frames[t]
    k2, k3 = motion.keypoints[t, 2], motion.keypoints[t, 3]
    d = (k3 - k2) / (k3 - k2).norm()
    rel = torch.stack([xx - k2[0], yy - k2[1]], -1)
    along, across = rel @ d, rel @ torch.stack([-d[1], d[0]])
    # pixels near the arm's moved axis, over the body
    on_arm = (across.abs() < 2) & (along > 4) & (along < (k3 - k2).norm() - 4) & body
    assert on_arm.sum() > 10, "the arm does not cross the body in any frame: the test's geometry is off"
    assert (f[on_arm][:, 0] > 0.8).all() and (f[on_arm][:, 2] < 0.2).all()


def test_the_root_is_a_hub_near_the_centroid_and_loops_are_cut():
    alpha = torch.zeros(20, 40)
    alpha[8:12, 2:38] = 1
    kp = torch.tensor([[3.0, 10.0], [10.0, 10.0], [20.0, 10.0], [30.0, 10.0], [37.0, 10.0]])
    bones, depth = skeleton_tree(kp, [(0, 1), (1, 2), (2, 3), (3, 4)], alpha)
    assert bones[0][0] == 2 and len(bones) == 4 and depth.tolist() == [1, 1, 2, 2]
    bones, _ = skeleton_tree(kp, [(0, 1), (1, 2), (2, 0), (3, 4)], alpha)  # a loop and a second part
    assert len(bones) == 3 and {b[1] for b in bones} | {bones[0][0]} >= {0, 1, 2}


def test_the_root_and_still_keypoints_named_in_the_settings():
    """`root` grows the tree from the named keypoint; `still` keeps a bone from swinging: its angle is 0 in every
    frame, its keypoint moves only as its parent bone does, and with every bone still each frame is the picture."""
    img, kp = _bar(tip=True)
    names = ["left", "middle", "right"]
    bones, depth = skeleton_tree(kp, [(0, 1), (1, 2)], img[..., 3])
    assert bones == [(1, 0), (1, 2)] and depth.tolist() == [1, 1]  # automatic: the middle hub
    cfg = PuppetConfig(num_frames=8, amplitude=30.0, root="left")
    frames, motion = puppet_video(img, kp, [(0, 1), (1, 2)], cfg, seed=0, names=names)
    assert motion.bones == [(0, 1), (1, 2)] and motion.depth.tolist() == [1, 2]
    assert torch.allclose(motion.keypoints[:, 0], kp[0].expand(8, 2))  # the root stays in place
    still = PuppetConfig(num_frames=8, amplitude=30.0, root="left", still=["right"])
    frames, motion = puppet_video(img, kp, [(0, 1), (1, 2)], still, seed=0, names=names)
    assert motion.angles[:, 1].abs().max() == 0 and motion.angles[:, 0].abs().max() > math.radians(3)
    assert torch.allclose(motion.transforms[:, 1], motion.transforms[:, 0])  # right end rides on the left bone
    turned = motion.transforms[:, 0, :, :2] @ kp[2] + motion.transforms[:, 0, :, 2]  # [8, 2]
    assert torch.allclose(motion.keypoints[:, 2], turned, atol=1e-4)
    frames, motion = puppet_video(img, kp, [(0, 1), (1, 2)], PuppetConfig(num_frames=4, still=["left", "right"]),
                                  names=names)
    assert motion.angles.abs().max() == 0 and (frames - frames[:1]).abs().max() < 1e-5  # nothing moves
    for bad, key in ((PuppetConfig(root="head"), "root"), (PuppetConfig(still=["right", "tail"]), "still")):
        with pytest.raises(ConfigError) as e:
            puppet_video(img, kp, [(0, 1), (1, 2)], bad, names=names)
        msg = str(e.value)
        assert f"dynamic.puppet.{key}" in msg and "left, middle, right" in msg and "\n" not in msg
    # the video's hash follows the settings and the names they refer to
    h = svd.video_hash(img, still, 0, kp, [(0, 1), (1, 2)], names)
    assert h != svd.video_hash(img, PuppetConfig(num_frames=8, amplitude=30.0, root="left"), 0, kp,
                               [(0, 1), (1, 2)], names)
    assert h != svd.video_hash(img, still, 0, kp, [(0, 1), (1, 2)], ["right", "middle", "left"])


def test_bad_skeletons_and_empty_pictures_fail_in_one_line():
    img, kp = _bar()
    with pytest.raises(InputError, match="at least one bone"):
        puppet_video(img, kp, [])
    with pytest.raises(InputError, match="no object"):
        puppet_video(torch.zeros(8, 8, 4), kp, [(0, 1)])


def test_the_puppet_video_is_an_artifact_rebuilt_when_its_inputs_change(tmp_path, monkeypatch):
    """RUN/inputs/video/ made by the puppet carries a source.json with its hash and the keypoints' positions; it
    is reused for the same image, keypoints, skeleton, seed and settings, and made again when any changes."""
    from dynapose4d.priors import puppet

    calls = []
    real = puppet.puppet_video
    monkeypatch.setattr(svd, "puppet_video", lambda *a, **k: calls.append(1) or real(*a, **k))
    img, kp = _bar()
    scene = SimpleNamespace(video=None, image=img, keypoints=kp, skeleton=[(0, 1), (1, 2)])
    cfg = PuppetConfig(num_frames=4)
    frames = driving_video(scene, tmp_path, cfg, seed=0)
    folder = tmp_path / "inputs" / "video"
    source = json.loads((folder / "source.json").read_text())
    assert source["puppet"]["num_frames"] == 4 and len(source["keypoints"]) == 4 and len(calls) == 1
    assert source["hash"] == svd.video_hash(img, cfg, 0, kp, scene.skeleton)
    assert len(list(folder.glob("*.png"))) == 4
    again = driving_video(scene, tmp_path, cfg, seed=0)
    assert len(calls) == 1 and (again - frames).abs().max() < 1 / 255 + 1e-6  # reused from the files
    driving_video(scene, tmp_path, PuppetConfig(num_frames=4, amplitude=10.0), seed=0)
    assert len(calls) == 2
    scene.keypoints = kp + torch.tensor([0.0, 1.0])
    driving_video(scene, tmp_path, PuppetConfig(num_frames=4, amplitude=10.0), seed=0)
    assert len(calls) == 3
    scene.skeleton = [(0, 1)]
    driving_video(scene, tmp_path, PuppetConfig(num_frames=4, amplitude=10.0), seed=0)
    assert len(calls) == 4


def test_no_svd_weights_are_asked_for_with_the_puppet(tmp_path):
    from dynapose4d.core.errors import MissingWeightsError
    from dynapose4d.priors.zero123 import Zero123Config
    from dynapose4d.stages.dynamic import config as dyn_config
    from dynapose4d.stages.dynamic.stage import check_weights

    scene = SimpleNamespace(video=None)
    cfg = dyn_config.DynamicConfig(svd=svd.SVDConfig(model=str(tmp_path / "absent")))
    with pytest.raises(MissingWeightsError, match="dynamic.driver=puppet"):
        check_weights(cfg, scene, Zero123Config(), tmp_path)
    cfg.driver = "puppet"
    check_weights(cfg, scene, Zero123Config(), tmp_path)  # nothing needed
    from dynapose4d.core.errors import ConfigError
    from dynapose4d.pipeline.config import load_config

    for bad, key in (("dynamic.driver=sora", "dynamic.driver"), ("dynamic.puppet.num_frames=1", "num_frames"),
                     ("dynamic.deform=nope", "dynamic.deform")):  # at load time: before any stage runs
        with pytest.raises(ConfigError, match=key):
            load_config(None, [bad])


def test_a_single_bone_still_swings():
    """Two keypoints, one bone: it carries the whole object, and swings by the floor share of the amplitude."""
    from dynapose4d.priors.puppet import MIN_SWING

    img, kp = _bar()
    frames, motion = puppet_video(img, kp[:2], [(0, 1)], PuppetConfig(num_frames=8, amplitude=20.0))
    assert motion.angles.abs().max() > 0.7 * math.radians(20.0) * MIN_SWING  # (sin(x + 0.6) - sin 0.6) / 2 <= 0.78
    assert (frames[4, ..., 3] - frames[0, ..., 3]).abs().sum() > 50  # the picture moved
