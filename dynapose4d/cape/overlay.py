"""Keypoints and skeletons drawn on images (PIL.ImageDraw), for the cape stage's overlay video."""

from __future__ import annotations

import colorsys

import numpy as np
import torch


def keypoint_colours(n: int) -> list[tuple[int, int, int]]:
    """n distinct RGB colours (hues evenly spaced)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 0.95)) for i in range(n)]


def draw_keypoints(image: torch.Tensor, points: torch.Tensor, skeleton: list[tuple[int, int]],
                   confidence: torch.Tensor | None = None, min_side: int = 256, low: float = 0.3,
                   labels: bool = False, max_side: int = 4096) -> np.ndarray:
    """Draw keypoints [N, 2] (pixels of `image`) and skeleton lines on an image [H, W, 3] in [0, 1].

    The image is enlarged (nearest neighbour, integer factor) until its shorter side is >= `min_side`, but not
    past `max_side` on its longer side (a long strip stays within what a video encoder takes).
    Keypoints with confidence < `low` are drawn hollow; `labels` writes each keypoint's index beside it.
    Returns uint8 [H', W', 3]."""
    from PIL import Image, ImageDraw

    H, W = image.shape[:2]
    f = max(1, min(-(-min_side // min(H, W)), max_side // max(H, W)))
    arr = (image.detach().float().cpu().clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    arr = arr.repeat(f, 0).repeat(f, 1)
    im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    pts = (points.detach().float().cpu() * f).tolist()
    conf = None if confidence is None else confidence.detach().float().cpu().tolist()
    cols = keypoint_colours(len(pts))
    lw = max(1, f // 2 + 1)
    for i, j in skeleton:
        d.line([tuple(pts[i]), tuple(pts[j])], fill=(40, 40, 40), width=lw + 2)
        d.line([tuple(pts[i]), tuple(pts[j])], fill=(235, 235, 235), width=lw)
    r = max(2, 2 * f)
    for k, (x, y) in enumerate(pts):
        box = [x - r, y - r, x + r, y + r]
        if conf is not None and conf[k] < low:
            d.ellipse(box, outline=cols[k], width=max(1, f // 2))
        else:
            d.ellipse(box, fill=cols[k], outline=(0, 0, 0))
        if labels:
            d.text((x + r + 1, y - r - 1), str(k), fill=(0, 0, 0), stroke_width=2, stroke_fill=(255, 255, 255))
    return np.asarray(im)
