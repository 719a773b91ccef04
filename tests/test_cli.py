"""CLI: --help of every command, `render` after static alone and after dynamic, `eval` (gt and consistent4d
protocols) with numbers checked against cases whose answer is known."""

from __future__ import annotations

import json

import _fakes
import pytest
import torch

from dynapose4d.cli import build_parser, main
from dynapose4d.core.cameras import CONSISTENT4D_CAMERAS, save_cameras
from dynapose4d.core.io import read_image
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.run_folder import read_manifest, write_manifest
from dynapose4d.pipeline.runner import StageRunner


@pytest.mark.parametrize("cmd", ["run", "fit-static", "fit-dynamic", "train-cape", "render", "eval", "make-scene",
                                 "export", "experiment"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: dynapose4d" in capsys.readouterr().out


def test_set_takes_several_overrides():
    args = build_parser().parse_args(["run", "S", "--out", "R", "--set", "a=1", "b=2", "--set", "c=3"])
    assert args.overrides == ["a=1", "b=2", "c=3"]


@pytest.fixture(scope="module")
def static_run(tmp_path_factory):
    """A synthetic 32 px scene (4 frames, with gt/) and a run of the fake static stage on it."""
    from dynapose4d.data.synthetic import write_scene

    root = tmp_path_factory.mktemp("cli")
    scene = write_scene("humanoid", root / "scene", seed=0, num_frames=4, size=32)
    run = root / "run"
    cfg = load_config(None, _fakes.fake_overrides(2) + ["stages=[static]"])
    StageRunner(scene, run, cfg, stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    return scene, run


def test_render_after_static_every_frame_is_the_static_model(static_run, tmp_path, capsys):
    scene, run = static_run
    out = tmp_path / "r"
    assert main(["render", str(run), "--cameras", str(scene / "gt" / "cameras.json"), "--frames", "all",
                 "--out", str(out)]) == 0
    names = [c["name"] for c in json.loads((scene / "gt" / "cameras.json").read_text())]
    for n in names:
        files = sorted((out / n).glob("*.png"))
        assert [f.name for f in files] == ["000.png", "001.png", "002.png", "003.png"]
        imgs = [read_image(f) for f in files]
        assert imgs[0].shape == (32, 32, 4)
        assert 0.02 < imgs[0][..., 3].mean() < 0.98  # an object, not an empty or full frame
        assert all(torch.equal(i, imgs[0]) for i in imgs[1:])
    assert main(["render", str(run), "--cameras", str(scene / "gt" / "cameras.json"), "--frames", "0,9",
                 "--out", str(out)]) == 2
    assert "--frames" in capsys.readouterr().err


def test_eval_consistent4d_against_own_renders(static_run, tmp_path, capsys):
    """gt = the run's own renders from the four Consistent4D cameras: PSNR at the floor-limited maximum,
    SSIM 1; the same gt with the object shifted scores far lower; missing cameras are a one-line error."""
    scene, run = static_run
    gt = tmp_path / "gt"
    save_cameras(CONSISTENT4D_CAMERAS, tmp_path / "c4d.json")
    assert main(["render", str(run), "--cameras", str(tmp_path / "c4d.json"), "--frames", "0,1", "--out", str(gt)]) == 0
    save_cameras(CONSISTENT4D_CAMERAS, gt / "cameras.json")
    assert main(["eval", str(run), "--gt", str(gt), "--protocol", "consistent4d"]) == 0
    out = capsys.readouterr().out
    res = json.loads((run / "metrics_consistent4d.json").read_text())
    assert res["cameras"] == [c.name for c in CONSISTENT4D_CAMERAS] and res["frames"] == 2
    assert res["mean"]["psnr"] > 45 and res["mean"]["ssim"] > 0.99
    assert res["lpips"].startswith("unavailable") or res["mean"]["lpips"] < 0.01
    assert "| PSNR (dB) ↑, all views |" in out and (run / "metrics_consistent4d.md").is_file()
    assert "Keypoint metrics: unavailable" in out

    for c in CONSISTENT4D_CAMERAS:  # shift the gt by 3 pixels
        for f in (gt / c.name).glob("*.png"):
            from dynapose4d.core.io import write_image
            write_image(f, torch.roll(read_image(f), 3, dims=1))
    assert main(["eval", str(run), "--gt", str(gt), "--protocol", "consistent4d"]) == 0
    capsys.readouterr()
    res2 = json.loads((run / "metrics_consistent4d.json").read_text())
    assert res2["mean"]["psnr"] < res["mean"]["psnr"] - 20

    save_cameras(CONSISTENT4D_CAMERAS[:2], gt / "cameras.json")
    assert main(["eval", str(run), "--gt", str(gt), "--protocol", "consistent4d"]) == 2
    assert "azimuth 105" in capsys.readouterr().err


def test_render_and_eval_after_dynamic(static_run, tmp_path, capsys):
    """A dynamic result built by hand: identity deformation and tracks equal to the gt 3D keypoints.
    PCK = 1 and 3D error = 0 while the no-motion baseline is worse; jitter = the gt's jitter."""
    import shutil

    from dynapose4d.core.io import write_json
    from dynapose4d.deform import build_deformation, save_dynamic
    from dynapose4d.gaussians import load_ply

    scene, run0 = static_run
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    canonical = load_ply(run / "static" / "gaussians.ply")
    save_dynamic(run / "dynamic" / "deform.ckpt", canonical, build_deformation("hexplane", canonical.means, 4))
    kp3 = json.loads((scene / "gt" / "keypoints3d.json").read_text())["frames"]
    write_json(run / "dynamic" / "keypoints.json", {"names": [], "world": kp3, "reference_2d": [], "confidence": []})
    m = read_manifest(run)
    m["stages"]["dynamic"] = {"status": "done", "artifacts": {"deform": "dynamic/deform.ckpt",
                                                              "keypoints": "dynamic/keypoints.json"}}
    write_manifest(run, m)

    out = tmp_path / "r"
    assert main(["render", str(run), "--cameras", str(scene / "gt" / "cameras.json"), "--frames", "1,3",
                 "--out", str(out)]) == 0
    assert "dynamic stage" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "az090").iterdir()) == ["001.png", "003.png"]

    assert main(["eval", str(run), "--gt", str(scene / "gt")]) == 0
    table = capsys.readouterr().out
    res = json.loads((run / "metrics.json").read_text())
    assert res["stage"] == "dynamic" and res["keypoints"] == "available"
    assert res["mean"]["pck"] == 1.0 and res["mean"]["pck_no_motion"] < 1.0
    assert res["mean"]["kp_error_3d"] == 0.0 and res["mean"]["kp_error_3d_no_motion"] > 0.01
    assert res["mean"]["jitter"] == pytest.approx(res["mean"]["jitter_gt"])
    assert set(res["per_view"]) == {"az000", "az090", "az180", "az270", "el30_az045"}
    assert res["per_view"]["az000"]["novel"] == 0.0 and res["per_view"]["az090"]["novel"] == 1.0
    assert res["mean"]["psnr_no_motion"] > res["mean"]["psnr"]  # a random blob is no match for the gt object
    assert "| 3D keypoint error ↓ | 0 |" in table and (run / "metrics.md").read_text() in table
