"""CAPE data: procedural render sets (deterministic, cached, visibility), augmented pairs, the evaluation
protocol and its trivial baseline, and the MP-100 format (loader, splits, episodes, PCK) on a written file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dynapose4d.cape.data import (
    AugmentConfig,
    EvalSetConfig,
    PairDataset,
    ProceduralConfig,
    cache_path,
    collate_pairs,
    generate_eval_set,
    load_or_generate,
    warp,
)
from dynapose4d.cape.evaluation import score
from dynapose4d.core.errors import InputError

SMALL = dict(size=48, num_objects=3, frames_per_object=2, views_per_frame=2, render_device="cpu")


def test_render_set_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAPOSE4D_CACHE", str(tmp_path))
    cfg = ProceduralConfig(**SMALL)
    a = load_or_generate("train", cfg, log=None)
    assert cache_path("train", cfg).is_file()
    b = load_or_generate("train", cfg, use_cache=False, log=None)
    assert a.images.shape == (3, 4, 48, 48, 4) and torch.equal(a.images, b.images)
    assert torch.equal(a.keypoints, b.keypoints) and torch.equal(a.visible, b.visible)
    assert a.templates == ["humanoid", "quadruped", "lamp"] and a.seeds == [0, 1, 2]
    n = int(a.num_keypoints[0])
    assert n == 14 and not a.inside[0, :, n:].any()  # padding
    assert torch.equal(a.adjacency, a.adjacency.transpose(1, 2))
    assert (a.visible <= a.inside).all() and a.visible[:, :, :n].any()
    # keypoints lie on the object where visible: alpha under a visible keypoint is high
    o, v = 0, 0
    px = a.keypoints[o, v, :n][a.visible[o, v, :n]].long().clamp(0, 47)
    assert a.images[o, v, px[:, 1], px[:, 0], 3].float().mean() > 0.5 * 255
    with pytest.raises(ValueError, match="below"):
        load_or_generate("train", ProceduralConfig(**{**SMALL, "seed_start": 10**6 - 1}), use_cache=False, log=None)


def test_warp_moves_keypoints_with_the_image():
    img = torch.zeros(4, 64, 64)
    img[:, 14:17, 44:47] = 1.0  # a dot at pixel centre (45.5, 15.5)
    kp = torch.tensor([[45.5 / 64, 15.5 / 64]])
    for scale, angle, shift, flip in ((1.2, 20.0, (0.05, -0.03), False), (0.8, -10.0, (0.0, 0.1), True)):
        out, k = warp(img, kp, scale, angle, shift, flip)
        w = out[3]
        yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        c = torch.stack([(xx * w).sum(), (yy * w).sum()]) / w.sum()
        assert torch.allclose(c, k[0] * 64, atol=0.5), (c, k * 64)


def test_pairs_are_deterministic_and_consistent(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAPOSE4D_CACHE", str(tmp_path))
    rs = load_or_generate("train", ProceduralConfig(**SMALL), log=None)
    ds = PairDataset(rs, AugmentConfig(), length=20, seed=3)
    a, b = ds[5], ds[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[6]["query"], a["query"])
    batch = collate_pairs([ds[i] for i in range(6)])
    B, N = 6, batch["mask"].shape[1]
    assert batch["support"].shape == (B, 3, 48, 48) and batch["adjacency"].shape == (B, N, N)
    assert (batch["weight"][~batch["mask"]] == 0).all() and (batch["heat_mask"] <= batch["mask"]).all()
    assert ((batch["query_keypoints"] >= 0) & (batch["query_keypoints"] <= 1)).all()
    assert batch["support"].min() >= 0 and batch["support"].max() <= 1
    no_aug = AugmentConfig(scale=[1.0, 1.0], rotation=0.0, translate=0.0, hue=0.0, saturation=[1.0, 1.0],
                           brightness=[1.0, 1.0], image_brightness=0.0, background=0.0, flip=0.0, drop_keypoints=0.0)
    fixed = PairDataset(rs, no_aug, length=4, support_view=0)
    for i in range(4):  # the support is always view 0 of its object, unchanged
        it = fixed[i]
        o = next(o for o in range(3) if torch.allclose(it["support_keypoints"] * 48,
                                                      rs.keypoints[o, 0, :it["mask"].shape[0]], atol=1e-4))
        assert torch.allclose(it["support"], rs.images[o, 0, ..., :3].permute(2, 0, 1).float() / 255, atol=1e-5)


def test_eval_protocol_offsets_and_trivial_baseline():
    cfg = EvalSetConfig(size=48, objects_per_template=1, templates=["lamp", "random"], offsets=[-60.0, 30.0],
                        num_frames=4, frame_stride=2, render_device="cpu")
    rs = generate_eval_set(cfg)
    assert rs.images.shape[:2] == (2, 1 + 2 * 2)
    assert rs.seeds == [10**6, 10**6]
    assert rs.meta[:, 0].tolist() == [[0.0, 0.0, 0.0]] * 2
    assert sorted(set(rs.meta[:, 1:, 2].flatten().tolist())) == [-60.0, 30.0]
    assert rs.meta[0, 1:, 0].tolist() == [0.0, 0.0, 2.0, 2.0]
    gt = rs.keypoints[:, 1:]
    perfect = score(gt.clone(), rs)
    assert perfect["all"]["pck@0.1"] == 1.0 and set(perfect) == {"all", "30", "60"}
    trivial = score(rs.keypoints[:, :1].expand_as(gt).clone(), rs)["all"]
    assert trivial["pck@0.2"] == pytest.approx(trivial["trivial_pck@0.2"])
    assert trivial["trivial_pck@0.1"] < 1.0


# ------------------------------------------------------------------------------------------------ MP-100


def _write_mp100(root, with_images=True):
    from dynapose4d.core.io import write_image

    (root / "annotations").mkdir(parents=True)
    (root / "images" / "cat").mkdir(parents=True)
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(6):
        images.append({"id": i + 1, "file_name": f"cat/{i}.png", "width": 40, "height": 30})
        if with_images:
            write_image(root / "images" / "cat" / f"{i}.png", rng.uniform(size=(30, 40, 3)))
        cid = 1 if i < 3 else 2
        n = 3 if cid == 1 else 2
        kp = []
        for k in range(n):
            kp += [5.0 + 10 * k + 4 * i, 8.0 + k, 0 if (i == 1 and k == 2) else 2]
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": cid, "keypoints": kp,
                     "bbox": [2.0, 3.0, 30.0, 20.0], "num_keypoints": n})
    cats = [{"id": 1, "name": "lamp", "keypoints": ["a", "b", "c"], "skeleton": [[1, 2], [2, 3]]},
            {"id": 2, "name": "chair", "keypoints": ["a", "b"], "skeleton": [[2, 1]]}]
    for split in range(1, 6):
        for sub in ("train", "val", "test"):
            (root / "annotations" / f"mp100_split{split}_{sub}.json").write_text(
                json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_mp100_loader_splits_episodes_and_pck(tmp_path):
    from dynapose4d.cape.mp100 import (
        EpisodeSampler,
        MP100Pairs,
        evaluate_episodes,
        load_mp100,
        load_split,
        mp100_pck,
        split_path,
    )

    root = _write_mp100(tmp_path / "mp100")
    ds = load_split(root, 3, "val")
    assert ds.path.name == "mp100_split3_val.json" and ds.image_root == root / "images"
    assert ds.categories[1].skeleton == [(0, 1), (1, 2)] and ds.categories[2].skeleton == [(1, 0)]
    assert ds.annotations[0].keypoints.shape == (3, 3) and ds.annotations[4].keypoints.shape == (2, 3)
    assert ds.by_category == {1: [0, 1, 2], 2: [3, 4, 5]}
    with pytest.raises(InputError, match="split"):
        split_path(root, 6, "train")
    with pytest.raises(InputError, match="not found"):
        split_path(root / "nope", 1, "train")
    eps = EpisodeSampler(ds, seed=1).episodes(20)
    assert all(e.support.category_id == e.query.category_id == e.category.id for e in eps)
    assert all(e.support.id != e.query.id for e in eps)
    assert {e.category.id for e in eps} == {1, 2}
    # PCK: labelled in both, normalised by max(w, h) = 30 of the query box, threshold 0.2 -> 6 px
    ep = next(e for e in eps if e.category.id == 1 and 101 in (e.support.id, e.query.id))
    gt = ep.query.keypoints[:, :2]
    pred = gt + torch.tensor([[5.9, 0.0], [6.1, 0.0], [0.0, 0.0]])
    assert mp100_pck(pred, ep) == pytest.approx(0.5)  # keypoint 2 is unlabelled in image 1: 2 counted
    assert mp100_pck(gt, ep) == 1.0
    # a whole evaluation with an oracle and with the trivial baseline
    def oracle_fn(s, kps, skel, q, vis):
        e = next(e for e in eps if torch.equal(e.support.keypoints[:, :2], kps))
        return e.query.keypoints[None, :, :2]

    assert evaluate_episodes(oracle_fn, eps[:1], ds) == 1.0
    trivial = evaluate_episodes(lambda s, kps, skel, q, vis: kps[None], eps, ds)
    assert 0.0 <= trivial < 1.0
    # training pairs in the procedural format
    pairs = MP100Pairs(ds, 32, length=5)
    item = pairs[0]
    assert item["support"].shape == (3, 32, 32) and item["adjacency"].shape[0] == item["mask"].shape[0]
    assert ((item["query_keypoints"] >= 0) & (item["query_keypoints"] <= 1)).all()
    # bad files: named in one line
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "x", "keypoints": ["a"], "skeleton": [[0, 1]]}]}))
    with pytest.raises(InputError, match="bad.json.*1-based"):
        load_mp100(bad)
    bad.write_text("{")
    with pytest.raises(InputError, match="bad.json"):
        load_mp100(bad)


def test_crop_box_maps_keypoints():
    from dynapose4d.cape.mp100 import crop_box

    img = torch.ones(3, 30, 40)
    img[:, 9:12, 29:32] = 0.0  # dot at (30.5, 10.5)
    crop, scale, (x0, y0) = crop_box(img, (20.0, 5.0, 16.0, 10.0), 32)
    d = 1 - crop.mean(0)
    yy, xx = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    c = torch.stack([(xx * d).sum(), (yy * d).sum()]) / d.sum()
    assert torch.allclose(c, (torch.tensor([30.5, 10.5]) - torch.tensor([x0, y0])) * scale, atol=0.3)
    assert math.isclose(scale, 32 / (16 * 1.25))


def test_elastic_warp_moves_keypoints_with_the_image():
    from dynapose4d.cape.data import elastic_warp

    img = torch.zeros(4, 64, 64)
    img[:, 30:33, 20:23] = 1.0  # a dot at pixel centre (21.5, 31.5)
    kp = torch.tensor([[21.5 / 64, 31.5 / 64]])
    moved = 0.0
    for seed in range(3):
        out, k = elastic_warp(img, kp, 0.06, 4, np.random.default_rng(seed))
        w = out[3]
        yy, xx = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        c = torch.stack([(xx * w).sum(), (yy * w).sum()]) / w.sum()
        assert torch.allclose(c, k[0] * 64, atol=0.5), (c, k * 64)
        moved = max(moved, float((k[0] - kp[0]).norm() * 64))
    assert moved > 1.0  # it does move things


def test_scene_table_columns_follow_the_results_order_with_trivial_first():
    from dynapose4d.cape.evaluation import format_scene_table

    row = {"start_pck@0.1": 0.5, "start_pck@0.2": 0.6, "finetuned_pck@0.1": 0.7, "finetuned_pck@0.2": 0.8,
           "trivial_pck@0.1": 0.1, "trivial_pck@0.2": 0.2, "keypoints": 4}
    lines = format_scene_table({"all": row, "az000": row}).splitlines()
    assert lines[0].split() == ["camera", "kps", "trivial@0.1", "start@0.1", "finetuned@0.1", "trivial@0.2",
                                "start@0.2", "finetuned@0.2"]
    assert lines[1].split() == ["all", "4", "0.100", "0.500", "0.700", "0.200", "0.600", "0.800"]
