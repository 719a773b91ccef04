"""How much of the 3D keypoint motion one camera can determine, on the synthetic generator's objects.

    .venv/bin/python experiments/depth_oracle.py [--seeds 8] [--first-seed 100] [--frames 16]

The dynamic stage sees its object from the reference camera only (no novel-view prior without Zero-1-to-3
weights). This measures, with perfect information in that view, how close 3D keypoint tracks can get to the
truth, as a fraction of the no-motion error (frame-0 keypoints held still; the dynamic stage's target is
< 0.6x):

  in-plane    the true keypoints' image motion at the reference camera, each keypoint at its frame-0 depth;
  bones       the true image motion plus the true bone lengths: each keypoint along its true ray at the depth
              that keeps its bone to the parent (skeleton forest from `dynapose4d.tracks.skeleton_forest`) at
              the frame-0 length; of the two depths, the one nearer the keypoint's previous-frame depth (a root
              keeps its previous depth; a bone too short to reach the ray takes the ray's nearest point);
  bones+sign  as bones, but each two-way choice made by the truth (the ambiguity of the sign resolved for free).

No training involved: the numbers bound what image-plane evidence plus rigid bones give, not what the pipeline
reached (README: 0.58-1.05x on six scenes). Under a minute for the default 48 objects on 2 CPU cores.
"""

from __future__ import annotations

import argparse

import torch

from dynapose4d.cameras import REFERENCE_CAMERA
from dynapose4d.data.synthetic import TEMPLATES, make_object
from dynapose4d.tracks import skeleton_forest, tree_depth


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8, help="objects per template")
    ap.add_argument("--first-seed", type=int, default=100, help="seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--frames", type=int, default=16, help="frames per object (the scenes' default)")
    args = ap.parse_args()
    cam = REFERENCE_CAMERA
    vm = cam.viewmat().double()  # [4, 4] world -> camera
    centre = torch.linalg.inv(vm)[:3, 3]
    print(f"{'template':>10} {'no motion':>9} {'in-plane':>9} {'bones':>9} {'bones+sign':>10}   (mean error, world "
          "units; ratio to no motion)")
    rows = []
    for template in TEMPLATES:
        err = {k: [] for k in ("none", "plane", "bones", "sign")}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            obj = make_object(template, seed, args.frames)
            gt = torch.stack([obj.keypoints3d(f).double() for f in range(args.frames)])  # [T, N, 3]
            parent = skeleton_forest(list(obj.skeleton), gt.shape[1])
            cam_pts = gt @ vm[:3, :3].T + vm[:3, 3]  # [T, N, 3] camera frame, z = depth
            plane = cam_pts / cam_pts[..., 2:] * cam_pts[:1, :, 2:]  # each ray at its frame-0 depth
            plane = (plane - vm[:3, 3]) @ vm[:3, :3]
            rays = torch.nn.functional.normalize(gt - centre, dim=-1)
            for k, est in (("none", gt[:1].expand_as(gt)), ("plane", plane),
                           ("bones", bone_reconstruction(rays, centre, gt[0], parent)),
                           ("sign", bone_reconstruction(rays, centre, gt[0], parent, truth=gt))):
                err[k].append((est - gt).norm(dim=-1).mean())
        m = {k: float(torch.stack(v).mean()) for k, v in err.items()}
        rows.append(m)
        print(f"{template:>10} {m['none']:>9.4f} {m['plane']:>5.4f} ({m['plane'] / m['none']:.2f}x) "
              f"{m['bones']:>5.4f} ({m['bones'] / m['none']:.2f}x) {m['sign']:>6.4f} ({m['sign'] / m['none']:.2f}x)")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(f"{'mean':>10} {mean['none']:>9.4f} {mean['plane']:>5.4f} ({mean['plane'] / mean['none']:.2f}x) "
          f"{mean['bones']:>5.4f} ({mean['bones'] / mean['none']:.2f}x) {mean['sign']:>6.4f} "
          f"({mean['sign'] / mean['none']:.2f}x)")


if __name__ == "__main__":
    main()
