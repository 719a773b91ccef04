"""Zero-1-to-3 prior: loading from the diffusers folder layout, conditioning, SDS gradients, missing weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dynapose4d.errors import MissingWeightsError
from dynapose4d.priors.sds import SDSConfig, cfg_combine, sds_loss, sds_timesteps, sds_weight
from dynapose4d.priors.zero123 import Zero123Prior, resolve_zero123

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
    with pytest.raises(MissingWeightsError, match="static.zero123_path"):
        resolve_zero123("ashawkey/zero123-xl-diffusers")
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
    from dynapose4d.config import TrainerConfig, WandbConfig, load_config
    from dynapose4d.data.scene import load_scene
    from dynapose4d.data.synthetic import write_scene
    from dynapose4d.stages import static
    from dynapose4d.stages.base import StageContext

    scene = load_scene(write_scene("lamp", tmp_path / "scene", seed=1, num_frames=1, size=48))
    cfg = load_config("configs/smoke.yaml", [
        "static.prior=zero123", f"static.zero123_path={tiny_zero123}", f"static.zero123_size={TINY_SIZE}",
        "static.novel_sizes=[24]", "static.novel_size_until=[]", "static.novel_views=2", "static.steps=2",
    ]).static
    module = static.StaticGaussianModule(cfg, scene, static.initial_gaussians(scene, cfg, 0))
    module.prior = Zero123Prior.from_pretrained(str(tiny_zero123), size=TINY_SIZE)
    module.prior.set_reference(module.target_rgb[:1].permute(0, 3, 1, 2))
    loss, meta = module._sds_step(step=0, progress=0.1)
    loss.backward()
    assert meta["means2d"].shape[0] == 2
    for name in ("means", "scales", "opacities", "sh0"):  # (quats: isotropic at init, rotation has no effect)
        g = module.gaussians.splats[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name

    ctx = StageContext(scene=scene, run_dir=tmp_path / "run", trainer=TrainerConfig(accelerator="cpu",
                       progress_bar=False, log_every_n_steps=1), wandb=WandbConfig(enabled=False))
    arts = static.run(ctx, cfg)
    assert (tmp_path / "run" / arts["gaussians"]).is_file()
    assert "static/loss_sds" in (tmp_path / "run" / "static" / "logs" / "metrics.jsonl").read_text()
    ckpt = torch.load(tmp_path / "run" / "static" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(k.startswith("gaussians.splats.") for k in ckpt["state_dict"])  # no prior
