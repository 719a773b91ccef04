"""Textured backgrounds, made by rule, to put the synthetic objects on (tests/test_cutout.py and
experiments/cutout_eval.py): none is a uniform colour, so the plain-background removal refuses all of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BACKGROUNDS = ("noise", "stripes", "clutter", "grain")


def make_background(name: str, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """An RGB background [h, w, 3] in [0, 1]: "noise" (smooth colour noise), "stripes" (diagonal stripes of two
    colours), "clutter" (a gradient under 25 random rectangles and ellipses), "grain" (one colour with strong
    per-pixel noise and a vignette, like a plain wall shot at high ISO)."""
    rng = np.random.default_rng(1000 + seed * 31 + BACKGROUNDS.index(name))
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")  # [h, w]
    if name == "noise":
        grid = torch.from_numpy(rng.uniform(0.1, 0.9, (1, 3, 6, 6))).float()
        return F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0).clamp(0, 1)
    if name == "stripes":
        c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
        while np.linalg.norm(c0 - c1) < 0.35:  # two colours that differ: not a nearly uniform background
            c1 = rng.uniform(0.1, 0.9, 3)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy) * rng.uniform(4, 8))
        out = c0 * t[..., None] + c1 * (1 - t[..., None])
    elif name == "clutter":
        a, b = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
        out = a * yy[..., None] + b * (1 - yy[..., None])
        for _ in range(25):
            cy, cx = rng.uniform(0, 1, 2)
            ry, rx = rng.uniform(0.03, 0.15, 2)
            inside = ((np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)) if rng.random() < 0.5 else \
                (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
            out[inside] = rng.uniform(0.05, 0.95, 3)
    elif name == "grain":
        base = rng.uniform(0.3, 0.8, 3)
        vignette = 1 - 0.35 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
        out = base * vignette[..., None] + rng.normal(0, 0.08, (h, w, 3))
    else:
        raise ValueError(f"unknown background {name!r}; choose from {BACKGROUNDS}")
    return torch.from_numpy(np.clip(out, 0, 1)).float()


def composite(rgba: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Straight RGBA [..., H, W, 4] over an RGB background [H, W, 3] -> RGB [..., H, W, 3]."""
    a = rgba[..., 3:]
    return rgba[..., :3] * a + background * (1 - a)
