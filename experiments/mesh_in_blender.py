"""Picture of a run's RUN/export/mesh.glb as Blender imports and plays it (README, "What a run produces").

    python experiments/mesh_in_blender.py runs/demo/run/export/mesh.glb --out docs/images/export_mesh_in_blender.png

Runs Blender headless (`blender -b`, Debian's package): imports the glb with its glTF importer, renders the mesh
with Cycles on the CPU at the given frames from the front (the file's +z axis, the run's reference camera side)
and pastes the renders side by side. Needs `blender` on the PATH.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import bpy, math, sys
    import numpy as np
    if not hasattr(np, "bool"):  # Debian 12's Blender 3.4 importer predates NumPy 1.24
        np.bool = bool
    path, out, fps, size, *frames = sys.argv[sys.argv.index("--") + 1:]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    sc = bpy.context.scene
    sc.render.fps = int(float(fps))
    bpy.ops.import_scene.gltf(filepath=path)
    obj = next(o for o in sc.objects if o.type == "MESH")
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    sc.collection.objects.link(cam)
    # glTF +Y up / +Z forward becomes Blender +Z up / -Y forward: the run's reference side looks along +Y
    lo = np.min([obj.matrix_world @ v.co for v in obj.data.vertices], 0)
    hi = np.max([obj.matrix_world @ v.co for v in obj.data.vertices], 0)
    centre, extent = (lo + hi) / 2, float(np.max(hi - lo))
    cam.location = (centre[0], centre[1] - 1.9 * extent, centre[2])
    cam.rotation_euler = (math.pi / 2, 0.0, 0.0)
    cam.data.lens = 50
    sc.camera = cam
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.rotation_euler = (0.7, 0.2, -0.4)
    sun.data.energy = 2.5
    sc.collection.objects.link(sun)
    sc.world = bpy.data.worlds.new("world")
    sc.world.color = (0.8, 0.8, 0.8)
    sc.render.engine = "CYCLES"
    sc.cycles.device = "CPU"
    sc.cycles.samples = 32
    sc.cycles.use_denoising = False
    sc.view_settings.view_transform = "Standard"  # show the colours as they are (no Filmic tone curve)
    sc.render.resolution_x = sc.render.resolution_y = int(size)
    for f in frames:
        sc.frame_set(int(f))
        sc.render.filepath = f"{out}/frame_{int(f):03d}.png"
        bpy.ops.render.render(write_still=True)
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("glb", help="RUN/export/mesh.glb")
    ap.add_argument("--out", required=True, help="output .png (the frames side by side)")
    ap.add_argument("--frames", type=int, nargs="+", default=[1, 6, 11, 16], help="Blender frames (1 = frame 0)")
    ap.add_argument("--fps", type=float, default=8.0, help="the run's dynamic.video_fps")
    ap.add_argument("--size", type=int, default=256, help="pixels per render")
    args = ap.parse_args()
    if shutil.which("blender") is None:
        print("blender is not installed (Debian: apt-get install blender)", file=sys.stderr)
        return 2
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "render.py"
        script.write_text(SCRIPT)
        subprocess.run(["blender", "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(script),
                        "--", str(Path(args.glb).resolve()), tmp, str(args.fps), str(args.size),
                        *map(str, args.frames)], check=True, capture_output=True)
        tiles = [Image.open(Path(tmp) / f"frame_{f:03d}.png").convert("RGB") for f in args.frames]
        sheet = Image.new("RGB", (args.size * len(tiles), args.size), "white")
        for i, t in enumerate(tiles):
            sheet.paste(t, (i * args.size, 0))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
