"""The settings of the stages: the Trainer and W&B settings they share, and each stage's own section.

Plain dataclasses (no Lightning), so the run config (`dynapose4d.pipeline.config.RunConfig`) composes them without
loading the stages. Each field is documented on the line where it is defined (`dynapose4d config show`
prints these docs); measured effects of the settings are in experiments/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dynapose4d.cape.data import AugmentConfig
from dynapose4d.core.errors import ConfigError
from dynapose4d.deform import DEFORM_KINDS, ControlConfig, HexPlaneConfig
from dynapose4d.gaussians.densify import DensifyConfig
from dynapose4d.priors.sds import SDSConfig
from dynapose4d.priors.svd import SVDConfig


@dataclass
class TrainerConfig:
    """Lightning Trainer settings shared by the stages."""

    accelerator: str = "auto"  # "cpu", "gpu" or "auto" (gpu when CUDA is available)
    devices: int = 1  # >1 trains the cape and dynamic stages with DDP (static stays on one device)
    strategy: str = "auto"  # Lightning strategy; "ddp_spawn" for CPU multi-process tests
    precision: str = "32-true"  # Lightning precision string, or "auto": bf16-mixed where the hardware has it
    log_every_n_steps: int = 10  # scalar logging interval in steps
    checkpoint_every_n_steps: int = 50  # interval of the resumable "last.ckpt" of each stage
    progress_bar: bool = True  # a progress bar per stage with the current losses


@dataclass
class WandbConfig:
    """Weights & Biases tracking through Lightning's WandbLogger (rank zero only)."""

    enabled: bool = True  # log to W&B at all (files in the run folder are written either way)
    project: str = "dynapose4d"  # W&B project
    entity: str | None = None  # W&B entity (team/user); None = the default one
    # "offline" (default; `wandb sync RUN/wandb/offline-run-*` uploads later), "online" or "disabled"
    mode: str = "offline"
    group: str | None = None  # W&B group; None = the run folder's name (one group per pipeline run)
    tags: list[str] = field(default_factory=list)  # W&B tags


# ------------------------------------------------------------------------------------------------ static

PRIORS = ("auto", "zero123", "views", "none")  # static.prior
INITS = ("image", "sphere")  # static.init


@dataclass
class StaticConfig:
    """Settings of the static stage (defaults: DreamGaussian's image-to-3D stage 1 where it has one)."""

    steps: int = 500  # optimisation steps (DreamGaussian: 500)
    init: str = "sphere"  # "sphere": random ball (DreamGaussian); "image": inflated lift of the input mask
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


def check_config(cfg: StaticConfig) -> None:
    """ConfigError naming the key on values the dataclass types cannot rule out."""
    if cfg.prior not in PRIORS:
        raise ConfigError(f"config key 'static.prior': {cfg.prior!r} is not one of {list(PRIORS)}")
    if cfg.init not in INITS:
        raise ConfigError(f"config key 'static.init': {cfg.init!r} is not one of {list(INITS)}")
    if cfg.steps < 1:
        raise ConfigError(f"config key 'static.steps': must be >= 1, got {cfg.steps}")
    if len(cfg.novel_sizes) != len(cfg.novel_size_until) + 1:
        raise ConfigError("config key 'static.novel_size_until': needs one entry fewer than static.novel_sizes")
    if len(cfg.novel_elevation) != 2 or cfg.novel_elevation[0] > cfg.novel_elevation[1]:
        raise ConfigError("config key 'static.novel_elevation': expected [min, max] degrees")


# ------------------------------------------------------------------------------------------------ cape


def _finetune_augment() -> AugmentConfig:
    # The object's own colours identify its parts: no colour changes, mild geometry, white background (what was
    # measured against it: experiments/RESULTS.md, "CAPE fine-tuning", settings kept and not kept).
    return AugmentConfig(scale=[0.9, 1.1], rotation=5.0, translate=0.05, hue=0.0, saturation=[1.0, 1.0],
                         brightness=[0.95, 1.05], image_brightness=0.02, background=0.0, flip=0.0,
                         drop_keypoints=0.1, occluded_weight=0.3, elastic=0.0)


@dataclass
class CapeStageConfig:
    """Settings of the cape stage (per-object fine-tuning of the CAPE model, then driving-frame keypoints)."""

    arch: str = "graph"  # "graph": our graph model, fine-tuned per object; "poseanything": the official
    # PoseAnything checkpoint (cape.checkpoint), frozen
    steps: int = 300  # fine-tuning steps (0 = use the starting checkpoint unchanged); ignored with arch=poseanything
    checkpoint: str = ""  # starting CAPE checkpoint; "" = the shipped dynapose4d/assets/cape_small.ckpt; with
    # arch=poseanything the official PoseAnything file (required), e.g. the 1-shot split-1 Tiny or Small
    batch_size: int = 8  # pairs per step
    lr: float = 1e-3  # AdamW learning rate (linear warm-up, cosine decay)
    weight_decay: float = 1e-4  # AdamW weight decay
    warmup_steps: int = 20  # learning-rate warm-up steps
    num_views: int = 384  # random views of the static Gaussians rendered for the fine-tuning pairs (each posed
    # one shows its own articulation: more views = more poses at the same step count)
    reference_views: int = 8  # extra query renders at the reference camera (what the dynamic stage's KML sees)
    elevation: list[float] = field(default_factory=lambda: [-10.0, 40.0])  # elevation range of the views (deg)
    pose_angle: float = 30.0  # max joint rotation (degrees) of the random articulations of the Gaussians along the
    # skeleton shown in the query views (`dynapose4d.cape.finetune.articulate`); 0 = rest pose only
    posed_fraction: float = 0.5  # share of the query views that show a random articulation (when pose_angle > 0)
    depth_tolerance: float = 0.1  # a projected keypoint is hidden when this far behind the rendered depth (world
    # units; the lifted keypoints sit inside the parts, up to their half-thickness behind the surface)
    lambda_heat: float = 10.0  # weight of the heatmap MSE (the L1 terms have weight 1)
    heat_sigma: float = 1.0  # heatmap target std in stride-4 cells
    augment: AugmentConfig = field(default_factory=_finetune_augment)  # augmentation of the pairs
    plain_support: bool = True  # the support image unaugmented (as at inference), one backbone pass per batch
    # for it instead of batch_size; False augments each pair's support as in `train-cape`
    num_workers: int = 0  # DataLoader workers
    precision: str = "32-true"  # Lightning precision of the fine-tuning; "auto": bf16 autocast where native
    predict_batch: int = 16  # driving frames per CAPE forward
    overlay_fps: int = 8  # frame rate of overlay.mp4 / overlay.gif

    def validate(self) -> None:
        if self.arch not in ("graph", "poseanything"):
            raise ConfigError(f"cape.arch must be 'graph' or 'poseanything', got {self.arch!r}")
        if self.steps < 0 or self.batch_size < 1 or self.num_views < 1:
            raise ConfigError("cape: steps must be >= 0, batch_size and num_views >= 1")
        if len(self.elevation) != 2 or self.elevation[0] > self.elevation[1]:
            raise ConfigError(f"cape.elevation must be [low, high], got {self.elevation}")


# ------------------------------------------------------------------------------------------------ dynamic


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
    background: float = 1.0  # background grey level of renders and targets (1 = white, as DreamGaussian4D)
    svd: SVDConfig = field(default_factory=SVDConfig)  # driving-video generation when the scene has no video
    track_neighbours: int = 8  # Gaussians each 3D keypoint is attached to
    evaluate: bool = True  # metrics against the scene's gt/ (when present) into RUN/dynamic/metrics.json
    video_fps: int = 8  # frame rate of the written videos
    orbit_frames: int = 36  # frames of the orbit video (one turn; the motion loops meanwhile)

    def validate(self) -> None:
        if self.deform not in DEFORM_KINDS:
            raise ConfigError(f"config key 'dynamic.deform': {self.deform!r} is not one of {list(DEFORM_KINDS)}")
        for k in ("steps", "batch_frames"):
            if getattr(self, k) < 1:
                raise ConfigError(f"config key 'dynamic.{k}': must be >= 1, got {getattr(self, k)}")
        for k in ("lambda_rgb", "lambda_alpha", "lambda_kml", "lambda_scl", "lambda_rigid", "lambda_track",
                  "lambda_bone", "lambda_sds"):
            if getattr(self, k) < 0:
                raise ConfigError(f"config key 'dynamic.{k}': must be >= 0, got {getattr(self, k)}")
