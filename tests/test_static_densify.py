"""The densification adapter in front of gsplat's DefaultStrategy, driven by our CPU rasterizer's meta."""

from __future__ import annotations

import torch

from dynapose4d.core.cameras import Camera, stack_cameras
from dynapose4d.gaussians.densify import Densifier, DensifyConfig
from dynapose4d.gaussians.init import sphere_init
from dynapose4d.render import rasterize

NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN")


def _setup(n: int = 300, seed: int = 0):
    model = sphere_init(n, radius=0.5, opacity=0.5, generator=torch.Generator().manual_seed(seed))
    opts = {k: torch.optim.Adam([model.splats[k]], lr=1e-3, eps=1e-15) for k in NAMES}
    return model, opts


def _render(model, cams, size):
    g = model.activated()
    viewmats, Ks = stack_cameras(cams, size, size)
    return rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks, size, size)


def _two_renders(model, dens, step):
    """Two rasterizer calls of different sizes and camera counts in one step; returns their metas."""
    r1, a1, m1 = _render(model, [Camera("a", 0, 0), Camera("b", 10, 90)], 32)
    r2, a2, m2 = _render(model, [Camera("c", -20, 200)], 48)
    dens.before_backward(model.splats, {}, step, [m1, m2])
    loss = (r1 - 0.3).pow(2).mean() + (a2 - 1.0).pow(2).mean() + r2.mean()
    loss.backward()
    return [m1, m2]


def test_merged_metas_accumulate_like_gsplat_one_call_at_a_time() -> None:
    model, opts = _setup()
    dens = Densifier(DensifyConfig(start_step=1000))
    metas = _two_renders(model, dens, step=1)
    dens.after_backward(model.splats, opts, 1, metas)
    # oracle: gsplat's own statistics update fed each meta separately
    oracle = Densifier(DensifyConfig(start_step=1000))
    for m in metas:
        oracle.strategy._update_state(model.splats, oracle.state, m, packed=False)
    assert torch.allclose(dens.state["grad2d"], oracle.state["grad2d"], rtol=1e-5, atol=1e-10)
    assert torch.equal(dens.state["count"], oracle.state["count"])
    assert float(dens.state["count"].max()) == 3.0  # seen by all three cameras


def test_growth_prune_reset_and_cap() -> None:
    model, opts = _setup()
    n0 = len(model)
    cfg = DensifyConfig(start_step=1, every=2, grow_grad2d=1e-9, prune_opacity=0.01, reset_opacity_every=3,
                        reset_opacity_value=0.02, max_gaussians=10**6)
    dens = Densifier(cfg)
    for k in NAMES:  # give the optimizers a state, so that we can check it is resized with the parameters
        model.splats[k].grad = torch.zeros_like(model.splats[k])
        opts[k].step()
    metas = _two_renders(model, dens, step=2)
    out = dens.after_backward(model.splats, opts, 2, metas)
    n1 = out["num_gaussians"]
    assert n1 > n0 and n1 == len(model) and out["reset"] == 0  # everything visible grew (threshold ~0)
    for k in NAMES:  # optimizers follow the new tensors, their state is resized
        p = model.splats[k]
        assert opts[k].param_groups[0]["params"][0] is p
        assert opts[k].state[p]["exp_avg"].shape == p.shape
    # step 3: our opacity reset fires (gsplat 1.5.3's own never does), no refinement (3 % 2 != 0)
    for p in model.splats.values():
        p.grad = None
    metas = _two_renders(model, dens, step=3)
    out = dens.after_backward(model.splats, opts, 3, metas)
    assert out["reset"] == 1 and out["num_gaussians"] == n1
    assert float(torch.sigmoid(model.splats["opacities"].detach()).max()) <= 0.02 + 1e-6
    # step 4: refinement prunes nothing above 0.01 ... but growth is capped
    dens.cfg.max_gaussians = n1
    for p in model.splats.values():
        p.grad = None
    metas = _two_renders(model, dens, step=4)
    out = dens.after_backward(model.splats, opts, 4, metas)
    assert out["num_gaussians"] <= n1


def test_gsplat_reset_never_fires_and_state_round_trip() -> None:
    # the reason for our own reset: DefaultStrategy 1.5.3 tests `step % n == 0 & step > 0`, always False
    model, opts = _setup(100)
    dens = Densifier(DensifyConfig(start_step=10**6, reset_opacity_every=0))
    dens.strategy.reset_every = 4
    before = model.splats["opacities"].detach().clone()
    metas = _two_renders(model, dens, step=4)
    dens.after_backward(model.splats, opts, 4, metas)
    assert torch.equal(model.splats["opacities"].detach(), before)
    sd = dens.state_dict()
    other = Densifier(DensifyConfig())
    other.load_state_dict(sd)
    assert torch.equal(other.state["grad2d"], dens.state["grad2d"])
    assert other.state["grad2d"] is not dens.state["grad2d"]
