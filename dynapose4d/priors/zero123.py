"""Zero-1-to-3 (Liu et al. 2023) as a novel-view score-distillation prior, assembled from diffusers and
transformers parts (no custom pipeline code is executed).

A Zero-1-to-3 folder in the diffusers layout (`ashawkey/zero123-xl-diffusers`, DreamGaussian's default, or
`ashawkey/stable-zero123-diffusers`, the same layout; `ZERO123_FILES` are the files read):
  unet/                    UNet2DConditionModel with 8 input channels (noisy latents + reference latents)
  vae/                     AutoencoderKL
  image_encoder/           CLIPVisionModelWithProjection (its `image_embeds` condition the UNet)
  clip_camera_projection/  config.json {"embedding_dim": D, "additional_embeddings": 4} + one Linear (D+4 -> D)
                           as diffusion_pytorch_model.safetensors (or .bin)
  scheduler/               scheduler_config.json (DDIM; only ᾱ_t and add_noise are used)
  feature_extractor/       optional preprocessor_config.json (CLIP image mean / std; CLIP's defaults otherwise)

Conditioning (as in Zero-1-to-3 and DreamGaussian): cross-attention context = Linear([CLIP image embedding of
the reference, camera]) [B, 1, D]; the reference image's VAE latent (posterior mode, not scaled) is
concatenated to the noisy latents. The unconditional branch of classifier-free guidance zeroes both the context
and the reference latent. Camera, relative to the reference view (`Zero123Config.kind`):
  - "zero123" (Zero-1-to-3, Zero123-XL): [Δpolar (rad), sin Δazimuth, cos Δazimuth, Δradius];
  - "stable_zero123" (Stable-Zero123): [Δpolar (rad), sin Δazimuth, cos Δazimuth, polar angle of the reference
    view (rad) = 90° − its elevation], as DreamGaussian and threestudio condition it (no radius term).
Zero-1-to-3's polar angle grows downwards, so Δpolar = −Δelevation in this project's convention (elevation > 0
looks from above); Δazimuth has this project's sign (towards +x).

Non-square references are padded with white to a centred square (never squeezed): renders scored by the prior
must then see that square, i.e. a square image with the vertical field of view `framing.square_fov_y`.

Weights are never downloaded: a model missing from its folder or the local Hugging Face cache raises
`MissingWeightsError`, which says how to provide it. Models are frozen, fp16 on CUDA (fp32 on CPU), and the prior
is a plain object, never a child module of a LightningModule (never in a checkpoint).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dynapose4d.core.errors import ConfigError, MissingWeightsError
from dynapose4d.core.structured import Bound, Rule
from dynapose4d.priors import load_failure
from dynapose4d.priors.framing import pad_to_aspect
from dynapose4d.priors.sds import SDSConfig, cfg_combine, sds_loss, sds_timesteps, sds_weight

DEFAULT_ZERO123_MODEL = "ashawkey/zero123-xl-diffusers"
PARTS = ("unet", "vae", "image_encoder", "scheduler", "clip_camera_projection")
#: What the loader reads (glob patterns, as `hf download --include` and snapshot_download's allow_patterns take).
ZERO123_FILES = ("model_index.json", *[f"{p}/*" for p in PARTS], "feature_extractor/*")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


KINDS = ("zero123", "stable_zero123")


@dataclass
class Zero123Config:
    """The Zero-1-to-3 prior, one setting for every stage that uses it (static SDS, the dynamic stage's SDS)."""

    model: str = DEFAULT_ZERO123_MODEL  # Hugging Face id, read from the local Hugging Face cache (never downloaded)
    path: str = ""  # local model folder in the diffusers layout (see the module docstring); overrides `model`
    kind: str = "auto"  # camera embedding: "zero123" (Zero-1-to-3 / XL), "stable_zero123", or "auto": by name
    size: int = 256  # the model's image size (Zero-1-to-3: 256, latents 32 x 32)
    fp16: bool = True  # fp16 weights on CUDA (fp32 on CPU)

    RULES: ClassVar[dict[str, Rule]] = {"kind": (*KINDS, "auto"), "size": Bound(8)}

    @property
    def source(self) -> str:
        """The folder or Hugging Face id the weights come from."""
        return self.path or self.model

    def resolved_kind(self) -> str:
        """`kind`, with "auto" decided by the model's name: "stable_zero123" when it contains "stable"
        (e.g. ashawkey/stable-zero123-diffusers), else "zero123"."""
        if self.kind not in (*KINDS, "auto"):
            raise ConfigError(f"config key 'zero123.kind': {self.kind!r} is not one of {[*KINDS, 'auto']}")
        if self.kind != "auto":
            return self.kind
        return "stable_zero123" if "stable" in Path(self.source).name.lower() else "zero123"


def _missing(model: str, why: str) -> MissingWeightsError:
    return MissingWeightsError(
        f"Zero-1-to-3 weights '{model}' are not available locally ({why}). On a machine with internet run "
        f"`hf download {DEFAULT_ZERO123_MODEL} {' '.join(f'--include {p!r}' for p in ZERO123_FILES)} "
        f"--local-dir DIR`, copy DIR here and pass "
        f"`--set zero123.path=DIR` (used by every stage); or train without it: `--set static.prior=views` "
        f"(needs SCENE/views/) or `--set static.prior=none`, and dynamic.lambda_sds=0"
    )


def resolve_zero123(model: str) -> Path:
    """The local folder of a Zero-1-to-3 model: `model` itself when it is a folder, else its snapshot in the local
    Hugging Face cache (nothing is downloaded). Raises MissingWeightsError when unavailable or incomplete."""
    local = Path(model).expanduser()
    if local.exists():
        root = local
    elif model.startswith(("/", ".", "~")) or model.count("/") != 1:  # a path, not a Hugging Face id
        raise _missing(model, f"no folder {local}")
    else:
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(
                model, local_files_only=True,
                allow_patterns=list(ZERO123_FILES),
            ))
        except Exception as e:  # not in the cache
            raise _missing(model, load_failure(e)) from None
    if not root.is_dir():
        raise _missing(model, f"{root} is not a folder")
    absent = [p for p in PARTS if not (root / p).is_dir()]
    if absent:
        raise _missing(model, f"{root} lacks {', '.join(p + '/' for p in absent)}")
    return root


def find_local_zero123(cfg: Zero123Config) -> Path | None:
    """The model's folder when its weights are on this machine (the configured path, or the local Hugging Face
    cache), never downloading; None otherwise."""
    try:
        return resolve_zero123(cfg.source)
    except MissingWeightsError:
        return None


def load_camera_projection(folder: Path) -> nn.Linear:
    """The 772 -> 768 (D + 4 -> D) Linear of `clip_camera_projection/` (config.json + one weight file)."""
    cfg = json.loads((folder / "config.json").read_text())
    d = int(cfg.get("embedding_dim", 768))
    extra = int(cfg.get("additional_embeddings", 4))
    st, bin_ = folder / "diffusion_pytorch_model.safetensors", folder / "diffusion_pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        sd = load_file(str(st))
    elif bin_.is_file():
        sd = torch.load(str(bin_), map_location="cpu", weights_only=True)
    else:
        raise _missing(str(folder.parent), f"{folder} has no diffusion_pytorch_model.safetensors or .bin")
    w = [v for k, v in sd.items() if k.endswith("weight")]
    b = [v for k, v in sd.items() if k.endswith("bias")]
    if len(w) != 1 or len(b) != 1 or tuple(w[0].shape) != (d, d + extra):
        raise _missing(str(folder.parent), f"{folder}: expected one Linear {d + extra} -> {d}, got {list(sd)}")
    lin = nn.Linear(d + extra, d)
    lin.load_state_dict({"weight": w[0], "bias": b[0]})
    return lin


class Zero123Prior:
    """Frozen Zero-1-to-3: `set_reference(image)` once, then `sds(images, Δelev, Δazim, Δradius, progress)`."""

    def __init__(self, unet: nn.Module, vae: nn.Module, image_encoder: nn.Module, projection: nn.Linear,
                 scheduler: Any, image_mean: tuple[float, ...] = CLIP_MEAN, image_std: tuple[float, ...] = CLIP_STD,
                 size: int = 256, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 kind: str = "zero123") -> None:
        if kind not in KINDS:
            raise ConfigError(f"config key 'zero123.kind': {kind!r} is not one of {list(KINDS)}")
        self.kind = kind  # camera embedding (module docstring)
        self.device = torch.device(device)
        self.dtype = dtype
        self.unet, self.vae, self.image_encoder, self.projection = (
            m.to(self.device, dtype).eval().requires_grad_(False) for m in (unet, vae, image_encoder, projection))
        self.scheduler = scheduler
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)  # [T]
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.mean = torch.tensor(image_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(image_std, device=self.device).view(1, 3, 1, 1)
        self.size = int(size)  # Zero-1-to-3's image size (256: latents 32 x 32)
        self.scaling = float(getattr(vae.config, "scaling_factor", 0.18215))
        # the conditioning: one reference ([1, ...], shared by a batch) or one per batch element ([B, ...])
        self.clip_embedding: torch.Tensor | None = None  # [1 or B, 1, D]
        self.ref_latent: torch.Tensor | None = None  # [1 or B, 4, h, w] (unscaled posterior mode)
        self.ref_elevation: float = 0.0  # elevation (degrees) of the reference view (Stable-Zero123's embedding)

    @classmethod
    def from_config(cls, cfg: Zero123Config, device: torch.device | str = "cpu") -> Zero123Prior:
        """The prior `cfg` describes (weights from `cfg.path` or `cfg.model`), on `device`. With kind "auto" one
        line says which camera embedding the model's name chose."""
        kind = cfg.resolved_kind()
        if cfg.kind == "auto":
            print(f"[zero123] camera embedding: {kind} (auto, from the name '{Path(cfg.source).name}'; "
                  f"set zero123.kind to choose)", flush=True)
        return cls.from_pretrained(cfg.source, device=device, fp16=cfg.fp16, size=cfg.size, kind=kind)

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_ZERO123_MODEL, device: torch.device | str = "cpu",
                        fp16: bool = True, size: int = 256, kind: str = "zero123") -> Zero123Prior:
        """Load from a local folder or the Hugging Face cache (see the module docstring). fp16 on CUDA if asked;
        `kind` picks the camera embedding ("zero123" or "stable_zero123")."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPVisionModelWithProjection

        root = resolve_zero123(model)
        device = torch.device(device)
        dtype = torch.float16 if (fp16 and device.type == "cuda") else torch.float32
        try:
            unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
            vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True)
            enc = CLIPVisionModelWithProjection.from_pretrained(str(root / "image_encoder"), local_files_only=True)
            sched = DDIMScheduler.from_pretrained(str(root), subfolder="scheduler", local_files_only=True)
        except (OSError, ValueError) as e:  # missing / partial weight files
            raise _missing(model, load_failure(e)) from None
        if unet.config.in_channels != 2 * vae.config.latent_channels:
            raise _missing(model, f"unet/ has {unet.config.in_channels} input channels, Zero-1-to-3 needs "
                                  f"{2 * vae.config.latent_channels}")
        proj = load_camera_projection(root / "clip_camera_projection")
        mean, std = CLIP_MEAN, CLIP_STD
        pre = root / "feature_extractor" / "preprocessor_config.json"
        if pre.is_file():
            pc = json.loads(pre.read_text())
            mean, std = tuple(pc.get("image_mean", mean)), tuple(pc.get("image_std", std))
        return cls(unet, vae, enc, proj, sched, mean, std, size=size, device=device, dtype=dtype, kind=kind)

    # conditioning -------------------------------------------------------------------------------
    def reference_inputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLIP input [1, 3, s, s] normalised, VAE input [1, 3, size, size] in [-1, 1]) of a reference image
        [1, 3, H, W] in [0, 1] over white: padded with white to a centred square, then resized (never squeezed)."""
        x, _ = pad_to_aspect(image.to(self.device, torch.float32), 1.0, value=1.0)
        s = int(self.image_encoder.config.image_size)
        clip_in = F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=True)
        vae_in = F.interpolate(x, (self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (clip_in - self.mean) / self.std, 2 * vae_in - 1

    @torch.no_grad()
    def set_reference(self, image: torch.Tensor, elevation: float = 0.0) -> None:
        """Condition on the reference image [1, 3, H, W] in [0, 1] (RGB over a white background; a non-square one
        is padded to a square) seen from `elevation` degrees (used by Stable-Zero123's camera embedding)."""
        clip_in, vae_in = self.reference_inputs(image)
        self.clip_embedding = self.image_encoder(clip_in.to(self.dtype)).image_embeds[:, None, :]  # [1, 1, D]
        self.ref_latent = self.vae.encode(vae_in.to(self.dtype)).latent_dist.mode()  # [1, 4, h, w]
        self.ref_elevation = float(elevation)

    def camera_embedding(self, d_elevation: torch.Tensor, d_azimuth: torch.Tensor,
                         d_radius: torch.Tensor) -> torch.Tensor:
        """[B, 1, 4] camera embeddings of views offset from the reference (angles in degrees): [Δpolar =
        −Δelevation (rad), sin Δazimuth, cos Δazimuth, last], last = Δradius ("zero123") or the reference view's
        polar angle 90° − elevation in radians ("stable_zero123", which has no radius term)."""
        e = torch.deg2rad(-torch.as_tensor(d_elevation, dtype=torch.float32))
        a = torch.deg2rad(torch.as_tensor(d_azimuth, dtype=torch.float32))
        if self.kind == "stable_zero123":
            last = torch.full_like(e, math.radians(90.0 - self.ref_elevation))
        else:
            last = torch.as_tensor(d_radius, dtype=torch.float32).expand_as(e)
        return torch.stack([e, torch.sin(a), torch.cos(a), last], dim=-1)[:, None, :].to(self.device)

    @torch.no_grad()
    def predict_noise(self, noisy: torch.Tensor, t: torch.Tensor, camera: torch.Tensor,
                      guidance_scale: float) -> torch.Tensor:
        """Guided noise prediction [B, 4, h, w] for noisy latents [B, 4, h, w], timesteps [B], cameras [B, 1, 4]
        (the conditioning shared, or one per element: the batch is one UNet call of 2B either way)."""
        if self.clip_embedding is None or self.ref_latent is None:
            raise RuntimeError("Zero123Prior: call set_reference(image) first")
        b = noisy.shape[0]
        ctx = self.projection(torch.cat([self.clip_embedding.expand(b, -1, -1), camera.to(self.dtype)], dim=-1))
        ctx = torch.cat([ctx, torch.zeros_like(ctx)])  # [2B, 1, D]: conditional, unconditional
        ref = self.ref_latent.expand(b, -1, -1, -1)
        ref = torch.cat([ref, torch.zeros_like(ref)])  # [2B, 4, h, w]
        x = torch.cat([torch.cat([noisy, noisy]).to(self.dtype), ref], dim=1)  # [2B, 8, h, w]
        eps = self.unet(x, torch.cat([t, t]).to(self.device), encoder_hidden_states=ctx).sample
        cond, uncond = eps.chunk(2)
        return cfg_combine(cond, uncond, guidance_scale)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable latents [B, 4, h, w] (scaled, posterior sample) of square images [B, 3, S, S] in [0, 1]
        (renders of the square the reference was padded to)."""
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"Zero123Prior.encode: renders must be square, got {tuple(images.shape[-2:])}")
        x = F.interpolate(images, (self.size, self.size), mode="bilinear", align_corners=False)
        return self.vae.encode((2 * x - 1).to(self.dtype)).latent_dist.sample() * self.scaling

    def sds(self, images: torch.Tensor, d_elevation: torch.Tensor, d_azimuth: torch.Tensor, d_radius: torch.Tensor,
            progress: float, cfg: SDSConfig, generator: torch.Generator | None = None) -> torch.Tensor:
        """SDS loss (scalar, float32) of rendered images [B, 3, H, W] in [0, 1] seen from cameras offset from
        the reference by (Δelevation, Δazimuth) degrees and Δradius; gradients flow into `images`."""
        latents = self.encode(images.to(self.device))
        b = latents.shape[0]
        t = sds_timesteps(progress, b, self.num_train_timesteps, cfg, generator).to(self.device)
        noise = torch.randn_like(latents)
        with torch.no_grad():
            noisy = self.scheduler.add_noise(latents.detach(), noise, t)
            eps = self.predict_noise(noisy, t, self.camera_embedding(d_elevation, d_azimuth, d_radius),
                                     cfg.guidance_scale)
        return sds_loss(latents, eps, noise, sds_weight(self.alphas_cumprod, t))
