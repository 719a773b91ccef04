"""PoseAnything (Hirschorn & Avidan, "A Graph-Based Approach for Category-Agnostic Pose Estimation", ECCV 2024)
in plain torch: the 1-shot SwinV2-T ("tiny") and SwinV2-S ("small") models, whose state dicts have exactly the
keys, order and shapes of the official mmcv checkpoints, so those files load strictly
(`dynapose4d.cape.poseanything.load_poseanything`).

Model (`PoseAnything.forward_details`), images [B, 3, 256, 256] ImageNet-normalised, keypoints in 256-px input
coordinates (pixel centres at integers, as mmpose):
  1. A shared SwinV2 backbone maps support and query to [B, 768, 16, 16] (`dynapose4d.cape.swinv2`).
  2. Support keypoint tokens: the support features, bilinearly resized to 64x64, pooled under each keypoint's
     sigma-1 heatmap (normalised to sum 1); zero for invisible keypoints; `query_proj` 768 -> 256.
  3. Encoder (3 layers) over [256 query tokens; N keypoint tokens]; the sine position embedding is added to the
     stream at the start of every layer; invisible keypoints are never attention keys.
  4. Proposals: dot-product similarity of the modulated keypoint tokens with the query tokens [B, N, 16, 16];
     global soft-argmax, and a local one (3x3 window around the peak) that the decoder starts from.
  5. Decoder (3 graph-transformer layers): keypoint self-attention, cross-attention on [content; position],
     an FFN whose first layer is a graph convolution over the skeleton; each layer moves the reference points
     in inverse-sigmoid space and outputs keypoints.
Keypoints come out normalised to [0, 1] over the 256x256 input (x = column / 256). PoseAnything has no
confidence output.

The official checkpoint files and the test-time data path are in `dynapose4d.cape.poseanything`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynapose4d.cape.swinv2 import SwinV2

INPUT_SIZE = 256  # model input side (px)
HEATMAP_SIZE = 64  # support heatmap side (stride 4)
VARIANTS: dict[str, dict[str, Any]] = {  # SwinV2 backbones of the two graph configs
    "tiny": {"depths": (2, 2, 6, 2)},  # configs/1shots/graph_split1_config.py (SwinV2-T)
    "small": {"depths": (2, 2, 18, 2)},  # configs/1shot-swin/graph_split1_config.py (SwinV2-S)
}


# ------------------------------------------------------------------------------------------------ encodings


def support_heatmaps(keypoints: torch.Tensor, visible: torch.Tensor, size: int = HEATMAP_SIZE, stride: int = 4
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """PoseAnything's support targets (MSRA, sigma 1): keypoints [B, N, 2] in input px -> (heatmaps [B, N, size,
    size], weight [B, N]). The 7x7 Gaussian (peak 1) sits at the rounded cell int(x / stride + 0.5), clipped at
    the border; weight = visible, 0 when the patch lies off the map; keypoints of weight 0 get a zero map."""
    kp = keypoints.detach().to(torch.float64)
    m = torch.trunc(kp / stride + 0.5).to(torch.int64)  # [B, N, 2] rounded centre (int() truncates)
    x0, y0 = m[..., 0] - 3, m[..., 1] - 3
    inside = ~((x0 >= size) | (y0 >= size) | (x0 + 7 < 0) | (y0 + 7 < 0))
    weight = visible.detach().to(torch.float32) * inside.to(torch.float32)  # [B, N]
    r = torch.arange(size, device=keypoints.device)
    dx = r[None, None, :] - m[..., 0:1]  # [B, N, size]
    dy = r[None, None, :] - m[..., 1:2]
    # exp(-d²/2) for d² = 0..18 in numpy's float32 exp, as the original computes its 7x7 kernel (torch's exp can
    # differ by one ulp)
    g = torch.from_numpy(np.exp(-np.arange(19, dtype=np.float32) / 2)).to(keypoints.device)
    d2 = dy[..., :, None] ** 2 + dx[..., None, :] ** 2  # [B, N, size, size]
    win = (dy.abs() <= 3)[..., :, None] & (dx.abs() <= 3)[..., None, :]
    maps = torch.where(win, g[d2.clamp(max=18)], torch.zeros((), device=keypoints.device))
    return maps * (weight > 0.5)[..., None, None].to(maps.dtype), weight


def _sine(v: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0) -> torch.Tensor:
    """[...] angles -> [..., num_feats]: interleaved [sin(v/d0), cos(v/d1), sin(v/d2), ...], d_k = T^(2⌊k/2⌋/F)."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=v.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    p = v[..., None] / dim_t
    return torch.stack([p[..., 0::2].sin(), p[..., 1::2].cos()], -1).flatten(-2)


def image_position_embedding(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised sine embedding [256, h, w] of an h x w grid: ŷ = (i + 1) / (h + 1e-6) 2π, channels [y; x]."""
    ys = torch.arange(1, h + 1, dtype=torch.float32, device=device) / (h + 1e-6) * (2 * math.pi)
    xs = torch.arange(1, w + 1, dtype=torch.float32, device=device) / (w + 1e-6) * (2 * math.pi)
    py, px = _sine(ys), _sine(xs)  # [h, 128], [w, 128]
    return torch.cat([py[:, None, :].expand(h, w, -1), px[None, :, :].expand(h, w, -1)], -1).permute(2, 0, 1)


def point_embedding(points: torch.Tensor) -> torch.Tensor:
    """Sine embedding [..., 256] of points [..., 2] (x, y) in [0, 1]: angles 2π y and 2π x, channels [y; x]."""
    return torch.cat([_sine(points[..., 1] * (2 * math.pi)), _sine(points[..., 0] * (2 * math.pi))], -1)


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """float16 / bfloat16 (autocast) -> float32; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def skeleton_adjacency(skeleton: Any, batch: int, n: int, device: torch.device | None = None) -> torch.Tensor:
    """0/1 symmetric adjacency [B, n, n] from 0-based pairs: one list shared by the batch, or one list per item
    (a [n, n] or [B, n, n] tensor passes through). A self-loop pair marks the diagonal. ValueError when out of range."""
    if isinstance(skeleton, torch.Tensor):
        adj = skeleton.to(device=device, dtype=torch.float32)
        return (adj if adj.ndim == 3 else adj[None]).expand(batch, n, n)
    pairs = [tuple(p) for p in skeleton] if skeleton is not None else []
    per_item = len(pairs) > 0 and all(len(p) > 0 and not isinstance(p[0], (int, float)) and
                                      not (isinstance(p[0], torch.Tensor) and p[0].ndim == 0) for p in pairs)
    lists = [list(s) for s in skeleton] if per_item else [pairs] * batch
    if len(lists) != batch:
        raise ValueError(f"skeleton: {len(lists)} per-item lists for a batch of {batch}")
    adj = torch.zeros(batch, n, n)
    for b, edges in enumerate(lists):
        for e in edges:
            i, j = (int(v) for v in e)
            if not (0 <= i < n and 0 <= j < n):
                raise ValueError(f"skeleton edge ({i}, {j}) out of range for {n} keypoints")
            adj[b, i, j] = adj[b, j, i] = 1.0
    return adj.to(device)


# ------------------------------------------------------------------------------------------------ head modules


def _mha(m: nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
         key_ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention with `m`'s weights, batch first: q [B, Lq, Eq], k [B, Lk, Ek], v [B, Lk, Ev],
    key_ignore [B, Lk] bool (True = not a key) -> [B, Lq, E]."""
    if m._qkv_same_embed_dim:
        wq, wk, wv = m.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    bq, bk, bv = m.in_proj_bias.chunk(3)
    B, Lq, _ = q.shape
    H = m.num_heads
    q = F.linear(q, wq, bq).view(B, Lq, H, -1).transpose(1, 2)  # [B, H, Lq, hd]
    k = F.linear(k, wk, bk).view(B, k.shape[1], H, -1).transpose(1, 2)
    v = F.linear(v, wv, bv).view(B, v.shape[1], H, -1).transpose(1, 2)
    logits = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)  # [B, H, Lq, Lk]
    if key_ignore is not None:
        logits = logits.masked_fill(key_ignore[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, -1)
    return m.out_proj(out)


class EncoderLayer(nn.Module):
    """Post-norm layer; the position embedding is added to the stream itself first."""

    def __init__(self, d: int = 256, heads: int = 8, ffn: int = 768) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, z: torch.Tensor, pos: torch.Tensor, key_ignore: torch.Tensor) -> torch.Tensor:
        z = z + pos
        z = self.norm1(z + _mha(self.self_attn, z, z, z, key_ignore))
        return self.norm2(z + self.linear2(F.relu(self.linear1(z))))


class Encoder(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList([EncoderLayer() for _ in range(layers)])


class GraphConv(nn.Module):
    """Two kernels in one 1x1 conv: h0 on each keypoint (self), h1 sent to its skeleton neighbours."""

    def __init__(self, d: int = 256, out: int = 768) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d, 2 * out, 1)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B, N, d], adj [B, N, N] 0/1, valid [B, N] bool -> [B, N, out]: valid(w) h0_w + Σ_v Â[v, w] h1_v with Â
        the adjacency without invalid keypoints, each row divided by its sum (zero rows stay 0)."""
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # [B, N, 2 out]
        h0, h1 = h.chunk(2, -1)
        m = valid.to(x.dtype)
        a = ((adj + adj.transpose(1, 2)) > 0).to(x.dtype) * m[:, :, None] * m[:, None, :]
        deg = a.sum(-1, keepdim=True)
        a = torch.where(deg > 0, a / deg.clamp(min=1e-12), torch.zeros_like(a))
        return m[..., None] * h0 + a.transpose(1, 2) @ h1


class DecoderLayer(nn.Module):
    """Keypoint self-attention -> cross-attention on [content; position] -> graph FFN (post-norm)."""

    def __init__(self, d: int = 256, heads: int = 8, ffn: int = 768) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.multihead_attn = nn.MultiheadAttention(2 * d, heads, kdim=2 * d, vdim=d)
        self.choker = nn.Linear(2 * d, d)
        self.ffn1 = GraphConv(d, ffn)
        self.ffn2 = nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                kp_ignore: torch.Tensor, adj: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """q, qpos [B, N, d]; memory, memory_pos [B, T, d] -> q [B, N, d]."""
        qk = q + qpos
        q = self.norm1(q + _mha(self.self_attn, qk, qk, q, kp_ignore))
        out = _mha(self.multihead_attn, torch.cat([q, qpos], -1), torch.cat([memory, memory_pos], -1), memory)
        q = self.norm2(q + self.choker(out))
        g = F.relu(self.ffn1(q, adj, valid))
        return self.norm3(q + self.ffn2(g))


class MLP(nn.Module):
    """Linear -> GELU -> Linear (the decoder's positional-query head)."""

    def __init__(self, d: int = 256) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](F.gelu(self.layers[0](x)))


class Decoder(nn.Module):
    def __init__(self, layers: int = 3, d: int = 256) -> None:
        super().__init__()
        self.layers = nn.ModuleList([DecoderLayer() for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.ref_point_head = MLP(d)


class ProposalGenerator(nn.Module):
    def __init__(self, d: int = 256, dyn: int = 128) -> None:
        super().__init__()
        self.support_proj, self.query_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.dynamic_proj = nn.Sequential(nn.Linear(d, dyn), nn.ReLU(), nn.Linear(dyn, d))

    def forward(self, kp: torch.Tensor, memory: torch.Tensor, h: int, w: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """kp [B, N, d], memory [B, h*w, d] -> (similarity [B, N, h, w], global [B, N, 2], local [B, N, 2])."""
        fs, fq = self.support_proj(kp), self.query_proj(memory)
        fs = (torch.tanh(self.dynamic_proj(fs)) + 1) * fs
        sim = full_precision(fs @ fq.transpose(1, 2))  # [B, N, h*w]; coordinates in full precision under autocast
        ys = (torch.arange(h, device=sim.device, dtype=sim.dtype) + 0.5) / h
        xs = (torch.arange(w, device=sim.device, dtype=sim.dtype) + 0.5) / w
        cells = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1).reshape(-1, 2)  # [h*w, 2]
        p = sim.softmax(-1)
        glob = p @ cells
        peak = sim.argmax(-1)  # [B, N]
        py, px = peak // w, peak % w
        r = torch.arange(h * w, device=sim.device)
        win = ((r // w)[None, None] - py[..., None]).abs().le(1) & ((r % w)[None, None] - px[..., None]).abs().le(1)
        pl = p * win.to(p.dtype)
        pl = pl / (pl.sum(-1, keepdim=True) + 1e-10)
        return sim.view(*sim.shape[:2], h, w), glob, pl @ cells


class Transformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.proposal_generator = ProposalGenerator()


class KptBranch(nn.Module):
    """Linear -> GELU -> Linear -> GELU -> Linear -> GELU -> Linear(2): a decoder layer's offset head."""

    def __init__(self, d: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(),
                                 nn.Linear(d, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PoseHead(nn.Module):
    def __init__(self, in_channels: int = 768, d: int = 256, dec_layers: int = 3) -> None:
        super().__init__()
        self.transformer = Transformer()
        self.input_proj = nn.Conv2d(in_channels, d, 1)
        self.query_proj = nn.Linear(in_channels, d)
        self.kpt_branch = nn.ModuleList([KptBranch(d) for _ in range(dec_layers)])


# ------------------------------------------------------------------------------------------------ the model


class PoseAnything(nn.Module):
    """PoseAnything with a SwinV2-T ("tiny") or SwinV2-S ("small") backbone; state dict = the official files'."""

    def __init__(self, variant: str = "tiny") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"PoseAnything variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.backbone = SwinV2(96, VARIANTS[variant]["depths"], (3, 6, 12, 24), window=16, img_size=INPUT_SIZE)
        self.keypoint_head = PoseHead(self.backbone.num_features)

    def support_tokens(self, support: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor,
                       details: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """support [B, 3, 256, 256], keypoints [B, N, 2] input px, visible [B, N] -> (tokens [B, N, 256], valid [B, N]
        bool: visible and its heatmap on the map)."""
        feat = self.backbone(support)  # [B, 768, 16, 16]
        if details is not None:
            details["backbone_support"] = feat
        return self.pool_support(feat, keypoints, visible)

    def pool_support(self, features: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """`support_tokens` from the support's backbone features [B, 768, 16, 16]."""
        heat, weight = support_heatmaps(keypoints, visible)
        f64 = F.interpolate(features, size=heat.shape[-2:], mode="bilinear", align_corners=False)
        heat = heat.to(features.dtype)
        heat = heat / (heat.sum((-1, -2), keepdim=True) + 1e-8)
        tok = heat.flatten(2) @ f64.flatten(2).transpose(1, 2)  # [B, N, 768]
        tok = tok * weight[..., None].to(tok.dtype)
        return self.keypoint_head.query_proj(tok), weight > 0

    def forward_tokens(self, query: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, skeleton: Any,
                       details: dict[str, Any] | None = None) -> torch.Tensor:
        """query [B, 3, 256, 256], support tokens [B or 1, N, 256], valid [B or 1, N], skeleton (see
        `skeleton_adjacency`) -> keypoints per decoder layer [L, B, N, 2] in [0, 1]; fills `details` if given."""
        return self.decode(self.backbone(query), tokens, valid, skeleton, details)

    def decode(self, features: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor, skeleton: Any,
               details: dict[str, Any] | None = None) -> torch.Tensor:
        """`forward_tokens` from the query's backbone features [B, 768, 16, 16]."""
        head = self.keypoint_head
        tr = head.transformer
        B = features.shape[0]
        if tokens.shape[0] != B:
            tokens, valid = tokens.expand(B, -1, -1), valid.expand(B, -1)
        N = tokens.shape[1]
        adj = skeleton_adjacency(skeleton, B, N, features.device).to(tokens.dtype)
        x = head.input_proj(features)  # [B, 256, h, w]
        _, d, h, w = x.shape
        pos = image_position_embedding(h, w, x.device).to(x.dtype).flatten(1).t()[None].expand(B, -1, -1)  # [B, T, d]
        img = x.flatten(2).transpose(1, 2)  # [B, T, d]
        T = img.shape[1]
        kp_ignore = ~valid
        # encoder over [image tokens; keypoint tokens]
        z = torch.cat([img, tokens], 1)
        zpos = torch.cat([pos, torch.zeros_like(tokens)], 1)
        ignore = torch.cat([torch.zeros(B, T, dtype=torch.bool, device=x.device), kp_ignore], 1)
        for layer in tr.encoder.layers:
            z = layer(z, zpos, ignore)
        mem, kp = z[:, :T], z[:, T:]
        sim, glob, local = tr.proposal_generator(kp, mem, h, w)
        # decoder: a sample without any valid keypoint keeps slot 0 as a key (no all -inf row)
        dec_ignore = kp_ignore.clone()
        dec_ignore[:, 0] &= ~kp_ignore.all(-1)
        dec = tr.decoder
        q, ref = kp, local  # reference points and outputs stay float32 under autocast
        refs, outs, unnormed, normed = [local], [], [], []
        for l, layer in enumerate(dec.layers):
            qpos = dec.ref_point_head(point_embedding(ref))
            q = layer(q, qpos, mem, pos, dec_ignore, adj, valid)
            qn = dec.norm(q)
            inv = inverse_sigmoid(ref)
            outs.append(torch.sigmoid(full_precision(head.kpt_branch[l](qn)) + inv))
            ref = torch.sigmoid(inv + full_precision(head.kpt_branch[l](q)))
            refs.append(ref)
            unnormed.append(q)
            normed.append(qn)
        if details is not None:
            details.update({"backbone_query": features, "input_proj": x, "support_tokens": tokens, "memory": mem,
                            "keypoint_tokens": kp, "similarity": sim, "proposals_global": glob,
                            "proposals_local": local, "reference_points": torch.stack(refs),
                            "decoder_unnormed": unnormed, "decoder_normed": normed})
        return torch.stack(outs)

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_keypoints: torch.Tensor,
                visible: torch.Tensor, skeleton: Any) -> torch.Tensor:
        """query, support [B, 3, 256, 256] ImageNet-normalised; support_keypoints [B, N, 2] in 256-px input coords;
        visible [B, N]; skeleton 0-based pairs (one list shared, or one per item) -> keypoints [L, B, N, 2] in [0, 1]
        (x = column / 256); the prediction is the last layer."""
        tokens, valid = self.support_tokens(support, support_keypoints, visible)
        return self.forward_tokens(query, tokens, valid, skeleton)

    def forward_details(self, query: torch.Tensor, support: torch.Tensor, support_keypoints: torch.Tensor,
                        visible: torch.Tensor, skeleton: Any) -> dict[str, Any]:
        """`forward` plus its intermediates: "keypoints" [L, B, N, 2], "proposals_local" / "proposals_global"
        [B, N, 2], "reference_points" [L+1, B, N, 2] (local proposals, then after each layer), "similarity"
        [B, N, 16, 16], "valid" [B, N], backbone features, encoder and decoder tokens."""
        details: dict[str, Any] = {}
        tokens, valid = self.support_tokens(support, support_keypoints, visible, details)
        details["keypoints"] = self.forward_tokens(query, tokens, valid, skeleton, details)
        details["valid"] = valid
        return details
