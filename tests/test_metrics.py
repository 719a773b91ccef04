"""Metrics on analytic cases: PSNR of known noise, masks, SSIM, LPIPS availability, moving pixels, PCK exactly at
its threshold, 3D keypoint error of a shifted set, jitter of linear and quadratic tracks."""

from __future__ import annotations

import math

import pytest
import torch

from dynapose4d.evaluation import metrics as M


def _noise_with_mse(shape, mse: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise [B, H, W, 3] rescaled so that each image's mean square is exactly `mse`."""
    n = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return n / n.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * math.sqrt(mse)


def test_psnr_identical_and_known_noise():
    gt = torch.full((2, 24, 32, 3), 0.5, dtype=torch.float64)
    assert M.psnr(gt, gt.clone()) == pytest.approx(120.0)  # MSE floored at 1e-12
    sigma = 0.05
    pred = gt + _noise_with_mse(gt.shape, sigma**2)
    assert abs(M.psnr(pred, gt) - (-20 * math.log10(sigma))) < 0.01  # 26.02 dB
    assert abs(M.psnr(gt + 0.1, gt) - 20.0) < 1e-9


def test_psnr_is_averaged_per_image():
    gt = torch.zeros(2, 8, 8, 3)
    pred = torch.stack([torch.full((8, 8, 3), 0.1), torch.full((8, 8, 3), 0.01)])  # 20 dB and 40 dB
    assert M.psnr(pred, gt) == pytest.approx(30.0, abs=1e-4)


def test_psnr_mask_restricts_to_its_pixels():
    gt = torch.full((2, 16, 16, 3), 0.5)
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, 4:8, 4:12] = True  # 32 of 256 pixels
    pred = gt.clone()
    pred[~mask] += 0.2  # errors outside the mask only
    assert M.psnr(pred, gt, mask) == pytest.approx(120.0)
    pred = gt.clone()
    pred[mask] += 0.1  # errors inside only: 20 dB on the mask, diluted by 1/8 over the whole image
    assert M.psnr(pred, gt, mask) == pytest.approx(20.0, abs=1e-4)
    assert M.psnr(pred, gt) == pytest.approx(20.0 + 10 * math.log10(8), abs=1e-4)
    mask[1] = False  # an empty mask leaves its image out of the average
    pred[1] += 0.3
    assert M.psnr(pred, gt, mask) == pytest.approx(20.0, abs=1e-4)
    assert math.isnan(M.psnr(pred, gt, torch.zeros_like(mask)))


def test_ssim_identical_noise_and_layout():
    from torchmetrics.functional.image import structural_similarity_index_measure

    g = torch.Generator().manual_seed(0)
    gt = torch.rand(2, 3, 12, 16, generator=g).repeat_interleave(4, -1).repeat_interleave(4, -2) * 0.8 + 0.1
    gt = gt.permute(0, 2, 3, 1)  # [2, 48, 64, 3] blocky content, H != W
    assert M.ssim(gt, gt) == pytest.approx(1.0, abs=1e-6)
    noisy = (gt + 0.05 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    noisier = (gt + 0.2 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    s1, s2 = M.ssim(noisy, gt), M.ssim(noisier, gt)
    assert 0.0 < s2 < s1 < 1.0
    ref = structural_similarity_index_measure(noisy.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), data_range=1.0)
    assert s1 == pytest.approx(float(ref), abs=1e-6)


def test_lpips_unavailable_without_local_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    x = torch.rand(1, 32, 32, 3)
    assert M.lpips_available() is False
    assert M.lpips(x, x) is None  # "unavailable", never a made-up number
    with pytest.raises(ValueError):
        M.lpips_available("resnet")


def test_moving_mask_over_white():
    frames = torch.zeros(3, 10, 12, 4)  # transparent everywhere: white over white
    frames[:, :, :, :3] = torch.rand(10, 12, 3)  # colour under alpha 0 must not count
    frames[0, 2:5, 2:5] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    frames[1, 2:5, 3:6] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # moved one pixel right
    frames[2] = frames[0]
    frames[2, 2:5, 2:5, 2] = 0.97  # a change below the threshold
    m = M.moving_mask(frames)
    assert m.shape == (3, 10, 12) and not m[0].any() and not m[2].any()
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[2:5, 2] = True  # uncovered column
    expected[2:5, 5] = True  # newly covered column
    assert torch.equal(m[1], expected)


def test_pck_exactly_at_threshold():
    gt = torch.zeros(2, 4, 2, dtype=torch.float64)
    off = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |off| = 5 exactly
    pred = gt + torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64)[None, :, None] * off  # errors 0, 5, 5, 10
    # sample 0: norm 25 -> 0, .2, .2, .4; sample 1: norm 50.0001 -> 0, <.1, <.1, <.2
    norm = torch.tensor([25.0, 50.0001], dtype=torch.float64)
    assert M.pck(pred, gt, norm, threshold=0.2) == pytest.approx(5 / 8)  # at the threshold is not correct
    vis = torch.tensor([[True, False, False, True], [True, True, True, True]])
    assert M.pck(pred, gt, norm, 0.2, vis) == pytest.approx(5 / 6)
    assert M.pck(pred, gt, 25.0, 0.2) == pytest.approx(2 / 8)  # a scalar normaliser
    assert math.isnan(M.pck(pred, gt, norm, 0.2, torch.zeros(2, 4, dtype=torch.bool)))
    with pytest.raises(ValueError):
        M.pck(pred, gt, torch.tensor([25.0, 0.0]))


def test_bbox_size():
    pts = torch.tensor([[[0.0, 0.0], [4.0, 1.0], [2.0, 9.0]], [[1.0, 1.0], [3.0, 2.0], [100.0, 100.0]]])
    vis = torch.tensor([[True, True, True], [True, True, False]])
    assert torch.allclose(M.bbox_size(pts, vis), torch.tensor([9.0, 2.0], dtype=torch.float64))
    assert float(M.bbox_size(pts[0], torch.zeros(3, dtype=torch.bool))) == 0.0


def test_keypoint_error_3d_of_shifted_set():
    gt = torch.randn(5, 14, 3, generator=torch.Generator().manual_seed(0))
    assert M.keypoint_error_3d(gt + torch.tensor([1.0, 2.0, 2.0]), gt) == pytest.approx(3.0, abs=1e-6)
    assert M.keypoint_error_3d(gt, gt) == 0.0


def test_jitter_linear_and_quadratic():
    t = torch.arange(10, dtype=torch.float64)[:, None, None]  # [T, 1, 1]
    u = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)  # unit direction
    linear = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * t * u  # [T, 1, 3]
    assert M.jitter(linear) == pytest.approx(0.0, abs=1e-12)
    a, b = 0.25, -1.5
    quad = torch.cat([a * t**2 * u, b * t**2 * u + 0.7 * t * u], dim=1)  # [T, 2, 3]: second differences 2a, 2b
    assert M.jitter(quad) == pytest.approx((2 * abs(a) + 2 * abs(b)) / 2)
    assert math.isnan(M.jitter(quad[:2]))


def test_motion_image_metrics_skip_frame_zero_and_compare_two_baselines():
    from dynapose4d.evaluation.metrics import motion_image_metrics, psnr

    gt = torch.ones(3, 16, 16, 3)
    gt[1, 4:8, 4:8] = 0.0  # a square that appears at frame 1 and moves at frame 2
    gt[2, 8:12, 8:12] = 0.0
    m = motion_image_metrics(gt.clone(), gt)
    assert m["psnr"] == pytest.approx(120.0) and m["psnr_moving"] == pytest.approx(120.0)
    # no motion: frame 0 is exact by construction and must not enter the mean (it would add a 120 dB frame)
    expected = psnr(gt[:1].expand(2, 16, 16, 3), gt[1:])
    assert m["psnr_no_motion"] == pytest.approx(expected) and expected < 40.0
    assert m["psnr_moving_no_motion"] == pytest.approx(0.0, abs=1e-6)  # every moving pixel is fully wrong
    # a model whose frame 0 has an error everywhere: its own held-still baseline carries the same error
    pred = (gt - 0.2).clamp(min=0.0)  # a darker reconstruction, correct motion
    m2 = motion_image_metrics(pred, gt)
    assert m2["psnr_held"] < m2["psnr_no_motion"] and m2["psnr"] > m2["psnr_held"]
    with pytest.raises(ValueError, match="must both be"):
        motion_image_metrics(pred[:, :8], gt)


def test_motion_image_metrics_skip_frames_that_return_to_frame_zero():
    """A looping clip: frame 3 equals frame 0, so the gt no-motion baseline is exact there by construction; its
    capped 120 dB must not enter the means (it lifted a whole-frame baseline by ~7 dB on a looping scene)."""
    from dynapose4d.evaluation.metrics import motion_image_metrics, psnr

    gt = torch.ones(4, 16, 16, 3)
    gt[1, 4:8, 4:8] = 0.0
    gt[2, 8:12, 8:12] = 0.0
    pred = (gt - 0.1).clamp(min=0.0)
    m = motion_image_metrics(pred, gt)
    expected = psnr(gt[:1].expand(2, 16, 16, 3), gt[1:3])
    assert m["psnr_no_motion"] == pytest.approx(expected) and expected < 40.0
    assert m["psnr"] == pytest.approx(psnr(pred[1:3], gt[1:3]))
    still = torch.ones(3, 16, 16, 3)  # nothing moves at all: every frame counts
    assert motion_image_metrics(still * 0.9, still)["psnr"] == pytest.approx(20.0)


def test_gt_frames_mix_rgb_and_rgba_and_name_a_frame_of_another_size(tmp_path):
    """An RGB gt frame among RGBA ones gets alpha 1 (not "different sizes"); a frame of another size is named."""
    import numpy as np
    from PIL import Image

    from dynapose4d.core.errors import InputError
    from dynapose4d.evaluation.gt import read_gt_frames

    rgba = np.zeros((12, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "000.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "001.png")
    frames = read_gt_frames(tmp_path)
    assert frames.shape == (2, 12, 16, 4) and torch.equal(frames[0], frames[1])
    Image.fromarray(rgba[:10]).save(tmp_path / "002.png")
    with pytest.raises(InputError, match=r"002\.png: gt frame is 16x10, but 000\.png is 16x12"):
        read_gt_frames(tmp_path)
