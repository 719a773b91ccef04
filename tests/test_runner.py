"""StageRunner: manifest, artifacts hand-off, resume (after a kill, after a failure, after a config change),
bad input leaving nothing behind. Fake stages (tests/_fakes.py) run real Lightning trainings of a few steps."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import _fakes
import pytest

from dynapose4d.core.errors import InputError
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.plan import OUTPUTS_VERSION, plan_stages
from dynapose4d.pipeline.run_folder import read_manifest
from dynapose4d.pipeline.runner import StageRunner


@pytest.fixture
def scene(tmp_path):
    return _fakes.write_tiny_scene(tmp_path / "scene")


@pytest.fixture(autouse=True)
def _reset():
    _fakes.CALLS.clear()
    _fakes.OPTS.clear()
    yield
    _fakes.OPTS.clear()


def _run(scene, run, resume=False, extra=(), stages=None, echo=None):
    cfg = load_config(None, _fakes.fake_overrides() + list(extra) + ([f"stages=[{stages}]"] if stages else []))
    lines: list[str] = []
    m = StageRunner(scene, run, cfg, resume=resume, stages=_fakes.FAKE_STAGES, echo=lines.append).run()
    return m, lines


def test_chain_writes_manifest_config_and_artifacts(scene, tmp_path):
    run = tmp_path / "run"
    m, lines = _run(scene, run)
    assert [s for s, _ in _fakes.CALLS] == ["static", "cape", "dynamic"]
    disk = read_manifest(run)
    assert disk == json.loads((run / "manifest.json").read_text())
    for name in ("static", "cape", "dynamic"):
        rec = disk["stages"][name]
        assert rec["status"] == "done" and rec["ended"] and rec["seconds"] > 0
        for path in rec["artifacts"].values():
            assert (run / path).is_file() and not Path(path).is_absolute()
        assert rec["final_losses"][f"{name}/loss"] < 4.0  # w starts at 2: loss 4, and falls
    assert disk["stages"]["cape"]["upstream"] == {"static": disk["stages"]["static"]["config_hash"]}
    assert disk["stages"]["static"]["metrics"] == {"static/psnr": 30.5}
    assert disk["image_size"] == [32, 32] and disk["num_frames"] == 4
    assert (run / "config.yaml").read_text().count("steps: 3") == 3
    assert (run / "static" / "logs" / "metrics.jsonl").is_file()
    assert list((run / "static" / "media" / "static" / "render").glob("*.png"))  # media also in the run folder
    assert any(line.startswith("[dynamic] done in") and "dynamic/psnr=28.14" in line for line in lines)
    assert any(line.endswith("dynamic/videos/orbit.gif") for line in lines)
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_existing_folder_needs_resume_and_resume_skips_done(scene, tmp_path):
    run = tmp_path / "run"
    _run(scene, run)
    before = (run / "manifest.json").read_text()
    with pytest.raises(InputError, match="--resume"):
        _run(scene, run)
    assert (run / "manifest.json").read_text() == before
    _fakes.CALLS.clear()
    _, lines = _run(scene, run, resume=True)
    assert _fakes.CALLS == []
    assert sum("skipped" in line for line in lines) == 3


def test_config_change_reruns_that_stage_and_later(scene, tmp_path):
    run = tmp_path / "run"
    _run(scene, run)
    _fakes.CALLS.clear()
    _, lines = _run(scene, run, resume=True, extra=["cape.steps=4"])
    assert [s for s, _ in _fakes.CALLS] == ["cape", "dynamic"]
    assert any("cape.steps: 3 -> 4" in line for line in lines)
    _fakes.CALLS.clear()
    _run(scene, run, resume=True, extra=["cape.steps=4", "seed=1"])  # the seed changes every stage
    assert [s for s, _ in _fakes.CALLS] == ["static", "cape", "dynamic"]


def test_subset_then_rest_and_stale_downstream(scene, tmp_path):
    run = tmp_path / "run"
    _run(scene, run, stages="static")
    m = read_manifest(run)
    assert list(m["stages"]) == ["static"]
    _fakes.CALLS.clear()
    _run(scene, run, resume=True)
    assert [s for s, _ in _fakes.CALLS] == ["cape", "dynamic"]
    _run(scene, run, resume=True, stages="static", extra=["static.steps=2"])
    m = read_manifest(run)
    assert m["stages"]["static"]["status"] == "done"
    assert m["stages"]["cape"]["status"] == m["stages"]["dynamic"]["status"] == "stale"


def test_missing_upstream_is_a_one_line_error_and_leaves_nothing(scene, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(InputError, match="stage 'static' has no artifact"):
        _run(scene, run, stages="cape")
    assert not run.exists()  # an input error found by the first stage: no half-made run folder
    _run(scene, run, stages="static")
    with pytest.raises(InputError, match="stage 'cape' has no artifact"):
        _run(scene, run, stages="dynamic", resume=True)
    m = read_manifest(run)  # a folder with finished work is kept, the failure recorded
    assert m["stages"]["static"]["status"] == "done" and m["stages"]["dynamic"]["status"] == "failed"


def test_failure_after_checkpoint_resumes_from_it(scene, tmp_path):
    run = tmp_path / "run"
    _fakes.OPTS["cape"] = _fakes.FakeOpts(fail_at=3)
    with pytest.raises(RuntimeError, match="fake failure"):
        _run(scene, run, extra=["cape.steps=5"])
    m = read_manifest(run)
    assert m["stages"]["cape"]["status"] == "failed" and "fake failure" in m["stages"]["cape"]["error"]
    assert "dynamic" not in m["stages"] or m["stages"]["dynamic"]["status"] == "pending"
    assert (run / "cape" / "checkpoints" / "last.ckpt").is_file()
    _fakes.OPTS.clear()
    _fakes.CALLS.clear()
    _run(scene, run, resume=True, extra=["cape.steps=5"])
    assert _fakes.CALLS == [("cape", True), ("dynamic", False)]
    start = json.loads((run / "cape" / "start_step.json").read_text())["start_step"]
    assert start == 3  # checkpoints every step; it failed in step 3
    assert read_manifest(run)["stages"]["cape"]["attempts"] == 2
    assert not list((run / "cape" / "checkpoints").glob("last-v*.ckpt"))


def test_kill_mid_stage_then_resume(scene, tmp_path):
    """A subprocess is SIGKILLed while the cape stage trains (slow steps); --resume continues from its checkpoint."""
    run = tmp_path / "run"
    proc = _fakes.start_pipeline(scene, run, _fakes.fake_overrides(40), cape="0.1")
    ckpt = run / "cape" / "checkpoints" / "last.ckpt"
    t0 = time.time()
    try:
        while time.time() - t0 < 120 and proc.poll() is None:
            if ckpt.is_file() and ckpt.stat().st_size > 0:
                m = read_manifest(run)
                if m and m["stages"].get("cape", {}).get("status") == "running":
                    time.sleep(0.5)  # a few more steps
                    break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    m = read_manifest(run)
    assert m["stages"]["static"]["status"] == "done" and m["stages"]["cape"]["status"] == "running"
    static_ply = (run / "static" / "gaussians.ply").stat().st_mtime_ns

    _fakes.CALLS.clear()
    _run(scene, run, resume=True, extra=[f"{s}.steps=40" for s in ("static", "cape", "dynamic")])
    assert _fakes.CALLS == [("cape", True), ("dynamic", False)]
    assert (run / "static" / "gaussians.ply").stat().st_mtime_ns == static_ply
    start = json.loads((run / "cape" / "start_step.json").read_text())["start_step"]
    assert 0 < start < 40
    m = read_manifest(run)
    assert all(m["stages"][s]["status"] == "done" for s in ("static", "cape", "dynamic"))


def test_bad_scene_leaves_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "keypoints.json").write_text("{}")
    run = tmp_path / "run"
    with pytest.raises(InputError, match="image"):
        _run(bad, run)
    assert not run.exists()


def test_out_inside_a_file_is_a_one_line_error_before_anything_runs(scene, tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match=r"notes.txt is a file, not a folder"):
        _run(scene, tmp_path / "notes.txt" / "run")
    assert (tmp_path / "notes.txt").read_text() == "keep" and _fakes.CALLS == []


def test_cli_one_line_errors(tmp_path, capsys):
    from dynapose4d.cli import main

    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "missing"), "--out", str(run), "--set", "static.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "static.nope" in err
    assert main(["run", str(tmp_path / "missing"), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing" in err
    assert not run.exists()


def test_smoke_three_real_stages_then_render_eval_resume(tmp_path, capsys):
    """configs/smoke.yaml: static -> cape -> dynamic on a tiny synthetic scene; the run folder of docs/run-folder.md;
    render and eval on it; --resume then has nothing to do."""
    from dynapose4d.cli import main
    from dynapose4d.data.synthetic import write_scene

    scene = write_scene("humanoid", tmp_path / "scene", seed=0, num_frames=4, size=32)
    run = tmp_path / "run"
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    assert main(["run", str(scene), "--out", str(run), "--config", smoke]) == 0
    m = read_manifest(run)
    assert all(m["stages"][s]["status"] == "done" for s in ("static", "cape", "dynamic"))
    for rel in ("config.yaml", "command.txt", "static/gaussians.ply", "cape/driving_keypoints.json",
                "dynamic/deform.ckpt", "dynamic/keypoints.json", "dynamic/videos/orbit.mp4",
                "dynamic/videos/reference.mp4"):
        assert (run / rel).is_file(), rel
    kp = json.loads((run / "dynamic" / "keypoints.json").read_text())
    assert len(kp["world"]) == 4 and len(kp["world"][0]) == len(kp["names"])
    # RUN/export: the splat PLY sequence, the animated skeleton (glb, bvh) and the videos, listed in the manifest
    assert m["export"]["status"] == "done" and kp["skeleton"]
    for rel in ["export.json", "skeleton.glb", "skeleton.bvh", "videos/orbit.mp4", "videos/reference.mp4",
                *(f"splats/frame_{f:03d}.ply" for f in range(4))]:
        assert rel in m["export"]["files"] and (run / "export" / rel).is_file(), rel
    assert main(["render", str(run), "--cameras", str(scene / "gt" / "cameras.json"), "--frames", "0,3",
                 "--out", str(tmp_path / "renders")]) == 0
    assert (tmp_path / "renders" / "az090" / "003.png").is_file()
    assert main(["eval", str(run), "--gt", str(scene / "gt")]) == 0
    res = json.loads((run / "metrics.json").read_text())
    assert res["stage"] == "dynamic" and res["keypoints"] == "available"
    assert res["mean"]["psnr"] > 5 and res["mean"]["kp_error_3d"] is not None
    capsys.readouterr()
    assert main(["run", str(scene), "--out", str(run), "--config", smoke, "--resume"]) == 0
    assert capsys.readouterr().out.count("skipped") == 3


def test_smoke_user_scene_rgb_non_square_mp4_recentred(tmp_path):
    """A scene as a user brings it: RGB on white (no alpha), 48x32, object off-centre, video.mp4, no camera.json.
    All three stages run, and the keypoint files come back in the pixels of the user's files: the anchored
    frame 0 of `reference_2d` lands on the user's keypoints, not on the recentred ones."""
    import imageio.v2 as iio
    import torch

    from dynapose4d.cli import main
    from dynapose4d.core.images import over_background
    from dynapose4d.core.io import read_image, write_video
    from dynapose4d.data.scene import load_scene
    from dynapose4d.data.synthetic import write_scene

    src = write_scene("humanoid", tmp_path / "src", seed=0, num_frames=3, size=32)
    H, W, dx = 32, 48, 2  # the 32 px object pasted 2 px from the left edge of a 48 px wide canvas

    def paste(rgba: torch.Tensor) -> torch.Tensor:  # [32, 32, 4] -> RGB over white [H, W, 3]
        canvas = torch.ones(H, W, 3)
        canvas[:, dx:dx + 32] = over_background(rgba, 1.0)
        return canvas

    user = tmp_path / "user"
    user.mkdir()
    iio.imwrite(user / "image.png", (paste(read_image(src / "image.png")) * 255).round().byte().numpy())
    frames = [paste(read_image(p)) for p in sorted((src / "video").glob("*.png"))]
    write_video(user / "video.mp4", torch.stack(frames), fps=8)
    kp = json.loads((src / "keypoints.json").read_text())
    kp["keypoints"] = [[x + dx, y] for x, y in kp["keypoints"]]
    (user / "keypoints.json").write_text(json.dumps(kp))
    scene = load_scene(user)
    assert scene.recentring is not None and scene.width == W and scene.height == H
    assert (scene.keypoints - torch.tensor(kp["keypoints"])).abs().max() > 2.0  # recentring moved them

    run = tmp_path / "run"
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    assert main(["run", str(user), "--out", str(run), "--config", smoke, "--set", "static.prior=none"]) == 0
    out = json.loads((run / "dynamic" / "keypoints.json").read_text())
    torch.testing.assert_close(torch.tensor(out["reference_2d"][0]), torch.tensor(kp["keypoints"]).float(),
                               atol=0.05, rtol=0)
    assert torch.tensor(json.loads((run / "cape" / "driving_keypoints.json").read_text())["points"]).shape == \
        (3, len(kp["keypoints"]), 2)


def test_a_done_stage_whose_files_are_gone_runs_again(scene, tmp_path):
    """Nothing stale, nothing missing: a finished stage whose recorded file was deleted is not skipped on --resume
    (it and the stages after it run again, and the line says which file is gone)."""
    run = tmp_path / "run"
    m, _ = _run(scene, run)
    rel = next(iter(m["stages"]["cape"]["artifacts"].values()))
    (run / rel).unlink()
    _fakes.CALLS.clear()
    _, lines = _run(scene, run, resume=True)
    assert [s for s, _ in _fakes.CALLS] == ["cape", "dynamic"]
    assert any(f"its file {rel} is gone" in line for line in lines), lines
    assert (run / rel).is_file()


def test_an_older_static_stage_without_the_current_outputs_runs_again(scene, tmp_path):
    """A run folder made before the static stage wrote keypoints_3d.json (outputs version 1: no key in its hashed
    section) reruns the static stage on --resume, and says why."""
    run = tmp_path / "run"
    _run(scene, run)
    manifest = json.loads((run / "manifest.json").read_text())
    rec = manifest["stages"]["static"]
    assert rec["config"]["outputs_version"] == OUTPUTS_VERSION["static"]
    del rec["config"]["outputs_version"]
    rec["config_hash"] = "0123456789abcdef"  # the hash an older version computed without that key
    (run / "manifest.json").write_text(json.dumps(manifest))
    _fakes.CALLS.clear()
    _, lines = _run(scene, run, resume=True)
    assert [s for s, _ in _fakes.CALLS] == ["static", "cape", "dynamic"]
    assert any(f"static.outputs_version: None -> {OUTPUTS_VERSION['static']}" in line for line in lines), lines


def test_the_svd_settings_are_the_cape_stages_input_only_for_a_generated_video(tmp_path):
    """The cape stage runs CAPE on the driving video; when SVD makes it, `dynamic.svd` changes what the cape stage
    reads, so it joins the cape stage's hash; with the scene's own video it does not."""
    def cape_hash(generated: bool, extra: list[str]) -> str:
        cfg = load_config(None, _fakes.fake_overrides() + extra)
        plan = plan_stages(_fakes.FAKE_STAGES, ["static", "cape", "dynamic"], cfg, {"stages": {}}, "fp", tmp_path,
                           False, None, generated)
        return next(rec["config_hash"] for name, _, rec, _ in plan if name == "cape")

    other = ["dynamic.svd.num_inference_steps=7"]
    assert cape_hash(True, []) != cape_hash(True, other)
    assert cape_hash(False, []) == cape_hash(False, other)


def test_a_picture_alone_runs_with_the_puppet_and_its_settings_rerun_cape_and_dynamic(tmp_path, capsys):
    """A picture with neither video nor keypoints (smoke preset, `dynamic.driver=puppet`): the automatic skeleton
    moves it, RUN/inputs/video/ holds the frames and their source, --resume skips every stage, and a change of
    `dynamic.puppet` makes the video again and reruns the cape stage (CAPE ran on the old frames) and the dynamic
    one. With the SVD driver the same picture stops before anything is written, naming the puppet."""
    from dynapose4d.cli import main
    from dynapose4d.data.synthetic import write_scene

    scene = write_scene("quadruped", tmp_path / "scene", seed=1, num_frames=2, size=48)
    picture = tmp_path / "pic" / "animal.png"
    picture.parent.mkdir()
    picture.write_bytes((scene / "image.png").read_bytes())
    run = tmp_path / "run"
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    base = ["run", str(picture), "--out", str(run), "--config", smoke, "--set", "dynamic.driver=puppet",
            "dynamic.puppet.num_frames=4", "export.formats=[]"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "moved on its own skeleton" in out
    assert "cape/puppet_error_px=" in out and "cape/puppet_held_still_px=" in out  # CAPE against the known truth
    source = json.loads((run / "inputs" / "video" / "source.json").read_text())
    assert source["puppet"]["num_frames"] == 4 and len(source["keypoints"]) == 4
    assert len(list((run / "inputs" / "video").glob("*.png"))) == 4
    assert len(json.loads((run / "cape" / "driving_keypoints.json").read_text())["points"]) == 4
    assert read_manifest(run)["stages"]["dynamic"]["artifacts"]["driving_video"] == "inputs/video"
    assert main(base + ["--resume"]) == 0
    assert capsys.readouterr().out.count("skipped") == 3
    assert main(base[:-1] + ["dynamic.puppet.amplitude=10", "export.formats=[]", "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.count("skipped") == 1 and "[cape] starting" in out and "[dynamic] starting" in out
    assert json.loads((run / "inputs" / "video" / "source.json").read_text())["puppet"]["amplitude"] == 10
    other = tmp_path / "run_svd"
    assert main(["run", str(picture), "--out", str(other), "--config", smoke,
                 "--set", "dynamic.driver=svd", "dynamic.svd.model=" + str(tmp_path / "no_svd")]) != 0
    assert "dynamic.driver=puppet" in capsys.readouterr().err and not other.exists()


def test_the_puppet_without_bones_is_a_one_line_error_before_anything_is_written(tmp_path, capsys):
    from dynapose4d.cli import main

    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    kp = tmp_path / "flat.json"
    kp.write_text(json.dumps({"keypoints": [[12, 16], [16, 16], [20, 16]], "skeleton": []}))
    smoke = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
    run = tmp_path / "run"
    assert main(["run", str(scene / "image.png"), "--keypoints", str(kp), "--out", str(run), "--config", smoke,
                 "--set", "dynamic.driver=puppet"]) != 0
    err = capsys.readouterr().err.strip()
    assert "flat.json" in err and "no bones" in err and len(err.splitlines()) == 1 and not run.exists()
    # a keypoint name in dynamic.puppet that the keypoints do not have: one line, before anything is written
    kp.write_text(json.dumps({"keypoints": [[12, 16], [16, 16], [20, 16]], "skeleton": [[0, 1], [1, 2]],
                              "names": ["a", "b", "c"]}))
    assert main(["run", str(scene / "image.png"), "--keypoints", str(kp), "--out", str(run), "--config", smoke,
                 "--set", "dynamic.driver=puppet", "dynamic.puppet.still=[b,tail]"]) != 0
    err = capsys.readouterr().err.strip()
    assert "dynamic.puppet.still" in err and "'tail'" in err and "a, b, c" in err and len(err.splitlines()) == 1
    assert not run.exists()


def test_a_checkpoint_write_cut_short_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """A full disk in the middle of writing last.ckpt: Lightning's own writer leaves a truncated file there (which
    --resume could not read); AtomicCheckpointIO leaves the previous checkpoint as it was, and no temporary file."""
    import errno
    import zipfile

    import torch
    from lightning.fabric.plugins import TorchCheckpointIO
    from lightning.fabric.plugins.io import torch_io

    from dynapose4d.stages.base import AtomicCheckpointIO

    def half_then_full(checkpoint, filepath):  # what a full disk does: some bytes, then ENOSPC
        import io

        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        with open(filepath, "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

    for writer, survives in ((TorchCheckpointIO(), False), (AtomicCheckpointIO(), True)):
        path = tmp_path / type(writer).__name__ / "last.ckpt"
        writer.save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, path)
        with monkeypatch.context() as m:
            m.setattr(torch_io, "_atomic_save", half_then_full)
            with pytest.raises(OSError, match="No space left"):
                writer.save_checkpoint({"step": 2, "w": torch.arange(2000.0)}, path)
        assert zipfile.is_zipfile(path) == survives
        if survives:
            assert torch.load(path, weights_only=True)["step"] == 1
        assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_resume_sets_a_damaged_checkpoint_aside_and_starts_the_stage_again(scene, tmp_path):
    from dynapose4d.stages.base import StageContext, resume_checkpoint

    run = tmp_path / "run"
    last = run / "cape" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # the start of a zip archive, cut short
    ctx = StageContext(scene=None, run_dir=run, resume=True)
    with pytest.warns(UserWarning, match=r"last\.ckpt: damaged .* set aside as last\.ckpt\.damaged, the cape stage "
                                         r"starts again from its first step"):
        assert resume_checkpoint(ctx, "cape") is None
    assert not last.exists() and last.with_name("last.ckpt.damaged").is_file()
    import torch

    torch.save({"step": 3}, last)
    assert resume_checkpoint(ctx, "cape") == str(last)


def test_sigterm_mid_stage_saves_the_step_reached_and_resume_goes_on_from_it(scene, tmp_path):
    """A batch scheduler's SIGTERM while the cape stage trains (periodic checkpoints far apart): the stage is marked
    stopped, last.ckpt holds the step reached, the lock is released, and --resume continues from that step."""
    run = tmp_path / "run"
    overrides = _fakes.fake_overrides(60) + ["trainer.checkpoint_every_n_steps=1000"]
    proc = _fakes.start_pipeline(scene, run, overrides, cape="0.05")
    try:
        t0 = time.time()
        while time.time() - t0 < 120 and proc.poll() is None:
            if (run / "calls.txt").is_file() and "cape" in (run / "calls.txt").read_text():
                time.sleep(1.5)  # some steps into the stage
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.wait(60)
    m = read_manifest(run)
    assert m["stages"]["cape"]["status"] == "failed" and m["stages"]["cape"]["error"] == "stopped (SIGTERM)"
    assert (run / "cape" / "checkpoints" / "last.ckpt").is_file() and not (run / ".lock").exists()

    _fakes.CALLS.clear()
    _run(scene, run, resume=True, extra=["static.steps=60", "cape.steps=60", "dynamic.steps=60",
                                         "trainer.checkpoint_every_n_steps=1000"])
    assert _fakes.CALLS == [("cape", True), ("dynamic", False)]
    start = json.loads((run / "cape" / "start_step.json").read_text())["start_step"]
    assert 0 < start < 60  # from the step SIGTERM stopped at (no periodic checkpoint was written before step 1000)


@pytest.mark.parametrize("stop, status, words", [("sigterm", 143, "stopped (SIGTERM)"),
                                                  ("ctrl-c", 130, "stopped (interrupted)")])
def test_a_stopped_run_is_one_line_with_the_signals_status(tmp_path, monkeypatch, capsys, stop, status, words):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dynapose4d.cli import main

    def stopped(self):
        if stop == "sigterm":
            raise SIGTERMException  # a SystemExit of status 0: a scheduler would have read "done"
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise SystemExit(1) from None  # what Lightning does after a Ctrl-C (the KeyboardInterrupt is its context)

    monkeypatch.setattr(StageRunner, "run", stopped)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "S", "--out", "R", "--config", "smoke"]) == status
    err = capsys.readouterr().err
    assert err == f"dynapose4d: {words}; `--resume` goes on from where R stopped\n"
    with pytest.raises(SystemExit):  # any other exit is left alone
        monkeypatch.setattr(StageRunner, "run", lambda self: sys.exit(3))
        main(["run", "S", "--out", "R", "--config", "smoke"])
