"""Articulated skeletons for the synthetic scenes: joints, capsules on bones, joint-angle motion, forward kinematics.

A `Rig` is a tree of joints (parents come before children). Every joint has a rest position in world
coordinates; at rest all local frames are aligned with the world, so a joint's local rotation is expressed
in world axes of the rest pose. The rotation of joint j turns the subtree below j (the bones j -> children).
Some joints are hidden (zero-length helpers such as a pelvis or a neck swivel); `keypoints` lists the joints
that are exposed as keypoints, `skeleton` the keypoint pairs drawn as limbs.

Geometry is a list of capsules (tapered cylinders with round caps) between two joints, each driven by one
joint's transform and linearly blended with the neighbouring joints' transforms near its ends.

Templates are plain functions `build(rng) -> Rig` (`dynapose4d.data.rig_templates`, written with `Builder`):
proportions, pose, motion ranges and colours groups come from the seeded generator. All numbers are in template
units; `Rig.normalised()` centres the animated object and scales it into a sphere of a given radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class Capsule:
    """A tapered capsule between joints `a` and `b` (a == b: a sphere at `a`)."""

    a: int
    b: int
    ra: float  # radius at a
    rb: float  # radius at b
    drive: int  # joint whose transform moves the capsule
    blend_a: int = -1  # joint blended in near end a (-1: none)
    blend_b: int = -1  # joint blended in near end b (-1: none)
    group: str = "body"  # colour group (same group = same base colour)
    side: int = 0  # +1 left, -1 right, 0 centre: left and right get different hues


@dataclass(frozen=True)
class Motion:
    """One sinusoidal rotation of a joint: angle(tau) = centre + amp * sin(2 pi freq tau + phase), degrees."""

    joint: int
    axis: tuple[float, float, float]  # unit axis in rest-pose world coordinates
    centre: float
    amp: float
    freq: float
    phase: float  # radians


@dataclass
class Rig:
    """A seeded articulated object in template units (see the module docstring)."""

    names: list[str]  # every joint's name
    parents: list[int]  # parent joint index, -1 for the root; parents[j] < j
    rest: Array  # [J, 3] rest positions
    keypoints: list[int]  # joint indices exposed as keypoints (N)
    skeleton: list[tuple[int, int]]  # keypoint index pairs (into `keypoints`)
    capsules: list[Capsule]
    motions: list[Motion]
    tone_axis: Array = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))  # [3] front/back two-tone axis

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def keypoint_names(self) -> list[str]:
        return [self.names[j] for j in self.keypoints]

    def pose(self, tau: Array) -> tuple[Array, Array]:
        """Forward kinematics at normalised times `tau` [K].

        Returns world rotations [K, J, 3, 3] and joint positions [K, J, 3].
        """
        tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        K, J = tau.shape[0], self.num_joints
        local = np.broadcast_to(np.eye(3), (J, K, 3, 3)).copy()  # [J, K, 3, 3]
        for m in self.motions:
            theta = np.radians(m.centre + m.amp * np.sin(2.0 * math.pi * m.freq * tau + m.phase))  # [K]
            local[m.joint] = local[m.joint] @ axis_angle(np.asarray(m.axis), theta)
        Rw = np.empty((K, J, 3, 3))
        P = np.empty((K, J, 3))
        for j, p in enumerate(self.parents):
            if p < 0:
                Rw[:, j] = local[j]
                P[:, j] = self.rest[j]
            else:
                P[:, j] = P[:, p] + Rw[:, p] @ (self.rest[j] - self.rest[p])
                Rw[:, j] = Rw[:, p] @ local[j]
        return Rw, P

    def rotated(self, R: Array) -> Rig:
        """The rig turned by rotation R [3, 3] about the origin (rest pose, motion axes, two-tone axis)."""
        motions = [replace(m, axis=tuple(float(v) for v in R @ np.asarray(m.axis))) for m in self.motions]
        return replace(self, rest=self.rest @ R.T, motions=motions, tone_axis=R @ self.tone_axis)

    def normalised(self, radius: float, min_radius: float = 0.0, samples: int = 49) -> Rig:
        """The rig centred on its animated bounding box and scaled so that every capsule stays within
        `radius` of the origin at all times (checked at `samples` times in [0, 1]); capsule radii are then
        raised to at least `min_radius` (which may add up to `min_radius` to the reach)."""
        _, P = self.pose(np.linspace(0.0, 1.0, samples))  # [K, J, 3]
        a = np.array([c.a for c in self.capsules])
        b = np.array([c.b for c in self.capsules])
        ra = np.array([c.ra for c in self.capsules])
        rb = np.array([c.rb for c in self.capsules])
        lo = np.minimum((P[:, a] - ra[:, None]).min(axis=(0, 1)), (P[:, b] - rb[:, None]).min(axis=(0, 1)))
        hi = np.maximum((P[:, a] + ra[:, None]).max(axis=(0, 1)), (P[:, b] + rb[:, None]).max(axis=(0, 1)))
        centre = 0.5 * (lo + hi)
        reach = max(
            (np.linalg.norm(P[:, a] - centre, axis=-1) + ra).max(),
            (np.linalg.norm(P[:, b] - centre, axis=-1) + rb).max(),
        )
        k = radius / reach
        caps = [replace(c, ra=max(c.ra * k, min_radius), rb=max(c.rb * k, min_radius)) for c in self.capsules]
        return replace(self, rest=(self.rest - centre) * k, capsules=caps)


# ----------------------------------------------------------------------------------------------- maths


def axis_angle(axis: Array, theta: Array) -> Array:
    """Rotation matrices [K, 3, 3] about a unit `axis` [3] by angles `theta` [K] (radians), Rodrigues."""
    k = axis / np.linalg.norm(axis)
    Kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    return np.eye(3) * c + Kx * s + np.outer(k, k) * (1.0 - c)


def yaw(deg: float) -> Array:
    """Rotation [3, 3] about +y by `deg` degrees."""
    return axis_angle(np.array([0.0, 1.0, 0.0]), np.array([math.radians(deg)]))[0]


def unit(v) -> Array:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def hinge(bone_dir, bend_dir) -> tuple[float, float, float]:
    """Axis that turns a bone pointing along `bone_dir` towards `bend_dir` for positive angles."""
    return tuple(float(x) for x in unit(np.cross(unit(bone_dir), unit(bend_dir))))


def random_unit(rng: np.random.Generator) -> Array:
    return unit(rng.normal(size=3))


# --------------------------------------------------------------------------------------------- builder


class Builder:
    """Collects joints, capsules and motions for a template (`dynapose4d.data.rig_templates`)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.names: list[str] = []
        self.parents: list[int] = []
        self.pos: list[Array] = []
        self.is_kp: list[bool] = []
        self.capsules: list[Capsule] = []
        self.motions: list[Motion] = []
        self.freq = float(rng.uniform(0.6, 1.1))  # cycles over the clip, shared by the joints of one object

    def joint(self, name: str, parent: str | None, pos, keypoint: bool = True) -> int:
        self.names.append(name)
        self.parents.append(-1 if parent is None else self.names.index(parent))
        self.pos.append(np.asarray(pos, dtype=np.float64))
        self.is_kp.append(keypoint)
        return len(self.names) - 1

    def p(self, name: str) -> Array:
        return self.pos[self.names.index(name)]

    def bone(self, a: str, b: str, ra: float, rb: float | None = None, group: str = "body", side: int = 0,
             drive: str | None = None) -> None:
        """Capsule on the bone a -> b (b a child of a: driven by a, blended with a's parent and with b)."""
        ia, ib = self.names.index(a), self.names.index(b)
        d = ia if drive is None else self.names.index(drive)
        if d == ia:
            blend_a, blend_b = self.parents[ia], ib
        else:  # a connector between joints that are not parent and child
            blend_a, blend_b = ia, ib
        self.capsules.append(Capsule(ia, ib, ra, ra if rb is None else rb, d, blend_a, blend_b, group, side))

    def sphere(self, a: str, r: float, group: str = "body", side: int = 0) -> None:
        ia = self.names.index(a)
        self.capsules.append(Capsule(ia, ia, r, r, ia, -1, -1, group, side))

    def move(self, joint: str, axis, lo: float, hi: float, amp_frac: tuple[float, float] = (0.6, 1.0),
             phase: float | None = None) -> None:
        """Oscillate `joint` about `axis` within the angle range [lo, hi] degrees (random centre jitter,
        amplitude a random fraction of the half range, random phase unless given)."""
        rng = self.rng
        half = 0.5 * (hi - lo)
        amp = half * rng.uniform(*amp_frac)
        centre = 0.5 * (lo + hi) + rng.uniform(-1.0, 1.0) * (half - amp)
        ph = rng.uniform(0.0, 2.0 * math.pi) if phase is None else phase
        freq = self.freq * rng.choice([1.0, 1.0, 1.0, 0.5, 1.5])
        self.motions.append(Motion(self.names.index(joint), tuple(float(x) for x in unit(axis)), float(centre),
                                   float(amp), float(freq), float(ph)))

    def rig(self, skeleton_names: list[tuple[str, str]], tone_axis, order: list[str] | None = None) -> Rig:
        """The finished rig; keypoints in joint order, or in `order` (names of every keypoint joint)."""
        kps = [j for j, k in enumerate(self.is_kp) if k]
        if order is not None:
            assert sorted(order) == sorted(self.names[j] for j in kps), "order must list every keypoint"
            kps = [self.names.index(n) for n in order]
        kp_index = {self.names[j]: i for i, j in enumerate(kps)}
        skeleton = [(kp_index[a], kp_index[b]) for a, b in skeleton_names]
        return Rig(list(self.names), list(self.parents), np.stack(self.pos), kps, skeleton, list(self.capsules),
                   list(self.motions), unit(tone_axis))
