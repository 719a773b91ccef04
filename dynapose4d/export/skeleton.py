"""The 3D keypoint tracks as an animated skeleton: glTF 2.0 binary (.glb) and BVH.

The joints are the support keypoints; the hierarchy is a spanning tree of the support skeleton
(`dynapose4d.deform.tracks.skeleton_forest`: breadth first from the best-connected keypoint, so a skeleton with
cycles keeps all its joints and drops the bones that close a cycle; the roots of other connected parts hang
under the main root). Every joint is animated with a translation relative to its parent and a rotation:

* bone rotations: each joint with children is oriented by the bone to its primary child (the child with the
  largest subtree): its world rotation at frame f is the minimal rotation taking that bone's frame-0 direction
  to its frame-f direction (the identity at frame 0, and where a bone has zero length); a leaf keeps its
  parent's orientation. A joint's local rotation is its parent's world rotation⁻¹ · its own.
* translations: the joint's position minus its parent's, in the parent's rotated frame. So forward kinematics
  reproduces every joint of every frame exactly, also where bone lengths change over time or a joint has
  several children (a rotation alone cannot place two children whose angle changes).

glb: one node per joint (named after the keypoint), translation and rotation channels sampled at each frame
(LINEAR, t = f / fps), the frame-0 pose as the nodes' rest transform, and a skin with a line mesh of all the
support skeleton's bones (cycles included; each vertex bound to its joint), so viewers draw the moving
skeleton and Blender makes an armature of it.

BVH: the same joints and motion. Every joint has six channels, `Xposition Yposition Zposition Zrotation
Xrotation Yrotation`: the position channels are the joint's translation in its parent's frame and replace
its OFFSET (as Blender's importer reads them; the root's OFFSET is 0 so that readers that add the two agree
there), the rotation is R = Rz(z) · Rx(x) · Ry(y) in degrees. OFFSETs are frame 0's translations (the rest pose
is frame 0). A leaf ends with an End Site half as long as its own bone, along it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynapose4d.core.io import write_bytes
from dynapose4d.deform.tracks import skeleton_forest
from dynapose4d.export.gltf import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, FLOAT, UINT, USHORT, GlbBuilder


@dataclass
class SkeletonTree:
    """A rooted tree over N joints. names: unique identifiers ([A-Za-z0-9_]); parent[i]: -1 for the root;
    primary[i]: the child that orients joint i (-1 for a leaf); order: depth-first (parents first, the order of
    a BVH file); edges: all the support skeleton's bones (cycles included)."""

    names: list[str]
    parent: list[int]
    primary: list[int]
    order: list[int]
    edges: list[tuple[int, int]]

    @property
    def root(self) -> int:
        return self.parent.index(-1)

    def children(self, i: int) -> list[int]:
        return [j for j, p in enumerate(self.parent) if p == i]


def joint_names(names: list[str], n: int) -> list[str]:
    """n unique joint names made of [A-Za-z0-9_] from keypoint `names` (kp_<i> where missing or empty)."""
    out: list[str] = []
    for i in range(n):
        raw = names[i] if i < len(names) else ""
        name = re.sub(r"[^A-Za-z0-9_]+", "_", str(raw)).strip("_") or f"kp_{i}"
        if name in out:
            name = f"{name}_{i}"
        out.append(name)
    return out


def skeleton_tree(names: list[str], skeleton: list[tuple[int, int]], n: int) -> SkeletonTree:
    """The spanning tree of the support skeleton (see the module docstring) over n joints."""
    if n < 1:
        raise ValueError("a skeleton needs at least one joint")
    edges = [(int(i), int(j)) for i, j in skeleton if i != j and 0 <= i < n and 0 <= j < n]
    parent = skeleton_forest(edges, n)
    degree = [sum(i in e for e in edges) for i in range(n)]
    roots = [i for i in range(n) if parent[i] < 0]
    root = min(roots, key=lambda i: (-degree[i], i))
    for r in roots:
        if r != root:
            parent[r] = root
    children: list[list[int]] = [[] for _ in range(n)]
    for j, p in enumerate(parent):
        if p >= 0:
            children[p].append(j)

    size = [1] * n
    order: list[int] = []
    stack = [root]
    while stack:
        u = stack.pop()
        order.append(u)
        stack.extend(reversed(children[u]))
    for u in reversed(order):
        if parent[u] >= 0:
            size[parent[u]] += size[u]
    primary = [max(children[i], key=lambda c: (size[c], -c)) if children[i] else -1 for i in range(n)]
    return SkeletonTree(joint_names(names, n), parent, primary, order, edges)


# --------------------------------------------------------------------------------------------------
# rotations
# --------------------------------------------------------------------------------------------------


def minimal_rotation(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rotations [..., 3, 3] of least angle taking direction a [..., 3] to direction b [..., 3] (the identity
    where either is zero; a half turn about an axis perpendicular to a where they are opposite)."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    ok = (na > eps) & (nb > eps)
    au = np.where(ok[..., None], a / np.where(ok, na, 1.0)[..., None], [1.0, 0.0, 0.0])
    bu = np.where(ok[..., None], b / np.where(ok, nb, 1.0)[..., None], [1.0, 0.0, 0.0])
    v = np.cross(au, bu)
    c = (au * bu).sum(-1)
    vx = np.zeros(a.shape[:-1] + (3, 3))
    vx[..., 0, 1], vx[..., 0, 2], vx[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    vx[..., 1, 0], vx[..., 2, 0], vx[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    opposite = c < -1.0 + 1e-9
    R = np.eye(3) + vx + vx @ vx / np.where(opposite, 1.0, 1.0 + c)[..., None, None]
    if opposite.any():  # half turn about an axis perpendicular to a
        e = np.eye(3)[np.argmin(np.abs(au), axis=-1)]
        u = np.cross(au, e)
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        half = 2.0 * u[..., :, None] * u[..., None, :] - np.eye(3)
        R = np.where(opposite[..., None, None], half, R)
    return np.where(ok[..., None, None], R, np.eye(3))


def world_rotations(world: np.ndarray, tree: SkeletonTree) -> np.ndarray:
    """Bone orientations [T, N, 3, 3] of joints at positions world [T, N, 3] (see the module docstring)."""
    T, N, _ = world.shape
    R = np.tile(np.eye(3), (T, N, 1, 1))
    for j in tree.order:
        c = tree.primary[j]
        if c >= 0:
            bone = world[:, c] - world[:, j]  # [T, 3]
            R[:, j] = minimal_rotation(bone[0], bone)
        elif tree.parent[j] >= 0:
            R[:, j] = R[:, tree.parent[j]]
    return R


def local_transforms(world: np.ndarray, tree: SkeletonTree, R_world: np.ndarray) -> np.ndarray:
    """Translations [T, N, 3] of each joint in its parent's rotated frame (the root's: its world position)."""
    t = world.astype(np.float64).copy()
    for j in tree.order:
        p = tree.parent[j]
        if p >= 0:
            t[:, j] = np.einsum("tji,tj->ti", R_world[:, p], world[:, j] - world[:, p])  # R_pᵀ (x_j − x_p)
    return t


def euler_zxy(R: np.ndarray) -> np.ndarray:
    """Angles [..., 3] (z, x, y) in degrees with R = Rz(z) · Rx(x) · Ry(y), for rotations R [..., 3, 3]."""
    x = np.arctan2(R[..., 2, 1], np.hypot(R[..., 0, 1], R[..., 1, 1]))
    lock = np.hypot(R[..., 0, 1], R[..., 1, 1]) < 1e-9  # x = ±90°: only z ± y is defined; take y = 0
    z = np.where(lock, np.arctan2(R[..., 1, 0], R[..., 0, 0]), np.arctan2(-R[..., 0, 1], R[..., 1, 1]))
    y = np.where(lock, 0.0, np.arctan2(-R[..., 2, 0], R[..., 2, 2]))
    return np.degrees(np.stack([z, x, y], axis=-1))


def zxy_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotations [..., 3, 3] = Rz(z) · Rx(x) · Ry(y) from angles [..., 3] (z, x, y) in degrees."""
    z, x, y = np.radians(np.moveaxis(np.asarray(angles, np.float64), -1, 0))
    one, zero = np.ones_like(z), np.zeros_like(z)

    def mat(rows):
        return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)

    Rz = mat([[np.cos(z), -np.sin(z), zero], [np.sin(z), np.cos(z), zero], [zero, zero, one]])
    Rx = mat([[one, zero, zero], [zero, np.cos(x), -np.sin(x)], [zero, np.sin(x), np.cos(x)]])
    Ry = mat([[np.cos(y), zero, np.sin(y)], [zero, one, zero], [-np.sin(y), zero, np.cos(y)]])
    return Rz @ Rx @ Ry


def matrix_to_quat_xyzw(R: np.ndarray) -> np.ndarray:
    """Unit quaternions [..., 4] in glTF's (x, y, z, w) order of rotations R [..., 3, 3] (w >= 0)."""
    R = np.asarray(R, np.float64)
    m00, m11, m22 = R[..., 0, 0], R[..., 1, 1], R[..., 2, 2]
    # the largest of 4w², 4x², 4y², 4z² gives a well-conditioned start
    cand = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    k = np.argmax(cand, axis=-1)
    s = 2.0 * np.sqrt(np.maximum(np.take_along_axis(cand, k[..., None], -1)[..., 0], 1e-30))
    r = {(i, j): R[..., i, j] for i in range(3) for j in range(3)}
    d21, d02, d10 = r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]
    s01, s02, s12 = r[0, 1] + r[1, 0], r[0, 2] + r[2, 0], r[1, 2] + r[2, 1]
    cases = [  # (w, x, y, z) · s for each choice of the largest component
        (s * s / 4, d21, d02, d10), (d21, s * s / 4, s01, s02), (d02, s01, s * s / 4, s12), (d10, s02, s12, s * s / 4),
    ]
    q = np.zeros(R.shape[:-2] + (4,))  # w, x, y, z
    for case, comps in enumerate(cases):
        sel = k == case
        q[sel] = (np.stack(comps, -1) / s[..., None])[sel]
    q *= np.where(q[..., :1] < 0, -1.0, 1.0)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q[..., [1, 2, 3, 0]]


# --------------------------------------------------------------------------------------------------
# BVH
# --------------------------------------------------------------------------------------------------

BVH_CHANNELS = "Xposition Yposition Zposition Zrotation Xrotation Yrotation"


def bvh_motion(world: np.ndarray, tree: SkeletonTree, decimals: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(translations [T, N, 3], angles [T, N, 3] (z, x, y) in degrees) of the BVH channels, rounded to
    `decimals`; translations are computed with the rounded angles, so that forward kinematics of the written
    numbers reproduces `world` [T, N, 3] to the rounding of the translations."""
    world = np.asarray(world, np.float64)
    R_world = world_rotations(world, tree)
    T, N = world.shape[:2]
    angles = np.zeros((T, N, 3))
    for j in tree.order:
        p = tree.parent[j]
        local = R_world[:, j] if p < 0 else np.swapaxes(R_world[:, p], -1, -2) @ R_world[:, j]
        angles[:, j] = np.round(euler_zxy(local), decimals)
    fk = np.zeros_like(R_world)  # world rotations rebuilt from the rounded angles
    for j in tree.order:
        p = tree.parent[j]
        fk[:, j] = zxy_matrix(angles[:, j]) if p < 0 else fk[:, p] @ zxy_matrix(angles[:, j])
    return np.round(local_transforms(world, tree, fk), decimals), angles


def write_bvh(path: str | Path, world: np.ndarray, tree: SkeletonTree, fps: float) -> Path:
    """BVH of joint positions world [T, N, 3] (see the module docstring); written atomically."""
    world = np.asarray(world, np.float64)
    trans, angles = bvh_motion(world, tree)
    children = [tree.children(i) for i in range(len(tree.parent))]
    scale = float(np.linalg.norm(world[0].max(0) - world[0].min(0))) or 1.0

    def fmt(v: np.ndarray) -> str:
        return " ".join(f"{round(float(x), 6) + 0.0:.6f}" for x in v)  # + 0.0: no "-0.000000"

    lines = ["HIERARCHY"]

    def emit(j: int, depth: int) -> None:
        pad = "  " * depth
        p = tree.parent[j]
        lines.append(f"{pad}{'ROOT' if p < 0 else 'JOINT'} {tree.names[j]}")
        lines.append(f"{pad}{{")
        lines.append(f"{pad}  OFFSET {fmt(np.zeros(3) if p < 0 else trans[0, j])}")
        lines.append(f"{pad}  CHANNELS 6 {BVH_CHANNELS}")
        for c in children[j]:
            emit(c, depth + 1)
        if not children[j]:
            tip = 0.5 * (world[0, j] - world[0, p]) if p >= 0 else np.zeros(3)
            if np.linalg.norm(tip) < 1e-9:
                tip = np.array([0.0, 0.05 * scale, 0.0])
            lines.extend([f"{pad}  End Site", f"{pad}  {{", f"{pad}    OFFSET {fmt(tip)}", f"{pad}  }}"])
        lines.append(f"{pad}}}")

    emit(tree.root, 0)
    T = world.shape[0]
    lines += ["MOTION", f"Frames: {T}", f"Frame Time: {1.0 / fps:.6f}"]
    for f in range(T):
        lines.append(" ".join(fmt(np.concatenate([trans[f, j], angles[f, j]])) for j in tree.order))
    return write_bytes(Path(path), ("\n".join(lines) + "\n").encode("ascii"))


# --------------------------------------------------------------------------------------------------
# glTF 2.0 binary
# --------------------------------------------------------------------------------------------------

def write_glb(path: str | Path, world: np.ndarray, tree: SkeletonTree, fps: float,
              extras: dict[str, Any] | None = None) -> Path:
    """glTF 2.0 binary of joint positions world [T, N, 3] (see the module docstring), written with pygltflib."""
    world = np.asarray(world, np.float64)
    T, N = world.shape[:2]
    R_world = world_rotations(world, tree)
    trans = local_transforms(world, tree, R_world)  # [T, N, 3]
    quats = np.zeros((T, N, 4))
    for j in range(N):
        p = tree.parent[j]
        local = R_world[:, j] if p < 0 else np.swapaxes(R_world[:, p], -1, -2) @ R_world[:, j]
        quats[:, j] = matrix_to_quat_xyzw(local)

    b = GlbBuilder()
    g, gltf, accessor = b.g, b.gltf, b.accessor
    for j in range(N):
        gltf.nodes.append(g.Node(name=tree.names[j], children=tree.children(j),
                                 translation=trans[0, j].astype(np.float32).tolist(),
                                 rotation=quats[0, j].astype(np.float32).tolist()))

    # skin + a line mesh of every support bone, each vertex bound to its joint at the frame-0 pose
    rest = world[0]
    ibm = np.tile(np.eye(4), (N, 1, 1))
    ibm[:, :3, 3] = -rest  # frame 0: every joint's world rotation is the identity
    skin_ibm = accessor(np.transpose(ibm, (0, 2, 1)).reshape(N, 16), FLOAT, "MAT4")  # column-major
    pos = accessor(rest, FLOAT, "VEC3", ARRAY_BUFFER, minmax=True)
    joints = np.zeros((N, 4), np.uint16)
    joints[:, 0] = np.arange(N)
    weights = np.zeros((N, 4), np.float32)
    weights[:, 0] = 1.0
    attrs = g.Attributes(POSITION=pos, JOINTS_0=accessor(joints, USHORT, "VEC4", ARRAY_BUFFER),
                         WEIGHTS_0=accessor(weights, FLOAT, "VEC4", ARRAY_BUFFER))
    if tree.edges:
        idx = accessor(np.asarray(tree.edges, np.uint32).reshape(-1), UINT, "SCALAR", ELEMENT_ARRAY_BUFFER)
        prim = g.Primitive(attributes=attrs, indices=idx, mode=g.LINES)
    else:
        prim = g.Primitive(attributes=attrs, mode=g.POINTS)
    gltf.meshes.append(g.Mesh(name="support_skeleton", primitives=[prim]))
    gltf.skins.append(g.Skin(name="skeleton", joints=list(range(N)), skeleton=tree.root,
                             inverseBindMatrices=skin_ibm))
    gltf.nodes.append(g.Node(name="support_skeleton", mesh=0, skin=0))

    times = accessor(np.arange(T, dtype=np.float64) / fps, FLOAT, "SCALAR", minmax=True)
    anim = g.Animation(name="tracks")
    for j in range(N):
        for path_name, data, kind in (("translation", trans[:, j], "VEC3"), ("rotation", quats[:, j], "VEC4")):
            anim.samplers.append(g.AnimationSampler(input=times, output=accessor(data, FLOAT, kind),
                                                    interpolation="LINEAR"))
            anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                    target=g.AnimationChannelTarget(node=j, path=path_name)))
    gltf.animations.append(anim)
    gltf.scenes.append(g.Scene(name="dynapose4d", nodes=[tree.root, N], extras=extras or {}))
    gltf.scene = 0
    return b.save(path)


