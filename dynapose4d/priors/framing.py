"""Framing of non-square images for the diffusion priors, which work on fixed-size (square) images.

The priors never squeeze an image: it is padded with the background colour (white) to the model's aspect ratio,
centred, then resized; outputs are resized back to the padded size and cropped to the original box. A camera
that sees the padded square (same focal length in pixels, same centre) has the vertical field of view
`square_fov_y`: the one of the image's longer side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Box:
    """Where the original image [H, W] sits in its padded version [padded_h, padded_w] (pixels)."""

    top: int
    left: int
    height: int
    width: int
    padded_h: int
    padded_w: int


def padded_box(height: int, width: int, aspect: float = 1.0) -> Box:
    """The smallest centred padding of an H x W image to width / height = `aspect` (one side kept)."""
    if width >= aspect * height:  # too wide: add rows
        pw, ph = width, max(height, round(width / aspect))
    else:  # too tall: add columns
        ph, pw = height, max(width, round(height * aspect))
    return Box((ph - height) // 2, (pw - width) // 2, height, width, ph, pw)


def pad_to_aspect(images: torch.Tensor, aspect: float = 1.0, value: float = 1.0) -> tuple[torch.Tensor, Box]:
    """Pad images [B, C, H, W] with `value` (white: 1) to width / height = `aspect`, centred. Returns the padded
    images [B, C, H', W'] and the original's box in them."""
    H, W = images.shape[-2:]
    box = padded_box(int(H), int(W), aspect)
    if (box.padded_h, box.padded_w) == (H, W):
        return images, box
    pad = (box.left, box.padded_w - W - box.left, box.top, box.padded_h - H - box.top)
    return F.pad(images, pad, mode="constant", value=value), box


def crop_back(images: torch.Tensor, box: Box) -> torch.Tensor:
    """Images [B, C, h, w] made from a padded image (any size of the padded aspect) -> [B, C, H, W] of the
    original box: resized to the padded size (antialiased), then cropped."""
    if tuple(images.shape[-2:]) != (box.padded_h, box.padded_w):
        images = F.interpolate(images, (box.padded_h, box.padded_w), mode="bilinear", align_corners=False,
                               antialias=True)
    return images[..., box.top:box.top + box.height, box.left:box.left + box.width]


def square_fov_y(fov_y: float, width: int, height: int) -> float:
    """Vertical field of view (degrees) of a W x H image (vertical fov `fov_y`) padded to a centred square."""
    if width <= height:
        return float(fov_y)
    return math.degrees(2.0 * math.atan(math.tan(math.radians(fov_y) / 2.0) * width / height))
