"""U²-Net (`dynapose4d.data.u2net`) and `cutout: u2net | auto` with its weights: the architecture against the
paper's model sizes and the authors' parameter names, strict loading of a file in their layout (random weights:
none can be downloaded here), the test-time transform against its definition, and the cut through the loader
and a run, with a rule-made network standing in for trained weights where the result must be known."""

from __future__ import annotations

import json

import _fakes
import pytest
import torch
from cutout_backgrounds import composite, make_background

from dynapose4d.cli import main
from dynapose4d.core.errors import ConfigError, MissingWeightsError
from dynapose4d.core.io import read_image, write_image
from dynapose4d.data import scene as scene_io
from dynapose4d.data.scene import load_scene
from dynapose4d.data.synthetic import write_scene
from dynapose4d.data.u2net import MEAN, STD, U2Net, load_u2net, prepare, u2net_alpha
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.runner import StageRunner


def test_the_architecture_has_the_papers_sizes_and_the_authors_parameter_names(tmp_path):
    """Saved as a state dict, U²-Net is 176.3 MB and U²-NetP 4.7 MB (the sizes the paper and the authors' files
    give); the names are the authors' (stage / rebnconv / conv_s1 / bn_s1, side1-6, outconv)."""
    for small, megabytes, params in ((False, 176.3, 44_009_869), (True, 4.7, 1_131_181)):
        model = U2Net(small)
        assert sum(p.numel() for p in model.parameters()) == params
        torch.save(model.state_dict(), tmp_path / "w.pth")
        assert abs((tmp_path / "w.pth").stat().st_size / 1e6 - megabytes) < 0.1
    keys = U2Net(True).state_dict()
    for k in ("stage1.rebnconvin.conv_s1.weight", "stage1.rebnconv7.bn_s1.running_var",
              "stage1.rebnconv1d.conv_s1.bias", "stage5.rebnconv4.conv_s1.weight",
              "stage6.rebnconv3d.bn_s1.num_batches_tracked",
              "stage5d.rebnconvin.conv_s1.weight", "stage1d.rebnconv6d.conv_s1.weight", "side6.weight", "outconv.bias"):
        assert k in keys, k
    assert not any(k.startswith("stage5.rebnconv5") or ".pool" in k for k in keys)  # RSU-4F: four levels
    d = U2Net(False).state_dict()
    assert d["stage5.rebnconv4.conv_s1.weight"].shape == (256, 256, 3, 3)  # RSU-4F(512, 256, 512)
    assert d["stage1d.rebnconv1d.conv_s1.weight"].shape == (64, 32, 3, 3)  # RSU-7(128, 16, 64)
    assert d["side5.weight"].shape == (1, 512, 3, 3) and d["outconv.weight"].shape == (1, 6, 1, 1)


def test_dilations_and_pooling_follow_the_rsu_design():
    model = U2Net(True)
    rsu7, rsu4f = model.stage1, model.stage5
    assert [getattr(rsu7, f"rebnconv{i}").conv_s1.dilation[0] for i in range(1, 8)] == [1, 1, 1, 1, 1, 1, 2]
    assert [getattr(rsu4f, f"rebnconv{i}").conv_s1.dilation[0] for i in range(1, 5)] == [1, 2, 4, 8]
    assert [getattr(rsu4f, f"rebnconv{i}d").conv_s1.dilation[0] for i in (3, 2, 1)] == [4, 2, 1]
    # odd sizes (ceil-mode pooling, upsampling to the skip's size) come back at the input's size
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 75, 53)).shape == (1, 1, 75, 53)


def test_authors_files_load_strictly_and_other_files_fail_in_one_line(tmp_path):
    ref = U2Net(True)
    torch.save(ref.state_dict(), tmp_path / "u2netp.pth")
    model = load_u2net(tmp_path / "u2netp.pth")
    assert not model.training and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                          ref.state_dict().values()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, tmp_path / "dp.pth")  # DataParallel
    assert isinstance(load_u2net(tmp_path / "dp.pth"), U2Net)
    state = ref.state_dict()
    state.pop("outconv.bias")
    torch.save(state, tmp_path / "cut.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a file torch reads")
    for name, words in (("missing.pth", "not found"), ("cut.pth", "another layout"), ("other.pth", "not U²-Net"),
                        ("junk.pth", "not a PyTorch weights file")):
        with pytest.raises(MissingWeightsError) as e:
            load_u2net(tmp_path / name)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_prepare_and_u2net_alpha_follow_the_test_time_transform():
    """A constant picture becomes (1 - mean) / std per channel (divided by its largest value first); the output is
    min-max normalised and brought back to the picture's size: a rule-made network that returns its input's first
    channel gives back the picture's red channel, rescaled to [0, 1]."""
    x = prepare(torch.full((40, 60, 3), 0.3))
    assert x.shape == (1, 3, 320, 320)
    expect = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(x[0, :, 0, 0], expect, atol=1e-5) and torch.allclose(x.std((2, 3)), torch.zeros(1, 3),
                                                                              atol=1e-5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 160), torch.linspace(0, 1, 240), indexing="ij")
    rgb = torch.stack([0.2 + 0.6 * xx, yy, torch.full_like(xx, 0.5)], -1)  # red grows along x
    alpha = u2net_alpha(lambda t: t[:, :1], rgb)
    assert alpha.shape == (160, 240)
    assert torch.allclose(alpha, xx, atol=0.01)  # the red ramp, min-max normalised: x itself


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A quadruped over the clutter background (GrabCut alone fails there) and its true alpha."""
    root = tmp_path_factory.mktemp("u2")
    rgba = read_image(write_scene("quadruped", root / "s", seed=0, num_frames=2, size=128) / "image.png")
    write_image(root / "photo.png", composite(rgba, make_background("clutter", 128, 128, seed=0)))
    return root / "photo.png", rgba[..., 3]


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def test_auto_cuts_by_u2net_when_its_weights_exist(photo, tmp_path, monkeypatch):
    """With a weights file, `cutout: auto` cuts a real background by U²-Net (here a rule-made stand-in that knows
    the object, so the result is known); without it, by GrabCut; `cutout: u2net` without it stops in one line."""
    path, truth = photo
    weights = tmp_path / "u2netp.pth"
    torch.save(U2Net(True).state_dict(), weights)
    seen = []

    def oracle(model, rgb):  # the loaded network is passed in; answer with the true alpha
        seen.append(type(model).__name__)
        return truth.clone()

    monkeypatch.setattr(scene_io, "u2net_alpha", oracle)
    s = load_scene(path, u2net=weights)
    assert s.u2net_cuts == 1 and s.grabcut_cuts == 0 and seen == ["U2Net"]
    assert (s.cutout[..., 3] - torch.where(truth < 0.1, 0.0, torch.where(truth > 0.9, 1.0, truth))).abs().max() < 1e-6
    g = load_scene(path, u2net=tmp_path / "absent.pth")
    assert g.u2net_cuts == 0 and g.grabcut_cuts == 1 and _iou(g.cutout[..., 3], truth) < 0.6
    assert load_scene(path, u2net=weights, cutout="grabcut").grabcut_cuts == 1
    with pytest.raises(MissingWeightsError) as e:
        load_scene(path, cutout="u2net", u2net=tmp_path / "absent.pth")
    assert "absent.pth" in str(e.value) and "U-2-Net" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="'cutout'"):
        load_config(None, ["cutout=rembg"])


def test_a_run_with_u2net_weights_says_so_and_reruns_when_they_appear(photo, tmp_path, monkeypatch, capsys):
    path, truth = photo
    monkeypatch.setattr(scene_io, "u2net_alpha", lambda model, rgb: truth.clone())
    weights = tmp_path / "w" / "u2net.pth"
    run = tmp_path / "run"
    cfg = load_config(None, _fakes.fake_overrides() + ["stages=[static]", f"u2net={weights}"])
    lines: list[str] = []
    StageRunner(path, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    assert any("GrabCut cut the object out of the picture" in line for line in lines)
    weights.parent.mkdir()
    torch.save(U2Net(True).state_dict(), weights)  # the weights arrive: the cut changes, the stage reruns
    lines.clear()
    StageRunner(path, run, cfg, stages=_fakes.FAKE_STAGES, echo=lines.append, resume=True).run()
    assert any("U²-Net cut the object out of the picture" in line for line in lines)
    assert any("scene differs" in line for line in lines)
    assert _iou(read_image(run / "inputs" / "mask.png")[..., 0], truth) > 0.99
    assert json.loads((run / "manifest.json").read_text())["stages"]["static"]["status"] == "done"
    # cutout=u2net without weights: one line from the CLI, no run folder
    out = tmp_path / "run2"
    assert main(["run", str(path), "--out", str(out), "--config", "smoke", "--set", "cutout=u2net",
                 f"u2net={tmp_path / 'none.pth'}"]) != 0
    err = capsys.readouterr().err
    assert "U²-Net weights not found" in err and "Traceback" not in err and not out.exists()


def test_real_architecture_with_random_weights_cuts_a_picture_through_the_loader(photo, tmp_path):
    """The whole path with the real network (U²-NetP, random weights): an alpha of the picture's size in [0, 1];
    what it covers is meaningless without trained weights, so only the shape and range are asserted."""
    path, _ = photo
    torch.manual_seed(0)
    torch.save(U2Net(True).state_dict(), tmp_path / "u2netp.pth")
    alpha = u2net_alpha(load_u2net(tmp_path / "u2netp.pth"), read_image(path))
    assert alpha.shape == (128, 128) and 0.0 <= float(alpha.min()) and float(alpha.max()) <= 1.0
    assert float(alpha.max() - alpha.min()) > 0.5  # min-max normalised at 320 px, then resized
