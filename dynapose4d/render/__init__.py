"""`rasterize()`: 3D Gaussian splatting with gsplat's semantics (a contract; cameras as in docs/cameras.md).

CUDA tensors go to `gsplat.rasterization(rasterize_mode="classic", packed=False)`; CPU tensors to the
project's own backend (projection in torch, compositing in the compiled CPU kernel or pure torch).
"""

from dynapose4d.render.rasterize import rasterize

__all__ = ["rasterize"]
