"""The 4D Gaussians as an animated, textured triangle mesh (glTF 2.0 binary, one morph target per frame).

Extraction (from the canonical Gaussians, once):
  density  D(x) = sum_i o_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i)), each Gaussian cut at `CUTOFF` sigma,
           sampled on a grid of `resolution` cells along the longer side of the Gaussians' bounds (plus a margin);
  surface  the iso-surface D = `level` (marching cubes, scikit-image); faces wound so that normals point out of
           the object (towards lower density);
  colour   the density-weighted mean colour of the Gaussians, sum_i w_i(x) c_i / sum_i w_i(x) (SH degree 0,
           trilinear from the grid: `ColourField`), baked into a texture on xatlas's UV atlas (`export.texture`:
           TEXCOORD_0 and an embedded PNG as the material's baseColorTexture, no COLOR_0) or, with texture size 0,
           taken at each vertex (COLOR_0). The grid, not a direct sum over the Gaussians at each texel: the same
           field as the vertex colours, ~0.3 s for 600k texels.
The level is absolute, as in DreamGaussian's mesh export (one Gaussian of opacity 1 reaches it at its centre):
where the object is opaque the Gaussians overlap and the density is well above it. Parts made of faint Gaussians
only (opacity sums under `level`) are not in the mesh.

Animation: every vertex is moved by the deformation field like a Gaussian centre at the same place (the field
depends on the position only), frame f at tau = f / (T - 1). The base mesh is frame 0; frames 1..T-1 are morph
targets (POSITION and NORMAL offsets from frame 0; the atlas's vertices split along seams take their surface
vertex's frames and normals), played by a "weights" animation sampled at t = f / fps
(LINEAR: between two frames the vertices move on a straight line). Blender's glTF importer makes them shape keys
with an animated value each; three.js and other glTF viewers play them as morph targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynapose4d.core.rotations import quat_to_matrix
from dynapose4d.deform import Deformation
from dynapose4d.export.gltf import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, FLOAT, UINT, GlbBuilder
from dynapose4d.export.texture import Texture
from dynapose4d.gaussians import GaussianModel

MESH_RESOLUTION = 128  # grid cells along the longer side of the object's bounds (vertex count grows with its square)
DENSITY_LEVEL = 1.0  # the iso-surface's density (a sum of opacity-weighted Gaussians)
CUTOFF = 3.0  # each Gaussian contributes out to this many standard deviations (along its longest axis)
_PAD_MAX = 32  # cells of padding around the grid: Gaussians whose cube fits in it skip the bounds checks
_CELLS_PER_CHUNK = 2_000_000  # Gaussians x footprint cells evaluated at once (~150 bytes each: ~300 MB)


@dataclass
class ColourField:
    """The density-weighted mean colour of the Gaussians, sum_i w_i(x) c_i / sum_i w_i(x), trilinear from its
    sums on a grid: density [X, Y, Z] and colour_sum [X, Y, Z, 3] (`density_grid`) at origin + step * (i, j, k)."""

    density: np.ndarray
    colour_sum: np.ndarray
    origin: np.ndarray
    step: float

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Colours [P, 3] in [0, 1] at points [P, 3] (the Gaussians' frame; clamped to the grid)."""
        from scipy.ndimage import map_coordinates

        at = ((np.asarray(points, np.float64) - self.origin) / self.step).T  # [3, P] grid coordinates
        w = map_coordinates(self.density, at, order=1, mode="nearest")  # [P]
        c = np.stack([map_coordinates(self.colour_sum[..., k], at, order=1, mode="nearest") for k in range(3)], -1)
        return np.clip(c / np.maximum(w, 1e-12)[:, None], 0.0, 1.0)


@dataclass
class Mesh:
    """A triangle mesh: vertices [V, 3], faces [F, 3] (int, counter-clockwise seen from outside), colours
    [V, 3] in [0, 1] (as the Gaussians' colours: the picture's sRGB-encoded values), and the colour field they
    were sampled from (for a texture)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    field: ColourField


def density_grid(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                 colors: torch.Tensor, origin: torch.Tensor, step: float, shape: tuple[int, int, int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Density [X, Y, Z] and density-weighted colour sums [X, Y, Z, 3] on the grid of points origin + step * (i,
    j, k), of activated Gaussians: means [N, 3], quats [N, 4] (w, x, y, z, any norm), scales [N, 3] (standard
    deviations), opacities [N], colors [N, 3]. Each Gaussian is evaluated on the cells of the cube around its
    nearest cell that holds its `CUTOFF`-sigma ellipsoid, its squared Mahalanobis distance at cell offset o being
    q(o) = q0 + 2 (A d0).o + o^T A o with A = R S^-2 R^T and d0 the nearest cell's offset from the mean: two
    matrix products per batch of Gaussians of similar size."""
    X, Y, Z = shape
    R = quat_to_matrix(quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12))  # [N, 3, 3]
    A = R @ torch.diag_embed(scales.pow(-2)) @ R.transpose(-1, -2)  # [N, 3, 3] inverse covariances
    a6 = torch.stack([A[:, 0, 0], A[:, 1, 1], A[:, 2, 2], A[:, 0, 1], A[:, 0, 2], A[:, 1, 2]], -1)  # [N, 6]
    centre = torch.round((means - origin) / step).long()  # [N, 3] nearest cell
    d0 = origin + centre.float() * step - means  # [N, 3]
    Ad0 = torch.einsum("nij,nj->ni", A, d0)  # [N, 3]
    q0 = (d0 * Ad0).sum(-1)  # [N]
    radius = CUTOFF * scales.max(dim=-1).values  # [N] the ellipsoid lies within this of the mean
    half = torch.ceil(radius / step + 0.5).long().clamp(max=max(shape))  # [N] cube half-width, from the nearest cell
    order = torch.argsort(half)  # batches of similar sizes
    # accumulate on the grid padded by `pad` cells, so that cubes that fit need no bounds checks; cropped at the end
    pad = min(int(half.max()), _PAD_MAX)
    dims = torch.tensor([X + 2 * pad, Y + 2 * pad, Z + 2 * pad])
    stride = torch.tensor([int(dims[1] * dims[2]), int(dims[2]), 1])
    density = torch.zeros(int(dims.prod()), dtype=torch.float32)
    colour = torch.zeros(int(dims.prod()), 3, dtype=torch.float32)
    centre = centre + pad  # [N, 3] in padded cells
    fits = ((centre - half[:, None]) >= 0).all(-1) & ((centre + half[:, None]) < dims).all(-1)  # [N]
    start = 0
    while start < len(order):
        n = max(1, _CELLS_PER_CHUNK // (2 * int(half[order[start]]) + 1) ** 3)
        while True:  # sizes grow along `order`: the batch's last one sets its cube
            idx = order[start:start + n]
            k = int(half[idx[-1]])
            if n == 1 or len(idx) * (2 * k + 1) ** 3 <= _CELLS_PER_CHUNK:
                break
            n //= 2
        start += len(idx)
        r = torch.arange(-k, k + 1)
        cube = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)  # [P, 3] cell offsets
        o = cube.float() * step  # [P, 3]
        o2 = torch.stack([o[:, 0] ** 2, o[:, 1] ** 2, o[:, 2] ** 2, 2 * o[:, 0] * o[:, 1], 2 * o[:, 0] * o[:, 2],
                          2 * o[:, 1] * o[:, 2]], -1)  # [P, 6]
        q = q0[idx, None] + 2 * Ad0[idx] @ o.T + a6[idx] @ o2.T  # [n, P]
        w = torch.where(q <= CUTOFF ** 2, opacities[idx, None] * torch.exp(-0.5 * q), 0.0)  # [n, P]
        flat = (centre[idx] * stride).sum(-1)[:, None] + (cube * stride).sum(-1)[None]  # [n, P]
        out = ~fits[idx]
        if out.any():  # cubes reaching past the padded grid (very large Gaussians): drop the cells outside
            cells = centre[idx[out], None, :] + cube[None]  # [m, P, 3]
            w[out] = torch.where(((cells >= 0) & (cells < dims)).all(-1), w[out], 0.0)
            flat[out] = (cells.clamp_min(0).minimum(dims - 1) * stride).sum(-1)
        density.index_add_(0, flat.reshape(-1), w.reshape(-1))
        colour.index_add_(0, flat.reshape(-1), (w[..., None] * colors[idx, None, :]).reshape(-1, 3))
    inner = (slice(pad, pad + X), slice(pad, pad + Y), slice(pad, pad + Z))
    return (density.reshape(*dims.tolist())[inner].contiguous(),
            colour.reshape(*dims.tolist(), 3)[inner].contiguous())


def extract_mesh(canonical: GaussianModel, resolution: int = MESH_RESOLUTION, level: float = DENSITY_LEVEL
                 ) -> Mesh:
    """The iso-surface of the Gaussians' density at `level`, with its colour field and the field's colour at each
    vertex (module docstring).
    Raises ValueError when the density never reaches `level` (nothing opaque enough to mesh)."""
    from skimage.measure import marching_cubes

    with torch.no_grad():
        g = {k: v.detach().float().cpu() for k, v in canonical.activated().items()}
    keep = g["opacities"] > 1e-3  # [N] invisible Gaussians add nothing
    g = {k: v[keep] for k, v in g.items()}
    if len(g["means"]) == 0:
        raise ValueError("no visible Gaussians to mesh")
    reach = CUTOFF * g["scales"].max(dim=-1).values[:, None]  # [N, 1]
    lo = (g["means"] - reach).min(0).values
    hi = (g["means"] + reach).max(0).values
    step = float((hi - lo).max()) / resolution
    lo = lo - step  # one empty cell around everything: closed surfaces
    shape = tuple(int(v) for v in torch.ceil((hi - lo) / step).long() + 2)
    density, colour_sum = density_grid(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], lo, step,
                                       shape)
    dens = density.numpy()
    if not (dens.max() > level):
        raise ValueError(f"the Gaussians' density peaks at {dens.max():.3g}, under the surface level {level:g}")
    verts, faces, _, _ = marching_cubes(dens, level=level)  # grid coordinates
    faces = faces[:, [0, 2, 1]]  # scikit-image winds them clockwise seen from the lower values (outside)
    field = ColourField(density=dens, colour_sum=colour_sum.numpy(), origin=lo.numpy().astype(np.float64),
                        step=step)
    vertices = lo.numpy()[None].astype(np.float64) + verts.astype(np.float64) * step
    return Mesh(vertices=vertices, faces=faces.astype(np.int64), colors=field(vertices).astype(np.float32),
                field=field)


def animate_vertices(vertices: np.ndarray, phi: Deformation | None, num_frames: int, chunk: int = 65536
                     ) -> np.ndarray:
    """Vertices [V, 3] moved by the deformation at every frame -> [T, V, 3] (frame f at tau = f / (T - 1));
    `phi=None` holds them still."""
    v = torch.as_tensor(vertices, dtype=torch.float32)  # [V, 3]
    T = num_frames
    if phi is None:
        return np.repeat(vertices[None], T, axis=0)
    taus = torch.arange(T, dtype=torch.float32) / max(T - 1, 1)  # [T]
    out = []
    with torch.no_grad():
        for s in range(0, len(v), chunk):
            p = v[s:s + chunk]
            scales = torch.full_like(p, math.log(0.01))  # the field moves centres by position alone
            quats = torch.zeros(len(p), 4)
            quats[:, 0] = 1.0
            out.append(phi(p, scales, quats, taus)["means"])  # [T, v, 3]
    return torch.cat(out, dim=1).double().numpy()


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals [..., V, 3] of vertices [..., V, 3] (one mesh or a sequence of its frames): the area-weighted
    sum of the adjacent faces' normals."""
    V = vertices.shape[-2]
    v = vertices.reshape(-1, V, 3)  # [S, V, 3]
    a, b, c = (v[:, faces[:, i]] for i in range(3))  # [S, F, 3]
    fn = np.cross(b - a, c - a).reshape(-1, 3)  # [S F, 3], length 2 x area
    owner = (faces[None] + (np.arange(len(v)) * V)[:, None, None]).reshape(-1, 3)  # [S F, 3] flat vertex ids
    n = np.stack([sum(np.bincount(owner[:, i], weights=fn[:, k], minlength=len(v) * V) for i in range(3))
                  for k in range(3)], -1)  # [S V, 3]
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return n.reshape(vertices.shape)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (the sRGB transfer function, IEC 61966-2-1)."""
    c = np.clip(np.asarray(c, np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def write_mesh_glb(path: str | Path, frames: np.ndarray, faces: np.ndarray, colors: np.ndarray | None, fps: float,
                   extras: dict[str, Any] | None = None, texture: Texture | None = None) -> Path:
    """glTF 2.0 binary of a mesh whose vertices move: frames [T, V, 3], faces [F, 3]; frame 0 is the mesh, frames
    1..T-1 morph targets animated at t = f / fps (module docstring). Coloured by `texture` (its atlas vertices
    take their frames and normals from their surface vertices: the same geometry, normals smooth across seams)
    or, without one, by colors [V, 3] (sRGB-encoded, as the pictures; stored linear, as glTF's COLOR_0 is)."""
    frames = np.asarray(frames, np.float64)
    normals = vertex_normals(frames, faces)  # [T, V, 3] of the welded surface
    if texture is not None:
        frames, normals, faces = frames[:, texture.vmap], normals[:, texture.vmap], texture.faces  # [T, V', 3]
    elif colors is None:
        raise ValueError("write_mesh_glb: give colors or a texture")
    T = frames.shape[0]
    b = GlbBuilder()
    g, gltf = b.g, b.gltf
    attrs = g.Attributes(POSITION=b.accessor(frames[0], FLOAT, "VEC3", ARRAY_BUFFER, minmax=True),
                         NORMAL=b.accessor(normals[0], FLOAT, "VEC3", ARRAY_BUFFER))
    pbr = g.PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0)
    if texture is not None:  # no COLOR_0: glTF would multiply it into the texture's colour
        attrs.TEXCOORD_0 = b.accessor(texture.uvs, FLOAT, "VEC2", ARRAY_BUFFER)
        gltf.images.append(g.Image(name="base_colour", mimeType="image/png", bufferView=b.view(texture.png())))
        gltf.samplers.append(g.Sampler(magFilter=g.LINEAR, minFilter=g.LINEAR_MIPMAP_LINEAR, wrapS=g.CLAMP_TO_EDGE,
                                       wrapT=g.CLAMP_TO_EDGE))
        gltf.textures.append(g.Texture(sampler=0, source=0))
        pbr.baseColorTexture = g.TextureInfo(index=0, texCoord=0)
        material = "baked_colour"
    else:
        attrs.COLOR_0 = b.accessor(srgb_to_linear(colors), FLOAT, "VEC3", ARRAY_BUFFER)
        material = "vertex_colour"
    targets = [{"POSITION": b.accessor(frames[f] - frames[0], FLOAT, "VEC3", ARRAY_BUFFER, minmax=True),
                "NORMAL": b.accessor(normals[f] - normals[0], FLOAT, "VEC3", ARRAY_BUFFER)} for f in range(1, T)]
    indices = b.accessor(np.asarray(faces, np.uint32).reshape(-1), UINT, "SCALAR", ELEMENT_ARRAY_BUFFER)
    gltf.materials.append(g.Material(name=material, doubleSided=True, pbrMetallicRoughness=pbr))
    names = [f"frame_{f:03d}" for f in range(1, T)]
    gltf.meshes.append(g.Mesh(name="object", primitives=[g.Primitive(attributes=attrs, indices=indices, material=0,
                                                                     targets=targets or None)],
                              weights=[0.0] * (T - 1) or None, extras={"targetNames": names} if names else {}))
    gltf.nodes.append(g.Node(name="object", mesh=0))
    if T > 1:
        times = b.accessor(np.arange(T, dtype=np.float64) / fps, FLOAT, "SCALAR", minmax=True)
        weights = np.zeros((T, T - 1))
        weights[np.arange(1, T), np.arange(T - 1)] = 1.0  # frame f: target f - 1 fully on, the others off
        anim = g.Animation(name="frames", samplers=[g.AnimationSampler(
            input=times, output=b.accessor(weights.reshape(-1), FLOAT, "SCALAR"), interpolation="LINEAR")])
        anim.channels.append(g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="weights")))
        gltf.animations.append(anim)
    gltf.scenes.append(g.Scene(name="dynapose4d", nodes=[0], extras=extras or {}))
    gltf.scene = 0
    return b.save(path)
