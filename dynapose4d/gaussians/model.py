"""GaussianModel: raw parameters of a 3D Gaussian splat and their activations.

Parameters are stored raw, as in 3DGS and gsplat: `means` [N, 3], `scales` [N, 3] (log), `quats` [N, 4]
(w, x, y, z, unnormalised), `opacities` [N] (logit), `sh0` [N, 1, 3] (SH degree 0) and `shN` [N, K, 3]
(higher degrees, K = (degree + 1)^2 - 1, may be 0). Views render with the degree-0 colour
(0.5 + C0 * sh0, clamped at 0); higher degrees are carried through PLY files unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

SH_C0 = 0.28209479177387814  # Y_0^0


def rgb_to_sh(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> SH degree-0 coefficient (same shape)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """SH degree-0 coefficient -> RGB (same shape; not clamped)."""
    return sh0 * SH_C0 + 0.5


class GaussianModel(nn.Module):
    """A set of N 3D Gaussians held as an `nn.ParameterDict` named like gsplat's `splats`."""

    def __init__(
        self,
        means: torch.Tensor,  # [N, 3]
        scales: torch.Tensor,  # [N, 3] log-scales
        quats: torch.Tensor,  # [N, 4]
        opacities: torch.Tensor,  # [N] logits
        sh0: torch.Tensor,  # [N, 1, 3]
        shN: torch.Tensor | None = None,  # [N, K, 3]
    ) -> None:
        super().__init__()
        n = means.shape[0]
        if shN is None:
            shN = means.new_zeros(n, 0, 3)
        for name, t, shape in (
            ("means", means, (n, 3)), ("scales", scales, (n, 3)), ("quats", quats, (n, 4)),
            ("opacities", opacities, (n,)), ("sh0", sh0, (n, 1, 3)),
        ):
            if tuple(t.shape) != shape:
                raise ValueError(f"GaussianModel: {name} must have shape {shape}, got {tuple(t.shape)}")
        if shN.shape[0] != n or shN.shape[-1] != 3:
            raise ValueError(f"GaussianModel: shN must have shape ({n}, K, 3), got {tuple(shN.shape)}")
        self.splats = nn.ParameterDict(
            {k: nn.Parameter(v.detach().clone().float().contiguous()) for k, v in
             dict(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN).items()}
        )

    # construction -------------------------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        points: torch.Tensor,  # [N, 3]
        rgb: torch.Tensor,  # [N, 3] in [0, 1]
        scale: float | torch.Tensor = 0.02,  # scalar or [N] or [N, 3] (activated)
        opacity: float = 0.1,
        sh_degree: int = 0,
    ) -> GaussianModel:
        """Isotropic Gaussians at `points` with colours `rgb`, identity rotation."""
        n = points.shape[0]
        s = torch.as_tensor(scale, dtype=torch.float32, device=points.device)
        if s.dim() == 1 and s.shape[0] == n:
            s = s[:, None]  # one isotropic scale per Gaussian
        if s.dim() > 2 or (s.dim() == 2 and s.shape not in ((n, 3), (n, 1))) or (s.dim() == 1 and s.numel() != n):
            raise ValueError(f"scale must be a scalar, [N] or [N, 3] with N={n}; got shape {tuple(s.shape)}")
        s = s.expand(n, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        k = (sh_degree + 1) ** 2 - 1
        return cls(
            means=points.float(),
            scales=torch.log(s.float().clamp(min=1e-8)),
            quats=quats,
            opacities=torch.logit(torch.full((n,), float(opacity))),
            sh0=rgb_to_sh(rgb.float()).unsqueeze(1),
            shN=torch.zeros(n, k, 3),
        )

    # properties ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.splats["means"].shape[0]

    @property
    def num_gaussians(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        return int(round((self.splats["shN"].shape[1] + 1) ** 0.5)) - 1

    @property
    def means(self) -> torch.Tensor:  # [N, 3]
        return self.splats["means"]

    def activated(self, means: torch.Tensor | None = None, quats: torch.Tensor | None = None,
                  scales: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Rasterizer inputs: means [N,3], quats [N,4], scales [N,3] (exp of the log-scales), opacities [N]
        (sigmoid), colors [N,3] (from SH degree 0, clamped at 0). `means`, `quats` and log-`scales` replace the
        canonical geometry (a deformation's output, e.g. [B, N, 3] with a leading batch)."""
        s = self.splats
        return {
            "means": s["means"] if means is None else means,
            "quats": s["quats"] if quats is None else quats,
            "scales": torch.exp(s["scales"] if scales is None else scales),
            "opacities": torch.sigmoid(s["opacities"]),
            "colors": torch.clamp_min(sh_to_rgb(s["sh0"][:, 0, :]), 0.0),
        }

    # checkpoints --------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Densification changes N: resize our parameters to the checkpoint's before loading into them.
        for name, p in self.splats.items():
            key = f"{prefix}splats.{name}"
            if key in state_dict and state_dict[key].shape != p.shape:
                self.splats[name] = nn.Parameter(torch.empty_like(state_dict[key], device=p.device))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
