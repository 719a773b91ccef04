"""The whole pipeline on a scene photographed on clutter, without and with the user's mask.

Writes two copies of a synthetic scene folder (default: `make demo`'s, humanoid seed 0) whose image, video frames
and views are put over the rule-made clutter background of tests/cutout_backgrounds.py (RGB, no alpha; camera.json,
keypoints.json and gt/ as they are): `clutter/` as it is (GrabCut from the border cuts everything) and
`clutter_mask/` with `mask.png`, the picture's true mask in black and white (as a user would paint it; the frames
and views are then cut with the picture's colours). Then, unless --no-run, runs `dynapose4d run FOLDER --config
cpu` on each and `dynapose4d eval` against gt/, and prints the metrics beside the scene with its true alpha.

    python experiments/mask_pipeline.py --out runs/mask_pipeline [--template humanoid --seed 0] [--no-run]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from cutout_backgrounds import composite, make_background  # noqa: E402

from dynapose4d.core.io import read_image, write_image  # noqa: E402
from dynapose4d.data.synthetic import write_scene  # noqa: E402


def on_clutter(src: Path, dst: Path, with_mask: bool) -> None:
    """Copy scene folder `src` to `dst` with every image put over the clutter background (RGB)."""
    shutil.copytree(src, dst)
    image = read_image(src / "image.png")  # [H, W, 4]
    H, W = image.shape[:2]
    bg = make_background("clutter", H, W, seed=0)  # [H, W, 3] the same backdrop for every camera and frame
    for f in [dst / "image.png", *sorted((dst / "video").glob("*.png")), *sorted((dst / "views").glob("*.png"))]:
        write_image(f, composite(read_image(f), bg))
    if with_mask:
        write_image(dst / "mask.png", (image[..., 3] > 0.5).float()[..., None].expand(-1, -1, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/mask_pipeline")
    ap.add_argument("--template", default="humanoid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-run", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    truth = out / "scene"
    if not truth.exists():
        write_scene(args.template, truth, seed=args.seed)
    for name, with_mask in (("clutter", False), ("clutter_mask", True)):
        if not (out / name).exists():
            on_clutter(truth, out / name, with_mask)
    if args.no_run:
        return
    exe = str(Path(sys.executable).with_name("dynapose4d"))
    rows = {}
    for name in ("clutter", "clutter_mask"):
        run = out / f"run_{name}"
        subprocess.run([exe, "run", str(out / name), "--out", str(run), "--config", "cpu", "--resume"], check=True)
        subprocess.run([exe, "eval", str(run), "--gt", str(truth / "gt")], check=True)
        rows[name] = json.loads((run / "metrics.json").read_text())
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
