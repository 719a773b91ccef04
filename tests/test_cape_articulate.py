"""Random articulation of static Gaussians along the skeleton (the cape stage's pose-augmented fine-tuning views)."""

from __future__ import annotations

import math

import numpy as np
import torch

from dynapose4d.cape.finetune import articulate, skeleton_forest
from dynapose4d.core.rotations import quat_to_matrix


def test_skeleton_forest_roots_each_part_at_its_best_connected_keypoint():
    # 0-1-2, 1-3 (keypoint 1 has degree 3), 4 alone, 5-6
    parent = skeleton_forest([(0, 1), (1, 2), (3, 1), (5, 6)], 7)
    assert parent == [1, -1, 1, 1, -1, -1, 5]
    assert skeleton_forest([], 3) == [-1, -1, -1]


def _chain_gaussians():
    """A straight chain of 4 keypoints along x (spacing 1) and Gaussians on the bones (identity rotations)."""
    kp = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], dtype=torch.float64)
    xs = torch.linspace(0.05, 2.95, 30, dtype=torch.float64)
    means = torch.stack([xs, torch.full_like(xs, 0.01), torch.zeros_like(xs)], -1)
    g = {"means": means, "quats": torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64).repeat(30, 1),
         "scales": torch.full((30, 3), 0.05, dtype=torch.float64), "opacities": torch.ones(30, dtype=torch.float64),
         "colors": torch.rand(30, 3, dtype=torch.float64)}
    return kp, g


def test_articulation_moves_bones_rigidly_and_composes_down_the_tree():
    kp, g = _chain_gaussians()
    skeleton = [(0, 1), (1, 2), (2, 3)]  # root: keypoint 1 (degree 2, lowest index); bones 1->0, 1->2, 2->3
    for seed in range(5):
        gp, kpp = articulate(g, kp, skeleton, 40.0, np.random.default_rng(seed))
        assert torch.equal(kpp[1], kp[1])  # the root stays
        for a, b in skeleton:  # bone lengths kept
            assert math.isclose(float((kpp[a] - kpp[b]).norm()), 1.0, abs_tol=1e-9)
        # each bone turned by at most 40 degrees relative to its parent bone: the bone 1->2 relative to rest
        d_rest, d_new = kp[2] - kp[1], kpp[2] - kpp[1]
        assert float(torch.dot(d_rest, d_new)) >= math.cos(math.radians(40.0)) - 1e-9
        # a Gaussian on a bone keeps its place along the posed bone (composition 1->2->3 included)
        for i, x in enumerate(g["means"][:, 0].tolist()):
            a = int(math.floor(x)) if x > 1 else 0
            lo, hi = (1, 0) if a == 0 else (a, a + 1)  # bone from the parent joint to the child keypoint
            t = abs(x - kp[lo, 0].item())
            expect = kpp[lo] + t * (kpp[hi] - kpp[lo])  # the point along the posed bone
            assert (gp["means"][i] - expect).norm() < 0.011 + 1e-6  # (the Gaussians sit 0.01 off the axis)
            # its orientation turned with its bone
            R = quat_to_matrix(gp["quats"][i] / gp["quats"][i].norm())
            assert torch.allclose(R @ (kp[hi] - kp[lo]), kpp[hi] - kpp[lo], atol=1e-9)
    assert torch.equal(gp["colors"], g["colors"]) and torch.equal(gp["scales"], g["scales"])


def test_articulation_changes_nothing_without_a_skeleton_or_angle():
    kp, g = _chain_gaussians()
    for skeleton, angle in (([], 30.0), ([(0, 1)], 0.0)):
        gp, kpp = articulate(g, kp, skeleton, angle, np.random.default_rng(0))
        assert gp is g and kpp is kp


def test_posed_views_keep_keypoints_on_the_object():
    """Renders of the articulated generator Gaussians: the projected posed keypoints fall on the object."""
    from dynapose4d.cape.finetune import object_render_set
    from dynapose4d.core.cameras import Camera, project
    from dynapose4d.data.synthetic import make_object
    from dynapose4d.render import rasterize

    obj = make_object("humanoid", 0, 4)
    g = {k: v.float() for k, v in obj.gaussians(0).items()}
    cam = Camera("ref", 0.0, 0.0, 2.2, 40.0)
    vm, K = cam.viewmat()[None], cam.K(64, 64)[None]
    rgb, alpha, _ = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], vm, K, 64, 64,
                              backgrounds=torch.ones(1, 3))
    kp2, _ = project(obj.keypoints3d(0).double(), cam.viewmat(torch.float64), cam.K(64, 64, torch.float64))
    rs, _ = object_render_set(g, cam, rgb[0], alpha[0, ..., 0], kp2.float(), obj.skeleton, 64, num_views=12,
                              elevation=(-10.0, 40.0), reference_views=0, seed=0, pose_angle=35.0,
                              posed_fraction=1.0)
    al = rs.images[0, 1:, ..., 3].float() / 255.0  # [V, 64, 64] alpha of the posed query views
    px = rs.keypoints[0, 1:].round().long().clamp(0, 63)  # [V, N, 2]
    vis = rs.visible[0, 1:]
    v_idx = torch.arange(al.shape[0])[:, None].expand_as(vis)
    on_object = al[v_idx, px[..., 1], px[..., 0]] > 0.3
    assert vis.float().mean() > 0.3
    assert on_object[vis].float().mean() > 0.9
    # the queries differ from the rest pose: the keypoints moved relative to the rest pose's projections
    rest, _ = object_render_set(g, cam, rgb[0], alpha[0, ..., 0], kp2.float(), obj.skeleton, 64, num_views=12,
                                elevation=(-10.0, 40.0), reference_views=0, seed=0)
    assert (rest.keypoints[0, 1:] - rs.keypoints[0, 1:]).norm(dim=-1).mean() > 1.0
