"""The cape stage's settings (`cape:` in a run config): a plain dataclass, no Lightning, so the run config
(`dynapose4d.pipeline.config`) composes it without loading the stage. Each field is documented on the line where
it is defined (`dynapose4d config show` prints these docs); measured effects are in experiments/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dynapose4d.cape.data import AugmentConfig
from dynapose4d.core.precision import PRECISIONS
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

    RULES: ClassVar[dict[str, Rule]] = {
        "arch": ("graph", "poseanything"), "steps": AT_LEAST_0, "batch_size": AT_LEAST_1, "lr": AT_LEAST_0,
        "weight_decay": AT_LEAST_0, "warmup_steps": AT_LEAST_0, "num_views": AT_LEAST_1, "reference_views": AT_LEAST_0,
        "elevation": Bound(-90, 90), "pose_angle": Bound(0, 180), "posed_fraction": FRACTION,
        "depth_tolerance": AT_LEAST_0, "lambda_heat": AT_LEAST_0, "heat_sigma": POSITIVE, "num_workers": AT_LEAST_0,
        "precision": PRECISIONS, "predict_batch": AT_LEAST_1, "overlay_fps": AT_LEAST_1,
    }

    def validate(self) -> None:
        """ConfigError naming the key on a value outside its `RULES`, or an elevation range out of order."""
        check_rules(self, "cape.")
        ordered_pair(self.elevation, "cape.elevation")
