"""`dynapose4d showcase RUN --out result.gif`: one small GIF that shows a run at a glance.

Three panels side by side, each `size` x `size` pixels with a caption: the input image as the user gave it,
the driving video (frame f), and the 4D result seen from a camera orbiting the object (the motion at frame f,
the camera one full turn over the GIF). The README's result GIF is made with this command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dynapose4d.core.cameras import Camera
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import over_background, to_uint8
from dynapose4d.core.io import read_image, read_picture, write_video
from dynapose4d.data.scene import load_scene
from dynapose4d.deform import load_dynamic, render_4d
from dynapose4d.pipeline.config import load_run_config
from dynapose4d.pipeline.run_folder import read_manifest

CAPTIONS = ("input image", "driving video", "4D result, orbit")


def fit_square(rgb: torch.Tensor, size: int, background: float = 1.0) -> torch.Tensor:
    """Letterbox an RGB image [H, W, 3] (or frames [T, H, W, 3]) into size x size: the longer side scaled to
    `size`, centred, padded with `background` -> [size, size, 3] (or [T, size, size, 3])."""
    single = rgb.ndim == 3
    x = (rgb[None] if single else rgb).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    H, W = x.shape[-2:]
    s = size / max(H, W)
    h, w = max(1, round(H * s)), max(1, round(W * s))
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (size - h) // 2, (size - w) // 2
    x = F.pad(x, (left, size - w - left, top, size - h - top), value=background)
    x = x.permute(0, 2, 3, 1).clamp(0, 1)
    return x[0] if single else x


def caption_strip(texts: tuple[str, ...], size: int, height: int = 14) -> np.ndarray:
    """A white strip [height, len(texts) * size, 3] uint8 with each text centred over its panel."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (size * len(texts), height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, t in enumerate(texts):
        w = draw.textlength(t)
        draw.text((i * size + (size - w) / 2, 1), t, fill=(40, 40, 40))
    return np.asarray(strip)


def compose(image: torch.Tensor, driving: torch.Tensor, orbit: torch.Tensor) -> np.ndarray:
    """Frames of the showcase: image [S, S, 3], driving [T, S, S, 3], orbit [K, S, S, 3] (float in [0, 1]) ->
    uint8 [K, S + caption, 3 S, 3]; the driving video loops under the K orbit frames."""
    K, S = orbit.shape[0], orbit.shape[1]
    T = driving.shape[0]
    panels = torch.cat([image[None].expand(K, -1, -1, -1), driving[torch.arange(K) % T], orbit], dim=2)
    body = to_uint8(panels)  # [K, S, 3S, 3]
    cap = caption_strip(CAPTIONS, S)
    return np.concatenate([np.broadcast_to(cap, (K, *cap.shape)), body], axis=1)


def showcase(run_dir: str | Path, out: str | Path, size: int = 128, loops: int = 2, fps: int = 8) -> Path:
    """Write the showcase GIF (or .mp4, by the suffix) of a finished run; returns the path.

    The orbit lasts `loops` plays of the driving video (at least 24 frames)."""
    run_dir = Path(run_dir)
    if Path(out).suffix.lower() not in (".gif", ".mp4"):
        raise InputError(f"--out {out}: the showcase is a .gif or an .mp4")
    if size < 16 or fps < 1 or loops < 0:
        raise InputError(f"showcase: --size must be >= 16, --fps >= 1 and --loops >= 0, got {size}, {fps}, {loops}")
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise InputError(f"{run_dir}: not a run folder (no manifest.json)")
    if manifest.get("stages", {}).get("dynamic", {}).get("status") != "done":
        raise InputError(f"{run_dir}: the dynamic stage has not finished; run it first")
    scene_path = Path(manifest["scene"])
    if not scene_path.exists():
        raise InputError(f"{scene_path}: the run's scene is no longer there")
    picture = scene_path / "image.png" if scene_path.is_dir() else scene_path
    rgba = read_picture(picture)  # [H, W, 3|4] (a clip given alone: its frame 0)
    image = over_background(rgba, 1.0) if rgba.shape[-1] == 4 else rgba
    inputs = manifest.get("inputs") or {}  # the run's --video / --keypoints / --mask, when it was given them
    cfg = load_run_config(run_dir)
    scene = load_scene(scene_path, video=inputs.get("video"),
                       keypoints=inputs.get("keypoints") if inputs.get("keypoints") not in (None, "auto") else None,
                       mask=inputs.get("mask"),
                       max_size=cfg.max_image_size, cutout=cfg.cutout, u2net=cfg.u2net,
                       video_align=cfg.video_align, video_frames=cfg.video_frames)  # the frames the run saw
    generated = run_dir / "inputs" / "video"
    if scene.video is not None:
        video = scene.video
    elif sorted(generated.glob("[0-9][0-9][0-9].png")):
        video = torch.stack([read_image(f) for f in sorted(generated.glob("[0-9][0-9][0-9].png"))])
    else:
        raise InputError(f"{run_dir}: no driving video found (the scene has none and {generated} is missing)")
    driving = fit_square(over_background(video, 1.0), size)  # [T, S, S, 3]
    canonical, phi = load_dynamic(run_dir)
    cam = scene.camera  # the run's reference camera: the scene's camera.json, else the default one
    T = phi.num_frames
    K = max(24, loops * T)
    frames = []
    for i in range(K):
        c = Camera("orbit", cam.elevation, cam.azimuth + 360.0 * i / K, cam.radius, cam.fov_y)
        frames.append(render_4d(canonical, phi, [c], [(i % T) / max(T - 1, 1)], size, size, 1.0)[0][0, 0])
    return write_video(out, compose(fit_square(image, size), driving, torch.stack(frames)), fps=fps)


def showcase_cli(args: argparse.Namespace) -> int:
    """CLI handler of `dynapose4d showcase`."""
    path = showcase(args.run, args.out, size=args.size, loops=args.loops, fps=args.fps)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
