"""Zero-1-to-3 prior: loading from the diffusers folder layout, conditioning, SDS gradients, missing weights."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import _fakes
import pytest
import torch

from dynapose4d.core.errors import MissingWeightsError
from dynapose4d.priors.sds import SDSConfig, cfg_combine, sds_loss, sds_timesteps, sds_weight
from dynapose4d.priors.zero123 import CLIP_MEAN, CLIP_STD, Zero123Prior, resolve_zero123

TINY_SIZE = 32  # images 32 px -> latents 16 x 16 (tiny VAE downsamples by 2)


def write_tiny_zero123(root: Path, seed: int = 0) -> Path:
    """A random-weight Zero-1-to-3 in the diffusers layout that `Zero123Prior.from_pretrained` reads."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    d = 32  # cross-attention / CLIP projection width (768 in the real model)
    UNet2DConditionModel(
        sample_size=16, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=d, attention_head_dim=4, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=TINY_SIZE,
    ).save_pretrained(root / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=d,
    )).save_pretrained(root / "image_encoder")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                  beta_end=0.012, clip_sample=False).save_pretrained(root / "scheduler")
    proj = root / "clip_camera_projection"
    proj.mkdir(parents=True)
    (proj / "config.json").write_text(json.dumps({"embedding_dim": d, "additional_embeddings": 4}))
    lin = torch.nn.Linear(d + 4, d)
    save_file({"proj.weight": lin.weight.detach().contiguous(), "proj.bias": lin.bias.detach().contiguous()},
              str(proj / "diffusion_pytorch_model.safetensors"))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "Zero123Pipeline"}))
    return root


@pytest.fixture(scope="module")
def tiny_zero123(tmp_path_factory) -> Path:
    return write_tiny_zero123(tmp_path_factory.mktemp("zero123"))


def test_sds_helpers() -> None:
    cfg = SDSConfig()
    assert int(sds_timesteps(0.0, 1, 1000, cfg)[0]) == 980  # annealed from 0.98 T ...
    assert int(sds_timesteps(1.0, 1, 1000, cfg)[0]) == 20  # ... to 0.02 T
    assert int(sds_timesteps(0.5, 2, 1000, cfg)[1]) == 500
    t = sds_timesteps(0.3, 64, 1000, SDSConfig(anneal=False), torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980 and t.unique().numel() > 10
    ac = torch.linspace(0.99, 0.01, 1000)
    assert torch.allclose(sds_weight(ac, torch.tensor([0, 999])).flatten(), 1 - ac[[0, 999]])
    c, u = torch.full((1, 4), 2.0), torch.full((1, 4), 1.0)
    assert torch.allclose(cfg_combine(c, u, 5.0), torch.full((1, 4), 6.0))
    # the surrogate's gradient is exactly w (eps_hat - eps)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    eps_hat, eps, w = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.rand(2, 1, 1, 1)
    sds_loss(z, eps_hat, eps, w).backward()
    assert torch.allclose(z.grad, w * (eps_hat - eps), atol=1e-6)


def test_missing_weights_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError, match=r"--set zero123\.path=DIR") as e:
        resolve_zero123("ashawkey/zero123-xl-diffusers")
    assert "static.zero123" not in str(e.value) and "\n" not in str(e.value)  # one setting, one line
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(MissingWeightsError, match="lacks vae/"):
        resolve_zero123(str(tmp_path / "partial"))


def test_tiny_zero123_sds_gives_gradient(tiny_zero123) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    prior = Zero123Prior.from_pretrained(str(tiny_zero123), device="cpu", size=TINY_SIZE)
    ref = torch.rand(1, 3, 40, 40)
    prior.set_reference(ref)
    assert prior.clip_embedding.shape == (1, 1, 32) and prior.ref_latent.shape == (1, 4, 16, 16)
    cam = prior.camera_embedding(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([0.0]))
    assert torch.allclose(cam[0, 0], torch.tensor([-torch.pi / 6, 1.0, 0.0, 0.0]), atol=1e-6)
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    loss = prior.sds(images, torch.tensor([10.0, -20.0]), torch.tensor([45.0, 180.0]), torch.zeros(2),
                     progress=0.5, cfg=SDSConfig())
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert images.grad is not None and images.grad.abs().sum() > 0
    # frozen: no gradient reaches the prior's weights
    assert all(p.grad is None and not p.requires_grad for p in prior.unet.parameters())
    # classifier-free guidance: the conditional branch depends on the camera
    noisy, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    e1 = prior.predict_noise(noisy, t, prior.camera_embedding([0.0], [0.0], [0.0]), 5.0)
    e2 = prior.predict_noise(noisy, t, prior.camera_embedding([0.0], [120.0], [0.0]), 5.0)
    assert not torch.allclose(e1, e2)


def test_static_stage_sds_reaches_the_gaussians(tiny_zero123, tmp_path) -> None:
    """The static stage with prior zero123 (tiny random model, loaded through the real loader): the SDS loss
    gives every Gaussian attribute that shapes the image a gradient, and a short run completes."""
    from dynapose4d.data.scene import load_scene
    from dynapose4d.data.synthetic import write_scene
    from dynapose4d.pipeline.config import TrainerConfig, WandbConfig, load_config
    from dynapose4d.stages.base import StageContext
    from dynapose4d.stages.static import stage as static

    scene = load_scene(write_scene("lamp", tmp_path / "scene", seed=1, num_frames=1, size=48))
    run_cfg = load_config("configs/smoke.yaml", [
        "static.prior=zero123", f"zero123.path={tiny_zero123}", f"zero123.size={TINY_SIZE}",
        "static.novel_sizes=[24]", "static.novel_size_until=[]", "static.novel_views=2", "static.steps=2",
    ])
    cfg = run_cfg.static
    module = static.StaticGaussianModule(cfg, scene, static.initial_gaussians(scene, cfg, 0),
                                         zero123=run_cfg.zero123)
    module.prior = Zero123Prior.from_pretrained(str(tiny_zero123), size=TINY_SIZE)
    module.prior.set_reference(module.target_rgb[:1].permute(0, 3, 1, 2))
    loss, meta = module._sds_step(step=0, progress=0.1)
    loss.backward()
    assert meta["means2d"].shape[0] == 2
    for name in ("means", "scales", "opacities", "sh0"):  # (quats: isotropic at init, rotation has no effect)
        g = module.gaussians.splats[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name

    ctx = StageContext(scene=scene, run_dir=tmp_path / "run", trainer=TrainerConfig(accelerator="cpu",
                       progress_bar=False, log_every_n_steps=1), wandb=WandbConfig(enabled=False),
                       zero123=run_cfg.zero123)
    arts = static.run(ctx, cfg)
    assert (tmp_path / "run" / arts["gaussians"]).is_file()
    assert "static/loss_sds" in (tmp_path / "run" / "static" / "logs" / "metrics.jsonl").read_text()
    ckpt = torch.load(tmp_path / "run" / "static" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("gaussians.splats.") for k in ckpt["state_dict"])  # no prior


# --- Stable-Zero123, framing of non-square references, one setting, freeing ---------------------------------


def test_stable_zero123_camera_embedding_for_known_cameras(tiny_zero123) -> None:
    """Stable-Zero123 is conditioned on [Δpolar, sin Δazimuth, cos Δazimuth, polar angle of the REFERENCE view]
    (DreamGaussian: deg2rad(90 + its default elevation, which grows downwards); threestudio: deg2rad(90 −
    cond_elevation)); Zero-1-to-3 (XL) on [..., Δradius]. Before `kind` existed every model got the second
    embedding, so a Stable-Zero123 folder loaded and was silently conditioned on Δradius = 0."""
    from dynapose4d.priors.zero123 import Zero123Config

    assert Zero123Config(model="ashawkey/stable-zero123-diffusers").resolved_kind() == "stable_zero123"
    assert Zero123Config(path="/models/stable_zero123", kind="auto").resolved_kind() == "stable_zero123"
    assert Zero123Config().resolved_kind() == "zero123"  # ashawkey/zero123-xl-diffusers
    assert Zero123Config(path=str(tiny_zero123), kind="stable_zero123").resolved_kind() == "stable_zero123"
    from dynapose4d.core.errors import ConfigError

    with pytest.raises(ConfigError, match="zero123.kind"):
        Zero123Config(kind="zero1234").resolved_kind()

    stable = Zero123Prior.from_config(Zero123Config(path=str(tiny_zero123), kind="stable_zero123", size=TINY_SIZE))
    plain = Zero123Prior.from_config(Zero123Config(path=str(tiny_zero123), kind="zero123", size=TINY_SIZE))
    assert stable.kind == "stable_zero123" and plain.kind == "zero123"
    ref = torch.rand(1, 3, 32, 32)
    stable.set_reference(ref, elevation=20.0)  # reference seen from 20° above: polar angle 70°
    plain.set_reference(ref, elevation=20.0)
    d_elev, d_azim, d_rad = torch.tensor([10.0, -30.0]), torch.tensor([90.0, 180.0]), torch.tensor([0.3, 0.0])
    r = math.radians
    want_stable = torch.tensor([[-r(10), 1.0, 0.0, r(70)], [r(30), 0.0, -1.0, r(70)]])
    want_plain = torch.tensor([[-r(10), 1.0, 0.0, 0.3], [r(30), 0.0, -1.0, 0.0]])
    torch.testing.assert_close(stable.camera_embedding(d_elev, d_azim, d_rad)[:, 0], want_stable, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain.camera_embedding(d_elev, d_azim, d_rad)[:, 0], want_plain, atol=1e-6, rtol=0)
    stable.set_reference(ref, elevation=-15.0)  # from below: polar angle 105°
    assert stable.camera_embedding([0.0], [0.0], [0.0])[0, 0, 3].item() == pytest.approx(r(105), abs=1e-6)


def _dark_blob(x: torch.Tensor) -> tuple[float, float, float, float]:
    """(centre row, centre col, height, width) of the dark pixels (< 0.5) of a grey image [h, w], in pixels."""
    ys, xs = torch.nonzero(x < 0.5, as_tuple=True)
    return (ys.float().mean().item() + 0.5, xs.float().mean().item() + 0.5,
            (ys.max() - ys.min() + 1).item(), (xs.max() - xs.min() + 1).item())


def test_non_square_reference_is_padded_with_white_not_squeezed(tiny_zero123) -> None:
    """A 30 x 60 reference with a black disc (radius 10 px, centre (15, 20)): the VAE and CLIP inputs are the
    image padded with white to 60 x 60 (15 rows above) and resized, so the disc stays round and lands where the
    padding puts it. The inputs are caught at the VAE and the CLIP encoder, so the test does not depend on how
    set_reference builds them: before the fix the image was resized to a square, a 2 : 1 ellipse at (16, 10.7)."""
    prior = Zero123Prior.from_pretrained(str(tiny_zero123), size=TINY_SIZE)
    yy, xx = torch.meshgrid(torch.arange(30) + 0.5, torch.arange(60) + 0.5, indexing="ij")
    img = torch.ones(1, 3, 30, 60)
    img[:, :, ((yy - 15) ** 2 + (xx - 20) ** 2) < 10 ** 2] = 0.0
    seen: dict[str, torch.Tensor] = {}
    vae_encode, clip = prior.vae.encode, prior.image_encoder.forward
    prior.vae.encode = lambda x: (seen.setdefault("vae", x.detach().clone()), vae_encode(x))[1]
    prior.image_encoder.forward = lambda x, **k: (seen.setdefault("clip", x.detach().clone()), clip(x, **k))[1]
    prior.set_reference(img)
    vae = (seen["vae"][0].mean(0) + 1) / 2  # [32, 32] in [0, 1]
    s = TINY_SIZE / 60.0
    cy, cx, h, w = _dark_blob(vae)
    assert cy == pytest.approx((15 + 15) * s, abs=0.5) and cx == pytest.approx(20 * s, abs=0.5)
    assert abs(h - w) <= 1 and h == pytest.approx(20 * s, abs=1.5)
    assert vae[:6].min() > 0.95 and vae[-6:].min() > 0.95  # the padding is white
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    clip_img = (seen["clip"][0] * std + mean).mean(0)  # [32, 32] back in [0, 1]
    cy, cx, h, w = _dark_blob(clip_img)
    assert abs(h - w) <= 1 and cy == pytest.approx(16, abs=0.5)
    with pytest.raises(ValueError, match="square"):
        prior.encode(torch.rand(1, 3, 24, 32))


def test_square_fov_sees_the_padded_reference() -> None:
    """A point projects to the same place in the padded W x H reference (shifted by the padding) and in a square
    render of side max(W, H) with `square_fov_y` — what the SDS renders of both stages use."""
    from dynapose4d.core.cameras import Camera, project
    from dynapose4d.priors.framing import pad_to_aspect, padded_box, square_fov_y

    pts = torch.tensor([[0.3, -0.2, 0.1], [-0.4, 0.35, -0.2], [0.0, 0.0, 0.0]])
    for W, H in ((96, 48), (48, 96), (64, 64)):
        cam = Camera("ref", 15.0, 30.0, 2.5, 40.0)
        uv, _ = project(pts, cam.viewmat(), cam.K(W, H))
        box = padded_box(H, W)
        S = max(W, H)
        assert (box.padded_h, box.padded_w) == (S, S)
        sq = Camera("sq", 15.0, 30.0, 2.5, square_fov_y(40.0, W, H))
        uv_sq, _ = project(pts, sq.viewmat(), sq.K(S, S))
        torch.testing.assert_close(uv_sq, uv + torch.tensor([box.left, box.top], dtype=uv.dtype), atol=1e-4,
                                   rtol=0)
    x, box = pad_to_aspect(torch.zeros(1, 3, 5, 8), 1.0)
    assert x.shape == (1, 3, 8, 8) and (box.top, box.left) == (1, 0)
    assert x[0, :, 0].min() == 1 and x[0, :, 6:].min() == 1  # white rows above and below


def test_one_zero123_setting_reaches_both_stages(tmp_path, tiny_zero123, monkeypatch) -> None:
    """`zero123:` is one top-level section: the old per-stage keys are gone (a clear config error), both stages'
    loaders read the one setting, it is hashed with both stages (a change reruns them) and a missing model names
    `zero123.path`."""
    from dynapose4d.core.errors import ConfigError
    from dynapose4d.pipeline.config import load_config
    from dynapose4d.pipeline.runner import StageRunner
    from dynapose4d.stages.dynamic import stage as dynamic

    for old in ("static.zero123_path=x", "dynamic.zero123_path=x", "dynamic.zero123_model=x", "static.zero123_size=1"):
        with pytest.raises(ConfigError, match=old.split("=")[0].split(".")[1]):
            load_config("configs/cpu.yaml", [old])
    cfg = load_config("configs/default.yaml", [f"zero123.path={tiny_zero123}", f"zero123.size={TINY_SIZE}"])
    assert cfg.zero123.source == str(tiny_zero123) and cfg.zero123.resolved_kind() == "zero123"
    video = torch.rand(2, 16, 16, 4)
    fn = dynamic.Zero123PerFrame(cfg.dynamic, video, cfg.zero123, elevation=10.0)
    fn(torch.rand(1, 3, 16, 16), torch.tensor([1]), torch.tensor([5.0]), torch.tensor([40.0]), 0.5)
    assert fn.prior.size == TINY_SIZE and fn.prior.ref_elevation == 10.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = dynamic.Zero123PerFrame(cfg.dynamic, video, load_config("configs/default.yaml",
                                                                      [f"zero123.path={tmp_path}/none"]).zero123)
    with pytest.raises(MissingWeightsError, match=r"zero123\.path"):  # the loader, on first use
        missing(torch.rand(1, 3, 16, 16), torch.tensor([1]), torch.tensor([5.0]), torch.tensor([40.0]), 0.5)

    runner = StageRunner(tmp_path / "scene", tmp_path / "run", cfg)
    plan = runner._plan({"stages": {}}, "fp")
    assert plan[0][2]["config"]["zero123"]["size"] == TINY_SIZE  # recorded with the static stage's config
    runner.cfg = load_config("configs/default.yaml", [f"zero123.path={tiny_zero123}", "zero123.size=512"])
    changed = {n: r["config_hash"] for n, _, r, _ in runner._plan({"stages": {}}, "fp")}
    assert changed["static"] != plan[0][2]["config_hash"] and changed["dynamic"] != plan[2][2]["config_hash"]


def test_priors_are_freed_when_the_static_stage_ends(tiny_zero123, tmp_path, monkeypatch) -> None:
    """The Zero-1-to-3 prior is gone (a weakref to it is dead) before the static stage renders its outputs and
    after it returns. Before the fix the module kept it (`module.prior`) until the stage's objects were
    collected: Lightning's trainer and module hold each other in reference cycles, so not at return."""

    from dynapose4d.data.scene import load_scene
    from dynapose4d.data.synthetic import write_scene
    from dynapose4d.pipeline.config import TrainerConfig, WandbConfig, load_config
    from dynapose4d.stages.base import StageContext
    from dynapose4d.stages.static import stage as static

    refs = _fakes.spy_zero123_loads(monkeypatch)
    alive_at_outputs: list[bool] = []
    write_outputs = static.write_outputs

    def check(*a, **k):
        alive_at_outputs.append(refs[0]() is not None)
        return write_outputs(*a, **k)

    monkeypatch.setattr(static, "write_outputs", check)
    scene = load_scene(write_scene("lamp", tmp_path / "scene", seed=1, num_frames=1, size=32))
    run_cfg = load_config("configs/smoke.yaml", [
        "static.prior=zero123", f"zero123.path={tiny_zero123}", f"zero123.size={TINY_SIZE}",
        "static.novel_sizes=[16]", "static.novel_size_until=[]", "static.steps=2", "static.orbit_frames=2"])
    ctx = StageContext(scene=scene, run_dir=tmp_path / "run", trainer=TrainerConfig(accelerator="cpu",
                       progress_bar=False), wandb=WandbConfig(enabled=False), zero123=run_cfg.zero123)
    static.run(ctx, run_cfg.static)
    assert len(refs) == 1 and alive_at_outputs == [False]
    assert refs[0]() is None
    summary = json.loads((tmp_path / "run" / "static" / "summary.json").read_text())
    assert summary["static/prior"] == "zero123"
    assert not any("cuda" in k for k in summary)  # the CUDA peak is recorded on CUDA only
