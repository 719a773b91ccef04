"""Sub-command arguments. Each handler imports its implementation lazily, so `--help` stays fast."""

from __future__ import annotations

import argparse

from dynapose4d.pipeline.run_command import CONFIG_HELP, SET_HELP, add_run_args


def _run(args: argparse.Namespace) -> int:
    from dynapose4d.pipeline.runner import run_cli

    return run_cli(args)


def _make_scene(args: argparse.Namespace) -> int:
    from dynapose4d.data.synthetic import make_scene_cli

    return make_scene_cli(args)


def _train_cape(args: argparse.Namespace) -> int:
    from dynapose4d.stages.train_cape import train_cape_cli

    return train_cape_cli(args)


def _render(args: argparse.Namespace) -> int:
    from dynapose4d.pipeline.evaluate import render_cli

    return render_cli(args)


def _eval(args: argparse.Namespace) -> int:
    from dynapose4d.pipeline.evaluate import eval_cli

    return eval_cli(args)


def _export(args: argparse.Namespace) -> int:
    from dynapose4d.pipeline.run_export import export_cli

    return export_cli(args)


def _showcase(args: argparse.Namespace) -> int:
    from dynapose4d.pipeline.showcase import showcase_cli

    return showcase_cli(args)


def _config_show(args: argparse.Namespace) -> int:
    from dynapose4d.core.structured import to_commented_yaml
    from dynapose4d.pipeline.config import load_config

    if args.train_cape:
        from dynapose4d.stages.train_cape import load_train_config

        cfg = load_train_config(args.preset, list(args.overrides))
    else:
        cfg = load_config(args.preset, list(args.overrides))
    print(to_commented_yaml(cfg), end="")
    return 0


def _config_list(args: argparse.Namespace) -> int:
    from dynapose4d.core.structured import preset_names, resolve_preset

    for name in preset_names():
        print(f"{name:16s} {resolve_preset(name)}")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from dynapose4d.pipeline.experiments import experiment_cli

    return experiment_cli(args)


def _eval_cape(args: argparse.Namespace) -> int:
    from dynapose4d.cape.mp100_eval import eval_cape_cli

    return eval_cape_cli(args)


def add_all(sub: argparse._SubParsersAction) -> None:
    """Register every sub-command on `sub`."""
    p = sub.add_parser("run", help="run the pipeline (static -> cape -> dynamic) on a scene")
    add_run_args(p)
    p.add_argument("--stages", default=None, help="comma list of stages, e.g. static,cape (default: config)")
    p.set_defaults(func=_run)

    for name, stage in (("fit-static", "static"), ("fit-dynamic", "dynamic")):
        p = sub.add_parser(name, help=f"run the {stage} stage alone (same as `run --stages {stage}`)")
        add_run_args(p)
        p.set_defaults(func=_run, stages=stage)

    p = sub.add_parser("train-cape", help="train the generic CAPE model on procedural data (writes a checkpoint)")
    p.add_argument("--out", default=None,
                   help="checkpoint to write (default runs/cape/cape.ckpt; the shipped "
                        "dynapose4d/assets/cape_small.ckpt is replaced only when named here)")
    p.add_argument("--config", default=None, help="CAPE training preset: a name (cape/cpu, cape/gpu) or a YAML file")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=SET_HELP + ", e.g. --set steps=200 trainer.accelerator=gpu")
    p.set_defaults(func=_train_cape)

    p = sub.add_parser("render", help="render a run's Gaussians for a camera list (gt/cameras.json format)")
    p.add_argument("run", help="run folder")
    p.add_argument("--cameras", required=True, help="cameras JSON: [{name, elevation, azimuth, radius, fov_y}]")
    p.add_argument("--frames", default="all", help="'all' or a comma list of frame indices, e.g. 0,3,7")
    p.add_argument("--out", required=True, help="output folder: OUT/<camera>/<frame:03d>.png (RGBA)")
    p.set_defaults(func=_render)

    p = sub.add_parser("eval", help="evaluate a run against ground truth (PSNR, SSIM, LPIPS, PCK, jitter)")
    p.add_argument("run", help="run folder")
    p.add_argument("--gt", required=True, help="the scene's gt/ folder")
    p.add_argument("--protocol", choices=["gt", "consistent4d"], default="gt",
                   help="'gt': the gt cameras; 'consistent4d': its 4 cameras, white background, 512 px")
    p.set_defaults(func=_eval)

    p = sub.add_parser("make-scene", help="write a synthetic articulated scene with ground truth")
    p.add_argument("name", nargs="?", default=None, help="template name (see --list)")
    p.add_argument("--out", default=None, help="scene folder to write")
    p.add_argument("--seed", type=int, default=0, help="varies proportions, colours and motion")
    p.add_argument("--frames", type=int, default=16, help="number of frames T")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (square)")
    p.add_argument("--list", action="store_true", help="list the templates and exit")
    p.add_argument("--orbit-video", action="store_true",
                   help="also write an orbit video (mp4 + gif) of the ground-truth animation")
    p.set_defaults(func=_make_scene)

    p = sub.add_parser("export", help="(re)write a run's outputs for other tools: splat PLY sequence, skeleton "
                                      "glb and bvh, animated mesh")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", action="extend", nargs="+", default=None,
                   choices=["all", "ply", "ply_compressed", "splat", "glb", "bvh", "mesh", "videos", "ply-sequence"],
                   help="what to write (default: the run config's export.formats; all = ply glb bvh mesh "
                        "videos): ply: one 3DGS PLY per frame; ply_compressed: SuperSplat's compressed PLY; "
                        "splat: antimatter15 .splat; glb/bvh: the animated keypoint skeleton; mesh: mesh.glb, the "
                        "Gaussians' surface as a textured mesh with one morph target per frame; videos: copies of "
                        "the dynamic stage's videos")
    p.add_argument("--up", choices=["+y", "-y", "+z"], default=None,
                   help="up axis of every output (default: -y for splat files, as SuperSplat and most 3DGS "
                        "viewers expect; +y for glb/bvh/mesh, as glTF and Blender's importers expect)")
    p.add_argument("--mesh-level", type=float, default=None,
                   help="the mesh's surface: the Gaussians' summed, opacity-weighted density there (default the "
                        "run's export.mesh_level, 1.0 unless set; lower it for a model of faint Gaussians, raise "
                        "it to drop haze)")
    p.add_argument("--mesh-resolution", type=int, default=None,
                   help="grid cells along the object's longer side for the mesh (default the run's "
                        "export.mesh_resolution, 128 unless set; vertex count and time grow with its square and "
                        "cube)")
    p.add_argument("--mesh-texture", type=int, default=None,
                   help="texels along each side of the mesh's baked colour texture (default the run's "
                        "export.mesh_texture, 1024 unless set); 0 writes vertex colours instead (no UV atlas, "
                        "fewer vertices, a faster export)")
    p.add_argument("--out", default=None, help="output folder (default RUN/export, recorded in the manifest)")
    p.set_defaults(func=_export)

    p = sub.add_parser("showcase", help="a small GIF of a finished run: input image | driving video | 4D orbit")
    p.add_argument("run", help="run folder (its dynamic stage finished)")
    p.add_argument("--out", required=True, help="output .gif (or .mp4)")
    p.add_argument("--size", type=int, default=128, help="panel size in pixels")
    p.add_argument("--loops", type=int, default=2, help="plays of the driving video during the orbit's one turn")
    p.add_argument("--fps", type=int, default=8, help="frame rate")
    p.set_defaults(func=_showcase)

    p = sub.add_parser("experiment", help="run an experiment file (ablation variants x scenes) and tabulate")
    p.add_argument("file", help="experiments/*.yaml")
    p.add_argument("--out", default="runs/experiments", help="parent folder of the variant runs")
    p.add_argument("--gpus", type=int, default=0, help="run variants in parallel, one per GPU")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides applied to every variant (e.g. static.steps=2 for a smoke run; values hold '=')")
    p.set_defaults(func=_experiment)

    p = sub.add_parser("eval-cape", help="PCK@0.2 per MP-100 test category, PoseAnything's 1-shot protocol")
    p.add_argument("--mp100", required=True, metavar="ROOT",
                   help="MP-100 folder: ROOT/annotations/mp100_split{K}_test.json and ROOT/images/")
    p.add_argument("--split", type=int, required=True, help="MP-100 split K (1..5)")
    p.add_argument("--checkpoint", default=None,
                   help="official PoseAnything .pth, or a dynapose4d CAPE checkpoint (default: the shipped one)")
    p.add_argument("--support-copy", action="store_true", help="score the support-copy baseline instead")
    p.add_argument("--episodes", type=int, default=200, help="episodes per category (the benchmark: 200)")
    p.add_argument("--queries", type=int, default=15, help="queries per episode (the benchmark: 15)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--skeleton-base", choices=["auto", "0", "1"], default="auto",
                   help="skeleton index convention of the file (auto: detected; 0: read as-is, as PoseAnything does)")
    p.set_defaults(func=_eval_cape)

    p = sub.add_parser("config", help="show a preset's resolved config with each key's doc, or list the presets")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("show", help="print the resolved config as YAML, each key with its doc as a comment")
    c.add_argument("preset", nargs="?", default=None, help=CONFIG_HELP + " (default: the built-in defaults)")
    c.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help=SET_HELP)
    c.add_argument("--train-cape", action="store_true",
                   help="the settings of `train-cape` (presets cape/cpu, cape/gpu) instead of the pipeline's")
    c.set_defaults(func=_config_show)
    c = csub.add_parser("list", help="the preset names --config accepts, and their files")
    c.set_defaults(func=_config_list)
