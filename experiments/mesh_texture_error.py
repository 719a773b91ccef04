"""Colour error at 100 000 random surface points of the demo mesh: vertex colours (interpolated) vs the baked
texture, against the colour field (`ColourField`).  PYTHONPATH=. python experiments/mesh_texture_error.py"""

import sys

import numpy as np

from dynapose4d.deform import load_dynamic
from dynapose4d.export.mesh import extract_mesh
from dynapose4d.export.texture import texture_mesh

sys.path.insert(0, "tests")
from test_export_mesh import _surface_samples, _texture_lookup  # noqa: E402

c, phi = load_dynamic(sys.argv[1] if len(sys.argv) > 1 else "runs/demo/run")
m = extract_mesh(c)
tex = texture_mesh(m.vertices, m.faces, m.field, 1024)
face, bary = _surface_samples(m.vertices, m.faces, 100000, seed=0)
pts = np.einsum("nc,ncj->nj", bary, m.vertices[m.faces[face]])
want = m.field(pts)
vc = np.einsum("nc,ncj->nj", bary, m.colors[m.faces[face]])  # what a renderer interpolates (sRGB-space approx)
uv = np.einsum("nc,ncj->nj", bary, tex.uvs[tex.faces[face]])
tx = _texture_lookup(tex.image, uv)
for name, got in (("vertex colours", vc), ("texture 1024", tx)):
    e = np.abs(got - want).max(-1)
    print(f"{name}: mean {e.mean():.4f} median {np.median(e):.4f} p99 {np.quantile(e, .99):.4f} max {e.max():.4f}")
