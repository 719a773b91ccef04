"""Sparse control points (SC4D): M control points, each with a time-conditioned rigid transform; the dense
Gaussians follow a blend of their k nearest controls (linear blend skinning with RBF weights).

Controls start at a farthest-point sample of the canonical Gaussian centres. A small MLP maps
(positional encoding of the control's canonical position, encoding of time) to a rotation (quaternion,
as a residual on the identity) and a translation; its last layer starts at zero, so φ is the identity (no
motion) before training. Each Gaussian i moves as x_i' = Σ_j w_ij (R_j (x_i − c_j) + c_j + T_j) over its k
nearest controls j, with w_ij ∝ exp(−‖x_i − c_j‖² / (2 r_j²)) (learnable radii r_j), and rotates by the
blended control rotation. Scales are not deformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from dynapose4d.core import seeding
from dynapose4d.core.rotations import quat_multiply, quat_to_matrix
from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, Rule
from dynapose4d.deform.hexplane import time_coordinate


@dataclass
class ControlConfig:
    """Settings of the sparse-control-point deformation (defaults: SC4D / DynaPose4D's 512 controls)."""

    num_controls: int = 512  # M control points (fewer if the canonical model has fewer Gaussians)
    k: int = 4  # nearest controls blended per Gaussian
    width: int = 128  # hidden width of the MLP
    depth: int = 4  # hidden layers of the MLP
    pos_freqs: int = 10  # frequencies of the positional encoding of control positions
    time_freqs: int = 6  # frequencies of the time encoding
    mlp_lr: float = 0.001  # Adam learning rate of the MLP
    control_lr: float = 0.0001  # Adam learning rate of the control positions and radii (0 = fixed)
    anchor_first_frame: bool = False  # φ(S, 0) = S exactly: the transforms are taken relative to τ = 0

    RULES: ClassVar[dict[str, Rule]] = {
        "num_controls": AT_LEAST_1, "k": AT_LEAST_1, "width": AT_LEAST_1, "depth": AT_LEAST_1,
        "pos_freqs": AT_LEAST_0, "time_freqs": AT_LEAST_0, "mlp_lr": AT_LEAST_0, "control_lr": AT_LEAST_0,
    }


def farthest_point_sample(points: torch.Tensor, m: int, seed: int = 0) -> torch.Tensor:
    """Indices [m] of a farthest-point sample of points [N, 3] (deterministic start from `seed`)."""
    n = points.shape[0]
    m = min(m, n)
    g = seeding.torch_generator(seed)
    idx = torch.empty(m, dtype=torch.long)
    idx[0] = torch.randint(n, (1,), generator=g)
    dist = torch.full((n,), float("inf"), dtype=points.dtype, device=points.device)
    p = points.detach()
    for i in range(1, m):
        dist = torch.minimum(dist, ((p - p[idx[i - 1]]) ** 2).sum(-1))
        idx[i] = torch.argmax(dist)
    return idx


def positional_encoding(x: torch.Tensor, freqs: int) -> torch.Tensor:
    """[..., D] -> [..., D * (1 + 2 * freqs)]: x, sin(2^l π x), cos(2^l π x)."""
    if freqs == 0:
        return x
    f = (2.0 ** torch.arange(freqs, dtype=x.dtype, device=x.device)) * torch.pi  # [L]
    xf = x.unsqueeze(-1) * f  # [..., D, L]
    return torch.cat([x, torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)], dim=-1)


class ControlPointDeformation(nn.Module):
    """φ(S, τ) driven by M sparse control points with time-conditioned rigid transforms (identity at init).

    `forward(means[N,3], scales[N,3] (log), quats[N,4], tau[B]) -> dict(means[B,N,3], scales[B,N,3] (log),
    quats[B,N,4])`."""

    kind = "control"

    def __init__(self, num_frames: int, controls: torch.Tensor, cfg: ControlConfig | None = None) -> None:
        """`controls` [M, 3]: canonical control positions (use `ControlPointDeformation.init_from(means)`)."""
        super().__init__()
        cfg = cfg or ControlConfig()
        self.cfg = cfg
        self.num_frames = int(num_frames)
        M = controls.shape[0]
        self.controls = nn.Parameter(controls.detach().clone().float())  # [M, 3]
        # radius: mean distance to the 3 nearest other controls (a smooth overlap between neighbours)
        d = torch.cdist(controls, controls)
        kk = min(3, M - 1)
        r = d.topk(kk + 1, largest=False).values[:, 1:].mean(-1) if kk > 0 else torch.ones(M)
        self.log_radius = nn.Parameter(torch.log(r.clamp(min=1e-3)).float())  # [M]
        in_dim = 3 * (1 + 2 * cfg.pos_freqs) + (1 + 2 * cfg.time_freqs)
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [nn.Linear(in_dim if i == 0 else cfg.width, cfg.width), nn.ReLU()]
        last = nn.Linear(cfg.width, 7)  # Δquaternion (4) + translation (3)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(*layers, last)

    @classmethod
    def init_from(cls, means: torch.Tensor, num_frames: int, cfg: ControlConfig | None = None,
                  seed: int = 0) -> ControlPointDeformation:
        """Controls at a farthest-point sample of the canonical centres means [N, 3]."""
        cfg = cfg or ControlConfig()
        idx = farthest_point_sample(means.detach().cpu(), cfg.num_controls, seed)
        return cls(num_frames, means.detach().cpu()[idx], cfg)

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.mlp.parameters()), "lr": self.cfg.mlp_lr, "name": "deform_mlp"}]
        if self.cfg.control_lr > 0:
            groups.append({"params": [self.controls, self.log_radius], "lr": self.cfg.control_lr,
                           "name": "deform_controls"})
        else:
            self.controls.requires_grad_(False)
            self.log_radius.requires_grad_(False)
        return groups

    def control_transforms(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-control rotations as unit quaternions [B, M, 4] and translations [B, M, 3] at times tau [B]."""
        B, M = tau.shape[0], self.controls.shape[0]
        t = time_coordinate(tau.to(self.controls), self.num_frames)  # [B]
        pe_x = positional_encoding(self.controls, self.cfg.pos_freqs)  # [M, Dx]
        pe_t = positional_encoding(t[:, None], self.cfg.time_freqs)  # [B, Dt]
        inp = torch.cat([pe_x.unsqueeze(0).expand(B, M, -1), pe_t.unsqueeze(1).expand(B, M, -1)], dim=-1)
        out = self.mlp(inp)  # [B, M, 7]
        identity = out.new_tensor([1.0, 0.0, 0.0, 0.0])
        q = torch.nn.functional.normalize(identity + out[..., :4], dim=-1)
        return q, out[..., 4:]

    def skinning(self, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k nearest controls idx [N, k] and normalised RBF weights [N, k] of canonical centres means [N, 3]."""
        k = min(self.cfg.k, self.controls.shape[0])
        with torch.no_grad():
            idx = torch.cdist(means.detach(), self.controls.detach()).topk(k, largest=False).indices  # [N, k]
        d2 = ((means.unsqueeze(1) - self.controls[idx]) ** 2).sum(-1)  # [N, k]
        r2 = torch.exp(2.0 * self.log_radius)[idx]  # [N, k]
        logits = -d2 / (2.0 * r2)
        w = torch.softmax(logits, dim=-1)  # normalised exp weights (stable for far points)
        return idx, w

    def forward(
        self,
        means: torch.Tensor,  # [N, 3]
        scales: torch.Tensor,  # [N, 3] log-scales
        quats: torch.Tensor,  # [N, 4]
        tau: torch.Tensor,  # [B]
    ) -> dict[str, torch.Tensor]:
        B, N = tau.shape[0], means.shape[0]
        anchor = self.cfg.anchor_first_frame
        if anchor:
            tau = torch.cat([tau.to(means), means.new_zeros(1)])
        q, T = self.control_transforms(tau)  # [Bt, M, 4], [Bt, M, 3]
        idx, w = self.skinning(means)  # [N, k]
        R = quat_to_matrix(q)  # [B, M, 3, 3]
        c = self.controls[idx]  # [N, k, 3]
        local = (means.unsqueeze(1) - c)  # [N, k, 3]
        moved = torch.einsum("bnkij,nkj->bnki", R[:, idx], local) + c.unsqueeze(0) + T[:, idx]  # [Bt, N, k, 3]
        new_means = (w.unsqueeze(0).unsqueeze(-1) * moved).sum(2)  # [Bt, N, 3]
        qn = q[:, idx]  # [Bt, N, k, 4]
        qn = qn * torch.sign(qn[..., :1] + 1e-12)  # same hemisphere (w >= 0) before blending
        q_blend = torch.nn.functional.normalize((w.unsqueeze(0).unsqueeze(-1) * qn).sum(2), dim=-1)  # [Bt, N, 4]
        if anchor:  # x' = x + (LBS_τ(x) − LBS_0(x)); rotation q_τ ⊗ q_0⁻¹
            new_means = means.unsqueeze(0) + new_means[:B] - new_means[B:]
            q0_inv = q_blend[B:] * q_blend.new_tensor([1.0, -1.0, -1.0, -1.0])
            q_blend = quat_multiply(q_blend[:B], q0_inv.expand(B, N, 4))
        new_quats = quat_multiply(q_blend, quats.unsqueeze(0).expand(B, N, 4))
        return {"means": new_means[:B], "scales": scales.unsqueeze(0).expand(B, N, 3), "quats": new_quats[:B]}
