"""`dynapose4d showcase`: the panels are the input image, the driving video and the orbit, in that order."""

from __future__ import annotations

import _fakes
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dynapose4d.cli import main
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.runner import StageRunner
from dynapose4d.pipeline.showcase import CAPTIONS, compose, fit_square


def test_fit_square_letterboxes_and_keeps_the_aspect():
    img = torch.zeros(10, 20, 3)  # black, twice as wide as high
    out = fit_square(img, 40)
    assert out.shape == (40, 40, 3)
    assert torch.all(out[:10] == 1.0) and torch.all(out[30:] == 1.0)  # white bands above and below
    assert torch.all(out[11:29] < 0.01)  # the image itself, scaled 2x


def test_compose_puts_each_source_in_its_panel():
    S, T, K = 8, 3, 7
    image = torch.full((S, S, 3), 0.2)
    driving = torch.stack([torch.full((S, S, 3), 0.1 * (f + 5)) for f in range(T)])
    orbit = torch.stack([torch.full((S, S, 3), 0.9 - 0.01 * i) for i in range(K)])
    frames = compose(image, driving, orbit)
    cap = frames.shape[1] - S
    assert frames.shape == (K, S + cap, 3 * S, 3) and cap > 0
    body = frames[:, cap:].astype(np.float64) / 255
    for i in range(K):
        assert np.allclose(body[i, :, :S], 0.2, atol=1 / 255)
        assert np.allclose(body[i, :, S:2 * S], 0.1 * (i % T + 5), atol=1 / 255)
        assert np.allclose(body[i, :, 2 * S:], 0.9 - 0.01 * i, atol=1 / 255)
    assert len(CAPTIONS) == 3 and (frames[:, :cap] < 128).any()  # captions drawn


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from dynapose4d.data.synthetic import write_scene

    root = tmp_path_factory.mktemp("showcase")
    scene = write_scene("humanoid", root / "scene", seed=0, num_frames=4, size=32)
    run = root / "run"
    StageRunner(scene, run, load_config(None, _fakes.fake_overrides(2)), stages=_fakes.FAKE_STAGES,
                echo=lambda s: None).run()
    return scene, run


def test_showcase_cli_writes_a_small_gif(finished_run, tmp_path, capsys):
    scene, run = finished_run
    out = tmp_path / "show.gif"
    assert main(["showcase", str(run), "--out", str(out), "--size", "48"]) == 0
    frames = iio.imread(out, index=None)
    assert frames.shape[0] == 24 and frames.shape[2] == 3 * 48  # at least 24 frames; three panels
    assert out.stat().st_size < 2e6 and "MB" in capsys.readouterr().out
    # the orbit panel shows the object (not an empty white frame); the input panel does not change
    assert (frames[:, -48:, 96:, :3] < 200).any(axis=-1).mean() > 0.02
    assert np.abs(frames[0, -48:, :48].astype(int) - frames[-1, -48:, :48]).mean() < 3  # up to GIF palettes


def test_showcase_of_a_run_made_by_an_earlier_version(finished_run, tmp_path):
    """Its config.yaml holds a key this version no longer has: the showcase is made (a warning names the key)."""
    import shutil

    _, run = finished_run
    old = tmp_path / "old_run"
    shutil.copytree(run, old)
    cfg = (old / "config.yaml").read_text()
    (old / "config.yaml").write_text(cfg.replace("static:\n", "static:\n  zero123_model: old/name\n", 1))
    with pytest.warns(UserWarning, match="zero123_model"):
        assert main(["showcase", str(old), "--out", str(tmp_path / "s.gif"), "--size", "32"]) == 0
    assert (tmp_path / "s.gif").is_file()


@pytest.mark.parametrize("args, match", [(["--out", "s.txt"], ".gif or an .mp4"), (["--size", "0"], "--size"),
                                         (["--fps", "-3"], "--fps"), (["--loops", "-1"], "--loops")])
def test_showcase_bad_arguments_are_one_line(finished_run, tmp_path, capsys, args, match):
    _, run = finished_run
    argv = ["showcase", str(run), "--out", str(tmp_path / "s.gif"), *args]
    if args[0] == "--out":
        argv = ["showcase", str(run), "--out", str(tmp_path / args[1])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err and not list(tmp_path.iterdir()), err


def test_showcase_refuses_an_unfinished_run(tmp_path, capsys):
    assert main(["showcase", str(tmp_path), "--out", str(tmp_path / "x.gif")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_showcase_of_a_picture_run_uses_its_video(tmp_path, capsys):
    """A run of a picture given alone with --video: the showcase finds the video the run was given."""
    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    StageRunner(scene / "image.png", run, load_config(None, _fakes.fake_overrides(2)), stages=_fakes.FAKE_STAGES,
                video=scene / "video", keypoints=scene / "keypoints.json", echo=lambda s: None).run()
    out = tmp_path / "show.gif"
    assert main(["showcase", str(run), "--out", str(out), "--size", "32"]) == 0
    frames = iio.imread(out, index=None)
    # the driving panel moves (the tiny scene's disc slides right), the input panel does not
    mid = frames[:, -32:, 32:64].astype(int)
    assert np.abs(mid[0] - mid[1]).mean() > 1
    assert np.abs(frames[0, -32:, :32].astype(int) - frames[1, -32:, :32]).mean() < 3
