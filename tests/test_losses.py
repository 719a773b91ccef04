"""Losses of the dynamic stage: reference MSE, keypoint match (KML) and spatio-temporal consistency (SCL)."""

from __future__ import annotations

import torch
from dynamic_helpers import ColourKeypoints

from dynapose4d.core.cameras import REFERENCE_CAMERA, project
from dynapose4d.deform.losses import (
    bone_length_loss,
    keypoint_match_loss,
    pose_alignment_loss,
    reference_loss,
    scl_pairs,
    spatiotemporal_consistency_loss,
)
from dynapose4d.gaussians import GaussianModel
from dynapose4d.render import rasterize


def test_scl_analytic_value():
    """Gaussian i moves by v_i per frame: SCL = mean_i ‖v_i‖²; a constant offset on every frame costs nothing."""
    torch.manual_seed(0)
    N, S = 50, 5
    p0 = torch.randn(N, 3)
    v = torch.randn(N, 3) * 0.1
    P = torch.stack([p0 + s * v for s in range(S)])  # [S, N, 3]
    expected = (v ** 2).sum(-1).mean()
    torch.testing.assert_close(spatiotemporal_consistency_loss(P), expected)
    torch.testing.assert_close(scl_pairs(P[:-1], P[1:]), expected)
    # accelerating motion p0 + s² a: steps (2s+1) a for s = 0..S-2 -> mean over steps of (2s+1)² ‖a‖²
    a = torch.tensor([0.01, 0.0, 0.0])
    P = torch.stack([p0 + (s ** 2) * a for s in range(S)])
    expect = torch.tensor([(2 * s + 1) ** 2 for s in range(S - 1)], dtype=torch.float32).mean() * 1e-4
    torch.testing.assert_close(spatiotemporal_consistency_loss(P), expect)
    assert spatiotemporal_consistency_loss(P[:1]) == 0


def test_kml_value_normalisation_and_confidence():
    pred = torch.tensor([[[10.0, 10.0], [20.0, 5.0]]])
    target = torch.tensor([[[13.0, 6.0], [20.0, 5.0]]])
    # keypoint 0: (3/100)² + (4/50)² ; keypoint 1: 0
    d0 = (3 / 100) ** 2 + (4 / 50) ** 2
    torch.testing.assert_close(keypoint_match_loss(pred, target, None, 100, 50), torch.tensor(d0 / 2))
    conf = torch.tensor([[0.5, 1.5]])
    torch.testing.assert_close(keypoint_match_loss(pred, target, conf, 100, 50), torch.tensor(0.5 * d0 / 2.0))
    assert keypoint_match_loss(target, target, conf, 100, 50) == 0
    # resolution independence: the same relative error at twice the size costs the same
    torch.testing.assert_close(keypoint_match_loss(pred * 2, target * 2, None, 200, 100),
                               keypoint_match_loss(pred, target, None, 100, 50))
    assert pose_alignment_loss(2.0, 3.0, 0.5, 0.0) == 1.0


def test_reference_loss_composites_target_over_background():
    target = torch.zeros(1, 2, 2, 4)
    target[..., 0] = 1.0
    target[0, 0, 0, 3] = 1.0  # one red opaque pixel, the rest transparent -> white
    rgb = torch.ones(1, 2, 2, 3)
    rgb[0, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    alpha = target[..., 3:].clone()
    l_rgb, l_alpha = reference_loss(rgb, alpha, target, background=1.0)
    assert l_rgb == 0 and l_alpha == 0
    l_rgb, _ = reference_loss(torch.zeros_like(rgb), alpha, target, background=1.0)
    assert l_rgb > 0


def _blobs(offset=(0.0, 0.0)):
    """Three coloured blobs of Gaussians; the keypoints are their colours."""
    torch.manual_seed(0)
    centres = torch.tensor([[-0.35, 0.0, 0.0], [0.0, 0.25, 0.0], [0.35, -0.1, 0.0]])
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.9]])
    pts = torch.cat([c + torch.randn(40, 3) * 0.04 for c in centres])
    rgb = colours.repeat_interleave(40, 0)
    pts[40:80, :2] += torch.tensor(offset)  # the green blob may be displaced
    return GaussianModel.from_points(pts, rgb, scale=0.04, opacity=0.9), centres, colours


def _render(model, size=40):
    g = model.activated()
    vm, K = REFERENCE_CAMERA.viewmat()[None], REFERENCE_CAMERA.K(size, size)[None]
    rgb, _, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], vm, K, size, size,
                          backgrounds=torch.ones(1, 3))
    return rgb.permute(0, 3, 1, 2)  # [1, 3, H, W]


def test_kml_zero_at_target_and_gradient_moves_means_toward_it():
    size = 40
    model, centres, colours = _blobs()
    detect = ColourKeypoints(colours, sharpness=30.0)
    with torch.no_grad():
        found, _ = detect(_render(model, size))
    px, _ = project(centres, REFERENCE_CAMERA.viewmat(), REFERENCE_CAMERA.K(size, size))
    assert (found[0] - px).norm(dim=-1).max() < 1.5  # the stand-in finds the blobs
    # targets = keypoints of the render itself: KML is exactly 0
    pred, conf = detect(_render(model, size))
    assert keypoint_match_loss(pred, found, conf, size, size) == 0
    # targets from a scene where the green blob sits 0.15 higher: the gradient on the green means points up (+y
    # in world is -y in the image), and a few steps of descent on KML alone move the blob there
    moved, _, _ = _blobs(offset=(0.0, 0.15))
    with torch.no_grad():
        target, _ = detect(_render(moved, size))
    means = model.splats["means"]
    loss = keypoint_match_loss(detect(_render(model, size))[0], target, None, size, size)
    loss.backward()
    g = means.grad
    assert g[40:80, 1].mean() < 0 and g[40:80, 1].abs().mean() > 10 * g[:40, 1].abs().mean()
    opt = torch.optim.Adam([means], lr=0.01)
    first = loss.item()
    for _ in range(25):
        opt.zero_grad()
        loss = keypoint_match_loss(detect(_render(model, size))[0], target, None, size, size)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert abs(means[40:80, 1].mean().item() - (0.25 + 0.15)) < 0.05


def test_bone_length_loss_analytic_and_blind_to_rigid_motion():
    """Zero under any rotation + translation of the whole skeleton; a bone stretched by s costs (s - 1)^2 / E;
    the gradient on a stretched bone pulls its end back along the bone; zero-length bones are skipped."""
    rest = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])  # [4, 3]
    bones = torch.tensor([[0, 1], [1, 2], [2, 3]])  # the last has length 0
    c, s_ = torch.cos(torch.tensor(0.7)), torch.sin(torch.tensor(0.7))
    R = torch.tensor([[c, 0.0, s_], [0.0, 1.0, 0.0], [-s_, 0.0, c]])
    moved = (rest @ R.T + torch.tensor([0.3, -1.0, 2.0]))[None]  # [1, 4, 3]
    assert bone_length_loss(moved, rest, bones).abs() < 1e-10
    stretched = rest.clone()
    stretched[2:, 1] = 3.0  # bone 1-2 from length 2 to 3 (s = 1.5); 2-3 stays 0
    pts = stretched[None].clone().requires_grad_(True)
    loss = bone_length_loss(pts, rest, bones)
    torch.testing.assert_close(loss, torch.tensor(0.25 / 2))  # (1.5 - 1)^2 over the two bones of non-zero length
    loss.backward()
    assert pts.grad[0, 2, 1] > 0 and pts.grad[0, 1, 1] < 0  # descent shortens the bone
    assert bone_length_loss(pts, rest, torch.zeros(0, 2, dtype=torch.long)) == 0
