"""`dynapose4d experiment FILE [--out DIR] [--gpus N] [--set k=v ...]`: ablations and local sweeps.

Two kinds of file in experiments/:

* An **experiment** (`variants:`): every variant (a small override list) on every scene, each a normal run
  folder OUT/<name>/runs/<variant>-<scene>/ followed by `eval` against the scene's gt/, then a comparison
  table (variants x metrics, averaged over scenes = objects) as OUT/<name>/results.md, results.csv and a
  W&B table (its own W&B run, job_type "experiment", in the experiment's group).
      name: ablation_pose
      config: ../configs/cpu.yaml          # base preset, relative to this file
      scenes: [synthetic:humanoid:0, path/to/scene]   # synthetic:<template>:<seed>[:<frames>[:<size>]]
      overrides: []                        # applied to every variant
      variants: {full: [], no_kml: [dynamic.lambda_kml=0]}
      wandb: {group: ablation_pose, tags: [ablation]}
      metrics: [novel/psnr_moving, mean/kp_error_3d]   # table columns (scope/key of metrics.json)
* A **W&B sweep** (`method:`, `parameters:`, `command:` calling `dynapose4d run ... --set ${args_no_hyphens}`):
  `wandb sweep FILE` + `wandb agent ID` run it on W&B; `dynapose4d experiment FILE` expands its grid locally
  (every combination of the parameters' `values`) and runs it like an experiment, without a W&B server.

Variants run in sequence in this process, or with `--gpus N` as N parallel subprocesses, one per GPU
(CUDA_VISIBLE_DEVICES). The first variant of each scene runs first; the others start from a copy of its
finished stages and `--resume`, so stages whose config is the same (static, cape in the pose ablation) are
not recomputed. Rerunning an experiment resumes it.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dynapose4d.core.errors import ConfigError, InputError
from dynapose4d.core.io import write_json, write_text
from dynapose4d.data.scene_spec import resolve_scene, scene_name
from dynapose4d.evaluation.table import metrics_table
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.evaluate import evaluate_run
from dynapose4d.pipeline.run_command import add_run_args, command_line, run_argv
from dynapose4d.pipeline.run_folder import copy_finished_stages
from dynapose4d.pipeline.runner import DEFAULT_STAGES, StageRunner
from dynapose4d.stages.base import quiet_lightning

DEFAULT_METRICS: tuple[str, ...] = (
    "novel/psnr_moving", "novel/psnr", "mean/ssim", "mean/lpips", "mean/pck", "mean/kp_error_3d", "mean/jitter",
)


@dataclass
class ExperimentWandb:
    group: str | None = None  # W&B group of every run of the experiment (default: the experiment's name)
    tags: list[str] = field(default_factory=list)  # W&B tags (the variant and scene names are added)


@dataclass
class ExperimentFile:
    """An experiments/*.yaml file with `variants:` (see the module docstring)."""

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


# ------------------------------------------------------------------------------------------------ scenes


# ------------------------------------------------------------------------------------------------ files


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


# ------------------------------------------------------------------------------------------------ running


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


def run_job(job: Job, scene_dir: Path, gpu: int | None = None, stages: Any = None) -> Job:
    """Run (or resume) one job and evaluate it against the scene's gt/. In-process without a GPU id,
    else as `dynapose4d run` + `dynapose4d eval` subprocesses on that GPU."""
    t0 = time.perf_counter()
    gt = scene_dir / "gt"
    try:
        if gpu is None:
            _run_in_process(job, scene_dir, gt, stages)
        else:
            _run_subprocess(job, scene_dir, gt, gpu)
        mpath = job.run_dir / ("metrics.json" if job.protocol == "gt" else f"metrics_{job.protocol}.json")
        job.metrics = json.loads(mpath.read_text()) if mpath.is_file() else {}
        job.status = "done"
    except Exception as e:  # one failing variant must not stop the others
        job.status = "failed"
        job.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log = job.run_dir.parent / f"{job.run_dir.name}.error.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
    job.seconds = time.perf_counter() - t0
    return job


def _run_namespace(job: Job, scene_dir: Path, overrides: list[str]) -> argparse.Namespace:
    """The `dynapose4d run` arguments of a job (always --resume)."""
    return argparse.Namespace(scene=str(scene_dir), out=str(job.run_dir), config=job.config, overrides=overrides,
                              resume=True)


def _run_in_process(job: Job, scene_dir: Path, gt: Path, stages: Any = None) -> None:
    cfg = load_config(job.config, job.overrides)
    cmd = command_line(_run_namespace(job, scene_dir, job.overrides))
    StageRunner(scene_dir, job.run_dir, cfg, resume=True, command=cmd, stages=stages or DEFAULT_STAGES).run()
    if gt.is_dir():
        result = evaluate_run(job.run_dir, gt, job.protocol)
        stem = "metrics" if job.protocol == "gt" else f"metrics_{job.protocol}"
        write_json(job.run_dir / f"{stem}.json", result)
        write_text(job.run_dir / f"{stem}.md", metrics_table(result))


def _run_subprocess(job: Job, scene_dir: Path, gt: Path, gpu: int) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
    py = [sys.executable, "-m", "dynapose4d"]
    run = py + run_argv(_run_namespace(job, scene_dir, [*job.overrides, "trainer.accelerator=gpu",
                                                        "trainer.devices=1"]))
    log = job.run_dir.parent / f"{job.run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ CUDA_VISIBLE_DEVICES={gpu} {shlex.join(run)}\n")
        f.flush()
        if subprocess.run(run, env=env, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise RuntimeError(f"dynapose4d run failed (see {log})")
        if gt.is_dir():
            ev = py + ["eval", str(job.run_dir), "--gt", str(gt), "--protocol", job.protocol]
            f.write(f"$ {shlex.join(ev)}\n")
            f.flush()
            if subprocess.run(ev, env=env, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
                raise RuntimeError(f"dynapose4d eval failed (see {log})")


def run_experiment(path: str | Path, out: str | Path = "runs/experiments", gpus: int = 0,
                   overrides: list[str] | tuple[str, ...] = (), scenes: list[str] | None = None,
                   variants: list[str] | None = None, config: str | None = None, stages: Any = None,
                   echo=print) -> dict[str, Any]:
    """Run an experiment (or a sweep's grid, locally); returns {"jobs": [...], "table": markdown, "root"}.
    `scenes` replaces the file's scene list, `variants` keeps only those variants, `config` the base preset,
    `stages` the pipeline (in-process runs only) — for tests."""
    path = Path(path)
    exp = load_experiment(path)
    if scenes:
        exp.scenes = list(scenes)
    if config:
        exp.config = config
    if variants is not None:
        unknown = [v for v in variants if v not in exp.variants]
        if unknown:
            raise InputError(f"{path}: unknown variant(s) {unknown}; the file has {list(exp.variants)}")
        exp.variants = {v: exp.variants[v] for v in variants}
    root = Path(out) / exp.name
    extra = list(overrides)
    jobs = make_jobs(exp, root, extra, path.parent)
    for job in jobs:  # validate every variant's config before running anything
        load_config(job.config, job.overrides)
    scene_dirs = {s: resolve_scene(s, Path(out) / "scenes", path.parent) for s in exp.scenes}
    write_text(root / "experiment.json", json.dumps({
        "file": str(path), "name": exp.name, "scenes": exp.scenes, "variants": exp.variants,
        "overrides": exp.overrides + extra, "gpus": gpus}, indent=2))

    first = {}
    for job in jobs:
        first.setdefault(job.scene_spec, job)
    rest = [j for j in jobs if first[j.scene_spec] is not j]
    echo(f"experiment {exp.name}: {len(exp.variants)} variant(s) x {len(exp.scenes)} scene(s) -> {root}")

    def execute(batch: list[Job]) -> None:
        if gpus > 0:
            free: Queue[int] = Queue()
            for g in range(gpus):
                free.put(g)

            def on_gpu(job: Job) -> Job:
                g = free.get()
                try:
                    return run_job(job, scene_dirs[job.scene_spec], g)
                finally:
                    free.put(g)

            with ThreadPoolExecutor(max_workers=gpus) as pool:
                for job in pool.map(on_gpu, batch):
                    _echo_job(job, echo)
        else:
            for job in batch:
                _echo_job(run_job(job, scene_dirs[job.scene_spec], stages=stages), echo)

    execute(list(first.values()))
    for job in rest:
        src = first[job.scene_spec]
        if src.status == "done" and not (job.run_dir / "manifest.json").is_file():
            copy_finished_stages(src.run_dir, job.run_dir)
    execute(rest)

    table = write_results(exp, jobs, root)
    echo(table)
    echo(f"results: {root / 'results.md'}, {root / 'results.csv'}")
    _log_wandb_table(exp, jobs, load_config(jobs[0].config, jobs[0].overrides), root)
    return {"jobs": jobs, "table": table, "root": root}


def _echo_job(job: Job, echo) -> None:
    state = "done" if job.status == "done" else f"FAILED ({job.error})"
    echo(f"  {job.variant} on {job.scene_name}: {state} in {job.seconds:.1f} s")


# ------------------------------------------------------------------------------------------------ tables


def _get(metrics: dict[str, Any], column: str) -> Any:
    """metrics.json value of '<scope>/<key>' (scope mean, novel, or a camera name)."""
    scope, _, key = column.partition("/")
    d = metrics.get(scope) if scope in ("mean", "novel") else metrics.get("per_view", {}).get(scope)
    return (d or {}).get(key)


def _baseline_key(column: str) -> str | None:
    scope, _, key = column.partition("/")
    base = {"jitter": "jitter_gt"}.get(key, f"{key}_no_motion")
    return f"{scope}/{base}"


def _avg(vals: list[Any]) -> float | None:
    xs = [float(v) for v in vals if isinstance(v, (int, float))]
    return sum(xs) / len(xs) if xs else None


def write_results(exp: ExperimentFile, jobs: list[Job], root: Path) -> str:
    """results.csv (a row per variant x scene, and per-variant means over scenes) and results.md (means)."""
    columns = exp.metrics
    variants = list(exp.variants)
    rows: list[list[Any]] = []
    for job in jobs:
        rows.append([job.variant, job.scene_name, job.status, round(job.seconds, 1)]
                    + [_get(job.metrics, c) for c in columns])
    means: dict[str, list[float | None]] = {}
    for v in variants:
        done = [j for j in jobs if j.variant == v and j.status == "done"]
        means[v] = [_avg([_get(j.metrics, c) for j in done]) for c in columns]
        rows.append([v, "mean", f"{len(done)}/{len(exp.scenes)} done", None] + means[v])
    all_done = [j for j in jobs if j.status == "done"]
    baseline = [_avg([_get(j.metrics, _baseline_key(c)) for j in all_done]) for c in columns]
    rows.append(["no-motion baseline", "mean", "", None] + baseline)

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["variant", "scene", "status", "seconds", *columns])
    w.writerows(rows)
    write_text(root / "results.csv", buf.getvalue())

    def fmt(x: Any) -> str:
        return "–" if x is None else f"{x:.4g}"

    md = [f"## {exp.name}", "", exp.description.strip(), "",
          f"Mean over {len(exp.scenes)} scene(s) ({', '.join(scene_name(s) for s in exp.scenes)}); "
          "the baseline row is gt frame 0 held still (jitter: the gt tracks).", "",
          "| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for v in variants:
        md.append(f"| {v} | " + " | ".join(fmt(x) for x in means[v]) + " |")
    md.append("| no-motion baseline | " + " | ".join(fmt(x) for x in baseline) + " |")
    failed = [j for j in jobs if j.status != "done"]
    if failed:
        md += ["", "Failed: " + "; ".join(f"{j.variant} on {j.scene_name}: {j.error}" for j in failed)]
    text = "\n".join(md) + "\n"
    write_text(root / "results.md", text)
    return text


def _log_wandb_table(exp: ExperimentFile, jobs: list[Job], cfg: Any, root: Path) -> None:
    """The comparison as a W&B table in a run of its own (job_type "experiment"); offline by default."""
    wc = cfg.wandb
    if not wc.enabled or wc.mode == "disabled":
        return
    import wandb

    columns = ["variant", "scene", "status", "seconds", *exp.metrics]
    data = [[j.variant, j.scene_name, j.status, round(j.seconds, 1)] + [_get(j.metrics, c) for c in exp.metrics]
            for j in jobs]
    run = wandb.init(project=wc.project, entity=wc.entity, group=exp.wandb.group or exp.name, job_type="experiment",
                     name=f"{exp.name}-results", dir=str(root), mode=wc.mode, tags=list(exp.wandb.tags),
                     config={"experiment": exp.name, "variants": exp.variants, "scenes": exp.scenes})
    run.log({"results": wandb.Table(columns=columns, data=data)})
    run.finish()


def experiment_cli(args: argparse.Namespace) -> int:
    """CLI handler of `dynapose4d experiment`."""
    quiet_lightning()
    res = run_experiment(args.file, args.out, gpus=int(args.gpus or 0), overrides=list(args.overrides or []))
    return 0 if all(j.status == "done" for j in res["jobs"]) else 1
