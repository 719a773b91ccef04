"""The keypoint files the stages hand on (`dynapose4d.stages.keypoints`): the static stage's lifted support
keypoints and the cape stage's driving keypoints are written once, read back exactly by the later stages, and
a missing or mismatched file is a one-line InputError naming it (nothing is recomputed)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from dynamic_helpers import STATIC_ARTIFACTS, ColourKeypoints, perfect_static, scene_from_folder

from dynapose4d.core.errors import InputError
from dynapose4d.data.recentring import Recentring
from dynapose4d.data.synthetic import make_object, write_scene
from dynapose4d.deform.tracks import lift_keypoints
from dynapose4d.gaussians import load_ply
from dynapose4d.pipeline.config import TrainerConfig, WandbConfig
from dynapose4d.stages.base import StageContext
from dynapose4d.stages.keypoints import (
    DRIVING_KEYPOINTS,
    read_driving_keypoints,
    read_keypoints_3d,
    write_driving_keypoints,
)


def _ctx(scene, run_dir, artifacts):
    return StageContext(scene=scene, run_dir=run_dir, artifacts=artifacts,
                        trainer=TrainerConfig(accelerator="cpu", progress_bar=False, log_every_n_steps=1),
                        wandb=WandbConfig(enabled=False))


@pytest.fixture()
def lamp(tmp_path):
    write_scene("lamp", tmp_path / "scene", seed=1, num_frames=3, size=24)
    return scene_from_folder(tmp_path / "scene")


def test_the_static_stage_writes_the_lift_of_its_own_gaussians(tmp_path, lamp):
    """RUN/static/keypoints_3d.json holds exactly `lift_keypoints` (ray, with the skeleton) of the support
    keypoints on the Gaussians the stage wrote, and is listed as the artifact "keypoints_3d"."""
    from dynapose4d.stages.static import stage as static
    from dynapose4d.stages.static.config import StaticConfig

    ctx = _ctx(lamp, tmp_path / "run", {})
    arts = static.run(ctx, StaticConfig(steps=1, num_points=300, prior="none", orbit_frames=2, render_size=16))
    assert arts["keypoints_3d"] == "static/keypoints_3d.json"
    ctx.artifacts["static"] = arts
    g = load_ply(tmp_path / "run" / arts["gaussians"]).activated()
    expected = lift_keypoints(g, lamp.keypoints, lamp.camera, lamp.width, lamp.height, skeleton=lamp.skeleton)
    assert torch.equal(read_keypoints_3d(ctx), expected)
    assert json.loads((tmp_path / "run" / arts["keypoints_3d"]).read_text())["names"] == list(lamp.names)


def test_a_missing_or_mismatched_keypoints_3d_names_the_file(tmp_path, lamp):
    ctx = _ctx(lamp, tmp_path / "run", {"static": dict(STATIC_ARTIFACTS)})
    with pytest.raises(InputError, match="keypoints_3d.json: missing") as e:
        read_keypoints_3d(ctx)
    assert "\n" not in str(e.value)
    path = tmp_path / "run" / "static" / "keypoints_3d.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"names": ["a"], "world": [[0.0, 0.0, 0.0]]}))
    with pytest.raises(InputError, match=f"keypoints_3d.json: 1 keypoints, the scene has {lamp.num_keypoints}"):
        read_keypoints_3d(ctx)


def test_driving_keypoints_go_to_the_files_pixels_and_come_back(tmp_path, lamp):
    """Written in the pixels of the driving frames' files (the recentring undone), read back in the pipeline's
    pixels; other frames or no cape stage: an InputError naming the file."""
    rec = Recentring(scale=1.5, centre=(10.0, 14.0), size=(24, 24))
    scene = dataclasses.replace(lamp, recentring=rec)
    ctx = _ctx(scene, tmp_path / "run", {})
    (tmp_path / "run" / "cape").mkdir(parents=True)
    pts = torch.rand(3, scene.num_keypoints, 2) * 24
    conf = torch.rand(3, scene.num_keypoints)
    write_driving_keypoints(ctx, pts, conf, generated=False)
    saved = json.loads((tmp_path / "run" / DRIVING_KEYPOINTS).read_text())
    torch.testing.assert_close(torch.tensor(saved["points"]), rec.to_scene(pts))  # an independent mapping
    assert "video_hash" not in saved  # the scene's own video
    with pytest.raises(InputError, match="driving_keypoints.json: missing"):
        read_driving_keypoints(ctx, 3)  # the cape stage is not in the manifest
    ctx.artifacts["cape"] = {"driving_keypoints": DRIVING_KEYPOINTS}
    back, c = read_driving_keypoints(ctx, 3)
    torch.testing.assert_close(back, pts, atol=1e-4, rtol=0)
    assert torch.equal(c, conf)
    with pytest.raises(InputError, match=r"driving_keypoints.json: points \(3, .*, 2\), the driving video needs "
                                         r"\(4, "):
        read_driving_keypoints(ctx, 4)
    generated = dataclasses.replace(scene, video=None)  # a generated video whose hash the file does not carry
    (tmp_path / "run" / "inputs" / "video").mkdir(parents=True)
    (tmp_path / "run" / "inputs" / "video" / "source.json").write_text(json.dumps({"hash": "0123abcd"}))
    with pytest.raises(InputError, match="driving_keypoints.json: made on another generated driving video"):
        read_driving_keypoints(_ctx(generated, tmp_path / "run", ctx.artifacts), 3)


def test_the_dynamic_stage_never_reruns_cape_on_a_stale_file(tmp_path, lamp):
    """λ_kml > 0 and a driving_keypoints.json of another video (2 frames for 3): an InputError naming the file,
    before training and without one detector call (it used to run CAPE again, silently)."""
    from dynapose4d.stages.dynamic import stage as dynamic
    from dynapose4d.stages.dynamic.config import DynamicConfig

    run_dir = tmp_path / "run"
    perfect_static(make_object("lamp", 1, 3), run_dir, lamp)
    ctx = _ctx(lamp, run_dir, {"static": dict(STATIC_ARTIFACTS), "cape": {"driving_keypoints": DRIVING_KEYPOINTS}})
    (run_dir / "cape").mkdir()
    write_driving_keypoints(ctx, torch.zeros(2, lamp.num_keypoints, 2), torch.ones(2, lamp.num_keypoints), False)
    detector = ColourKeypoints.from_support(lamp.image, lamp.keypoints)
    with pytest.raises(InputError, match="driving_keypoints.json") as e:
        dynamic.run(ctx, DynamicConfig(steps=1, lambda_kml=1.0, orbit_frames=2, evaluate=False),
                    keypoints_fn=detector)
    assert "\n" not in str(e.value) and detector.calls == 0
    assert not (run_dir / "dynamic" / "deform.ckpt").exists()


def test_a_generated_video_hands_its_keypoints_on_by_hash(tmp_path, monkeypatch, capsys):
    """A scene without a video (SVD stood in for by a fake pipeline): the cape stage writes the driving keypoints
    of the generated frames with their hash, the dynamic stage (λ_kml > 0) reads them; frames generated anew with
    other settings make the dynamic stage stop on that file instead of running CAPE again."""
    import shutil

    from test_svd import FakeSVDPipe

    from dynapose4d.cli import main
    from dynapose4d.priors import svd
    from dynapose4d.stages.dynamic import stage as dynamic_stage

    monkeypatch.setattr(svd, "load_svd_pipeline", lambda *a, **k: FakeSVDPipe(fade=0.05))
    monkeypatch.setattr(dynamic_stage, "check_svd_weights", lambda *a, **k: None)  # the fake needs no weights
    root = write_scene("lamp", tmp_path / "scene", seed=1, num_frames=1, size=24)
    shutil.rmtree(root / "video")
    run = tmp_path / "run"
    smoke = ["--config", "configs/smoke.yaml", "--set", "static.prior=none", "dynamic.driver=svd",
             "dynamic.svd.num_frames=3",
             "dynamic.svd.width=32", "dynamic.svd.height=32"]
    assert main(["run", str(root), "--out", str(run), *smoke]) == 0
    d = json.loads((run / DRIVING_KEYPOINTS).read_text())
    assert d["video_hash"] == json.loads((run / "inputs" / "video" / "source.json").read_text())["hash"]
    assert torch.tensor(d["points"]).shape[0] == 3
    assert (run / "dynamic" / "deform.ckpt").is_file()
    # the dynamic stage alone with another generated video (another seed of SVD's): the file no longer matches
    capsys.readouterr()
    assert main(["run", str(root), "--out", str(run), *smoke, "dynamic.svd.motion_bucket_id=60", "--resume",
                 "--stages", "dynamic"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "driving_keypoints.json: made on another generated driving video" in err[-1], err
