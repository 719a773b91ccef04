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

This module is the runner and `run_cli` (the `dynapose4d run` command that builds one); around it: `plan` (the
hashes and the skip/resume/fresh plan), `run_folder` (the manifest's I/O), `run_export` (RUN/export and
`dynapose4d export`), `ddp` (what the other ranks of a multi-device run do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dynapose4d.cape.overlay import draw_keypoints
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import over_background
from dynapose4d.core.io import read_picture, write_image, write_text
from dynapose4d.core.structured import to_dict
from dynapose4d.data import scene as scene_io
from dynapose4d.data.cutout import ONE_PIECE
from dynapose4d.data.scene import Scene
from dynapose4d.data.scene_spec import resolve_scene
from dynapose4d.pipeline import ddp
from dynapose4d.pipeline.config import RunConfig, load_config, save_config
from dynapose4d.pipeline.plan import PlanStep, StageSpec, plan_stages, scene_fingerprint
from dynapose4d.pipeline.run_command import command_line
from dynapose4d.pipeline.run_export import drop_stale_export, export_after_run
from dynapose4d.pipeline.run_folder import (
    EXPORT_DIR,
    LOCK,
    MANIFEST,
    MANIFEST_VERSION,
    now_iso,
    read_manifest,
    run_lock,
    run_videos,
    write_manifest,
)
from dynapose4d.priors.puppet import named_keypoints
from dynapose4d.stages import logger as dlog
from dynapose4d.stages.base import StageContext, check_strategy, is_stop, quiet_lightning, summary_line
from dynapose4d.stages.cape import stage as cape
from dynapose4d.stages.dynamic import stage as dynamic
from dynapose4d.stages.static import stage as static

#: A driving video laid onto a picture of another size whose frame 0 box differs in shape from the picture's by
#: more than this (larger / smaller ratio of the width and height scales - 1) is reported: frame 0 may not show the
#: object as the picture does.
REGISTRATION_SPREAD = 0.15

#: A video used as it is whose frame 0 object is this far from the picture's (a fraction of the picture's longer side,
#: or a size ratio off by this fraction) is reported: the clip may be framed otherwise than the picture.
MISFIT = 0.1


def misfit(fit: Any) -> bool:
    """Whether frame 0's object box (`Scene.video_fit`, a `Registration` not applied) is off the picture's by more
    than `MISFIT`: its centre by that fraction of the picture's longer side, or its size by that factor."""
    off = max(abs(v - p) for v, p in zip(fit.video_centre, fit.picture_centre)) / max(fit.picture_size)
    return off > MISFIT or abs(fit.scale - 1.0) > MISFIT


#: A driving video of more frames than this, all used, gets a note suggesting `video_frames`.
LONG_CLIP = 48

#: RUN/inputs/keypoints.png is drawn on the picture shrunk to at most this many pixels on its longer side.
KEYPOINTS_PNG_SIDE = 2048

#: The pipeline, in order. Explicit functions, no registry; tests pass their own tuple.
DEFAULT_STAGES: tuple[StageSpec, ...] = (
    ("static", lambda ctx, cfg: static.run(ctx, cfg), lambda c: c.static),
    ("cape", lambda ctx, cfg: cape.run(ctx, cfg), lambda c: c.cape),
    ("dynamic", lambda ctx, cfg: dynamic.run(ctx, cfg), lambda c: c.dynamic),
)


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
        mask: str | Path | None = None,
    ) -> None:
        self.scene_path = Path(scene)
        self.video = video  # replaces the scene's video (mp4 or folder of frames); needed with a picture alone
        self.keypoints = keypoints  # replaces the scene's keypoints.json; without either, automatic keypoints
        self.mask = mask  # replaces the scene's mask.png: the picture's alpha (else its own, or a cut-out)
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
        self._generated_video = False  # the scene has no video: SVD makes the driving video (set by run)

    # ------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the plan; returns the final manifest. A failing stage is marked failed and its error re-raised."""
        if ddp.rank() != 0:
            return self._follow()
        check_strategy(self.cfg.trainer)
        existing = self._check_folder()
        as_found = json.dumps(existing, sort_keys=True)  # the manifest as read, to see whether it changes meanwhile
        scene = self._load_scene()
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
                       "video_registration": None if scene.video_registration is None
                       else {k: list(v) if isinstance(v, tuple) else v  # as JSON reads it back
                             for k, v in asdict(scene.video_registration).items()},
                       "keypoints": "auto" if scene.auto_keypoints is not None
                       else str(Path(scene.keypoints_path or self.scene_path / "keypoints.json").resolve()),
                       "mask": None if scene.mask_path is None else str(scene.mask_path.resolve())},
        })
        # static.prior=auto is hashed as what it resolves to here, so weights that appear later rerun the stage
        self._auto_prior = (static.resolve_prior(self.cfg.static, scene, self.cfg.zero123)[0]
                            if self.cfg.static.prior == "auto" else None)
        self._generated_video = scene.video is None
        plan = self._plan(manifest, fp)
        to_run = [name for name, action, _, _ in plan if action != "skip"]
        self._check_weights(scene, to_run)
        puppet = scene.video is None and self.cfg.dynamic.driver == "puppet" and bool({"cape", "dynamic"} & set(to_run))
        if puppet and not scene.skeleton:  # the puppet moves the picture by its bones: say so before writing
            raise InputError(f"{scene.keypoints_path or scene.image_path or scene.root}: the skeleton has no bones, "
                             "and the puppet driving video (dynamic.driver=puppet) moves the picture by them; add "
                             "bones or give a video (--video)")
        if puppet:  # dynamic.puppet.root / still name keypoints: an unknown one stops the run before writing
            named_keypoints(self.cfg.dynamic.puppet, scene.names)

        created = existing is None  # the folder was absent or empty (a lock aside): this run makes it
        with run_lock(self.run_dir, self.command) as took_over:
            if took_over:
                self.echo(took_over)
            if json.dumps(self._check_folder(), sort_keys=True) != as_found:
                raise InputError(f"{self.run_dir}: another run wrote to it while this one was loading the scene; "
                                 "run again (with --resume to continue what it did)")
            save_config(self.cfg, self.run_dir / "config.yaml")
            if scene.auto_keypoints is not None:  # the keypoints made from the mask, for the user to check or edit
                write_auto_keypoints(scene, self.run_dir / "inputs")
                self.echo(f"no keypoints file: {len(scene.names)} automatic keypoints from the mask written to "
                          f"{self.run_dir / 'inputs' / 'keypoints.json'} "
                          "(edit it and pass --keypoints FILE to use yours)")
            for line in write_cutout(scene, self.run_dir / "inputs"):
                self.echo(line)
            for line in video_notes(scene):
                self.echo(line)
            if puppet:
                self.echo("no driving video: the picture is moved on its own skeleton by rule (dynamic.driver="
                          f"puppet; motion in the picture's plane only) into {self.run_dir / 'inputs' / 'video'}")
            if self.command:
                old = (self.run_dir / "command.txt").read_text() if (self.run_dir / "command.txt").is_file() else ""
                write_text(self.run_dir / "command.txt", old + f"{now_iso()}  {self.command}\n")
            for name, action, rec, _ in plan:
                if action != "skip":
                    manifest["stages"][name] = rec
            drop_stale_export(self.run_dir, manifest)
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
            export_after_run(self.run_dir, manifest, self.cfg.wandb, self.echo, self.cfg.export)
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
        where = d if d.exists() else next(p for p in d.absolute().parents if p.exists())  # made inside `where`
        if not where.is_dir():
            raise InputError(f"{d}: cannot be made: {where} is a file, not a folder")
        if not os.access(where, os.W_OK | os.X_OK):
            raise InputError(f"{d}: cannot be written: {where} is not writable")
        nonempty = d.is_dir() and any(p.name != LOCK for p in d.iterdir())
        if not nonempty:
            return None
        if not self.resume:
            raise InputError(f"{d}: run folder exists and is not empty (add --resume to continue it, "
                             "or choose another --out)")
        manifest = read_manifest(d)
        if manifest is None:
            raise InputError(f"{d}: not a run folder (no {MANIFEST}); cannot --resume it")
        return manifest

    def _load_scene(self) -> Scene:
        return scene_io.load_scene(self.scene_path, video=self.video, keypoints=self.keypoints, mask=self.mask,
                                   max_size=self.cfg.max_image_size, cutout=self.cfg.cutout, u2net=self.cfg.u2net,
                                   video_align=self.cfg.video_align, video_frames=self.cfg.video_frames)

    def _plan(self, manifest: dict[str, Any], fp: str) -> list[PlanStep]:
        """The plan of this run against `manifest` (`plan.plan_stages`; marks stale stages in it)."""
        return plan_stages(self.specs, self.selected, self.cfg, manifest, fp, self.run_dir, self.resume,
                           self._auto_prior, self._generated_video)

    def _execute(self, name: str, scene: Scene, manifest: dict[str, Any], resume: bool, is_last: bool,
                 write: bool = True) -> None:
        import lightning as L

        fn, getter = next((f, g) for n, f, g in self.specs if n == name)
        artifacts = {k: dict(v.get("artifacts", {})) for k, v in manifest["stages"].items()
                     if v.get("status") == "done"}
        ctx = StageContext(
            scene=scene, run_dir=self.run_dir, artifacts=artifacts, trainer=self.cfg.trainer, wandb=self.cfg.wandb,
            seed=self.cfg.seed, resume=resume, zero123=self.cfg.zero123, driving=self.cfg.dynamic.driving_source(),
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
            stop = is_stop(e)
            rec.update(status="failed", ended=now_iso(), seconds=round(time.perf_counter() - t0, 2),
                       error=f"{type(e).__name__}: {msg}" if stop is None else f"stopped ({stop})")
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
        """A non-zero DDP rank: join rank zero's stages without writing anything (`ddp.follow`)."""
        return ddp.follow(self.run_dir, self.selected, self._load_scene,
                          lambda name, scene, manifest, resume, is_last: self._execute(
                              name, scene, manifest, resume=resume, is_last=is_last, write=False))

    def _report_outputs(self, manifest: dict[str, Any]) -> None:
        self.echo(f"run folder: {self.run_dir}")
        for v in run_videos(self.run_dir, manifest):
            self.echo(f"  video: {v}")
        if manifest.get("export", {}).get("status") == "done":
            self.echo(f"  export: {self.run_dir / EXPORT_DIR} (glb/bvh for Blender, splats/ for splat viewers)")


def video_notes(scene: Scene) -> list[str]:
    """What the run says about how it used the scene's driving video: how a clip of another size was laid onto the
    picture (and whether their boxes differ in shape), a clip of the picture's size framed otherwise (`misfit`),
    how many frames of a longer clip it kept, or that a long clip is used whole."""
    lines = []
    reg, fit = scene.video_registration, scene.video_fit
    if reg is not None:  # a clip of another size than the picture
        lines.append(f"the video ({reg.video_size[0]}x{reg.video_size[1]}) is not the picture's size "
                     f"({reg.picture_size[0]}x{reg.picture_size[1]}): laid onto it by frame 0's object box "
                     f"(scaled by {reg.scale:.4g})" + (
                         f"; their boxes differ in shape by {100 * reg.spread:.0f}%: check that frame 0 shows the "
                         "object as the picture does" if reg.spread > REGISTRATION_SPREAD else ""))
    elif fit is not None and misfit(fit):  # used as it is, but framed otherwise than the picture
        dx, dy = (v - p for v, p in zip(fit.video_centre, fit.picture_centre))
        lines.append(f"note: frame 0's object is ({dx:+.0f}, {dy:+.0f}) px from the picture's and {1 / fit.scale:.2f} "
                     "times its size: if the clip is framed otherwise than the picture, --set video_align=box lays "
                     "it onto the picture by its object box")
    used = 0 if scene.video is None else int(scene.video.shape[0])
    if scene.video_source_frames > used:
        lines.append(f"the video has {scene.video_source_frames} frames: {used} of them used, evenly spaced "
                     "(video_frames)")
    elif used > LONG_CLIP:
        lines.append(f"note: the driving video has {used} frames, all used (CAPE, training and the export grow with "
                     "them); --set video_frames=16 keeps 16 evenly spaced")
    return lines


def write_auto_keypoints(scene: Scene, folder: Path) -> None:
    """FOLDER/keypoints.json (keypoints.json's format, in the pixels of the scene's image file) and
    FOLDER/keypoints.png (them drawn on the image, shrunk by an integer to at most `KEYPOINTS_PNG_SIDE` pixels
    on its longer side: a 48-megapixel photo drawn at its own size shows dots too small to see and takes seconds
    to encode) of a scene's automatic keypoints."""
    import torch

    from dynapose4d.data.recentring import shrink_frame

    auto = scene.auto_keypoints
    assert auto is not None
    write_text(folder / "keypoints.json", auto.to_text())
    img = read_picture(scene.image_path or scene.root / "image.png")  # [H, W, 3|4] the file (a clip's frame 0)
    k = max(1, -(-max(img.shape[:2]) // KEYPOINTS_PNG_SIDE))
    if k > 1:  # area average of k x k blocks (premultiplied), then the points in those pixels
        rgba = img if img.shape[-1] == 4 else torch.cat([img, torch.ones_like(img[..., :1])], -1)
        img = shrink_frame(rgba, k)
    rgb = over_background(img, 1.0) if img.shape[-1] == 4 else img
    drawn = draw_keypoints(rgb, torch.from_numpy(auto.keypoints / k).float(), list(auto.skeleton), min_side=512,
                           labels=True)
    write_image(folder / "keypoints.png", drawn.astype("float32") / 255.0)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = list(getattr(args, "overrides", []) or [])
    if getattr(args, "stages", None):
        names = [s.strip() for s in str(args.stages).split(",") if s.strip()]
        overrides.append(f"stages=[{','.join(names)}]")
    return load_config(args.config, overrides)


def write_cutout(scene: Scene, inputs: Path) -> list[str]:
    """Write what the run made of the picture's cut-out to `inputs` (RUN/inputs) and return the lines that say so:
    cutout.png, the picture as GrabCut, U²-Net or the mask file cut it out; mask.png, the automatic cut's mask
    (white on black, the picture's size) for the user to correct and pass back with --mask. Files an earlier run
    of the folder left that no longer hold are removed (not the mask in use, which may be that very file)."""
    cut_png, mask_png = inputs / "cutout.png", inputs / "mask.png"
    auto_picture = scene.cutout is not None and scene.mask_path is None  # cut by GrabCut or U²-Net
    how = "U²-Net" if scene.u2net_cuts else "GrabCut"
    if scene.cutout is not None:  # a real background or a mask: show the user what was cut out
        write_image(cut_png, scene.cutout)
    elif cut_png.is_file():  # left by an earlier run of this folder on another picture: no longer true
        cut_png.unlink()
    if auto_picture:
        write_image(mask_png, (scene.cutout[..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))  # [H, W, 3]
    elif mask_png.is_file() and (scene.mask_path is None or scene.mask_path.resolve() != mask_png.resolve()):
        mask_png.unlink()
    lines = []
    if scene.mask_path is not None:
        lines.append(f"the picture's alpha is the mask {scene.mask_path}; cut out: {cut_png}")
    frames = scene.grabcut_cuts + scene.u2net_cuts - int(auto_picture)
    if auto_picture:
        lines.append(f"no alpha and a background that is not one colour: {how} cut the object out of the picture"
                     + (f" and {frames} other image(s)" if frames else "") + f"; check {cut_png} (where it is "
                     f"wrong, correct {mask_png}, white on black, and pass --mask {mask_png}; or pass a picture "
                     "with alpha)")
    elif frames:
        lines.append(f"no alpha and a background that is not one colour: {how} cut the object out of {frames} "
                     "video frame(s) or view(s), each on its own" + (
                         " with the colours of the picture and its mask" if scene.frames_by_picture_colours else "")
                     + " (where it is wrong, give them with alpha)")
    if scene.cutout_pieces and scene.cutout_pieces[0] < ONE_PIECE:
        lines.append(f"warning: {how}'s cut of the picture is in {len(scene.cutout_pieces)} pieces, the largest "
                     f"{100 * scene.cutout_pieces[0]:.0f}% of it: it has probably taken background for the object or "
                     f"split it; look at {cut_png} and, where it is wrong, give the object's mask (--mask FILE: white "
                     f"on black, the picture's size; {mask_png} is {how}'s, to correct) or a picture with alpha")
    return lines


def run_cli(args: argparse.Namespace) -> int:
    """`dynapose4d run SCENE --out RUN [--config FILE] [--set k=v ...] [--stages a,b] [--resume]`."""
    quiet_lightning()
    args.out = os.path.expanduser(os.path.expandvars(str(args.out)))  # e.g. runs/sweep/$WANDB_RUN_ID
    cfg = config_from_args(args)
    scene = args.scene
    if str(scene).startswith("synthetic:"):  # synthetic:<template>:<seed>[:<frames>[:<size>]], made once
        scene = resolve_scene(str(scene), os.environ.get("DYNAPOSE4D_SCENES", "runs/scenes"))
    StageRunner(scene, args.out, cfg, resume=bool(args.resume), command=command_line(args),
                video=getattr(args, "video", None), keypoints=getattr(args, "keypoints", None),
                mask=getattr(args, "mask", None)).run()
    sys.stdout.flush()
    return 0
