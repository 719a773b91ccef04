"""3D Gaussians: parameters, activations, PLY in/out."""

from dynapose4d.gaussians.model import SH_C0, GaussianModel, rgb_to_sh, sh_to_rgb
from dynapose4d.gaussians.ply import load_ply, save_ply

__all__ = ["GaussianModel", "SH_C0", "rgb_to_sh", "sh_to_rgb", "load_ply", "save_ply"]
