"""CAPE model: shapes, graph operator, masking, gradients w.r.t. the query, overfitting, checkpoints, predict()."""

from __future__ import annotations

import pytest
import torch

from dynapose4d.cape import letterbox, load_cape, predict, save_cape
from dynapose4d.cape.model import (
    CAPEModel,
    CAPEModelConfig,
    cape_loss,
    normalize_adjacency,
    skeleton_adjacency,
)
from dynapose4d.core.errors import InputError, MissingWeightsError

TINY = dict(input_size=64, widths=[16, 32, 64], blocks=[1, 1, 1], dim=64, heads=4, enc_layers=1, dec_layers=2,
            ffn_dim=128)


def tiny_model(seed: int = 0, **kw) -> CAPEModel:
    torch.manual_seed(seed)
    return CAPEModel(CAPEModelConfig(**{**TINY, **kw}))


def _inputs(B: int, N: int, S: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sup = torch.rand(1, 3, S, S, generator=g)
    q = torch.rand(B, 3, S, S, generator=g)
    kp = torch.rand(1, N, 2, generator=g) * 0.8 + 0.1
    adj = skeleton_adjacency([(i, i + 1) for i in range(N - 1)], N)[None]
    return sup, kp, torch.ones(1, N, dtype=torch.bool), adj, q


@pytest.mark.parametrize("N", [1, 100])
def test_shapes_for_1_and_100_keypoints(N):
    m = tiny_model().eval()
    sup, kp, mask, adj, q = _inputs(3, N)
    out = m(sup, kp, mask, adj, q)
    assert len(out["points"]) == 2
    for p in out["points"] + [out["proposal"]]:
        assert p.shape == (3, N, 2) and bool(((p >= 0) & (p <= 1)).all())
    assert out["heatmap"].shape == (3, N, 16, 16)
    assert out["confidence"].shape == (3, N) and bool(((out["confidence"] >= 0) & (out["confidence"] <= 1)).all())
    loss = cape_loss(out, torch.rand(3, N, 2), torch.ones(3, N))
    assert torch.isfinite(loss["loss"])


def test_graph_operator_on_a_small_graph():
    """Path 0-1-2-3 plus an isolated node 4; node 2 absent: its edges go, it keeps a self loop only."""
    adj = skeleton_adjacency([(0, 1), (1, 2), (3, 2)], 5)
    assert torch.equal(adj, adj.T) and adj.sum() == 6
    mask = torch.tensor([[True, True, False, True, True]])
    a = normalize_adjacency(adj[None], mask)[0]
    expected = torch.tensor([
        [1 / 2, 1 / 2, 0, 0, 0],  # 0: self + 1
        [1 / 2, 1 / 2, 0, 0, 0],  # 1: self + 0 (2 removed)
        [0, 0, 1, 0, 0],  # 2: absent, self loop only
        [0, 0, 0, 1, 0],  # 3: its only neighbour was 2
        [0, 0, 0, 0, 1],  # 4: isolated
    ])
    assert torch.allclose(a, expected)
    full = normalize_adjacency(adj[None], torch.ones(1, 5, dtype=torch.bool))[0]
    assert torch.allclose(full[1], torch.tensor([1 / 3, 1 / 3, 1 / 3, 0, 0]))
    with pytest.raises(ValueError):
        skeleton_adjacency([(0, 5)], 5)


def test_absent_keypoints_do_not_change_the_others():
    m = tiny_model().eval()
    N = 6
    sup, kp, mask, adj, q = _inputs(2, N)
    mask[0, [1, 4]] = False
    out1 = m(sup, kp, mask, adj, q)
    kp2, adj2 = kp.clone(), adj.clone()
    kp2[0, [1, 4]] = torch.tensor([[0.05, 0.95], [0.9, 0.1]])
    adj2[0, 4, :] = adj2[0, :, 4] = 1.0
    adj2[0, 4, 4] = 0.0
    out2 = m(sup, kp2, mask, adj2, q)
    keep = mask[0]
    for a, b in zip(out1["points"] + [out1["proposal"]], out2["points"] + [out2["proposal"]]):
        assert torch.allclose(a[:, keep], b[:, keep], atol=1e-5)
    assert torch.allclose(out1["confidence"][:, keep], out2["confidence"][:, keep], atol=1e-6)
    # and the present keypoints do influence each other (the test can fail)
    kp3 = kp.clone()
    kp3[0, 0] = torch.tensor([0.9, 0.9])
    out3 = m(sup, kp3, mask, adj, q)
    assert not torch.allclose(out1["points"][-1][:, 2], out3["points"][-1][:, 2], atol=1e-5)


def test_gradient_with_respect_to_the_query_image_eval_mode():
    """predict() in eval mode is differentiable in the query: nonzero gradient, matching finite differences."""
    m = tiny_model().double().eval()
    sup, kp, _, _, q = _inputs(1, 5)
    q = q.double().requires_grad_(True)
    kp_px = kp[0].double() * 64
    skel = [(0, 1), (1, 2), (2, 3), (3, 4)]

    def f(x):
        pts, conf = predict(sup[0].double(), kp_px, skel, x, checkpoint=m)
        return pts.sum() + conf.sum()

    y = f(q)
    (g,) = torch.autograd.grad(y, q)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    d = torch.randn_like(q)
    eps = 1e-6
    with torch.no_grad():
        fd = (f(q + eps * d) - f(q - eps * d)) / (2 * eps)
    assert torch.allclose(fd, (g * d).sum(), rtol=1e-3, atol=1e-6)


def test_loss_falls_on_a_tiny_overfit():
    torch.manual_seed(0)
    m = tiny_model().train()
    B, N = 4, 5
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")

    def blobs(pts):  # coloured discs at the keypoints on white: an image whose keypoints can be found
        img = torch.ones(3, 64, 64)
        for i, (x, y) in enumerate(pts * 64):
            d = ((xx - x) ** 2 + (yy - y) ** 2) < 16
            img[:, d] = torch.tensor([(i * 0.37) % 1, (i * 0.61) % 1, (i * 0.83) % 1])[:, None]
        return img

    kp_s = torch.rand(B, N, 2, generator=g) * 0.7 + 0.15
    kp_q = (kp_s + 0.1 * torch.randn(B, N, 2, generator=g)).clamp(0.1, 0.9)
    sup = torch.stack([blobs(k) for k in kp_s])
    q = torch.stack([blobs(k) for k in kp_q])
    adj = skeleton_adjacency([(i, i + 1) for i in range(N - 1)], N)[None].expand(B, -1, -1)
    mask = torch.ones(B, N, dtype=torch.bool)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(50):
        out = m(sup, kp_s, mask, adj, q)
        loss = cape_loss(out, kp_q, mask.float())
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(float(loss["loss_points"]))
    assert sum(losses[-5:]) / 5 < 0.4 * sum(losses[:5]) / 5, losses


def test_checkpoint_round_trip_and_errors(tmp_path):
    m = tiny_model()
    path = save_cape(tmp_path / "m.ckpt", m, {"metrics": {"x": 1}})
    m2 = load_cape(path)
    assert not m2.training and m2.cfg == m.cfg
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k])
    with pytest.raises(MissingWeightsError, match="not found"):
        load_cape(tmp_path / "absent.ckpt")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="bad.ckpt"):
        load_cape(tmp_path / "bad.ckpt")
    torch.save({"format": "other"}, tmp_path / "other.ckpt")
    with pytest.raises(InputError, match="not a dynapose4d CAPE checkpoint"):
        load_cape(tmp_path / "other.ckpt")


def test_letterbox_maps_points_consistently():
    """A dot at a known pixel of a non-square image lands where letterbox's (scale, offset) say."""
    H, W = 48, 80
    img = torch.ones(1, 3, H, W)
    x, y = 60.5, 10.5
    img[0, :, int(y) - 1:int(y) + 2, int(x) - 1:int(x) + 2] = 0.0
    out, scale, (ox, oy) = letterbox(img, 64)
    assert out.shape == (1, 3, 64, 64) and scale == pytest.approx(64 / 80)
    dark = (1 - out[0].mean(0))  # [64, 64]
    yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    c = torch.stack([(xx * dark).sum(), (yy * dark).sum()]) / dark.sum()
    assert torch.allclose(c, torch.tensor([(x + ox) * scale, (y + oy) * scale]), atol=0.3)
    assert out[0, :, 0].min() > 1.0 - 1e-5  # the padding is white


def test_predict_sizes_and_input_errors():
    m = tiny_model().eval()
    sup = torch.rand(3, 90, 70)
    q = torch.rand(2, 3, 50, 120)
    pts, conf = predict(sup, torch.tensor([[10.0, 20.0], [40.0, 60.0]]), [(0, 1)], q, checkpoint=m)
    assert pts.shape == (2, 2, 2) and conf.shape == (2, 2)
    # points come back in query pixels: inside the query's letterboxed square
    assert bool((pts[..., 0] > -36).all() and (pts[..., 0] < 120).all())
    with pytest.raises(InputError, match="skeleton"):
        predict(sup, torch.tensor([[10.0, 20.0]]), [(0, 3)], q, checkpoint=m)
    with pytest.raises(InputError, match="support_image"):
        predict(sup[0], torch.tensor([[10.0, 20.0]]), [], q, checkpoint=m)
    with pytest.raises(InputError, match="support_keypoints"):
        predict(sup, torch.zeros(101, 2), [], q, checkpoint=m)


def test_prepared_support_matches_predict_and_runs_the_support_backbone_once(monkeypatch):
    """prepare_support + predict_prepared is predict split in two (same points, confidence and query gradient);
    the dynamic stage's KML detector computes the support's tokens once, not in every training step."""
    from dynapose4d.cape import predict_prepared, prepare_support
    from dynapose4d.stages.dynamic.stage import CapeKeypoints

    torch.manual_seed(0)
    m = tiny_model().eval()
    sup, kps, skel = torch.rand(3, 90, 70), torch.tensor([[10.0, 20.0], [40.0, 60.0], [30.0, 70.0]]), [(0, 1), (1, 2)]
    q = torch.rand(2, 3, 50, 120, requires_grad=True)
    pts, conf = predict(sup, kps, skel, q, checkpoint=m)
    (g_ref,) = torch.autograd.grad(pts.sum() + conf.sum(), q)
    prepared = prepare_support(sup, kps, skel, checkpoint=m)
    pts2, conf2 = predict_prepared(prepared, q)
    (g2,) = torch.autograd.grad(pts2.sum() + conf2.sum(), q)
    torch.testing.assert_close(pts2, pts)
    torch.testing.assert_close(conf2, conf)
    torch.testing.assert_close(g2, g_ref)
    assert g_ref.abs().sum() > 0

    calls = []
    original = type(m).support_tokens
    monkeypatch.setattr(type(m), "support_tokens", lambda self, *a: calls.append(1) or original(self, *a))
    fn = CapeKeypoints(m.requires_grad_(False), sup, kps, skel)
    for _ in range(3):
        pts3, _ = fn(q)
    torch.testing.assert_close(pts3, pts)
    assert len(calls) == 1


def test_plain_support_pairs_share_one_support_pass():
    """PairDataset(plain_support=True) gives every pair the same unaugmented support, and CAPEModule with
    shared_support computes it once: same outputs as the per-pair support pass."""
    from dynapose4d.cape.data import AugmentConfig, PairDataset, collate_pairs
    from dynapose4d.cape.render_sets import RenderSet
    from dynapose4d.stages.cape.module import CAPEModule

    torch.manual_seed(0)
    O, V, S, K = 1, 6, 64, 5
    images = torch.full((O, V, S, S, 4), 255, dtype=torch.uint8)
    images[..., 16:48, 16:48, :3] = torch.randint(0, 255, (O, V, 32, 32, 3), dtype=torch.uint8)
    rs = RenderSet(images=images, keypoints=16 + torch.rand(O, V, K, 2) * 32, visible=torch.ones(O, V, K, dtype=bool),
                   inside=torch.ones(O, V, K, dtype=bool), num_keypoints=torch.tensor([K]),
                   adjacency=skeleton_adjacency([(0, 1), (1, 2), (2, 3), (3, 4)], K)[None].bool(),
                   meta=torch.zeros(O, V, 3), templates=["t"], seeds=[0])
    aug = AugmentConfig(drop_keypoints=0.5)
    batch = collate_pairs([PairDataset(rs, aug, 8, seed=1, support_view=0, plain_support=True)[i] for i in range(4)])
    assert (batch["support"] == batch["support"][:1]).all()
    torch.testing.assert_close(batch["support"][0], images[0, 0, ..., :3].permute(2, 0, 1).float() / 255.0)
    torch.testing.assert_close(batch["support_keypoints"][0], rs.keypoints[0, 0] / S)
    augmented = collate_pairs([PairDataset(rs, aug, 8, seed=1, support_view=0)[i] for i in range(4)])
    assert (augmented["support"] != augmented["support"][:1]).any()  # without the flag supports differ

    m = tiny_model().eval()
    a, b = CAPEModule(m)(batch), CAPEModule(m, shared_support=True)(batch)
    torch.testing.assert_close(b["points"][-1], a["points"][-1])
    torch.testing.assert_close(b["heatmap"], a["heatmap"])
