"""Typed run configuration: dataclasses + YAML presets + `key.sub=value` overrides (OmegaConf structured).

The stages' sections are defined in `dynapose4d.stages.<stage>.config` and `dynapose4d.stages.settings` (plain
dataclasses, no Lightning); this module
composes them into `RunConfig`. Loading, presets and field docs: `dynapose4d.core.structured`. Unknown keys and wrong
types fail with a `ConfigError` that names the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from omegaconf import OmegaConf

from dynapose4d.core.errors import ConfigError
from dynapose4d.core.io import write_text
from dynapose4d.core.structured import AT_LEAST_0, Bound, Rule, check_rules, known_keys, merge_structured
from dynapose4d.data.scene import CUTOUTS, VIDEO_ALIGNS
from dynapose4d.export import ExportConfig, export_settings_problem
from dynapose4d.priors.zero123 import Zero123Config
from dynapose4d.stages.cape.config import CapeStageConfig
from dynapose4d.stages.dynamic.config import DynamicConfig
from dynapose4d.stages.settings import TrainerConfig, WandbConfig
from dynapose4d.stages.static.config import StaticConfig
from dynapose4d.stages.static.config import check_config as check_static_config

STAGE_NAMES: tuple[str, ...] = ("static", "cape", "dynamic")

# The environment variables W&B users set; they take precedence over the preset's `wandb:` section (not over --set).
WANDB_ENV: dict[str, str] = {"WANDB_MODE": "mode", "WANDB_PROJECT": "project", "WANDB_ENTITY": "entity"}
_WANDB_MODES = {"online": "online", "offline": "offline", "disabled": "disabled", "run": "online", "dryrun": "offline"}


@dataclass
class RunConfig:
    """The whole pipeline's configuration, written resolved to RUN/config.yaml."""

    seed: int = 0  # global seed (lightning.seed_everything)
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))  # stages to run, in pipeline order
    max_image_size: int = 512  # longer side (pixels) of the frames the stages see: larger scenes are scaled down
    # (a picture or a folder without camera.json in the recentring resample; a folder with camera.json whole, views/
    # and keypoints with it, the cameras' intrinsics following the frame size, and gt/ frames compared at that
    # size). 0 = the files' own size. docs/scene-folder.md
    cutout: str = "auto"  # pictures, frames and views without alpha: "plain" removes a uniform background and
    # refuses any other; "grabcut" cuts the object out of any background (OpenCV GrabCut, no model; see
    # dynapose4d/data/cutout.py for its limits); "u2net" with U²-Net (the `u2net` weights; DreamGaussian's
    # preprocessing); "auto" uses plain where the border is one colour, else u2net when its weights file exists,
    # else grabcut
    u2net: str = "~/.cache/dynapose4d/u2net.pth"  # U²-Net weights, the authors' u2net.pth or u2netp.pth (from
    # github.com/xuebinqin/U-2-Net, saved_models/): with them `cutout` auto cuts real backgrounds by U²-Net
    video_align: str = "auto"  # how the driving video is laid onto the picture: "auto" by frame 0's object box when
    # its frames are of another size than the picture (else as they are); "box" always so (a clip framed otherwise
    # than the picture); "none" as they are (frames of another size are refused). docs/scene-folder.md
    video_frames: int = 0  # driving frames used from a longer video: N >= 2 keeps N evenly spaced, the first and
    # last included (DreamGaussian4D trains on 14, DynaPose4D on 16); 0 keeps all (the run suggests N for a long clip)
    zero123: Zero123Config = field(default_factory=Zero123Config)  # Zero-1-to-3 of static.prior, dynamic.lambda_sds
    static: StaticConfig = field(default_factory=StaticConfig)
    cape: CapeStageConfig = field(default_factory=CapeStageConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    export: ExportConfig = field(default_factory=ExportConfig)  # RUN/export, written after the dynamic stage

    RULES: ClassVar[dict[str, Rule]] = {
        "seed": Bound(0, 2**32 - 1), "max_image_size": AT_LEAST_0, "cutout": CUTOUTS, "video_align": VIDEO_ALIGNS,
        "video_frames": AT_LEAST_0,
    }


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                environ: Mapping[str, str] | None = None) -> RunConfig:
    """The pipeline's RunConfig from defaults, an optional YAML preset (a path or a preset name, see
    `resolve_preset`), the W&B environment variables (`wandb_env_overrides(environ)`, default `os.environ`) and
    `key.sub=value` overrides, in that order (see `merge_structured`); also checks the stage names."""
    overrides = [*wandb_env_overrides(os.environ if environ is None else environ), *overrides]
    obj = merge_structured(RunConfig, path, overrides)
    if obj.video_frames == 1:
        raise ConfigError(f"config key 'video_frames': {obj.video_frames}; 0 (all) or at least 2")
    bad = [s for s in obj.stages if s not in STAGE_NAMES]
    if bad:
        raise ConfigError(f"config key 'stages': unknown stage(s) {bad}; choose from {list(STAGE_NAMES)}")
    problem = export_settings_problem(obj.export)
    if problem:
        raise ConfigError(f"config key {problem}")
    # the stages check their sections again; here a bad value stops before anything is written
    check_static_config(obj.static)
    obj.cape.validate()
    obj.dynamic.validate()
    return obj


def load_run_config(run_dir: str | Path) -> RunConfig:
    """A run's RUN/config.yaml as a RunConfig, also when an earlier version wrote it: keys this version does not
    know are left out (a warning names them), missing ones take today's defaults; no config.yaml: the defaults.
    For the commands that read a finished run (`showcase`, `eval`, `export`), not for resuming one."""
    import warnings

    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return RunConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: unreadable YAML ({str(e).splitlines()[0]})") from None
    data, dropped = known_keys(RunConfig, data)
    if dropped:
        warnings.warn(f"{path}: left out keys this version does not know: {', '.join(dropped)}", stacklevel=2)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
        obj: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        check_rules(obj)
        return obj
    except Exception as e:  # noqa: BLE001 - OmegaConf's validation errors and broken rules: one line naming the file
        raise ConfigError(f"{path}: {str(e).splitlines()[0]}") from None


def wandb_env_overrides(environ: Mapping[str, str]) -> list[str]:
    """`wandb.mode/project/entity=...` overrides from WANDB_MODE, WANDB_PROJECT and WANDB_ENTITY when set (and
    not empty): what W&B users expect to win over a preset. ConfigError on a WANDB_MODE W&B does not know."""
    out = []
    for var, key in WANDB_ENV.items():
        value = environ.get(var, "").strip()
        if not value:
            continue
        if key == "mode":
            if value.lower() not in _WANDB_MODES:
                raise ConfigError(f"environment WANDB_MODE={value!r}: expected online, offline or disabled")
            value = _WANDB_MODES[value.lower()]
        out.append(f"wandb.{key}={json.dumps(value)}")
    return out


def to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (RUN/config.yaml)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, to_yaml(cfg))
