"""PoseAnything's MP-100 test protocol (`dynapose4d.cape.mp100_protocol`, run by `.mp100_eval`) on a small
MP-100-format folder written here.

Every expected number is computed in this file from the annotations it writes (its own box cleaning, crop map,
episode draw with Python's `random` and PCK count), independently of the module under test."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from dynapose4d.core.errors import InputError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

# category -> (N, skeleton 1-based, skeleton 0-based); keypoints at fixed fractions (fx, fy) of the box
CATS = {
    1: ("lamp", [[1, 2], [2, 3], [3, 4]], [[0, 1], [1, 2], [2, 3]], [(0.1, 0.2), (0.5, 0.5), (0.9, 0.3), (0.3, 0.8)]),
    2: ("chair", [[1, 2], [2, 3]], [[0, 1], [1, 2]], [(0.2, 0.2), (0.8, 0.6), (0.5, 0.9)]),
}
PER_CAT = 6


def _colour(img_index):
    return (20 + 9 * img_index, 90 + (img_index % 5) * 20, 200 - 7 * img_index)


def _build(root, empty_cat=False):
    """Write ROOT/annotations/mp100_split{1,2}_test.json (1-based / 0-based skeletons, same annotations) and
    ROOT/images/. One instance per image, each image a uniform colour that identifies it. Returns the list of
    kept instances in the original's order: dicts with keypoints [N, 3], clean box, category."""
    from PIL import Image

    (root / "annotations").mkdir(parents=True)
    (root / "images" / "mp").mkdir(parents=True)
    rng = np.random.default_rng(3)
    images, anns, kept = [], [], []
    cats = dict(CATS)
    if empty_cat:  # every instance has one labelled keypoint, 0 or 1: some pairs share none
        cats = {3: ("bowl", [[1, 2]], [[0, 1]], [(0.3, 0.5), (0.7, 0.5)])}
    img_index = 0
    for cid, (_, _, _, fr) in cats.items():
        for k in range(PER_CAT):
            W, H = int(rng.integers(40, 70)), int(rng.integers(36, 60))
            w, h = float(rng.integers(12, 26)), float(rng.integers(12, 26))
            x, y = float(rng.integers(0, W - 10)), float(rng.integers(0, H - 10))
            if k == 1:  # a box running over the image border: cleaned to the image
                x, w = float(W - 15), 30.0
            if k == 2:
                x, y = -3.0, -2.5
            mirror = cid == 1 and k % 2 == 1
            kp = []
            for j, (fx, fy) in enumerate(fr):
                fx = 1 - fx if mirror else fx
                vis = 2
                if empty_cat:
                    vis = 2 if j == k % 2 else 0
                elif j == len(fr) - 1 and k in (2, 5):
                    vis = 0  # unlabelled in some instances
                kp += [x + fx * w, y + fy * h, vis] if vis else [0.0, 0.0, 0]
            name = f"mp/{img_index}.png"
            Image.fromarray(np.full((H, W, 3), _colour(img_index), np.uint8)).save(root / "images" / name)
            images.append({"id": 1000 + img_index, "file_name": name, "width": W, "height": H})
            anns.append({"id": 5000 + img_index, "image_id": 1000 + img_index, "category_id": cid, "keypoints": kp,
                         "bbox": [x, y, w, h], "num_keypoints": sum(1 for v in kp[2::3] if v > 0), "iscrowd": 0,
                         "area": w * h})
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(W - 1.0, x1 + max(0.0, w - 1)), min(H - 1.0, y1 + max(0.0, h - 1))
            kept.append({"img": img_index, "cid": cid, "kp": np.array(kp, float).reshape(-1, 3),
                         "box": (x1, y1, x2 - x1, y2 - y1), "mirror": mirror, "size": (W, H)})
            img_index += 1
    # annotations the original drops: crowd, zero area, collapsed box, all-zero keypoints, num_keypoints 0
    n = len(next(iter(cats.values()))[3])
    first = next(iter(cats))
    for extra in ({"iscrowd": 1}, {"area": 0.0}, {"bbox": [5.0, 5.0, 1.0, 1.0]}, {"keypoints": [0.0] * 3 * n},
                  {"num_keypoints": 0}):
        a = {"id": 9000 + len(anns), "image_id": 1000, "category_id": first, "keypoints": [5.0, 5.0, 2] * n,
             "bbox": [2.0, 2.0, 10.0, 10.0], "num_keypoints": n, "iscrowd": 0, "area": 100.0}
        a.update(extra)
        anns.append(a)
    for split, idx in ((1, 1), (2, 2)):
        categories = [{"id": cid, "name": nm, "keypoints": [f"k{j}" for j in range(len(fr))],
                       "skeleton": sk1 if idx == 1 else sk0, "supercategory": "x"}
                      for cid, (nm, sk1, sk0, fr) in cats.items()]
        (root / "annotations" / f"mp100_split{split}_test.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return kept


def _ref_episodes(kept, episodes, queries):
    """The original's draw: random.seed(1), per category in order, `episodes` x sample(objs, 1 + queries)."""
    state = random.getstate()
    random.seed(1)
    out = []
    for cid in dict.fromkeys(k["cid"] for k in kept):
        objs = [i for i, k in enumerate(kept) if k["cid"] == cid]
        for _ in range(episodes):
            shots = random.sample(objs, 1 + queries)
            out.append((shots[0], shots[1:]))
    random.setstate(state)
    return out


def _ref_geometry(inst):
    x, y, w, h = inst["box"]
    side = 1.25 * max(w, h)
    return np.array([x + w / 2, y + h / 2]), side


def _to_crop(points, inst):
    c, s = _ref_geometry(inst)
    return (np.asarray(points, float) - c) * 256 / s + 128


def _image_of(query_img):
    """Image index of a normalised crop, from its centre pixel's colour."""
    rgb = np.round((query_img[:, 128, 128].double().numpy() * STD + MEAN) * 255)
    for i in range(200):
        if tuple(rgb.astype(int)) == _colour(i):
            return i
    raise AssertionError(f"unknown colour {rgb}")


def _oracle(kept, shift=None):
    """Predictor returning each query's true keypoints (crop coordinates), optionally moved in the original image
    by shift(j) * max(w', h') in a direction that varies with the keypoint."""
    by_img = {k["img"]: k for k in kept}

    def predict(support, kps, present, skeleton, query):
        out = []
        for b in range(query.shape[0]):
            inst = by_img[_image_of(query[b])]
            p = inst["kp"][:, :2].copy()
            if shift is not None:
                norm = max(inst["box"][2], inst["box"][3])
                for j in range(p.shape[0]):
                    a = 0.7 + 1.3 * j
                    p[j] += shift(j) * norm * np.array([math.cos(a), math.sin(a)])
            out.append(_to_crop(p, inst))
        return torch.tensor(np.stack(out), dtype=torch.float32)

    return predict


def _ref_pck(kept, eps, correct):
    """Per-sample reference PCK: counted = labelled in query and support; correct(j) says if keypoint j is."""
    vals = []
    for s, qs in eps:
        for q in qs:
            counted = [j for j in range(kept[q]["kp"].shape[0]) if kept[q]["kp"][j, 2] > 0 and kept[s]["kp"][j, 2] > 0]
            vals.append(sum(correct(s, q, j) for j in counted) / len(counted) if counted else 0.0)
    return vals


# ------------------------------------------------------------------------------------------------ tests


def test_skeleton_convention_is_detected(tmp_path):
    from dynapose4d.cape.mp100 import detect_skeleton_base, load_mp100, load_split

    _build(tmp_path / "mp")
    one, zero = load_split(tmp_path / "mp", 1, "test"), load_split(tmp_path / "mp", 2, "test")
    assert one.skeleton_base == 1 and zero.skeleton_base == 0
    for cid, (_, _, sk0, _) in CATS.items():
        assert one.categories[cid].skeleton == zero.categories[cid].skeleton == [tuple(e) for e in sk0]
    # the rule: 0 present -> 0-based; N present (and no 0) -> 1-based; neither -> 0-based (PoseAnything's files)
    cat = lambda n, sk: {"keypoints": ["k"] * n, "skeleton": sk}  # noqa: E731
    assert detect_skeleton_base([cat(3, [[1, 2]]), cat(2, [[0, 1]])]) == 0
    assert detect_skeleton_base([cat(3, [[1, 2]]), cat(2, [[1, 2]])]) == 1
    assert detect_skeleton_base([cat(3, [[1, 2]]), cat(4, [[2, 3]])]) == 0
    assert detect_skeleton_base([cat(3, [])]) == 0
    # a file holding 0 and some N is inconsistent: named error, or the edge left out on request
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "x", "keypoints": ["a", "b"], "skeleton": [[0, 1], [1, 2]]}]}))
    with pytest.raises(InputError, match=r"bad.json.*\[1, 2\] out of range"):
        load_mp100(bad)
    assert load_mp100(bad, drop_bad_edges=True).categories[1].skeleton == [(0, 1)]


def test_instances_are_filtered_and_ordered_as_the_original(tmp_path):
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_protocol import benchmark_instances

    kept = _build(tmp_path / "mp")
    inst, cat2obj = benchmark_instances(load_split(tmp_path / "mp", 1, "test"))
    assert [i.ann.image_id - 1000 for i in inst] == [k["img"] for k in kept]  # the 5 bad annotations are gone
    assert cat2obj == {cid: [i for i, k in enumerate(kept) if k["cid"] == cid] for cid in CATS}
    for i, k in zip(inst, kept):
        assert i.clean_bbox == pytest.approx(k["box"])
        c, s = _ref_geometry(k)
        assert np.allclose(i.center, c, atol=1e-5) and i.side == pytest.approx(s, rel=1e-6)
        assert i.norm == max(k["box"][2], k["box"][3])
    # the box running over the right border is cut at W - 1; the one starting at negative x, y at 0
    k1 = kept[1]
    assert k1["box"][0] + k1["box"][2] == k1["size"][0] - 1
    assert kept[2]["box"][:2] == (0.0, 0.0)


def test_episodes_are_pythons_random_draw(tmp_path):
    from dynapose4d.cape.mp100_protocol import make_episodes

    cat2obj = {7: list(range(0, 20)), 9: [], 8: list(range(20, 37))}
    eps = make_episodes(cat2obj, num_episodes=5, num_queries=15)
    assert len(eps) == 2 * 5 and [e.category_id for e in eps] == [7] * 5 + [8] * 5
    assert all(len(e.supports) == 1 and len(e.queries) == 15 for e in eps)
    assert all(len(set(e.supports + e.queries)) == 16 for e in eps)
    random.seed(1)  # the original: the global generator seeded with 1, categories in order
    ref = [random.sample(cat2obj[c], 16) for c in (7, 8) for _ in range(5)]
    assert [e.supports + e.queries for e in eps] == ref
    assert [e.queries for e in make_episodes(cat2obj, 5, 15)] == [e.queries for e in eps]  # deterministic
    assert len(make_episodes({1: list(range(16))})) == 200  # the benchmark's count per category
    with pytest.raises(InputError, match="category 3: 10 usable instances, an episode needs 16"):
        make_episodes({3: list(range(10))})


def test_crop_geometry_black_border_and_inverse():
    from dynapose4d.cape.mp100_protocol import box_center_side, from_input, to_input, warp_crop

    img = np.full((50, 80, 3), 200, np.uint8)
    img[20, 36] = (0, 0, 0)  # a dark pixel at x = 36, y = 20 (pixel index = coordinate)
    center, side = box_center_side((30.0, 16.0, 20.0, 14.0))  # crop x 27.5..52.5, y 10.5..35.5: inside
    assert side == pytest.approx(25.0) and tuple(center) == (40.0, 23.0)
    crop = warp_crop(img, center, side)  # [3, 256, 256] uint8
    assert crop.shape == (3, 256, 256) and crop.dtype == torch.uint8 and crop.min() < 10
    p = to_input(np.array([[36.0, 20.0]]), center, side)[0]
    assert np.allclose(p.numpy(), [(36 - 40) * 256 / 25 + 128, (20 - 23) * 256 / 25 + 128])
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    w = 200.0 - crop[0].double()
    blob = torch.stack([(xx * w).sum(), (yy * w).sum()]) / w.sum()
    assert torch.allclose(blob, p, atol=0.1)  # the dark pixel lands where its keypoint does
    assert crop[0, int(p[1]), int(p[0])] < 40 and crop[0, 0, 0] == crop[0, 255, 255] == 200
    assert torch.allclose(from_input(p, center, side), torch.tensor([36.0, 20.0], dtype=torch.float64))
    # a crop running over the image's top-left corner: black (0) outside, the image inside
    center, side = box_center_side((0.0, 0.0, 16.0, 16.0))  # side 20: x, y from -2 to 18
    crop = warp_crop(img, center, side)
    edge = float(to_input(np.array([[0.0, 0.0]]), center, side)[0, 0])  # where x = 0 (first pixel) lands
    out = float(to_input(np.array([[-1.0, -1.0]]), center, side)[0, 0])  # the border's first 0 pixel
    assert edge == pytest.approx((0 - 8) * 256 / 20 + 128) and out == pytest.approx(edge - 12.8)
    assert crop[:, :, : math.ceil(out)].max() == 0 and crop[:, : math.ceil(out)].max() == 0
    assert crop[:, math.ceil(edge):, math.ceil(edge):].min() == 200
    # bilinear between the border's 0 and the image's 200 one pixel out: half way at x = -0.5
    half = int(round(float(to_input(np.array([[-0.5, 8.0]]), center, side)[0, 0])))
    assert abs(int(crop[0, 128, half]) - 100) <= 7


def _reference_warp(image, m, size=256):
    """An independent bilinear crop through the 2 x 3 map m (image -> crop): output (u, v) samples the image at
    m^-1 (u, v), 0 outside; positions on OpenCV's fixed-point grid (the inverse map's terms in 1/1024 pixel,
    rounded, then to 1/32 pixel), bilinear in float64, rounded to 8 bits."""
    H, W = image.shape[:2]
    a = np.vstack([m, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(a)[:2]
    u = np.arange(size, dtype=np.float64)

    def grid(row):  # OpenCV: round(M0 u 1024) + round((M1 v + M2) 1024), then to 1/32 with rounding
        return lambda v: np.floor((np.rint(row[0] * u * 1024)[None, :] + np.rint((row[1] * v + row[2]) * 1024)[:, None]
                                   + 16) / 32) / 32

    v = np.arange(size, dtype=np.float64)
    gx, gy = torch.from_numpy(grid(inv[0])(v)), torch.from_numpy(grid(inv[1])(v))  # [size, size] each
    g = torch.stack([gx * 2 / (W - 1) - 1, gy * 2 / (H - 1) - 1], -1)[None]
    img = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    out = torch.nn.functional.grid_sample(img, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def test_crop_is_opencvs_warp_of_the_analytic_map():
    """The crop matrix is the analytic map (p - c) 256 / s + 128 up to float32 point rounding, and the warp
    agrees with an independent bilinear resampler within one grey level (OpenCV's weights are 15-bit fixed
    point), on a textured image with crops inside, across and off its edges."""
    from dynapose4d.cape.mp100_protocol import box_center_side, crop_matrix, warp_crop

    rng = np.random.default_rng(0)
    img = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    for box in [(30.0, 16.0, 20.0, 14.0), (0.0, 0.0, 16.0, 16.0), (60.0, 40.0, 29.0, 29.0), (11.3, 7.7, 33.1, 5.2)]:
        center, side = box_center_side(box)
        m = crop_matrix(center, side)
        k = 256 / side
        analytic = np.array([[k, 0, 128 - k * center[0]], [0, k, 128 - k * center[1]]])
        assert m.shape == (2, 3) and np.allclose(m, analytic, atol=1e-4), box
        crop = warp_crop(img, center, side)
        ref = _reference_warp(img, m)
        diff = (crop.int() - ref.int()).abs()
        assert crop.shape == (3, 256, 256) and crop.dtype == torch.uint8
        assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.02, (box, int(diff.max()))


def test_images_are_read_as_opencv_reads_them(tmp_path):
    """EXIF orientation applied, grey and 16-bit files as 8-bit RGB, channel order RGB; unreadable files are a
    one-line InputError naming the file."""
    from PIL import Image

    from dynapose4d.cape.mp100_protocol import read_rgb_uint8

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :, 0] = 250  # red
    rgb[0:8, 0:8] = (0, 0, 255)  # a blue corner, top-left
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert np.array_equal(read_rgb_uint8(tmp_path / "a.png"), rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: display rotates 90 degrees clockwise
    Image.fromarray(rgb).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_rgb_uint8(tmp_path / "r.jpg")
    assert out.shape == (30, 20, 3) and out[1:5, -5:-1, 2].min() > 200 and out[1:5, -5:-1, 0].max() < 60
    grey = np.full((8, 9), 77, np.uint16) * 256
    Image.fromarray(grey).save(tmp_path / "g16.png")
    g = read_rgb_uint8(tmp_path / "g16.png")
    assert g.shape == (8, 9, 3) and g.dtype == np.uint8 and abs(int(g[0, 0, 0]) - 77) <= 1
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, match in [("bad.jpg", "unreadable"), ("empty.jpg", "unreadable"), ("none.jpg", "not found")]:
        with pytest.raises(InputError, match=rf"{name}: .*{match}"):
            read_rgb_uint8(tmp_path / name)


def test_perfect_shifted_and_mixed_predictions(tmp_path):
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_eval import evaluate_mp100

    kept = _build(tmp_path / "mp")
    E, Q = 4, 3
    eps = _ref_episodes(kept, E, Q)
    for split in (1, 2):  # 1-based and 0-based skeleton files: same answers
        ds = load_split(tmp_path / "mp", split, "test")
        res = evaluate_mp100(ds, _oracle(kept), E, Q)
        assert res.mean == 1.0 and all(r.pck == 1.0 and r.samples == E * Q for r in res.categories)
        assert [r.name for r in res.categories] == ["lamp", "chair"] and res.samples == 2 * E * Q
    assert evaluate_mp100(ds, _oracle(kept, lambda j: 0.15), E, Q).mean == 1.0
    assert evaluate_mp100(ds, _oracle(kept, lambda j: 0.25), E, Q).mean == 0.0
    # a mix: keypoints 0 and 2 off by 0.25 x max(w', h'), the others by 0.15 (1 and 3 right)
    res = evaluate_mp100(ds, _oracle(kept, lambda j: 0.25 if j in (0, 2) else 0.15), E, Q)
    ref = _ref_pck(kept, eps, lambda s, q, j: j in (1, 3))
    assert res.per_sample == pytest.approx(ref, abs=1e-12)
    assert res.mean == pytest.approx(np.mean(ref), abs=1e-12)
    assert 0.3 < res.mean < 0.7  # not a degenerate 0 / 1
    lamp = [v for (s, qs), v in zip([(s, q) for s, qs in eps for q in qs], ref) if kept[s]["cid"] == 1]
    assert res.categories[0].pck == pytest.approx(np.mean(lamp))


def test_samples_without_a_common_keypoint_score_zero(tmp_path):
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_eval import evaluate_mp100

    kept = _build(tmp_path / "mp", empty_cat=True)
    E, Q = 5, 3
    eps = _ref_episodes(kept, E, Q)
    res = evaluate_mp100(load_split(tmp_path / "mp", 1, "test"), _oracle(kept), E, Q)
    ref = _ref_pck(kept, eps, lambda s, q, j: True)
    assert set(ref) == {0.0, 1.0}  # both kinds occur
    assert res.per_sample == ref and res.mean == pytest.approx(np.mean(ref))


def test_support_copy_baseline_and_model_inputs(tmp_path):
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_eval import evaluate_mp100, support_copy_predictor

    kept = _build(tmp_path / "mp")
    E, Q = 4, 3
    eps = _ref_episodes(kept, E, Q)
    ds = load_split(tmp_path / "mp", 1, "test")
    res = evaluate_mp100(ds, support_copy_predictor(), E, Q)

    # reference: copy the support's crop coordinates, decode them in the query's crop, count by hand
    def correct(s, q, j):
        p = _to_crop(kept[s]["kp"][j, :2], kept[s])
        c, side = _ref_geometry(kept[q])
        back = p * side / 256 + c - side / 2
        return np.linalg.norm(back - kept[q]["kp"][j, :2]) / max(kept[q]["box"][2:]) < 0.2

    ref = _ref_pck(kept, eps, correct)
    assert res.per_sample == pytest.approx(ref)
    assert 0.05 < res.mean < 0.95 and res.categories[0].pck != res.categories[1].pck  # not degenerate

    seen = []

    def recorder(support, kps, present, skeleton, query):
        seen.append((support.clone(), kps.clone(), present.clone(), skeleton, query.shape))
        return kps[None].expand(query.shape[0], -1, -1)

    evaluate_mp100(ds, recorder, 1, Q)
    (support, kps, present, skeleton, qshape), s = seen[0], eps[0][0]
    assert support.shape == (3, 256, 256) and qshape == (Q, 3, 256, 256) and skeleton == [(0, 1), (1, 2), (2, 3)]
    col = (np.array(_colour(kept[s]["img"])) / 255 - MEAN) / STD  # ImageNet-normalised colour at the centre
    assert np.allclose(support[:, 128, 128].numpy(), col, atol=1e-5)
    assert np.allclose(kps.numpy(), _to_crop(kept[s]["kp"][:, :2], kept[s]), atol=1e-3)
    crop_kps = _to_crop(kept[s]["kp"][:, :2], kept[s])
    on_map = [all(-4 <= math.trunc(c / 4 + 0.5) < 67 for c in xy) for xy in crop_kps]  # 7x7 patch touches 64x64
    assert present.tolist() == [bool(v > 0) and m for v, m in zip(kept[s]["kp"][:, 2], on_map)]
    assert not all(on_map)  # this support's box was cut at the image border: a keypoint is off the map


def test_support_keypoint_off_the_heatmap_is_absent():
    from dynapose4d.cape.mp100_protocol import heatmap_weight

    pts = torch.tensor([[10.0, 10.0], [-21.9, 40.0], [-22.0, 40.0], [265.9, 5.0], [266.0, 5.0], [50.0, 50.0]])
    # 7x7 patch around the cell trunc(x / 4 + 0.5): it touches the 64-grid while cell - 3 < 64 and cell + 3 >= -1
    # (x = 266 -> cell 67 -> patch from 64: off; x = -22 -> cell -5 -> patch to 1 left of 0, as the original's
    # "br < 0" test with br = cell + 4)
    assert heatmap_weight(pts, [1, 1, 1, 1, 1, 0]).tolist() == [True, True, False, True, False, False]
    assert heatmap_weight(torch.tensor([[5.0, -21.9], [5.0, -22.0]]), [2, 2]).tolist() == [True, False]


def test_poseanything_adapter_and_checkpoint_routing(tmp_path, monkeypatch):
    import dynapose4d.cape.poseanything as pa
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_eval import evaluate_mp100, load_predictor, support_copy_predictor

    _build(tmp_path / "mp")
    ds = load_split(tmp_path / "mp", 1, "test")
    calls = []

    class StandIn(torch.nn.Module):  # PoseAnything's forward API: [L, B, N, 2] in [0, 1], here the support copied
        variant = "stand-in"

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, query, support, support_keypoints, visible, skeleton):
            calls.append((query.shape, support.shape, visible.dtype, skeleton))
            assert query.shape[0] == support.shape[0] == support_keypoints.shape[0]
            assert -2.2 < float(query.min()) and float(query.max()) < 2.7  # ImageNet-normalised
            return torch.stack([torch.zeros_like(support_keypoints), support_keypoints / 256])

    built = []
    monkeypatch.setattr(pa, "poseanything_from_checkpoint", lambda data, path: built.append(data) or StandIn())
    ck = tmp_path / "graph_split1.pth"  # an mmcv-format file: meta with numpy objects, the official key names
    torch.save({"meta": {"epoch": 200, "seed": np.int64(0)},
                "state_dict": {"backbone.patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
                               "keypoint_head.query_proj.weight": torch.zeros(2, 2)}}, ck)
    pred, desc = load_predictor(ck)
    assert desc == "PoseAnything-stand-in graph_split1.pth" and "state_dict" in built[0]
    a = evaluate_mp100(ds, pred, 2, 3)
    b = evaluate_mp100(ds, support_copy_predictor(), 2, 3)
    assert a.per_sample == pytest.approx(b.per_sample, abs=1e-9) and calls
    assert calls[0][0] == (3, 3, 256, 256) and calls[0][3] == [[0, 1], [1, 2], [2, 3]]
    # a dynapose4d pointer to an official file goes the same way; anything else: a clear one-line error
    from dynapose4d.cape import save_poseanything_pointer

    ptr = save_poseanything_pointer(tmp_path / "pointer.ckpt", ck)
    assert load_predictor(ptr)[1] == "PoseAnything-stand-in pointer.ckpt" and len(built) == 2
    junk = tmp_path / "junk.pth"
    torch.save({"state_dict": {"head.w": torch.zeros(1)}}, junk)
    with pytest.raises(InputError, match="junk.pth: neither"):
        load_predictor(junk)
    from dynapose4d.core.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="nope.pth"):
        load_predictor(tmp_path / "nope.pth")


@pytest.mark.slow  # ~10 s on 2 CPU cores: four SwinV2-T passes
def test_real_poseanything_runs_through_the_protocol(tmp_path):
    """The real PoseAnything-Tiny (random weights) on one episode per category through the adapter: the support
    encoded once (support_tokens / forward_tokens) gives what its plain forward gives."""
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_eval import evaluate_mp100, poseanything_predictor
    from dynapose4d.cape.poseanything_model import PoseAnything

    torch.manual_seed(0)
    model = PoseAnything("tiny").eval()
    _build(tmp_path / "mp")
    pred = poseanything_predictor(model)
    ds = load_split(tmp_path / "mp", 2, "test")
    seen = []

    def spy(support, kps, present, skeleton, query):
        out = pred(support, kps, present, skeleton, query)
        with torch.no_grad():  # the same model through its plain forward, the support repeated per query
            B = query.shape[0]
            ref = model(query, support[None].expand(B, -1, -1, -1), kps[None].expand(B, -1, -1),
                        present[None].expand(B, -1).float(), [list(e) for e in skeleton])[-1] * 256
        seen.append((out, ref))
        return out

    res = evaluate_mp100(ds, spy, 1, 1)
    assert len(seen) == 2 and res.samples == 2 and 0.0 <= res.mean <= 1.0
    assert seen[0][0].shape == (1, 4, 2) and seen[1][0].shape == (1, 3, 2)  # lamp, chair
    for out, ref in seen:
        assert torch.allclose(out, ref, atol=1e-3) and bool(((out >= 0) & (out <= 256)).all())


def test_graph_predictor_sees_unnormalised_images(monkeypatch):
    from dynapose4d.cape import CAPEModel, CAPEModelConfig
    from dynapose4d.cape import mp100_eval as me

    model = CAPEModel(CAPEModelConfig())
    got = {}

    import dynapose4d.cape as cape

    def fake_prepare(img, kps, skeleton, m, mask):
        got["support"], got["kps"], got["mask"] = img, kps, mask
        return "prep"

    def fake_predict(prep, q):
        got["query"] = q
        return torch.full((q.shape[0], 2, 2), 10.5), None

    monkeypatch.setattr(cape, "prepare_support", fake_prepare)
    monkeypatch.setattr(cape, "predict_prepared", fake_predict)
    pred = me.graph_predictor(model)
    crop = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    out = pred(me.normalize_crop(crop), torch.tensor([[3.0, 4.0], [5.0, 6.0]]), torch.tensor([True, False]), [(0, 1)],
               me.normalize_crop(crop)[None])
    assert torch.allclose(got["support"], crop.float() / 255, atol=1e-6)  # RGB in [0, 1], as the model expects
    assert torch.allclose(got["query"][0], crop.float() / 255, atol=1e-6)
    assert got["kps"].tolist() == [[3.5, 4.5], [5.5, 6.5]] and got["mask"].tolist() == [True, False]
    assert out.tolist() == [[[10.0, 10.0], [10.0, 10.0]]]  # pixel centres back from +0.5 to integers


def test_cli_prints_categories_and_mean(tmp_path, capsys):
    from dynapose4d.cli import main

    _build(tmp_path / "mp")
    rc = main(["eval-cape", "--mp100", str(tmp_path / "mp"), "--split", "1", "--episodes", "2", "--queries", "3",
               "--support-copy"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith("MP-100 split 1 test, 1-shot, 2 episodes x 3 queries") and "support-copy" in out[0]
    rows = {ln.split()[0]: ln.split()[1:] for ln in out[2:]}
    assert set(rows) == {"lamp", "chair", "mean"} and rows["mean"][0] == "12"
    vals = [float(rows[c][1]) for c in ("lamp", "chair")]
    assert float(rows["mean"][1]) == pytest.approx(np.mean(vals), abs=0.01)
    from dynapose4d.cape.mp100 import load_split
    from dynapose4d.cape.mp100_eval import evaluate_mp100, support_copy_predictor

    res = evaluate_mp100(load_split(tmp_path / "mp", 1, "test"), support_copy_predictor(), 2, 3)
    assert vals == [round(100 * r.pck, 2) for r in res.categories] and rows["lamp"][0] == "6"
    # --skeleton-base 0 reads a 1-based file as-is (as PoseAnything would): the edge to index N is left out, said
    rc = main(["eval-cape", "--mp100", str(tmp_path / "mp"), "--split", "1", "--episodes", "1", "--queries", "3",
               "--support-copy", "--skeleton-base", "0"])
    err = capsys.readouterr().err
    assert rc == 0 and "mp100_split1_test.json: 2 skeleton edge(s) out of range for 0-based" in err
    assert "lamp: [3, 4]" in err and "chair: [2, 3]" in err
    # the shipped graph model runs through the same path
    rc = main(["eval-cape", "--mp100", str(tmp_path / "mp"), "--split", "2", "--episodes", "1", "--queries", "3",
               "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and "graph model" in out[0] and out[-1].split()[:2] == ["mean", "6"]
    assert 0.0 <= float(out[-1].split()[2]) <= 100.0


@pytest.mark.parametrize("args, match", [
    (["--mp100", "{tmp}/absent", "--split", "1"], "absent: MP-100 folder not found"),
    (["--mp100", "{tmp}/mp", "--split", "7"], "split must be 1..5"),
    (["--mp100", "{tmp}/mp", "--split", "3"], "mp100_split3_test.json: MP-100 split file not found"),
    (["--mp100", "{tmp}/mp", "--split", "1", "--checkpoint", "{tmp}/none.pth"], "none.pth: checkpoint not found"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, match):
    from dynapose4d.cli import main

    _build(tmp_path / "mp")
    rc = main(["eval-cape"] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and match in err[0]
