"""How well GrabCut (`dynapose4d.data.cutout`) cuts the synthetic objects out of textured backgrounds.

Each template's scene (RGBA picture and video, known alpha) is put over backgrounds made by
`tests/cutout_backgrounds.py`-style rules (smooth colour noise, stripes, clutter of shapes, fine grain), and the
cut-out mask is compared with the true one (IoU of alpha > 1/2), for the picture and for every video frame
(each cut alone, as a run does; and, as a run given the picture's mask does, frames 1.. cut with the colour
models of the picture and its true mask); and the picture's cut-out over white with the true composite (PSNR), with
GrabCut's binary alpha and with its edge matted (`matte_edges`, what a run uses). Trivial baseline: everything
inside the certain-background ring called object (what the cut starts from). Prints a table and writes a JSON.

    python experiments/cutout_eval.py [--size 256] [--seeds 0 1] [--out bench/cutout.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cutout_backgrounds import BACKGROUNDS, composite, make_background  # noqa: E402

from dynapose4d.core.io import read_image  # noqa: E402
from dynapose4d.data.cutout import RING, colour_models, grabcut_alpha, matte_edges  # noqa: E402
from dynapose4d.data.synthetic import write_scene  # noqa: E402

TEMPLATES = ("humanoid", "quadruped", "lamp", "hand", "bird", "random")


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def psnr_over_white(rgba: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR (dB) of a cut-out RGBA over white against the true RGBA over white."""
    def white(x: torch.Tensor) -> torch.Tensor:
        return x[..., :3] * x[..., 3:] + (1 - x[..., 3:])
    mse = float(((white(rgba) - white(truth)) ** 2).mean())
    return 10 * float(np.log10(1 / max(mse, 1e-12)))


def ring_baseline(h: int, w: int) -> torch.Tensor:
    m = torch.ones(h, w)
    b = max(1, round(RING * min(h, w)))
    m[:b], m[-b:], m[:, :b], m[:, -b:] = 0, 0, 0, 0
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="bench/cutout.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for template in TEMPLATES:
            for seed in args.seeds:
                scene = write_scene(template, Path(tmp) / f"{template}{seed}", seed=seed, num_frames=args.frames,
                                    size=args.size)
                image = read_image(scene / "image.png")  # [H, W, 4]
                frames = [read_image(f) for f in sorted((scene / "video").glob("*.png"))]
                H, W = image.shape[:2]
                for bg_name in BACKGROUNDS:
                    bg = make_background(bg_name, H, W, seed)  # [H, W, 3]
                    t0 = time.perf_counter()
                    rgb = composite(image, bg)
                    a0 = grabcut_alpha(rgb)
                    t_pic = time.perf_counter() - t0
                    hard = torch.cat([rgb, a0[..., None]], -1)
                    psnr_binary = psnr_over_white(hard, image)
                    psnr_matted = psnr_over_white(matte_edges(rgb, a0), image)
                    ious, ious_mask = [], []
                    t0 = time.perf_counter()
                    for f in frames:
                        a = grabcut_alpha(composite(f, bg))
                        ious.append(iou(a, f[..., 3]))
                    t_frame = (time.perf_counter() - t0) / max(1, len(frames))
                    # the user's mask on the picture: frames cut with the picture's colour models (frames 1..)
                    models = colour_models(rgb, (image[..., 3] > 0.5).float())
                    for f in frames[1:]:
                        ious_mask.append(iou(grabcut_alpha(composite(f, bg), models), f[..., 3]))
                    rows.append(dict(template=template, seed=seed, background=bg_name,
                                     picture_iou=iou(a0, image[..., 3]),
                                     baseline_iou=iou(ring_baseline(H, W), image[..., 3]),
                                     video_iou_mean=float(np.mean(ious)), video_iou_min=float(np.min(ious)),
                                     video_iou_with_mask_mean=float(np.mean(ious_mask)),
                                     video_iou_with_mask_min=float(np.min(ious_mask)),
                                     picture_psnr_binary=psnr_binary, picture_psnr_matted=psnr_matted,
                                     seconds_picture=t_pic, seconds_frame=t_frame))
                    r = rows[-1]
                    print(f"{template:10s} {seed:2d} {bg_name:8s} picture {r['picture_iou']:.3f} "
                          f"(baseline {r['baseline_iou']:.3f})  video mean {r['video_iou_mean']:.3f} "
                          f"min {r['video_iou_min']:.3f}  with the picture's mask {r['video_iou_with_mask_mean']:.3f}  "
                          f"over white {psnr_binary:.2f} -> {psnr_matted:.2f} dB  "
                          f"{t_pic:.2f} s / {t_frame:.2f} s a frame", flush=True)
    print("\nby background (mean over templates and seeds):")
    print(f"{'background':10s} {'picture IoU':>12s} {'baseline':>9s} {'video mean':>11s} {'video min':>10s} "
          f"{'mask: mean':>11s} {'mask: min':>10s} {'binary dB':>10s} {'matted dB':>10s}")
    for bg_name in BACKGROUNDS:
        sel = [r for r in rows if r["background"] == bg_name]
        print(f"{bg_name:10s} {np.mean([r['picture_iou'] for r in sel]):12.3f} "
              f"{np.mean([r['baseline_iou'] for r in sel]):9.3f} {np.mean([r['video_iou_mean'] for r in sel]):11.3f}"
              f" {np.min([r['video_iou_min'] for r in sel]):10.3f}"
              f" {np.mean([r['video_iou_with_mask_mean'] for r in sel]):11.3f}"
              f" {np.min([r['video_iou_with_mask_min'] for r in sel]):10.3f}"
              f" {np.mean([r['picture_psnr_binary'] for r in sel]):10.2f}"
              f" {np.mean([r['picture_psnr_matted'] for r in sel]):10.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(size=args.size, frames=args.frames, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
