"""Automatic keypoints (keypoints made from the mask) against hand-placed ones, and a picture with a known motion.

    .venv/bin/python experiments/auto_keypoints_eval.py tracks RUN SCENE [RUN SCENE ...]
    .venv/bin/python experiments/auto_keypoints_eval.py make-rotation SCENE_OR_PICTURE --out DIR [--degrees 20]
                                                        [--frames 16] [--rgb]
    .venv/bin/python experiments/auto_keypoints_eval.py rotation RUN DIR

tracks: the gt keypoints of a scene with gt/ (they correspond to the scene's hand-placed keypoints.json) carried
  by a run's learned deformation, whatever keypoints the run used: the hand keypoints at frame 0 are lifted onto
  the run's canonical Gaussians and moved with φ exactly as the dynamic stage computes its own tracks
  (`dynapose4d.deform.tracks.keypoint_tracks`, same neighbours and skeleton); then the dynamic stage's track metrics
  (`evaluation.gt.track_view_metrics` / `summarise`: PCK@0.2 per gt camera, 3D error) beside the no-motion
  baseline, with the run's own image metrics (RUN/dynamic/metrics.json: moving-pixel PSNR on the novel gt
  cameras). A run made with automatic keypoints is thus scored on the same gt tracks as one made with the hand
  keypoints: what changes is only the deformation each learned.

make-rotation: a picture (a scene's image.png, or any RGBA png) and a video of it turned in-plane by 0 .. DEGREES
  (linearly over FRAMES frames) about the centre of its mask's bounding box; DIR/picture.png, DIR/frames/000.png
  ..., DIR/rotation.json {"centre": [x, y], "degrees": [...]}. --rgb: picture and frames composited over a plain
  light grey background, without alpha (the loader removes the background); --background NAME: over a textured
  background (tests/cutout_backgrounds.py), without alpha (GrabCut cuts the object out).

rotation: a run of `dynapose4d run DIR/picture.png --video DIR/frames`: its reference-view track
  (RUN/dynamic/keypoints.json's reference_2d, in the picture's pixels) against the run's automatic keypoints
  (RUN/inputs/keypoints.json) turned by the known angle per frame: mean error in px per frame, beside the
  no-motion baseline (the keypoints held still).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BACKGROUND = (0.92, 0.92, 0.9)  # the plain background of --rgb pictures


# ------------------------------------------------------------------------------------------------ rotation


def rotate_points(points: np.ndarray, centre: tuple[float, float], degrees: float) -> np.ndarray:
    """Pixel points [N, 2] (x, y) turned by `degrees` about `centre` (x right, y down: positive turns clockwise
    on screen)."""
    a = math.radians(degrees)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.asarray(centre, dtype=np.float64)
    return (np.asarray(points, dtype=np.float64) - c) @ R.T + c


def rotate_image(rgba: torch.Tensor, centre: tuple[float, float], degrees: float) -> torch.Tensor:
    """RGBA [H, W, 4] (straight colour) turned by `degrees` about `centre` (as `rotate_points`): each output pixel
    samples the input bilinearly (premultiplied) at the inversely turned position; outside is transparent."""
    H, W = rgba.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    out_px = torch.stack([xs, ys], -1).reshape(-1, 2).numpy()
    src = torch.from_numpy(rotate_points(out_px, centre, -degrees)).reshape(H, W, 2)  # [H, W, 2] source pixels
    grid = torch.stack([src[..., 0] / W * 2 - 1, src[..., 1] / H * 2 - 1], -1).float()[None]
    x = rgba.permute(2, 0, 1)[None].float()
    x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], 1)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)
    a = y[..., 3:].clamp(0, 1)
    rgb = torch.where(a > 1e-6, y[..., :3] / a.clamp(min=1e-6), torch.zeros_like(y[..., :3])).clamp(0, 1)
    return torch.cat([rgb, a], -1)


def make_rotation(source: Path, out: Path, degrees: float = 20.0, frames: int = 16, rgb: bool = False,
                  background: str | None = None) -> Path:
    """Write DIR/picture.png, DIR/frames/NNN.png and DIR/rotation.json (module docstring). Returns DIR."""
    from dynapose4d.core.io import read_image, write_image, write_json

    img = read_image(source / "image.png" if source.is_dir() else source)
    if img.shape[-1] != 4:
        raise SystemExit(f"{source}: needs an RGBA picture")
    ys, xs = np.nonzero(img[..., 3].numpy() > 0.5)
    centre = (float(xs.min() + xs.max() + 1) / 2.0, float(ys.min() + ys.max() + 1) / 2.0)
    angles = [degrees * t / max(frames - 1, 1) for t in range(frames)]
    bg = torch.tensor(BACKGROUND)
    if background is not None:  # a textured background (tests/cutout_backgrounds.py): a photograph's stand-in
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from cutout_backgrounds import make_background

        bg, rgb = make_background(background, img.shape[0], img.shape[1], seed=0), True

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x[..., :3] * x[..., 3:] + bg * (1 - x[..., 3:]) if rgb else x

    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "picture.png", flat(img))
    for t, a in enumerate(angles):
        write_image(out / "frames" / f"{t:03d}.png", flat(rotate_image(img, centre, a) if a else img))
    write_json(out / "rotation.json", {"centre": list(centre), "degrees": angles, "rgb": rgb,
                                       "background": background})
    return out


def rotation_errors(run: Path, data: Path) -> dict:
    """Per-frame mean distance (px of the picture) of the run's reference-view track to the automatic keypoints
    turned by the known angles, and of the keypoints held still (the no-motion baseline)."""
    rot = json.loads((data / "rotation.json").read_text())
    kp = np.array(json.loads((run / "inputs" / "keypoints.json").read_text())["keypoints"], dtype=np.float64)
    ref = np.array(json.loads((run / "dynamic" / "keypoints.json").read_text())["reference_2d"])  # [T, N, 2]
    truth = np.stack([rotate_points(kp, rot["centre"], a) for a in rot["degrees"]])  # [T, N, 2]
    if ref.shape != truth.shape:
        raise SystemExit(f"{run}: reference_2d has shape {ref.shape}, expected {truth.shape}")
    err = np.linalg.norm(ref - truth, axis=-1).mean(-1)  # [T]
    still = np.linalg.norm(kp[None] - truth, axis=-1).mean(-1)  # [T]
    return {"frames": len(err), "keypoints": int(kp.shape[0]), "degrees": rot["degrees"],
            "error_px": [round(float(e), 3) for e in err], "no_motion_px": [round(float(e), 3) for e in still],
            "mean_error_px": round(float(err[1:].mean()), 3), "mean_no_motion_px": round(float(still[1:].mean()), 3),
            "last_error_px": round(float(err[-1]), 3), "last_no_motion_px": round(float(still[-1]), 3)}


# ------------------------------------------------------------------------------------------------ gt tracks


def gt_keypoint_tracks(run: Path, scene_dir: Path) -> dict:
    """The scene's hand keypoints carried by the run's φ, scored against gt/ (module docstring)."""
    from dynapose4d.core.io import read_image
    from dynapose4d.data.scene import load_scene
    from dynapose4d.deform import load_dynamic
    from dynapose4d.deform.tracks import keypoint_tracks
    from dynapose4d.evaluation.gt import load_gt, summarise, track_view_metrics
    from dynapose4d.pipeline.config import load_config

    scene = load_scene(scene_dir)  # the hand keypoints.json; gt/keypoints3d.json corresponds to them
    if scene.auto_keypoints is not None or scene.gt_dir is None:
        raise SystemExit(f"{scene_dir}: needs keypoints.json and gt/ (with keypoints3d.json)")
    canonical, phi = load_dynamic(run)
    cfg = load_config(run / "config.yaml", [])
    T = int(phi.num_frames)
    tracks = keypoint_tracks(canonical, phi, scene.keypoints, scene.camera, scene.width, scene.height, T,
                             cfg.dynamic.track_neighbours, skeleton=list(scene.skeleton)).cpu()  # [T, N, 3]
    gt = load_gt(scene.gt_dir)
    per_view = {}
    for cam in gt.cameras:
        first = read_image(scene.gt_dir / cam.name / "000.png")
        H, W = first.shape[:2]
        per_view[cam.name] = track_view_metrics(tracks, gt.keypoints3d, cam, W, H, gt.visible.get(cam.name))
    s = summarise(per_view, gt.cameras, scene.camera, tracks, gt.keypoints3d)
    own = json.loads((run / "dynamic" / "metrics.json").read_text()) if (run / "dynamic" / "metrics.json").is_file() \
        else {}
    manifest = json.loads((run / "manifest.json").read_text())
    return {
        "run": str(run), "scene": str(scene_dir), "keypoints": manifest.get("inputs", {}).get("keypoints"),
        "num_keypoints": len(json.loads((run / "dynamic" / "keypoints.json").read_text())["names"]),
        "novel_psnr_moving": own.get("novel", {}).get("psnr_moving"),
        "novel_psnr_moving_no_motion": own.get("novel", {}).get("psnr_moving_no_motion"),
        "novel_pck": s["novel"].get("pck"), "novel_pck_no_motion": s["novel"].get("pck_no_motion"),
        "own_novel_pck": own.get("novel", {}).get("pck"),  # the run's own tracks (= novel_pck for a hand run)
        "mean_pck": s["mean"].get("pck"), "kp_error_3d": s["mean"].get("kp_error_3d"),
        "kp_error_3d_no_motion": s["mean"].get("kp_error_3d_no_motion"),
        "kp_error_3d_frame0": s["mean"].get("kp_error_3d_frame0"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tracks", help="gt keypoints carried by each run's φ; pairs RUN SCENE")
    p.add_argument("pairs", nargs="+")
    p = sub.add_parser("make-rotation", help="a picture and a video of it turned by known angles")
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--degrees", type=float, default=20.0)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rgb", action="store_true", help="over a plain background, without alpha")
    p.add_argument("--background", choices=("noise", "stripes", "clutter", "grain"),
                   help="over a textured background, without alpha (cut out by GrabCut in the run)")
    p = sub.add_parser("rotation", help="a run's reference-view track against the known rotation")
    p.add_argument("run", type=Path)
    p.add_argument("data", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "tracks":
        if len(a.pairs) % 2:
            ap.error("tracks takes pairs: RUN SCENE [RUN SCENE ...]")
        rows = [gt_keypoint_tracks(Path(r), Path(s)) for r, s in zip(a.pairs[::2], a.pairs[1::2])]
        print(json.dumps(rows, indent=1))
    elif a.cmd == "make-rotation":
        print(make_rotation(a.source, a.out, a.degrees, a.frames, a.rgb, a.background))
    else:
        print(json.dumps(rotation_errors(a.run, a.data), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
