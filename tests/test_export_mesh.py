"""dynapose4d.export.mesh and .texture: the Gaussians' surface as an animated, textured glTF mesh.

References: analytic iso-surfaces of one Gaussian (a sphere and a turned ellipsoid), a dense density sum written
here, the deformation applied to Gaussian centres, the GLB reader of test_export.py (independent of pygltflib),
a bilinear texture lookup written here with glTF's conventions (PNG decoded by Pillow), analytic colour
patterns and, where installed, Blender's glTF importer."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import textwrap

import numpy as np
import pytest
import torch
from test_export import FPS, T, glb_accessor, make_run, read_glb

from dynapose4d.core.rotations import quat_to_matrix
from dynapose4d.deform import build_deformation, geometry_at, load_dynamic, save_dynamic
from dynapose4d.export import export_run
from dynapose4d.export.axes import up_matrix
from dynapose4d.export.mesh import (
    CUTOFF,
    animate_vertices,
    density_grid,
    extract_mesh,
    srgb_to_linear,
    vertex_normals,
    write_mesh_glb,
)
from dynapose4d.export.texture import texture_mesh
from dynapose4d.gaussians import GaussianModel


def _one_gaussian(scales, quat=(1.0, 0.0, 0.0, 0.0), opacity=0.9, rgb=(0.2, 0.6, 0.9)) -> GaussianModel:
    g = GaussianModel.from_points(torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([rgb]),
                                  scale=torch.tensor([scales]), opacity=opacity)
    g.splats["quats"].data = torch.tensor([quat])
    return g


def _mahalanobis(points: np.ndarray, g: GaussianModel) -> np.ndarray:
    a = {k: v.detach() for k, v in g.activated().items()}
    R = quat_to_matrix(a["quats"] / a["quats"].norm()).double()[0].numpy()
    local = (points - a["means"].double().numpy()) @ R / a["scales"].double().numpy()
    return np.linalg.norm(local, axis=-1)


@pytest.mark.parametrize("scales, quat", [((0.2, 0.2, 0.2), (1.0, 0.0, 0.0, 0.0)),
                                          ((0.3, 0.1, 0.15), (0.9, 0.3, -0.2, 0.25))])
def test_one_gaussian_gives_its_analytic_iso_surface(scales, quat):
    """o exp(-m^2 / 2) = level at Mahalanobis distance m = sqrt(2 ln(o / level)): every vertex is there (to a
    fraction of a grid cell), the faces point outwards, the colour is the Gaussian's."""
    o, level = 0.9, 0.3
    g = _one_gaussian(scales, quat, opacity=o)
    mesh = extract_mesh(g, resolution=64, level=level)
    want = math.sqrt(2 * math.log(o / level))  # 1.48 sigma
    m = _mahalanobis(mesh.vertices, g)
    assert len(mesh.vertices) > 500 and abs(m.mean() - want) < 0.01 and np.abs(m - want).max() < 0.05, (m.mean(), want)
    centre = g.activated()["means"].detach().double().numpy()[0]
    tri = mesh.vertices[mesh.faces]  # [F, 3, 3]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert (np.einsum("fc,fc->f", normal, tri.mean(1) - centre) > 0).all()  # counter-clockwise from outside
    np.testing.assert_allclose(mesh.colors, np.broadcast_to([0.2, 0.6, 0.9], mesh.colors.shape), atol=1e-5)


def test_density_grid_equals_a_dense_sum():
    """Every Gaussian evaluated on every grid point (no footprints), cut at CUTOFF sigma as the grid is: small
    ones, one centred outside the grid and one larger than the grid's padding (the bounds-checked path)."""
    g = torch.Generator().manual_seed(0)
    N = 14
    means = torch.rand(N, 3, generator=g) * 0.6
    quats = torch.randn(N, 4, generator=g)
    scales = torch.rand(N, 3, generator=g) * 0.08 + 0.01
    means[12] = torch.tensor([1.2, 0.3, -0.4])  # off the grid, reaching into it
    scales[12] = torch.tensor([0.3, 0.2, 0.25])
    scales[13] = torch.tensor([0.45, 0.3, 0.35])  # 3 sigma = 45 cells > the 32-cell padding
    opac = torch.rand(N, generator=g)
    colors = torch.rand(N, 3, generator=g)
    origin, step, shape = torch.tensor([-0.1, -0.15, -0.05]), 0.03, (30, 31, 29)
    dens, csum = density_grid(means, quats, scales, opac, colors, origin, step, shape)
    idx = torch.stack(torch.meshgrid(*(torch.arange(s) for s in shape), indexing="ij"), -1).double()
    pts = origin.double() + idx * step  # [X, Y, Z, 3]
    R = quat_to_matrix(quats / quats.norm(dim=-1, keepdim=True)).double()
    local = torch.einsum("xyznc,ncj->xyznj", pts[..., None, :] - means.double(), R) / scales.double()
    m = local.norm(dim=-1)  # [X, Y, Z, N]
    w = opac.double() * torch.exp(-0.5 * m ** 2) * (m <= CUTOFF)
    torch.testing.assert_close(dens.double(), w.sum(-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(csum.double(), w @ colors.double(), atol=1e-5, rtol=1e-4)
    assert float(dens.max()) > 0.5  # there is something to compare


def test_two_colours_meet_in_between():
    """Two overlapping Gaussians, red and blue: vertices near each centre take its colour, those between mix."""
    pts = torch.tensor([[-0.15, 0.0, 0.0], [0.15, 0.0, 0.0]])
    g = GaussianModel.from_points(pts, torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]]), scale=0.12, opacity=0.95)
    mesh = extract_mesh(g, resolution=64, level=0.3)
    x = mesh.vertices[:, 0]
    left, right, mid = mesh.colors[x < -0.2], mesh.colors[x > 0.2], mesh.colors[np.abs(x) < 0.01]
    assert len(left) and len(right) and len(mid)
    assert (left[:, 0] > 0.85).all() and (right[:, 2] > 0.85).all()
    assert np.allclose(mid[:, 0], mid[:, 2], atol=0.05)  # half way: an even mix


def test_nothing_dense_enough_is_a_clear_error():
    g = _one_gaussian((0.1, 0.1, 0.1), opacity=0.2)
    with pytest.raises(ValueError, match="under the surface level 1"):
        extract_mesh(g)


def test_vertices_move_as_gaussian_centres_and_the_glb_plays_the_frames(tmp_path):
    """A vertex placed on a Gaussian centre moves exactly as that Gaussian; the glb's base mesh plus its weighted
    morph targets at t = f / fps give frame f (read with test_export's GLB reader), colours stored linear."""
    run = make_run(tmp_path / "run")
    canonical, phi = load_dynamic(run)
    centres = canonical.splats["means"].detach().double().numpy()
    moved = animate_vertices(centres, phi, T)  # [T, N, 3]
    for f in range(T):
        means, _, _ = geometry_at(canonical.splats, phi, f / (T - 1))
        np.testing.assert_allclose(moved[f], means.detach().double().numpy(), atol=1e-6)
    assert np.abs(moved[-1] - moved[0]).max() > 0.01  # it does move
    ctrl = build_deformation("control", canonical.means, T)  # the other kind: sparse controls, blended
    with torch.no_grad():
        for prm in ctrl.parameters():
            prm.add_(0.1 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(3)))
    moved_c = animate_vertices(centres, ctrl, T)
    assert np.abs(moved_c[-1] - centres).max() > 1e-3
    for f in (1, T - 1):
        means, _, _ = geometry_at(canonical.splats, ctrl, f / (T - 1))
        np.testing.assert_allclose(moved_c[f], means.detach().double().numpy(), atol=1e-6)
    faces = np.array([[0, 1, 2], [0, 2, 3], [3, 2, 4]])
    frames = moved[:, :5]
    colors = np.random.default_rng(0).random((5, 3))
    path = write_mesh_glb(tmp_path / "m.glb", frames, faces, colors, FPS)
    doc, binary = read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    base = glb_accessor(doc, binary, prim["attributes"]["POSITION"])
    targets = [glb_accessor(doc, binary, t["POSITION"]) for t in prim["targets"]]
    np.testing.assert_array_equal(glb_accessor(doc, binary, prim["indices"]).reshape(-1, 3), faces)
    np.testing.assert_allclose(glb_accessor(doc, binary, prim["attributes"]["COLOR_0"]), srgb_to_linear(colors),
                               atol=1e-6)
    sampler = doc["animations"][0]["samplers"][0]
    times = glb_accessor(doc, binary, sampler["input"])[:, 0]
    weights = glb_accessor(doc, binary, sampler["output"]).reshape(T, T - 1)
    assert doc["animations"][0]["channels"][0]["target"] == {"node": 0, "path": "weights"}
    np.testing.assert_allclose(times, np.arange(T) / FPS, atol=1e-6)
    for f in range(T):
        got = base + sum(w * d for w, d in zip(weights[f], targets))
        np.testing.assert_allclose(got, frames[f], atol=1e-5)
    n = vertex_normals(frames[0], faces)
    np.testing.assert_allclose(glb_accessor(doc, binary, prim["attributes"]["NORMAL"]), n, atol=1e-6)
    assert np.allclose(np.linalg.norm(n, axis=-1), 1.0)


def test_export_writes_mesh_glb_or_says_why_not(tmp_path):
    run = make_run(tmp_path / "run")
    faint = _one_gaussian((0.1, 0.1, 0.1), opacity=0.2)
    save_dynamic(run / "dynamic" / "deform.ckpt", faint, build_deformation("hexplane", faint.means, T))
    rec = export_run(run, tmp_path / "out", formats=["mesh", "glb"])
    assert "mesh" not in rec["outputs"] and "glb" in rec["outputs"] and not (tmp_path / "out" / "mesh.glb").exists()
    assert any("mesh.glb not written" in n and "under the surface level" in n for n in rec["notes"])
    # a solid blob of Gaussians
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(400, 3, generator=g) * 0.15
    blob = GaussianModel.from_points(pts, torch.rand(400, 3, generator=g), scale=0.05, opacity=0.9)
    save_dynamic(run / "dynamic" / "deform.ckpt", blob, build_deformation("hexplane", blob.means, T))
    rec = export_run(run, tmp_path / "out", formats=["mesh"], up="+z")
    out = rec["outputs"]["mesh"]
    assert out["files"] == ["mesh.glb"] and out["up"] == "+z" and out["frames"] == T and out["vertices"] > 1000
    doc, binary = read_glb(tmp_path / "out" / "mesh.glb")
    base = glb_accessor(doc, binary, doc["meshes"][0]["primitives"][0]["attributes"]["POSITION"])
    assert len(base) == out["vertices"] and doc["scenes"][0]["extras"]["up"] == "+z"
    assert json.loads((tmp_path / "out" / "export.json").read_text())["outputs"]["mesh"]["faces"] == out["faces"]


def test_a_static_only_run_exports_its_gaussians_as_one_frame(tmp_path):
    """`fit-static` leaves RUN/static/gaussians.ply and no dynamic model: the default export writes the splats and
    the mesh of those Gaussians as one frame (no morph targets), says why there is no skeleton, and an explicit
    --format glb still asks for the dynamic stage's tracks."""
    from dynapose4d.core.errors import InputError
    from dynapose4d.gaussians import save_ply

    g = torch.Generator().manual_seed(4)
    blob = GaussianModel.from_points(torch.randn(300, 3, generator=g) * 0.12, torch.rand(300, 3, generator=g),
                                     scale=0.05, opacity=0.9)
    run = tmp_path / "run"
    save_ply(blob, run / "static" / "gaussians.ply")
    rec = export_run(run)
    assert rec["model"] == "static" and set(rec["outputs"]) == {"ply", "mesh", "videos"}
    assert rec["outputs"]["ply"]["files"] == ["splats/frame_000.ply"] and rec["outputs"]["mesh"]["frames"] == 1
    assert any("skeleton.glb and skeleton.bvh not written" in n for n in rec["notes"])
    doc, binary = read_glb(run / "export" / "mesh.glb")
    prim = doc["meshes"][0]["primitives"][0]
    assert "targets" not in prim and not doc.get("animations")
    want = extract_mesh(blob).vertices @ up_matrix("+y").T
    from scipy.spatial import cKDTree

    got = glb_accessor(doc, binary, prim["attributes"]["POSITION"])  # the surface's vertices, split along seams
    assert cKDTree(want).query(got)[0].max() < 1e-5 and cKDTree(got).query(want)[0].max() < 1e-5
    with pytest.raises(InputError, match="keypoints.json"):
        export_run(run, formats=["glb"])


def test_cli_mesh_level_and_resolution(tmp_path, capsys):
    """A model too faint for the default level: the export says so and how to get a mesh; --mesh-level below
    its peak makes one; bad values are one-line errors."""
    from dynapose4d.cli import main

    run = make_run(tmp_path / "run")
    faint = _one_gaussian((0.1, 0.1, 0.1), opacity=0.4)
    save_dynamic(run / "dynamic" / "deform.ckpt", faint, build_deformation("hexplane", faint.means, T))
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--format", "mesh"]) == 0
    said = capsys.readouterr().out
    assert "mesh.glb not written" in said and "--mesh-level" in said and not (out / "mesh.glb").exists()
    assert main(["export", str(run), "--out", str(out), "--format", "mesh", "--mesh-level", "0.2",
                 "--mesh-resolution", "40"]) == 0
    rec = json.loads((out / "export.json").read_text())["outputs"]["mesh"]
    assert (out / "mesh.glb").is_file() and rec["level"] == 0.2 and rec["resolution"] == 40 and rec["vertices"] > 100
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(out), "--format", "mesh", "--mesh-level", "0.2",
                 "--mesh-resolution", "40", "--mesh-texture", "0"]) == 0  # vertex colours
    doc, _ = read_glb(out / "mesh.glb")
    assert "COLOR_0" in doc["meshes"][0]["primitives"][0]["attributes"] and not doc.get("images")
    capsys.readouterr()
    for bad in (["--mesh-level", "0"], ["--mesh-level", "nan"], ["--mesh-resolution", "4"], ["--mesh-texture", "5"],
                ["--mesh-texture", "-1"]):
        assert main(["export", str(run), "--out", str(out), "--format", "mesh", *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and bad[0] in err, err


BLENDER_MESH_SCRIPT = textwrap.dedent("""
    import bpy, json, sys
    import numpy as np
    if not hasattr(np, "bool"):  # Debian 12's Blender 3.4 importer predates NumPy 1.24
        np.bool = bool
    path, fps, out = sys.argv[sys.argv.index("--") + 1:]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = int(fps)
    bpy.ops.import_scene.gltf(filepath=path)
    obj = next(o for o in bpy.context.scene.objects if o.type == "MESH")
    key = obj.data.shape_keys
    frames = sorted({round(k.co[0]) for fc in key.animation_data.action.fcurves for k in fc.keyframe_points})
    mat = obj.data.materials[0]
    base = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED").inputs["Base Color"]
    img = base.links[0].from_node.image if base.is_linked and base.links[0].from_node.type == "TEX_IMAGE" else None
    res = {"shape_keys": len(key.key_blocks), "frames": {}, "uv_layers": len(obj.data.uv_layers),
           "image": None if img is None else {"size": list(img.size), "pixels": list(img.pixels[:])}}
    for f in frames:
        bpy.context.scene.frame_set(f)
        ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
        res["frames"][f] = [list(obj.matrix_world @ v.co) for v in ev.to_mesh().vertices]
    json.dump(res, open(out, "w"))
""")


@pytest.mark.skipif(shutil.which("blender") is None, reason="Blender is not installed (Debian: apt-get install "
                    "blender); the mesh glb is checked by the independent reader above")
def test_blender_plays_the_mesh_frames_with_its_texture(tmp_path):
    g = torch.Generator().manual_seed(2)
    pts = torch.randn(200, 3, generator=g) * 0.1
    blob = GaussianModel.from_points(pts, torch.rand(200, 3, generator=g), scale=0.05, opacity=0.9)
    phi = build_deformation("hexplane", blob.means, T)
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    mesh = extract_mesh(blob, resolution=24, level=1.0)
    tex = texture_mesh(mesh.vertices, mesh.faces, mesh.field, size=64)
    frames = animate_vertices(mesh.vertices, phi, T)  # [T, V, 3] in the file's +y up frame
    write_mesh_glb(tmp_path / "m.glb", frames, mesh.faces, None, FPS, texture=tex)
    script, res = tmp_path / "read.py", tmp_path / "verts.json"
    script.write_text(BLENDER_MESH_SCRIPT)
    subprocess.run(["blender", "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(script), "--",
                    str(tmp_path / "m.glb"), str(FPS), str(res)], check=True, capture_output=True, timeout=300)
    out = json.loads(res.read_text())
    assert out["shape_keys"] == T  # Basis + one per frame after the first
    assert out["uv_layers"] == 1 and out["image"] is not None and out["image"]["size"] == [64, 64]
    pixels = np.asarray(out["image"]["pixels"]).reshape(64, 64, 4)[::-1, :, :3]  # Blender's rows go up
    np.testing.assert_allclose(pixels, tex.image / 255.0, atol=1e-6)  # the PNG's values, as sRGB-encoded
    frames = frames[:, tex.vmap]  # the file's vertices: split along the atlas's seams
    got = [np.asarray(out["frames"][k]) for k in sorted(out["frames"], key=int)]
    assert len(got) == T
    want = frames @ up_matrix("+z").T  # the importer turns +Y up into Blender's +Z up
    from scipy.spatial import cKDTree

    for f in range(T):  # the importer may reorder vertices: nearest neighbours
        d, _ = cKDTree(want[f]).query(got[f])
        assert len(got[f]) == len(want[f]) and d.max() < 1e-4, (f, d.max())


# --- the baked texture ---------------------------------------------------------------------------------------------

def _texture_lookup(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of image [H, W, C] at uv [P, 2] as glTF defines it: u along the row, v down from the first
    row, texel (r, c) centred at ((c + 1/2) / W, (r + 1/2) / H), clamp to edge -> [P, C] in [0, 1]."""
    H, W = image.shape[:2]
    x, y = uv[:, 0] * W - 0.5, uv[:, 1] * H - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    img = image.astype(np.float64) / 255.0

    def at(r, c):
        return img[np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)]

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


def _surface_samples(vertices: np.ndarray, faces: np.ndarray, n: int, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """n points uniformly on a triangle mesh: (face [n], barycentric coordinates [n, 3])."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    face = rng.choice(len(faces), n, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
    return face, np.stack([1 - r1, r1 * (1 - r2), r1 * r2], -1)


def _read_textured(path) -> dict:
    """The textured glb's primitive read back: document, positions per frame [T, V, 3], normals [V, 3], uvs [V, 2],
    faces [F, 3], image [S, S, 3] uint8 (decoded from the embedded PNG by Pillow)."""
    from PIL import Image

    doc, binary = read_glb(path)
    prim = doc["meshes"][0]["primitives"][0]
    base = glb_accessor(doc, binary, prim["attributes"]["POSITION"]).astype(np.float64)
    frames = [base] + [base + glb_accessor(doc, binary, t["POSITION"]) for t in prim.get("targets", [])]
    material = doc["materials"][prim["material"]]
    tex = doc["textures"][material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    img = doc["images"][tex["source"]]
    view = doc["bufferViews"][img["bufferView"]]
    png = binary[view.get("byteOffset", 0):view.get("byteOffset", 0) + view["byteLength"]]
    return {"doc": doc, "prim": prim, "frames": np.stack(frames), "mime": img["mimeType"],
            "sampler": doc["samplers"][tex["sampler"]], "image": np.asarray(Image.open(io.BytesIO(png)).convert("RGB")),
            "normals": glb_accessor(doc, binary, prim["attributes"]["NORMAL"]),
            "uvs": glb_accessor(doc, binary, prim["attributes"]["TEXCOORD_0"]).astype(np.float64),
            "faces": glb_accessor(doc, binary, prim["indices"]).reshape(-1, 3).astype(np.int64)}


def _texture_error(got: dict, colour, n: int = 20000, uv_shift: tuple[float, float] = (0.0, 0.0),
                   flip_v: bool = False) -> np.ndarray:
    """|texture at the UV of n random surface points - colour at their 3D point| [n, 3] (optionally misread)."""
    face, bary = _surface_samples(got["frames"][0], got["faces"], n)
    tri = got["faces"][face]  # [n, 3]
    points = np.einsum("nc,ncj->nj", bary, got["frames"][0][tri])
    uv = np.einsum("nc,ncj->nj", bary, got["uvs"][tri]) + np.asarray(uv_shift) / got["image"].shape[0]
    if flip_v:
        uv[:, 1] = 1 - uv[:, 1]
    return np.abs(_texture_lookup(got["image"], uv) - colour(points))


def _stripes(points: np.ndarray) -> np.ndarray:
    """An analytic colour pattern: stripes of period 0.08 in three directions, one per channel."""
    k = 2 * np.pi / 0.08 * np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.6, -0.8, 0.0]])
    return 0.5 + 0.4 * np.sin(points @ k.T)


def test_the_texture_holds_the_colour_of_every_surface_point(tmp_path):
    """Stripes baked on a sphere (256 texels: ~13 per stripe period) and read back from the glb: at 20 000 random
    surface points (not vertices) the bilinear texture lookup at their UV equals the pattern at their 3D point to
    8-bit and bilinear precision (all but 1 in 1000); the same lookup with v flipped or half a texel off is far
    off (what the test catches). UVs in [0, 1], a PNG image, linear filtering, and no COLOR_0."""
    mesh = extract_mesh(_one_gaussian((0.2, 0.2, 0.2), opacity=0.9), resolution=48, level=0.3)
    tex = texture_mesh(mesh.vertices, mesh.faces, _stripes, size=256)
    assert len(tex.vmap) > len(mesh.vertices)  # the atlas has seams
    write_mesh_glb(tmp_path / "m.glb", mesh.vertices[None], mesh.faces, None, FPS, texture=tex)
    got = _read_textured(tmp_path / "m.glb")
    assert "COLOR_0" not in got["prim"]["attributes"] and got["mime"] == "image/png"
    assert got["image"].shape == (256, 256, 3) and (got["uvs"] >= 0).all() and (got["uvs"] <= 1).all()
    assert got["sampler"]["magFilter"] == 9729 and got["sampler"]["minFilter"] in (9729, 9987)
    err = _texture_error(got, _stripes)  # a few points at chart corners and UV slivers are up to ~0.15 off
    assert err.mean() < 0.006 and np.quantile(err, 0.999) < 0.02, (err.mean(), np.quantile(err, 0.999))
    for misread in ({"flip_v": True}, {"uv_shift": (0.5, 0.0)}, {"uv_shift": (0.0, 0.5)}):
        assert _texture_error(got, _stripes, **misread).mean() > 2 * err.mean() + 0.01, misread


def test_two_spheres_keep_their_colours_up_to_the_chart_edges(tmp_path):
    """Two Gaussians far apart, red and blue, through extract_mesh's colour field: every sampled surface point of
    the left sphere reads red and of the right blue (bilinear, full resolution), so no background or other chart
    bleeds in at the seams, and no left-over face reads another chart; the field's colour at the points agrees."""
    pts = torch.tensor([[-0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])
    red, blue = np.array([0.9, 0.1, 0.1]), np.array([0.1, 0.2, 0.9])
    g = GaussianModel.from_points(pts, torch.tensor(np.stack([red, blue]), dtype=torch.float32), scale=0.1,
                                  opacity=0.95)
    mesh = extract_mesh(g, resolution=96, level=0.3)
    tex = texture_mesh(mesh.vertices, mesh.faces, mesh.field, size=128)
    write_mesh_glb(tmp_path / "m.glb", mesh.vertices[None], mesh.faces, None, FPS, texture=tex)
    got = _read_textured(tmp_path / "m.glb")
    face, bary = _surface_samples(got["frames"][0], got["faces"], 20000, seed=1)
    tri = got["faces"][face]
    points = np.einsum("nc,ncj->nj", bary, got["frames"][0][tri])
    uv = np.einsum("nc,ncj->nj", bary, got["uvs"][tri])
    want = np.where(points[:, :1] < 0, red, blue)  # [n, 3]
    err = np.abs(_texture_lookup(got["image"], uv) - want)
    assert err.max() < 0.01, err.max()
    background = np.all(got["image"] == got["image"][0, 0], axis=-1).mean()  # a corner: far from every chart
    assert 0.05 < background < 0.8  # dilation filled only a band around the charts
    np.testing.assert_allclose(mesh.field(points), want, atol=1e-4)


def test_a_real_colour_field_is_baked_at_every_surface_point(tmp_path):
    """A blob of 400 randomly coloured Gaussians through `dynapose4d export` (texture 512): the texture at random
    surface points equals extract_mesh's colour field (the vertex colours' source) at the same points of the
    canonical surface (the file's frame 0 is the deformation's tau = 0, turned to +z up)."""
    from dynapose4d.cli import main

    run = make_run(tmp_path / "run")
    g = torch.Generator().manual_seed(1)
    blob = GaussianModel.from_points(torch.randn(400, 3, generator=g) * 0.15, torch.rand(400, 3, generator=g),
                                     scale=0.05, opacity=0.9)
    save_dynamic(run / "dynamic" / "deform.ckpt", blob, build_deformation("hexplane", blob.means, T))
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--format", "mesh", "--up", "+z", "--mesh-texture",
                 "512"]) == 0
    rec = json.loads((out / "export.json").read_text())["outputs"]["mesh"]
    got = _read_textured(out / "mesh.glb")
    assert rec["texture"] == 512 and got["image"].shape == (512, 512, 3)
    assert rec["vertices"] == got["frames"].shape[1] > rec["surface_vertices"]
    assert "COLOR_0" not in got["prim"]["attributes"]
    from scipy.spatial import cKDTree

    mesh = extract_mesh(blob)
    _, phi = load_dynamic(run)
    frame0 = animate_vertices(mesh.vertices, phi, T)[0] @ up_matrix("+z").T  # [V, 3] as the file has them
    d, vmap = cKDTree(frame0).query(got["frames"][0])  # each file vertex: its surface vertex
    assert d.max() < 1e-5
    got["frames"] = mesh.vertices[vmap][None]  # the colour field lives on the canonical surface
    err = _texture_error(got, mesh.field)
    assert err.mean() < 0.006 and np.quantile(err, 0.99) < 0.04, (err.mean(), np.quantile(err, 0.99))


def test_the_atlas_keeps_every_frame_and_smooth_normals(tmp_path):
    """xatlas splits vertices along its seams: every frame of the file (base + its morph target) is the surface's
    frame through the vertex map, every triangle the same 3D triangle, and the normals of split vertices are the
    welded surface's (no shading seam)."""
    g = torch.Generator().manual_seed(2)
    blob = GaussianModel.from_points(torch.randn(200, 3, generator=g) * 0.1, torch.rand(200, 3, generator=g),
                                     scale=0.05, opacity=0.9)
    phi = build_deformation("hexplane", blob.means, T)
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    mesh = extract_mesh(blob, resolution=32, level=1.0)
    frames = animate_vertices(mesh.vertices, phi, T)  # [T, V, 3]
    assert np.abs(frames[-1] - frames[0]).max() > 0.01
    tex = texture_mesh(mesh.vertices, mesh.faces, mesh.field, size=128)
    write_mesh_glb(tmp_path / "m.glb", frames, mesh.faces, mesh.colors, FPS, texture=tex)
    got = _read_textured(tmp_path / "m.glb")
    assert "COLOR_0" not in got["prim"]["attributes"] and len(got["frames"]) == T
    assert got["frames"].shape[1] > len(mesh.vertices)  # split along seams
    vmap = tex.vmap
    np.testing.assert_array_equal(vmap[got["faces"]], mesh.faces)  # same faces, order and winding
    for f in range(T):
        np.testing.assert_allclose(got["frames"][f], frames[f][vmap], atol=1e-5)
        np.testing.assert_allclose(got["frames"][f][got["faces"]], frames[f][mesh.faces], atol=1e-5)
    np.testing.assert_allclose(got["normals"], vertex_normals(frames[0], mesh.faces)[vmap], atol=1e-6)


def test_charts_are_at_least_the_padding_apart_in_the_image():
    """The baked image's charts (texels whose centre lies in a triangle, labelled by chart: faces joined through
    shared atlas vertices) are at least `TEXTURE_PADDING` empty texels apart, at 256 and 1024 texels, although
    xatlas's atlas comes out up to ~1.8x larger than asked (it pads every chart on every side)."""
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from dynapose4d.export.texture import TEXTURE_PADDING, rasterize_uv, uv_atlas

    g = torch.Generator().manual_seed(3)
    blob = GaussianModel.from_points(torch.randn(300, 3, generator=g) * 0.15, torch.rand(300, 3, generator=g),
                                     scale=0.04, opacity=0.9)
    mesh = extract_mesh(blob, resolution=64)
    r = TEXTURE_PADDING  # two charts' texels within Chebyshev distance r leave fewer than r empty texels between
    for size in (256, 1024):
        _, faces, uvs, charted = uv_atlas(mesh.vertices, mesh.faces, size)
        f = faces[charted]
        n = len(uvs)
        edges = coo_matrix((np.ones(2 * len(f)), (np.r_[f[:, 0], f[:, 1]], np.r_[f[:, 1], f[:, 2]])), shape=(n, n))
        _, chart = connected_components(edges, directed=False)  # [V'] chart of each atlas vertex
        texel, face, _ = rasterize_uv(uvs, f, size, reach=0.0)
        label = np.zeros(size * size, np.int64)
        label[texel] = chart[f[face, 0]] + 1
        label = label.reshape(size, size)
        window = np.ones((2 * r + 1, 2 * r + 1), bool)
        hi = ndimage.maximum_filter(label, footprint=window, mode="constant", cval=0)
        lo = ndimage.minimum_filter(np.where(label == 0, 1 << 40, label), footprint=window, mode="constant",
                                    cval=1 << 40)
        assert len(np.unique(label)) > 50
        assert not ((label > 0) & (hi != lo)).any(), f"{size}: two charts closer than {r} texels"
