"""The static stage's settings (`static:` in a run config): a plain dataclass, no Lightning, so the run config
(`dynapose4d.pipeline.config`) composes it without loading the stage. Each field is documented on the line where
it is defined (`dynapose4d config show` prints these docs); measured effects are in experiments/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dynapose4d.core.errors import ConfigError
from dynapose4d.core.structured import (
    AT_LEAST_0,
    AT_LEAST_1,
    FRACTION,
    POSITIVE,
    Bound,
    Rule,
    check_rules,
    ordered_pair,
)
from dynapose4d.gaussians.densify import DensifyConfig
from dynapose4d.priors.sds import SDSConfig

PRIORS = ("auto", "zero123", "views", "none")  # static.prior
INITS = ("auto", "image", "sphere")  # static.init


@dataclass
class StaticConfig:
    """Settings of the static stage (defaults: DreamGaussian's image-to-3D stage 1 where it has one)."""

    steps: int = 500  # optimisation steps (DreamGaussian: 500)
    init: str = "auto"  # "sphere": random ball (DreamGaussian); "image": inflated lift of the input mask; "auto":
    # image when the prior (resolved) is none, else sphere (experiments/RESULTS.md, "Static stage")
    num_points: int = 5000  # initial Gaussians (DreamGaussian: 5000)
    init_radius: float = 0.5  # ball radius of the "sphere" init (DreamGaussian: 0.5)
    init_opacity: float = 0.1  # initial opacity (DreamGaussian: 0.1)
    inflate: float = 1.0  # thickness of the "image" init: 1 lifts a disc to a sphere
    ref_size: int = 0  # training resolution (longer side) of the reference and views images; 0 = scene size
    prior: str = "auto"  # novel-view prior: "zero123" (the top-level `zero123` setting), "views" (scene views/),
    # "none", or "auto": views when the scene has views/, else zero123 when its weights are on this machine, else none
    view_names: list[str] = field(default_factory=list)  # views/ cameras the "views" prior uses; [] = all
    lambda_rgb: float = 10000.0  # reference-view RGB MSE weight (DreamGaussian: 10000)
    lambda_mask: float = 1000.0  # reference-view alpha MSE weight (DreamGaussian: 1000)
    ref_warmup: bool = True  # ramp the reference losses with progress (step / steps), as DreamGaussian
    lambda_views: float = 1.0  # "views" prior: weight of each view's RGB + mask losses relative to the reference
    lambda_sds: float = 1.0  # "zero123" prior: SDS weight (DreamGaussian: 1)
    lr_means: float = 0.01  # initial learning rate of the means (DreamGaussian: 0.001 x spatial_lr_scale 10)
    lr_means_final: float = 2e-4  # final one, exponential decay over `steps` (DreamGaussian: 0.00002 x 10)
    lr_sh0: float = 0.01  # colour learning rate (DreamGaussian: 0.01; higher SH degrees use lr_sh0 / 20)
    lr_opacities: float = 0.05  # (DreamGaussian: 0.05)
    lr_scales: float = 0.005  # (DreamGaussian: 0.005)
    lr_quats: float = 0.005  # (DreamGaussian: 0.005)
    novel_views: int = 1  # "zero123": novel views per step (DreamGaussian: batch_size 1)
    novel_elevation: list[float] = field(default_factory=lambda: [-30.0, 30.0])  # Δelevation range (degrees)
    novel_sizes: list[int] = field(default_factory=lambda: [128, 256, 512])  # novel-view render sizes ...
    novel_size_until: list[float] = field(default_factory=lambda: [0.3, 0.6])  # ... used until these progresses
    black_background: float = 0.5  # "zero123": probability of a black (not white) background on a novel view
    sds: SDSConfig = field(default_factory=SDSConfig)  # guidance scale and timestep schedule
    densify: DensifyConfig = field(default_factory=DensifyConfig)  # densification / pruning / opacity reset
    render_size: int = 0  # size of the output renders (orbit video, grid); 0 = the scene's image height
    orbit_frames: int = 36  # frames of the 360° orbit video
    orbit_elevation: float = 0.0  # elevation of the orbit video (degrees)
    video_fps: int = 12  # orbit video frame rate

    RULES: ClassVar[dict[str, Rule]] = {
        "steps": AT_LEAST_1, "init": INITS, "num_points": AT_LEAST_1, "init_radius": POSITIVE,
        "init_opacity": Bound(0, 1, above=True, below=True), "inflate": AT_LEAST_0, "ref_size": AT_LEAST_0,
        "prior": PRIORS, "lambda_rgb": AT_LEAST_0, "lambda_mask": AT_LEAST_0, "lambda_views": AT_LEAST_0,
        "lambda_sds": AT_LEAST_0, "lr_means": POSITIVE, "lr_means_final": POSITIVE, "lr_sh0": AT_LEAST_0,
        "lr_opacities": AT_LEAST_0, "lr_scales": AT_LEAST_0, "lr_quats": AT_LEAST_0, "novel_views": AT_LEAST_1,
        "novel_elevation": Bound(-90, 90), "novel_sizes": Bound(8), "novel_size_until": FRACTION,
        "black_background": FRACTION, "render_size": AT_LEAST_0, "orbit_frames": AT_LEAST_1,
        "orbit_elevation": Bound(-90, 90), "video_fps": AT_LEAST_1,
    }


def check_config(cfg: StaticConfig) -> None:
    """ConfigError naming the key on values the dataclass types cannot rule out (its `RULES`, then the fields that
    must agree with each other)."""
    check_rules(cfg, "static.")
    if len(cfg.novel_sizes) != len(cfg.novel_size_until) + 1:
        raise ConfigError("config key 'static.novel_size_until': needs one entry fewer than static.novel_sizes")
    ordered_pair(cfg.novel_elevation, "static.novel_elevation")
    ordered_pair([cfg.sds.t_min, cfg.sds.t_max], "static.sds.t_min/t_max")
