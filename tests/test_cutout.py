"""Pictures and frames on a real background: the `cutout` setting (auto | plain | grabcut) and GrabCut
(`dynapose4d.data.cutout`), checked against the known alpha of the synthetic objects put on textured backgrounds
(tests/cutout_backgrounds.py), against its trivial baseline (everything inside the border ring called object),
and through the loader and a run."""

from __future__ import annotations

import _fakes
import numpy as np
import pytest
import torch
from cutout_backgrounds import composite, make_background

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.io import read_image, write_image
from dynapose4d.data.background import remove_background
from dynapose4d.data.cutout import RING, grabcut_alpha
from dynapose4d.data.scene import load_scene
from dynapose4d.data.synthetic import write_scene
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.runner import StageRunner

TEMPLATES = ("humanoid", "quadruped", "lamp", "hand", "bird", "random")


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1, int((a | b).sum()))


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Each template's picture (RGBA [128, 128, 4], known alpha) and its second video frame."""
    root = tmp_path_factory.mktemp("objects")
    out = {}
    for t in TEMPLATES:
        scene = write_scene(t, root / t, seed=0, num_frames=2, size=128)
        out[t] = read_image(scene / "image.png")
        out[t + "/1"] = read_image(scene / "video" / "001.png")
    return out


def test_grabcut_finds_the_objects_on_textured_backgrounds(objects):
    """Every template on stripes and on grain (plain removal refuses both): IoU with the true alpha at least
    0.55 each and 0.78 on average (measured 0.637-0.950, mean 0.838), where the trivial baseline is ~0.1."""
    ious, baselines = [], []
    ring = torch.ones(128, 128)
    b = max(1, round(RING * 128))
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = 0, 0, 0, 0
    for t in TEMPLATES:
        for name in ("stripes", "grain"):
            rgb = composite(objects[t], make_background(name, 128, 128, seed=0))
            assert remove_background(rgb) is None  # not a uniform background: the plain removal refuses
            alpha = grabcut_alpha(rgb)
            assert set(alpha.unique().tolist()) <= {0.0, 1.0}
            ious.append(_iou(alpha, objects[t][..., 3]))
            baselines.append(_iou(ring, objects[t][..., 3]))
            assert ious[-1] >= 0.55, (t, name, ious[-1])
    assert np.mean(ious) >= 0.78 and np.mean(baselines) < 0.15, (np.mean(ious), np.mean(baselines))


def test_an_object_cut_by_the_frame_edge_keeps_its_colours(objects):
    """The hand moved down so that its wrist runs off the bottom edge (its colours are then on the border): IoU
    with the true alpha >= 0.75 on grain (measured 0.92; 0.37 when every border colour counts as background)."""
    hand = objects["hand"]
    ys = torch.nonzero(hand[..., 3] > 0.5)[:, 0]
    shift = 128 - int(ys.max()) + int(0.1 * int(ys.max() - ys.min()))
    moved = torch.zeros_like(hand)
    moved[shift:] = hand[:128 - shift]
    assert moved[-1, :, 3].sum() >= 3  # it does touch the edge
    alpha = grabcut_alpha(composite(moved, make_background("grain", 128, 128, seed=0)))
    assert _iou(alpha, moved[..., 3]) >= 0.75


def test_grabcut_is_deterministic_and_works_at_any_size(objects):
    rgb = composite(objects["hand"], make_background("grain", 128, 128, seed=0))
    assert torch.equal(grabcut_alpha(rgb), grabcut_alpha(rgb))
    big = torch.nn.functional.interpolate(rgb.permute(2, 0, 1)[None], scale_factor=4, mode="bilinear")[0]
    alpha = grabcut_alpha(big.permute(1, 2, 0))  # [512, 512]: cut at the working size, brought back
    small = torch.nn.functional.interpolate(alpha[None, None], size=(128, 128), mode="area")[0, 0]
    assert alpha.shape == (512, 512) and _iou(small, objects["hand"][..., 3]) >= 0.85


def _write_textured_scene(folder, objects, name="humanoid", background="grain"):
    bg = make_background(background, 128, 128, seed=0)
    write_image(folder / "photo.png", composite(objects[name], bg))
    for t, key in enumerate((name, name + "/1")):
        write_image(folder / "frames" / f"{t:03d}.png", composite(objects[key], bg))
    return folder / "photo.png"


def test_auto_cuts_a_real_background_out_of_the_picture_and_every_frame(objects, tmp_path):
    photo = _write_textured_scene(tmp_path, objects)
    s = load_scene(photo, video=tmp_path / "frames")  # cutout="auto", the default
    assert s.grabcut_cuts == 3 and s.cutout is not None and s.cutout.shape == (128, 128, 4)
    assert _iou(s.cutout[..., 3], objects["humanoid"][..., 3]) >= 0.8
    assert torch.equal(s.cutout[..., :3], read_image(photo)[..., :3])  # the picture's own colours, straight
    # the same objects given with their true alpha: the scene the stages see is nearly the same
    write_image(tmp_path / "true.png", objects["humanoid"])
    for t, key in enumerate(("humanoid", "humanoid/1")):
        write_image(tmp_path / "true_frames" / f"{t:03d}.png", objects[key])
    ref = load_scene(tmp_path / "true.png", video=tmp_path / "true_frames")
    assert _iou(s.image[..., 3], ref.image[..., 3]) >= 0.8
    assert s.video.dtype == ref.video.dtype == torch.float32
    assert all(_iou(a, b) >= 0.8 for a, b in zip(s.video[..., 3], ref.video[..., 3]))


def test_plain_refuses_a_real_background_and_grabcut_ignores_a_uniform_one(objects, tmp_path):
    photo = _write_textured_scene(tmp_path, objects)
    with pytest.raises(InputError) as e:
        load_scene(photo, cutout="plain")
    msg = str(e.value)
    assert msg.startswith(str(photo)) and "not a uniform colour" in msg and "cutout=auto" in msg
    assert "\n" not in msg
    # a uniform background: auto is exactly the plain removal (bit for bit), grabcut cuts it too
    plain = composite(objects["lamp"], torch.tensor([0.95, 0.95, 0.93]).expand(128, 128, 3))
    write_image(tmp_path / "plain.png", plain)
    auto = load_scene(tmp_path / "plain.png")
    expected = load_scene(tmp_path / "plain.png", cutout="plain")
    assert auto.grabcut_cuts == 0 and auto.cutout is None and torch.equal(auto.image, expected.image)
    forced = load_scene(tmp_path / "plain.png", cutout="grabcut")
    assert forced.grabcut_cuts == 1 and _iou(forced.cutout[..., 3], objects["lamp"][..., 3]) >= 0.85


def test_a_background_with_nothing_on_it_is_a_one_line_error(tmp_path):
    write_image(tmp_path / "empty.png", make_background("stripes", 96, 128, seed=3))
    with pytest.raises(InputError) as e:
        load_scene(tmp_path / "empty.png")
    assert str(e.value).startswith(str(tmp_path / "empty.png")) and "no object found by GrabCut" in str(e.value)


def test_cutout_setting_is_checked_and_the_run_shows_the_cut(objects, tmp_path):
    with pytest.raises(ConfigError, match="'cutout'"):
        load_config(None, ["cutout=magic"])
    photo = _write_textured_scene(tmp_path, objects)
    lines: list[str] = []
    cfg = load_config(None, _fakes.fake_overrides())
    StageRunner(photo, tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES, echo=lines.append,
                video=tmp_path / "frames").run()
    cut = read_image(tmp_path / "run" / "inputs" / "cutout.png")  # [128, 128, 4] for the user to check
    assert cut.shape == (128, 128, 4) and _iou(cut[..., 3], objects["humanoid"][..., 3]) >= 0.8
    assert any("GrabCut cut the object out of 3 image(s)" in line and "cutout.png" in line for line in lines)
    # the same folder resumed on a picture with alpha: the old cut-out is not left behind
    write_image(tmp_path / "true.png", objects["humanoid"])
    StageRunner(tmp_path / "true.png", tmp_path / "run", cfg, stages=_fakes.FAKE_STAGES, echo=lines.append,
                video=tmp_path / "frames", resume=True).run()
    assert not (tmp_path / "run" / "inputs" / "cutout.png").exists()
    # plain: the same input is refused before anything is written
    cfg = load_config(None, [*_fakes.fake_overrides(), "cutout=plain"])
    with pytest.raises(InputError):
        StageRunner(photo, tmp_path / "run2", cfg, stages=_fakes.FAKE_STAGES, echo=lines.append,
                    video=tmp_path / "frames").run()
    assert not (tmp_path / "run2").exists()


def test_soft_edges_by_squares_equal_those_on_the_whole_frame(objects):
    """The plain removal's edge unmixing works on squares along the outline (plus a margin): bit for bit what the
    dense computation gives on the whole frame, for objects anywhere, touching an edge, a ragged mask, squares
    that do not divide the frame, or a frame that is all object."""
    from dynapose4d.data.background import _soft_edges, _soft_edges_dense, clean_mask

    bg = torch.tensor([0.95, 0.95, 0.93])
    for name, shift in (("humanoid", 0), ("hand", 40), ("lamp", -60)):
        rgba = torch.roll(objects[name], shifts=shift, dims=1)  # [128, 128, 4], moved across the left/right edge
        img = composite(rgba, bg.expand(128, 128, 3))
        mask = torch.from_numpy(clean_mask(((img - bg).norm(dim=-1) > 0.1).numpy()))
        whole = _soft_edges_dense(img, bg, mask, 0.1)
        for tile in (5, 16, 64, 200):
            assert torch.equal(_soft_edges(img, bg, mask, 0.1, tile=tile), whole), (name, tile)
        assert ((whole[..., 3] > 0) & (whole[..., 3] < 1)).any()  # there are soft edges to compare
    g = torch.Generator().manual_seed(0)
    img = torch.rand(70, 90, 3, generator=g)
    ragged = torch.rand(70, 90, generator=g) < 0.6  # many small components, edges everywhere
    for tile in (7, 64):
        assert torch.equal(_soft_edges(img, bg, ragged, 0.1, tile=tile), _soft_edges_dense(img, bg, ragged, 0.1))
    full = torch.ones(16, 16, dtype=torch.bool)
    img = torch.rand(16, 16, 3)
    assert torch.equal(_soft_edges(img, bg, full, 0.1), _soft_edges_dense(img, bg, full, 0.1))


