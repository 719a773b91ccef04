"""The results of an experiment: OUT/<name>/results.csv (a row per variant x scene, and the per-variant means),
results.md (the means as a table, with the no-motion baseline) and the same comparison as a W&B table.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from dynapose4d.core.io import write_text
from dynapose4d.data.scene_spec import scene_name
from dynapose4d.pipeline.experiment_file import ExperimentFile, Job
from dynapose4d.stages.logger import wandb_mode


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


def log_wandb_table(exp: ExperimentFile, jobs: list[Job], cfg: Any, root: Path) -> None:
    """The comparison as a W&B table in a run of its own (job_type "experiment"); offline by default."""
    wc = cfg.wandb
    if not wc.enabled or wc.mode == "disabled":
        return
    import wandb

    columns = ["variant", "scene", "status", "seconds", *exp.metrics]
    data = [[j.variant, j.scene_name, j.status, round(j.seconds, 1)] + [_get(j.metrics, c) for c in exp.metrics]
            for j in jobs]
    run = wandb.init(project=wc.project, entity=wc.entity, group=exp.wandb.group or exp.name, job_type="experiment",
                     name=f"{exp.name}-results", dir=str(root), mode=wandb_mode(wc, root), tags=list(exp.wandb.tags),
                     config={"experiment": exp.name, "variants": exp.variants, "scenes": exp.scenes})
    run.log({"results": wandb.Table(columns=columns, data=data)})
    run.finish()
