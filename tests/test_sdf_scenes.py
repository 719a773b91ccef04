"""The second scene generator (experiments/sdf_scenes.py: ray-marched shaded capsules, its own camera code)
against the contracts: its cameras are docs/cameras.md's, its scenes load, and its keypoints, 3D ground truth and
images agree with each other through the project's own projection."""

from __future__ import annotations

import json
from pathlib import Path

import _fakes
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from dynapose4d.core.cameras import load_cameras, orbit_camera, project
from dynapose4d.data.scene import load_scene

S = _fakes.load_sdf_scenes()


@pytest.mark.parametrize("elev,azim", [(0, 0), (0, 90), (10, 144), (35, 300), (-20, 200), (60, 45)])
def test_independent_look_at_matches_the_camera_contract(elev, azim):
    ours = orbit_camera(elev, azim, 2.0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(S.look_at(elev, azim, 2.0), ours, atol=1e-9)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return S.make_scene("crane", tmp_path_factory.mktemp("sdf") / "crane", seed=3, frames=3, size=48)


def test_scene_loads_and_its_ground_truth_is_consistent(scene):
    sc = load_scene(scene)
    assert sc.has_camera_json and sc.video is not None and sc.video.shape[0] == 3 and len(sc.views) == 4
    kp3 = torch.tensor(json.loads((scene / "gt" / "keypoints3d.json").read_text())["frames"], dtype=torch.float64)
    assert kp3.norm(dim=-1).max() < 0.75 + 1e-6  # inside the unit sphere, as docs/cameras.md asks
    ref = sc.camera
    px = project(kp3[0], ref.viewmat(torch.float64), ref.K(48, 48, torch.float64))[0]
    torch.testing.assert_close(px.float(), sc.keypoints, atol=2e-3, rtol=0)  # keypoints.json = projected gt
    alpha = sc.image[..., 3]
    inside = [alpha[int(y), int(x)] > 0.5 for x, y in px.tolist()]
    assert sum(inside) >= len(inside) - 1  # joints lie on the object (a joint may sit at a thin edge)
    for cam in load_cameras(scene / "gt" / "cameras.json"):  # every gt frame shows the projected joints
        frames = sorted((scene / "gt" / cam.name).glob("*.png"))
        assert len(frames) == 3
        p = project(kp3[-1], cam.viewmat(torch.float64), cam.K(48, 48, torch.float64))[0]
        a = torch.from_numpy(iio.imread(frames[-1])[..., 3] / 255.0)
        on = [a[int(y), int(x)] > 0.5 for x, y in p.tolist() if 0 <= x < 48 and 0 <= y < 48]
        assert sum(on) >= len(on) - 2, cam.name


SDF_NOVEL = ["az045", "az110", "az200", "el35_az300"]  # its gt cameras other than the reference


def test_static_stage_on_a_scene_it_has_never_seen(tmp_path):
    """The static stage on the second generator's shaded surfaces (64 px, 60 steps, its four views) against
    the reference-only baseline, on gt cameras that are neither the reference nor a view (measured: novel-view
    mean 24.0 dB against 16.2 dB without views, reference 26.6 dB; on the project's own humanoid the same
    settings give 25.8 and 31.0)."""
    from dynapose4d.pipeline.config import TrainerConfig, WandbConfig, load_config
    from dynapose4d.stages.base import StageContext
    from dynapose4d.stages.static import stage as static

    sc = load_scene(S.make_scene("puppet", tmp_path / "puppet", seed=1, frames=1, size=64))
    tc = TrainerConfig(accelerator="cpu", progress_bar=False, checkpoint_every_n_steps=50, log_every_n_steps=1)
    novel = {}
    for tag, sets in (("views", ["static.densify.start_step=30", "static.densify.every=30"]),
                      ("none", ["static.prior=none", "static.init=image"])):
        ctx = StageContext(scene=sc, run_dir=tmp_path / tag, trainer=tc, wandb=WandbConfig(enabled=False), seed=0)
        cfg = load_config("configs/cpu.yaml", ["static.steps=60", "static.orbit_frames=4", *sets]).static
        m = json.loads((tmp_path / tag / static.run(ctx, cfg)["metrics"]).read_text())
        novel[tag] = sum(m[f"static/psnr/{c}"] for c in SDF_NOVEL) / len(SDF_NOVEL)
        novel[tag + "/front"] = m["static/psnr/front"]
    assert novel["views/front"] >= 24.0 and novel["none/front"] >= 30.0
    assert novel["views"] >= 21.5 and novel["views"] >= novel["none"] + 5.0
