"""Typed run configuration: dataclasses + YAML presets + `key.sub=value` overrides (OmegaConf structured).

Each stage's config lives next to its LightningModule (`stages/*.py`); this module composes them into
`RunConfig`. Unknown keys and wrong types fail with a `ConfigError` that names the key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dynapose4d.errors import ConfigError
from dynapose4d.stages.cape import CapeStageConfig
from dynapose4d.stages.dynamic import DynamicConfig
from dynapose4d.stages.static import StaticConfig

T = TypeVar("T")

STAGE_NAMES: tuple[str, ...] = ("static", "cape", "dynamic")


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


@dataclass
class RunConfig:
    """The whole pipeline's configuration, written resolved to RUN/config.yaml."""

    seed: int = 0  # global seed (lightning.seed_everything)
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))  # stages to run, in pipeline order
    static: StaticConfig = field(default_factory=StaticConfig)
    cape: CapeStageConfig = field(default_factory=CapeStageConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def _fail(e: Exception, where: str) -> ConfigError:
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ConfigError(f"{where}: config key '{key}': {msg}" if key else f"{where}: {msg}")


def merge_structured(schema: type[T], path: str | Path | None = None,
                     overrides: list[str] | tuple[str, ...] = ()) -> T:
    """An instance of the dataclass `schema`: its defaults, then an optional YAML file (or a chain via
    `defaults: [file.yaml]`), then `key.sub=value` overrides. Raises ConfigError naming the file or override and
    the key on unknown keys, wrong types or unreadable YAML."""
    cfg = OmegaConf.structured(schema)
    if path is not None:
        for layer in _yaml_chain(Path(path)):
            try:
                cfg = OmegaConf.merge(cfg, layer[1])
            except OmegaConfBaseException as e:
                raise _fail(e, str(layer[0])) from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set {ov!r}: expected key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as e:
            raise _fail(e, f"--set {ov}") from None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The pipeline's RunConfig from defaults, an optional YAML preset and `key.sub=value` overrides
    (see `merge_structured`); also checks the stage names."""
    obj = merge_structured(RunConfig, path, overrides)
    bad = [s for s in obj.stages if s not in STAGE_NAMES]
    if bad:
        raise ConfigError(f"config key 'stages': unknown stage(s) {bad}; choose from {list(STAGE_NAMES)}")
    return obj


def _yaml_chain(path: Path) -> list[tuple[Path, Any]]:
    """A YAML file and the files named in its `defaults:` list (relative to it), base first."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = OmegaConf.load(path)
    except Exception as e:  # yaml errors
        raise ConfigError(f"{path}: unreadable YAML ({str(e).splitlines()[0]})") from None
    chain: list[tuple[Path, Any]] = []
    if "defaults" in data:
        for base in data.pop("defaults"):
            chain += _yaml_chain(path.parent / str(base))
    return chain + [(path, data)]


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML, W&B and hashing)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(to_yaml(cfg))


def config_hash(section: Any) -> str:
    """Stable short hash of a config section (a dataclass or dict), used by resume to detect changes."""
    d = OmegaConf.to_container(OmegaConf.structured(section)) if not isinstance(section, dict) else section
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]
