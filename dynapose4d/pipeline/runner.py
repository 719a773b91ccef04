"""StageRunner: runs static -> cape -> dynamic (or a subset) on a scene, hands artifacts from one stage to the next
through RUN/manifest.json, resumes, and gives every stage its own W&B run in one group per pipeline run.

RUN/manifest.json (written atomically after every change):
  {"version": 1, "run_name", "scene", "scene_fingerprint", "image_size": [W, H], "num_frames", "seed",
   "created", "updated",
   "stages": {<stage>: {"status": "pending"|"running"|"done"|"failed"|"stale", "artifacts": {name: path},
                        "config_hash", "upstream": {stage: hash}, "config": {...}, "resume_from_checkpoint",
                        "started", "ended", "seconds", "final_losses": {...}, "metrics": {...}, "error",
                        "attempts"}}}
   "export": {"status", "dir": "export", "files", "up", "source": {the dynamic stage's config_hash, ended},
              "wandb_artifact", "ended"}   (after the dynamic stage; removed when that stage reruns or goes stale)
A stage's config hash covers its config section, the seed, the scene's content and the hashes of the stages
before it. `--resume` skips a done stage whose hash is unchanged (when nothing before it reran), resumes an
interrupted or failed stage from RUN/<stage>/checkpoints/last.ckpt, and reruns from scratch a stage whose
config changed, and every stage after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynapose4d.cape.overlay import draw_keypoints
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import over_background
from dynapose4d.core.io import read_image, write_image, write_text
from dynapose4d.core.structured import config_hash, to_dict
from dynapose4d.data import scene as scene_io
from dynapose4d.data.scene import Scene
from dynapose4d.data.scene_spec import resolve_scene
from dynapose4d.export import export_files, export_run
from dynapose4d.pipeline.config import RunConfig, load_config, save_config
from dynapose4d.pipeline.run_command import command_line
from dynapose4d.pipeline.run_folder import (
    EXPORT_DIR,
    MANIFEST,
    MANIFEST_VERSION,
    export_source,
    now_iso,
    read_manifest,
    run_videos,
    write_manifest,
)
from dynapose4d.stages import cape, dynamic, static
from dynapose4d.stages import logger as dlog
from dynapose4d.stages.base import StageContext, quiet_lightning, summary_line

StageFn = Callable[[StageContext, Any], dict]  # run(ctx, stage config) -> {artifact name: path relative to RUN}
StageSpec = tuple[str, StageFn, Callable[[RunConfig], Any]]  # (name, run function, its config section)

#: The pipeline, in order. Explicit functions, no registry; tests pass their own tuple.
DEFAULT_STAGES: tuple[StageSpec, ...] = (
    ("static", lambda ctx, cfg: static.run(ctx, cfg), lambda c: c.static),
    ("cape", lambda ctx, cfg: cape.run(ctx, cfg), lambda c: c.cape),
    ("dynamic", lambda ctx, cfg: dynamic.run(ctx, cfg), lambda c: c.dynamic),
)

#: Stages that read the top-level `zero123` section (hashed with their own section: a change reruns them).
ZERO123_STAGES = ("static", "dynamic")


def _rank() -> int:
    """Global rank of this process when a launcher (Lightning's DDP subprocess launcher, torchrun, SLURM) set it."""
    for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if k in os.environ:
            return int(os.environ[k])
    return 0


def scene_fingerprint(scene: Scene) -> str:
    """Hash of what the stages read from a scene (image, keypoints, skeleton, camera, video, views)."""
    h = hashlib.sha256()
    for t in (scene.image, scene.keypoints, scene.video):
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([scene.skeleton, scene.names, scene.camera.to_dict()], default=str).encode())
    for cam, img in scene.views:
        h.update(json.dumps(cam.to_dict()).encode())
        h.update(img.detach().cpu().contiguous().numpy().tobytes())
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


class StageRunner:
    """Runs the selected stages of `stages` (pipeline order) on a scene into a run folder.

    `run()` validates the scene before creating anything (bad input leaves no folder behind), writes
    RUN/config.yaml, RUN/command.txt and RUN/manifest.json, then executes the plan stage by stage."""

    def __init__(
        self,
        scene: str | Path,
        run_dir: str | Path,
        config: RunConfig,
        resume: bool = False,
        stages: Sequence[StageSpec] = DEFAULT_STAGES,
        command: str | None = None,
        echo: Callable[[str], None] = print,
        video: str | Path | None = None,
        keypoints: str | Path | None = None,
    ) -> None:
        self.scene_path = Path(scene)
        self.video = video  # replaces the scene's video (mp4 or folder of frames); needed with a picture alone
        self.keypoints = keypoints  # replaces the scene's keypoints.json; without either, automatic keypoints
        self.run_dir = Path(run_dir)
        self.cfg = config
        self.resume = resume
        self.specs = tuple(stages)
        self.command = command
        self.echo = echo
        names = [s[0] for s in self.specs]
        unknown = [s for s in config.stages if s not in names]
        if unknown:
            raise InputError(f"config key 'stages': unknown stage(s) {unknown}; this pipeline has {names}")
        self.selected = [n for n in names if n in config.stages]
        self._auto_prior: str | None = None  # what static.prior=auto resolves to for this scene (set by run)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the plan; returns the final manifest. A failing stage is marked failed and its error re-raised."""
        if _rank() != 0:
            return self._follow()
        existing = self._check_folder()
        scene = scene_io.load_scene(self.scene_path, video=self.video, keypoints=self.keypoints)
        fp = scene_fingerprint(scene)
        manifest = existing or {
            "version": MANIFEST_VERSION, "run_name": self.run_dir.name, "created": now_iso(), "stages": {},
        }
        if existing and existing.get("scene_fingerprint") not in (None, fp):
            self.echo(f"note: the scene differs from the one {self.run_dir}/{MANIFEST} was made with; "
                      "its stages will rerun")
        manifest.update({
            "scene": str(self.scene_path.resolve()), "scene_fingerprint": fp,
            "image_size": [scene.width, scene.height],
            "num_frames": int(scene.video.shape[0]) if scene.video is not None else None,
            "seed": self.cfg.seed,
            "inputs": {"video": None if self.video is None else str(Path(self.video).resolve()),
                       "keypoints": "auto" if scene.auto_keypoints is not None
                       else str(Path(scene.keypoints_path or self.scene_path / "keypoints.json").resolve())},
        })
        # static.prior=auto is hashed as what it resolves to here, so weights that appear later rerun the stage
        self._auto_prior = (static.resolve_prior(self.cfg.static, scene, self.cfg.zero123)[0]
                            if self.cfg.static.prior == "auto" else None)
        plan = self._plan(manifest, fp)
        self._check_weights(scene, [name for name, action, _, _ in plan if action != "skip"])

        created = not self.run_dir.exists() or not any(self.run_dir.iterdir())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        if scene.auto_keypoints is not None:  # the keypoints made from the mask, for the user to check or edit
            write_auto_keypoints(scene, self.run_dir / "inputs")
            self.echo(f"no keypoints file: {len(scene.names)} automatic keypoints from the mask written to "
                      f"{self.run_dir / 'inputs' / 'keypoints.json'} (edit it and pass --keypoints FILE to use yours)")
        if self.command:
            old = (self.run_dir / "command.txt").read_text() if (self.run_dir / "command.txt").is_file() else ""
            write_text(self.run_dir / "command.txt", old + f"{now_iso()}  {self.command}\n")
        for name, action, rec, _ in plan:
            if action != "skip":
                manifest["stages"][name] = rec
        self._drop_stale_export(manifest)
        write_manifest(self.run_dir, manifest)

        executing = [name for name, action, _, _ in plan if action != "skip"]
        for name, action, _rec, reason in plan:
            if action == "skip":
                self.echo(f"[{name}] done earlier with the same config: skipped")
                continue
            if action == "fresh" and (self.run_dir / name).exists():
                shutil.rmtree(self.run_dir / name)
            self.echo(f"[{name}] {'resuming from its last checkpoint' if action == 'resume' else 'starting'}"
                      + (f" ({reason})" if reason else ""))
            try:
                self._execute(name, scene, manifest, resume=action == "resume", is_last=name == executing[-1])
            except InputError:
                # bad input found by a stage before anything finished: leave no run folder behind
                if created and not any(r.get("status") == "done" for r in manifest["stages"].values()):
                    shutil.rmtree(self.run_dir, ignore_errors=True)
                raise
        self._export(manifest)
        self._report_outputs(manifest)
        return manifest

    # ------------------------------------------------------------------------------------------------
    def _check_weights(self, scene: Scene, stages: list[str]) -> None:
        """Missing weights of any stage about to run stop the run here, before anything is written (only for
        the pipeline's own stages; tests' stand-ins need none)."""
        own = {n: f for n, f, _ in DEFAULT_STAGES}
        run_fns = {n: f for n, f, _ in self.specs}
        c = self.cfg
        if "static" in stages and run_fns.get("static") is own["static"]:
            static.check_weights(c.static, scene, c.zero123)
        if "cape" in stages and run_fns.get("cape") is own["cape"]:
            cape.check_weights(c.cape)
        if "dynamic" in stages and run_fns.get("dynamic") is own["dynamic"]:
            dynamic.check_weights(c.dynamic, scene, c.zero123, self.run_dir)

    def _check_folder(self) -> dict[str, Any] | None:
        d = self.run_dir
        if d.exists() and not d.is_dir():
            raise InputError(f"{d}: exists and is not a folder")
        nonempty = d.is_dir() and any(d.iterdir())
        if not nonempty:
            return None
        if not self.resume:
            raise InputError(f"{d}: run folder exists and is not empty (add --resume to continue it, "
                             "or choose another --out)")
        manifest = read_manifest(d)
        if manifest is None:
            raise InputError(f"{d}: not a run folder (no {MANIFEST}); cannot --resume it")
        return manifest

    def _plan(self, manifest: dict[str, Any], fp: str) -> list[tuple[str, str, dict[str, Any], str]]:
        """[(stage, "skip"|"resume"|"fresh", new manifest record, reason)] for the selected stages; also marks
        unselected done stages whose upstream reruns as "stale"."""
        effective: dict[str, str | None] = {}
        plan = []
        upstream_runs: list[str] = []
        for name, _fn, getter in self.specs:
            section = _section_dict(getter(self.cfg))
            if name in ZERO123_STAGES:  # the shared top-level prior setting is part of what these stages read
                section["zero123"] = _section_dict(self.cfg.zero123)
            if name == "static" and self._auto_prior:
                section["auto_prior"] = self._auto_prior
            upstream = {k: effective[k] for k in effective}
            h = _stage_hash(config_hash(section), self.cfg.seed, fp, upstream)
            old = manifest["stages"].get(name)
            if name not in self.selected:
                if old and old.get("status") == "done" and upstream_runs:
                    old["status"] = "stale"
                    old["error"] = f"upstream {upstream_runs} reran; rerun this stage"
                effective[name] = old.get("config_hash") if old and old.get("status") == "done" else None
                continue
            same = bool(old) and old.get("config_hash") == h and not upstream_runs
            ckpt = self.run_dir / name / "checkpoints" / "last.ckpt"
            if self.resume and same and old["status"] == "done":
                action, reason = "skip", ""
            elif self.resume and same and old["status"] in ("running", "failed", "pending") and ckpt.is_file():
                action, reason = "resume", f"previous attempt {old['status']}"
            else:
                action = "fresh"
                if not old:
                    reason = ""
                elif upstream_runs:
                    reason = f"upstream {', '.join(upstream_runs)} reran"
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

    def _execute(self, name: str, scene: Scene, manifest: dict[str, Any], resume: bool, is_last: bool,
                 write: bool = True) -> None:
        import lightning as L

        fn, getter = next((f, g) for n, f, g in self.specs if n == name)
        artifacts = {k: dict(v.get("artifacts", {})) for k, v in manifest["stages"].items()
                     if v.get("status") == "done"}
        ctx = StageContext(
            scene=scene, run_dir=self.run_dir, artifacts=artifacts, trainer=self.cfg.trainer, wandb=self.cfg.wandb,
            seed=self.cfg.seed, resume=resume, zero123=self.cfg.zero123, svd=self.cfg.dynamic.svd,
            config=to_dict(self.cfg), is_last=is_last,
        )
        rec = manifest["stages"][name]
        rec.update(status="running", started=now_iso(), ended=None, error=None, attempts=rec.get("attempts", 0) + 1)
        if write:
            write_manifest(self.run_dir, manifest)
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)
        t0 = time.perf_counter()
        try:
            out = fn(ctx, getter(self.cfg))
            arts = self._check_artifacts(name, out) if write else {}  # other ranks do not write the files
        except BaseException as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            rec.update(status="failed", ended=now_iso(), seconds=round(time.perf_counter() - t0, 2),
                       error=f"{type(e).__name__}: {msg}" if not isinstance(e, KeyboardInterrupt) else "interrupted")
            if write:
                write_manifest(self.run_dir, manifest)
            dlog.finish_stage(self.run_dir, name)
            raise
        dlog.finish_stage(self.run_dir, name)
        seconds = time.perf_counter() - t0
        losses, metrics = dlog.read_stage_logs(self.run_dir, name)
        rec.update(status="done", artifacts=arts, ended=now_iso(), seconds=round(seconds, 2),
                   final_losses={k: v for k, v in losses.items() if "loss" in k}, metrics=metrics)
        if write:
            write_manifest(self.run_dir, manifest)
            self.echo(summary_line(name, seconds, losses, metrics))

    def _check_artifacts(self, name: str, out: Any) -> dict[str, str]:
        if out is None:
            return {}
        if not isinstance(out, dict):
            raise TypeError(f"stage '{name}' returned {type(out).__name__}, expected dict[name, relative path]")
        arts: dict[str, str] = {}
        for k, v in out.items():
            p = Path(v)
            rel = p.resolve().relative_to(self.run_dir.resolve()) if p.is_absolute() else p
            if not (self.run_dir / rel).exists():
                raise FileNotFoundError(f"stage '{name}' returned artifact '{k}' = {v}, which does not exist")
            arts[str(k)] = rel.as_posix()
        return arts

    def _follow(self) -> dict[str, Any]:
        """Non-zero DDP rank started by a launcher that re-runs the command: join the stages rank zero is
        running or will run (status running/pending), never write the manifest."""
        manifest = read_manifest(self.run_dir)
        if manifest is None:
            raise RuntimeError(f"{self.run_dir}: rank {_rank()} found no {MANIFEST}")
        scene = scene_io.load_scene(self.scene_path, video=self.video, keypoints=self.keypoints)
        todo = [n for n in self.selected if manifest["stages"].get(n, {}).get("status") in ("running", "pending")]
        for i, name in enumerate(todo):
            if i > 0:  # rank zero writes the previous stage's outputs after training: wait until it is done
                manifest = self._wait_until_done(todo[i - 1])
            resume = bool(manifest["stages"][name].get("resume_from_checkpoint"))
            self._execute(name, scene, manifest, resume=resume, is_last=name == todo[-1], write=False)
        return manifest

    def _wait_until_done(self, stage: str, poll: float = 0.5) -> dict[str, Any]:
        timeout = float(os.environ.get("DYNAPOSE4D_FOLLOW_TIMEOUT", "7200"))
        t0 = time.monotonic()
        while True:
            m = read_manifest(self.run_dir) or {"stages": {}}
            status = m["stages"].get(stage, {}).get("status")
            if status == "done":
                return m
            if status == "failed":
                raise RuntimeError(f"rank {_rank()}: rank zero's stage '{stage}' failed; stopping")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"rank {_rank()}: waited {timeout:.0f} s for rank zero to finish '{stage}'")
            time.sleep(poll)

    def _drop_stale_export(self, manifest: dict[str, Any]) -> None:
        """Remove RUN/export and its manifest record when they were not made from the dynamic stage's current
        output (it is about to rerun, was marked stale, or is not done): nothing stale stays behind."""
        rec = manifest.get("export")
        if rec is not None and rec.get("source") == export_source(manifest) and rec.get("source") is not None:
            return
        manifest.pop("export", None)
        shutil.rmtree(self.run_dir / EXPORT_DIR, ignore_errors=True)

    def _export(self, manifest: dict[str, Any]) -> None:
        """After the dynamic stage: RUN/export/ (splat PLY sequence, glb, bvh, videos), listed in the manifest
        and logged to W&B as an Artifact; kept when it was made from the same dynamic output. A failure is
        recorded and reported, not raised: the stages' results stand and `dynapose4d export RUN` retries."""
        source = export_source(manifest)
        old = manifest.get("export")
        if source is None:
            return
        if (old and old.get("status") == "done" and old.get("source") == source
                and all((self.run_dir / EXPORT_DIR / f).is_file() for f in old.get("files", []))):
            self.echo(f"[export] up to date: {self.run_dir / EXPORT_DIR}")
            return
        try:
            record_export(self.run_dir, manifest, export_run(self.run_dir, self.run_dir / EXPORT_DIR),
                          self.cfg.wandb)
        except Exception as e:  # noqa: BLE001 - reported in the manifest and on the console
            manifest["export"] = {"status": "failed", "source": source, "error": f"{type(e).__name__}: {e}",
                                  "ended": now_iso()}
            write_manifest(self.run_dir, manifest)
            self.echo(f"[export] failed ({type(e).__name__}: {e}); retry with `dynapose4d export {self.run_dir}`")
            return
        self.echo(f"[export] {self.run_dir / EXPORT_DIR}: {len(manifest['export']['files'])} files "
                  "(splats/frame_*.ply, skeleton.glb, skeleton.bvh, videos/)")

    def _report_outputs(self, manifest: dict[str, Any]) -> None:
        self.echo(f"run folder: {self.run_dir}")
        for v in run_videos(self.run_dir, manifest):
            self.echo(f"  video: {v}")
        if manifest.get("export", {}).get("status") == "done":
            self.echo(f"  export: {self.run_dir / EXPORT_DIR} (glb/bvh for Blender, splats/ for splat viewers)")


def record_export(run_dir: str | Path, manifest: dict[str, Any], record: dict[str, Any], wandb_cfg: Any) -> None:
    """List an export of RUN/export in the manifest ("export": status, files, up axes, source) and log it to
    W&B (`logging.log_export`) when the run's config enables W&B."""
    run_dir = Path(run_dir)
    files = export_files(record)
    manifest["export"] = {
        "status": "done", "dir": EXPORT_DIR, "source": export_source(manifest), "files": files,
        "up": {k: v["up"] for k, v in record["outputs"].items() if "up" in v}, "ended": now_iso(),
    }
    write_manifest(run_dir, manifest)
    name = dlog.log_export(run_dir, wandb_cfg, run_dir / EXPORT_DIR, files,
                           metadata={"up": manifest["export"]["up"], "fps": record.get("fps")})
    if name:
        manifest["export"]["wandb_artifact"] = name
        write_manifest(run_dir, manifest)


def export_cli(args: argparse.Namespace) -> int:
    """`dynapose4d export RUN [--format ...] [--up +y|-y|+z] [--out DIR]`: rewrite a run's exported outputs.
    Into RUN/export (the default) it also updates the manifest's "export" record and the W&B artifact."""
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    out = Path(args.out) if args.out else run_dir / EXPORT_DIR
    record = export_run(run_dir, out, up=args.up, formats=args.format)
    manifest = read_manifest(run_dir)
    if manifest is not None and out.resolve() == (run_dir / EXPORT_DIR).resolve():
        wandb_cfg = None
        if (run_dir / "config.yaml").is_file():
            try:
                wandb_cfg = load_config(str(run_dir / "config.yaml"), []).wandb
            except InputError:
                wandb_cfg = None
        record_export(run_dir, manifest, record, wandb_cfg)
    files = export_files(record)
    print(f"wrote {out}: {len(files)} files ({', '.join(sorted(record['outputs']))})")
    return 0


def write_auto_keypoints(scene: Scene, folder: Path) -> None:
    """FOLDER/keypoints.json (keypoints.json's format, in the pixels of the scene's image file) and
    FOLDER/keypoints.png (them drawn on the image) of a scene's automatic keypoints."""
    import torch

    auto = scene.auto_keypoints
    assert auto is not None
    write_text(folder / "keypoints.json", auto.to_text())
    img = read_image(scene.image_path or scene.root / "image.png")  # [H, W, 3|4] the file, not recentred
    rgb = over_background(img, 1.0) if img.shape[-1] == 4 else img
    drawn = draw_keypoints(rgb, torch.from_numpy(auto.keypoints).float(), list(auto.skeleton), min_side=512,
                           labels=True)
    write_image(folder / "keypoints.png", drawn.astype("float32") / 255.0)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "stages", None):
        names = [s.strip() for s in str(args.stages).split(",") if s.strip()]
        overrides.append(f"stages=[{','.join(names)}]")
    return load_config(args.config, overrides)


def run_cli(args: argparse.Namespace) -> int:
    """`dynapose4d run SCENE --out RUN [--config FILE] [--set k=v ...] [--stages a,b] [--resume]`."""
    quiet_lightning()
    args.out = os.path.expanduser(os.path.expandvars(str(args.out)))  # e.g. runs/sweep/$WANDB_RUN_ID
    cfg = config_from_args(args)
    scene = args.scene
    if str(scene).startswith("synthetic:"):  # synthetic:<template>:<seed>[:<frames>[:<size>]], made once
        scene = resolve_scene(str(scene), os.environ.get("DYNAPOSE4D_SCENES", "runs/scenes"))
    StageRunner(scene, args.out, cfg, resume=bool(args.resume), command=command_line(args),
                video=getattr(args, "video", None), keypoints=getattr(args, "keypoints", None)).run()
    sys.stdout.flush()
    return 0
