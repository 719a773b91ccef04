"""The one `dynapose4d run` command line: its arguments (`add_run_args`, shared by `run`, `fit-static`,
`fit-dynamic` and the local sweep runner) and the command equivalent to parsed arguments (`run_argv`,
`command_line`: RUN/command.txt, the experiments' subprocesses). argparse and shlex only, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import shlex

CONFIG_HELP = "preset: a name (cpu, default, dg4d, smoke; `dynapose4d config list`) or a YAML file"
SET_HELP = ("config overrides (repeatable; each value holds '=', so a word after them without one is the next "
            "positional argument)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    """The arguments of `dynapose4d run` (all but --stages) on parser `p`."""
    p.add_argument("scene", help="scene folder (docs/scene-folder.md), a picture (png, jpg, webp, bmp, tif, heic) "
                                 "alone, a clip (mp4, mov, webm, mkv, avi, gif) alone (its frame 0 is the picture, "
                                 "the clip the driving video), or synthetic:<template>:<seed>. Without alpha the "
                                 "object is cut out (plain background, else U²-Net with its weights, else GrabCut; "
                                 "--set cutout=plain|grabcut|u2net|auto)")
    p.add_argument("--out", required=True, help="run folder to create (or resume; docs/run-folder.md)")
    p.add_argument("--video", default=None, help="driving video: an mp4 (or mov, webm, mkv, avi, gif) or a "
                                                 "folder of frames 000.png ... (replaces the scene's own); of any "
                                                 "size: frame 0's object is laid onto the picture's. Without "
                                                 "any, dynamic.driver makes one: svd (Stable Video Diffusion) "
                                                 "or puppet (the picture moved on its skeleton; --config cpu)")
    p.add_argument("--keypoints", default=None,
                   help="keypoints file in keypoints.json's format (replaces the scene's; e.g. an edited "
                        "RUN/inputs/keypoints.json). Without any, keypoints are made from the mask")
    p.add_argument("--mask", default=None,
                   help="the picture's object mask: an image of its size, white on black (or a cut-out PNG, whose "
                        "alpha is used); replaces the picture's alpha and the automatic cut-out (replaces the "
                        "scene's mask.png)")
    p.add_argument("--config", default=None, help=CONFIG_HELP)
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=SET_HELP + ", e.g. --set static.steps=200 dynamic.lambda_kml=0")
    p.add_argument("--resume", action="store_true",
                   help="skip finished stages with unchanged config; resume an interrupted stage")


def run_argv(args: argparse.Namespace) -> list[str]:
    """The `run ...` arguments equivalent to `args` (the program name left out): SCENE --out RUN [--video V]
    [--keypoints K] [--mask M] [--config C] [--set KEY=VALUE ...] [--stages S] [--resume]."""
    parts = ["run", str(args.scene), "--out", str(args.out)]
    for flag in ("video", "keypoints", "mask"):
        if getattr(args, flag, None):
            parts += [f"--{flag}", str(getattr(args, flag))]
    if getattr(args, "config", None):
        parts += ["--config", str(args.config)]
    for ov in getattr(args, "overrides", []) or []:
        parts += ["--set", ov]
    if getattr(args, "stages", None):
        parts += ["--stages", str(args.stages)]
    if getattr(args, "resume", False):
        parts.append("--resume")
    return parts


def command_line(args: argparse.Namespace) -> str:
    """The `dynapose4d run` command equivalent to `args` (written to RUN/command.txt)."""
    return shlex.join(["dynapose4d", *run_argv(args)])
