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


def _soft_edges(img: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fractional alpha on the mask's edge pixels: with F the colour of the nearest interior pixels (those whose
    8 neighbours are all in the mask), an edge pixel I = a F + (1 - a) bg gives a = (I - bg).(F - bg) / |F - bg|^2,
    and its straight colour becomes F. Edge pixels with no interior nearby, or F too close to bg, keep alpha 1.
    Computed on the mask's bounding box grown by `_EDGE_REACH` pixels (the same numbers as on the whole frame:
    nothing farther from the mask is read or changed), so a small object in a 4K frame costs what its box does."""
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    out = torch.cat([img.clone(), mask.float()[..., None]], -1)  # [H, W, 4]
    if len(rows) == 0:
        return out
    H, W = mask.shape
    y0, y1 = max(0, int(rows[0]) - _EDGE_REACH), min(H, int(rows[-1]) + 1 + _EDGE_REACH)
    x0, x1 = max(0, int(cols[0]) - _EDGE_REACH), min(W, int(cols[-1]) + 1 + _EDGE_REACH)
    out[y0:y1, x0:x1] = _soft_edges_box(img[y0:y1, x0:x1], bg, mask[y0:y1, x0:x1], threshold)
    return out


_EDGE_REACH = 4  # margin around the mask's box for `_soft_edges_box`: its erosion reads 1 px beyond the mask; 4 is safe


def _soft_edges_box(img: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """`_soft_edges` on a crop [h, w] that holds the whole mask with a margin of `_EDGE_REACH` (or the frame's
    edge) -> RGBA [h, w, 4]."""
    m = mask.float()[None, None]  # [1, 1, H, W]
    interior = (-F.max_pool2d(-m, 3, stride=1, padding=1))[0, 0] > 0.5  # eroded mask [H, W]
    edge = mask & ~interior
    alpha = mask.float()
    colour = img.clone()
    if not edge.any() or not interior.any():
        return torch.cat([colour, alpha[..., None]], -1)
    fg = torch.zeros_like(img)  # [H, W, 3] estimated object colour of edge pixels
    have = torch.zeros_like(mask)  # edge pixels with an estimate
    for _ in range(2):  # spread interior colours 2 px outwards (normalised 3x3 average of known colours)
        known = (interior | have).float()  # [H, W]
        field = torch.where(interior[..., None], img, fg) * known[..., None]  # [H, W, 3]
        cnt = F.avg_pool2d(known[None, None], 3, stride=1, padding=1)[0, 0]
        avg = F.avg_pool2d(field.permute(2, 0, 1)[None], 3, stride=1, padding=1)[0].permute(1, 2, 0)
        new = edge & ~have & (cnt > 0)
        fg[new] = (avg / cnt.clamp(min=1e-8)[..., None])[new]
        have = have | new
    d = fg - bg  # [H, W, 3]
    ok = have & (d.norm(dim=-1) > threshold)
    a = ((img - bg) * d).sum(-1) / d.pow(2).sum(-1).clamp(min=1e-8)
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

    Returns labels [H, W] int64 (0 outside the mask, 1..K inside) and sizes [K + 1] (sizes[0] = 0). Run-length
    union-find in plain numpy + Python: the cost grows with the number of horizontal runs, not of pixels."""
    mask = np.asarray(mask, dtype=bool)
    H, W = mask.shape
    padded = np.zeros((H, W + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)  # +1 at a run start, -1 one past its end
    rows_s, cols_s = np.nonzero(d == 1)
    _, cols_e = np.nonzero(d == -1)  # same row-major order as the starts
    n = len(rows_s)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    slack = 1 if diagonal else 0
    row_first = np.searchsorted(rows_s, np.arange(H + 1))  # runs of row r: row_first[r] .. row_first[r+1]
    for r in range(1, H):
        a, a_end = int(row_first[r - 1]), int(row_first[r])
        b, b_end = a_end, int(row_first[r + 1])
        while a < a_end and b < b_end:
            if cols_s[a] < cols_e[b] + slack and cols_s[b] < cols_e[a] + slack:
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if cols_e[a] < cols_e[b]:
                a += 1
            else:
                b += 1
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    uniq, run_label = np.unique(roots, return_inverse=True)
    labels = np.zeros((H, W), dtype=np.int64)
    lengths = cols_e - cols_s
    run_label = run_label.reshape(-1) + 1
    for i in range(n):
        labels[rows_s[i], cols_s[i]:cols_e[i]] = run_label[i]
    sizes = np.zeros(len(uniq) + 1, dtype=np.int64)
    np.add.at(sizes, run_label, lengths)
    return labels, sizes
