"""How much of the 3D keypoint motion one camera can determine, on the synthetic generator's objects.

    .venv/bin/python experiments/depth_oracle.py [--seeds 8] [--first-seed 100] [--frames 16]
    .venv/bin/python experiments/depth_oracle.py --scenes SCENE [SCENE ...]   # scene folders with gt/keypoints3d.json

The dynamic stage sees its object from the reference camera only (no novel-view prior without Zero-1-to-3
weights). This measures, with perfect information in that view, how close 3D keypoint tracks can get to the
truth, as a fraction of the no-motion error (frame-0 keypoints held still; the dynamic stage's target is
< 0.6x):

  in-plane    the true keypoints' image motion at the reference camera, each keypoint at its frame-0 depth;
  bones       the true image motion plus the true bone lengths: each keypoint along its true ray at the depth
              that keeps its bone to the parent (skeleton forest from `dynapose4d.deform.tracks.skeleton_forest`) at
              the frame-0 length; of the two depths, the one nearer the keypoint's previous-frame depth (a root
              keeps its previous depth; a bone too short to reach the ray takes the ray's nearest point);
  bones+sign  as bones, but each two-way choice made by the truth (the ambiguity of the sign resolved for free).

No training involved: the numbers bound what image-plane evidence plus rigid bones give, not what the pipeline
reached (README: 0.58-1.05x on six scenes). Under a minute for the default 48 objects on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dynapose4d.core.cameras import REFERENCE_CAMERA
from dynapose4d.core.errors import InputError
from dynapose4d.data.scene import load_scene
from dynapose4d.data.synthetic import TEMPLATES, make_object
from dynapose4d.deform.tracks import skeleton_forest, tree_depth
from dynapose4d.evaluation.gt import load_gt


def bone_reconstruction(rays: torch.Tensor, centre: torch.Tensor, rest: torch.Tensor, parent: list[int],
                        truth: torch.Tensor | None = None) -> torch.Tensor:
    """3D keypoints [T, N, 3] on the rays `rays` [T, N, 3] (unit directions from `centre` [3]) whose bones to
    their parents keep the lengths of `rest` [N, 3]. Of the two solutions per bone the one nearer the previous
    frame's depth, or nearer `truth` [T, N, 3] when given. Frame by frame, parents before children."""
    T, N, _ = rays.shape
    order = sorted(range(N), key=lambda i: tree_depth(parent, i))
    out, prev = torch.zeros(T, N, 3, dtype=rest.dtype), rest.clone()
    for t in range(T):
        for i in order:
            d = rays[t, i]  # [3]
            ref = truth[t, i] if truth is not None else prev[i]
            if parent[i] < 0:
                out[t, i] = centre + ((prev[i] - centre) @ d) * d
                continue
            p = out[t, parent[i]] - centre
            length2 = float(((rest[i] - rest[parent[i]]) ** 2).sum())
            b = float(p @ d)
            disc = b * b - (float(p @ p) - length2)
            depths = [b] if disc <= 0 else [b - disc ** 0.5, b + disc ** 0.5]
            s = min(depths, key=lambda z: float((centre + z * d - ref).norm()))
            out[t, i] = centre + s * d
        prev = out[t]
    return out


def oracle_errors(gt: torch.Tensor, skeleton: list, viewmat: torch.Tensor) -> dict[str, float]:
    """Mean 3D keypoint error of each estimate above (and of no motion) for true tracks `gt` [T, N, 3] seen by
    the camera `viewmat` [4, 4] (world -> camera)."""
    vm = viewmat.double()
    gt = gt.double()
    centre = torch.linalg.inv(vm)[:3, 3]
    parent = skeleton_forest(list(skeleton), gt.shape[1])
    cam_pts = gt @ vm[:3, :3].T + vm[:3, 3]  # [T, N, 3] camera frame, z = depth
    plane = cam_pts / cam_pts[..., 2:] * cam_pts[:1, :, 2:]  # each ray at its frame-0 depth
    plane = (plane - vm[:3, 3]) @ vm[:3, :3]
    rays = torch.nn.functional.normalize(gt - centre, dim=-1)
    est = {"none": gt[:1].expand_as(gt), "plane": plane,
           "bones": bone_reconstruction(rays, centre, gt[0], parent),
           "sign": bone_reconstruction(rays, centre, gt[0], parent, truth=gt)}
    return {k: float((e - gt).norm(dim=-1).mean()) for k, e in est.items()}


def _row(name: str, m: dict[str, float]) -> str:
    return (f"{name:>10} {m['none']:>9.4f} {m['plane']:>5.4f} ({m['plane'] / m['none']:.2f}x) "
            f"{m['bones']:>5.4f} ({m['bones'] / m['none']:.2f}x) {m['sign']:>6.4f} ({m['sign'] / m['none']:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8, help="objects per template")
    ap.add_argument("--first-seed", type=int, default=100, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--frames", type=int, default=16, help="frames per object (the scenes' default)")
    ap.add_argument("--scenes", nargs="+", default=None,
                    help="scene folders instead of the generator: gt/keypoints3d.json seen by the scene's camera")
    args = ap.parse_args()
    print(f"{'':>10} {'no motion':>9} {'in-plane':>9} {'bones':>9} {'bones+sign':>10}   (mean error, world "
          "units; ratio to no motion)")
    rows = []
    if args.scenes:
        for folder in args.scenes:
            try:
                scene = load_scene(folder)
            except InputError as e:
                raise SystemExit(f"depth_oracle.py: error: {e}") from None
            gt = load_gt(scene.gt_dir).keypoints3d if scene.gt_dir is not None else None
            if gt is None:
                raise SystemExit(f"{folder}: no gt/keypoints3d.json")
            m = oracle_errors(gt, scene.skeleton, scene.camera.viewmat())
            rows.append(m)
            print(_row(Path(folder).name[-10:], m))
    else:
        for template in TEMPLATES:
            err = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                obj = make_object(template, seed, args.frames)
                gt = torch.stack([obj.keypoints3d(f) for f in range(args.frames)])  # [T, N, 3]
                err.append(oracle_errors(gt, obj.skeleton, REFERENCE_CAMERA.viewmat()))
            m = {k: sum(e[k] for e in err) / len(err) for k in err[0]}
            rows.append(m)
            print(_row(template, m))
    print(_row("mean", {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}))


if __name__ == "__main__":
    main()
