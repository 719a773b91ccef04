"""A baked base-colour texture for the exported mesh: a UV atlas (xatlas) and an image of the colour field.

Atlas: xatlas cuts the surface into charts, flattens each and packs them into the unit square, `TEXTURE_PADDING`
texels apart; it splits the vertices along the charts' seams, so the textured mesh has its own vertices, each one
of a surface vertex (`Texture.vmap`), and the same faces in the same order and winding.

Bake: texel (row r, column c) of an S x S image has its centre at uv = ((c + 1/2) / S, (r + 1/2) / S), glTF's
convention (u to the right, v down from the image's first row: no flip). Every texel whose centre lies in a
triangle's UV image, or within `_REACH` texels of it (the ring that bilinear filtering reads at a chart's edge),
takes the colour of the 3D point with the same barycentric coordinates in the canonical mesh; where several
triangles claim a texel, the one it lies deepest in wins. Outside its triangle the point is extrapolated on the
triangle's plane (coordinates down to -`_EXTRAPOLATE`): bilinear filtering near a chart's edge then blends values
on a straight line through the surface point (with the point clamped onto the triangle instead, a stripe pattern
of 13 texels a period read up to 0.14 off at chart edges; extrapolated, 0.015). Texels up to
`TEXTURE_PADDING` from a chart copy its nearest texel (dilation), so that bilinear filtering and the first mipmap
levels do not mix in the background; the rest of the image is the charts' mean colour.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

TEXTURE_SIZE = 1024  # texels along each side of the baked base-colour image (0: vertex colours, no texture); about
# 20 texels per triangle on the demo's 35k faces, finer than the density grid the colours come from
TEXTURE_PADDING = 4  # texels between charts in the atlas, and texels of dilation around each chart in the image
_REACH = 1.0  # texels outside a triangle's UV image that still take its colour (extrapolated)
_EXTRAPOLATE = 1.0  # the least barycentric coordinate of such a texel's point (slivers in UV space reach far)
_CANDIDATES_PER_CHUNK = 4_000_000  # (face, texel) pairs tested at once (~100 bytes each)

ColourFn = Callable[[np.ndarray], np.ndarray]  # points [P, 3] -> colours [P, 3] in [0, 1]


@dataclass
class Texture:
    """A mesh's UV atlas and baked image: vmap [V'] (each atlas vertex's vertex in the mesh), faces [F, 3] (into
    the atlas vertices; the mesh's faces, same order and winding), uvs [V', 2] in [0, 1] (glTF's: v down from
    the image's first row), image [S, S, 3] uint8 (sRGB-encoded, as the Gaussians' colours)."""

    vmap: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    image: np.ndarray

    def png(self) -> bytes:
        """The image as PNG bytes."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.image, "RGB").save(buf, format="PNG")
        return buf.getvalue()


def uv_atlas(vertices: np.ndarray, faces: np.ndarray, size: int, padding: int = TEXTURE_PADDING
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(vmap [V'], faces [F, 3], uvs [V', 2] in [0, 1], charted [F] bool) of xatlas's atlas of the mesh vertices
    [V, 3], faces [F, 3], packed for an image of about `size` texels a side, xatlas's `padding` around each chart
    (in its own texels, on every side: charts 2 x `padding` of them apart; its atlas comes out up to ~1.8x the size
    asked for, so in the image they stay >= `padding` apart: 5 empty texels at 256, 7 at 1024 on a test blob,
    measured by tests/test_export_mesh.py); `charted` False for the faces it left out (`_place_unpacked`)."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = int(padding)
    pack.bilinear = True  # leave room for bilinear filtering between charts
    atlas.generate(xatlas.ChartOptions(), pack)
    vmap, new_faces, uvs = atlas[0]
    if atlas.atlas_count != 1:
        raise RuntimeError(f"xatlas packed the mesh into {atlas.atlas_count} images, expected one")
    vmap, new_faces = vmap.astype(np.int64), new_faces.astype(np.int64)
    uvs, charted = _place_unpacked(vmap, new_faces, np.clip(uvs.astype(np.float64), 0.0, 1.0), len(vertices))
    return vmap, new_faces, uvs, charted


def _place_unpacked(vmap: np.ndarray, faces: np.ndarray, uvs: np.ndarray, num_vertices: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(uvs [V', 2], charted [F]): xatlas leaves faces of near-zero area in 3D out of every chart, at uv (0, 0)
    (another chart's colour); their vertices take the uv of a charted copy of the same surface vertex (the right
    colour at the corners of a face too small to see), and `charted` marks the faces that are baked."""
    p = uvs[faces]  # [F, 3, 2]
    charted_face = np.abs(_cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])) > 1e-14  # [F]
    charted = np.zeros(len(uvs), bool)  # [V'] vertices of a charted face
    charted[faces[charted_face]] = True
    anchor = np.full((num_vertices, 2), np.nan)  # [V, 2] the uv of a charted copy of each surface vertex
    anchor[vmap[charted]] = uvs[charted]
    out = uvs.copy()
    move = ~charted & ~np.isnan(anchor[vmap, 0])
    out[move] = anchor[vmap[move]]
    return out, charted_face


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int, reach: float = _REACH
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The texels of a size x size image covered by the triangles faces [F, 3] of uvs [V, 2] (or within `reach`
    texels of one): (flat texel index r * size + c [K], face [K], barycentric coordinates [K, 3], none under
    -`_EXTRAPOLATE`), one per texel, from the triangle it lies deepest in (module docstring)."""
    p = uvs[faces] * size - 0.5  # [F, 3, 2] corners in texel units: texel (r, c) has its centre at (c, r)
    e0, e1, e2 = (p[:, 2] - p[:, 1], p[:, 0] - p[:, 2], p[:, 1] - p[:, 0])  # [F, 2] edges opposite corners 0, 1, 2
    area2 = e2[:, 0] * (-e1[:, 1]) - e2[:, 1] * (-e1[:, 0])  # [F] twice the signed area
    lengths = np.stack([np.linalg.norm(e, axis=-1) for e in (e0, e1, e2)], -1)  # [F, 3]
    ok = np.abs(area2) > 1e-12
    lo = np.clip(np.floor(p.min(1) - reach), 0, size - 1).astype(np.int64)  # [F, 2] texel box (x, y)
    hi = np.clip(np.ceil(p.max(1) + reach), 0, size - 1).astype(np.int64)
    wh = np.where(ok[:, None], hi - lo + 1, 0)  # [F, 2]
    count = wh[:, 0] * wh[:, 1]  # [F] candidate texels per face
    texel, face, bary, depth = [], [], [], []
    start, ends = 0, np.cumsum(count)
    while start < len(faces):
        stop = max(int(np.searchsorted(ends, ends[start] - count[start] + _CANDIDATES_PER_CHUNK, "right")),
                   start + 1)
        f = np.repeat(np.arange(start, stop), count[start:stop])  # [K]
        local = np.arange(len(f)) - np.repeat(ends[start:stop] - count[start:stop] - (ends[start] - count[start]),
                                              count[start:stop])  # [K] index in the face's box
        x = lo[f, 0] + local % wh[f, 0]
        y = lo[f, 1] + local // wh[f, 0]
        q = np.stack([x, y], -1).astype(np.float64)  # [K, 2] texel centres
        b = np.stack([_cross(p[f, (i + 1) % 3] - q, p[f, (i + 2) % 3] - q) for i in range(3)], -1)  # [K, 3]
        b /= area2[f, None]  # barycentric coordinates (sum 1)
        d = (b * np.abs(area2[f, None]) / np.maximum(lengths[f], 1e-12)).min(-1)  # [K] texels inside (<0: out)
        keep = d >= -reach
        texel.append(y[keep] * size + x[keep])
        face.append(f[keep])
        bary.append(b[keep])
        depth.append(d[keep])
        start = stop
    texel_a, face_a, bary_a, depth_a = (np.concatenate(a) for a in (texel, face, bary, depth))
    order = np.lexsort((depth_a, texel_a))  # by texel, deepest last
    last = np.ones(len(order), bool)
    last[:-1] = texel_a[order][1:] != texel_a[order][:-1]
    pick = order[last]
    b = np.clip(bary_a[pick], -_EXTRAPOLATE, None)  # outside: on the triangle's plane, bounded for slivers
    return texel_a[pick], face_a[pick], b / b.sum(-1, keepdims=True)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z of the 2D cross product of a [..., 2] and b [..., 2]."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def dilate(image: np.ndarray, covered: np.ndarray, texels: int = TEXTURE_PADDING) -> np.ndarray:
    """image [S, S, C] with the uncovered texels (covered [S, S] False) up to `texels` away from a covered one set
    to the nearest covered texel's value, and the rest to the covered texels' mean."""
    from scipy.ndimage import distance_transform_edt

    if not covered.any():
        return image
    dist, (rows, cols) = distance_transform_edt(~covered, return_indices=True)  # [S, S], [S, S] x 2
    return np.where((dist <= texels)[..., None], image[rows, cols], image[covered].mean(0))  # covered: dist 0


def bake_texture(vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray, colour: ColourFn, size: int
                 ) -> np.ndarray:
    """Image [size, size, 3] uint8 of colour(x) at the 3D point x of every texel's triangle (vertices [V, 3] of
    the atlas, faces [F, 3], uvs [V, 2]), dilated (module docstring)."""
    texel, face, bary = rasterize_uv(uvs, faces, size)  # [K], [K], [K, 3]
    points = np.einsum("kc,kcj->kj", bary, vertices[faces[face]])  # [K, 3]
    image = np.zeros((size * size, 3))
    covered = np.zeros(size * size, bool)
    image[texel] = np.clip(colour(points), 0.0, 1.0)
    covered[texel] = True
    image = dilate(image.reshape(size, size, 3), covered.reshape(size, size))
    return np.round(image * 255.0).astype(np.uint8)


def texture_mesh(vertices: np.ndarray, faces: np.ndarray, colour: ColourFn, size: int = TEXTURE_SIZE) -> Texture:
    """The atlas of the mesh vertices [V, 3], faces [F, 3] and its image of `colour` (size x size texels)."""
    vmap, new_faces, uvs, charted = uv_atlas(vertices, faces, size)
    image = bake_texture(np.asarray(vertices, np.float64)[vmap], new_faces[charted], uvs, colour, size)
    return Texture(vmap=vmap, faces=new_faces, uvs=uvs, image=image)
