"""How well a run driven by the puppet video (`dynamic.driver=puppet`) follows it, where the truth is known: the
puppet moves the keypoints itself (RUN/inputs/video/source.json, "keypoints", pipeline pixels).

Prints, over frames 1..T-1 (frame 0 is the picture), in pipeline pixels and as PCK@0.1 (a keypoint within 10% of
the object's longer side):
  cape:     CAPE's keypoints on the puppet's frames (RUN/cape/driving_keypoints.json) against the puppet's;
            baseline: the picture's keypoints copied to every frame (the support, held still).
  track:    the 4D result's 3D keypoint tracks projected at the reference camera (RUN/dynamic/keypoints.json,
            reference_2d) against the puppet's; baseline: held still.
  render:   the 4D result's reference-view renders (RUN/dynamic/videos/reference.mp4, left half) against the puppet
            frames over white, PSNR on the pixels that move (where frame t differs from frame 0 by > 0.05);
            baseline: the picture itself (no motion).

    .venv/bin/python experiments/puppet_eval.py RUN [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dynapose4d.core.images import over_background
from dynapose4d.data.scene import load_scene
from dynapose4d.pipeline.config import load_run_config
from dynapose4d.priors.svd import generated_video_folder, read_frames, read_source


def _scores(pred: np.ndarray, truth: np.ndarray, size: float) -> dict:
    d = np.linalg.norm(pred[1:] - truth[1:], axis=-1)  # [T-1, N]
    return {"mean_px": round(float(d.mean()), 3), "pck@0.1": round(float((d < 0.1 * size).mean()), 4)}


def evaluate(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    cfg = load_run_config(run)
    scene = load_scene(manifest["scene"], keypoints=None if manifest["inputs"]["keypoints"] == "auto"
                       else manifest["inputs"]["keypoints"], max_size=cfg.max_image_size, cutout=cfg.cutout,
                       u2net=cfg.u2net,
                       mask=manifest["inputs"].get("mask"))
    source = read_source(generated_video_folder(run))
    if source is None or "puppet" not in source:
        raise SystemExit(f"{run}: no puppet video (RUN/inputs/video/source.json without 'puppet')")
    truth = np.array(source["keypoints"])  # [T, N, 2] pipeline px
    still = np.repeat(truth[:1], len(truth), 0)
    ys, xs = np.nonzero(scene.image[..., 3].numpy() > 0.5)
    size = float(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    out = {"frames": len(truth), "keypoints": truth.shape[1], "object_px": size}
    cape = np.array(json.loads((run / "cape" / "driving_keypoints.json").read_text())["points"])  # pipeline px
    out["cape"], out["cape_baseline"] = _scores(cape, truth, size), _scores(still, truth, size)
    ref = torch.tensor(json.loads((run / "dynamic" / "keypoints.json").read_text())["reference_2d"])  # file px
    if scene.recentring is not None:
        ref = scene.recentring.from_scene(ref)
    out["track"] = _scores(ref.numpy(), truth, size)
    out["track_baseline"] = out["cape_baseline"]
    import imageio.v3 as iio

    frames = read_frames(generated_video_folder(run))  # [T, H, W, 4]
    target = over_background(frames, 1.0).numpy()  # [T, H, W, 3]
    H, W = target.shape[1:3]
    video = iio.imread(run / "dynamic" / "videos" / "reference.mp4").astype(np.float32) / 255  # [T, h, 2w, 3]
    render = video[:, :H, :W]
    moving = np.abs(target - target[:1]).max(-1) > 0.05  # [T, H, W]

    def psnr(a: np.ndarray) -> float:
        mse = float(((a[1:] - target[1:]) ** 2).sum(-1)[moving[1:]].mean() / 3)
        return round(10 * float(np.log10(1 / max(mse, 1e-12))), 2)

    out["render_psnr_moving"] = psnr(render)
    out["render_psnr_moving_baseline"] = psnr(np.repeat(target[:1], len(target), 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res = evaluate(a.run)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
