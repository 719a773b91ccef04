"""dynapose4d.export: the run's outputs for other tools, each read back by a reader independent of its writer.

* PLY sequence (gsplat's writer): read with `plyfile`; every frame equals the Gaussians of the 4D model at that
  frame after the up rotation (means, orientations as rotation matrices, view-dependent colours evaluated with
  the 3DGS SH basis written out here).
* glb: a GLB reader in this file (struct + json: chunks, accessors, node tree, animation samplers, skin);
  composing the node transforms gives RUN/dynamic/keypoints.json's "world" at every frame to 1e-4.
* bvh: parsed by the PyPI `bvh` package; the forward kinematics written here gives the same joints to 1e-4.
* Blender (where `blender` is installed): imports both files headless and reports bone heads per frame.
* the runner writes RUN/export after the dynamic stage, lists it in the manifest, rebuilds it when the dynamic
  stage reruns, and logs it to W&B (offline) as an Artifact of type "model".
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import _fakes
import numpy as np
import pytest
import torch

from dynapose4d.core.errors import InputError
from dynapose4d.core.io import write_json, write_video
from dynapose4d.deform import build_deformation, load_dynamic, save_dynamic
from dynapose4d.export import export_run, read_tracks
from dynapose4d.export.axes import up_matrix
from dynapose4d.export.ply import rotate_sh
from dynapose4d.export.skeleton import euler_zxy, minimal_rotation, skeleton_tree, zxy_matrix
from dynapose4d.gaussians import GaussianModel
from dynapose4d.pipeline.config import load_config
from dynapose4d.pipeline.run_folder import read_manifest
from dynapose4d.pipeline.runner import StageRunner

T, N_GAUSS, FPS = 5, 64, 10
NAMES = ["pelvis", "spine", "head", "l_hand", "r_hand", "tail", "loose"]
# a cycle (spine-l_hand-r_hand), a joint with three children (spine), a chain, and a keypoint with no bone
SKELETON = [[0, 1], [1, 2], [1, 3], [1, 4], [3, 4], [0, 5]]


def make_run(root: Path, sh_degree: int = 1) -> Path:
    """A run folder with a moving 4D model (perturbed HexPlane), 3D tracks whose bone lengths change over time,
    a config giving the video frame rate, and two videos."""
    g = torch.Generator().manual_seed(0)
    pts, rgb = torch.randn(N_GAUSS, 3, generator=g) * 0.3, torch.rand(N_GAUSS, 3, generator=g)
    canonical = GaussianModel.from_points(pts, rgb, scale=0.03, opacity=0.7, sh_degree=sh_degree)
    canonical.splats["quats"].data = torch.randn(N_GAUSS, 4, generator=g)
    canonical.splats["shN"].data = torch.randn(canonical.splats["shN"].shape, generator=g)
    phi = build_deformation("hexplane", canonical.means, T)
    with torch.no_grad():
        for p in phi.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    save_dynamic(root / "dynamic" / "deform.ckpt", canonical, phi)
    K = len(NAMES)
    base = torch.randn(K, 3, generator=g, dtype=torch.float64) * 0.5
    wobble = torch.randn(K, 3, generator=g, dtype=torch.float64) * 0.2
    world = torch.stack([base + wobble * math.sin(0.9 * f) + 0.05 * f * torch.randn(K, 3, generator=g,
                                                                                      dtype=torch.float64)
                         for f in range(T)])
    write_json(root / "dynamic" / "keypoints.json", {
        "names": NAMES, "world": world.tolist(), "reference_2d": [[[0.0, 0.0]] * K] * T,
        "confidence": [[1.0] * K] * T, "skeleton": SKELETON})
    (root / "config.yaml").write_text(f"dynamic:\n  video_fps: {FPS}\n")
    frames = torch.rand(T, 16, 16, 3, generator=g)
    write_video(root / "dynamic" / "videos" / "orbit.gif", frames, fps=FPS)
    write_video(root / "dynamic" / "videos" / "orbit.mp4", frames, fps=FPS)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("export") / "run")


def tracks(run: Path) -> np.ndarray:
    return np.asarray(json.loads((run / "dynamic" / "keypoints.json").read_text())["world"])  # [T, K, 3]


# ------------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------------


def quat_wxyz_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] of quaternions [..., 4] (w, x, y, z), normalised here."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def sh_basis_deg12(d: np.ndarray) -> np.ndarray:
    """The 3DGS real SH basis of degrees 1 and 2 at unit directions d [M, 3] -> [M, 8]."""
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    c1, c2 = 0.4886025119029199, (1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
                                  -1.0925484305920792, 0.5462742152960396)
    return np.stack([-c1 * y, c1 * z, -c1 * x, c2[0] * x * y, c2[1] * y * z, c2[2] * (2 * z * z - x * x - y * y),
                     c2[3] * x * z, c2[4] * (x * x - y * y)], -1)


def read_glb(path: Path) -> tuple[dict, bytes]:
    """(JSON document, BIN chunk) of a glTF 2.0 binary."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    chunks, off = {}, 12
    while off < len(data):
        n, kind = struct.unpack_from("<I4s", data, off)
        chunks[kind] = data[off + 8:off + 8 + n]
        off += 8 + n
    return json.loads(chunks[b"JSON"]), chunks.get(b"BIN\x00", b"")


def glb_accessor(doc: dict, binary: bytes, i: int) -> np.ndarray:
    """Accessor i as [count, components] (honours byteOffset and byteStride)."""
    a = doc["accessors"][i]
    view = doc["bufferViews"][a["bufferView"]]
    comps = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}[a["type"]]
    dtype = np.dtype({5126: "<f4", 5125: "<u4", 5123: "<u2", 5121: "u1"}[a["componentType"]])
    stride = view.get("byteStride", dtype.itemsize * comps)
    start = view.get("byteOffset", 0) + a.get("byteOffset", 0)
    return np.stack([np.frombuffer(binary, dtype, comps, start + k * stride) for k in range(a["count"])])


def trs_matrix(t, q_xyzw, s) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = quat_wxyz_matrix(np.asarray([q_xyzw[3], *q_xyzw[:3]], np.float64)) * np.asarray(s)[None, :]
    M[:3, 3] = t
    return M


def glb_world_per_frame(doc: dict, binary: bytes) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(keyframe times [T], node world matrices [T, nodes, 4, 4], skinned vertices per frame) from the default
    scene, sampling every animation channel at its keyframes."""
    anim = doc["animations"][0]
    samples: dict[tuple[int, str], np.ndarray] = {}
    times = None
    for ch in anim["channels"]:
        sampler = anim["samplers"][ch["sampler"]]
        t = glb_accessor(doc, binary, sampler["input"])[:, 0]
        assert times is None or np.array_equal(t, times)
        times = t
        samples[(ch["target"]["node"], ch["target"]["path"])] = glb_accessor(doc, binary, sampler["output"])
    nodes = doc["nodes"]
    out = np.zeros((len(times), len(nodes), 4, 4))
    skinned = []
    for f in range(len(times)):
        def local(i: int, f: int = f) -> np.ndarray:
            n = nodes[i]
            if "matrix" in n:
                return np.asarray(n["matrix"], np.float64).reshape(4, 4).T
            t = samples.get((i, "translation"), [n.get("translation", [0, 0, 0])] * len(times))[f]
            q = samples.get((i, "rotation"), [n.get("rotation", [0, 0, 0, 1])] * len(times))[f]
            s = samples.get((i, "scale"), [n.get("scale", [1, 1, 1])] * len(times))[f]
            return trs_matrix(np.asarray(t, np.float64), np.asarray(q, np.float64), s)

        def visit(i: int, parent: np.ndarray, f: int = f) -> None:
            out[f, i] = parent @ local(i, f)
            for c in nodes[i].get("children", []):
                visit(c, out[f, i], f)

        for r in doc["scenes"][doc.get("scene", 0)]["nodes"]:
            visit(r, np.eye(4))
        # skinning of the bone-line mesh: v' = Σ w_k (G(joint_k) · IBM_k) v
        mesh_node = next(i for i, n in enumerate(nodes) if "skin" in n)
        skin = doc["skins"][nodes[mesh_node]["skin"]]
        ibm = glb_accessor(doc, binary, skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
        prim = doc["meshes"][nodes[mesh_node]["mesh"]]["primitives"][0]["attributes"]
        v = glb_accessor(doc, binary, prim["POSITION"]).astype(np.float64)
        jn = glb_accessor(doc, binary, prim["JOINTS_0"]).astype(int)
        wt = glb_accessor(doc, binary, prim["WEIGHTS_0"]).astype(np.float64)
        vh = np.concatenate([v, np.ones((len(v), 1))], 1)
        res = np.zeros((len(v), 3))
        for k in range(4):
            mats = np.stack([out[f, skin["joints"][j]] @ ibm[j] for j in jn[:, k]])
            res += wt[:, k:k + 1] * np.einsum("vij,vj->vi", mats, vh)[:, :3]
        skinned.append(res)
    return times, out, skinned


def bvh_forward_kinematics(text: str) -> tuple[list[str], np.ndarray, dict]:
    """(joint names, joint positions [T, J, 3], {name: OFFSET}) of a BVH: position channels give the joint's
    translation in its parent's frame (replacing OFFSET), rotation channels multiply in the order listed."""
    from bvh import Bvh

    mocap = Bvh(text)
    names = mocap.get_joints_names()
    axes = {"X": np.array([1.0, 0, 0]), "Y": np.array([0, 1.0, 0]), "Z": np.array([0, 0, 1.0])}

    def rot(axis: str, deg: float) -> np.ndarray:
        a = math.radians(deg)
        k = axes[axis]
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K

    pos = np.zeros((mocap.nframes, len(names), 3))
    for f in range(mocap.nframes):
        R_world: dict[str, np.ndarray] = {}
        for j, name in enumerate(names):
            chans = mocap.joint_channels(name)
            vals = mocap.frame_joint_channels(f, name, chans)
            t = np.asarray(mocap.joint_offset(name), np.float64)
            R = np.eye(3)
            for c, v in zip(chans, vals):
                if c.endswith("position"):
                    t["XYZ".index(c[0])] = v
                else:
                    R = R @ rot(c[0], v)
            p = mocap.joint_parent_index(name)
            if p < 0:
                pos[f, j], R_world[name] = t, R
            else:
                pname = names[p]
                pos[f, j] = pos[f, p] + R_world[pname] @ t
                R_world[name] = R_world[pname] @ R
    return names, pos, {n: np.asarray(mocap.joint_offset(n)) for n in names}


# ------------------------------------------------------------------------------------------------
# PLY sequence
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("up", ["-y", "+y", "+z"])
def test_ply_sequence_is_the_4d_model_per_frame_after_the_up_rotation(run_dir, tmp_path, up):
    from plyfile import PlyData

    rec = export_run(run_dir, tmp_path / "out", up=up, formats=["ply"])
    files = [tmp_path / "out" / f for f in rec["outputs"]["ply"]["files"]]
    assert [f.name for f in files] == [f"frame_{i:03d}.ply" for i in range(T)] and rec["outputs"]["ply"]["up"] == up
    canonical, phi = load_dynamic(run_dir)
    s = {k: v.detach().double().numpy() for k, v in canonical.splats.items()}
    R = up_matrix(up)
    g = np.random.default_rng(0)
    dirs = g.normal(size=(50, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for f, path in enumerate(files):
        v = PlyData.read(str(path))["vertex"]
        names = [p.name for p in v.properties]
        # gsplat's layout: the 3DGS one without normals
        assert names == (["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
                         + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
        col = {n: np.asarray(v[n], np.float64) for n in names}
        with torch.no_grad():
            d = phi(*(canonical.splats[k] for k in ("means", "scales", "quats")), torch.tensor([f / (T - 1)]))
        means, log_scales, quats = (d[k][0].double().numpy() for k in ("means", "scales", "quats"))
        np.testing.assert_allclose(np.stack([col["x"], col["y"], col["z"]], 1), means @ R.T, atol=1e-5)
        np.testing.assert_allclose(np.stack([col[f"scale_{i}"] for i in range(3)], 1), log_scales, atol=1e-5)
        q = np.stack([col[f"rot_{i}"] for i in range(4)], 1)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), np.linalg.norm(quats, axis=1), rtol=1e-5)
        np.testing.assert_allclose(quat_wxyz_matrix(q), R @ quat_wxyz_matrix(quats), atol=1e-5)
        np.testing.assert_allclose(col["opacity"], s["opacities"], atol=1e-6)
        np.testing.assert_allclose(np.stack([col[f"f_dc_{i}"] for i in range(3)], 1), s["sh0"][:, 0], atol=1e-6)
        # view-dependent colour: the file seen along R·d equals the model seen along d (f_rest channel-major)
        rest = np.stack([col[f"f_rest_{i}"] for i in range(9)], 1).reshape(-1, 3, 3)  # [N, channel, coeff]
        before = np.einsum("nkc,mk->nmc", s["shN"], sh_basis_deg12(dirs)[:, :3])
        after = np.einsum("nck,mk->nmc", rest, sh_basis_deg12(dirs @ R.T)[:, :3])
        np.testing.assert_allclose(after, before, atol=1e-5)
    if up != "+y":
        assert np.abs(np.stack([col["x"], col["y"], col["z"]], 1) - means).max() > 0.1  # it did rotate


def test_sh_rotation_degree_two_against_the_3dgs_basis():
    g = torch.Generator().manual_seed(1)
    shN = torch.randn(10, 8, 3, generator=g, dtype=torch.float64)
    dirs = np.random.default_rng(1).normal(size=(40, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for up in ("-y", "+z"):
        R = up_matrix(up)
        out = rotate_sh(shN, up).numpy()
        before = np.einsum("nkc,mk->nmc", shN.numpy(), sh_basis_deg12(dirs))
        after = np.einsum("nkc,mk->nmc", out, sh_basis_deg12(dirs @ R.T))
        np.testing.assert_allclose(after, before, atol=1e-9)
        assert np.abs(out - shN.numpy()).max() > 0.1


def test_compressed_ply_and_splat_formats(run_dir, tmp_path):
    from plyfile import PlyData

    rec = export_run(run_dir, tmp_path / "out", formats=["ply_compressed", "splat"])
    comp = [tmp_path / "out" / f for f in rec["outputs"]["ply_compressed"]["files"]]
    splat = [tmp_path / "out" / f for f in rec["outputs"]["splat"]["files"]]
    assert comp[0].name == "frame_000.compressed.ply" and splat[-1].name == f"frame_{T - 1:03d}.splat"
    canonical, phi = load_dynamic(run_dir)
    R = up_matrix("-y")
    ply = PlyData.read(str(comp[0]))
    assert ply["vertex"].count == N_GAUSS and ply["chunk"].count == 1  # opacity 0.7: none dropped
    for f, path in enumerate(splat):
        raw = np.frombuffer(path.read_bytes(), dtype=[("p", "<f4", 3), ("s", "<f4", 3), ("c", "u1", 4),
                                                      ("r", "u1", 4)])
        assert len(raw) == N_GAUSS
        with torch.no_grad():
            d = phi(*(canonical.splats[k] for k in ("means", "scales", "quats")), torch.tensor([f / (T - 1)]))
        want = d["means"][0].double().numpy() @ R.T
        got = raw["p"].astype(np.float64)
        order_w, order_g = np.lexsort(want.T[::-1]), np.lexsort(got.T[::-1])  # .splat reorders the splats
        np.testing.assert_allclose(got[order_g], want[order_w], atol=1e-5)


# ------------------------------------------------------------------------------------------------
# skeleton: glb and bvh
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("up", ["+y", "+z"])
def test_glb_joints_reproduce_the_tracks(run_dir, tmp_path, up):
    rec = export_run(run_dir, tmp_path / "out", up=up, formats=["glb"])
    doc, binary = read_glb(tmp_path / "out" / "skeleton.glb")
    want = tracks(run_dir) @ up_matrix(up).T  # [T, K, 3]
    times, world, skinned = glb_world_per_frame(doc, binary)
    np.testing.assert_allclose(times, np.arange(T) / FPS, atol=1e-6)
    skin = doc["skins"][0]
    assert [doc["nodes"][j]["name"] for j in skin["joints"]] == NAMES
    # one tree over all joints: each joint is reached once from the scene roots
    children = [c for n in doc["nodes"] for c in n.get("children", [])]
    assert sorted(children + [skin["skeleton"]]) == list(range(len(NAMES)))
    assert doc["nodes"][skin["skeleton"]]["name"] == rec["outputs"]["glb"]["root"] == "spine"
    got = world[:, skin["joints"]][..., :3, 3]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for f in range(T):
        np.testing.assert_allclose(skinned[f], want[f], atol=1e-4, rtol=0)
    # rotations follow the bones: a joint's world rotation turns one child's frame-0 bone onto its frame-f bone
    kp = {node: i for i, node in enumerate(skin["joints"])}

    def unit(v):
        return v / np.linalg.norm(v)

    for node, i in kp.items():
        kids = [kp[c] for c in doc["nodes"][node].get("children", [])]
        for f in range(1, T) if kids else ():
            Rw = world[f, node, :3, :3]
            assert any(np.allclose(Rw @ unit(want[0, c] - want[0, i]), unit(want[f, c] - want[f, i]), atol=1e-4)
                       for c in kids), (NAMES[i], f)
    assert doc["scenes"][0]["extras"]["skeleton"] == SKELETON
    edges = glb_accessor(doc, binary, doc["meshes"][0]["primitives"][0]["indices"]).reshape(-1, 2)
    assert edges.tolist() == SKELETON  # every support bone drawn, the cycle's included


@pytest.mark.parametrize("up", ["+y", "-y"])
def test_bvh_forward_kinematics_reproduce_the_tracks(run_dir, tmp_path, up):
    export_run(run_dir, tmp_path / "out", up=up, formats=["bvh"])
    text = (tmp_path / "out" / "skeleton.bvh").read_text()
    names, pos, offsets = bvh_forward_kinematics(text)
    assert sorted(names) == sorted(NAMES)
    want = tracks(run_dir) @ up_matrix(up).T
    np.testing.assert_allclose(pos, want[:, [NAMES.index(n) for n in names]], atol=1e-4, rtol=0)
    from bvh import Bvh

    mocap = Bvh(text)
    assert mocap.nframes == T and mocap.frame_time == pytest.approx(1 / FPS, abs=1e-6)
    assert np.allclose(offsets[names[0]], 0)  # the root's OFFSET is zero; its position channels are absolute
    for n in names[1:]:  # rest pose = frame 0: OFFSET equals frame 0's position channels
        np.testing.assert_allclose(mocap.frame_joint_channels(0, n, ["Xposition", "Yposition", "Zposition"]),
                                   offsets[n], atol=1e-6)


def test_bone_rotations_euler_and_minimal_rotation():
    g = np.random.default_rng(3)
    a, b = g.normal(size=(200, 3)), g.normal(size=(200, 3))
    R = minimal_rotation(a, b)
    np.testing.assert_allclose(R @ np.swapaxes(R, -1, -2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(np.einsum("nij,nj->ni", R, an), bn, atol=1e-12)
    # least angle: the rotation angle equals the angle between a and b
    np.testing.assert_allclose(np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1)),
                               np.arccos(np.clip((an * bn).sum(1), -1, 1)), atol=1e-6)
    opp = minimal_rotation(np.array([0.0, 1.0, 0.0]), np.array([0.0, -2.0, 0.0]))
    np.testing.assert_allclose(opp @ [0, 1, 0], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(minimal_rotation(np.zeros(3), b[0]), np.eye(3))
    # Euler ZXY round trip, also at gimbal lock (x = ±90°)
    ang = np.concatenate([g.uniform(-180, 180, size=(100, 3)), [[30.0, 90.0, 20.0], [-50.0, -90.0, 10.0]]])
    M = zxy_matrix(ang)
    np.testing.assert_allclose(zxy_matrix(euler_zxy(M)), M, atol=1e-9)
    z = np.radians(40.0)
    np.testing.assert_allclose(zxy_matrix([40.0, 0.0, 0.0]), [[math.cos(z), -math.sin(z), 0],
                                                              [math.sin(z), math.cos(z), 0], [0, 0, 1]], atol=1e-12)


def test_skeleton_tree_spans_cycles_and_separate_parts():
    tree = skeleton_tree(NAMES, [tuple(e) for e in SKELETON], len(NAMES))
    assert tree.names[tree.root] == "spine"
    assert tree.parent[NAMES.index("loose")] == tree.root  # a keypoint with no bone hangs under the root
    assert sorted(tree.order) == list(range(len(NAMES)))
    assert sum(p >= 0 for p in tree.parent) == len(NAMES) - 1
    assert skeleton_tree(["a b", "a b", ""], [], 3).names == ["a_b", "a_b_1", "kp_2"]


# ------------------------------------------------------------------------------------------------
# Blender (optional)
# ------------------------------------------------------------------------------------------------

BLENDER_SCRIPT = textwrap.dedent("""
    import builtins, bpy, json, sys
    import numpy as np
    # Debian 12's Blender 3.4 runs its importers on the system Python 3.11 / NumPy 1.24, which they predate:
    # the glTF importer uses np.bool, the BVH importer opens files with mode "rU". Shims for both:
    if not hasattr(np, "bool"):
        np.bool = bool
    _open = builtins.open
    builtins.open = lambda f, mode="r", *a, **k: _open(f, mode.replace("U", ""), *a, **k)
    path, kind, fps, out = sys.argv[sys.argv.index("--") + 1:]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.scene.render.fps = int(fps)  # glTF keyframe times land on whole frames
    if kind == "glb":
        bpy.ops.import_scene.gltf(filepath=path)
    else:
        bpy.ops.import_anim.bvh(filepath=path)
    arm = next(o for o in bpy.context.scene.objects if o.type == "ARMATURE")
    frames = set()
    for o in bpy.context.scene.objects:
        ad = o.animation_data
        if ad and ad.action:
            for fc in (getattr(ad.action, "fcurves", None) or []):
                frames.update(round(k.co[0]) for k in fc.keyframe_points)
    if not frames:
        frames = set(range(bpy.context.scene.frame_start, bpy.context.scene.frame_end + 1))
    res = {}
    for f in sorted(frames):
        bpy.context.scene.frame_set(f)
        res[f] = {b.name: list(arm.matrix_world @ b.head) for b in arm.pose.bones}
    json.dump(res, open(out, "w"))
""")


@pytest.mark.skipif(shutil.which("blender") is None, reason="Blender is not installed (Debian: apt-get install "
                    "blender); the glb and bvh are checked by the independent readers above")
@pytest.mark.parametrize("kind", ["glb", "bvh"])
def test_blender_imports_glb_and_bvh_with_the_tracks(run_dir, tmp_path, kind):
    export_run(run_dir, tmp_path / "out", formats=[kind])
    script = tmp_path / "read.py"
    script.write_text(BLENDER_SCRIPT)
    res = tmp_path / "bones.json"
    cmd = ["blender", "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(script), "--",
           str(tmp_path / "out" / f"skeleton.{kind}"), kind, str(FPS), str(res)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    frames = json.loads(res.read_text())
    assert len(frames) == T
    # both importers turn +Y up files into Blender's +Z up: our "+z" frame
    want = tracks(run_dir) @ up_matrix("+z").T
    for f, key in enumerate(sorted(frames, key=int)):
        for name, head in frames[key].items():
            np.testing.assert_allclose(head, want[f, NAMES.index(name)], atol=1e-4, err_msg=f"{kind} {name} {f}")


# ------------------------------------------------------------------------------------------------
# CLI, runner, W&B
# ------------------------------------------------------------------------------------------------


def test_cli_export_formats_up_and_errors(run_dir, tmp_path, capsys):
    from dynapose4d.cli import main

    out = tmp_path / "cli"
    assert main(["export", str(run_dir), "--out", str(out), "--format", "glb", "bvh", "--up", "+z"]) == 0
    rec = json.loads((out / "export.json").read_text())
    assert set(rec["outputs"]) == {"glb", "bvh"} and rec["outputs"]["bvh"]["up"] == "+z" and rec["fps"] == FPS
    assert main(["export", str(run_dir), "--out", str(out), "--format", "ply-sequence"]) == 0  # adds, keeps glb
    rec = json.loads((out / "export.json").read_text())
    assert set(rec["outputs"]) == {"glb", "bvh", "ply"} and (out / "splats" / "frame_004.ply").is_file()
    capsys.readouterr()
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere" in err
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        assert main(["export", str(run_dir), "--out", str(out), "--format", "bvh"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"--out {out}" in err, err
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="deform.ckpt"):
        export_run(tmp_path / "empty", tmp_path / "x")
    with pytest.raises(InputError, match="keypoints.json"):
        export_run(tmp_path / "empty", tmp_path / "x", formats=["glb"])


def test_skeleton_falls_back_to_the_scene_keypoints(tmp_path):
    run = make_run(tmp_path / "run")
    kp = json.loads((run / "dynamic" / "keypoints.json").read_text())
    del kp["skeleton"]
    write_json(run / "dynamic" / "keypoints.json", kp)
    assert read_tracks(run)[2] == []
    write_json(tmp_path / "scene" / "keypoints.json", {"skeleton": [[0, 1]], "keypoints": []})
    write_json(run / "manifest.json", {"scene": str(tmp_path / "scene"), "stages": {}})
    assert read_tracks(run)[2] == [(0, 1)]


def _wandb_artifacts(run_dir: Path) -> list:
    from test_wandb import read_wandb_records

    arts = []
    for f in run_dir.glob("wandb/offline-run-*/run-*.wandb"):
        for rec in read_wandb_records(f):
            if rec.WhichOneof("record_type") == "artifact":
                arts.append(rec.artifact)
    return arts


def test_run_writes_export_lists_it_rebuilds_it_and_logs_an_artifact(tmp_path):
    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    ov = [o for o in _fakes.fake_overrides(2) if not o.startswith("wandb.")] + ["wandb.mode=offline"]
    StageRunner(scene, run, load_config(None, ov), stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    m = read_manifest(run)
    ex = m["export"]
    assert ex["status"] == "done" and ex["up"] == {"ply": "-y", "glb": "+y", "bvh": "+y", "mesh": "+y"}
    want = {"export.json", "skeleton.glb", "skeleton.bvh", "mesh.glb", "videos/orbit.gif"} | {
        f"splats/frame_{i:03d}.ply" for i in range(4)}
    assert set(ex["files"]) == want and all((run / "export" / f).is_file() for f in want)
    assert ex["source"]["config_hash"] == m["stages"]["dynamic"]["config_hash"]
    # a W&B Artifact of type "model" with every exported file, in the run's group
    arts = _wandb_artifacts(run)
    assert len(arts) == 1 and arts[0].type == "model" and arts[0].name == ex["wandb_artifact"] == "run-export"
    assert {e.path for e in arts[0].manifest.contents} == want
    # --resume with nothing changed keeps the export; a dynamic rerun rebuilds it (nothing stale)
    glb_before = (run / "export" / "skeleton.glb").stat().st_mtime_ns
    StageRunner(scene, run, load_config(None, ov), resume=True, stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    assert (run / "export" / "skeleton.glb").stat().st_mtime_ns == glb_before
    assert read_manifest(run)["export"] == ex
    # an export made by a version that wrote fewer formats (no "formats", no mesh.glb) is rebuilt on --resume
    m = read_manifest(run)
    del m["export"]["formats"]
    m["export"]["files"].remove("mesh.glb")
    write_json(run / "manifest.json", m)
    (run / "export" / "mesh.glb").unlink()
    StageRunner(scene, run, load_config(None, ov), resume=True, stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    assert (run / "export" / "mesh.glb").is_file() and "mesh" in read_manifest(run)["export"]["formats"]
    (run / "export" / "marker").write_text("old")
    StageRunner(scene, run, load_config(None, ov + ["dynamic.steps=3"]), resume=True, stages=_fakes.FAKE_STAGES,
                echo=lambda s: None).run()
    m2 = read_manifest(run)
    assert not (run / "export" / "marker").exists() and m2["export"]["status"] == "done"
    new_hash = m2["stages"]["dynamic"]["config_hash"]
    assert m2["export"]["source"]["config_hash"] == new_hash != ex["source"]["config_hash"]
    # a rerun of an earlier stage alone leaves the dynamic stage stale: its export goes with it
    StageRunner(scene, run, load_config(None, ov + ["static.steps=3", "stages=[static]"]), resume=True,
                stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    m3 = read_manifest(run)
    assert m3["stages"]["dynamic"]["status"] == "stale" and "export" not in m3 and not (run / "export").exists()


def test_cli_reexport_updates_the_manifest(tmp_path):
    from dynapose4d.cli import main

    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    StageRunner(scene, run, load_config(None, _fakes.fake_overrides(2)), stages=_fakes.FAKE_STAGES,
                echo=lambda s: None).run()
    assert main(["export", str(run), "--up", "+z"]) == 0
    ex = read_manifest(run)["export"]
    assert ex["up"] == {"ply": "+z", "glb": "+z", "bvh": "+z", "mesh": "+z"}
    assert "wandb_artifact" not in ex  # W&B off here


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


def test_cli_export_of_a_static_only_run_then_the_dynamic_stage_replaces_it(tmp_path):
    """`fit-static`, then `dynapose4d export RUN`: the static model's outputs, listed in the manifest; running the
    dynamic stage afterwards drops them and exports the 4D result (nothing stale)."""
    from dynapose4d.cli import main

    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    ov = _fakes.fake_overrides(2)
    StageRunner(scene, run, load_config(None, ov + ["stages=[static]"]), stages=_fakes.FAKE_STAGES,
                echo=lambda s: None).run()
    assert not (run / "export").exists()
    assert main(["export", str(run), "--format", "ply"]) == 0
    rec = json.loads((run / "export" / "export.json").read_text())
    assert rec["model"] == "static" and rec["outputs"]["ply"]["frames"] == 1
    assert read_manifest(run)["export"]["files"] == ["export.json", "splats/frame_000.ply"]
    StageRunner(scene, run, load_config(None, ov), resume=True, stages=_fakes.FAKE_STAGES, echo=lambda s: None).run()
    rec = json.loads((run / "export" / "export.json").read_text())
    assert rec["model"] == "dynamic" and rec["outputs"]["ply"]["frames"] == 4
    assert "skeleton.glb" in rec["outputs"]["glb"]["files"]


def test_the_run_configs_export_section_says_what_is_written(tmp_path):
    """export.formats picks the outputs; a change of the section rebuilds the export on --resume (its settings are
    in the manifest); `dynapose4d export RUN` starts from the run's section; [] writes none; a bad value is a
    one-line config error naming the key."""
    from pygltflib import GLTF2

    from dynapose4d.cli import main
    from dynapose4d.core.errors import ConfigError

    scene = _fakes.write_tiny_scene(tmp_path / "scene")
    run = tmp_path / "run"
    ov = _fakes.fake_overrides(2)

    def go(*extra: str, resume: bool = True) -> dict:
        StageRunner(scene, run, load_config(None, [*ov, *extra]), resume=resume, stages=_fakes.FAKE_STAGES,
                    echo=lambda s: None).run()
        return read_manifest(run)

    m = go("export.formats=[glb,bvh]", resume=False)
    assert set(m["export"]["files"]) == {"export.json", "skeleton.glb", "skeleton.bvh"}
    assert m["export"]["settings"]["formats"] == ["bvh", "glb"]
    m = go("export.formats=[mesh]", "export.mesh_texture=0")  # same dynamic output, other settings: rebuilt
    assert set(m["export"]["files"]) == {"export.json", "mesh.glb"} and m["export"]["settings"]["mesh_texture"] == 0
    prim = GLTF2().load(str(run / "export" / "mesh.glb")).meshes[0].primitives[0]
    assert prim.attributes.COLOR_0 is not None and prim.attributes.TEXCOORD_0 is None  # vertex colours
    before = (run / "export" / "mesh.glb").stat().st_mtime_ns
    assert go("export.formats=[mesh]", "export.mesh_texture=0")["export"] == m["export"]  # unchanged: kept
    assert (run / "export" / "mesh.glb").stat().st_mtime_ns == before
    # the command reads the run's section: config.yaml now says mesh only, vertex colours
    assert main(["export", str(run)]) == 0
    ex = read_manifest(run)["export"]
    assert set(ex["files"]) == {"export.json", "mesh.glb"} and ex["settings"] == m["export"]["settings"]
    assert main(["export", str(run), "--mesh-texture", "128"]) == 0  # an option overrides it: not the run's
    prim = GLTF2().load(str(run / "export" / "mesh.glb")).meshes[0].primitives[0]
    assert prim.attributes.TEXCOORD_0 is not None and "settings" not in read_manifest(run)["export"]
    m = go("export.formats=[]")  # none asked for: none kept
    assert "export" not in m and not (run / "export").exists()
    for bad, key in (("export.formats=[obj]", "export.formats"), ("export.mesh_texture=32", "export.mesh_texture"),
                     ("export.mesh_resolution=4", "export.mesh_resolution"),
                     ("export.mesh_level=0", "export.mesh_level")):
        with pytest.raises(ConfigError, match=key) as e:
            load_config(None, [bad])
        assert "\n" not in str(e.value)
