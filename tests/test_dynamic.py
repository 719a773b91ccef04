"""The dynamic stage end to end on a tiny synthetic scene (perfect static stage, a differentiable stand-in for
CAPE): the reference loss falls, the moved Gaussians beat the no-motion baseline on held-out cameras, every
output is written, and `export --format ply` writes T loadable PLYs."""

from __future__ import annotations

import dataclasses
import json
from argparse import Namespace

import pytest
import torch
from dynamic_helpers import (
    STATIC_ARTIFACTS,
    ColourKeypoints,
    detected_driving_keypoints,
    perfect_static,
    scene_from_folder,
)

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.data.recentring import Recentring
from dynapose4d.data.synthetic import make_object, write_scene
from dynapose4d.deform import gaussians_at, load_dynamic, read_dynamic
from dynapose4d.gaussians import load_ply
from dynapose4d.pipeline.config import TrainerConfig, WandbConfig
from dynapose4d.pipeline.run_export import export_cli
from dynapose4d.stages.base import StageContext
from dynapose4d.stages.dynamic.config import DynamicConfig
from dynapose4d.stages.dynamic.stage import run

T, SIZE = 6, 48


def _ctx(scene, run_dir):
    return StageContext(scene=scene, run_dir=run_dir, artifacts={"static": dict(STATIC_ARTIFACTS)},
                        trainer=TrainerConfig(accelerator="cpu", progress_bar=False, log_every_n_steps=5,
                                              checkpoint_every_n_steps=1000),
                        wandb=WandbConfig(enabled=False))


def _cfg(**kw) -> DynamicConfig:
    cfg = DynamicConfig(steps=120, batch_frames=4, lambda_kml=1.0, lambda_scl=0.1, lambda_rigid=100.0,
                        orbit_frames=4, **kw)
    cfg.hexplane.grid_lr, cfg.hexplane.mlp_lr, cfg.hexplane.anchor_first_frame = 0.02, 0.002, True
    return cfg


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dyn")
    write_scene("humanoid", root / "scene", seed=0, num_frames=T, size=SIZE)
    scene = scene_from_folder(root / "scene")
    # as if the files had been recentred: 2D outputs must come back in the files' pixels (scene.recentring)
    scene = dataclasses.replace(scene, recentring=Recentring(scale=1.25, centre=(30.0, 26.0), size=(SIZE, SIZE)))
    run_dir = root / "run"
    perfect_static(make_object("humanoid", 0, T), run_dir, scene)
    detector = ColourKeypoints.from_support(scene.image, scene.keypoints)
    ctx = _ctx(scene, run_dir)
    detected_driving_keypoints(ctx, detector)  # the cape stage's file, made by the stand-in detector
    artifacts = run(ctx, _cfg(), keypoints_fn=detector)
    return run_dir, scene, artifacts, detector


def test_fit_lowers_reference_loss_and_beats_no_motion(fitted):
    run_dir, scene, artifacts, detector = fitted
    assert artifacts["deform"] == "dynamic/deform.ckpt" and artifacts["metrics"] == "dynamic/metrics.json"
    logs = [json.loads(line) for line in (run_dir / "dynamic/logs/metrics.jsonl").read_text().splitlines()]
    rgb = [r["dynamic/loss_rgb"] for r in logs if "dynamic/loss_rgb" in r]
    assert rgb[-1] < 0.5 * rgb[0]  # L_ref falls
    assert all(any(f"dynamic/{k}" in r for r in logs) for k in ("loss_alpha", "loss_kml", "loss_scl", "loss_rigid"))
    assert detector.calls > 0  # KML ran the detector on renders
    m = json.loads((run_dir / "dynamic/metrics.json").read_text())
    ref, novel = m["per_view"]["az000"], m["novel"]
    assert ref["novel"] == 0.0 and m["per_view"]["az090"]["novel"] == 1.0
    assert ref["psnr_moving"] > ref["psnr_moving_no_motion"] + 6.0  # the reference view follows the video
    # held-out cameras (never seen moving): the moved Gaussians beat gt frame 0 held still on the moving pixels
    assert novel["psnr_moving"] > novel["psnr_moving_no_motion"] + 1.0
    assert m["mean"]["kp_error_3d"] < m["mean"]["kp_error_3d_no_motion"]


def test_outputs_and_load_dynamic(fitted):
    run_dir, scene, _, _ = fitted
    out = run_dir / "dynamic"
    for name in ("reference.mp4", "reference.gif", "orbit.mp4", "orbit.gif", "keypoints.mp4"):
        assert (out / "videos" / name).stat().st_size > 0
    kp = json.loads((out / "keypoints.json").read_text())
    N = scene.num_keypoints
    assert kp["names"] == scene.names
    assert torch.tensor(kp["world"]).shape == (T, N, 3)
    assert torch.tensor(kp["reference_2d"]).shape == (T, N, 2) and torch.tensor(kp["confidence"]).shape == (T, N)
    # frame 0 (anchored): the tracks project back onto the support keypoints, in the pixels of the scene's files
    ref0 = torch.tensor(kp["reference_2d"][0])
    assert (ref0 - scene.recentring.to_scene(scene.keypoints)).norm(dim=-1).max() < 1e-2
    canonical, phi = load_dynamic(run_dir)
    assert phi.num_frames == T and len(canonical) == len(load_ply(run_dir / "static/gaussians.ply"))
    assert read_dynamic(out / "deform.ckpt")["extra"] == {}  # the model only: camera and size are the run's
    with torch.no_grad():
        g0, g1 = gaussians_at(canonical, phi, 0.0), gaussians_at(canonical, phi, 1.0)
    torch.testing.assert_close(g0["means"], canonical.means)
    assert (g1["means"] - canonical.means).norm(dim=-1).max() > 0.02


def test_export_ply_sequence(fitted, tmp_path):
    run_dir, _, _, _ = fitted
    assert export_cli(Namespace(run=str(run_dir), format=["ply"], up="+y", out=str(tmp_path / "seq"))) == 0
    files = sorted((tmp_path / "seq" / "splats").glob("*.ply"))
    assert [f.name for f in files] == [f"frame_{i:03d}.ply" for i in range(T)]
    canonical, phi = load_dynamic(run_dir)
    last = load_ply(files[-1])
    with torch.no_grad():
        torch.testing.assert_close(last.means, gaussians_at(canonical, phi, 1.0)["means"])
    torch.testing.assert_close(load_ply(files[0]).means, canonical.means)
    with pytest.raises(InputError, match="deform.ckpt"):
        export_cli(Namespace(run=str(tmp_path), format=None, up=None, out=None))


def test_lambda_kml_zero_never_runs_cape(tmp_path):
    """λ_kml = 0: no detector call and no cape artifact needed; λ_kml > 0 without the cape stage: a clear error."""
    write_scene("lamp", tmp_path / "scene", seed=1, num_frames=3, size=24)
    scene = scene_from_folder(tmp_path / "scene")
    perfect_static(make_object("lamp", 1, 3), tmp_path / "run", scene)
    detector = ColourKeypoints.from_support(scene.image, scene.keypoints)
    cfg = DynamicConfig(steps=2, lambda_kml=0.0, lambda_scl=1.0, orbit_frames=2, evaluate=False)
    cfg.deform = "control"
    cfg.control.num_controls = 16
    run(_ctx(scene, tmp_path / "run"), cfg, keypoints_fn=detector)
    assert detector.calls == 0
    assert not (tmp_path / "run/dynamic/metrics.json").exists()
    _, phi = load_dynamic(tmp_path / "run")
    assert phi.kind == "control"
    with pytest.raises(InputError, match="cape"):
        run(_ctx(scene, tmp_path / "run2"), DynamicConfig(steps=1, lambda_kml=1.0))


def test_novel_view_sds_reaches_the_deformation(tmp_path):
    """λ_sds > 0 with a tiny random Zero-1-to-3 (conditioned per driving frame): the SDS term alone moves φ."""
    from test_zero123 import write_tiny_zero123

    from dynapose4d.deform import build_deformation
    from dynapose4d.stages.dynamic.module import DynamicGaussianModule
    from dynapose4d.stages.dynamic.stage import Zero123PerFrame

    write_scene("lamp", tmp_path / "scene", seed=1, num_frames=3, size=24)
    scene = scene_from_folder(tmp_path / "scene")
    canonical_path = perfect_static(make_object("lamp", 1, 3), tmp_path / "run")
    canonical = load_ply(canonical_path)
    from dynapose4d.priors.zero123 import Zero123Config

    cfg = DynamicConfig(lambda_rgb=0.0, lambda_alpha=0.0, lambda_kml=0.0, lambda_scl=0.0, lambda_sds=1.0)
    z123 = Zero123Config(path=str(write_tiny_zero123(tmp_path / "z123")), size=32)
    phi = build_deformation("hexplane", canonical.means, 3, cfg.hexplane)
    module = DynamicGaussianModule(cfg, canonical, phi, scene.video, scene.camera,
                                   sds_fn=Zero123PerFrame(cfg, scene.video, z123, scene.camera.elevation))
    module.log_dict = lambda *a, **k: None
    loss = module.training_step(torch.tensor([0, 2]), 0)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert phi.d_position[-1].weight.grad.abs().sum() > 0
    assert sorted(module._frozen["sds_fn"].refs) == [0, 2]  # one conditioning per driving frame
    assert not any("prior" in k or "unet" in k for k in module.state_dict())  # never in a checkpoint


def test_sds_chunks_score_each_frame_as_one_at_a_time(tmp_path, monkeypatch):
    """`dynamic.sds_chunk` batches frames into one Zero-1-to-3 call, each with its own driving frame's conditioning:
    with the randomness pinned (posterior mode; the same noise for every frame), chunks of 1, 2 and all 3 frames
    give the same loss and image gradient, and a chunk that gave every frame one conditioning would not."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from test_zero123 import write_tiny_zero123

    from dynapose4d.priors.zero123 import Zero123Config
    from dynapose4d.stages.dynamic.stage import Zero123PerFrame

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    monkeypatch.setattr(torch, "randn_like", lambda x, **k: torch.sin(
        torch.arange(x[0].numel(), dtype=x.dtype) * 0.37).view(x.shape[1:]).expand_as(x).contiguous())
    g = torch.Generator().manual_seed(0)
    video = torch.cat([torch.rand(3, 24, 24, 3, generator=g), torch.ones(3, 24, 24, 1)], -1)  # [T, H, W, 4]
    images = torch.rand(3, 3, 32, 32, generator=g)  # [B, 3, S, S]
    frames, d_elev = torch.tensor([2, 0, 1]), torch.tensor([10.0, -5.0, 20.0])
    d_azim = torch.tensor([90.0, -40.0, 150.0])
    z123 = Zero123Config(path=str(write_tiny_zero123(tmp_path / "z123")), size=32)

    def score(chunk: int, fr: torch.Tensor = frames) -> tuple[torch.Tensor, torch.Tensor]:
        fn = Zero123PerFrame(DynamicConfig(sds_chunk=chunk), video, z123)
        x = images.clone().requires_grad_(True)
        loss = fn(x, fr, d_elev, d_azim, 0.5)
        loss.backward()
        return loss.detach(), x.grad

    loss1, grad1 = score(1)
    for chunk in (2, 0):
        loss, grad = score(chunk)
        assert torch.allclose(loss, loss1, rtol=1e-4), (chunk, loss, loss1)
        assert torch.allclose(grad, grad1, rtol=1e-3, atol=1e-6 * grad1.abs().max()), chunk
    other, _ = score(0, torch.tensor([0, 0, 0]))  # same renders, every frame conditioned on frame 0
    assert not torch.allclose(other, loss1, rtol=1e-3)
    with pytest.raises(ConfigError, match="sds_chunk"):
        DynamicConfig(sds_chunk=-1).validate()


def test_track_loss_starts_at_its_analytic_value_and_pulls_the_tracks_onto_the_driving_keypoints(tmp_path):
    """λ_track alone: at φ = identity the projected tracks sit on the support keypoints, so the loss is the mean
    normalised squared shift of the targets; a few steps move the attached Gaussians after the targets."""
    from dynapose4d.core.errors import ConfigError
    from dynapose4d.deform import build_deformation
    from dynapose4d.deform.tracks import keypoint_tracks, lift_keypoints, project_tracks
    from dynapose4d.stages.dynamic.module import DynamicGaussianModule

    S, F = 32, 3
    write_scene("humanoid", tmp_path / "scene", seed=0, num_frames=F, size=S)
    scene = scene_from_folder(tmp_path / "scene")
    canonical = load_ply(perfect_static(make_object("humanoid", 0, F), tmp_path / "run"))
    N = scene.num_keypoints
    shift = torch.tensor([[0.0, 0.0], [3.0, 0.0], [6.0, -2.0]])  # [F, 2] px per frame
    targets = scene.keypoints.float()[None] + shift[:, None]  # [F, N, 2]
    cfg = DynamicConfig(lambda_rgb=0.0, lambda_alpha=0.0, lambda_kml=0.0, lambda_scl=0.0, lambda_track=1.0)
    cfg.hexplane.anchor_first_frame = True
    torch.manual_seed(0)
    phi = build_deformation("hexplane", canonical.means, F, cfg.hexplane)
    module = DynamicGaussianModule(cfg, canonical, phi, scene.video, scene.camera, targets, torch.ones(F, N),
                                   keypoints_3d=lift_keypoints(canonical.activated(), scene.keypoints.float(),
                                                               scene.camera, S, S))
    module.log_dict = lambda *a, **k: None
    frames = torch.tensor([1, 2])
    expected = ((shift[1:] / S) ** 2).sum(-1).mean()  # identical for every keypoint
    torch.testing.assert_close(module.training_step(frames, 0).detach(), expected, atol=1e-4, rtol=1e-3)

    def err() -> float:
        with torch.no_grad():
            tr = keypoint_tracks(canonical, phi, scene.keypoints, scene.camera, S, S, F, cfg.track_neighbours)
        return float((project_tracks(tr, scene.camera, S, S)[1:] - targets[1:]).norm(dim=-1).mean())

    before = err()
    opt = torch.optim.Adam(phi.parameters(), lr=0.01)
    for _ in range(40):
        opt.zero_grad()
        module.training_step(frames, 0).backward()
        opt.step()
    assert err() < 0.3 * before, (before, err())
    with pytest.raises(ConfigError, match="lambda_track"):
        DynamicGaussianModule(cfg, canonical, phi, scene.video, scene.camera)  # no driving keypoints


def test_bone_loss_turns_shrinking_keypoints_into_depth_motion(tmp_path):
    """Driving keypoints that shrink towards their centre on screen (as the object moving away would) under
    λ_track: alone, the tracks follow by shortening the bones; with λ_bone they follow as well and the bones keep
    their lengths, which for a projection 15% smaller takes turning them in depth (foreshortening)."""
    from dynapose4d.deform import build_deformation
    from dynapose4d.deform.tracks import keypoint_tracks, lift_keypoints, project_tracks
    from dynapose4d.stages.dynamic.module import DynamicGaussianModule

    S, F = 32, 2
    write_scene("humanoid", tmp_path / "scene", seed=0, num_frames=F, size=S)
    scene = scene_from_folder(tmp_path / "scene")
    canonical = load_ply(perfect_static(make_object("humanoid", 0, F), tmp_path / "run"))
    kp = scene.keypoints.float()
    targets = torch.stack([kp, kp.mean(0) + 0.85 * (kp - kp.mean(0))])  # [F, N, 2]: 15% smaller at frame 1
    bones = torch.tensor(scene.skeleton)

    def fit(lambda_bone: float) -> tuple[float, float]:
        cfg = DynamicConfig(lambda_rgb=0.0, lambda_alpha=0.0, lambda_kml=0.0, lambda_scl=0.0, lambda_track=1.0,
                            lambda_bone=lambda_bone)
        cfg.hexplane.anchor_first_frame = True
        torch.manual_seed(0)
        phi = build_deformation("hexplane", canonical.means, F, cfg.hexplane)
        module = DynamicGaussianModule(cfg, canonical, phi, scene.video, scene.camera, targets, torch.ones(F, len(kp)),
                                       keypoints_3d=lift_keypoints(canonical.activated(), kp, scene.camera, S, S,
                                                                   skeleton=list(scene.skeleton)),
                                       skeleton=list(scene.skeleton))
        module.log_dict = lambda *a, **k: None
        opt = torch.optim.Adam(phi.parameters(), lr=0.01)
        for _ in range(150):
            opt.zero_grad()
            module.training_step(torch.tensor([1]), 0).backward()
            opt.step()
        with torch.no_grad():
            tr = keypoint_tracks(canonical, phi, kp, scene.camera, S, S, F, cfg.track_neighbours,
                                 skeleton=list(scene.skeleton))  # [F, N, 3]
        px_err = float((project_tracks(tr[1], scene.camera, S, S) - targets[1]).norm(dim=-1).mean())
        length = (tr[:, bones[:, 0]] - tr[:, bones[:, 1]]).norm(dim=-1)  # [F, E]
        stretch = float((length[1] / length[0] - 1.0).abs().mean())
        return px_err, stretch

    free, bone = fit(0.0), fit(1.0)  # (pixel error, relative change of bone length)
    assert free[0] < 0.5 and bone[0] < 0.5, (free, bone)  # both follow the targets on screen (pixels)
    assert free[1] > 0.10 and bone[1] < 0.03, (free, bone)  # bones shrink ~15% without the loss, not with it
