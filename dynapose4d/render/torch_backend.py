"""Pure-torch tile compositing of projected Gaussians (the fallback when the C++ kernel does not build).

Same binning as gsplat (and the C++ kernel): a Gaussian is composited into the 16x16 tiles its radius box
touches, each tile's list sorted front to back by float32 depth (ties by index). Tiles are evaluated in
batches of similar list length: [tiles, 256 pixels, list] alphas, transmittance by cumprod, early stop as a
mask, so autograd gives the backward pass. Exact, but it walks every list entry for every pixel of a tile.
"""

from __future__ import annotations

import torch

from dynapose4d.render.projection import ALPHA_THRESHOLD, MAX_ALPHA, TRANSMITTANCE_STOP

TILE_SIZE = 16


def tile_bins(
    means2d: torch.Tensor,  # [N, 2] one camera
    radii: torch.Tensor,  # [N, 2] int32
    depths: torch.Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """gsplat's tile intersections for one camera.

    Returns `tile_ids` [M] and `gauss_ids` [M] (int64), sorted by tile, then by float32 depth, then by index.
    """
    tw = (width + tile_size - 1) // tile_size
    th = (height + tile_size - 1) // tile_size
    m = means2d.detach().float()  # gsplat bins in float32
    r = radii.float()
    ts = float(tile_size)
    tx, ty = m[:, 0] / ts, m[:, 1] / ts
    rx, ry = r[:, 0] / ts, r[:, 1] / ts
    x0 = torch.floor(tx - rx).clamp(0, tw)
    x1 = torch.ceil(tx + rx).clamp(0, tw)
    y0 = torch.floor(ty - ry).clamp(0, th)
    y1 = torch.ceil(ty + ry).clamp(0, th)
    ok = (radii > 0).all(dim=-1) & torch.isfinite(m).all(dim=-1)
    bw = torch.where(ok, x1 - x0, torch.zeros_like(x0)).long().clamp(min=0)
    bh = torch.where(ok, y1 - y0, torch.zeros_like(y0)).long().clamp(min=0)
    n = bw * bh  # [N] tiles per Gaussian
    order = torch.argsort(depths.detach().float(), stable=True)  # front to back
    order = order[n[order] > 0]
    counts = n[order]
    gauss = torch.repeat_interleave(order, counts)  # [M]
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(gauss.numel(), device=gauss.device) - torch.repeat_interleave(first, counts)
    w = bw[gauss]
    tile = (y0[gauss].long() + local // w) * tw + x0[gauss].long() + local % w
    srt = torch.argsort(tile, stable=True)
    return tile[srt], gauss[srt]


def composite_torch(
    means2d: torch.Tensor,  # [N, 2] one camera
    conics: torch.Tensor,  # [N, 3]
    colors: torch.Tensor,  # [N, D]
    opacities: torch.Tensor,  # [N]
    radii: torch.Tensor,  # [N, 2] int32
    depths: torch.Tensor,  # [N]
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    max_elements: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite one camera tile by tile; returns colour [H, W, D] (no background) and alpha [H, W, 1]."""
    D = colors.shape[-1]
    tw = (width + tile_size - 1) // tile_size
    th = (height + tile_size - 1) // tile_size
    n_tiles, P = tw * th, tile_size * tile_size
    tile, gauss = tile_bins(means2d, radii, depths, width, height, tile_size)
    counts = torch.bincount(tile, minlength=n_tiles)  # [T]
    starts = torch.cumsum(counts, 0) - counts

    # pixel centres of every tile, [T, P, 2], and whether each lies inside the image
    dev = means2d.device
    ly, lx = torch.meshgrid(torch.arange(tile_size, device=dev), torch.arange(tile_size, device=dev), indexing="ij")
    tyx = torch.arange(n_tiles, device=dev)
    pix_x = (tyx % tw)[:, None] * tile_size + lx.reshape(1, -1)  # [T, P]
    pix_y = (tyx // tw)[:, None] * tile_size + ly.reshape(1, -1)
    inside = (pix_x < width) & (pix_y < height)

    zero = (means2d.sum() + conics.sum() + colors.sum() + opacities.sum()) * 0  # keeps every input in the graph
    sels, outs_c, outs_a = [], [], []
    tiles_left = torch.nonzero(counts > 0).squeeze(-1)
    tiles_left = tiles_left[torch.argsort(counts[tiles_left], stable=True)]
    cnt_list = counts[tiles_left].tolist()
    idx_list = tiles_left.tolist()
    s = 0
    while s < len(idx_list):  # batches of tiles with similar list lengths
        e = s + 1
        while e < len(idx_list) and (e + 1 - s) * P * cnt_list[e] <= max_elements:
            e += 1
        sel = tiles_left[s:e]  # [B]
        L = cnt_list[e - 1]
        j = torch.arange(L, device=dev)
        valid = j[None, :] < counts[sel][:, None]  # [B, L]
        gidx = torch.where(valid, gauss[(starts[sel][:, None] + j[None, :]).clamp(max=gauss.numel() - 1)], 0)
        m, q, op, col = means2d[gidx], conics[gidx], opacities[gidx], colors[gidx]  # [B, L, ...]
        px = pix_x[sel].to(m.dtype) + 0.5  # [B, P]
        py = pix_y[sel].to(m.dtype) + 0.5
        dx = m[:, None, :, 0] - px[:, :, None]  # [B, P, L]
        dy = m[:, None, :, 1] - py[:, :, None]
        qa, qb, qc = q[:, None, :, 0], q[:, None, :, 1], q[:, None, :, 2]
        sigma = 0.5 * (qa * dx * dx + qc * dy * dy) + qb * dx * dy
        alpha = torch.clamp_max(op[:, None, :] * torch.exp(-sigma), MAX_ALPHA)
        ok = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & valid[:, None, :] & inside[sel][:, :, None]
        alpha = torch.where(ok, alpha, torch.zeros_like(alpha))
        keep = torch.cumprod(1.0 - alpha.detach(), dim=-1) > TRANSMITTANCE_STOP  # first failure stops the pixel
        alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        T_before = torch.cumprod(torch.cat([torch.ones_like(one_minus[..., :1]), one_minus[..., :-1]], -1), -1)
        w = alpha * T_before  # [B, P, L]
        c_out = torch.bmm(w, col)  # [B, P, D]
        a_out = 1.0 - T_before[..., -1:] * one_minus[..., -1:]  # [B, P, 1] = 1 - final transmittance
        sels.append(sel)
        outs_c.append(c_out)
        outs_a.append(a_out)
        s = e
    img_c = torch.zeros(n_tiles, P, D, dtype=colors.dtype, device=dev) + zero  # [T, P, D]
    img_a = torch.zeros(n_tiles, P, 1, dtype=colors.dtype, device=dev) + zero  # [T, P, 1]
    if sels:
        sel_all = torch.cat(sels)
        img_c = img_c.index_add(0, sel_all, torch.cat(outs_c))
        img_a = img_a.index_add(0, sel_all, torch.cat(outs_a))

    def to_image(x: torch.Tensor) -> torch.Tensor:  # [T, P, K] -> [H, W, K]
        K = x.shape[-1]
        x = x.reshape(th, tw, tile_size, tile_size, K).permute(0, 2, 1, 3, 4)
        return x.reshape(th * tile_size, tw * tile_size, K)[:height, :width]

    return to_image(img_c), to_image(img_a)
