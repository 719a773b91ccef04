"""Missing weights stop `dynapose4d run` before anything is written: one line naming what is missing and where
to get it, exit status 2, no run folder (not after the stages before the one that needs them have run)."""

from __future__ import annotations

import shutil

import _fakes
import pytest

from dynapose4d.cli import main


@pytest.fixture()
def scene(tmp_path):
    return _fakes.write_tiny_scene(tmp_path / "scene")


def _fails_cleanly(capsys, run, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynapose4d: error:"), err
    assert all(w in err[0] for w in words), err[0]
    assert not run.exists()


def test_default_preset_without_poseanything_weights(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs/default.yaml names weights/… relative to the working folder
    run = tmp_path / "r"
    _fails_cleanly(capsys, run, ["run", str(scene), "--out", str(run), "--config", "default",
                                 "--set", "static.prior=none", "dynamic.lambda_sds=0"],
                   "poseanything_1shot_small_split1.pth", "PoseAnything")


def test_zero123_and_svd_checked_up_front(scene, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    run = tmp_path / "r"
    smoke = ["--config", "smoke", "--set"]
    _fails_cleanly(capsys, run, ["run", str(scene), "--out", str(run), *smoke, "static.prior=zero123"],
                   "zero123")
    _fails_cleanly(capsys, run, ["run", str(scene), "--out", str(run), *smoke, "dynamic.lambda_sds=0.1",
                                 "zero123.path=" + str(tmp_path / "nowhere")], "nowhere")
    shutil.rmtree(scene / "video")
    _fails_cleanly(capsys, run, ["run", str(scene), "--out", str(run), *smoke, "dynamic.driver=svd"],
                   "Stable Video Diffusion", "hf download", "dynamic.driver=puppet")
    # a stage that will not run needs nothing: static alone on the video-less scene starts
    assert main(["run", str(scene), "--out", str(run), *smoke[:2], "--stages", "static"]) == 0


def test_auto_prior_is_hashed_as_what_it_resolves_to(scene, tmp_path, monkeypatch):
    """static.prior=auto: Zero-1-to-3 weights that appear after a run make --resume rerun the static stage
    (the config still says "auto", but the stage would now train with another prior)."""
    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner
    from dynapose4d.priors import zero123

    run, lines = tmp_path / "r", []
    cfg = load_config(None, _fakes.fake_overrides(2) + ["static.prior=auto"])
    StageRunner(scene, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    StageRunner(scene, run, cfg, resume=True, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    assert "[static] done earlier with the same config: skipped" in lines
    monkeypatch.setattr(zero123, "find_local_zero123", lambda cfg: tmp_path)
    lines.clear()
    StageRunner(scene, run, cfg, resume=True, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    assert any(s.startswith("[static] starting") and "auto_prior" in s and "none -> zero123" in s for s in lines), lines


def test_nothing_is_downloaded_even_where_downloads_are_allowed(scene, tmp_path, capsys, monkeypatch):
    """HF_HUB_OFFLINE unset and the models in no local cache: a scene without a video still stops before the run
    folder exists, and no network connection is tried. (The SVD check used to pass where downloads were allowed;
    the static and cape stages then ran and the run failed in the cape stage, loading SVD.)"""
    import socket

    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was tried")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    shutil.rmtree(scene / "video")
    run = tmp_path / "r"
    _fails_cleanly(capsys, run, ["run", str(scene), "--out", str(run), "--config", "smoke", "--set",
                                 "dynamic.driver=svd"], "Stable Video Diffusion", "not in the local Hugging Face cache",
                   "--video")
    _fails_cleanly(capsys, run, ["run", str(scene), "--out", str(run), "--config", "smoke", "--set",
                                 "static.prior=zero123"], "zero123", "not in the local Hugging Face cache")
