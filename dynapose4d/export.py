"""`dynapose4d export RUN --format ply-sequence`: the 4D result as one standard 3DGS PLY per frame.

RUN/export/ply-sequence/000.ply … (T files; or --out DIR): the canonical Gaussians moved by φ to frame f
(τ = f / (T − 1)), with their colours and opacities; each opens in common splat viewers.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from dynapose4d.deform import gaussians_at, load_dynamic
from dynapose4d.errors import InputError
from dynapose4d.gaussians import GaussianModel, save_ply


def export_ply_sequence(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write one PLY per frame of the run's 4D model into `out_dir` (atomically: a temporary folder renamed)."""
    canonical, phi = load_dynamic(run_dir)
    T = phi.num_frames
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    s = canonical.splats
    with torch.no_grad():
        for f in range(T):
            g = gaussians_at(canonical, phi, f / max(T - 1, 1))
            frame = GaussianModel(means=g["means"], scales=torch.log(g["scales"]), quats=g["quats"],
                                  opacities=s["opacities"], sh0=s["sh0"], shN=s["shN"])
            save_ply(frame, tmp / f"{f:03d}.ply")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return sorted(out_dir.glob("*.ply"))


def export_cli(args: argparse.Namespace) -> int:
    """CLI handler of `dynapose4d export`."""
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    if args.format != "ply-sequence":
        raise InputError(f"--format {args.format}: only 'ply-sequence' is supported")
    out = Path(args.out) if args.out else run_dir / "export" / args.format
    files = export_ply_sequence(run_dir, out)
    print(f"wrote {len(files)} PLY files to {out}")
    return 0
