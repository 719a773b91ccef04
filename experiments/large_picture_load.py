"""Time and peak memory of loading a large photo as a scene (`load_scene(photo, max_size=512)`, cut-out and
automatic keypoints included), on a synthetic photo made here: the humanoid scene's object over 60% of the height
of a W x H JPEG (quality 92), on a plain or a fine-grain background (the grain one goes through GrabCut).

    python experiments/large_picture_load.py --size 12000 9000 --background grain

Each load runs in a fresh process (peak RSS is per process); prints one line per photo.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOAD = """
import resource, sys, time
from dynapose4d.data.scene import load_scene
t = time.perf_counter()
s = load_scene(sys.argv[1], max_size=512)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(f"{time.perf_counter() - t:.1f} s, peak RSS {peak:.2f} GB, {s.num_keypoints} keypoints, "
      f"GrabCut {s.grabcut_cuts}, frames {s.width}x{s.height}")
"""


def make_photo(path: Path, W: int, H: int, background: str) -> None:
    """The humanoid's picture scaled to 60% of H, pasted at (0.3 W, 0.2 H) on the background, saved as JPEG."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from cutout_backgrounds import make_background

    from dynapose4d.core.io import read_image
    from dynapose4d.data.synthetic import write_scene

    root = write_scene("humanoid", path.parent / "scene", seed=0, num_frames=1, size=512)
    img = read_image(root / "image.png")  # [512, 512, 4]
    obj = F.interpolate(img.permute(2, 0, 1)[None], scale_factor=0.6 * H / 512, mode="bilinear")[0].permute(1, 2, 0)
    if background == "plain":
        bg = torch.ones(H, W, 3) * torch.tensor([0.92, 0.93, 0.95])
    else:
        bg = make_background(background, H, W, seed=0)
    y0, x0 = int(0.2 * H), int(0.3 * W)
    h, w = obj.shape[:2]
    a = obj[..., 3:]
    bg[y0:y0 + h, x0:x0 + w] = obj[..., :3] * a + bg[y0:y0 + h, x0:x0 + w] * (1 - a)
    Image.fromarray((bg.numpy() * 255).round().astype(np.uint8)).save(path, quality=92)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=[8000, 6000], metavar=("W", "H"))
    ap.add_argument("--background", choices=["plain", "grain"], default="grain")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / f"{args.background}_{args.size[0]}x{args.size[1]}.jpg"
        make_photo(photo, *args.size, args.background)
        out = subprocess.run([sys.executable, "-c", LOAD, str(photo)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        print(f"{photo.name}: {out.stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
