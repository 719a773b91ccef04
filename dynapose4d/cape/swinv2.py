"""SwinV2 backbone in plain torch, as PoseAnything uses it (residual post-norm, cosine window attention with a
log-spaced continuous position bias), with the module names of the official checkpoints.

`SwinV2(embed_dim, depths, heads)` maps images [B, 3, 256, 256] to a [B, 8 * embed_dim, 16, 16] feature map:
4x4 patch embedding -> four stages (patch merging after the first three) -> LayerNorm -> bilinear x2 upsampling.
Window 16 (shift 8) where the token grid is larger than 16, else one window covering the grid, never shifted.
Buffers (`relative_coords_table`, `relative_position_index`, `attn_mask`) are computed here and stored in the
state dict under the official names. The classifier `head` is kept only so official files load strictly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def relative_coords_table(window: int) -> torch.Tensor:
    """Log-spaced relative offsets [1, 2w-1, 2w-1, 2] (channel 0 = Δrow, 1 = Δcol): t = 8 Δ / (w - 1),
    sign(t) log2(1 + |t|) / log2(8)."""
    d = torch.arange(-(window - 1), window, dtype=torch.float32)
    table = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1)[None]  # [1, 2w-1, 2w-1, 2]
    table = table / (window - 1) * 8
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


def relative_position_index(window: int) -> torch.Tensor:
    """Index [w², w²] (int64) into the flattened table for query token i and key token j of a window (row-major)."""
    r = torch.arange(window)
    coords = torch.stack(torch.meshgrid(r, r, indexing="ij")).flatten(1)  # [2, w²]
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # [2, w², w²]
    return rel[0] * (2 * window - 1) + rel[1]


def shift_attention_mask(side: int, window: int, shift: int) -> torch.Tensor:
    """Mask [nW, w², w²] of a shifted block on a side x side grid: -100 between tokens of different regions."""
    labels = torch.zeros(side, side)
    cuts = (slice(0, side - window), slice(side - window, side - shift), slice(side - shift, side))
    n = 0
    for rs in cuts:
        for cs in cuts:
            labels[rs, cs] = n
            n += 1
    win = _partition(labels[None, :, :, None], window)[..., 0]  # [nW, w²]
    diff = win[:, :, None] - win[:, None, :]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> windows [B * nW, w², C] (windows row-major, tokens row-major inside)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def _unpartition(w: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Windows [B * nW, w², C] -> [B, H, W, C]."""
    C = w.shape[-1]
    x = w.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class WindowAttention(nn.Module):
    """Cosine multi-head attention inside windows with a continuous position bias (cpb_mlp on the log table)."""

    def __init__(self, dim: int, window: int, heads: int) -> None:
        super().__init__()
        self.window, self.heads = window, heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("relative_coords_table", relative_coords_table(window))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, heads, bias=False))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B * nW, n, C], mask [nW, n, n] or None -> [B * nW, n, C]."""
        Bw, n, C = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(Bw, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [Bw, heads, n, hd]
        # logits = cos(q, k) * exp(min(logit_scale, ln 100)) + 16 sigmoid(cpb) (+ shift mask)
        q = F.normalize(q, dim=-1) * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        k = F.normalize(k, dim=-1)
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.heads)  # [(2w-1)², heads]
        pb = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)  # [heads, n, n]
        bias = (16 * torch.sigmoid(pb))[None].to(q.dtype)  # [1, heads, n, n]
        if mask is not None:
            nW = mask.shape[0]
            bias = (bias[None] + mask[None, :, None].to(q.dtype)).expand(Bw // nW, -1, -1, -1, -1)
            bias = bias.reshape(Bw, self.heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # [Bw, heads, n, hd]
        return self.proj(out.transpose(1, 2).reshape(Bw, n, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinV2Block(nn.Module):
    """Residual post-norm block: x + LN1(attn(x)), then x + LN2(mlp(x)); shifted windows when `shift` > 0."""

    def __init__(self, dim: int, side: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.side, self.window, self.shift = side, window, shift
        if shift > 0:
            self.register_buffer("attn_mask", shift_attention_mask(side, window, shift))
        else:
            self.attn_mask = None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, side², C] -> [B, side², C]."""
        B, L, C = x.shape
        S, w, s = self.side, self.window, self.shift
        h = x.view(B, S, S, C)
        if s > 0:
            h = torch.roll(h, (-s, -s), (1, 2))
        h = _unpartition(self.attn(_partition(h, w), self.attn_mask), w, S, S)
        if s > 0:
            h = torch.roll(h, (s, s), (1, 2))
        x = x + self.norm1(h.reshape(B, L, C))
        return x + self.norm2(self.mlp(x))


class PatchMerging(nn.Module):
    """2x2 merge: sub-grids (even, even), (odd, even), (even, odd), (odd, odd) in (row, col) -> 4C -> Linear 2C
    (no bias) -> LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        B, _, C = x.shape
        x = x.view(B, side, side, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.norm(self.reduction(x.reshape(B, -1, 4 * C)))


class Stage(nn.Module):
    def __init__(self, dim: int, side: int, depth: int, heads: int, window: int, downsample: bool) -> None:
        super().__init__()
        self.side = side
        w = min(window, side)
        shift = window // 2 if side > window else 0
        self.blocks = nn.ModuleList([SwinV2Block(dim, side, heads, w, shift if i % 2 else 0) for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x, self.side)


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int = 4) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # [B, side², C]


class SwinV2(nn.Module):
    """SwinV2 feature extractor: images [B, 3, img, img] -> [B, 8 * embed_dim, img / 16, img / 16]."""

    def __init__(self, embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 heads: tuple[int, ...] = (3, 6, 12, 24), window: int = 16, img_size: int = 256,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(embed_dim)
        side = img_size // 4
        layers = []
        for i, (d, h) in enumerate(zip(depths, heads)):
            layers.append(Stage(embed_dim * 2**i, side // 2**i, d, h, window, i < len(depths) - 1))
        self.layers = nn.ModuleList(layers)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)  # unused ImageNet classifier (in official files)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [B, 3, S, S] (ImageNet-normalised) -> features [B, C, S/16, S/16] (x2 bilinear upsampled)."""
        if img.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"SwinV2 input must be {self.img_size}x{self.img_size}, got {tuple(img.shape[-2:])}")
        x = self.patch_embed(img)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # [B, side², C]
        B, L, C = x.shape
        side = int(round(math.sqrt(L)))
        x = x.transpose(1, 2).reshape(B, C, side, side)
        return F.interpolate(x, size=(2 * side, 2 * side), mode="bilinear", align_corners=False)
