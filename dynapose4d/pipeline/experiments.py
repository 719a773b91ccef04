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

This module runs the jobs; `experiment_file` reads the file and expands it into jobs, `experiment_results` writes
the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue
from typing import Any

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import write_json, write_text
from dynapose4d.data.scene_spec import resolve_scene
from dynapose4d.evaluation.table import metrics_table
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.evaluate import evaluate_run
from dynapose4d.pipeline.experiment_file import Job, load_experiment, make_jobs
from dynapose4d.pipeline.experiment_results import log_wandb_table, write_results
from dynapose4d.pipeline.run_command import command_line, run_argv
from dynapose4d.pipeline.run_folder import copy_finished_stages
from dynapose4d.pipeline.runner import DEFAULT_STAGES, StageRunner
from dynapose4d.stages.base import quiet_lightning


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
    log_wandb_table(exp, jobs, load_config(jobs[0].config, jobs[0].overrides), root)
    return {"jobs": jobs, "table": table, "root": root}


def _echo_job(job: Job, echo) -> None:
    state = "done" if job.status == "done" else f"FAILED ({job.error})"
    echo(f"  {job.variant} on {job.scene_name}: {state} in {job.seconds:.1f} s")


def experiment_cli(args: argparse.Namespace) -> int:
    """CLI handler of `dynapose4d experiment`."""
    quiet_lightning()
    res = run_experiment(args.file, args.out, gpus=int(args.gpus or 0), overrides=list(args.overrides or []))
    return 0 if all(j.status == "done" for j in res["jobs"]) else 1
