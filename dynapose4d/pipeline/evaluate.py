"""`dynapose4d render` and `dynapose4d eval`: the run-folder side of rendering and scoring a run.

Owns reading a run folder's model (`load_run`: the latest finished stage's Gaussians), the render command, and
the eval command's run-side choices; the scoring itself is `dynapose4d.evaluation.score.score_4d` (the one scorer,
shared with the dynamic stage) and the table `dynapose4d.evaluation.table.metrics_table`.

Render uses the latest finished stage that has Gaussians: dynamic (canonical Gaussians moved by φ to τ = f/(T−1))
or, after static alone, the static Gaussians at every frame. Images are straight (not premultiplied) RGBA PNGs
at the run's image size (the scene's, within its `max_image_size`; manifest "image_size"):
OUT/<camera>/<frame:03d>.png.

Eval scores the run with `score_4d` over a white background, the images composited from the straight RGBA that
render writes, gt frames at their normalised times (a run with another frame count is compared at the same
moments): PSNR, SSIM (torchmetrics), LPIPS (only when its weights are present locally, else "unavailable"), PSNR
on the moving pixels (where gt frame f differs from gt frame 0), PCK@0.2 of the run's 3D keypoint tracks
(RUN/dynamic/keypoints.json; not for automatic keypoints, which are not the gt's) projected into each camera, the
3D keypoint error (world units) and jitter — each beside the no-motion baseline: gt frame 0 held still (images,
PCK, 3D error; jitter's reference is the gt tracks' own jitter). The moving-pixel mask does not see motion the
run puts where gt stays still, so PSNR (whole frame and moving pixels) is also given against the run's own frame
0 held still (`psnr_held`, `psnr_moving_held`): same reconstruction, no motion.
Averages: over frames, then over views (then over objects, in `dynapose4d experiment`).
gt frames larger than the run's `max_image_size` (RUN/config.yaml) are compared scaled down to it, renders made at
that size, as the run's stages do (`evaluation.gt.read_gt_frames`); metrics.json's "image_size" then gives the size
compared at (null: gt's own).
Protocol "consistent4d": only its four cameras (azimuths −75, 15, 105, 195; gt/cameras.json must have them),
images resized to 512×512 (from gt's own size). Output: RUN/metrics.json + RUN/metrics.md
(RUN/metrics_consistent4d.* for that protocol), and the table printed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynapose4d.core.cameras import REFERENCE_CAMERA, Camera, load_camera, load_cameras
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import straight_rgba
from dynapose4d.core.io import read_image, write_image, write_json, write_text
from dynapose4d.deform import load_dynamic, render_4d
from dynapose4d.evaluation import metrics as M
from dynapose4d.evaluation.score import ScoreOptions, score_4d
from dynapose4d.evaluation.table import metrics_table
from dynapose4d.gaussians import GaussianModel, load_ply
from dynapose4d.pipeline.config import load_run_config
from dynapose4d.pipeline.run_folder import read_manifest, run_videos

BACKGROUND = 1.0  # white, the Consistent4D convention; used for both protocols


@dataclass
class RunModel:
    """The Gaussians of a run: canonical + deformation (None after static alone)."""

    canonical: GaussianModel
    deform: Any  # dynapose4d.deform.Deformation or None
    stage: str  # "dynamic" or "static"
    num_frames: int
    width: int
    height: int
    manifest: dict[str, Any]
    run_dir: Path

    def tau(self, frame: int, num_frames: int | None = None) -> float:
        """Normalised time f / (T − 1) of frame `frame` of T = `num_frames` (default the run's) frames."""
        T = num_frames or self.num_frames
        return frame / (T - 1) if T > 1 else 0.0


def load_run(run_dir: str | Path) -> RunModel:
    """The latest finished stage's Gaussians of a run folder (InputError when it has none)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest is None:
        raise InputError(f"{run_dir}: not a run folder (no manifest.json)")
    stages = manifest.get("stages", {})
    W, H = manifest.get("image_size") or (None, None)
    if W is None:
        img = read_image(Path(manifest["scene"]) / "image.png")
        H, W = img.shape[:2]
    if stages.get("dynamic", {}).get("status") == "done":
        canonical, phi = load_dynamic(run_dir)
        return RunModel(canonical, phi, "dynamic", int(phi.num_frames), int(W), int(H), manifest, run_dir)
    if stages.get("static", {}).get("status") == "done":
        rel = stages["static"].get("artifacts", {}).get("gaussians", "static/gaussians.ply")
        canonical = load_ply(run_dir / rel)
        T = int(manifest.get("num_frames") or 1)
        return RunModel(canonical, None, "static", T, int(W), int(H), manifest, run_dir)
    raise InputError(f"{run_dir}/manifest.json: no finished stage with Gaussians (run the static stage first)")


def render_rgba(model: RunModel, cameras: list[Camera] | tuple[Camera, ...], tau: float, width: int, height: int
                ) -> torch.Tensor:
    """Straight RGBA [C, H, W, 4] of the run's Gaussians at time τ from `cameras` (on the CPU)."""
    rgb, alpha = render_4d(model.canonical, model.deform, cameras, [tau], width, height, background=None)
    return straight_rgba(rgb[0], alpha[0])


def parse_frames(spec: str, num_frames: int) -> list[int]:
    """'all' or '0,3,7' -> frame indices, each checked against [0, num_frames)."""
    if spec.strip() == "all":
        return list(range(num_frames))
    try:
        frames = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--frames {spec!r}: expected 'all' or a comma list of integers") from None
    bad = [f for f in frames if not 0 <= f < num_frames]
    if bad or not frames:
        raise InputError(f"--frames {spec!r}: frames must be in [0, {num_frames}) for this run, got {bad or spec}")
    return frames


def render_cli(args: argparse.Namespace) -> int:
    """`dynapose4d render RUN --cameras FILE --frames all|0,3,7 --out DIR`."""
    model = load_run(args.run)
    cams = load_cameras(args.cameras)
    frames = parse_frames(args.frames, model.num_frames)
    out = Path(args.out)
    for f in frames:
        rgba = render_rgba(model, cams, model.tau(f), model.width, model.height)
        for cam, img in zip(cams, rgba):
            write_image(out / cam.name / f"{f:03d}.png", img)
    print(f"rendered {len(cams)} camera(s) x {len(frames)} frame(s) of the {model.stage} stage "
          f"({model.width}x{model.height}) to {out}")
    return 0


# ------------------------------------------------------------------------------------------------ eval


def _read_tracks(model: RunModel) -> torch.Tensor | None:
    """The run's 3D keypoint tracks [T, N, 3] (dynamic/keypoints.json 'world'), or None."""
    if model.stage != "dynamic":
        return None
    rel = model.manifest["stages"]["dynamic"].get("artifacts", {}).get("keypoints", "dynamic/keypoints.json")
    path = model.run_dir / rel
    if not path.is_file():
        return None
    return torch.tensor(json.loads(path.read_text())["world"], dtype=torch.float32)


def _reference_camera(model: RunModel) -> Camera:
    path = Path(model.manifest.get("scene", "")) / "camera.json"
    return load_camera(path) if path.is_file() else REFERENCE_CAMERA


def run_max_image_size(run_dir: str | Path) -> int:
    """The run's `max_image_size` (RUN/config.yaml, also one an earlier version wrote); 0 (gt frames at their own
    size) when the run has no config."""
    if not (Path(run_dir) / "config.yaml").is_file():
        return 0
    return int(load_run_config(run_dir).max_image_size)


def evaluate_run(run_dir: str | Path, gt_dir: str | Path, protocol: str = "gt") -> dict[str, Any]:
    """Metrics of a run against a gt/ folder (module docstring): `score_4d` of the run's model with held = the
    run's frame 0, LPIPS when its weights are local. Returns the metrics.json content (the score plus what was
    scored)."""
    if protocol not in ("gt", "consistent4d"):
        raise InputError(f"--protocol {protocol!r}: choose 'gt' or 'consistent4d'")
    gt_dir = Path(gt_dir)
    model = load_run(run_dir)
    use_lpips = M.lpips_available()
    tracks = _read_tracks(model)  # [T_run, N, 3] or None
    auto = model.manifest.get("inputs", {}).get("keypoints") == "auto"
    if auto:  # keypoints made from the mask are not the gt's: their tracks cannot be compared
        tracks = None
    options = ScoreOptions(protocol=protocol, held="frame0", with_lpips=use_lpips, background=BACKGROUND,
                           composite="straight", max_size=run_max_image_size(run_dir))
    score = score_4d(model.canonical, model.deform, gt_dir, tracks, _reference_camera(model), options=options)
    return {
        "protocol": protocol, "run": str(Path(run_dir)), "gt": str(gt_dir), "stage": model.stage,
        "frames": score.frames, "cameras": [c.name for c in score.cameras], "background": "white",
        "image_size": list(score.image_size) if score.image_size else None,
        "lpips": "available" if use_lpips else "unavailable (no local weights)",
        "keypoints": "available" if score.keypoints else
        "unavailable (" + ("automatic keypoints, not the gt's" if auto else "no dynamic/keypoints.json"
                           if tracks is None else "no gt/keypoints3d.json") + ")",
        **score.metrics,
    }


def eval_cli(args: argparse.Namespace) -> int:
    """`dynapose4d eval RUN --gt SCENE/gt [--protocol gt|consistent4d]`."""
    protocol = getattr(args, "protocol", "gt") or "gt"
    result = evaluate_run(args.run, args.gt, protocol)
    table = metrics_table(result)
    stem = "metrics" if protocol == "gt" else f"metrics_{protocol}"
    run_dir = Path(args.run)
    write_json(run_dir / f"{stem}.json", result)
    write_text(run_dir / f"{stem}.md", table)
    print(table)
    for v in run_videos(run_dir):
        print(f"video: {v}")
    print(f"metrics: {run_dir / f'{stem}.json'}, {run_dir / f'{stem}.md'}")
    return 0
