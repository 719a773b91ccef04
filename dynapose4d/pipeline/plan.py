"""What a run will do, decided before it starts: the hashes that say whether a stage's inputs changed, and the
plan that compares them with an earlier run's manifest to give each selected stage "skip", "resume" or "fresh".

A stage's config hash covers its config section, the seed, the scene's content (`scene_fingerprint`) and the
hashes of the stages before it; the manifest records it (`dynapose4d.pipeline.runner` describes the manifest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynapose4d.core.structured import config_hash
from dynapose4d.data.scene import Scene
from dynapose4d.pipeline.config import RunConfig
from dynapose4d.stages.base import StageContext

StageFn = Callable[[StageContext, Any], dict]  # run(ctx, stage config) -> {artifact name: path relative to RUN}
StageSpec = tuple[str, StageFn, Callable[[RunConfig], Any]]  # (name, run function, its config section)

#: One step of a plan: (stage, "skip"|"resume"|"fresh", its new manifest record, why it runs again or "").
PlanStep = tuple[str, str, dict[str, Any], str]

#: Stages that read the top-level `zero123` section (hashed with their own section: a change reruns them).
ZERO123_STAGES = ("static", "dynamic")

#: The form of each stage's outputs, hashed with its section: raised when a stage starts writing files that later
#: stages need (static 2: RUN/static/keypoints_3d.json), so a finished stage of an older run reruns on --resume.
OUTPUTS_VERSION: dict[str, int] = {"static": 2}


def scene_fingerprint(scene: Scene) -> str:
    """Hash of what the stages read from a scene (image, keypoints, skeleton, camera, video, views, and the size
    gt/ frames are compared at when they are scaled down)."""
    h = hashlib.sha256()
    for t in (scene.image, scene.keypoints, scene.video):
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([scene.skeleton, scene.names, scene.camera.to_dict()], default=str).encode())
    for cam, img in scene.views:
        h.update(json.dumps(cam.to_dict()).encode())
        h.update(img.detach().cpu().contiguous().numpy().tobytes())
    if scene.gt_max_size:  # the stages' metrics compare gt/ frames scaled down to it (0: not hashed, as before)
        h.update(json.dumps({"gt_max_size": scene.gt_max_size}).encode())
    return h.hexdigest()[:16]


def _stage_hash(section_hash: str, seed: int, scene_fp: str, upstream: dict[str, str | None]) -> str:
    blob = json.dumps({"config": section_hash, "seed": seed, "scene": scene_fp, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _section_dict(section: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(section), resolve=True)  # type: ignore[return-value]


def _changed_keys(old: dict[str, Any] | None, new: dict[str, Any], prefix: str) -> list[str]:
    """'static.steps: 100 -> 200' for each leaf that differs."""
    out: list[str] = []
    old = old or {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}.{k}")
        elif a != b:
            out.append(f"{prefix}.{k}: {a} -> {b}")
    return out


def plan_stages(specs: Sequence[StageSpec], selected: Sequence[str], cfg: RunConfig, manifest: dict[str, Any],
                fp: str, run_dir: Path, resume: bool, auto_prior: str | None, generated_video: bool = False
                ) -> list[PlanStep]:
    """[(stage, "skip"|"resume"|"fresh", new manifest record, reason)] for the `selected` stages of `specs` (in
    pipeline order) on the scene with fingerprint `fp`; also marks unselected done stages whose upstream reruns as
    "stale" in `manifest`. `auto_prior` is what static.prior=auto resolves to (hashed with the static stage);
    `generated_video`: the scene has no video, so the cape stage runs CAPE on the one `dynamic.driver` makes
    (that generator's settings are hashed with the cape stage too). A done stage whose recorded files are gone runs
    again."""
    effective: dict[str, str | None] = {}
    plan = []
    upstream_runs: list[str] = []
    for name, _fn, getter in specs:
        section = _section_dict(getter(cfg))
        if name in ZERO123_STAGES:  # the shared top-level prior setting is part of what these stages read
            section["zero123"] = _section_dict(cfg.zero123)
        if name == "static" and auto_prior:
            section["auto_prior"] = auto_prior
        if name == "cape" and generated_video:  # "svd" or "puppet": the settings of what makes the video
            section[cfg.dynamic.driver] = _section_dict(cfg.dynamic.driving_source())
        if name in OUTPUTS_VERSION:
            section["outputs_version"] = OUTPUTS_VERSION[name]
        upstream = {k: effective[k] for k in effective}
        h = _stage_hash(config_hash(section), cfg.seed, fp, upstream)
        old = manifest["stages"].get(name)
        if name not in selected:
            if old and old.get("status") == "done" and upstream_runs:
                old["status"] = "stale"
                old["error"] = f"upstream {upstream_runs} reran; rerun this stage"
            effective[name] = old.get("config_hash") if old and old.get("status") == "done" else None
            continue
        same = bool(old) and old.get("config_hash") == h and not upstream_runs
        ckpt = run_dir / name / "checkpoints" / "last.ckpt"
        missing = [rel for rel in (old or {}).get("artifacts", {}).values()
                   if isinstance(rel, str) and not (run_dir / rel).exists()]
        if resume and same and old["status"] == "done" and not missing:
            action, reason = "skip", ""
        elif resume and same and old["status"] in ("running", "failed", "pending") and ckpt.is_file():
            action, reason = "resume", f"previous attempt {old['status']}"
        else:
            action = "fresh"
            if not old:
                reason = ""
            elif upstream_runs:
                reason = f"upstream {', '.join(upstream_runs)} reran"
            elif same and old.get("status") == "done":
                reason = f"its file {missing[0]} is gone"
            elif old.get("config_hash") != h:
                changes = _changed_keys(old.get("config"), section, name)
                reason = "config changed: " + ("; ".join(changes[:4]) if changes else "seed, scene or upstream")
            else:
                reason = f"previous attempt {old.get('status')}, no checkpoint"
        rec = old if action == "skip" else {
            "status": "pending", "artifacts": {}, "config_hash": h, "upstream": upstream, "config": section,
            "resume_from_checkpoint": action == "resume", "attempts": int((old or {}).get("attempts", 0)),
        }
        plan.append((name, action, rec, reason))
        effective[name] = h
        if action != "skip":
            upstream_runs.append(name)
    return plan
