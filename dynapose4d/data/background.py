"""Background removal for images without alpha: an RGB image on a uniform background -> RGBA (`remove_background`).

The method and its limits:
  the background colour is the median of the image's border pixels (a ring of ~1.5% of the size, >= 1 px);
  a pixel is object when its RGB Euclidean distance to that colour exceeds `threshold` (0.1 on [0, 1] RGB);
  the mask is cleaned: components smaller than 10% of the largest are dropped (noise, stray specks), and
  enclosed background holes smaller than 0.5% of the object area are filled.
  It needs a uniform background: if fewer than 90% of the border pixels are within `threshold` of the median
  colour (gradients, textures, real photographs, an object covering much of the border) it refuses with
  "no alpha and the background is not a uniform colour: provide an RGBA image". It cannot separate object
  parts whose colour is within `threshold` of the background (a white shirt on white): those become holes,
  or are cut off where they touch the outside; large enclosed background-coloured regions stay transparent.
  Shadows count as object when they differ enough. Alpha is binary except on the mask's 1-px edge, where it is
  unmixed against the colour of the neighbouring interior (`_soft_edges`); thin parts without interior pixels
  and textured edges get alpha 1, and alpha below ~threshold / |object - background| is cut to 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BG_THRESHOLD = 0.1  # background removal: RGB distance to the border colour above which a pixel is object
BORDER_UNIFORM = 0.9  # background removal: fraction of border pixels that must match the border colour
_EDGE_REACH = 4  # how far (px) the edge unmixing of one pixel reads: its erosion and two spreading passes
_EDGE_TILE = 64  # side of the squares the edge unmixing works on (small: less work away from the outline; large:
# fewer calls)


def remove_background(rgb: torch.Tensor, threshold: float = BG_THRESHOLD, uniform: float = BORDER_UNIFORM
                      ) -> torch.Tensor | None:
    """RGBA [H, W, 4] of an RGB image [H, W, 3] on a uniform background, or None when the border is not uniform
    enough to estimate the background colour (see the module docstring for the method and its limits)."""
    img = rgb.detach().float().cpu()[..., :3]
    H, W = img.shape[:2]
    b = max(1, round(0.015 * min(H, W)))
    ring = torch.ones(H, W, dtype=torch.bool)
    ring[b:H - b, b:W - b] = False
    border = img[ring]  # [P, 3]
    bg = border.median(dim=0).values  # [3]
    if (border - bg).norm(dim=-1).le(threshold).float().mean().item() < uniform:
        return None
    mask = torch.from_numpy(clean_mask(((img - bg).norm(dim=-1) > threshold).numpy()))  # [H, W] bool
    return _soft_edges(img, bg, mask, threshold)


def _soft_edges(img: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, threshold: float, tile: int = _EDGE_TILE
                ) -> torch.Tensor:
    """Fractional alpha on the mask's edge pixels: with F the colour of the nearest interior pixels (those whose
    8 neighbours are all in the mask), an edge pixel I = a F + (1 - a) bg gives a = (I - bg).(F - bg) / |F - bg|^2,
    and its straight colour becomes F. Edge pixels with no interior nearby, or F too close to bg, keep alpha 1.
    Only edge pixels change, and each reads nothing farther than `_EDGE_REACH` pixels, so the work is done on the
    `tile` x `tile` squares that hold an edge pixel, each with that margin, in one batch: the same numbers as on the
    whole frame (`_soft_edges_dense`), at a cost that grows with the object's outline, not its area."""
    H, W = mask.shape
    out = torch.cat([img, mask.float()[..., None]], -1)  # [H, W, 4]: colour and alpha where nothing changes
    interior = _eroded_frame(mask)  # [H, W]
    edge = mask & ~interior
    if not edge.any() or not interior.any():
        return out
    r, T = _EDGE_REACH, tile
    squares = torch.unique(edge.nonzero() // T, dim=0)  # [B, 2] (row, column) of the squares with an edge pixel
    span = torch.arange(-r, T + r)  # [S] a square with its margin
    rows = (squares[:, 0] * T)[:, None, None] + span[None, :, None]  # [B, S, 1] frame rows
    cols = (squares[:, 1] * T)[:, None, None] + span[None, None, :]  # [B, 1, S] frame columns
    valid = (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)  # [B, S, S] inside the frame
    rc, cc = rows.clamp(0, H - 1), cols.clamp(0, W - 1)
    part = _soft_edges_dense(img[rc, cc], bg, mask[rc, cc] & valid, threshold, valid)  # [B, S, S, 4]
    core = valid.clone()
    core[:, :r] = False
    core[:, T + r:] = False
    core[:, :, :r] = False
    core[:, :, T + r:] = False  # each square's own pixels (the margins belong to its neighbours or to nothing)
    out[rc.expand_as(core)[core], cc.expand_as(core)[core]] = part[core]
    return out


def _eroded_frame(mask: torch.Tensor) -> torch.Tensor:
    """`_eroded` of one whole frame's mask [H, W] bool, by OpenCV (the same pixels, ~50x faster at 4K)."""
    import cv2

    m = np.ascontiguousarray(mask.numpy().astype(np.uint8))
    return torch.from_numpy(cv2.erode(m, np.ones((3, 3), np.uint8)) > 0)  # outside the frame does not count


def _eroded(mask: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Interior of masks [B, h, w] bool: in the mask and every 8-neighbour in the mask, where neighbours outside
    `valid` (the frame; default: the crop is the frame) do not count against it."""
    m = (mask if valid is None else mask | ~valid).float()[:, None]  # [B, 1, h, w]
    out = (-F.max_pool2d(-m, 3, stride=1, padding=1))[:, 0] > 0.5
    return out if valid is None else out & mask & valid


def _soft_edges_dense(img: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, threshold: float,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """`_soft_edges` computed densely: img [..., h, w, 3], mask [..., h, w] bool, valid [..., h, w] bool (the
    pixels inside the frame; default all) -> RGBA [..., h, w, 4]. Exact for the valid pixels at least
    `_EDGE_REACH` from the crop's sides that are not also the frame's."""
    lead = mask.shape[:-2]
    img, mask = img.reshape(-1, *img.shape[-3:]), mask.reshape(-1, *mask.shape[-2:])  # [B, h, w, 3], [B, h, w]
    valid = None if valid is None else valid.reshape(mask.shape)
    interior = _eroded(mask, valid)
    edge = mask & ~interior if valid is None else mask & ~interior & valid
    alpha = mask.float()
    if edge.any() and interior.any():
        fg = torch.zeros_like(img)  # [B, h, w, 3] estimated object colour of edge pixels
        have = torch.zeros_like(mask)  # edge pixels with an estimate
        for _ in range(2):  # spread interior colours 2 px outwards (normalised 3x3 average of known colours)
            known = (interior | have).float()  # [B, h, w]
            field = torch.where(interior[..., None], img, fg) * known[..., None]  # [B, h, w, 3]
            both = torch.cat([field, known[..., None]], -1).permute(0, 3, 1, 2)  # [B, 4, h, w]
            sums = F.avg_pool2d(both, 3, stride=1, padding=1).permute(0, 2, 3, 1)  # [B, h, w, 4]
            avg, cnt = sums[..., :3], sums[..., 3]
            new = edge & ~have & (cnt > 0)
            fg[new] = (avg / cnt.clamp(min=1e-8)[..., None])[new]
            have = have | new
        out = unmix(img, fg, bg, alpha, have, threshold)
    else:
        out = torch.cat([img, alpha[..., None]], -1)
    return out.reshape(*lead, *mask.shape[-2:], 4)


def unmix(img: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor, candidates: torch.Tensor,
          threshold: float) -> torch.Tensor:
    """RGBA [..., 4] of pixels img [..., 3] with alpha [...]: where `candidates` [...] and the object colour fg
    [..., 3] is farther than `threshold` from the background colour bg ([..., 3] or [3]), the pixel is read as
    I = a fg + (1 - a) bg: alpha a = (I - bg).(fg - bg) / |fg - bg|^2 clamped to [0, 1], colour fg (straight);
    elsewhere img and `alpha` as given. The edge unmixing of both background removals."""
    d = fg - bg  # [..., 3]
    ok = candidates & (d.norm(dim=-1) > threshold)
    a = ((img - bg) * d).sum(-1) / d.pow(2).sum(-1).clamp(min=1e-8)
    alpha, colour = alpha.clone(), img.clone()
    alpha[ok] = a[ok].clamp(0.0, 1.0)
    colour[ok] = fg[ok]
    return torch.cat([colour, alpha[..., None]], -1)


def clean_mask(mask: np.ndarray, keep_ratio: float = 0.1, hole_ratio: float = 0.005) -> np.ndarray:
    """Drop 8-connected components smaller than `keep_ratio` x the largest, then fill enclosed (4-connected)
    background holes smaller than `hole_ratio` x the object area (at least 4 px). [H, W] bool -> [H, W] bool."""
    labels, sizes = connected_components(mask, diagonal=True)
    if len(sizes) <= 1:
        return mask.copy()
    keep = sizes >= keep_ratio * sizes[1:].max()
    keep[0] = False
    out = keep[labels]
    bg_labels, bg_sizes = connected_components(~out, diagonal=False)
    edge = np.unique(np.concatenate([bg_labels[0], bg_labels[-1], bg_labels[:, 0], bg_labels[:, -1]]))
    fill = bg_sizes <= max(4.0, hole_ratio * out.sum())
    fill[0] = False
    fill[edge] = False
    return out | fill[bg_labels]


def connected_components(mask: np.ndarray, diagonal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Label the connected components of a bool mask [H, W] (8-connected if `diagonal`, else 4-connected).

    Returns labels [H, W] int64 (0 outside the mask, 1..K inside) and sizes [K + 1] (sizes[0] = 0). OpenCV's
    `connectedComponentsWithStats`."""
    import cv2

    m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    k, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8 if diagonal else 4, ltype=cv2.CV_32S)
    sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int64)  # [K + 1]
    sizes[0] = 0
    return labels.astype(np.int64), sizes
