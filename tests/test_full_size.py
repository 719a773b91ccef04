"""The paper's models at their real sizes through configs/default.yaml's code path (`make test-full-size`).

Zero-1-to-3 XL and Stable Video Diffusion img2vid are built at full size from their published configurations
with random weights (tests/full_size_models.py), saved in the diffusers layout and cached; PoseAnything 1-shot
SwinV2-S (default.yaml's CAPE; SwinV2-T when it names a Tiny file) is written as the official mmcv checkpoint
file. A synthetic scene with only an image and keypoints (no video, views/ or ground truth) then runs through
`dynapose4d run ... --config configs/default.yaml` stage by stage on the CPU, with overrides only for step counts,
model files, the accelerator and SVD's generation size:
  static   2 steps, Zero-1-to-3 SDS at 256 px (static.prior=auto picks it: no views/, weights present);
  svd      the driving video: one denoising step, 14 frames at 64 x 64 (the same `driving_video` call the cape
           stage makes; cape and dynamic then reuse RUN/inputs/video/, whose source hash must not change);
  cape     PoseAnything, frozen, on the 14 frames (default.yaml's cape.arch; a graph CAPE gets 2 steps);
  dynamic  2 steps with Zero-1-to-3 SDS on every driving frame and the KML loss on the cape stage's keypoints.
Each runs in its own process; its wall time and peak resident memory (its VmHWM, polled) are printed
(`-s`) and written to RUN/full_size_report.json. This catches shape, dtype, layout and memory errors that the
tiny random models of the unit tests cannot.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import full_size_models as fsm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "configs" / "default.yaml"
SVD_SIZE = 64  # SVD's generation size here (the smallest multiple of 64: latents 8 x 8)


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _peak_kib(pid: int) -> int:
    """The process's own peak resident memory so far (VmHWM, KiB), 0 once it has exited."""
    try:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0
    return int(m.group(1)) if m else 0


def measure(cmd: list[str], log: Path, timeout: float = 3600.0) -> dict[str, float]:
    """Run `cmd` (output to `log`); its wall seconds and peak RSS in GiB. Fails the test with the log's tail.

    The peak is the child's VmHWM, read every 0.2 s while it runs (wait4's ru_maxrss would also count this
    pytest process's size at the fork: Linux keeps ru_maxrss across exec)."""
    t0 = time.monotonic()
    peak = 0
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=_env())
        while True:
            peak = max(peak, _peak_kib(proc.pid))
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}, {wall:.0f} s); {log}:\n{tail}")
    return {"wall_s": round(wall, 1), "peak_rss_gib": round((peak or ru.ru_maxrss) / 2**20, 2)}  # KiB -> GiB


def default_poseanything() -> str | None:
    """The PoseAnything variant ("small" / "tiny") configs/default.yaml's cape stage runs, None when it runs
    the graph model (then fine-tuned for 2 steps here)."""
    from dynapose4d.pipeline.config import load_config

    cape = load_config(DEFAULT).cape
    if getattr(cape, "arch", "graph") != "poseanything":
        return None
    return "tiny" if "tiny" in Path(cape.checkpoint).name.lower() else "small"


def overrides(zero123: Path, svd: Path, poseanything: Path | None) -> list[str]:
    """default.yaml's settings changed for this check: step counts, model files, the CPU, SVD's size."""
    out = [
        "trainer.accelerator=cpu",
        f"zero123.path={zero123}",
        "static.steps=2",
        "dynamic.steps=2",
        f"dynamic.svd.model={svd}", "dynamic.svd.num_inference_steps=1",
        f"dynamic.svd.width={SVD_SIZE}", f"dynamic.svd.height={SVD_SIZE}",
    ]
    out += [f"cape.checkpoint={poseanything}"] if poseanything is not None else ["cape.steps=2"]
    return out


SVD_SCRIPT = """
import sys
from dynapose4d.pipeline.config import load_config
from dynapose4d.data.scene import load_scene
from dynapose4d.priors.svd import driving_video
scene, run, cfg_path, *ovr = sys.argv[1:]
cfg = load_config(cfg_path, ovr)
frames = driving_video(load_scene(scene), run, cfg.dynamic.svd, seed=cfg.seed)
print("frames", tuple(frames.shape), "finite", bool(frames.isfinite().all()))
"""


def test_configs_have_the_published_parameter_counts() -> None:
    """The configs build the published architectures: parameter counts of the released checkpoints (SD 1.x
    UNet 859,520,964 plus 4 x 320 x 3 x 3 weights for Zero-1-to-3's 4 extra input channels; SD VAE 83,653,863;
    CLIP ViT-L/14 vision + projection 303,966,208; SVD UNet 1,524,623,082; its temporal-decoder VAE 97,742,847;
    OpenCLIP ViT-H/14 vision + projection 632,076,800). Built on the meta device: no memory, no weights."""
    import torch
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLTemporalDecoder,
        UNet2DConditionModel,
        UNetSpatioTemporalConditionModel,
    )

    def count(make) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in make().parameters())

    z, s = fsm.ZERO123_XL, fsm.SVD_IMG2VID
    assert count(lambda: UNet2DConditionModel(**z["unet"])) == 859_520_964 + 4 * 320 * 3 * 3
    assert count(lambda: AutoencoderKL(**z["vae"])) == 83_653_863
    assert count(lambda: fsm._clip(z["image_encoder"])) == 303_966_208
    assert count(lambda: UNetSpatioTemporalConditionModel(**s["unet"])) == 1_524_623_082
    assert count(lambda: AutoencoderKLTemporalDecoder(**s["vae"])) == 97_742_847
    assert count(lambda: fsm._clip(s["image_encoder"])) == 632_076_800
    # the camera projection is the 772 -> 768 Linear the loader expects
    cc = z["clip_camera_projection"]
    assert cc["embedding_dim"] + cc["additional_embeddings"] == 772 and cc["embedding_dim"] == 768
    # the cache key changes with any config number
    changed = json.loads(json.dumps(z))
    changed["unet"]["attention_head_dim"] = 16
    assert fsm.configs_hash(changed) != fsm.configs_hash(z)


def _print_table(stats: dict[str, dict[str, float | str]]) -> None:
    print("\nfull-size models, configs/default.yaml on the CPU (wall time, peak RSS of the step's process):")
    for k, v in stats.items():
        print(f"  {k:<24} {v['wall_s']:>8.1f} s  {v['peak_rss_gib']:>6.2f} GiB  {v.get('note', '')}")


@pytest.mark.slow
def test_default_config_runs_at_full_size(tmp_path: Path) -> None:
    import torch

    from dynapose4d.gaussians.ply import load_ply

    py = sys.executable
    stats: dict[str, dict[str, float | str]] = {}
    folders = {}
    pa_variant = default_poseanything()
    models = ["zero123-xl", "svd-img2vid"] + ([f"poseanything-{pa_variant}"] if pa_variant else [])
    for name in models:  # one per process: each model's memory goes back before the next
        cached = (fsm.folder_of(name) / ".complete").is_file()
        m = measure([py, str(ROOT / "tests" / "full_size_models.py"), name], tmp_path / f"build_{name}.log")
        stats[f"build {name}"] = {**m, "note": "cached" if cached else "built"}
        folders[name] = fsm.folder_of(name)
        assert (folders[name] / ".complete").is_file()

    scene, run = tmp_path / "scene", tmp_path / "run"
    measure([py, "-m", "dynapose4d", "make-scene", "humanoid", "--out", str(scene), "--seed", "0", "--size", "256"],
            tmp_path / "make_scene.log")
    # a user's scene: image and keypoints only; no driving video (SVD makes it), no views/ (static.prior=auto
    # then picks Zero-1-to-3), no ground truth
    for extra in ("video", "video.mp4", "views", "gt"):
        p = scene / extra
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    pa = folders[models[-1]] / fsm.POSEANYTHING_FILES[pa_variant] if pa_variant else None
    ovr = overrides(folders["zero123-xl"], folders["svd-img2vid"], pa)
    run_cmd = [py, "-m", "dynapose4d", "run", str(scene), "--out", str(run), "--config", str(DEFAULT)]
    sets = [a for o in ovr for a in ("--set", o)]
    stats["static"] = measure(run_cmd + sets + ["--stages", "static"], tmp_path / "static.log")
    stats["svd"] = measure([py, "-c", SVD_SCRIPT, str(scene), str(run), str(DEFAULT), *ovr], tmp_path / "svd.log")
    source = (run / "inputs" / "video" / "source.json").read_text()
    for stage in ("cape", "dynamic"):
        stats[stage] = measure(run_cmd + sets + ["--stages", stage, "--resume"], tmp_path / f"{stage}.log")
    stats["cape"]["note"] = f"PoseAnything {pa_variant}, frozen" if pa_variant else "graph CAPE, 2 steps"
    stats["dynamic"]["note"] = "SDS on 14 frames + KML through " + ("PoseAnything" if pa_variant else "CAPE")

    report = {"overrides": ovr, "stages": stats}
    (run / "full_size_report.json").write_text(json.dumps(report, indent=2))
    _print_table(stats)

    manifest = json.loads((run / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["stages"].items()} == {s: "done" for s in ("static", "cape",
                                                                                            "dynamic")}
    # the static stage distilled Zero-1-to-3 (auto prior) and its Gaussians stayed finite
    assert "prior: zero123" in (tmp_path / "static.log").read_text()
    g = load_ply(run / "static" / "gaussians.ply")
    assert all(bool(torch.isfinite(v).all()) for v in g.state_dict().values())
    # SVD img2vid's 14 frames at the scene's size, generated once and reused by cape and dynamic (same hash)
    assert "frames (14, 256, 256, 4) finite True" in (tmp_path / "svd.log").read_text()
    assert len(sorted((run / "inputs" / "video").glob("[0-9][0-9][0-9].png"))) == 14
    assert (run / "inputs" / "video" / "source.json").read_text() == source
    kp = json.loads((run / "cape" / "driving_keypoints.json").read_text())
    pts = torch.tensor(kp["points"])
    assert pts.shape[0] == 14 and bool(torch.isfinite(pts).all())
    # the dynamic stage trained with a finite SDS term and left finite Gaussians in every exported frame
    sds_logged = re.findall(r"dynamic/loss_sds=([-+0-9.eE]+|nan|inf)", (tmp_path / "dynamic.log").read_text())
    assert sds_logged and all(math.isfinite(float(v)) for v in sds_logged)
    splats = sorted((run / "export" / "splats").glob("frame_*.ply"))
    assert len(splats) == 14
    for f in (splats[0], splats[-1]):
        assert all(bool(torch.isfinite(v).all()) for v in load_ply(f).state_dict().values()), f


def test_dynamic_sds_gives_the_stacked_losses_value_and_gradient(tmp_path: Path) -> None:
    """The dynamic stage's per-frame SDS (`Zero123PerFrame`) with `sds_chunk=1` takes each frame's image gradient
    at once, so one frame's VAE-encoder graph is alive at a time (at full size, stacking the 14 frames' losses
    peaked at 19.4 GB). Reference: the stacked form, mean of the per-frame `prior.sds` losses and one backward,
    with the same noise. (Chunks of several frames against one at a time: tests/test_dynamic.py.)"""
    import torch
    from test_zero123 import TINY_SIZE, write_tiny_zero123

    from dynapose4d.priors.zero123 import Zero123Config, Zero123Prior
    from dynapose4d.stages.dynamic.config import DynamicConfig
    from dynapose4d.stages.dynamic.stage import Zero123PerFrame

    z = Zero123Config(path=str(write_tiny_zero123(tmp_path / "z123")), kind="zero123", size=TINY_SIZE)
    cfg = DynamicConfig(sds_chunk=1)
    video = torch.rand(3, TINY_SIZE, TINY_SIZE, 4)  # [T, H, W, 4]
    frames = torch.tensor([2, 0, 2])  # a frame twice: its conditioning is cached
    d_elev, d_azim = torch.tensor([10.0, -20.0, 5.0]), torch.tensor([30.0, 90.0, -60.0])
    images = torch.rand(3, 3, TINY_SIZE, TINY_SIZE, requires_grad=True)

    sds = Zero123PerFrame(cfg, video, z)
    sds.prior = Zero123Prior.from_config(z)  # loaded before seeding (loading draws random numbers)
    torch.manual_seed(7)
    loss = sds(images * 1.0, frames, d_elev, d_azim, 0.3)
    loss.backward()
    got = images.grad.clone()

    ref_prior = Zero123Prior.from_config(z)  # the same weights, conditioned frame by frame
    images.grad = None
    torch.manual_seed(7)
    losses = []
    for b, f in enumerate(frames.tolist()):
        fr = video[f]
        ref_prior.set_reference((fr[..., :3] * fr[..., 3:] + (1 - fr[..., 3:])).permute(2, 0, 1)[None])
        losses.append(ref_prior.sds(images[b:b + 1] * 1.0, d_elev[b:b + 1], d_azim[b:b + 1], torch.zeros(1), 0.3,
                                    cfg.sds))
    ref = torch.stack(losses).mean()
    ref.backward()
    assert torch.allclose(loss.detach(), ref.detach(), rtol=1e-5, atol=1e-7)
    err = (got - images.grad).abs().max() / images.grad.abs().max()
    assert images.grad.abs().max() > 0 and err < 1e-4, f"gradient differs: max error {float(err):.2e} of its max"
