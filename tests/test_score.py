"""The one scorer (`dynapose4d.evaluation.score.score_4d`): both callers agree, analytic cases, time alignment.

A tiny run is written by hand: random canonical Gaussians moved by a hexplane deformation whose grids are
perturbed (so it moves, and is not the identity at τ = 0), a run folder around it (manifest, static ply,
dynamic checkpoint, keypoint tracks), and gt/ folders rendered from the same model as 8-bit straight RGBA PNGs.
Expected numbers come from the PNGs and renders through an independent numpy reading of the documented
definitions, or from analytic bounds (8-bit quantisation), never from the scorer itself.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import _fakes
import numpy as np
import pytest
import torch

from dynapose4d.core.cameras import REFERENCE_CAMERA, Camera, save_cameras
from dynapose4d.core.images import straight_rgba
from dynapose4d.core.io import read_image, write_image, write_json
from dynapose4d.deform import build_deformation, render_4d, save_dynamic
from dynapose4d.evaluation.score import ScoreOptions, score_4d, time_index
from dynapose4d.gaussians import GaussianModel, rgb_to_sh, save_ply
from dynapose4d.gaussians.init import sphere_init
from dynapose4d.pipeline.evaluate import evaluate_run, load_run
from dynapose4d.pipeline.run_folder import write_manifest

SIZE = 32
#: the gt cameras: one at the reference pose (not novel) and two novel ones
CAMERAS = [Camera("az000", 0.0, 0.0, 2.0, 49.1), Camera("az090", 0.0, 90.0, 2.0, 49.1),
           Camera("el30_az045", 30.0, 45.0, 2.0, 49.1)]
QUANTISED_PSNR = 20.0 * math.log10(255.0)  # 8-bit straight RGBA over white: |error| <= 1/255 per channel


def moving_model(num_frames: int) -> tuple[GaussianModel, torch.nn.Module]:
    """Random Gaussians and a hexplane deformation that moves them (grids perturbed; not the identity at τ=0)."""
    canonical = sphere_init(300, 0.4, 0.6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a third too bright (colour > 1): the two compositing paths differ where they show
        canonical.splats["sh0"][::3] = rgb_to_sh(torch.tensor([1.4, 1.2, 0.3])).view(1, 1, 3)
    phi = build_deformation("hexplane", canonical.means, num_frames).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in phi.named_parameters():
            p.add_((1.0 if "grids" in name else 0.03) * torch.randn(p.shape, generator=gen))
    return canonical, phi


def path3d(tau: torch.Tensor) -> torch.Tensor:
    """Five keypoints on a curved path: [len(tau), 5, 3] (non-zero jitter, large enough to break frame-0 PCK)."""
    base = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.1, 0.0], [-0.2, 0.1, 0.0], [0.0, -0.3, 0.1], [0.1, 0.3, -0.1]])
    t = tau.float()[:, None]  # [T, 1]
    return base + torch.stack([0.3 * t, 0.2 * t ** 2, -0.1 * t ** 3], -1)  # [5, 3] + [T, 1, 3]


def write_gt(gt: Path, canonical: GaussianModel, phi, num_frames: int, keypoints3d: torch.Tensor | None) -> Path:
    """gt/ of the model itself: cameras.json, <camera>/fff.png at τ = f/(T−1), keypoints3d.json."""
    gt.mkdir(parents=True, exist_ok=True)
    save_cameras(CAMERAS, gt / "cameras.json")
    taus = [f / (num_frames - 1) for f in range(num_frames)]
    rgb, alpha = render_4d(canonical, phi, CAMERAS, taus, SIZE, SIZE, background=None)  # [T, C, H, W, 3|1]
    for c, cam in enumerate(CAMERAS):
        for f in range(num_frames):
            write_image(gt / cam.name / f"{f:03d}.png", straight_rgba(rgb[f, c], alpha[f, c]))
    if keypoints3d is not None:
        write_json(gt / "keypoints3d.json", {"frames": keypoints3d.tolist()})
    return gt


def write_run(root: Path, canonical: GaussianModel, phi, tracks: torch.Tensor) -> Path:
    """A run folder whose dynamic stage is done: static ply, deform.ckpt, keypoints.json (tracks), manifest."""
    scene = _fakes.write_tiny_scene(root / "scene", size=SIZE)  # camera.json = the reference camera
    run = root / "run"
    save_ply(canonical, run / "static" / "gaussians.ply")
    save_dynamic(run / "dynamic" / "deform.ckpt", canonical, phi)
    write_json(run / "dynamic" / "keypoints.json", {"names": [], "world": tracks.tolist()})
    write_manifest(run, {"version": 1, "scene": str(scene), "image_size": [SIZE, SIZE], "inputs": {}, "stages": {
        "static": {"status": "done", "artifacts": {"gaussians": "static/gaussians.ply"}},
        "dynamic": {"status": "done", "artifacts": {"deform": "dynamic/deform.ckpt",
                                                    "keypoints": "dynamic/keypoints.json"}}}})
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(root, canonical, phi, tracks [4, 5, 3], run dir, gt dir): 4 run frames, 4 gt frames, tracks = gt."""
    root = tmp_path_factory.mktemp("score")
    canonical, phi = moving_model(4)
    kp = path3d(torch.arange(4) / 3)  # [4, 5, 3]
    run = write_run(root, canonical, phi, kp)
    gt = write_gt(root / "gt", canonical, phi, 4, kp)
    return root, canonical, phi, kp, run, gt


# ------------------------------------------------------------------------------------------------ independent


def _png_rgb(path: Path) -> np.ndarray:
    """A gt PNG composited over white, float64 [H, W, 3] (numpy, not the project's compositing)."""
    a = read_image(path).double().numpy()
    return a[..., :3] * a[..., 3:] + (1.0 - a[..., 3:])


def _psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    se = ((x - y) ** 2).sum(-1)  # [H, W]
    m = np.ones(se.shape, bool) if mask is None else mask
    return -10.0 * math.log10(max(se[m].sum() / (3.0 * m.sum()), 1e-12))


def expected_image_metrics(gt: Path, pred: dict[str, np.ndarray], held: dict[str, np.ndarray]
                           ) -> dict[str, dict[str, float]]:
    """Per camera: psnr (`pred[camera]` [T, H, W, 3]), psnr_no_motion and psnr_moving_no_motion (gt frame 0 held)
    and psnr_held (`held[camera]` [H, W, 3] held), averaged over the frames with moving pixels (a channel over
    white changes by more than 0.05 from frame 0)."""
    out = {}
    for cam in CAMERAS:
        frames = [_png_rgb(p) for p in sorted((gt / cam.name).glob("*.png"))]
        moving = [(i, f, np.abs(f - frames[0]).max(-1) > 0.05) for i, f in enumerate(frames)]
        moving = [(i, f, m) for i, f, m in moving if m.any()]
        assert len(moving) >= 2, cam.name  # the model really moves in every camera
        out[cam.name] = {"psnr": float(np.mean([_psnr(pred[cam.name][i], f) for i, f, _ in moving])),
                         "psnr_no_motion": float(np.mean([_psnr(frames[0], f) for _, f, _ in moving])),
                         "psnr_moving_no_motion": float(np.mean([_psnr(frames[0], f, m) for _, f, m in moving])),
                         "psnr_held": float(np.mean([_psnr(held[cam.name][0], f) for _, f, _ in moving]))}
    return out


def render_white(canonical, phi, taus: list[float], composite: str) -> dict[str, np.ndarray]:
    """{camera: [F, H, W, 3]} over white: straight RGBA composited in numpy, or the rasteriser's own background."""
    if composite == "rasteriser":
        rgb = render_4d(canonical, phi, CAMERAS, taus, SIZE, SIZE, 1.0)[0].double().numpy()  # [F, C, H, W, 3]
        return {c.name: rgb[:, i] for i, c in enumerate(CAMERAS)}
    rgb, alpha = render_4d(canonical, phi, CAMERAS, taus, SIZE, SIZE, background=None)
    rgba = straight_rgba(rgb, alpha).double().numpy()  # [F, C, H, W, 4]
    return {c.name: rgba[:, i, ..., :3] * rgba[:, i, ..., 3:] + (1.0 - rgba[:, i, ..., 3:])
            for i, c in enumerate(CAMERAS)}


# ------------------------------------------------------------------------------------------------ tests


def test_the_two_callers_agree(tiny):
    """`dynapose4d eval`'s path (run folder loaded from disk) and the dynamic stage's call (the in-memory model,
    positional arguments) give the same numbers for the same options."""
    _, canonical, phi, kp, run, gt = tiny
    res = evaluate_run(run, gt)
    stage_way = score_4d(canonical, phi, gt, kp, REFERENCE_CAMERA, options=ScoreOptions(held="frame0"))
    assert {k: res[k] for k in ("mean", "novel", "per_view")} == stage_way.metrics
    assert res["frames"] == stage_way.frames == 4 and res["keypoints"] == "available"
    for key in ("psnr", "ssim", "pck", "psnr_held"):
        assert res["mean"][key] == stage_way.metrics["mean"][key] is not None

    # the held option changes the held rows only (the deformation is not the identity at τ = 0)
    canon_straight = score_4d(canonical, phi, gt, kp, REFERENCE_CAMERA, options=ScoreOptions(held="canonical"))
    assert canon_straight.metrics["mean"]["psnr"] == res["mean"]["psnr"]
    assert canon_straight.metrics["mean"]["pck"] == res["mean"]["pck"]
    assert abs(canon_straight.metrics["mean"]["psnr_held"] - res["mean"]["psnr_held"]) > 0.1
    assert load_run(run).num_frames == 4


def test_analytic_model_reproduces_gt(tiny):
    """gt rendered from the model itself (straight RGBA PNGs): with straight compositing PSNR is at least the
    8-bit quantisation bound (20·log10 255 dB), SSIM ~1; PCK 1, 3D error 0, jitter = the gt's; PSNR, the
    baselines (gt frame 0 held; the model's frame 0 or its canonical Gaussians held) and the rasteriser's
    compositing equal an independent numpy reading of their definitions."""
    _, canonical, phi, kp, run, gt = tiny
    taus = [f / 3 for f in range(4)]
    for held in ("frame0", "canonical"):
        for composite in ("straight", "rasteriser"):
            opts = ScoreOptions(held=held, composite=composite)
            m = score_4d(canonical, phi, gt, kp, REFERENCE_CAMERA, options=opts).metrics
            for name, v in m["per_view"].items():
                if composite == "straight":
                    assert QUANTISED_PSNR <= v["psnr"] < 120.0 and v["ssim"] > 0.99, name
                    assert v["psnr_moving"] >= QUANTISED_PSNR, name
                assert v["psnr_no_motion"] < 40.0 and v["pck"] == 1.0 and v["pck_no_motion"] < 1.0, name
            assert m["mean"]["kp_error_3d"] == 0.0 and m["mean"]["kp_error_3d_frame0"] == 0.0
            assert m["mean"]["kp_error_3d_no_motion"] > 0.05
            assert m["mean"]["jitter"] == pytest.approx(m["mean"]["jitter_gt"]) and m["mean"]["jitter"] > 0
            pred = render_white(canonical, phi, taus, composite)
            held_imgs = render_white(canonical, phi if held == "frame0" else None, [0.0], composite)
            want = expected_image_metrics(gt, pred, held_imgs)
            for name, w in want.items():
                for key, value in w.items():
                    assert m["per_view"][name][key] == pytest.approx(value, abs=2e-5), (held, composite, name, key)
            assert m["per_view"]["az000"]["novel"] == 0.0 and m["per_view"]["az090"]["novel"] == 1.0
            assert m["novel"]["psnr_no_motion"] == pytest.approx(
                (want["az090"]["psnr_no_motion"] + want["el30_az045"]["psnr_no_motion"]) / 2, abs=2e-5)
    # the bright Gaussians make the rasteriser's compositing visibly differ from the straight PNGs' (gt)
    straight = score_4d(canonical, phi, gt, kp, REFERENCE_CAMERA).metrics["mean"]["psnr"]
    raster = score_4d(canonical, phi, gt, kp, REFERENCE_CAMERA, options=ScoreOptions(composite="rasteriser"))
    assert raster.metrics["mean"]["psnr"] < straight - 1.0


def test_empty_model_against_empty_gt_hits_the_cap(tmp_path):
    """Gaussians out of every camera's view against fully transparent gt: both are exactly white, so PSNR is the
    documented cap (MSE floored at 1e-12: 120 dB) and SSIM 1; nothing moves, so the moving-pixel PSNR is None."""
    far = GaussianModel.from_points(torch.full((4, 3), 50.0), torch.rand(4, 3), opacity=0.9)
    gt = tmp_path / "gt"
    gt.mkdir()
    save_cameras(CAMERAS, gt / "cameras.json")
    for cam in CAMERAS:
        for f in range(3):
            write_image(gt / cam.name / f"{f:03d}.png", torch.zeros(SIZE, SIZE, 4))
    m = score_4d(far, None, gt, None, REFERENCE_CAMERA).metrics
    assert m["mean"]["psnr"] == 120.0 and m["mean"]["psnr_no_motion"] == 120.0 and m["mean"]["ssim"] == 1.0
    assert m["mean"]["psnr_moving"] is None and "pck" not in m["mean"]


def test_time_index_by_normalised_time():
    """gt frame f at τ = f/(T_gt−1) takes the run frame nearest to it; identity when the counts match."""
    assert time_index(4, 4).tolist() == [0, 1, 2, 3]
    assert time_index(5, 4).tolist() == [0, 1, 3, 4]  # τ 0, 1/3, 2/3, 1 vs run frames at 0, 1/4, 1/2, 3/4, 1
    assert time_index(7, 4).tolist() == [0, 2, 4, 6]
    assert time_index(2, 3).tolist() == [0, 0, 1]  # τ 1/2 lies halfway: round to even


@pytest.mark.parametrize("held", ["frame0", "canonical"])
def test_run_and_gt_with_different_frame_counts(tmp_path, held):
    """A run with 5 frames (deformation and tracks) against a 4-frame gt: images are rendered at the gt's times
    (PSNR at the quantisation bound), tracks are taken at the nearest normalised time ([0, 1, 3, 4]; the run's
    frame 2 is far off and must not be used): PCK 1 and 3D error 0, on both callers' held options."""
    canonical, phi = moving_model(5)
    kp_gt = path3d(torch.arange(4) / 3)  # [4, 5, 3]
    tracks = torch.full((5, 5, 3), 9.0)  # [5, 5, 3]
    tracks[[0, 1, 3, 4]] = kp_gt
    gt = write_gt(tmp_path / "gt", canonical, phi, 4, kp_gt)
    m = score_4d(canonical, phi, gt, tracks, REFERENCE_CAMERA, options=ScoreOptions(held=held)).metrics
    assert m["mean"]["psnr"] >= QUANTISED_PSNR and m["mean"]["psnr_moving"] >= QUANTISED_PSNR
    assert m["mean"]["pck"] == 1.0 and m["mean"]["kp_error_3d"] == 0.0
    assert m["mean"]["jitter"] == pytest.approx(m["mean"]["jitter_gt"])
    run = write_run(tmp_path, canonical, phi, tracks)
    assert json.loads(json.dumps(evaluate_run(run, gt)))["mean"]["pck"] == 1.0
