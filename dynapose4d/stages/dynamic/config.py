"""The dynamic stage's settings (`dynamic:` in a run config): a plain dataclass, no Lightning, so the run config
(`dynapose4d.pipeline.config`) composes it without loading the stage. Each field is documented on the line where
it is defined (`dynapose4d config show` prints these docs); measured effects are in experiments/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dynapose4d.core.errors import ConfigError
from dynapose4d.core.structured import AT_LEAST_0, AT_LEAST_1, FRACTION, Bound, Rule, check_rules, ordered_pair
from dynapose4d.deform import DEFORM_KINDS, ControlConfig, HexPlaneConfig
from dynapose4d.priors.puppet import PuppetConfig
from dynapose4d.priors.sds import SDSConfig
from dynapose4d.priors.svd import SVDConfig

DRIVERS = ("svd", "puppet")  # how a driving video is made for a scene without one (DynamicConfig.driver)


@dataclass
class DynamicConfig:
    """Settings of the dynamic stage."""

    steps: int = 500  # optimisation steps (DynaPose4D: 500)
    batch_frames: int = 4  # driving frames per step (DynaPose4D: 16, DreamGaussian4D: all 14)
    deform: str = "hexplane"  # deformation φ: "hexplane" (DreamGaussian4D) or "control" (SC4D sparse controls)
    hexplane: HexPlaneConfig = field(default_factory=HexPlaneConfig)  # used when deform = "hexplane"
    control: ControlConfig = field(default_factory=ControlConfig)  # used when deform = "control"
    train_canonical: bool = False  # also train the canonical Gaussians (at the low rates below); False = frozen
    canonical_lr: float = 0.0001  # Adam rate of canonical means, log-scales and rotations (train_canonical)
    canonical_color_lr: float = 0.001  # Adam rate of canonical colours and opacities (train_canonical)
    lambda_rgb: float = 1.0  # L_ref: weight of the RGB MSE at the reference camera
    lambda_alpha: float = 0.1  # L_ref: weight of the alpha MSE at the reference camera
    lambda_kml: float = 1.0  # KML weight (0 = off: no CAPE forward); KML is in image-size-normalised units
    lambda_scl: float = 1.0  # SCL weight (0 = off); SCL is in world units squared
    lambda_rigid: float = 0.0  # local isometry of deformed centres vs canonical (not in the paper; 0 = off)
    rigid_neighbours: int = 8  # neighbours per Gaussian for the rigidity loss
    lambda_track: float = 0.0  # track loss (not in the paper; 0 = off): the 3D keypoint tracks (support keypoints
    # lifted and attached to the canonical Gaussians, carried by φ) projected at the reference camera against
    # CAPE's driving keypoints p_τ, in KML's units. KML compares images, so any Gaussians that draw the right
    # picture satisfy it; this ties the Gaussians at each keypoint to that keypoint's motion.
    lambda_bone: float = 0.0  # bone-length loss (not in the paper; 0 = off): the 3D keypoint tracks keep the
    # lengths of the support skeleton's bones at every frame (relative squared change, `losses.bone_length_loss`).
    # One view fixes how much a bone shortens on screen; a constant length turns that into motion in depth.
    lambda_sds: float = 0.0  # novel-view SDS weight, top-level `zero123` prior (DreamGaussian4D: 4e-4 x λ_rgb)
    sds_elevation_range: list[float] = field(default_factory=lambda: [-30.0, 30.0])  # SDS Δelevation range (deg)
    sds: SDSConfig = field(default_factory=SDSConfig)  # SDS timesteps / guidance (t annealed 0.98 -> 0.02)
    sds_chunk: int = 4  # frames scored per Zero-1-to-3 call (their VAE encode and guided UNet run as one batch;
    # 0 = the whole frame batch in one call). Fewer, larger calls run faster; each frame of a chunk holds its
    # VAE-encoder graph until the chunk's gradient is taken, so the SDS term's memory grows with the chunk.
    background: float = 1.0  # background grey level of renders and targets (1 = white, as DreamGaussian4D)
    driver: str = "svd"  # how the driving video is made when the scene has none: "svd" (Stable Video Diffusion,
    # needs its weights) or "puppet" (the picture moved on its own keypoints' skeleton by rule: no weights; motion
    # in the picture's plane only; dynapose4d/priors/puppet.py)
    svd: SVDConfig = field(default_factory=SVDConfig)  # the SVD generator (driver = "svd")
    puppet: PuppetConfig = field(default_factory=PuppetConfig)  # the puppet motion (driver = "puppet")
    track_neighbours: int = 8  # Gaussians each 3D keypoint is attached to
    evaluate: bool = True  # metrics against the scene's gt/ (when present) into RUN/dynamic/metrics.json
    video_fps: int = 8  # frame rate of the written videos
    orbit_frames: int = 36  # frames of the orbit video (one turn; the motion loops meanwhile)

    RULES: ClassVar[dict[str, Rule]] = {
        "steps": AT_LEAST_1, "batch_frames": AT_LEAST_1, "deform": DEFORM_KINDS, "canonical_lr": AT_LEAST_0,
        "canonical_color_lr": AT_LEAST_0, "lambda_rgb": AT_LEAST_0, "lambda_alpha": AT_LEAST_0,
        "lambda_kml": AT_LEAST_0, "lambda_scl": AT_LEAST_0, "lambda_rigid": AT_LEAST_0, "rigid_neighbours": AT_LEAST_1,
        "lambda_track": AT_LEAST_0, "lambda_bone": AT_LEAST_0, "lambda_sds": AT_LEAST_0,
        "sds_elevation_range": Bound(-90, 90), "sds_chunk": AT_LEAST_0, "background": FRACTION, "driver": DRIVERS,
        "track_neighbours": AT_LEAST_1, "video_fps": AT_LEAST_1, "orbit_frames": AT_LEAST_1,
    }

    def driving_source(self) -> SVDConfig | PuppetConfig:
        """The settings of the driver that makes the driving video of a scene without one (`driver`)."""
        return self.puppet if self.driver == "puppet" else self.svd

    def validate(self) -> None:
        """ConfigError naming the key on a value outside its `RULES` (this section's and its subsections'), or on
        fields that must agree with each other."""
        check_rules(self, "dynamic.")
        if len(self.hexplane.resolution) != 4:
            raise ConfigError(f"config key 'dynamic.hexplane.resolution': expected [x, y, z, t], "
                              f"got {self.hexplane.resolution}")
        ordered_pair(self.sds_elevation_range, "dynamic.sds_elevation_range")
        ordered_pair([self.sds.t_min, self.sds.t_max], "dynamic.sds.t_min/t_max")
