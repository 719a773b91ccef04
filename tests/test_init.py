"""Initial Gaussians: distance transform, image lift (a disc becomes a sphere), random ball."""

from __future__ import annotations

import math

import torch

from dynapose4d.core.cameras import REFERENCE_CAMERA, Camera, project
from dynapose4d.gaussians.init import distance_transform, image_init, knn_scale, sphere_init


def test_distance_transform_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(17, 23, generator=g) > 0.3
    mask[0, :] = True  # touches the border: outside the image counts as background
    dt = distance_transform(mask)
    ii, jj = torch.meshgrid(torch.arange(-1, 18), torch.arange(-1, 24), indexing="ij")
    padded = torch.zeros(19, 25, dtype=torch.bool)
    padded[1:-1, 1:-1] = mask
    bg = torch.stack([ii[~padded], jj[~padded]], dim=-1).float()  # every background pixel, border included
    for i, j in torch.nonzero(mask)[::7].tolist():
        ref = (bg - torch.tensor([i, j]).float()).norm(dim=-1).min()
        assert math.isclose(float(dt[i, j]), float(ref), abs_tol=1e-5)
    assert float(dt[~mask].abs().max()) == 0.0


def _disc_image(size: int = 64, radius_px: float = 20.0) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    inside = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < radius_px**2
    img = torch.zeros(size, size, 4)
    img[..., 0] = xx / size  # a horizontal red ramp, to check colours
    img[..., 1] = 0.5
    img[..., 3] = inside.float()
    return img


def test_image_init_lifts_a_disc_to_a_sphere() -> None:
    size, r_px = 64, 20.0
    img = _disc_image(size, r_px)
    cam = REFERENCE_CAMERA
    model = image_init(img, cam, num_points=3000, inflate=1.0, generator=torch.Generator().manual_seed(0))
    n = len(model)
    assert n == 3000
    g = model.activated()
    means = g["means"].detach()
    # world radius of the disc at the origin's depth (2.0): r_px * z / f
    f = float(cam.K(size, size)[1, 1])
    r_world = r_px * 2.0 / f
    dist = means.norm(dim=-1)
    assert abs(float(dist.median()) - r_world) < 0.15 * r_world  # on a sphere of the disc's radius
    assert float(dist.max()) < 1.2 * r_world
    # front half towards the camera (+z), back half mirrored behind the plane z = 0
    front, back = means[: n // 2], means[n // 2:]
    assert bool((front[:, 2] >= -1e-6).all()) and bool((back[:, 2] <= 1e-6).all())
    # every point projects inside the mask (front and back onto the same pixel), with the colour of its pixel
    px, _ = project(means, cam.viewmat(), cam.K(size, size))
    assert torch.allclose(px[: n // 2], px[n // 2:], atol=1e-3)
    ij = px.floor().long()
    assert bool(img[ij[:, 1].clamp(0, size - 1), ij[:, 0].clamp(0, size - 1), 3].bool().all())
    red = g["colors"][:, 0].detach()
    assert torch.allclose(red, (px[:, 0] / size), atol=0.05)
    # initial sizes: the spacing between neighbours; opacity as asked
    assert 0.005 < float(g["scales"].detach().median()) < 0.05
    assert torch.allclose(g["opacities"].detach(), torch.full((n,), 0.1))


def test_image_init_more_points_than_pixels() -> None:
    img = _disc_image(16, 5.0)  # ~78 mask pixels
    model = image_init(img, REFERENCE_CAMERA, num_points=1000, generator=torch.Generator().manual_seed(0))
    assert len(model) == 1000 and torch.isfinite(model.splats["means"]).all()


def test_image_init_honours_an_elevated_camera() -> None:
    img = _disc_image(48, 12.0)
    cam = Camera("ref", 30.0, 45.0, 2.5, 40.0)
    model = image_init(img, cam, num_points=1000, generator=torch.Generator().manual_seed(1))
    px, depth = project(model.activated()["means"].detach(), cam.viewmat(), cam.K(48, 48))
    assert float(((px - 24.0).norm(dim=-1)).max()) < 12.5 + 1.0  # inside the disc seen from that camera
    assert abs(float(depth.mean()) - 2.5) < 0.05  # centred on the origin's depth


def test_sphere_init_and_knn_scale() -> None:
    model = sphere_init(2000, radius=0.5, opacity=0.1, generator=torch.Generator().manual_seed(0))
    means = model.activated()["means"].detach()
    assert len(model) == 2000 and float(means.norm(dim=-1).max()) <= 0.5 + 1e-6
    assert abs(float(means.norm(dim=-1).median()) - 0.5 * 0.5 ** (1 / 3)) < 0.03  # uniform in volume
    grid = torch.stack(torch.meshgrid(*[torch.arange(4.0)] * 3, indexing="ij"), -1).reshape(-1, 3) * 0.1
    s = knn_scale(grid, k=3)
    assert torch.allclose(s[21], torch.tensor(0.1), atol=1e-6)  # interior point: 6 neighbours at 0.1
