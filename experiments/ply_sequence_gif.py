"""A GIF of an exported splat PLY sequence, read back from the files: what a splat viewer plays.

    python experiments/ply_sequence_gif.py RUN/export --out docs/images/export_splats.gif

Each `splats/frame_NNN.ply` is read with `dynapose4d.gaussians.load_ply`, turned back from the file's up axis
(RUN/export/export.json) to the project's +y-up world, and rendered from three cameras around the object
(azimuth -45, 45, 135; elevation 15) with the project's rasterizer: one GIF frame per PLY file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dynapose4d.core.cameras import Camera
from dynapose4d.core.io import write_video
from dynapose4d.export.axes import rotate_points, rotate_quats
from dynapose4d.gaussians import load_ply
from dynapose4d.render import rasterize

AZIMUTHS = (-45.0, 45.0, 135.0)


def render_file(path: Path, up: str, size: int) -> torch.Tensor:
    """RGB [size, 3 * size, 3] of one PLY file from the three cameras."""
    g = load_ply(path).activated()
    means = torch.as_tensor(rotate_points(g["means"], up)).float()  # a half turn or quarter turn is undone by
    quats = rotate_quats(g["quats"], up)  # applying the inverse rotation; "-y" is its own inverse
    if up == "+z":  # the quarter turn about x: its inverse is three more quarter turns
        for _ in range(2):
            means, quats = torch.as_tensor(rotate_points(means, up)).float(), rotate_quats(quats, up)
    panels = []
    for az in AZIMUTHS:
        cam = Camera("view", 15.0, az)
        rgb, _, _ = rasterize(means, quats, g["scales"], g["opacities"], g["colors"], cam.viewmat()[None],
                              cam.K(size, size)[None], size, size, backgrounds=torch.ones(1, 3))
        panels.append(rgb[0])
    return torch.cat(panels, dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export", help="RUN/export (with export.json and splats/)")
    ap.add_argument("--out", required=True, help="output .gif")
    ap.add_argument("--size", type=int, default=128, help="panel size in pixels")
    ap.add_argument("--fps", type=int, default=8)
    a = ap.parse_args()
    export = Path(a.export)
    record = json.loads((export / "export.json").read_text())["outputs"]["ply"]
    with torch.no_grad():
        frames = [render_file(export / f, record["up"], a.size) for f in record["files"]]
    path = write_video(a.out, torch.stack(frames), fps=a.fps)
    print(f"wrote {path} ({len(frames)} frames, {path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
