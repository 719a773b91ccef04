"""A run's animated result as files for the tools people use (`dynapose4d export`, and the end of `run`).

RUN/export/ (or another folder):
  splats/frame_000.ply ...  the 4D Gaussians, one standard 3DGS PLY per frame (`export.ply`, gsplat's writer);
                            with --format ply_compressed / splat: frame_000.compressed.ply / frame_000.splat
  skeleton.glb              the 3D keypoint tracks as an animated joint hierarchy + skinned bone lines (glTF 2.0)
  skeleton.bvh              the same motion as BVH (`export.skeleton`)
  mesh.glb                  the Gaussians' surface as a triangle mesh with a UV atlas and a baked base-colour
                            texture (embedded PNG; vertex colours with mesh_texture=0), one morph target per frame
                            (`export.mesh`, `export.texture`)
  videos/                   copies of the dynamic stage's videos (reference, orbit, keypoints)
  export.json               what was written: files, up axis per output, frames, fps, source run
A run whose dynamic stage has not run (`fit-static`) exports its static Gaussians: the splats and the mesh as one
frame, and the static stage's orbit video; the skeleton files need the dynamic stage's 3D tracks.

Up axes (`export.axes`): by default each output follows its tools: the splat files are "-y" up (SuperSplat and
the viewers that follow the original 3DGS data roll splat files a half turn about z), the glb and bvh files "+y" up
(glTF is +Y up by specification; Blender's glTF and BVH importers convert +Y up files to its +Z up). An explicit
`up` applies to every output.

A component: reads RUN/dynamic/{deform.ckpt, keypoints.json, videos/} (or RUN/static/) and the scene's skeleton; no
Lightning.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import atomic_folder, write_json
from dynapose4d.deform import load_dynamic
from dynapose4d.export.axes import UP_CHOICES, rotate_points
from dynapose4d.export.mesh import DENSITY_LEVEL, MESH_RESOLUTION, animate_vertices, extract_mesh, write_mesh_glb
from dynapose4d.export.ply import SPLAT_FORMATS, export_splat_sequence, frame_name
from dynapose4d.export.skeleton import SkeletonTree, skeleton_tree, write_bvh, write_glb
from dynapose4d.export.texture import TEXTURE_SIZE, texture_mesh
from dynapose4d.gaussians import load_ply

FORMATS: tuple[str, ...] = (*SPLAT_FORMATS, "glb", "bvh", "mesh", "videos")
DEFAULT_FORMATS: tuple[str, ...] = ("ply", "glb", "bvh", "mesh", "videos")
EXPORT_FILE = "export.json"
DEFAULT_FPS = 8.0  # when the run's config gives no dynamic.video_fps
MESH_RESOLUTIONS = (8, 1024)  # the accepted range of mesh_resolution (grid cells)
TEXTURE_SIZES = (64, 8192)  # the accepted range of mesh_texture (texels), besides 0 (vertex colours)


@dataclass
class ExportConfig:
    """The run config's `export` section: what a run writes to RUN/export after the dynamic stage.
    `dynapose4d export RUN` starts from the run's section too; its options override it."""

    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))  # outputs: ply (one splat PLY per
    # frame), glb (skeleton), bvh, mesh, videos, and the other splat formats of `dynapose4d export --help`; [] = none
    mesh_level: float = DENSITY_LEVEL  # the mesh's surface: where the opacity-weighted Gaussian density equals this
    mesh_resolution: int = MESH_RESOLUTION  # marching-cubes cells along the object's longer side (8-1024)
    mesh_texture: int = TEXTURE_SIZE  # side of the mesh's baked colour texture in texels (64-8192); 0 = vertex
    # colours (no UV atlas: a smaller file, ~5 s less per export on the demo)


def export_settings_problem(cfg: ExportConfig) -> str | None:
    """What is wrong with an export section, in one line naming the key, or None."""
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad:
        return f"export.formats: unknown {bad}; choose from {list(FORMATS)}"
    if not (cfg.mesh_level > 0 and math.isfinite(cfg.mesh_level)):
        return f"export.mesh_level: {cfg.mesh_level}; must be a positive number"
    if not MESH_RESOLUTIONS[0] <= cfg.mesh_resolution <= MESH_RESOLUTIONS[1]:
        return f"export.mesh_resolution: {cfg.mesh_resolution}; must be between {MESH_RESOLUTIONS[0]} and " \
               f"{MESH_RESOLUTIONS[1]}"
    if cfg.mesh_texture != 0 and not TEXTURE_SIZES[0] <= cfg.mesh_texture <= TEXTURE_SIZES[1]:
        return f"export.mesh_texture: {cfg.mesh_texture}; must be 0 (vertex colours) or between " \
               f"{TEXTURE_SIZES[0]} and {TEXTURE_SIZES[1]} texels"
    return None


def default_up(fmt: str) -> str:
    """The up axis of an output when none is asked for: "-y" for splat files, "+y" for glb, bvh and mesh."""
    return "-y" if fmt in SPLAT_FORMATS else "+y"


def read_tracks(run_dir: str | Path) -> tuple[list[str], np.ndarray, list[tuple[int, int]]]:
    """(keypoint names, world tracks [T, N, 3], support skeleton bones) of a run.

    The tracks are RUN/dynamic/keypoints.json's "world"; the bones its "skeleton" when present, else the
    skeleton of the scene the run was made from (RUN/manifest.json "scene"/keypoints.json), else none."""
    run_dir = Path(run_dir)
    path = run_dir / "dynamic" / "keypoints.json"
    try:
        kp = json.loads(path.read_text())
        world = np.asarray(kp["world"], dtype=np.float64)
    except FileNotFoundError:
        raise InputError(f"{path}: no 3D keypoint tracks (run the dynamic stage first)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable keypoint tracks ({type(e).__name__}: {e})") from None
    if world.ndim != 3 or world.shape[-1] != 3 or world.shape[0] < 1 or world.shape[1] < 1:
        raise InputError(f"{path}: 'world' must be [T][N][3] with T, N >= 1, got shape {list(world.shape)}")
    skeleton = kp.get("skeleton")
    if skeleton is None:
        skeleton = _scene_skeleton(run_dir)
    return [str(n) for n in kp.get("names", [])], world, [(int(i), int(j)) for i, j in skeleton]


def _scene_skeleton(run_dir: Path) -> list[list[int]]:
    try:
        scene = json.loads((run_dir / "manifest.json").read_text()).get("scene")
        return json.loads((Path(scene) / "keypoints.json").read_text()).get("skeleton", [])
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def run_fps(run_dir: str | Path) -> float:
    """Frame rate of the run's videos (RUN/config.yaml dynamic.video_fps), else DEFAULT_FPS."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        return float(cfg.get("dynamic", {}).get("video_fps", DEFAULT_FPS))
    except (OSError, yaml.YAMLError, AttributeError, TypeError, ValueError):
        return DEFAULT_FPS


def _formats(formats: list[str] | tuple[str, ...] | None) -> list[str]:
    out: list[str] = []
    for f in formats or DEFAULT_FORMATS:
        f = "ply" if f == "ply-sequence" else f  # the former name of the PLY sequence
        names = DEFAULT_FORMATS if f == "all" else (f,)
        for n in names:
            if n not in FORMATS:
                raise InputError(f"--format {f}: choose from {['all', *FORMATS]}")
            if n not in out:
                out.append(n)
    return out


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, up: str | None = None,
               formats: list[str] | tuple[str, ...] | None = None, mesh_level: float | None = None,
               mesh_resolution: int | None = None, mesh_texture: int | None = None) -> dict[str, Any]:
    """Write the run's 4D result to `out_dir` (default RUN/export); returns what export.json records.

    `formats`: any of FORMATS (default DEFAULT_FORMATS; "all" means the default). `up`: "+y", "-y" or "+z"
    for every output, or None for each output's own default (`default_up`). `mesh_level` / `mesh_resolution`:
    the mesh's surface density and grid (None: `export.mesh`'s defaults); `mesh_texture`: its texture's size in
    texels, 0 for vertex colours (None: `export.texture.TEXTURE_SIZE`). Each output replaces its previous
    version in `out_dir` whole (written aside, then renamed); export.json lists every output present, and its
    "notes" say what was not written and why (a model too faint for a mesh at that level)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    if up is not None and up not in UP_CHOICES:
        raise InputError(f"--up {up}: choose from {list(UP_CHOICES)}")
    level = DENSITY_LEVEL if mesh_level is None else float(mesh_level)
    resolution = MESH_RESOLUTION if mesh_resolution is None else int(mesh_resolution)
    if not (level > 0 and math.isfinite(level)):
        raise InputError(f"--mesh-level {mesh_level}: must be a positive number")
    if not MESH_RESOLUTIONS[0] <= resolution <= MESH_RESOLUTIONS[1]:
        raise InputError(f"--mesh-resolution {mesh_resolution}: must be between {MESH_RESOLUTIONS[0]} and "
                         f"{MESH_RESOLUTIONS[1]}")
    texture_size = TEXTURE_SIZE if mesh_texture is None else int(mesh_texture)
    if texture_size != 0 and not TEXTURE_SIZES[0] <= texture_size <= TEXTURE_SIZES[1]:
        raise InputError(f"--mesh-texture {mesh_texture}: must be 0 (vertex colours) or between {TEXTURE_SIZES[0]} "
                         f"and {TEXTURE_SIZES[1]} texels")
    fmts = _formats(formats)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    static_only = _static_only(run_dir)
    notes: list[str] = []
    if static_only and formats is None:  # the default set, of a run whose dynamic stage has not run: what exists
        fmts = [f for f in fmts if f not in ("glb", "bvh")]
        notes.append("skeleton.glb and skeleton.bvh not written: the dynamic stage has not run (no 3D tracks); "
                     "the splats and the mesh are the static stage's, one frame")
    splat_fmts = [f for f in fmts if f in SPLAT_FORMATS]
    canonical = phi = None
    T = 1
    if splat_fmts or "mesh" in fmts:
        if static_only:
            canonical = load_ply(run_dir / "static" / "gaussians.ply")
        else:
            canonical, phi = load_dynamic(run_dir)  # InputError naming deform.ckpt when missing
            T = phi.num_frames
    names, world, skeleton = read_tracks(run_dir) if {"glb", "bvh"} & set(fmts) else ([], None, [])
    fps = run_fps(run_dir)
    old = _read_record(out_dir)
    record: dict[str, Any] = {"run": str(run_dir.resolve()), "fps": fps, "outputs": dict(old.get("outputs", {})),
                              "skipped": list(old.get("skipped", [])),  # formats tried and not written (notes)
                              "model": "static" if static_only else "dynamic"}  # what the splats and mesh show
    if notes:
        record["notes"] = notes
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out_dir}: cannot make the folder ({e.strerror or e})") from None
    stamp = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")

    for fmt in splat_fmts:
        axis = up or default_up(fmt)
        folder = "splats" if fmt == "ply" else f"splats_{fmt}"
        with atomic_folder(out_dir / folder) as tmp:
            files = export_splat_sequence(canonical, phi, T, tmp, up=axis, fmt=fmt)
        record["outputs"][fmt] = {"files": [f"{folder}/{p.name}" for p in files], "up": axis, "frames": T,
                                  "written": stamp}
    if world is not None:
        tree = skeleton_tree(names, skeleton, world.shape[1])
        for fmt in ("glb", "bvh"):
            if fmt not in fmts:
                continue
            axis = up or default_up(fmt)
            pos = rotate_points(world, axis)  # [T, N, 3]
            if fmt == "glb":
                write_glb(out_dir / "skeleton.glb", pos, tree, fps,
                          extras={"up": axis, "fps": fps, "names": names, "skeleton": [list(e) for e in skeleton]})
            else:
                write_bvh(out_dir / "skeleton.bvh", pos, tree, fps)
            record["outputs"][fmt] = {"files": [f"skeleton.{fmt}"], "up": axis, "frames": int(world.shape[0]),
                                      "joints": tree.names, "root": tree.names[tree.root], "written": stamp}
    if "mesh" in fmts:
        axis = up or default_up("mesh")
        try:
            mesh = extract_mesh(canonical, resolution, level)
        except ValueError as e:  # nothing dense enough to mesh: the other outputs stand
            (out_dir / "mesh.glb").unlink(missing_ok=True)
            record["outputs"].pop("mesh", None)
            record["skipped"] = sorted({*record.get("skipped", []), "mesh"})
            record.setdefault("notes", []).append(
                f"mesh.glb not written: {e} (`dynapose4d export {run_dir} --format mesh --mesh-level L` with a "
                "lower L makes one)")
        else:
            frames = rotate_points(animate_vertices(mesh.vertices, phi, T), axis)  # [T, V, 3]
            texture = texture_mesh(mesh.vertices, mesh.faces, mesh.field, texture_size) if texture_size else None
            write_mesh_glb(out_dir / "mesh.glb", frames, mesh.faces, mesh.colors, fps, extras={"up": axis, "fps": fps},
                           texture=texture)
            record["skipped"] = [f for f in record.get("skipped", []) if f != "mesh"]
            record["outputs"]["mesh"] = {"files": ["mesh.glb"], "up": axis, "frames": int(frames.shape[0]),
                                         "vertices": int(len(texture.vmap) if texture else frames.shape[1]),
                                         "surface_vertices": int(frames.shape[1]), "faces": int(len(mesh.faces)),
                                         "texture": texture_size, "level": level, "resolution": resolution,
                                         "written": stamp}
    if "videos" in fmts:
        src = run_dir / "static" if static_only else run_dir / "dynamic" / "videos"
        videos = sorted(p for p in src.glob("*") if p.suffix in (".mp4", ".gif")) if src.is_dir() else []
        with atomic_folder(out_dir / "videos") as tmp:
            for p in videos:
                shutil.copyfile(p, tmp / p.name)
        record["outputs"]["videos"] = {"files": [f"videos/{p.name}" for p in videos], "written": stamp}
    write_json(out_dir / EXPORT_FILE, record)
    return record


def _static_only(run_dir: Path) -> bool:
    """Whether the run has the static stage's Gaussians but no dynamic-stage model: then the splats and the mesh
    are exported from RUN/static/gaussians.ply as one frame (a single-image 3D asset)."""
    return not (run_dir / "dynamic" / "deform.ckpt").is_file() and (run_dir / "static" / "gaussians.ply").is_file()


def export_files(record: dict[str, Any]) -> list[str]:
    """Every file an export record lists (relative to its folder), export.json included."""
    return [EXPORT_FILE] + [f for out in record.get("outputs", {}).values() for f in out.get("files", [])]


def _read_record(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / EXPORT_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = [
    "DEFAULT_FORMATS", "FORMATS", "SkeletonTree", "UP_CHOICES", "default_up", "export_files", "export_run",
    "frame_name", "read_tracks", "run_fps", "skeleton_tree", "write_bvh", "write_glb",
]
