"""The compiled CPU compositor (csrc/rasterize_cpu.cpp): build on first use, autograd wrapper.

The extension is built with `torch.utils.cpp_extension.load` into `$TORCH_EXTENSIONS_DIR/dynapose4d` (or
`~/.cache/dynapose4d/torch_extensions`; a folder per Python, torch and source version), with -O3 and OpenMP
(no -march=native, no fast-math: the numbers must follow gsplat's). If it cannot be built (no compiler, no
ninja), `load_extension()` returns None after one warning and the renderer falls back to the pure-torch tile
compositor. `DYNAPOSE4D_NO_CPP_RASTERIZER=1` forces the fallback.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.autograd.function import once_differentiable

TILE_SIZE = 16
_SOURCE = Path(__file__).with_name("csrc") / "rasterize_cpu.cpp"
_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "ext": None, "error": None}


def _build_dir() -> Path:
    """One build folder per Python, torch and source text: checkouts of different versions of the kernel never
    rebuild each other's library (torch's own lock serialises builds of the same source)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    base = Path(root) / "dynapose4d" if root else Path.home() / ".cache" / "dynapose4d" / "torch_extensions"
    source = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__.replace('+', '_')}_{source}"
    return base / tag


def load_extension(verbose: bool = False):
    """The compiled ops namespace `torch.ops.dynapose4d_raster` (built on the first call, cached on disk).

    None if it cannot be built (one RuntimeWarning says why).
    """
    if os.environ.get("DYNAPOSE4D_NO_CPP_RASTERIZER", "") not in ("", "0"):
        return None
    with _lock:
        if _state["tried"]:
            return _state["ext"]
        _state["tried"] = True
        try:
            from torch.utils import cpp_extension

            bindir = os.path.dirname(sys.executable)  # the venv's ninja
            path = os.environ.get("PATH", "")
            if bindir not in path.split(os.pathsep):
                os.environ["PATH"] = bindir + os.pathsep + path
            build_dir = _build_dir()
            build_dir.mkdir(parents=True, exist_ok=True)
            cpp_extension.load(
                name="dynapose4d_raster",
                sources=[str(_SOURCE)],
                extra_cflags=["-O3", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,  # registers torch.ops.dynapose4d_raster.*
                verbose=verbose,
            )
            _state["ext"] = torch.ops.dynapose4d_raster
        except Exception as exc:  # no compiler / ninja / headers: fall back to pure torch
            _state["error"] = exc
            warnings.warn(
                f"could not build the CPU rasterizer extension ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); rendering with the pure-torch "
                "compositor, about 20x slower (a C++ compiler and a writable TORCH_EXTENSIONS_DIR build it)",
                RuntimeWarning,
                stacklevel=2,
            )
            _state["ext"] = None
        return _state["ext"]


def extension_available() -> bool:
    """True when the compiled compositor loads (building it if needed)."""
    return load_extension() is not None


class _CompositeCpp(torch.autograd.Function):
    """Compositing of projected Gaussians in the C++ kernel; hand-written backward."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, radii, depths, width, height):
        ext = load_extension()
        offsets, ids = ext.bin_gaussians(means2d.detach(), radii, depths.detach(), width, height, TILE_SIZE)
        render, alphas, trans, last = ext.composite_fwd(
            means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height, TILE_SIZE
        )
        ctx.save_for_backward(means2d, conics, colors, opacities, backgrounds, offsets, ids, trans, last)
        ctx.size = (width, height)
        ctx.mark_non_differentiable(trans)
        return render, alphas, trans

    @staticmethod
    @once_differentiable
    def backward(ctx, v_render, v_alphas, _v_trans):
        means2d, conics, colors, opacities, backgrounds, offsets, ids, trans, last = ctx.saved_tensors
        width, height = ctx.size
        if v_render is None:
            v_render = torch.zeros(trans.shape + (colors.shape[-1],), dtype=trans.dtype)
        if v_alphas is None:
            v_alphas = torch.zeros(trans.shape + (1,), dtype=trans.dtype)
        v_render = v_render.contiguous()
        v_alphas = v_alphas.contiguous()
        ext = load_extension()
        v_means2d, v_conics, v_colors, v_opacities = ext.composite_bwd(
            means2d, conics, colors, opacities, backgrounds, offsets, ids, width, height, TILE_SIZE,
            trans, last, v_render, v_alphas,
        )
        v_bg = None
        if backgrounds is not None and ctx.needs_input_grad[4]:
            v_bg = (v_render * trans[..., None]).sum(dim=(1, 2))  # [C, D]
        return v_means2d, v_conics, v_colors, v_opacities, v_bg, None, None, None, None


def composite_cpp(
    means2d: torch.Tensor,  # [C, N, 2]
    conics: torch.Tensor,  # [C, N, 3]
    colors: torch.Tensor,  # [C, N, D]
    opacities: torch.Tensor,  # [C, N]
    backgrounds: torch.Tensor | None,  # [C, D]
    radii: torch.Tensor,  # [C, N, 2] int32
    depths: torch.Tensor,  # [C, N]
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite C cameras in the compiled kernel: render [C, H, W, D] (background included), alphas [C, H, W, 1].

    Same numbers as gsplat's `rasterize_to_pixels` (classic, tile size 16); differentiable in means2d, conics,
    colors, opacities and backgrounds. float32 and float64.
    """
    dtype = means2d.dtype
    args = [t.contiguous() for t in (means2d, conics, colors.to(dtype), opacities.to(dtype))]
    bg = None if backgrounds is None else backgrounds.to(dtype).contiguous()
    render, alphas, _ = _CompositeCpp.apply(*args, bg, radii.to(torch.int32).contiguous(), depths,
                                            int(width), int(height))
    return render, alphas
