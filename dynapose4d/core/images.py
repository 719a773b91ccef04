"""Pixels: float images in [0, 1] to uint8, compositing RGBA (straight or premultiplied) over a background, and
resizing."""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per-channel mean and deviation of ImageNet-trained networks' inputs
IMAGENET_STD = (0.229, 0.224, 0.225)  # (PoseAnything's backbone, MP-100 crops, U²-Net)


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float image(s) in [0, 1] (any leading dims, channels last) -> uint8 numpy."""
    if torch.is_tensor(img):
        img = img.detach().float().cpu().numpy()
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def over_background(rgba: torch.Tensor, bg: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Composite straight RGBA [..., 4] over a background colour -> RGB [..., 3]."""
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + (1.0 - a) * bg


def premultiplied_over(rgb: torch.Tensor, alpha: torch.Tensor, bg: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Composite premultiplied colour [..., 3] with its alpha [..., 1] (a render) over a background colour."""
    return rgb + (1.0 - alpha) * bg


def straight_rgba(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Premultiplied colour [..., 3] and alpha [..., 1] (a render over black) -> straight RGBA [..., 4] in [0, 1]
    (colour 0 where alpha <= 1e-6)."""
    straight = torch.where(alpha > 1e-6, rgb / alpha.clamp(min=1e-6), torch.zeros_like(rgb)).clamp(0, 1)
    return torch.cat([straight, alpha.clamp(0, 1)], dim=-1)


def resize(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Images [F, H, W, C] in [0, 1] -> [F, h, w, C] (bilinear, antialiased, clamped to [0, 1]); `size` is
    (h, w) or one int for a square."""
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                        align_corners=False, antialias=True)  # [F, C, h, w]
    return x.permute(0, 2, 3, 1).clamp(0, 1)
