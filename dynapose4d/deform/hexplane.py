"""HexPlane + MLP deformation field (DreamGaussian4D / 4DGaussians).

Six learnable feature planes over the pairs of (x, y, z, t): (x,y) (x,z) (y,z) (x,t) (y,t) (z,t). A Gaussian
centre at time t samples each plane bilinearly; the six features are multiplied (K-Planes style: the three
time planes start at 1, so at first the field depends on space only). An MLP maps the feature to a hidden
code and three residual heads predict Δposition, Δ(log-)scale and Δrotation (added to the raw quaternion).
The last layer of every head starts at zero, so φ is the identity (no motion) before training.

DreamGaussian4D's released setting: 32 features, resolution [32, 32, 32, 12] for 14 frames, one scale
(multires [1]), spatial bounds ±1.6, hidden width 64, one hidden layer, and the time coordinate
t = (f / T − 0.5) · 2 for frame f of T.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, POSITIVE, Rule


@dataclass
class HexPlaneConfig:
    """Settings of the HexPlane deformation field (defaults: DreamGaussian4D)."""

    features: int = 32  # feature channels per plane
    resolution: list[int] = field(default_factory=lambda: [32, 32, 32, 12])  # x, y, z, t grid sizes (t for 14 frames)
    scale_time_resolution: bool = True  # scale the t resolution with the frame count: round(t_res * T / 14)
    multires: list[int] = field(default_factory=lambda: [1])  # spatial resolution multipliers (features concatenated)
    bounds: float = 1.6  # spatial extent: coordinates in [-bounds, bounds] map onto the planes
    width: int = 64  # hidden width of the MLP
    depth: int = 1  # hidden layers of the feature MLP
    deform_scale: bool = True  # predict Δscale
    deform_rotation: bool = True  # predict Δrotation
    anchor_first_frame: bool = False  # φ(S, 0) = S exactly: residuals minus their value at τ = 0 (frame 0 = canonical)
    grid_lr: float = 0.0064  # Adam learning rate of the planes (DreamGaussian4D)
    mlp_lr: float = 0.00064  # Adam learning rate of the MLP (DreamGaussian4D)

    RULES: ClassVar[dict[str, Rule]] = {
        "features": AT_LEAST_1, "resolution": AT_LEAST_1, "multires": AT_LEAST_1, "bounds": POSITIVE,
        "width": AT_LEAST_1, "depth": AT_LEAST_1, "grid_lr": AT_LEAST_0, "mlp_lr": AT_LEAST_0,
    }


def time_coordinate(tau: torch.Tensor, num_frames: int) -> torch.Tensor:
    """DreamGaussian4D's time coordinate for normalised time τ = f / (T − 1): t = (f / T − 0.5) · 2.

    τ ∈ [0, 1] (docs/cameras.md) is the project's time; the grids see DG4D's t, so frame 0 is at −1 and the last
    frame at 1 − 2/T. Any τ in between (e.g. for smooth videos) is interpolated."""
    f = tau * max(num_frames - 1, 0)
    return (f / max(num_frames, 1) - 0.5) * 2.0


class HexPlaneField(nn.Module):
    """Six feature planes over (x, y, z, t); `forward(coords[P, 4] in [-1, 1]) -> features[P, F * len(multires)]`."""

    def __init__(self, features: int, resolution: list[int], multires: list[int]) -> None:
        super().__init__()
        if len(resolution) != 4:
            raise ValueError(f"HexPlaneField: resolution must be [x, y, z, t], got {resolution}")
        self.features = features
        self.pairs = list(itertools.combinations(range(4), 2))  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
        self.grids = nn.ModuleList()
        for m in multires:
            res = [r * m for r in resolution[:3]] + [resolution[3]]
            planes = nn.ParameterList()
            for i, j in self.pairs:
                # grid_sample reads grid[..., 0] along W and grid[..., 1] along H: plane [1, F, res_j, res_i]
                p = torch.empty(1, features, res[j], res[i])
                if j == 3:  # a time plane: multiplicative identity at first
                    nn.init.ones_(p)
                else:
                    nn.init.uniform_(p, 0.1, 0.5)
                planes.append(nn.Parameter(p))
            self.grids.append(planes)

    @property
    def out_dim(self) -> int:
        return self.features * len(self.grids)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:  # [P, 4] -> [P, out_dim]
        outs = []
        for planes in self.grids:
            feat = None
            for (i, j), plane in zip(self.pairs, planes):
                g = coords[:, [i, j]].view(1, 1, -1, 2)  # [1, 1, P, 2]
                s = F.grid_sample(plane, g, mode="bilinear", padding_mode="border", align_corners=True)
                s = s.view(self.features, -1).t()  # [P, F]
                feat = s if feat is None else feat * s
            outs.append(feat)
        return torch.cat(outs, dim=-1)


def _head(width: int, out: int) -> nn.Sequential:
    head = nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    return head


class HexPlaneDeformation(nn.Module):
    """φ(S, τ) as a HexPlane field + MLP with residual heads (identity at initialisation).

    `forward(means[N,3], scales[N,3] (log), quats[N,4], tau[B]) -> dict(means[B,N,3], scales[B,N,3] (log),
    quats[B,N,4])`."""

    kind = "hexplane"

    def __init__(self, num_frames: int, cfg: HexPlaneConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or HexPlaneConfig()
        self.cfg = cfg
        self.num_frames = int(num_frames)
        res = list(cfg.resolution)
        if cfg.scale_time_resolution:
            res[3] = max(2, round(res[3] * self.num_frames / 14))
        self.resolution = res
        self.field = HexPlaneField(cfg.features, res, list(cfg.multires))
        layers: list[nn.Module] = [nn.Linear(self.field.out_dim, cfg.width)]
        for _ in range(cfg.depth - 1):
            layers += [nn.ReLU(), nn.Linear(cfg.width, cfg.width)]
        self.feature_out = nn.Sequential(*layers)
        for m in self.feature_out:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.d_position = _head(cfg.width, 3)
        self.d_scale = _head(cfg.width, 3) if cfg.deform_scale else None
        self.d_rotation = _head(cfg.width, 4) if cfg.deform_rotation else None
        if cfg.anchor_first_frame:
            # Anchored, φ is the identity at initialisation whatever the heads hold: the time planes start at
            # ones, so the features do not depend on τ and Δ(τ) − Δ(0) = 0. Zero last layers on top of that would
            # be a saddle (no gradient reaches any parameter; only rounding noise, which Adam amplifies, would
            # start training), so they start small and random instead.
            for head in (self.d_position, self.d_scale, self.d_rotation):
                if head is not None:
                    nn.init.normal_(head[-1].weight, std=1e-3)

    def param_groups(self) -> list[dict]:
        """Adam parameter groups with DreamGaussian4D's split: planes at `grid_lr`, the MLP at `mlp_lr`."""
        grid = list(self.field.parameters())
        ids = {id(p) for p in grid}
        mlp = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": grid, "lr": self.cfg.grid_lr, "name": "deform_grid"},
                {"params": mlp, "lr": self.cfg.mlp_lr, "name": "deform_mlp"}]

    def forward(
        self,
        means: torch.Tensor,  # [N, 3]
        scales: torch.Tensor,  # [N, 3] log-scales
        quats: torch.Tensor,  # [N, 4]
        tau: torch.Tensor,  # [B] normalised time in [0, 1]
    ) -> dict[str, torch.Tensor]:
        B, N = tau.shape[0], means.shape[0]
        tau = tau.to(means)
        anchor = self.cfg.anchor_first_frame
        if anchor:
            tau = torch.cat([tau, tau.new_zeros(1)])
        Bt = tau.shape[0]
        t = time_coordinate(tau, self.num_frames)  # [Bt]
        xyz = (means / self.cfg.bounds).unsqueeze(0).expand(Bt, N, 3)  # [Bt, N, 3]
        coords = torch.cat([xyz, t.view(Bt, 1, 1).expand(Bt, N, 1)], dim=-1).reshape(Bt * N, 4)
        h = self.feature_out(self.field(coords))  # [Bt*N, W]

        def residual(head: nn.Module | None, d: int) -> torch.Tensor:
            if head is None:
                return means.new_zeros(1, N, d)
            r = head(h).view(Bt, N, d)
            return r[:B] - r[B:] if anchor else r

        return {
            "means": means.unsqueeze(0) + residual(self.d_position, 3),
            "scales": (scales.unsqueeze(0) + residual(self.d_scale, 3)).expand(B, N, 3),
            "quats": (quats.unsqueeze(0) + residual(self.d_rotation, 4)).expand(B, N, 4),
        }
