"""Scene specs: a scene folder (or picture) path, or `synthetic:<template>:<seed>[:<frames>[:<size>]]`, a
synthetic scene generated once into a cache folder (what `dynapose4d run` and experiment files accept)."""

from __future__ import annotations

import re
from pathlib import Path

from dynapose4d.core.errors import InputError
from dynapose4d.data.synthetic import TEMPLATES, write_scene

SYNTHETIC_PREFIX = "synthetic:"


def scene_name(spec: str) -> str:
    """A short folder-safe name of a scene spec ('synthetic:humanoid:0' -> 'humanoid-0')."""
    if spec.startswith(SYNTHETIC_PREFIX):
        return "-".join(spec[len(SYNTHETIC_PREFIX):].split(":"))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec).name or "scene")


def resolve_scene(spec: str, cache: str | Path = "runs/scenes", base: Path | None = None) -> Path:
    """A scene folder for `spec`: a path (relative to `base` if given and it exists there), or
    'synthetic:<template>:<seed>[:<frames>[:<size>]]', generated once into `cache`/<template>-<seed>[...]."""
    if not spec.startswith(SYNTHETIC_PREFIX):
        p = Path(spec)
        if not p.is_absolute() and base is not None and (base / p).exists():
            return base / p
        return p
    parts = spec[len(SYNTHETIC_PREFIX):].split(":")
    try:
        template, seed = parts[0], int(parts[1]) if len(parts) > 1 else 0
        frames = int(parts[2]) if len(parts) > 2 else 16
        size = int(parts[3]) if len(parts) > 3 else 128
    except ValueError:
        raise InputError(f"scene {spec!r}: expected synthetic:<template>:<seed>[:<frames>[:<size>]]") from None
    if template not in TEMPLATES or len(parts) > 4:
        raise InputError(f"scene {spec!r}: expected synthetic:<template>:<seed>[:<frames>[:<size>]] with a "
                         f"template of {', '.join(TEMPLATES)}")
    out = Path(cache) / scene_name(spec)
    if not (out / "gt" / "meta.json").is_file():
        write_scene(template, out, seed=seed, num_frames=frames, size=size)
    return out
