"""GaussianModel activations, PLY round trip (3DGS layout), and checkpoint reload after densification."""

import numpy as np
import pytest
import torch

from dynapose4d.core.errors import InputError
from dynapose4d.gaussians import GaussianModel, load_ply, rgb_to_sh, save_ply, sh_to_rgb


def random_model(n: int = 37, degree: int = 0, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return GaussianModel(
        means=torch.randn(n, 3, generator=g), scales=torch.randn(n, 3, generator=g) - 3,
        quats=torch.randn(n, 4, generator=g), opacities=torch.randn(n, generator=g),
        sh0=torch.randn(n, 1, 3, generator=g), shN=torch.randn(n, k, 3, generator=g),
    )


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_roundtrip_exact(tmp_path, degree):
    m = random_model(degree=degree)
    save_ply(m, tmp_path / "g.ply")
    r = load_ply(tmp_path / "g.ply")
    assert r.sh_degree == degree
    for k in m.splats:
        assert torch.equal(m.splats[k], r.splats[k]), k


def test_ply_layout_is_standard_3dgs(tmp_path):
    m = random_model(n=5, degree=1)
    save_ply(m, tmp_path / "g.ply")
    raw = (tmp_path / "g.ply").read_bytes()
    header = raw[: raw.find(b"end_header\n")].decode().splitlines()
    props = [h.split()[2] for h in header if h.startswith("property")]
    assert props[:6] == ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"]  # gsplat's layout: no normals
    assert props[6:15] == [f"f_rest_{i}" for i in range(9)]
    assert props[15:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    body = np.frombuffer(raw[raw.find(b"end_header\n") + 11:], dtype="<f4").reshape(5, len(props))
    # f_rest is channel-major: the first K values are the red channel of the K higher coefficients
    assert np.allclose(body[:, 6:9], m.splats["shN"][:, :, 0].detach().numpy())
    assert np.allclose(body[:, 15], m.splats["opacities"].detach().numpy())


def test_ply_with_the_original_normals_still_reads(tmp_path):
    """Files of the original 3DGS code carry zero normals nx ny nz after x y z; load_ply skips them."""
    m = random_model(n=4, degree=1)
    save_ply(m, tmp_path / "g.ply")
    raw = (tmp_path / "g.ply").read_bytes()
    end = raw.find(b"end_header\n") + 11
    header = raw[:end].decode().replace("property float z\n", "property float z\nproperty float nx\n"
                                        "property float ny\nproperty float nz\n")
    body = np.frombuffer(raw[end:], dtype="<f4").reshape(4, -1)
    body = np.concatenate([body[:, :3], np.zeros((4, 3), "<f4"), body[:, 3:]], axis=1)
    (tmp_path / "n.ply").write_bytes(header.encode() + body.tobytes())
    r = load_ply(tmp_path / "n.ply")
    for k in m.splats:
        assert torch.equal(m.splats[k], r.splats[k]), k


def test_activations():
    m = random_model()
    a = m.activated()
    assert torch.allclose(a["scales"], m.splats["scales"].exp())
    assert torch.allclose(a["opacities"], torch.sigmoid(m.splats["opacities"]))
    assert (a["colors"] >= 0).all()
    rgb = torch.rand(4, 3)
    assert torch.allclose(sh_to_rgb(rgb_to_sh(rgb)), rgb, atol=1e-6)


def test_from_points():
    pts, rgb = torch.rand(10, 3), torch.rand(10, 3)
    a = GaussianModel.from_points(pts, rgb, scale=0.05, opacity=0.3).activated()
    assert torch.allclose(a["means"], pts) and torch.allclose(a["colors"], rgb, atol=1e-6)
    assert torch.allclose(a["scales"], torch.full((10, 3), 0.05))
    assert torch.allclose(a["opacities"], torch.full((10,), 0.3))
    per = torch.linspace(0.01, 0.1, 10)  # one isotropic scale per Gaussian
    b = GaussianModel.from_points(pts, rgb, scale=per).activated()
    assert torch.allclose(b["scales"], per[:, None].expand(10, 3))
    aniso = torch.rand(10, 3) * 0.1 + 0.01
    assert torch.allclose(GaussianModel.from_points(pts, rgb, scale=aniso).activated()["scales"], aniso)
    with pytest.raises(ValueError, match="scale must be"):
        GaussianModel.from_points(pts, rgb, scale=torch.rand(7))


def test_state_dict_reload_resizes():
    big, small = random_model(n=50), random_model(n=10, seed=1)
    small.load_state_dict(big.state_dict())
    assert len(small) == 50 and torch.equal(small.splats["means"], big.splats["means"])


def test_bad_ply_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.ply"
    p.write_bytes(b"not a ply")
    with pytest.raises(InputError, match="not a PLY"):
        load_ply(p)
    with pytest.raises(InputError, match="cannot read"):
        load_ply(tmp_path / "missing.ply")
