"""`max_image_size` for scene folders with camera.json (dynapose4d/data/scene.py, recentring.py `downscale_of`): a
scene larger than max_size is scaled down whole (image, keypoints, video, views; the cameras' intrinsics follow
the frame size), gt/ frames are compared at the run's size, and a scene within max_size is untouched.

The big scene is a small synthetic one (`dynapose4d.data.synthetic`) with every image upsampled 2x by Pillow
(nearest) and its 2D keypoints doubled, the camera files kept (K follows the frame size, docs/cameras.md): loaded
with max_size = the small size it must give the small scene back, within the resample's blur.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynapose4d.cape.evaluation import scene_gt_queries
from dynapose4d.core.cameras import REFERENCE_CAMERA, Camera, load_cameras, orbit_camera, project, save_camera
from dynapose4d.core.images import over_background, straight_rgba
from dynapose4d.core.io import write_image, write_json
from dynapose4d.data.recentring import downscale_of
from dynapose4d.data.scene import load_scene
from dynapose4d.data.synthetic import write_scene
from dynapose4d.deform import render_4d
from dynapose4d.evaluation.score import score_static
from dynapose4d.gaussians import save_ply
from dynapose4d.gaussians.init import sphere_init
from dynapose4d.pipeline.evaluate import evaluate_run
from dynapose4d.pipeline.plan import scene_fingerprint
from dynapose4d.pipeline.run_folder import write_manifest

SMALL = 32


def _upsample_scene(src: Path, dst: Path, k: int = 2) -> Path:
    """A copy of scene `src` with every png k times larger (nearest: each pixel a k x k block) and the 2D keypoint
    files (keypoints.json, gt/keypoints2d.json) in the new pixels (x k: pixel corners stay on pixel corners)."""
    shutil.copytree(src, dst)
    for p in dst.rglob("*.png"):
        with Image.open(p) as im:
            im.resize((im.width * k, im.height * k), Image.NEAREST).save(p)
    kp = json.loads((dst / "keypoints.json").read_text())
    kp["keypoints"] = [[k * x for x in p[:2]] + p[2:] for p in kp["keypoints"]]
    (dst / "keypoints.json").write_text(json.dumps(kp))
    kp2 = json.loads((dst / "gt" / "keypoints2d.json").read_text())
    for v in kp2.values():
        v["points"] = (k * np.asarray(v["points"])).tolist()
    (dst / "gt" / "keypoints2d.json").write_text(json.dumps(kp2))
    return dst


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path]:
    """(small synthetic scene SMALL px with video, views, gt; the same upsampled 2x)."""
    root = tmp_path_factory.mktemp("downscale")
    small = write_scene("humanoid", root / "small", seed=0, num_frames=3, size=SMALL)
    return small, _upsample_scene(small, root / "big")


def _over_white_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    d = (over_background(a, 1.0) - over_background(b, 1.0)).abs()
    return float(d.mean()), float(d.max())


def _premultiplied(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[..., :3] * x[..., 3:], x[..., 3:]], -1)


def _blurred(x: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGBA [..., H, W, 4] through the [1, 6, 1] / 8 blur on each axis: what a nearest 2x upsample
    followed by the antialiased bilinear 1/2 (a triangle filter two input pixels wide) gives. It wraps around at
    the edges, which is right only for frames with transparent borders (the test checks that they are)."""
    y = _premultiplied(x)
    y = (y.roll(1, -2) + 6 * y + y.roll(-1, -2)) / 8
    return (y.roll(1, -3) + 6 * y + y.roll(-1, -3)) / 8


# ------------------------------------------------------------------------------------------------ the similarity


@pytest.mark.parametrize("W,H,max_size", [(101, 67, 40), (67, 101, 40), (1920, 1080, 512), (4000, 3000, 512),
                                          (301, 100, 128), (2048, 2048, 512)])
def test_downscale_keeps_every_projection(W, H, max_size):
    """The frame fits within max_size (longer side at most 2 pixels short), and a 3D point projected with the
    intrinsics of the small frame lands where the downscale takes its projection at the files' size: exactly
    (the same similarity moves the images), and at the same fraction of the frame within a quarter pixel."""
    rec = downscale_of(W, H, max_size)
    Wo, Ho = rec.output_size
    assert max_size - 2 <= max(Wo, Ho) <= max_size and rec.size == (W, H)
    assert abs(Wo / Ho - W / H) < 1.0 / min(Wo, Ho)
    pts = torch.randn(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.4
    for cam in (REFERENCE_CAMERA, Camera("c", 20.0, 70.0, 2.5, 40.0)):
        vm = orbit_camera(cam.elevation, cam.azimuth, cam.radius, dtype=torch.float64)
        big, _ = project(pts, vm, cam.K(W, H, torch.float64))
        small, _ = project(pts, vm, cam.K(Wo, Ho, torch.float64))
        torch.testing.assert_close(rec.from_scene(big), small, atol=1e-9, rtol=0)
        torch.testing.assert_close(rec.to_scene(small), big, atol=1e-9, rtol=0)
        inside = (big[:, 0] >= 0) & (big[:, 0] <= W) & (big[:, 1] >= 0) & (big[:, 1] <= H)
        frac_big = big[inside] / torch.tensor([W, H], dtype=torch.float64)
        frac_small = small[inside] / torch.tensor([Wo, Ho], dtype=torch.float64)
        assert (frac_big[:, 1] - frac_small[:, 1]).abs().max() < 1e-12
        assert (frac_big[:, 0] - frac_small[:, 0]).abs().max() <= 0.25 / Wo + 1e-12
    assert downscale_of(W, H, max(W, H)) is None and downscale_of(W, H, 0) is None


# ------------------------------------------------------------------------------------------------ loading


def test_a_big_camera_scene_loads_like_the_small_one(scenes):
    """The 2x scene loaded with max_size = the small size: the small scene's image, keypoints (exactly: they are
    the projections of the same 3D points), camera, video and views within the resample's blur; the 3D gt
    keypoints project onto the keypoints with the scene's camera at the new size; the kept similarity maps them
    back to the big files' pixels."""
    small_dir, big_dir = scenes
    small, big = load_scene(small_dir), load_scene(big_dir, max_size=SMALL)
    assert big.image.shape == small.image.shape == (SMALL, SMALL, 4) and big.has_camera_json
    assert big.camera == small.camera and big.names == small.names and big.skeleton == small.skeleton
    torch.testing.assert_close(big.keypoints, small.keypoints, atol=1e-4, rtol=0)
    kp3 = torch.tensor(json.loads((big_dir / "gt" / "keypoints3d.json").read_text())["frames"][0],
                       dtype=torch.float64)
    proj, _ = project(kp3, big.camera.viewmat(torch.float64), big.camera.K(big.width, big.height, torch.float64))
    torch.testing.assert_close(proj.float(), big.keypoints, atol=1e-3, rtol=0)
    file_kp = torch.tensor(json.loads((big_dir / "keypoints.json").read_text())["keypoints"], dtype=torch.float64)
    torch.testing.assert_close(big.recentring.to_scene(big.keypoints.double()), file_kp, atol=1e-4, rtol=0)
    assert big.recentring.size == (2 * SMALL, 2 * SMALL) and big.recentring.output_size == (SMALL, SMALL)

    pairs = [("image", big.image, small.image), ("video", big.video, small.video)]
    assert big.video.shape == small.video.shape and len(big.views) == len(small.views) == 4
    for (cb, vb), (cs, vs) in zip(big.views, small.views):
        assert cb == cs and vb.shape == vs.shape
        pairs.append((cb.name, vb, vs))
    for name, b, s in pairs:
        assert float(s[..., 3][..., [0, -1], :].abs().max() + s[..., 3][..., [0, -1]].abs().max()) == 0.0
        torch.testing.assert_close(_premultiplied(b), _blurred(s), atol=1e-5, rtol=0, msg=name)
        mean, worst = _over_white_diff(b, s)  # and so close to the small scene itself
        assert mean < 0.02 and worst < 0.35, (name, mean, worst)
    assert big.gt_max_size == SMALL and small.gt_max_size == 0


def test_a_scene_within_max_size_is_unchanged(scenes):
    """At or under max_size (or max_size 0) a camera scene is used exactly as given: the same tensors, no
    similarity, gt at its own size, the same fingerprint (so runs made before keep their stages); a changed
    max_image_size that does scale the scene changes the fingerprint (its stages rerun)."""
    small_dir, big_dir = scenes
    ref = load_scene(small_dir)
    for m in (0, SMALL, 1000):
        s = load_scene(small_dir, max_size=m)
        assert s.recentring is None and s.gt_max_size == 0
        assert torch.equal(s.image, ref.image) and torch.equal(s.keypoints, ref.keypoints)
        assert torch.equal(s.video, ref.video) and all(torch.equal(a[1], b[1]) for a, b in zip(s.views, ref.views))
        assert scene_fingerprint(s) == scene_fingerprint(ref)
    fps = {scene_fingerprint(load_scene(big_dir, max_size=m)) for m in (0, 2 * SMALL, SMALL, 48)}
    assert len(fps) == 3  # 0 and 2 * SMALL: the files as they are


def test_a_non_square_scene_keeps_its_marker_under_its_keypoint(tmp_path):
    """A 301 x 150 hand-drawn scene with camera.json and views/ at max_size 100: 100 x 50 frames (views too), the
    keypoint placed on a red block still at the block's centroid, the object not cut at the frame edges."""
    H, W = 150, 301
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    img = np.zeros((H, W, 4))
    inside = ((yy - 75) / 50) ** 2 + ((xx - 140) / 120) ** 2 <= 1.0
    img[inside] = (0.1, 0.2, 0.8, 1.0)
    img[54:67, 194:207, :3] = (0.9, 0.1, 0.1)  # a 13 x 13 red block centred at (200.5, 60.5)
    root = tmp_path / "s"
    write_image(root / "image.png", img)
    write_image(root / "views" / "side.png", img)
    save_camera(REFERENCE_CAMERA, root / "camera.json")
    (root / "views" / "cameras.json").write_text(json.dumps([{"name": "side", "azimuth": 90}]))
    write_json(root / "keypoints.json", {"keypoints": [[200.5, 60.5], [100.0, 80.0]], "skeleton": [[0, 1]]})
    s = load_scene(root, max_size=100)
    assert s.image.shape == (50, 100, 4) and s.views[0][1].shape == (50, 100, 4)
    assert load_cameras(root / "views" / "cameras.json")[0] == s.views[0][0]
    red = (s.image[..., 0] > 0.5) & (s.image[..., 1] < 0.4) & (s.image[..., 3] > 0.5)
    ys, xs = torch.nonzero(red, as_tuple=True)
    centroid = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
    assert (s.keypoints[0] - centroid).abs().max() < 0.5, (s.keypoints[0], centroid)
    assert float(s.image[..., 3].sum()) == pytest.approx(float(inside.sum()) * (50 / H) ** 2, rel=0.02)


# ------------------------------------------------------------------------------------------------ gt at run size


def test_cape_gt_queries_are_at_the_run_size(scenes):
    """The cape stage's gt queries of the big scene at max_size: frames at the run's size, where the reference
    camera's gt keypoints at frame 0 are the support keypoints (so the trivial baseline compares like pixels)."""
    _, big_dir = scenes
    big = load_scene(big_dir, max_size=SMALL)
    queries = {name: (imgs, kp) for name, imgs, kp, _, _ in scene_gt_queries(big)}
    imgs, kp = queries["az000"]
    assert imgs.shape[-2:] == (SMALL, SMALL)
    torch.testing.assert_close(kp[0], big.keypoints, atol=1e-3, rtol=0)
    mean, _ = _over_white_diff(torch.cat([imgs[0].permute(1, 2, 0), torch.ones(SMALL, SMALL, 1)], -1), big.image)
    assert mean < 0.01  # gt frame 0 from the reference camera is image.png (both through the same downscale)


def _static_run(root: Path, size: int, gt_size: int, max_image_size: int | None) -> tuple[Path, Path]:
    """A run whose static stage is done (random Gaussians, frames of `size`), and a gt/ of those Gaussians rendered
    at `gt_size` from three cameras (2 frames, no motion); RUN/config.yaml with `max_image_size` (None: none)."""
    canonical = sphere_init(300, 0.4, 0.6, generator=torch.Generator().manual_seed(0))
    run, gt = root / "run", root / "gt"
    save_ply(canonical, run / "static" / "gaussians.ply")
    (root / "scene").mkdir()
    save_camera(REFERENCE_CAMERA, root / "scene" / "camera.json")
    write_manifest(run, {"version": 1, "scene": str(root / "scene"), "image_size": [size, size], "num_frames": 2,
                         "inputs": {}, "stages": {"static": {"status": "done",
                                                             "artifacts": {"gaussians": "static/gaussians.ply"}}}})
    if max_image_size is not None:
        (run / "config.yaml").write_text(f"max_image_size: {max_image_size}\n")
    cams = [Camera("az000", 0.0, 0.0, 2.0, 49.1), Camera("az090", 0.0, 90.0, 2.0, 49.1),
            Camera("el30_az045", 30.0, 45.0, 2.0, 49.1)]
    (gt).mkdir(parents=True)
    (gt / "cameras.json").write_text(json.dumps([c.to_dict() for c in cams]))
    rgb, alpha = render_4d(canonical, None, cams, [0.0], gt_size, gt_size, background=None)  # [1, C, H, W, 3|1]
    for c, cam in enumerate(cams):
        for f in range(2):
            write_image(gt / cam.name / f"{f:03d}.png", straight_rgba(rgb[0, c], alpha[0, c]))
    return run, gt


def test_eval_compares_at_the_run_size(tmp_path):
    """`dynapose4d eval` of a run made at max_image_size 32 against a gt/ rendered at 64: the gt frames are scaled
    down to 32 and compared with renders at 32 (metrics.json says so), nearly as well as against a gt rendered at
    32 directly; the static stage's score does the same; without the setting (no config) gt's own size."""
    run, gt = _static_run(tmp_path / "a", SMALL, 2 * SMALL, SMALL)
    res = evaluate_run(run, gt)
    assert res["image_size"] == [SMALL, SMALL]
    direct_run, direct_gt = _static_run(tmp_path / "b", SMALL, SMALL, SMALL)
    direct = evaluate_run(direct_run, direct_gt)
    assert direct["image_size"] is None
    for cam in ("az000", "az090", "el30_az045"):  # aligned: a half-pixel shift would cost far more
        assert res["per_view"][cam]["psnr_held"] > 35.0, res["per_view"][cam]
        assert res["per_view"][cam]["ssim"] > 0.98
    assert direct["mean"]["psnr_held"] > 50.0  # the same renders: 8-bit quantisation alone
    per_view, pairs = score_static(load_run_gaussians(run), gt, max_size=SMALL)
    assert all(p[1].shape == p[2].shape == (SMALL, SMALL, 3) for p in pairs) and len(per_view) == 3
    assert min(v["psnr"] for v in per_view.values()) > 35.0
    own_run, own_gt = _static_run(tmp_path / "c", SMALL, 2 * SMALL, None)
    assert evaluate_run(own_run, own_gt)["image_size"] is None  # no config: gt's own size, as before


def load_run_gaussians(run: Path):
    from dynapose4d.gaussians import load_ply

    return load_ply(run / "static" / "gaussians.ply")
