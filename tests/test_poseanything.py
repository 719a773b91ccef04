"""The PoseAnything port against the reference fixture (tests/fixtures/poseanything/NOTE.md): official state-dict
keys and buffers, the weight rule, and the original model's outputs on three cases for Tiny and Small; the
official checkpoint format; the test-time crop and its gradient."""

from __future__ import annotations

import json
import math
import pickle
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from dynapose4d.cape.poseanything import (
    CropFrame,
    load_poseanything,
    object_boxes,
    poseanything_from_checkpoint,
    predict_prepared,
    prepare_support,
)
from dynapose4d.cape.poseanything_model import PoseAnything, support_heatmaps
from dynapose4d.core.errors import InputError, MissingWeightsError

FX = Path(__file__).parent / "fixtures" / "poseanything"
INPUTS = json.loads((FX / "inputs.json").read_text())
CASES = {c["name"]: c for c in INPUTS["cases"]}
VARIANTS = ("tiny", "small")


def entries(variant: str) -> list[dict]:
    return json.loads((FX / f"keys_{variant}.json").read_text())


def make_weights(ents: list[dict]) -> dict[str, torch.Tensor]:
    """The fixture's weight rule: each parameter from torch's normal generator seeded by crc32 of its key."""
    sd = {}
    for e in ents:
        if e["kind"] != "parameter":
            continue
        k, shape = e["key"], e["shape"]
        r = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(k.encode())))
        if k.endswith("logit_scale"):
            w = math.log(10) + 0.1 * r
        elif len(shape) == 1 and k.endswith(".weight"):
            w = 1 + 0.1 * r
        elif len(shape) == 1:
            w = 0.05 * r
        else:
            w = r / math.sqrt(r.numel() // shape[0])
        sd[k] = w
    return sd


def checksum(t: torch.Tensor) -> tuple[float, float, float]:
    f = t.detach().double().flatten()
    w = (torch.arange(f.numel()) % 97 + 1).double()
    return float(f.sum()), float((f * f).sum()), float((f * w).sum())


def make_image(phase: float) -> torch.Tensor:
    """The fixture's image rule: a normalised [1, 3, 256, 256] sine pattern."""
    c = torch.arange(3, dtype=torch.float64).view(3, 1, 1)
    y = torch.arange(256, dtype=torch.float64).view(1, 256, 1)
    x = torch.arange(256, dtype=torch.float64).view(1, 1, 256)
    raw = (0.5 + 0.5 * torch.sin(0.05 * (c + 1) * x + 0.03 * (c + 2) * y + phase)).to(torch.float32)
    mean = torch.tensor(INPUTS["normalisation"]["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(INPUTS["normalisation"]["std"], dtype=torch.float32).view(3, 1, 1)
    return ((raw - mean) / std)[None]


def rule_heatmaps(kps_xy, visible, size=64, stride=4):
    """The fixture's heatmap rule in numpy (an independent reader of `support_heatmaps`), unpadded."""
    r = np.arange(7, dtype=np.float32)
    g = np.exp(-((r[None, :] - 3) ** 2 + (r[:, None] - 3) ** 2) / 2)
    n = len(kps_xy)
    target, weight = np.zeros((n, size, size), np.float32), np.zeros(n, np.float32)
    for j, ((x, y), v) in enumerate(zip(kps_xy, visible)):
        mx, my = int(x / stride + 0.5), int(y / stride + 0.5)
        x0, y0 = mx - 3, my - 3
        inside = not (x0 >= size or y0 >= size or x0 + 7 < 0 or y0 + 7 < 0)
        weight[j] = float(v) if inside else 0.0
        if weight[j] > 0.5:
            xa, xb, ya, yb = max(0, x0), min(size, x0 + 7), max(0, y0), min(size, y0 + 7)
            target[j, ya:yb, xa:xb] = g[ya - y0:yb - y0, xa - x0:xb - x0]
    return torch.from_numpy(target), torch.from_numpy(weight)


def case_inputs(name: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    c = CASES[name]
    return (torch.tensor(c["keypoints_xy_256px"], dtype=torch.float32)[None], torch.tensor(c["visible"])[None],
            c["skeleton"])


@pytest.fixture(scope="module")
def ruled():
    """Per variant: the model with rule weights and the backbone features of the two fixture images (shared by the
    three cases)."""
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    out = {}
    S, Q = make_image(0.0), make_image(1.0)
    for v in VARIANTS:
        m = PoseAnything(v).eval()
        m.load_state_dict(make_weights(entries(v)), strict=False)  # buffers keep the computed values
        with torch.no_grad():
            out[v] = (m, m.backbone(S), m.backbone(Q))
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_is_the_official_one(variant):
    ents = entries(variant)
    sd = PoseAnything(variant).state_dict()
    assert [(k, list(t.shape)) for k, t in sd.items()] == [(e["key"], e["shape"]) for e in ents]
    params = dict(PoseAnything(variant).named_parameters())
    assert {e["key"] for e in ents if e["kind"] == "parameter"} == set(params)
    for e in ents:
        if e["kind"] == "buffer":  # computed by the modules
            c = e["checksum"]
            assert checksum(sd[e["key"]]) == pytest.approx((c["sum"], c["sum_sq"], c["weighted_sum"]),
                                                           rel=1e-9, abs=1e-6), e["key"]
    w = make_weights(ents)
    for e in ents:
        if e["kind"] == "parameter":
            c = e["rule_checksum"]
            assert checksum(w[e["key"]]) == pytest.approx((c["sum"], c["sum_sq"], c["weighted_sum"]),
                                                          rel=1e-9, abs=1e-9), e["key"]


def test_inputs_follow_the_rules():
    for name, phase in (("support_image", 0.0), ("query_image", 1.0)):
        ref, img = INPUTS[name], make_image(phase)
        assert img.double().sum().item() == pytest.approx(ref["sum"], rel=1e-12)
        assert img.flatten()[ref["indices"]].tolist() == pytest.approx(ref["values"], abs=1e-7)
    for c in CASES.values():
        kp, vis, _ = case_inputs(c["name"])
        maps, weight = support_heatmaps(kp, vis)
        ref_maps, ref_w = rule_heatmaps(c["keypoints_xy_256px"], c["visible"])
        assert torch.equal(maps[0], ref_maps) and torch.equal(weight[0], ref_w), c["name"]
        assert maps[0].double().sum().item() == pytest.approx(c["target_sum"], rel=1e-7)
    k = torch.tensor(INPUTS["heatmap"]["kernel_7x7_float32"])
    maps, _ = support_heatmaps(torch.tensor([[[128.0, 128.0]]]), torch.ones(1, 1))
    assert torch.allclose(maps[0, 0, 29:36, 29:36], k, rtol=0, atol=1e-7)


def _stat_check(t: torch.Tensor, ref: dict, atol: float, what: str) -> None:
    assert list(t.shape) == ref["shape"] or t.numel() == math.prod(ref["shape"]), what
    got = t.detach().flatten()[torch.tensor(ref["indices"])]
    assert got.tolist() == pytest.approx(ref["values"], abs=atol), what


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_match_the_original(ruled, variant):
    model, fs, fq = ruled[variant]
    ref_all = json.loads((FX / f"outputs_{variant}.json").read_text())["cases"]
    worst = 0.0
    for name in ("n5", "n17", "n5_occluded"):
        ref = ref_all[name]
        kp, vis, skel = case_inputs(name)
        d: dict = {}
        with torch.no_grad():
            tokens, valid = model.pool_support(fs, kp, vis)
            kpts = model.decode(fq, tokens, valid, skel, d)
        ok = torch.tensor(ref["valid"])
        assert valid[0].tolist() == ref["valid"]
        for got, key in ((kpts[:, 0], "keypoints_per_layer"), (d["proposals_local"][0], "proposals_local"),
                         (d["proposals_global"][0], "proposals_global"),
                         (d["reference_points"][:, 0], "decoder_reference_points")):
            diff = (got[..., ok, :] - torch.tensor(ref[key])[..., ok, :]).abs().max().item()
            assert diff < 1e-4, (name, key, diff)
            worst = max(worst, diff)
        assert d["similarity"][0].flatten(1).argmax(-1)[ok].tolist() == \
            torch.tensor(ref["similarity_argmax"])[ok].tolist()
        _stat_check(fs[0], ref["backbone_features_support"], 1e-4, "backbone support")
        _stat_check(fq[0], ref["backbone_features_query"], 1e-4, "backbone query")
        _stat_check(d["similarity"][0], ref["similarity_map"], 1e-3, "similarity")
        dbg = ref["debug"]
        _stat_check(d["input_proj"][0], dbg["input_proj"], 1e-4, "input_proj")
        _stat_check(tokens[0], dbg["support_tokens_after_query_proj"], 1e-4, "support tokens")
        _stat_check(d["memory"][0], dbg["encoder_memory"], 1e-4, "memory")
        _stat_check(d["keypoint_tokens"][0], dbg["encoder_keypoint_tokens"], 1e-4, "keypoint tokens")
        for l in range(3):  # catches the point-embedding channel order, which barely moves the keypoints
            _stat_check(d["decoder_unnormed"][l][0], dbg["decoder_layer_out_unnormed"][l], 1e-4, f"dec {l}")
            _stat_check(d["decoder_normed"][l][0], dbg["decoder_layer_out_normed"][l], 1e-4, f"dec norm {l}")
    assert worst < 1e-5  # a faithful float32 port lands around 1e-6


def test_batch_equals_single_items(ruled):
    """A batch of two items (different visibility, one skeleton per item, one support shared) gives each item's
    own output: the fixture only has batch 1."""
    model, fs, fq = ruled["tiny"]
    kp, _, skel = case_inputs("n5")
    vis = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 1]])
    skels = [skel, [[0, 4], [1, 1]]]
    with torch.no_grad():
        tokens, valid = model.pool_support(fs.expand(2, -1, -1, -1), kp.expand(2, -1, -1), vis)
        both = model.decode(fq.expand(2, -1, -1, -1), tokens, valid, skels)
        for b in range(2):
            one = model.decode(fq, tokens[b:b + 1], valid[b:b + 1], skels[b])
            torch.testing.assert_close(both[:, b], one[:, 0], atol=1e-6, rtol=0)
    assert (both[:, 0] - both[:, 1]).abs().max() > 1e-4  # the items differ


def test_official_file_format_loads(ruled, tmp_path):
    """An mmcv-style file (meta with a numpy scalar, `module.` prefixes) loads strictly with weights_only=True and
    computes the same as the rule-weighted model; the full forward matches the fixture."""
    model = ruled["tiny"][0]
    sd = OrderedDict(("module." + k, v.clone()) for k, v in model.state_dict().items())
    meta = {"mmpose_version": "0.29.0", "config": "model = dict(type='PoseAnythingModel')\n", "epoch": 200,
            "iter": 1, "hook_msgs": {"best_score": np.float64(0.9119), "last_ckpt": "x.pth"}}
    path = tmp_path / "graph_split1.pth"
    torch.save({"meta": meta, "state_dict": sd}, path)
    with pytest.raises(pickle.UnpicklingError):  # the numpy scalar needs the allow-list
        torch.load(path, weights_only=True)
    loaded = load_poseanything(path)
    assert loaded.variant == "tiny" and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    kp, vis, skel = case_inputs("n5")
    with torch.no_grad():
        out = loaded(make_image(1.0), make_image(0.0), kp, vis, skel)  # [L, 1, N, 2]
    ref = json.loads((FX / "outputs_tiny.json").read_text())["cases"]["n5"]["keypoints_per_layer"]
    assert (out[:, 0] - torch.tensor(ref)).abs().max().item() < 1e-4
    # a bare state dict works too
    assert poseanything_from_checkpoint(model.state_dict(), "bare").variant == "tiny"


def test_checkpoint_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="Google Drive") as e:
        load_poseanything(tmp_path / "absent.pth")
    assert "\n" not in str(e.value)
    old = tmp_path / "demo_b.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.patch_embed.proj.weight": torch.zeros(128, 3, 4, 4),
                                           "backbone.layers.2.blocks.17.norm1.weight": torch.zeros(512)}}, old)
    with pytest.raises(InputError, match="older SwinV2-B") as e:
        load_poseanything(old)
    assert "\n" not in str(e.value) and "Tiny" in str(e.value) and "Small" in str(e.value)
    partial = {k: v for k, v in PoseAnything("tiny").state_dict().items() if "kpt_branch.2" not in k}
    with pytest.raises(InputError, match="does not match PoseAnything-tiny"):
        poseanything_from_checkpoint({"state_dict": partial}, "partial.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"meta": {"f": Path("x")}, "state_dict": {}}, unsafe)
    with pytest.raises(InputError, match="weights_only") as e:
        load_poseanything(unsafe)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="not a PoseAnything"):
        poseanything_from_checkpoint({"state_dict": {"a": torch.zeros(1)}}, "other.pth")


def test_crop_round_trip_and_box():
    img = torch.ones(2, 3, 60, 80)
    img[0, :, 10:30, 20:70] = 0.2  # box x 20..69, y 10..29
    img[1, :, 5:55, 40:41] = 0.5  # a one-pixel-wide column
    boxes = object_boxes(img)
    assert boxes.tolist() == [[20.0, 10.0, 50.0, 20.0], [40.0, 5.0, 1.0, 50.0]]
    fr = CropFrame.from_boxes(boxes, 80, 60)
    # MP-100's clean-up: w' = w - 1; centre x1 + w'/2; side 1.25 max(w', h')
    assert fr.centre.tolist() == [[44.5, 19.5], [40.0, 29.5]]
    assert fr.side.tolist() == pytest.approx([1.25 * 49, 1.25 * 49])
    pts = torch.tensor([[[44.5, 19.5], [20.0, 10.0]], [[40.0, 5.0], [1.0, 2.0]]])
    x_in = fr.to_input(pts)
    assert x_in[0, 0].tolist() == [128.0, 128.0]
    assert x_in[0, 1].tolist() == pytest.approx([128 - 24.5 * 256 / 61.25, 128 - 9.5 * 256 / 61.25])
    assert torch.allclose(fr.from_input(x_in), pts, atol=1e-5)
    # the warp samples the image where from_input says (pixel centres at integers), black outside
    ramp = torch.arange(80.0).view(1, 1, 1, 80).expand(2, 3, 60, 80) / 80
    warped = fr.warp(ramp)  # [2, 3, 256, 256]
    u = torch.tensor([[[100.0, 128.0]]]).expand(2, 1, 2)
    src = fr.from_input(u)  # image px of input pixel (100, 128)
    assert warped[:, 0, 128, 100].tolist() == pytest.approx((src[:, 0, 0] / 80).tolist(), abs=1e-5)
    assert fr.from_input(torch.zeros(2, 1, 2))[1, 0, 1] < -1  # input row 0 of the second crop lies above the image
    assert warped[1, :, 0].abs().max() == 0  # black outside
    bottom = fr.from_input(torch.tensor([[[100.0, 255.0]]]).expand(2, 1, 2))[1, 0]  # between rows 59 and 60: blends
    assert warped[1, 0, 255, 100].item() == pytest.approx((60 - bottom[1].item()) * bottom[0].item() / 80, abs=1e-5)


def test_predict_gradient_and_ones_confidence():
    """Through the crop the prediction is differentiable in the query images: a directional finite difference
    matches autograd (float64); confidence is ones."""
    torch.manual_seed(0)
    model = PoseAnything("tiny").double().eval()
    g = torch.Generator().manual_seed(0)
    sup = torch.ones(3, 48, 64, dtype=torch.float64)
    sup[:, 8:40, 12:52] = 0.9 * torch.rand(3, 32, 40, generator=g, dtype=torch.float64)
    kps = torch.tensor([[20.5, 15.5], [40.5, 30.5], [30.5, 22.5]], dtype=torch.float64)
    with torch.no_grad():
        prep = prepare_support(model, sup, kps, [[0, 1], [1, 2]])
    q = torch.roll(sup, (2, -3), (1, 2))[None].clone().requires_grad_(True)  # the object moved
    pts, conf = predict_prepared(prep, q)
    assert pts.shape == (1, 3, 2) and torch.equal(conf, torch.ones(1, 3, dtype=torch.float64))
    (grad,) = torch.autograd.grad(pts.sum(), q)
    assert grad.abs().sum() > 0
    d = torch.zeros_like(q)
    d[..., 10:38, 10:48] = torch.randn(1, 3, 28, 38, generator=g, dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        fd = (predict_prepared(prep, q + eps * d)[0].sum() - predict_prepared(prep, q - eps * d)[0].sum()) / (2 * eps)
    assert fd.item() == pytest.approx((grad * d).sum().item(), rel=1e-4, abs=1e-8)


@pytest.fixture(scope="module")
def tiny_file(ruled, tmp_path_factory):
    """A rule-weighted Tiny written as an official mmcv file."""
    path = tmp_path_factory.mktemp("pa") / "graph_split1_tiny.pth"
    torch.save({"meta": {"config": "...", "hook_msgs": {"best_score": np.float32(0.5)}},
                "state_dict": OrderedDict(ruled["tiny"][0].state_dict())}, path)
    return path


def test_cape_api_with_an_official_file(tiny_file, tmp_path):
    """dynapose4d.cape.predict / load_keypoint_model take the official file and our pointer to it; load_cape
    refuses the pointer with a one-line error."""
    from dynapose4d import cape

    assert isinstance(cape.load_keypoint_model(tiny_file), PoseAnything)
    pointer = cape.save_poseanything_pointer(tmp_path / "model.ckpt", tiny_file, {"metrics": {}})
    assert isinstance(cape.load_keypoint_model(pointer), PoseAnything)
    with pytest.raises(InputError, match="load_keypoint_model"):
        cape.load_cape(pointer)
    img = torch.ones(3, 40, 56)
    img[:, 6:34, 10:46] = torch.linspace(0, 0.9, 36)
    kps = torch.tensor([[12.5, 8.5], [30.5, 20.5], [44.5, 32.5]])
    with torch.no_grad():
        pts, conf = cape.predict(img, kps, [(0, 1), (1, 2)], img[None].expand(2, -1, -1, -1), checkpoint=pointer)
    assert pts.shape == (2, 3, 2) and torch.equal(conf, torch.ones(2, 3))
    assert torch.isfinite(pts).all() and torch.allclose(pts[0], pts[1])
    # the support's keypoints reach the model in the crop's 256 px coordinates (pixel centres at integers)
    fr = CropFrame.from_boxes(object_boxes(img[None]), 56, 40)
    assert fr.centre.tolist() == [[27.5, 19.5]] and fr.side.item() == pytest.approx(1.25 * 35)
    with pytest.raises(InputError, match="out of range"):
        cape.predict(img, kps, [(0, 5)], img[None], checkpoint=tiny_file)


def test_pipeline_with_poseanything(tiny_file, tmp_path):
    """`cape.arch=poseanything cape.checkpoint=FILE`: the cape stage writes the driving keypoints through
    PoseAnything (frozen) and a pointer as its model; the dynamic stage's KML runs the same model."""
    from dynapose4d.cli import main
    from dynapose4d.data.synthetic import write_scene
    from dynapose4d.pipeline.run_folder import read_manifest

    scene = write_scene("humanoid", tmp_path / "scene", seed=0, num_frames=2, size=32)
    run = tmp_path / "run"
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    assert main(["run", str(scene), "--out", str(run), "--config", smoke, "--set", "cape.arch=poseanything",
                 f"cape.checkpoint={tiny_file}", "dynamic.steps=2", "dynamic.lambda_kml=1.0"]) == 0
    m = read_manifest(run)
    assert all(m["stages"][s]["status"] == "done" for s in ("static", "cape", "dynamic"))
    from dynapose4d.cape import load_keypoint_model, read_checkpoint_info

    info = read_checkpoint_info(run / "cape" / "model.ckpt")
    assert info["arch"] == "poseanything" and info["checkpoint"] == str(tiny_file.resolve())
    assert isinstance(load_keypoint_model(run / "cape" / "model.ckpt"), PoseAnything)
    kp = json.loads((run / "cape" / "driving_keypoints.json").read_text())
    assert torch.tensor(kp["points"]).shape == (2, 14, 2) and torch.tensor(kp["confidence"]).eq(1).all()
    metrics = json.loads((run / "cape" / "metrics.json").read_text())["all"]
    assert {"trivial_pck@0.1", "poseanything_pck@0.1"} <= set(metrics)
    logs = [json.loads(line) for line in (run / "dynamic" / "logs" / "metrics.jsonl").read_text().splitlines()]
    kml = [r["dynamic/loss_kml"] for r in logs if "dynamic/loss_kml" in r]
    assert kml and all(math.isfinite(v) and v > 0 for v in kml)
