"""A graph-based category-agnostic pose estimator (CAPE) in the style of PoseAnything, in plain torch.

Given a support image with N annotated keypoints and their skeleton, it finds the same keypoints on a query
image. Coordinates inside the model are normalised to [0, 1] (x / width, y / height; pixel centres at
(j + 0.5) / W), images are [B, 3, S, S] in [0, 1] at the model's input size S.

Pipeline (`CAPEModel.forward`):
  1. A shared residual CNN (strides 2, 4, 8) encodes support and query; a stride-4 "fine" map (lateral from
     stride 4 + upsampled stride 8) and stride-8 tokens with a sine positional encoding.
  2. Support keypoint tokens: the support's fine map pooled under a small Gaussian around each keypoint, plus
     an encoding of the keypoint's position in the support (a layout prior).
  3. Encoder: self-attention over the query's image tokens and the keypoint tokens together.
  4. Proposal: the cosine similarity between keypoint tokens and the query's fine map (a heatmap per keypoint,
     sigmoid of the scaled similarity), soft-argmax in a small window around its peak. Confidence = the peak.
  5. Decoder: L layers of keypoint self-attention -> cross-attention to the image tokens (queries carry the
     positional encoding of the current points) + the fine features sampled at the current points -> an FFN
     whose first linear is a graph convolution over the skeleton; each layer refines the points in
     inverse-sigmoid space.
Keypoints with `mask == False` (padding, or absent from the support) are removed everywhere: attention keys,
graph, pooling; their outputs are meaningless and never influence the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, POSITIVE, Bound, Rule


@dataclass
class CAPEModelConfig:
    """Architecture of the CAPE model (stored in every checkpoint)."""

    input_size: int = 128  # square input side in pixels; predict() pads to square (white) and resizes
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # CNN channels at strides 2, 4, 8
    blocks: list[int] = field(default_factory=lambda: [1, 2, 2])  # residual blocks per CNN stage
    dim: int = 128  # transformer width
    heads: int = 4  # attention heads
    enc_layers: int = 2  # encoder layers (image tokens + keypoint tokens)
    dec_layers: int = 3  # decoder layers (each refines the points)
    ffn_dim: int = 256  # hidden width of the feed-forward blocks
    pool_sigma: float = 1.0  # support pooling Gaussian std, in stride-4 cells
    window: int = 2  # proposal soft-argmax window radius around the heatmap peak, in stride-4 cells

    RULES: ClassVar[dict[str, Rule]] = {
        "input_size": Bound(32), "widths": AT_LEAST_1, "blocks": AT_LEAST_1, "dim": AT_LEAST_1, "heads": AT_LEAST_1,
        "enc_layers": AT_LEAST_0, "dec_layers": AT_LEAST_1, "ffn_dim": AT_LEAST_1, "pool_sigma": POSITIVE,
        "window": AT_LEAST_0,
    }

    def validate(self) -> None:
        if len(self.widths) != 3 or len(self.blocks) != 3:
            raise ValueError("cape model: widths and blocks need 3 entries (strides 2, 4, 8)")
        if self.input_size % 8 or self.input_size < 32:
            raise ValueError(f"cape model: input_size must be a multiple of 8 and >= 32, got {self.input_size}")
        if self.dim % self.heads or self.dim % 4:
            raise ValueError(f"cape model: dim ({self.dim}) must be divisible by heads and by 4")


# ------------------------------------------------------------------------------------------------ helpers


def sine_encoding(xy: torch.Tensor, dim: int) -> torch.Tensor:
    """Sine/cosine encoding of normalised points [..., 2] in [0, 1] -> [..., dim] (dim/4 frequencies per axis,
    geometric from pi to 64 pi)."""
    nf = dim // 4
    freqs = math.pi * torch.pow(2.0, torch.linspace(0.0, 6.0, nf, device=xy.device, dtype=xy.dtype))  # [nf]
    a = xy.unsqueeze(-1) * freqs  # [..., 2, nf]
    return torch.cat([a.sin(), a.cos()], dim=-1).flatten(-2)  # [..., dim]


def grid_centres(h: int, w: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
                 ) -> torch.Tensor:
    """Normalised (x, y) of the cell centres of an h x w grid, row-major: [h * w, 2]."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


def skeleton_adjacency(skeleton: list[tuple[int, int]] | list[list[int]], n: int) -> torch.Tensor:
    """Symmetric 0/1 adjacency [n, n] of a skeleton (0-based index pairs), without self loops."""
    adj = torch.zeros(n, n)
    for i, j in skeleton:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"skeleton edge ({i}, {j}) out of range for {n} keypoints")
        if i != j:
            adj[i, j] = adj[j, i] = 1.0
    return adj


def normalize_adjacency(adj: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Graph-convolution operator from a 0/1 adjacency [B, N, N] and a keypoint mask [B, N] (True = present):
    symmetric, with self loops, rows and columns of absent keypoints removed (they keep only their self
    loop), each row divided by its degree (D^-1 (A + I)). Returns [B, N, N]."""
    m = mask.to(adj.dtype)
    a = ((adj + adj.transpose(1, 2)) > 0).to(adj.dtype)
    a = a * m[:, :, None] * m[:, None, :]
    eye = torch.eye(adj.shape[-1], dtype=adj.dtype, device=adj.device).expand_as(a)
    a = torch.maximum(a, eye)
    return a / a.sum(-1, keepdim=True)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1.0 - eps)
    return torch.log(x / (1.0 - x))


def _safe_key_mask(mask: torch.Tensor) -> torch.Tensor:
    """Key padding mask (True = ignore) from a keypoint mask; a sample with no keypoint keeps all keys (its
    outputs are ignored anyway) so attention never sees a row of -inf only."""
    ignore = ~mask
    return ignore & mask.any(-1, keepdim=True)


# ------------------------------------------------------------------------------------------------ backbone


class ResBlock(nn.Module):
    """Basic residual block (two 3x3 convolutions, GroupNorm)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.GroupNorm(8, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.GroupNorm(8, cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(8, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.n1(self.conv1(x)))
        y = self.n2(self.conv2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class Backbone(nn.Module):
    """CNN to a stride-4 fine map and stride-8 tokens, both `dim` channels."""

    def __init__(self, cfg: CAPEModelConfig) -> None:
        super().__init__()
        w, b = cfg.widths, cfg.blocks
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 2, 1, bias=False), nn.GroupNorm(8, w[0]), nn.ReLU())
        stages = []
        cin = w[0]
        for s in range(3):
            layers = [ResBlock(cin, w[s], 1 if s == 0 else 2)] + [ResBlock(w[s], w[s]) for _ in range(b[s] - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w[s]
        self.stages = nn.ModuleList(stages)
        self.lat4 = nn.Conv2d(w[1], cfg.dim, 1)
        self.lat8 = nn.Conv2d(w[2], cfg.dim, 1)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, S, S] in [0, 1] -> fine [B, dim, S/4, S/4] (lateral stride 4 only), coarse [B, dim, S/8, S/8]."""
        x = self.stem(img * 2.0 - 1.0)
        x = self.stages[0](x)
        f4 = self.stages[1](x)
        f8 = self.stages[2](f4)
        return self.lat4(f4), self.lat8(f8)


# ------------------------------------------------------------------------------------------------ layers


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(self.l1(x)))


class GraphFFN(nn.Module):
    """FFN whose first linear is a graph convolution: l2(relu(Â · l1(x))) with Â = normalize_adjacency(...)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, adj_hat: torch.Tensor) -> torch.Tensor:
        return self.l2(F.relu(adj_hat @ self.l1(x)))  # [B, N, N] @ [B, N, hidden]


class EncoderLayer(nn.Module):
    """Pre-norm self-attention over [image tokens; keypoint tokens] (positions added to queries and keys)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = FFN(dim, hidden)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_ignore: torch.Tensor) -> torch.Tensor:
        h = self.n1(x)
        qk = h + pos
        x = x + self.attn(qk, qk, h, key_padding_mask=key_ignore, need_weights=False)[0]
        return x + self.ffn(self.n2(x))


class DecoderLayer(nn.Module):
    """Keypoint self-attention -> cross-attention to the image (+ fine features at the points) -> graph FFN."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.sample_proj = nn.Linear(dim, dim)
        self.ffn = GraphFFN(dim, hidden)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, q: torch.Tensor, pos: torch.Tensor, sampled: torch.Tensor, memory: torch.Tensor,
                memory_pos: torch.Tensor, kp_ignore: torch.Tensor, adj_hat: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """q, pos, sampled [B, N, dim]; memory, memory_pos [B, T, dim] -> (q [B, N, dim], delta [B, N, 2])."""
        h = self.n1(q)
        q = q + self.self_attn(h + pos, h + pos, h, key_padding_mask=kp_ignore, need_weights=False)[0]
        h = self.n2(q)
        q = q + self.cross_attn(h + pos, memory + memory_pos, memory, need_weights=False)[0]
        q = q + self.sample_proj(sampled)
        q = q + self.ffn(self.n3(q), adj_hat)
        return q, self.head(q)


# ------------------------------------------------------------------------------------------------ model


class CAPEModel(nn.Module):
    """Support image + keypoints + skeleton -> the same keypoints on query images (see the module docstring)."""

    def __init__(self, cfg: CAPEModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or CAPEModelConfig()
        cfg.validate()
        d = cfg.dim
        self.backbone = Backbone(cfg)
        self.fine_fuse = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1), nn.GroupNorm(8, d), nn.ReLU(), nn.Conv2d(d, d, 1))
        self.kp_embed = nn.Parameter(torch.zeros(d))  # token type of keypoint tokens
        self.pos_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.support_pos_mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.encoder = nn.ModuleList([EncoderLayer(d, cfg.heads, cfg.ffn_dim) for _ in range(cfg.enc_layers)])
        self.enc_norm = nn.LayerNorm(d)
        self.kp_proj = nn.Linear(d, d)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-5.0))
        self.decoder = nn.ModuleList([DecoderLayer(d, cfg.heads, cfg.ffn_dim) for _ in range(cfg.dec_layers)])

    # -- pieces ------------------------------------------------------------------------------------
    def features(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone of images [B, 3, S, S] -> (fine [B, d, S/4, S/4], coarse [B, d, S/8, S/8])."""
        if img.shape[-1] != self.cfg.input_size or img.shape[-2] != self.cfg.input_size:
            raise ValueError(f"CAPE model input must be {self.cfg.input_size}x{self.cfg.input_size}, got "
                             f"{tuple(img.shape[-2:])} (use dynapose4d.cape.predict for other sizes)")
        return self.backbone(img)

    def support_tokens(self, support: torch.Tensor, keypoints: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Keypoint tokens [B, N, d]: the support's fine map (+ upsampled coarse) pooled under a Gaussian of std
        `pool_sigma` cells around each keypoint [B, N, 2] (normalised); zero for absent keypoints."""
        fine, coarse = self.features(support)
        fmap = fine + F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        B, d, h, w = fmap.shape
        kp = keypoints.float() if keypoints.dtype in (torch.float16, torch.bfloat16) else keypoints
        cells = grid_centres(h, w, fmap.device, kp.dtype)  # [h*w, 2] (geometry in full precision)
        diff = (kp[:, :, None, :] - cells[None, None]) * torch.tensor([w, h], device=fmap.device, dtype=kp.dtype)
        wgt = torch.exp(-0.5 * diff.pow(2).sum(-1) / self.cfg.pool_sigma**2)  # [B, N, h*w]
        wgt = wgt / wgt.sum(-1, keepdim=True).clamp(min=1e-8)
        tokens = wgt.to(fmap.dtype) @ fmap.flatten(2).transpose(1, 2)  # [B, N, d]
        # where the keypoint sits in the support: a layout prior (the query's own positions differ)
        tokens = tokens + self.support_pos_mlp(sine_encoding(kp, self.cfg.dim)).to(tokens.dtype)
        return tokens * mask[..., None].to(tokens.dtype)

    def forward(self, support: torch.Tensor, keypoints: torch.Tensor, mask: torch.Tensor, adjacency: torch.Tensor,
                query: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Predict the support's keypoints on the query images.

        support [Bs, 3, S, S], keypoints [Bs, N, 2] normalised, mask [Bs, N] bool (present in the support),
        adjacency [Bs, N, N] 0/1 skeleton, query [B, 3, S, S] with Bs == B or Bs == 1 (one support shared by
        every query). Returns a dict: "points" list of [B, N, 2] per decoder layer (last = the prediction),
        "proposal" [B, N, 2], "heatmap" [B, N, S/4, S/4] (sigmoid similarity), "logits" (its pre-sigmoid),
        "confidence" [B, N] (heatmap peak), all coordinates normalised to [0, 1].
        """
        tokens = self.support_tokens(support, keypoints, mask)  # [Bs, N, d]
        return self.forward_tokens(tokens, mask, adjacency, query)

    def forward_tokens(self, tokens: torch.Tensor, mask: torch.Tensor, adjacency: torch.Tensor,
                       query: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """`forward` from precomputed support tokens [Bs, N, d] (see `support_tokens`)."""
        B = query.shape[0]
        if tokens.shape[0] != B:
            tokens, mask, adjacency = (t.expand(B, *t.shape[1:]) for t in (tokens, mask, adjacency))
        mask = mask.bool()
        N = tokens.shape[1]
        fine, coarse = self.features(query)  # [B, d, h, w], [B, d, h8, w8]
        h8, w8 = coarse.shape[-2:]
        img = coarse.flatten(2).transpose(1, 2)  # [B, T, d]
        img_pos = self.pos_mlp(sine_encoding(grid_centres(h8, w8, img.device, img.dtype), self.cfg.dim))
        img_pos = img_pos.expand(B, -1, -1)
        kp_ignore = _safe_key_mask(mask)  # [B, N]
        # encoder over [image tokens; keypoint tokens]
        x = torch.cat([img, tokens + self.kp_embed], 1)
        pos = torch.cat([img_pos, torch.zeros_like(tokens)], 1)
        ignore = torch.cat([torch.zeros(B, img.shape[1], dtype=torch.bool, device=img.device), kp_ignore], 1)
        for layer in self.encoder:
            x = layer(x, pos, ignore)
        x = self.enc_norm(x)
        mem, kp = x[:, : img.shape[1]], x[:, img.shape[1]:]  # [B, T, d], [B, N, d]
        # fine query map and the similarity heatmap
        up = F.interpolate(mem.transpose(1, 2).reshape(B, -1, h8, w8), size=fine.shape[-2:], mode="bilinear",
                           align_corners=False)
        fmap = self.fine_fuse(fine + up)  # [B, d, h, w]
        h, w = fmap.shape[-2:]
        fn = F.normalize(fmap.flatten(2), dim=1)  # [B, d, h*w]
        kn = F.normalize(self.kp_proj(kp), dim=-1)  # [B, N, d]
        logits = (kn @ fn) * self.logit_scale.exp() + self.logit_bias  # [B, N, h*w]
        proposal = self._window_soft_argmax(logits, h, w)  # [B, N, 2]
        confidence = torch.sigmoid(logits.amax(-1))  # [B, N]
        # decoder
        adj_hat = normalize_adjacency(adjacency.to(kp.dtype), mask)
        pts = proposal.detach() if self.training else proposal
        q, outs = kp, []
        for layer in self.decoder:
            qpos = self.pos_mlp(sine_encoding(pts, self.cfg.dim))
            sampled = _sample(fmap, pts)  # [B, N, d]
            q, delta = layer(q, qpos, sampled, mem, img_pos, kp_ignore, adj_hat)
            new = torch.sigmoid(inverse_sigmoid(pts) + delta)
            outs.append(new)
            pts = new.detach() if self.training else new
        return {"points": outs, "proposal": proposal, "heatmap": torch.sigmoid(logits).reshape(B, N, h, w),
                "logits": logits.reshape(B, N, h, w), "confidence": confidence}

    def _window_soft_argmax(self, logits: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Soft-argmax of logits [B, N, h*w] inside a (2r+1)^2 window around each peak -> [B, N, 2] normalised."""
        r = self.cfg.window
        if logits.dtype in (torch.float16, torch.bfloat16):  # coordinates in full precision under autocast
            logits = logits.float()
        peak = logits.argmax(-1)  # [B, N]
        py, px = peak // w, peak % w
        ys = torch.arange(h, device=logits.device)
        xs = torch.arange(w, device=logits.device)
        iny = (ys[None, None] - py[..., None]).abs() <= r  # [B, N, h]
        inx = (xs[None, None] - px[..., None]).abs() <= r  # [B, N, w]
        win = (iny[..., :, None] & inx[..., None, :]).flatten(-2)  # [B, N, h*w]
        wgt = torch.softmax(logits.masked_fill(~win, float("-inf")), -1)
        cells = grid_centres(h, w, logits.device, logits.dtype)  # [h*w, 2]
        return (wgt[..., None] * cells).sum(-2)  # elementwise, not a matmul: stays full precision under autocast


def _sample(fmap: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Bilinear features of fmap [B, d, h, w] at normalised points [B, N, 2] -> [B, N, d]."""
    grid = (pts * 2.0 - 1.0)[:, :, None, :]  # [B, N, 1, 2], align_corners=False convention
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)  # [B, d, N, 1]
    return out[..., 0].transpose(1, 2)


# ------------------------------------------------------------------------------------------------ losses


def heatmap_target(points: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """Gaussian heatmaps [B, N, h, w] (peak 1, std `sigma` cells) at normalised points [B, N, 2]."""
    cells = grid_centres(h, w, points.device, points.dtype)  # [h*w, 2]
    diff = (points[:, :, None, :] - cells[None, None]) * torch.tensor([w, h], device=points.device,
                                                                       dtype=points.dtype)
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / sigma**2).reshape(*points.shape[:2], h, w)


def cape_loss(out: dict, target: torch.Tensor, weight: torch.Tensor, heat_sigma: float = 1.0,
              lambda_heat: float = 10.0, heat_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Training losses of `CAPEModel.forward`'s output against target points [B, N, 2] (normalised).

    weight [B, N] >= 0 (0 = ignore: padded, absent from the support, or unlabelled); heat_mask [B, N] bool
    selects the keypoints the heatmap term sees (default weight > 0; e.g. only the visible ones). Every term is
    normalised by the number of (weighted) keypoints: heatmap MSE (mean over cells) x lambda_heat, L1 of the
    proposal, L1 of every decoder layer. Returns {"loss", "loss_heatmap", "loss_proposal", "loss_points"}.
    """
    weight = weight.to(target.dtype)
    n = weight.sum().clamp(min=1.0)
    hm = out["heatmap"]
    hmask = (weight > 0) if heat_mask is None else heat_mask
    tgt = heatmap_target(target, hm.shape[-2], hm.shape[-1], heat_sigma)
    mse = (hm - tgt).pow(2).flatten(2).mean(-1)  # [B, N]
    l_heat = (mse * hmask.to(mse.dtype)).sum() / hmask.sum().clamp(min=1)
    l_prop = ((out["proposal"] - target).abs().sum(-1) * weight).sum() / n
    l_pts = sum(((p - target).abs().sum(-1) * weight).sum() / n for p in out["points"])
    loss = lambda_heat * l_heat + l_prop + l_pts
    return {"loss": loss, "loss_heatmap": l_heat.detach(), "loss_proposal": l_prop.detach(),
            "loss_points": (out["points"][-1] - target).abs().sum(-1).mul(weight).sum().detach() / n}
