"""PoseAnything (Hirschorn & Avidan, "A Graph-Based Approach for Category-Agnostic Pose Estimation", ECCV 2024)
in plain torch: the 1-shot SwinV2-T ("tiny") and SwinV2-S ("small") models, whose state dicts have exactly the
keys, order and shapes of the official mmcv checkpoints, so those files load strictly (`load_poseanything`).

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

Test-time data path (`prepare_support` / `predict_prepared`, used by `dynapose4d.cape.predict` when the
checkpoint is an official PoseAnything file): crop a square of 1.25x the object box's longer side around the
box centre (box = the image's non-white pixels unless given), warp it to 256x256 bilinearly with a black border,
ImageNet-normalise, run, map the last layer back to image pixels. Differentiable with respect to the query images
(the box itself is not).
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynapose4d.cape.swinv2 import SwinV2
from dynapose4d.core.errors import InputError, MissingWeightsError

INPUT_SIZE = 256  # model input side (px)
HEATMAP_SIZE = 64  # support heatmap side (stride 4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PADDING = 1.25  # the test-time crop is this x the object box's longer side
VARIANTS: dict[str, dict[str, Any]] = {  # SwinV2 backbones of the two graph configs
    "tiny": {"depths": (2, 2, 6, 2)},  # configs/1shots/graph_split1_config.py (SwinV2-T)
    "small": {"depths": (2, 2, 18, 2)},  # configs/1shot-swin/graph_split1_config.py (SwinV2-S)
}
OFFICIAL_WEIGHTS_HINT = ("download the official 1-shot split-1 Tiny or Small checkpoint from the Google Drive links "
                         "in github.com/orhir/PoseAnything's README (configs/1shots/graph_split1_config.py = Tiny, "
                         "configs/1shot-swin/graph_split1_config.py = Small)")


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


def _full(x: torch.Tensor) -> torch.Tensor:
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
        sim = _full(fs @ fq.transpose(1, 2))  # [B, N, h*w]; coordinates in full precision under autocast
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
            outs.append(torch.sigmoid(_full(head.kpt_branch[l](qn)) + inv))
            ref = torch.sigmoid(inv + _full(head.kpt_branch[l](q)))
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


# ------------------------------------------------------------------------------------------------ checkpoints


def _allowed_numpy_globals(names: Sequence[str]) -> list[Any] | None:
    """(object, name) pairs for numpy scalars / dtypes / arrays named in a checkpoint's pickle (mmcv's meta holds
    numpy values); None when any name is something else."""
    import importlib
    import warnings

    out = []
    for name in names:
        mod, _, attr = name.rpartition(".")
        if mod.split(".")[0] != "numpy" or not (attr in ("scalar", "dtype", "_reconstruct", "ndarray")
                                                or attr.endswith("DType")):
            return None
        obj = None
        for m in (mod, mod.replace("numpy.core", "numpy._core")):  # files written with numpy 1.x name numpy.core
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    obj = getattr(importlib.import_module(m), attr)
                break
            except (ImportError, AttributeError):
                continue
        if obj is None:
            return None
        out.append((obj, name))
    if any(name.endswith(".dtype") for name in names):  # a dtype unpickles as an instance of its DType class
        import numpy.dtypes

        out += [c for n in dir(numpy.dtypes) if n.endswith("DType") and isinstance(c := getattr(numpy.dtypes, n), type)]
    return out


def read_checkpoint_file(path: str | Path, trusted: bool = False) -> Any:
    """torch.load a checkpoint on CPU with weights_only=True; numpy scalars, dtypes and arrays in it (mmcv's meta)
    are allow-listed. Other objects raise a one-line InputError unless `trusted` (then full unpickling)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line for the user
        msg = str(e).splitlines()[0][:120] if str(e) else ""
        raise InputError(f"{path}: unreadable checkpoint ({type(e).__name__}: {msg})") from None
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - e.g. the legacy (non-zip) format
        names = []
    allowed = _allowed_numpy_globals(names) if names else None
    if allowed is not None:
        with torch.serialization.safe_globals(allowed):
            try:
                return torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                pass
    if trusted:
        return torch.load(path, map_location="cpu", weights_only=False)
    others = ", ".join(names[:4]) or "unknown objects"
    raise InputError(f"{path}: torch.load(weights_only=True) refuses objects in it ({others}); load it with "
                     "trusted=True only if you trust the file")


def is_poseanything_state(data: Any) -> bool:
    """Whether a loaded checkpoint holds an mmcv PoseAnything state dict (possibly under `module.`)."""
    sd = data.get("state_dict", data) if isinstance(data, dict) else None
    return isinstance(sd, dict) and any(str(k).removeprefix("module.") == "backbone.patch_embed.proj.weight"
                                        for k in sd)


def poseanything_from_checkpoint(data: Any, path: str | Path) -> PoseAnything:
    """A PoseAnything (eval mode) from a loaded official checkpoint: {"meta", "state_dict", ...} or a bare state
    dict; `module.` prefixes are stripped; the variant follows the depth of the third SwinV2 stage (6 = tiny,
    18 = small); strict loading (only the buffers the modules compute themselves may be absent)."""
    sd = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(sd, dict):
        raise InputError(f"{path}: not a PoseAnything checkpoint (no state_dict)")
    sd = {str(k).removeprefix("module."): v for k, v in sd.items()}
    w = sd.get("backbone.patch_embed.proj.weight")
    if not isinstance(w, torch.Tensor):
        raise InputError(f"{path}: not a PoseAnything checkpoint (no backbone.patch_embed.proj.weight)")
    if w.shape[0] == 128:
        raise InputError(f"{path}: this is the older SwinV2-B PoseAnything checkpoint (before 2024-02-02, e.g. "
                         "demo_b.pth), which this port does not build; use the 1-shot split-1 Tiny "
                         "(configs/1shots/graph_split1_config.py) or Small (configs/1shot-swin/graph_split1_config.py) "
                         "file from github.com/orhir/PoseAnything's README")
    blocks = {int(k.split(".")[4]) for k in sd if k.startswith("backbone.layers.2.blocks.")}
    depth = max(blocks) + 1 if blocks else 0
    variant = {6: "tiny", 18: "small"}.get(depth)
    if w.shape[0] != 96 or variant is None:
        raise InputError(f"{path}: unknown PoseAnything backbone (embed {w.shape[0]}, stage-3 depth {depth}); "
                         "expected SwinV2-T (96, 6) or SwinV2-S (96, 18)")
    model = PoseAnything(variant)
    own = model.state_dict()
    computed = ("relative_coords_table", "relative_position_index", "attn_mask")
    for k in own:
        if k not in sd and k.rsplit(".", 1)[-1] in computed:
            sd[k] = own[k]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise InputError(f"{path}: does not match PoseAnything-{variant} ({msg[:200]})") from None
    return model.eval()


def load_poseanything(path: str | Path, trusted: bool = False) -> PoseAnything:
    """An official PoseAnything checkpoint (1-shot Tiny or Small, mmcv format) as a PoseAnything in eval mode on CPU.

    MissingWeightsError when the file is absent; InputError when it is another model (e.g. the older SwinV2-B
    file) or unreadable with weights_only=True (numpy objects in its meta are allow-listed; `trusted` unpickles
    anything else)."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: PoseAnything checkpoint not found; {OFFICIAL_WEIGHTS_HINT}")
    return poseanything_from_checkpoint(read_checkpoint_file(path, trusted), path)


# ------------------------------------------------------------------------------------------------ test-time path


def object_boxes(images: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """Boxes [B, 4] (x, y, w, h; pixel centres at integers, w = last - first column + 1) of the pixels that are not
    white (any channel below 1 - threshold) in images [B, 3, H, W] in [0, 1]; the whole image when all white."""
    with torch.no_grad():
        fg = (images < 1.0 - threshold).any(1)  # [B, H, W]
        B, H, W = fg.shape
        out = torch.tensor([0.0, 0.0, W, H]).repeat(B, 1)
        for b in range(B):
            rows, cols = fg[b].any(1).nonzero().flatten(), fg[b].any(0).nonzero().flatten()
            if rows.numel():
                x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
                out[b] = torch.tensor([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dtype=torch.float32)
    return out


@dataclass
class CropFrame:
    """The square window PoseAnything sees of each image: centre [B, 2] and side [B] in image pixels (pixel centres
    at integers); it maps to the 256 x 256 input with x_in = (x - cx) 256 / side + 128."""

    centre: torch.Tensor  # [B, 2]
    side: torch.Tensor  # [B]

    @staticmethod
    def from_boxes(boxes: torch.Tensor, width: int, height: int, padding: float = CROP_PADDING) -> CropFrame:
        """MP-100's test crop of boxes [B, 4] (x, y, w, h): the box clipped to the image (x2 = min(W - 1, x + w - 1)),
        centred, its shorter side enlarged to the longer, times `padding`."""
        b = torch.as_tensor(boxes, dtype=torch.float64).detach().cpu().reshape(-1, 4)
        x1, y1 = b[:, 0], b[:, 1]
        x2 = torch.minimum(torch.full_like(x1, width - 1.0), x1 + (b[:, 2] - 1).clamp(min=0))
        y2 = torch.minimum(torch.full_like(y1, height - 1.0), y1 + (b[:, 3] - 1).clamp(min=0))
        w, h = x2 - x1, y2 - y1
        side = (torch.maximum(w, h) * padding).clamp(min=1.0)
        return CropFrame(torch.stack([x1 + w / 2, y1 + h / 2], -1).float(), side.float())

    def to(self, device: torch.device) -> CropFrame:
        return CropFrame(self.centre.to(device), self.side.to(device))

    def to_input(self, points: torch.Tensor) -> torch.Tensor:
        """Image px [B, N, 2] -> 256-px input coordinates."""
        c, s = self.centre.to(points), self.side.to(points)
        return (points - c[:, None]) * (INPUT_SIZE / s)[:, None, None] + INPUT_SIZE / 2

    def from_input(self, points: torch.Tensor) -> torch.Tensor:
        """256-px input coordinates [B, N, 2] -> image px."""
        c, s = self.centre.to(points), self.side.to(points)
        return points * (s / INPUT_SIZE)[:, None, None] + c[:, None] - (s / 2)[:, None, None]

    def warp(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> [B, 3, 256, 256]: bilinear, black (0) outside the image;
        differentiable with respect to the images."""
        B, _, H, W = images.shape
        u = torch.arange(INPUT_SIZE, device=images.device, dtype=images.dtype)
        grid_in = torch.stack(torch.meshgrid(u, u, indexing="xy"), -1).reshape(1, -1, 2).expand(B, -1, -1)
        src = self.from_input(grid_in)  # [B, S*S, 2] image px
        norm = torch.tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)], device=images.device, dtype=images.dtype)
        grid = (src * norm - 1).view(B, INPUT_SIZE, INPUT_SIZE, 2)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of RGB [B, 3, H, W] in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class PoseAnythingSupport:
    """A support image's keypoint tokens for one PoseAnything model (the query-independent half of `predict`)."""

    model: PoseAnything
    tokens: torch.Tensor  # [1, N, 256] support keypoint tokens (after query_proj)
    valid: torch.Tensor  # [1, N] bool, visible in the support and on its heatmap
    adjacency: torch.Tensor  # [1, N, N] 0/1 skeleton


def prepare_support(model: PoseAnything, support_image: torch.Tensor, support_keypoints: torch.Tensor,
                    skeleton: Any, support_mask: torch.Tensor | None = None,
                    box: torch.Tensor | Sequence[float] | None = None) -> PoseAnythingSupport:
    """support_image [3, H, W] in [0, 1] over white, support_keypoints [N, 2] px (pixel centres at +0.5), skeleton
    0-based pairs, support_mask [N] bool (default all visible), box (x, y, w, h) px (default: the non-white
    pixels) -> the support's tokens, on the model's device."""
    p = next(model.parameters())
    dev, dt = p.device, p.dtype
    img = support_image[None].to(dev, dt)
    H, W = img.shape[-2:]
    N = support_keypoints.shape[0]
    bx = object_boxes(img) if box is None else torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
    frame = CropFrame.from_boxes(bx, W, H).to(dev)
    kp = frame.to_input(torch.as_tensor(support_keypoints, dtype=dt, device=dev)[None] - 0.5)  # [1, N, 2] input px
    vis = torch.ones(1, N, device=dev) if support_mask is None else \
        torch.as_tensor(support_mask, device=dev).reshape(1, N).to(dt)
    tokens, valid = model.support_tokens(normalize_images(frame.warp(img)), kp, vis)
    return PoseAnythingSupport(model, tokens, valid, skeleton_adjacency(skeleton, 1, N, dev))


def predict_prepared(support: PoseAnythingSupport, query_images: torch.Tensor,
                     boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """query_images [B, 3, H, W] in [0, 1] over white (boxes [B, 4] x, y, w, h px; default their non-white pixels)
    -> (points [B, N, 2] px, pixel centres at +0.5; confidence [B, N] = 1: PoseAnything outputs none).
    Differentiable with respect to the query images."""
    model = support.model
    p = next(model.parameters())
    q = query_images.to(p.device, p.dtype)
    B, _, H, W = q.shape
    bx = object_boxes(q) if boxes is None else torch.as_tensor(boxes, dtype=torch.float32).reshape(B, 4)
    frame = CropFrame.from_boxes(bx, W, H).to(p.device)
    out = model.forward_tokens(normalize_images(frame.warp(q)), support.tokens, support.valid, support.adjacency)
    pts = frame.from_input(_full(out[-1]) * INPUT_SIZE) + 0.5  # [B, N, 2] image px
    return pts, torch.ones(pts.shape[:2], device=pts.device, dtype=pts.dtype)
