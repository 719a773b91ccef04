"""`dynapose4d render` and `dynapose4d eval`: images of a run from any camera list, and metrics against ground truth.

Render uses the latest finished stage that has Gaussians: dynamic (canonical Gaussians moved by φ to τ = f/(T−1))
or, after static alone, the static Gaussians at every frame. Images are straight (not premultiplied) RGBA PNGs
at the scene's image size: OUT/<camera>/<frame:03d>.png.

Eval renders the gt cameras at every gt frame and compares, over a white background:
  PSNR, SSIM (torchmetrics), LPIPS (only when its weights are present locally, else "unavailable"), PSNR on the
  moving pixels (where gt frame f differs from gt frame 0; images averaged over frames 1..T-1, see
  `metrics.motion_image_metrics`), PCK@0.2 of the 3D keypoint tracks projected into
  each camera, the 3D keypoint error (world units) and jitter — each beside the no-motion baseline: gt frame 0
  held still (images, PCK, 3D error; jitter's reference is the gt tracks' own jitter). The moving-pixel mask
  does not see motion the run puts where gt stays still, so PSNR (whole frame and moving pixels) is also given
  against the run's own frame 0 held still (`psnr_held`, `psnr_moving_held`): same reconstruction, no motion.
Averages: over frames, then over views (then over objects, in `dynapose4d experiment`).
Protocol "consistent4d": only its four cameras (azimuths −75, 15, 105, 195; gt/cameras.json must have them),
images resized to 512×512. Output: RUN/metrics.json + RUN/metrics.md (RUN/metrics_consistent4d.* for that
protocol), and the table printed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynapose4d.core.cameras import CONSISTENT4D_CAMERAS, REFERENCE_CAMERA, Camera, load_camera, load_cameras
from dynapose4d.core.errors import InputError
from dynapose4d.core.images import over_background, straight_rgba
from dynapose4d.core.io import read_image, write_image, write_json, write_text
from dynapose4d.deform import load_dynamic, render_4d
from dynapose4d.evaluation import metrics as M
from dynapose4d.evaluation.gt import load_gt, read_gt_frames, same_camera, summarise, track_view_metrics
from dynapose4d.gaussians import GaussianModel, load_ply
from dynapose4d.pipeline.run_folder import read_manifest, run_videos

BACKGROUND = 1.0  # white, the Consistent4D convention; used for both protocols
C4D_SIZE = 512


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


def _gt_cameras(gt_dir: Path, protocol: str, cams: list[Camera]) -> list[Camera]:
    if protocol == "gt":
        return cams
    picked, missing = [], []
    for want in CONSISTENT4D_CAMERAS:
        hit = next((c for c in cams if same_camera(c, want)), None)
        (picked.append(hit) if hit else missing.append(f"azimuth {want.azimuth:g}"))
    if missing:
        raise InputError(f"{gt_dir / 'cameras.json'}: the consistent4d protocol needs its four cameras "
                         f"(elevation 0, radius 2, fov_y 49.1); missing {', '.join(missing)}")
    return picked


def _resize(rgb: torch.Tensor, size: int) -> torch.Tensor:
    """[F, H, W, 3] -> [F, size, size, 3] (bilinear, antialiased)."""
    x = torch.nn.functional.interpolate(rgb.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                                        align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1)


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


def evaluate_run(run_dir: str | Path, gt_dir: str | Path, protocol: str = "gt") -> dict[str, Any]:
    """Metrics of a run against a gt/ folder (module docstring). Returns the metrics.json content."""
    if protocol not in ("gt", "consistent4d"):
        raise InputError(f"--protocol {protocol!r}: choose 'gt' or 'consistent4d'")
    gt_dir = Path(gt_dir)
    gt = load_gt(gt_dir)
    model = load_run(run_dir)
    cams = _gt_cameras(gt_dir, protocol, gt.cameras)
    use_lpips = M.lpips_available()
    tracks = _read_tracks(model)
    auto = model.manifest.get("inputs", {}).get("keypoints") == "auto"
    if auto:  # keypoints made from the mask are not the gt's: their tracks cannot be compared
        tracks = None
    kp_gt = gt.keypoints3d

    per_view: dict[str, dict[str, float | None]] = {}
    T_gt = None
    for cam in cams:
        gt_rgba = read_gt_frames(gt_dir / cam.name)  # [T, H, W, 4]
        T, H, W = gt_rgba.shape[:3]
        if T_gt is not None and T != T_gt:
            raise InputError(f"{gt_dir / cam.name}: {T} frames, but other cameras have {T_gt}")
        T_gt = T
        pred = torch.stack([render_rgba(model, [cam], model.tau(f, T), W, H)[0] for f in range(T)])
        gt_rgb, pr = over_background(gt_rgba, BACKGROUND), over_background(pred, BACKGROUND)  # [T, H, W, 3]
        if protocol == "consistent4d":
            gt_rgb, pr = _resize(gt_rgb, C4D_SIZE), _resize(pr, C4D_SIZE)
        v: dict[str, float | None] = M.motion_image_metrics(pr, gt_rgb, with_lpips=use_lpips)
        if kp_gt is not None and tracks is not None and kp_gt.shape[0] == T:
            v.update(track_view_metrics(tracks[_time_index(tracks.shape[0], T)], kp_gt, cam, W, H,
                                        gt.visible.get(cam.name)))
        per_view[cam.name] = v

    aligned = None if kp_gt is None or tracks is None else tracks[_time_index(tracks.shape[0], kp_gt.shape[0])]
    summary = summarise(per_view, cams, _reference_camera(model), aligned, kp_gt if aligned is not None else None)
    return {
        "protocol": protocol, "run": str(Path(run_dir)), "gt": str(gt_dir), "stage": model.stage,
        "frames": T_gt, "cameras": [c.name for c in cams], "background": "white",
        "image_size": [C4D_SIZE, C4D_SIZE] if protocol == "consistent4d" else None,
        "lpips": "available" if use_lpips else "unavailable (no local weights)",
        "keypoints": "available" if tracks is not None and kp_gt is not None else
        "unavailable (" + ("automatic keypoints, not the gt's" if auto else "no dynamic/keypoints.json"
                           if tracks is None else "no gt/keypoints3d.json") + ")",
        **summary,
    }


def _time_index(t_run: int, t_gt: int) -> torch.Tensor:
    """Indices into a run's T_run frames for each of T_gt gt frames (same normalised time)."""
    if t_run == t_gt:
        return torch.arange(t_gt)
    return torch.tensor([round(f * (t_run - 1) / max(t_gt - 1, 1)) for f in range(t_gt)])


#: (row label, metric key, baseline key, higher is better)
TABLE_ROWS: tuple[tuple[str, str, str, bool], ...] = (
    ("PSNR (dB)", "psnr", "psnr_no_motion", True),
    ("SSIM", "ssim", "ssim_no_motion", True),
    ("LPIPS", "lpips", "lpips_no_motion", False),
    ("PSNR moving pixels (dB)", "psnr_moving", "psnr_moving_no_motion", True),
    ("PSNR (dB) vs the run's frame 0 held still", "psnr", "psnr_held", True),
    ("PSNR moving pixels (dB) vs the run's frame 0 held still", "psnr_moving", "psnr_moving_held", True),
    ("PCK@0.2 (projected tracks)", "pck", "pck_no_motion", True),
    ("3D keypoint error", "kp_error_3d", "kp_error_3d_no_motion", False),
    ("jitter (baseline: gt tracks)", "jitter", "jitter_gt", False),
)


def _fmt(v: Any) -> str:
    return "–" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: metric | run | no-motion baseline | difference, over all views and over novel views."""
    lines = [f"Metrics of {result['run']} ({result['stage']} stage) against {result['gt']}, protocol "
             f"{result['protocol']}: {len(result['cameras'])} views x {result['frames']} frames, white background.",
             "Baseline: gt frame 0 held still (no motion), unless the row names another.",
             "", "| metric | run | baseline | run - baseline |", "|---|---|---|---|"]
    for label, key, base, higher in TABLE_ROWS:
        label = f"{label} {'↑' if higher else '↓'}"
        for scope, title in (("mean", "all views"), ("novel", "novel views")):
            d = result[scope]
            if scope == "novel" and (key not in d or key.startswith(("kp_", "jitter"))):
                continue
            if key == "lpips" and key not in d:
                if scope == "mean":
                    lines.append(f"| {label} | unavailable | unavailable | – |")
                continue
            if key not in d:
                if scope == "mean":
                    lines.append(f"| {label} | unavailable | – | – |")
                continue
            a, b = d.get(key), d.get(base)
            diff = a - b if isinstance(a, float) and isinstance(b, float) else None
            name = label if key.startswith(("kp_", "jitter")) else f"{label}, {title}"
            lines.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(diff)} |")
    if result["lpips"] != "available":
        lines.append("\nLPIPS: " + result["lpips"] + ".")
    if result["keypoints"] != "available":
        lines.append("Keypoint metrics: " + result["keypoints"] + ".")
    return "\n".join(lines) + "\n"


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
