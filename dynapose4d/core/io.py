"""Files: PNG read/write (float [0, 1] tensors), mp4 (imageio-ffmpeg) and gif, text, JSON and checkpoints
(pixels themselves: dynapose4d.core.images).

Every writer here is atomic (`atomic_path`: a temporary name in the same folder, renamed when complete), and whole
folders are replaced atomically with `atomic_folder`: a file or folder is either the old one or the new one, never
half-written. Code elsewhere writes through these two."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from PIL import Image, ImageOps

from dynapose4d.core.errors import InputError
from dynapose4d.core.images import to_uint8


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary name beside `path` (".<name>.<pid>.tmp", plus `path`'s suffix with `keep_suffix`, for writers
    that choose the format by it) to write to; renamed to `path` when the block ends, removed when it raises.
    Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" + (path.suffix if keep_suffix else ""))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside `path` to fill; when the block ends it replaces `path` whole (the old folder,
    if any, removed), when it raises it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.{os.getpid()}.old")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif")  # `read_image` reads
_HEIF_SUFFIXES = (".heic", ".heif")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".gif")  # video files `iter_video` reads


@functools.cache
def _heif_opener() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif), once, when such a file is first read. pillow-heif applies the file's
    own rotation and mirroring and resets its EXIF orientation, so `exif_transpose` does not turn it twice."""
    from pillow_heif import register_heif_opener

    register_heif_opener()


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file (PNG, JPEG, WebP, BMP, TIFF, HEIC/HEIF) as float32 [H, W, C] in [0, 1], C = 3 or 4, the
    way an image viewer shows it: the camera's EXIF orientation applied; grey becomes RGB and grey + alpha RGBA; a
    palette image RGBA when it has a transparent colour, else RGB; CMYK and other colour spaces RGB. 16-bit grey
    keeps its 16 bits."""
    path = Path(path)
    if path.suffix.lower() in _HEIF_SUFFIXES:
        _heif_opener()
    try:
        with warnings.catch_warnings():  # a photo over Pillow's first limit (89 megapixels) is still read
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                arr = _pixels(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    except Image.DecompressionBombError:
        raise InputError(f"{path}: over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, too large to read: "
                         "scale it down") from None
    except Exception as e:  # Pillow raises many types for corrupt or unknown files
        raise InputError(f"{path}: unreadable image ({type(e).__name__})") from None
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    elif arr.shape[-1] == 2:  # grey + alpha
        arr = np.concatenate([arr[..., :1].repeat(3, axis=-1), arr[..., 1:]], axis=-1)
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return torch.from_numpy(arr.astype(np.float32) / scale)


def _pixels(im: Image.Image) -> np.ndarray:
    """uint8 or uint16 samples [H, W] (grey), [H, W, 2] (grey + alpha), [H, W, 3] or [H, W, 4] of a Pillow image."""
    mode = im.mode
    if mode in ("RGB", "RGBA", "L", "LA"):
        return np.asarray(im)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 16-bit grey from some decoders, held in 32-bit integers
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise InputError("32-bit integer samples beyond 16 bits: save it with 8 or 16 bits per sample")
        return arr.astype(np.uint16)
    if mode in ("F", "I;32", "I;32B"):
        raise InputError(f"{mode!r} samples (32-bit): save it with 8 or 16 bits per sample")
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        rgba = mode == "PA" or "transparency" in im.info
        return np.asarray(im.convert("RGBA" if rgba else "RGB"))
    if mode in ("RGBa", "La"):  # premultiplied alpha
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX


def write_image(path: str | Path, img: torch.Tensor | np.ndarray) -> None:
    """Write a float [H, W, C] image in [0, 1] as PNG (atomically; encoded in memory first, so a full disk is one
    OSError from the write, with no encoder left to retry it when it is collected)."""
    write_bytes(path, iio.imwrite("<bytes>", to_uint8(img), extension=Path(path).suffix or ".png"))


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, fps: int = 12) -> Path:
    """Write frames [T, H, W, 3] (float in [0, 1] or uint8) as .mp4 (H.264 via imageio-ffmpeg) or .gif,
    chosen by the suffix. Sizes are padded to even numbers for H.264. Atomic. Returns the path."""
    path = Path(path)
    arr = frames if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 else to_uint8(frames)
    arr = arr[..., :3]
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"{path}: video suffix must be .mp4 or .gif")
    with atomic_path(path, keep_suffix=True) as tmp:
        if path.suffix == ".mp4":
            h, w = arr.shape[1:3]
            arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            import imageio_ffmpeg

            writer = imageio_ffmpeg.write_frames(
                str(tmp), (arr.shape[2], arr.shape[1]), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                macro_block_size=1, quality=8, ffmpeg_log_level="error",
            )
            writer.send(None)
            for f in arr:
                writer.send(np.ascontiguousarray(f))
            writer.close()
        else:
            tmp.write_bytes(iio.imwrite("<bytes>", arr, extension=".gif", duration=int(1000 / fps), loop=0))
    return path


def iter_video(path: str | Path) -> Iterator[np.ndarray]:
    """The frames of a video file one at a time, uint8 [H, W, 3] ([H, W, 4] for a GIF with a transparent colour),
    so that a long video is never held whole in float; InputError when unreadable. A GIF is read by Pillow, each
    stored frame once (ffmpeg resamples a GIF's frame delays to a constant rate: a one-frame GIF came out as 12
    frames); everything else by ffmpeg."""
    path = Path(path)
    if path.suffix.lower() == ".gif":
        yield from _gif_frames(path)
        return
    gen = _ffmpeg_frames(path)
    try:
        w, h = next(gen)["size"]
        for f in gen:
            yield np.frombuffer(f, dtype=np.uint8).reshape(h, w, 3).copy()  # writable
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: unreadable video ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    finally:
        gen.close()


def _gif_frames(path: Path) -> Iterator[np.ndarray]:
    """The stored frames of a GIF (Pillow composes each onto the previous as the file's disposal says)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with Image.open(path) as im:
            alpha = "transparency" in im.info or im.mode in ("RGBA", "PA", "LA")
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                yield np.asarray(im.convert("RGBA" if alpha else "RGB")).copy()
    except InputError:
        raise
    except Exception as e:  # Pillow raises many types for corrupt files
        raise InputError(f"{path}: unreadable GIF ({type(e).__name__})") from None


def read_first_frame(path: str | Path) -> tuple[torch.Tensor, bool]:
    """Frame 0 of a video file as float32 [H, W, 3] in [0, 1] ([H, W, 4]: a GIF with transparency), and whether
    another frame follows (a GIF of one frame is a still picture); InputError when unreadable or empty."""
    gen = iter_video(path)
    try:
        first = next(gen, None)
        if first is None:
            raise InputError(f"{path}: the video has 0 frames")
        more = next(gen, None) is not None
    finally:
        gen.close()
    return torch.from_numpy(first).float().div_(255.0), more


def read_picture(path: str | Path) -> torch.Tensor:
    """A picture file as `read_image` reads it, or, for a video file (`VIDEO_SUFFIXES`), its frame 0 as float32
    [H, W, 3|4]: the picture of a run given a clip alone."""
    if Path(path).suffix.lower() in VIDEO_SUFFIXES:
        return read_first_frame(path)[0]
    return read_image(path)


def count_video_frames(path: str | Path) -> int:
    """The number of frames of a video file from its stream (not decoded); 0 when it cannot be counted."""
    import imageio_ffmpeg

    try:
        if Path(path).suffix.lower() == ".gif":
            with Image.open(path) as im:
                return int(getattr(im, "n_frames", 1))
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except Exception:  # unreadable: `iter_video` says why
        return 0


def _ffmpeg_frames(path: Path) -> Iterator[Any]:
    """imageio-ffmpeg's reader: first its metadata, then raw RGB frames; InputError when missing or unreadable."""
    import imageio_ffmpeg

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(gen)
    except Exception as e:
        gen.close()
        raise InputError(f"{path}: unreadable video ({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
    yield meta
    yield from gen


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (temporary name in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a binary file atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_checkpoint(path: str | Path, data: dict) -> Path:
    """`torch.save` a checkpoint dict atomically (temporary name in the same folder, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return Path(path)


def load_checkpoint(path: Path, fmt: str, what: str, weights_only: bool = True) -> dict:
    """A checkpoint dict whose "format" is `fmt`; InputError naming the file when it is unreadable or another
    format (`what` names the expected kind in the message). The caller reports a missing file its own way."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        raise InputError(f"{path}: unreadable {what} ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise InputError(f"{path}: not a dynapose4d {what}")
    return data


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """Write JSON atomically (see `write_text`)."""
    import json

    return write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")
