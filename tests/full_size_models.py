"""Full-size random-weight priors in their published folder layouts (test support for `make test-full-size`).

Each prior is built at its real size from its real configuration (the numbers of the published config.json
files, written out below), with random weights (each module's own default initialisation under a fixed seed:
finite and bounded, meaningless as a model), and saved as the Hugging Face repository holds it:

  Zero-1-to-3 XL (`ashawkey/zero123-xl-diffusers`): unet/ (UNet2DConditionModel, SD 1.x with 8 input channels),
    vae/ (the SD AutoencoderKL), image_encoder/ (CLIP ViT-L/14 CLIPVisionModelWithProjection, projection 768),
    clip_camera_projection/ (772 -> 768 Linear), scheduler/ (DDIM), feature_extractor/, model_index.json.
  Stable Video Diffusion img2vid (`stabilityai/stable-video-diffusion-img2vid`): unet/
    (UNetSpatioTemporalConditionModel, 14 frames), vae/ (AutoencoderKLTemporalDecoder), image_encoder/ (CLIP
    ViT-H/14, projection 1024), scheduler/ (EulerDiscreteScheduler, v-prediction, Karras sigmas),
    feature_extractor/, model_index.json; fp32 safetensors plus the `fp16` variant files the repository also has.

Weights are fp32 safetensors. One component is built, saved and freed at a time (the SVD UNet alone is 6.1 GB in
fp32). Folders are cached under `cache_root()/<name>-<hash of the configs>/` and reused while the configs are
unchanged; a folder is complete only once its `.complete` file exists (written last, after an atomic rename).

Run as a script to build one prior in a fresh process (so its memory goes back to the system afterwards):
  python tests/full_size_models.py zero123-xl|svd-img2vid|poseanything-small|poseanything-tiny [CACHE_DIR]
(prints the folder).

PoseAnything (1-shot, SwinV2-S "small" as configs/default.yaml uses, or SwinV2-T "tiny") is written as the
official mmcv checkpoint file from the port in dynapose4d.cape.poseanything_model (whose state dict has the official
keys and shapes); its cache key is that state dict's layout.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# CLIP's image preprocessing as saved in both repositories' feature_extractor/preprocessor_config.json
FEATURE_EXTRACTOR: dict[str, Any] = {
    "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
    "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
    "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 224},
}

# Zero-1-to-3 XL in the diffusers layout: Stable Diffusion 1.x's UNet and VAE, CLIP ViT-L/14's image tower
ZERO123_XL: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 32, "in_channels": 8, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5,
        "act_fn": "silu", "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True,
        "freq_shift": 0, "mid_block_scale_factor": 1,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "act_fn": "silu", "norm_num_groups": 32, "sample_size": 256,
        "scaling_factor": 0.18215,
    },
    "image_encoder": {  # CLIP ViT-L/14
        "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "num_channels": 3,
    },
    "clip_camera_projection": {"embedding_dim": 768, "additional_embeddings": 4},  # Linear 772 -> 768
    "scheduler": {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    },
    "feature_extractor": FEATURE_EXTRACTOR,
}

# Stable Video Diffusion img2vid (14 frames)
SVD_IMG2VID: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 96, "in_channels": 8, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
        "cross_attention_dim": 1024, "num_attention_heads": [5, 10, 20, 20], "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 768, "transformer_layers_per_block": 1, "num_frames": 14,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
        "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "sample_size": 768, "scaling_factor": 0.18215, "force_upcast": True,
    },
    "image_encoder": {  # OpenCLIP ViT-H/14 in transformers' CLIP layout
        "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
        "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu",
        "layer_norm_eps": 1e-5, "num_channels": 3,
    },
    "scheduler": {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction", "interpolation_type": "linear", "use_karras_sigmas": True,
        "sigma_min": 0.002, "sigma_max": 700.0, "timestep_spacing": "leading", "timestep_type": "continuous",
        "steps_offset": 1,
    },
    "feature_extractor": FEATURE_EXTRACTOR,
}

CONFIGS = {"zero123-xl": ZERO123_XL, "svd-img2vid": SVD_IMG2VID}
BUILD_VERSION = 1  # bump when the way folders are written changes (the configs are hashed themselves)


def cache_root() -> Path:
    """Where built folders are kept: $DYNAPOSE4D_FULL_SIZE_CACHE, else ~/.cache/dynapose4d/full_size."""
    env = os.environ.get("DYNAPOSE4D_FULL_SIZE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynapose4d" / "full_size"


def configs_hash(configs: dict[str, Any]) -> str:
    """12 hex digits of the sha256 of the configs (and BUILD_VERSION): the cache key of a built folder."""
    blob = json.dumps({"configs": configs, "version": BUILD_VERSION}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _configs(name: str) -> dict[str, Any]:
    return poseanything_layout(name.split("-")[1]) if name.startswith("poseanything-") else CONFIGS[name]


def folder_of(name: str, root: Path | None = None) -> Path:
    """The cache folder of model `name` (a key of BUILDERS, e.g. "zero123-xl") for its current configs."""
    return (root or cache_root()) / f"{name}-{configs_hash(_configs(name))}"


def _free(*objs: Any) -> None:
    del objs
    gc.collect()


def _save_model(model: Any, folder: Path, fp16_variant: bool = False) -> None:
    """save_pretrained as fp32 safetensors (one file), then optionally the `fp16` variant; frees nothing."""
    model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="20GB")
    if fp16_variant:
        model.half()
        model.save_pretrained(str(folder), safe_serialization=True, max_shard_size="20GB", variant="fp16")


def _clip(cfg: dict[str, Any]) -> Any:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg)).eval()


def _feature_extractor(folder: Path, cfg: dict[str, Any]) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(**cfg).save_pretrained(str(folder))


def build_zero123(out: Path, seed: int = 0) -> Path:
    """Write Zero-1-to-3 XL at full size with random weights to `out` (the diffusers layout; see module doc)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file

    c = ZERO123_XL
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**c["unet"])
    _save_model(unet, out / "unet")
    _free(unet)
    _save_model(AutoencoderKL(**c["vae"]), out / "vae")
    gc.collect()
    _save_model(_clip(c["image_encoder"]), out / "image_encoder")
    gc.collect()
    proj = out / "clip_camera_projection"
    proj.mkdir(parents=True)
    d, extra = c["clip_camera_projection"]["embedding_dim"], c["clip_camera_projection"]["additional_embeddings"]
    (proj / "config.json").write_text(json.dumps(
        {"_class_name": "CLIPCameraProjection", **c["clip_camera_projection"]}, indent=2))
    lin = torch.nn.Linear(d + extra, d)
    save_file({"proj.weight": lin.weight.detach().contiguous(), "proj.bias": lin.bias.detach().contiguous()},
              str(proj / "diffusion_pytorch_model.safetensors"))
    DDIMScheduler(**c["scheduler"]).save_pretrained(str(out / "scheduler"))
    _feature_extractor(out / "feature_extractor", c["feature_extractor"])
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "Zero1to3StableDiffusionPipeline",
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }, indent=2))
    return out


def build_svd(out: Path, seed: int = 0, fp16_variant: bool = True) -> Path:
    """Write SVD img2vid at full size with random weights to `out` (StableVideoDiffusionPipeline's layout)."""
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel

    c = SVD_IMG2VID
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(**c["unet"])
    _save_model(unet, out / "unet", fp16_variant)
    _free(unet)
    _save_model(AutoencoderKLTemporalDecoder(**c["vae"]), out / "vae", fp16_variant)
    gc.collect()
    _save_model(_clip(c["image_encoder"]), out / "image_encoder", fp16_variant)
    gc.collect()
    EulerDiscreteScheduler(**c["scheduler"]).save_pretrained(str(out / "scheduler"))
    _feature_extractor(out / "feature_extractor", c["feature_extractor"])
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableVideoDiffusionPipeline",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNetSpatioTemporalConditionModel"],
        "vae": ["diffusers", "AutoencoderKLTemporalDecoder"],
    }, indent=2))
    return out


POSEANYTHING_FILES = {v: f"poseanything_1shot_{v}_split1.pth" for v in ("tiny", "small")}  # the file in the folder


def poseanything_layout(variant: str = "tiny") -> dict[str, Any]:
    """The PoseAnything state dict's keys and shapes as dynapose4d.cape.poseanything_model builds them (meta device):
    the cache key of the checkpoint file, so a changed port gets a new file."""
    import torch

    from dynapose4d.cape.poseanything_model import PoseAnything

    with torch.device("meta"):
        sd = PoseAnything(variant).state_dict()
    return {"variant": variant, "state_dict": [[k, list(v.shape)] for k, v in sd.items()]}


def build_poseanything(out: Path, seed: int = 0, variant: str = "small") -> Path:
    """An official-format PoseAnything checkpoint (mmcv `save_checkpoint`: {"meta", "state_dict", "optimizer"},
    torch.save) of the 1-shot SwinV2-S ("small") or SwinV2-T ("tiny") model with random weights:
    out/POSEANYTHING_FILES[variant]. The meta carries a numpy
    scalar as mmcv's hook messages do (the loader allow-lists numpy objects under weights_only=True)."""
    import numpy as np
    import torch

    from dynapose4d.cape.poseanything_model import PoseAnything

    torch.manual_seed(seed)
    model = PoseAnything(variant)
    meta = {"mmcv_version": "1.7.0", "time": "random weights", "epoch": 200, "iter": 0,
            "hook_msgs": {"best_score": np.float64(0.0), "best_ckpt": ""}}
    torch.save({"meta": meta, "state_dict": model.state_dict(), "optimizer": {}}, out / POSEANYTHING_FILES[variant])
    return out


BUILDERS = {"zero123-xl": build_zero123, "svd-img2vid": build_svd,
            "poseanything-tiny": lambda out: build_poseanything(out, variant="tiny"),
            "poseanything-small": lambda out: build_poseanything(out, variant="small")}


def ensure(name: str, root: Path | None = None) -> Path:
    """The cached folder of prior `name`, built now (in this process) when absent or from other configs."""
    final = folder_of(name, root)
    if (final / ".complete").is_file():
        return final
    tmp = final.with_name(final.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.time()
    BUILDERS[name](tmp)
    (tmp / "configs.json").write_text(json.dumps(_configs(name), indent=2, sort_keys=True))
    os.replace(tmp, final)
    (final / ".complete").write_text(f"built in {time.time() - t0:.0f} s\n")
    return final


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in BUILDERS:
        sys.exit(f"usage: python tests/full_size_models.py {'|'.join(BUILDERS)} [CACHE_DIR]")
    print(ensure(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else None))
