"""Stable Video Diffusion driving-video prior, through the real loading code with a tiny random-weight pipeline."""

from __future__ import annotations

import pytest
import torch

from dynapose4d.errors import MissingWeightsError
from dynapose4d.priors.svd import SVDConfig, alpha_from_white, driving_video, generate_video, load_svd_pipeline


def _tiny_pipeline(path):
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=32, num_attention_heads=(2, 4), addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24, num_frames=4,
    )
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), in_channels=3, out_channels=3,
                                       down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                       latent_channels=4, layers_per_block=1)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32))
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002,
                                   timestep_type="continuous", use_karras_sigmas=True, interpolation_type="linear",
                                   steps_offset=1, timestep_spacing="leading")
    proc = CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=enc, unet=unet, scheduler=sched,
                                        feature_extractor=proc)
    pipe.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_svd(tmp_path_factory):
    return _tiny_pipeline(tmp_path_factory.mktemp("svd") / "tiny-svd")


def _image(h=24, w=20):
    img = torch.zeros(h, w, 4)
    img[6:18, 5:15] = torch.tensor([0.8, 0.2, 0.1, 1.0])
    return img


def test_tiny_pipeline_generates_T_frames_of_the_scene_size(tiny_svd, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = SVDConfig(model=str(tiny_svd), num_frames=4, width=32, height=32, num_inference_steps=2,
                    decode_chunk_size=2, device="cpu")
    img = _image()
    frames = generate_video(img, cfg, seed=0)
    assert frames.shape == (4, 24, 20, 4)
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    assert torch.equal(frames[0, ..., 3:], img[..., 3:])  # frame 0 keeps the input's mask


def test_driving_video_saves_and_reuses_frames(tiny_svd, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = SVDConfig(model=str(tiny_svd), num_frames=3, width=32, height=32, num_inference_steps=1,
                    decode_chunk_size=3, device="cpu")
    scene = SimpleNamespace(video=None, image=_image(16, 16))
    v = driving_video(scene, tmp_path, cfg)
    files = sorted((tmp_path / "inputs" / "video").glob("*.png"))
    assert [f.name for f in files] == ["000.png", "001.png", "002.png"]
    cfg.model = str(tmp_path / "nowhere")  # a second call reads the saved frames and never loads a pipeline
    again = driving_video(scene, tmp_path, cfg)
    assert again.shape == v.shape == (3, 16, 16, 4)
    assert (again - v).abs().max() <= 1 / 255 + 1e-6
    scene.video = torch.rand(5, 16, 16, 4)
    assert driving_video(scene, tmp_path, cfg) is scene.video  # the scene's own video wins


def test_missing_weights_error_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="video"):
        load_svd_pipeline("stabilityai/stable-video-diffusion-img2vid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="model_index.json"):
        load_svd_pipeline(str(tmp_path / "empty"))


def test_alpha_from_white():
    rgb = torch.tensor([[1.0, 1.0, 1.0], [0.96, 1.0, 1.0], [0.2, 0.9, 1.0]])
    assert torch.allclose(alpha_from_white(rgb, 0.08)[:, 0], torch.tensor([0.0, 0.5, 1.0]), atol=1e-5)
