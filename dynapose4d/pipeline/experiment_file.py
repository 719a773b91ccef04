"""An experiment file (experiments/*.yaml; `dynapose4d.pipeline.experiments` describes both kinds): reading and
checking it, a W&B sweep file read as a local grid of variants, and the jobs (one variant on one scene) it expands to.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.data.scene_spec import scene_name
from dynapose4d.pipeline.run_command import add_run_args

DEFAULT_METRICS: tuple[str, ...] = (
    "novel/psnr_moving", "novel/psnr", "mean/ssim", "mean/lpips", "mean/pck", "mean/kp_error_3d", "mean/jitter",
)


@dataclass
class ExperimentWandb:
    group: str | None = None  # W&B group of every run of the experiment (default: the experiment's name)
    tags: list[str] = field(default_factory=list)  # W&B tags (the variant and scene names are added)


@dataclass
class ExperimentFile:
    """An experiments/*.yaml file with `variants:` (see `dynapose4d.pipeline.experiments`)."""

    name: str = MISSING  # experiment name: OUT/<name>/
    description: str = ""  # what it tests
    config: str | None = None  # base preset (path relative to this file), e.g. ../configs/cpu.yaml
    scenes: list[str] = MISSING  # scene folders (relative to this file) or synthetic:<template>:<seed>[:<T>[:<px>]]
    overrides: list[str] = field(default_factory=list)  # key=value applied to every variant
    variants: dict[str, list[str]] = MISSING  # variant name -> its key=value overrides
    wandb: ExperimentWandb = field(default_factory=ExperimentWandb)
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))  # table columns: <scope>/<key>
    protocol: str = "gt"  # eval protocol: "gt" or "consistent4d"


@dataclass
class Job:
    """One variant on one scene."""

    variant: str
    scene_name: str
    scene_spec: str
    config: str | None
    overrides: list[str]
    run_dir: Path
    protocol: str = "gt"
    status: str = "pending"
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def is_sweep(data: dict[str, Any]) -> bool:
    return "parameters" in data and "variants" not in data


def load_experiment(path: str | Path) -> ExperimentFile:
    """Read and validate an experiment file (unknown keys / wrong types fail naming the key)."""
    path = Path(path)
    data = _read_yaml(path)
    if is_sweep(data):
        return sweep_as_experiment(path, data)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExperimentFile), data)
        exp: ExperimentFile = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        raise ConfigError(f"{path}: key '{key}': {str(e).splitlines()[0]}") from None
    if exp.config is not None:
        exp.config = str(path.parent / exp.config) if not Path(exp.config).is_absolute() else exp.config
    if not exp.variants:
        raise ConfigError(f"{path}: key 'variants': at least one variant is needed")
    if not exp.scenes:
        raise ConfigError(f"{path}: key 'scenes': at least one scene is needed")
    if exp.protocol not in ("gt", "consistent4d"):
        raise ConfigError(f"{path}: key 'protocol': 'gt' or 'consistent4d', got {exp.protocol!r}")
    return exp


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: experiment file not found")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception as e:
        raise ConfigError(f"{path}: unreadable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data  # type: ignore[return-value]


def sweep_command_args(data: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The `dynapose4d ...` arguments `wandb agent` would run for one parameter set (its macros filled in:
    ${env}, ${interpreter}, ${program} dropped; ${args_no_hyphens} -> key=value; ${args} -> --key=value)."""
    out: list[str] = []
    for tok in data.get("command", []):
        tok = str(tok)
        if tok in ("${env}", "${interpreter}", "${program}"):
            continue
        if tok == "${args_no_hyphens}":
            out += [f"{k}={v}" for k, v in params.items()]
        elif tok == "${args}":
            out += [f"--{k}={v}" for k, v in params.items()]
        elif tok.startswith("${"):
            raise ConfigError(f"sweep command macro {tok} is not supported locally")
        else:
            out.append(tok)
    if out[:1] == ["dynapose4d"]:
        out = out[1:]
    return out


def sweep_as_experiment(path: Path, data: dict[str, Any]) -> ExperimentFile:
    """A W&B sweep file as a local grid experiment (one variant per combination of `values`)."""
    params = data.get("parameters") or {}
    grid: dict[str, list[Any]] = {}
    for k, spec in params.items():
        if not isinstance(spec, dict) or not ("values" in spec or "value" in spec):
            raise ConfigError(f"{path}: parameter '{k}': only 'values'/'value' can run locally "
                              "(distributions need `wandb agent`)")
        grid[k] = list(spec["values"]) if "values" in spec else [spec["value"]]
    keys = list(grid)
    variants: dict[str, list[str]] = {}
    base: argparse.Namespace | None = None
    for combo in itertools.product(*(grid[k] for k in keys)):
        p = dict(zip(keys, combo))
        argv = sweep_command_args(data, p)
        if argv[:1] != ["run"]:
            raise ConfigError(f"{path}: key 'command': must call `dynapose4d run ...`, got {shlex.join(argv)}")
        parser = argparse.ArgumentParser(prog="dynapose4d run", add_help=False)
        add_run_args(parser)
        parser.add_argument("--stages", default=None)
        try:
            ns = parser.parse_args(argv[1:])
        except SystemExit:
            raise ConfigError(f"{path}: key 'command': not valid `dynapose4d run` arguments: "
                              f"{shlex.join(argv)}") from None
        base = base or ns
        name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in p.items())
        variants[name] = [o for o in ns.overrides if not o.startswith("wandb.mode=")]
        if ns.stages:
            variants[name].append(f"stages=[{ns.stages}]")
    assert base is not None
    config = base.config
    if config and not Path(config).is_absolute() and not Path(config).is_file():
        # the agent runs from the repository root; locally, also accept paths relative to the file's folders
        config = next((str(d / config) for d in (path.parent, path.parent.parent) if (d / config).is_file()), config)
    return ExperimentFile(
        name=str(data.get("name") or path.stem), description=str(data.get("description", "")),
        config=config, scenes=[base.scene], overrides=[], variants=variants,
        wandb=ExperimentWandb(group=str(data.get("name") or path.stem), tags=["sweep"]),
        metrics=list(dict.fromkeys([_metric_column(data.get("metric", {}).get("name")), *DEFAULT_METRICS])),
    )


def _metric_column(name: str | None) -> str:
    """The table column of a sweep's metric name ("dynamic/novel/psnr_moving" -> "novel/psnr_moving")."""
    return (name or "novel/psnr_moving").removeprefix("dynamic/")


def make_jobs(exp: ExperimentFile, out: Path, extra: list[str], file_dir: Path) -> list[Job]:
    """Scene-major list of jobs (variant order as in the file)."""
    group = exp.wandb.group or exp.name
    jobs = []
    for spec in exp.scenes:
        sname = scene_name(spec)
        for variant, ovs in exp.variants.items():
            tags = [*exp.wandb.tags, variant, sname]
            wandb_ov = [f"wandb.group={group}", f"wandb.tags=[{','.join(_safe_tag(t) for t in tags)}]"]
            jobs.append(Job(
                variant=variant, scene_name=sname, scene_spec=spec, config=exp.config,
                overrides=[*exp.overrides, *ovs, *wandb_ov, *extra],
                run_dir=out / "runs" / f"{_safe_tag(variant)}-{sname}", protocol=exp.protocol,
            ))
    return jobs


def _safe_tag(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", s)
