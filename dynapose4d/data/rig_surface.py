"""A rig's capsules covered with flat Gaussians (a closed surface, rest pose): their placement and shape, their
colours (per bone group, with bands along the bone, left/right hue shifts and a front/back two-tone, so that
keypoints can be told apart from any view) and their skinning (rigid per bone, linearly blended with the
neighbouring joint near each end). `dynapose4d.data.synthetic` builds its objects from it.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import numpy as np

from dynapose4d.data import rig as rigs

TANGENT_SCALE = 0.55  # Gaussian std along the surface, as a fraction of the local spacing
NORMAL_SCALE = 0.15  # Gaussian std across the surface, as a fraction of the spacing


def cover_rig(rig: rigs.Rig, num_gaussians: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Gaussians covering every capsule of `rig` (rest pose), with colours and skinning."""
    caps = rig.capsules
    area = 0.0
    for c in caps:
        L = float(np.linalg.norm(rig.rest[c.b] - rig.rest[c.a]))
        area += math.pi * (c.ra + c.rb) * L + 2.0 * math.pi * (c.ra**2 + c.rb**2)
    spacing = float(np.clip(math.sqrt(area / num_gaussians), 0.008, 0.08))
    palette = _palette(rig, rng)
    parts: list[dict[str, np.ndarray]] = []
    for ci, c in enumerate(caps):
        a, b = rig.rest[c.a], rig.rest[c.b]
        s = _capsule_surface(a, b, c.ra, c.rb, spacing)
        L = s["length"]
        n = s["means"].shape[0]
        x = s["x"]
        # skinning: the drive joint, blended with the joint at the nearer end
        wa = np.zeros(n)
        wb = np.zeros(n)
        if L > 1e-9 and c.blend_a >= 0 and c.blend_a != c.drive:
            wa = 0.5 * np.clip(1.0 - x / min(1.5 * c.ra, 0.5 * L), 0.0, 1.0)
        if L > 1e-9 and c.blend_b >= 0 and c.blend_b != c.drive:
            wb = 0.5 * np.clip(1.0 - (L - x) / min(1.5 * c.rb, 0.5 * L), 0.0, 1.0)
        use_a = wa >= wb
        partner = np.where(use_a, c.blend_a, c.blend_b)
        w = np.where(use_a, wa, wb)
        partner = np.where(w > 0, partner, c.drive)
        s["drive"] = np.full(n, c.drive, dtype=np.int64)
        s["partner"] = partner.astype(np.int64)
        s["weight"] = w
        s["colors"] = palette(ci, s["u"], s["normals"])
        parts.append(s)
    out = {k: np.concatenate([p[k] for p in parts]) for k in
           ("means", "rot", "scales", "colors", "drive", "partner", "weight")}
    out["quats"] = matrix_to_quat(out.pop("rot"))
    out["kp_radius"] = _inner_depth(rig)
    return out


def _inner_depth(rig: rigs.Rig) -> np.ndarray:
    """For each keypoint [N], a bound on how far the surface of the capsules that contain it (at rest) can lie
    from it: max over those capsules of (radius + distance to the axis). A keypoint inside a body blob
    (a hip inside the torso) is not hidden by that blob."""
    a = rig.rest[[c.a for c in rig.capsules]][None]  # [1, C, 3]
    d = rig.rest[[c.b for c in rig.capsules]][None] - a  # [1, C, 3]
    ra = np.array([c.ra for c in rig.capsules])
    rb = np.array([c.rb for c in rig.capsules])
    x = rig.rest[rig.keypoints][:, None]  # [N, 1, 3]
    t = np.clip(((x - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0.0, 1.0)  # [N, C]
    dist = np.linalg.norm(a + t[..., None] * d - x, axis=-1)  # [N, C]
    r = ra + t * (rb - ra)
    return np.where(dist < r, r + dist, 0.0).max(axis=1)


def _capsule_surface(a: np.ndarray, b: np.ndarray, ra: float, rb: float, s: float) -> dict:
    """Flat Gaussians on the surface of a tapered capsule a -> b (radii ra, rb) about `s` apart.

    Returns means [M,3], normals [M,3], rot [M,3,3] (columns: the local axes), scales [M,3], x [M] (axial
    distance from a), u [M] (x / length clamped to [0, 1]) and the length.
    """
    d = b - a
    L = float(np.linalg.norm(d))
    e = d / L if L > 1e-9 else np.array([0.0, 1.0, 0.0])
    helper = np.array([1.0, 0.0, 0.0]) if abs(e[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    eu = np.cross(e, helper)
    eu /= np.linalg.norm(eu)
    ev = np.cross(e, eu)
    # the profile (axial x, radius rho) from the tip at a to the tip at b, resampled by arc length
    phi = np.linspace(0.0, 0.5 * math.pi, 24)
    prof = [np.stack([-ra * np.cos(phi), ra * np.sin(phi)], -1)]
    if L > 1e-9:
        prof.append(np.stack([np.linspace(0.0, L, 16), np.linspace(ra, rb, 16)], -1))
    prof.append(np.stack([L + rb * np.cos(phi[::-1]), rb * np.sin(phi[::-1])], -1))
    poly = np.concatenate(prof)
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=-1)
    keep = np.concatenate([[True], seg > 1e-12])
    poly = poly[keep]
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(poly, axis=0), axis=-1))])
    total = cum[-1]
    n_rings = max(2, int(math.ceil(total / s))) + 1
    arc = np.linspace(0.0, total, n_rings)
    ds = arc[1] - arc[0]
    x = np.interp(arc, cum, poly[:, 0])
    rho = np.interp(arc, cum, poly[:, 1])
    tx, tr = np.gradient(x), np.gradient(rho)
    tn = np.hypot(tx, tr)
    tx, tr = tx / tn, tr / tn
    counts = np.maximum(1, np.round(2.0 * math.pi * rho / s)).astype(np.int64)
    counts[0] = counts[-1] = 1  # the two tips
    ring = np.repeat(np.arange(n_rings), counts)
    first = np.cumsum(counts) - counts
    idx = np.arange(ring.shape[0]) - first[ring]
    theta = 2.0 * math.pi * (idx + 0.5 * (ring % 2)) / counts[ring]
    radial = np.cos(theta)[:, None] * eu + np.sin(theta)[:, None] * ev  # [M, 3]
    xr, rr = x[ring], rho[ring]
    means = a + xr[:, None] * e + rr[:, None] * radial
    t1 = tx[ring][:, None] * e + tr[ring][:, None] * radial  # along the profile
    normal = -tr[ring][:, None] * e + tx[ring][:, None] * radial  # outwards
    n_, t_ = normal, t1
    t2 = np.stack([n_[:, 1] * t_[:, 2] - n_[:, 2] * t_[:, 1], n_[:, 2] * t_[:, 0] - n_[:, 0] * t_[:, 2],
                   n_[:, 0] * t_[:, 1] - n_[:, 1] * t_[:, 0]], -1)  # normal x t1: [t1, t2, normal] right-handed
    R = np.stack([t1, t2, normal], axis=-1)  # [M, 3, 3] columns: local x, y, z
    circ = 2.0 * math.pi * rr / counts[ring]
    s_circ = np.where(counts[ring] > 1, circ, ds)
    scales = np.stack([np.full_like(xr, TANGENT_SCALE * ds), TANGENT_SCALE * np.maximum(s_circ, 0.5 * s),
                       np.full_like(xr, NORMAL_SCALE * s)], axis=-1)
    u = np.clip(xr / L, 0.0, 1.0) if L > 1e-9 else np.clip(0.5 + xr / (2.0 * ra), 0.0, 1.0)
    return {"means": means, "normals": normal, "rot": R, "scales": scales, "x": xr, "u": u, "length": L}


def _palette(rig: rigs.Rig, rng: np.random.Generator) -> Callable[[int, np.ndarray, np.ndarray], np.ndarray]:
    """Colour function (capsule index, axial u [M], normals [M,3]) -> RGB [M,3] for the rig's capsules.

    Each colour group gets a distinct hue (golden-ratio spacing from a random start), saturation and value
    away from white; left and right sides of a group are shifted in hue and value; a group has 1-3 bands
    along the bone (alternate bands darker or in the complementary hue); surfaces facing along the rig's
    two-tone axis are lighter and those facing away darker.
    """
    groups = list(dict.fromkeys(c.group for c in rig.capsules))
    h0 = rng.uniform()
    style = {}
    for i, g in enumerate(groups):
        style[g] = (
            (h0 + 0.618034 * i + rng.uniform(-0.05, 0.05)) % 1.0,  # hue
            rng.uniform(0.5, 0.95),  # saturation
            rng.uniform(0.45, 0.9),  # value
            int(rng.integers(1, 4)),  # bands
            int(rng.integers(0, 2)),  # band style: darker or complementary
        )
    side_shift = rng.uniform(0.08, 0.15)
    axis = rig.tone_axis

    def colour(ci: int, u: np.ndarray, normals: np.ndarray) -> np.ndarray:
        c = rig.capsules[ci]
        h, s, v, bands, bstyle = style[c.group]
        h = (h + side_shift * c.side) % 1.0
        v = float(np.clip(v + 0.12 * c.side, 0.3, 0.95))
        base = np.array(colorsys.hsv_to_rgb(h, s, v))
        alt = base * 0.5 if bstyle == 0 else np.array(colorsys.hsv_to_rgb((h + 0.5) % 1.0, s, v))
        band = np.floor(np.clip(u, 0.0, 0.999) * bands).astype(np.int64) % 2
        rgb = np.where(band[:, None] == 1, alt, base)
        f = np.clip((normals @ axis) / 0.3, -1.0, 1.0)[:, None]
        rgb = np.where(f > 0, rgb + 0.35 * f * (1.0 - rgb), rgb * (1.0 + 0.35 * f))
        return rgb

    return colour


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z), w >= 0."""
    m = R.reshape(-1, 3, 3)
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([
        np.stack([1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        np.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                  m[:, 0, 2] + m[:, 2, 0]], -1),
        np.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                  m[:, 1, 2] + m[:, 2, 1]], -1),
        np.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                  1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)  # [M, 4 candidates, 4]; candidate k is exact and well-conditioned when its diagonal term is largest
    k = np.argmax(np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1), axis=-1)
    q = cand[np.arange(m.shape[0]), k]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    q = np.where(q[:, :1] < 0, -q, q)
    return q.reshape(R.shape[:-2] + (4,))
