"""Stable Video Diffusion (diffusers) as the driving-video prior of the dynamic stage.

`driving_video(scene, run_dir, cfg, seed)` returns the scene's own video when it has one; otherwise it makes T
frames from the input image: with the puppet (`cfg` a `PuppetConfig`: `dynapose4d.priors.puppet`, no weights) or
with `StableVideoDiffusionPipeline` (default
`stabilityai/stable-video-diffusion-img2vid`, or a local folder saved with `save_pretrained`; its fp16 weight files,
`variant="fp16"`, are read when present, else the full-precision ones; fp16 on CUDA, fp32 on CPU).

The generated video is an artifact with its own hash (`video_hash`: the scene image, the seed and every setting
of its generator but `device`; for the puppet also the keypoints and skeleton it moves): RUN/inputs/video/000.png …
with RUN/inputs/video/source.json ({"hash", "seed", "image_sha256", and "svd" or "puppet" with its settings; the
puppet's also "keypoints" [T][N][2], where its keypoints are in each frame}). It is reused only when
source.json's hash is the current one and regenerated (atomically replacing the folder) otherwise; frames without
a source.json are never reused. Missing weights raise `MissingWeightsError` with the exact download command. The
pipeline is built lazily, used under `torch.no_grad()`, freed after generation and never stored in a checkpoint.

Framing: the image (over white) is padded with white to the generation size's aspect ratio and resized (never
squeezed); the frames are resized back to the padded size and cropped to the image's box (`framing`).

Alpha: SVD returns RGB frames over the white background it was given. Every frame's alpha, frame 0's included,
comes from one rule, the distance to white (`rgba_from_white`: alpha = clamp(max_c(1 − rgb_c) / threshold, 0, 1),
the colour un-premultiplied so that the frame over white is exactly what SVD drew). Frame 0 is the input image
over white, through the same rule. Good for objects on white, wrong for white parts of an object (a
background-removal model would do better; none is shipped).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dynapose4d.core import seeding
from dynapose4d.core.errors import MissingWeightsError
from dynapose4d.core.images import over_background, to_uint8
from dynapose4d.core.io import atomic_folder, read_image, write_image, write_json
from dynapose4d.core.memory import free_memory
from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bound, Rule
from dynapose4d.priors import load_failure
from dynapose4d.priors.framing import crop_back, pad_to_aspect
from dynapose4d.priors.puppet import PuppetConfig, puppet_video

DEFAULT_SVD_MODEL = "stabilityai/stable-video-diffusion-img2vid"
#: The files `load_svd_pipeline` reads from a diffusers SVD folder (glob patterns, as `hf download --include`).
SVD_FILES = ("model_index.json", "*/config.json", "scheduler/scheduler_config.json",
             "feature_extractor/preprocessor_config.json", "*/*.fp16.safetensors")
SOURCE = "source.json"  # beside generated frames: the hash and settings they were made with


@dataclass
class SVDConfig:
    """Settings of the Stable Video Diffusion driving-video generator (used only when the scene has no video)."""

    model: str = DEFAULT_SVD_MODEL  # Hugging Face id (read from the local cache) or a local pipeline folder
    num_frames: int = 14  # T frames to generate (SVD img2vid: 14)
    width: int = 512  # generation width (multiples of 64); the image is padded with white to this aspect
    height: int = 512  # generation height (multiples of 64)
    num_inference_steps: int = 25  # sampler steps
    min_guidance_scale: float = 1.0  # classifier-free guidance ramp over frames
    max_guidance_scale: float = 3.0  # guidance at the last frame (the ramp's end)
    fps: int = 7  # SVD's fps conditioning
    motion_bucket_id: int = 127  # SVD's motion-amount conditioning (higher = more motion)
    noise_aug_strength: float = 0.02  # noise added to the conditioning image
    decode_chunk_size: int = 0  # frames decoded at once by the VAE; 0 = all at once (fewer: less memory)
    alpha_threshold: float = 0.08  # alpha = clamp(distance-to-white / threshold, 0, 1) on every frame
    device: str = "auto"  # "auto" (cuda when available), "cuda" or "cpu"

    RULES: ClassVar[dict[str, Rule]] = {
        "num_frames": Bound(2), "width": Bound(8), "height": Bound(8), "num_inference_steps": AT_LEAST_1,
        "min_guidance_scale": AT_LEAST_0, "max_guidance_scale": AT_LEAST_0, "fps": AT_LEAST_1,
        "motion_bucket_id": AT_LEAST_0, "noise_aug_strength": AT_LEAST_0, "decode_chunk_size": AT_LEAST_0,
        "alpha_threshold": POSITIVE, "device": ("auto", "cuda", "cpu"),
    }


def _missing(model: str, why: str) -> MissingWeightsError:
    include = " ".join(f"--include '{p}'" for p in SVD_FILES)
    return MissingWeightsError(
        f"Stable Video Diffusion weights '{model}' are not available locally ({why}). Either give a driving "
        f"video (`--video clip.mp4` or a folder of frames; in a scene folder video/ or video.mp4), or download "
        f"the pipeline's fp16 files once "
        f"(accept its licence on the Hub first): `hf download {DEFAULT_SVD_MODEL} {include} --local-dir DIR` "
        f"and set dynamic.svd.model=DIR; or move the picture on its own skeleton, no weights "
        f"(`--set dynamic.driver=puppet`; `--config cpu` does so and needs no weights at all); or make a still 3D "
        f"asset without motion (`dynapose4d fit-static`)"
    )


SVD_PARTS = ("unet", "vae", "image_encoder")  # the pipeline's parts with weights


def check_svd_weights(model: str) -> Path:
    """The local folder of the SVD pipeline `model` (a folder, or a Hugging Face id in the local cache), checked to
    hold model_index.json and each part's config and weights: the check before a run starts, and the loader's.
    Reads no weights; downloads nothing. Raises MissingWeightsError."""
    local = Path(model).expanduser()
    if local.exists() or model.startswith(("/", ".", "~")) or model.count("/") != 1:  # a path, not an id
        if not local.exists():
            raise _missing(model, f"no folder {local}")
        root = local
    else:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(model, "model_index.json")
        if not isinstance(index, str):
            raise _missing(model, "not in the local Hugging Face cache (nothing is downloaded at run time)")
        root = Path(index).parent
    if not (root / "model_index.json").is_file():
        raise _missing(model, f"{root} has no model_index.json")
    absent = [p for p in SVD_PARTS if not (root / p / "config.json").is_file()
              or not any(f.suffix in (".safetensors", ".bin") for f in (root / p).iterdir())]
    if absent:
        raise _missing(model, f"{root} lacks the weights of {', '.join(p + '/' for p in absent)}")
    return root


def load_svd_pipeline(model: str, device: str | torch.device = "cpu") -> Any:
    """StableVideoDiffusionPipeline from a local folder or the local Hugging Face cache: the fp16 weight files
    (`variant="fp16"`, the `SVD_FILES`) when present, else the full-precision ones; fp16 on CUDA, fp32 on CPU."""
    from diffusers import StableVideoDiffusionPipeline

    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    src = str(check_svd_weights(model))
    kwargs = dict(torch_dtype=dtype, local_files_only=True)  # `dtype` only from diffusers 0.36; >= 0.30 is allowed
    try:
        with warnings.catch_warnings():  # newer diffusers call `torch_dtype` deprecated: it is still read
            warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
            try:
                pipe = StableVideoDiffusionPipeline.from_pretrained(src, variant="fp16", **kwargs)
            except (OSError, ValueError):  # no fp16 files: the full-precision ones
                pipe = StableVideoDiffusionPipeline.from_pretrained(src, **kwargs)
    except (OSError, ValueError) as e:  # unreadable or partial files
        raise _missing(model, load_failure(e)) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def alpha_from_white(rgb: torch.Tensor, threshold: float) -> torch.Tensor:
    """Alpha [..., 1] of RGB frames [..., 3] on a white background: clamp(max_c(1 − rgb_c) / threshold, 0, 1)."""
    return ((1.0 - rgb).amax(dim=-1, keepdim=True) / max(threshold, 1e-6)).clamp(0.0, 1.0)


def rgba_from_white(rgb: torch.Tensor, threshold: float) -> torch.Tensor:
    """Straight RGBA [..., 4] of RGB [..., 3] drawn over white: alpha by `alpha_from_white`, colour
    un-premultiplied (1 − (1 − rgb) / alpha), so that compositing the result over white gives `rgb` back."""
    alpha = alpha_from_white(rgb, threshold)
    colour = torch.where(alpha > 0, 1.0 - (1.0 - rgb) / alpha.clamp_min(1e-6), torch.ones_like(rgb))
    return torch.cat([colour.clamp(0.0, 1.0), alpha], dim=-1)


def generate_video(image: torch.Tensor, cfg: SVDConfig, seed: int = 0, pipe: Any = None) -> torch.Tensor:
    """Driving frames [T, H, W, 4] (RGBA, the size of `image` [H, W, 4] straight RGBA) generated by SVD; frame 0
    is the input image. See the module docstring for the framing and the alpha rule."""
    from PIL import Image

    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = pipe or load_svd_pipeline(cfg.model, device)
    rgb = over_background(image, 1.0)  # [H, W, 3] over white, as DreamGaussian4D feeds SVD
    padded, box = pad_to_aspect(rgb.permute(2, 0, 1)[None], cfg.width / cfg.height, value=1.0)
    cond = F.interpolate(padded, (cfg.height, cfg.width), mode="bilinear", align_corners=False, antialias=True)
    pil = Image.fromarray(to_uint8(cond[0].permute(1, 2, 0)))
    gen = seeding.torch_generator(seed)
    with torch.no_grad():
        out = pipe(
            pil, height=cfg.height, width=cfg.width, num_frames=cfg.num_frames,
            num_inference_steps=cfg.num_inference_steps, min_guidance_scale=cfg.min_guidance_scale,
            max_guidance_scale=cfg.max_guidance_scale, fps=cfg.fps, motion_bucket_id=cfg.motion_bucket_id,
            noise_aug_strength=cfg.noise_aug_strength, decode_chunk_size=cfg.decode_chunk_size or cfg.num_frames,
            generator=gen, output_type="pt",
        ).frames  # [1, T, 3, h, w] in [0, 1]
    frames = crop_back(out[0].float().cpu().clamp(0, 1), box).permute(0, 2, 3, 1).clamp(0, 1)  # [T, H, W, 3]
    frames = torch.cat([rgb[None].float(), frames[1:]])  # frame 0 is the input image (over white)
    return rgba_from_white(frames, cfg.alpha_threshold)


def video_hash(image: torch.Tensor, cfg: SVDConfig | PuppetConfig, seed: int, keypoints: torch.Tensor | None = None,
               skeleton: list[tuple[int, int]] | None = None, names: list[str] | None = None) -> str:
    """The generated video's identity: hash of the scene image [H, W, 4], the seed and every setting of its
    generator that shapes the frames (all but `device`); the puppet's also of the `keypoints` [N, 2],
    `skeleton` it moves and their `names` (which its `root` and `still` settings refer to)."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "device"}
    what: dict[str, Any] = {"seed": int(seed)}
    if isinstance(cfg, PuppetConfig):
        what["puppet"] = settings
        what["keypoints"] = None if keypoints is None else _rounded(keypoints)
        what["skeleton"] = [list(map(int, b)) for b in skeleton or []]
        what["names"] = list(names or [])
    else:
        what["svd"] = settings
    h = hashlib.sha256(_image_sha(image).encode())
    h.update(json.dumps(what, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _rounded(points: torch.Tensor) -> list:
    """Pixel positions [..., 2] as nested lists rounded to 1e-4 px (the hash and source.json stay stable)."""
    return (points.detach().double().cpu() * 1e4).round().div(1e4).tolist()


def _image_sha(image: torch.Tensor) -> str:
    return hashlib.sha256(image.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def generated_video_folder(run_dir: str | Path) -> Path:
    """RUN/inputs/video/: where generated driving frames and their source.json live."""
    return Path(run_dir) / "inputs" / "video"


def read_source(folder: Path) -> dict[str, Any] | None:
    """folder/source.json (what the frames were generated from), or None when absent or unreadable."""
    try:
        return json.loads((folder / SOURCE).read_text())
    except (OSError, ValueError):
        return None


def read_frames(folder: Path) -> torch.Tensor | None:
    """RGBA frames [T, H, W, 4] from folder/000.png… or None when there are none."""
    files = sorted(folder.glob("[0-9][0-9][0-9].png")) if folder.is_dir() else []
    if not files:
        return None
    frames = [read_image(f) for f in files]
    frames = [f if f.shape[-1] == 4 else torch.cat([f, torch.ones_like(f[..., :1])], -1) for f in frames]
    return torch.stack(frames)


def write_frames(folder: Path, frames: torch.Tensor, source: dict[str, Any] | None = None) -> None:
    """Write RGBA frames [T, H, W, 4] as folder/000.png… (and `source` as folder/source.json) atomically: a
    temporary folder renamed at the end, replacing the old one whole."""
    with atomic_folder(folder) as tmp:
        for i, f in enumerate(frames):
            write_image(tmp / f"{i:03d}.png", f)
        if source is not None:
            write_json(tmp / SOURCE, source)


def keypoint_file_recentring(scene: Any, generated: bool) -> Any:
    """The similarity between the pipeline's pixels and those of the driving frames' own files, which keypoint
    files (cape/driving_keypoints.json) are written in: the scene's video's (`Scene.video_recentring` for a video
    of another size than the picture, else `Scene.recentring`; None when the scene is used as given); None for
    `generated` SVD frames, which are made and saved (RUN/inputs/video/) in the pipeline's frame."""
    if generated:
        return None
    return getattr(scene, "video_recentring", None) or getattr(scene, "recentring", None)


def driving_video(scene: Any, run_dir: str | Path, cfg: SVDConfig | PuppetConfig | None = None, seed: int = 0,
                  pipe: Any = None) -> torch.Tensor:
    """The driving video [T, H, W, 4] RGBA: the scene's, else RUN/inputs/video/ when its source.json carries the
    current `video_hash`, else made now (SVD, or the puppet when `cfg` is a PuppetConfig) and saved there
    (replacing stale frames). Shared by the cape stage (driving keypoints) and the dynamic stage."""
    if getattr(scene, "video", None) is not None:
        return scene.video
    cfg = cfg or SVDConfig()
    puppet = isinstance(cfg, PuppetConfig)
    folder = generated_video_folder(run_dir)
    names = getattr(scene, "names", None)  # what dynamic.puppet.root / still refer to
    key = video_hash(scene.image, cfg, seed, *((scene.keypoints, scene.skeleton, names) if puppet else ()))
    source = read_source(folder)
    if source is not None and source.get("hash") == key:
        frames = read_frames(folder)
        if frames is not None and frames.shape[0] == cfg.num_frames:
            return frames
    source: dict[str, Any] = {"hash": key, "seed": int(seed), "image_sha256": _image_sha(scene.image)}
    if puppet:
        frames, motion = puppet_video(scene.image, scene.keypoints, scene.skeleton, cfg, seed, names)
        source.update(puppet=asdict(cfg), keypoints=_rounded(motion.keypoints))
    else:
        frames = generate_video(scene.image, cfg, seed=seed, pipe=pipe)
        free_memory()  # the pipeline is gone: hand its memory back before training
        source["svd"] = asdict(cfg)
    write_frames(folder, frames, source)
    return frames
