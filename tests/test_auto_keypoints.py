"""Automatic keypoints from a mask (dynapose4d/data/auto_keypoints.py): on hand-drawn shapes and on the masks of
both scene generators, every keypoint and every bone lies inside the mask (checked here pixel by pixel, no
tolerance), there are 8-20 keypoints, the skeleton is a tree, keypoints sit on the medial axis, and the ends land
where the shapes' extremities are (positions known from how the shapes are drawn)."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import _fakes
import numpy as np
import pytest

from dynapose4d.data.auto_keypoints import auto_keypoints

S = 128  # shape image size


# ------------------------------------------------------------------------------------------------ shapes


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S] + 0.5
    return yy, xx


def _capsule(yy, xx, a, b, r) -> np.ndarray:
    """Pixels within r of the segment a -> b ((x, y) points)."""
    a, b = np.array(a, float), np.array(b, float)
    p = np.stack([xx, yy], -1) - a
    d = b - a
    t = np.clip((p @ d) / (d @ d), 0, 1)
    return ((p - t[..., None] * d) ** 2).sum(-1) <= r * r


STICK_ENDS = [(64, 14), (31, 79), (99, 78), (50, 120), (84, 120)]  # head top, hands, feet (x, y)


def stick_figure() -> np.ndarray:
    yy, xx = _grid()
    m = (yy - 22) ** 2 + (xx - 64) ** 2 <= 81  # head
    for a, b, r in [((64, 30), (64, 75), 6), ((64, 38), (40, 60), 3), ((40, 60), (30, 80), 3),
                    ((64, 38), (92, 55), 3), ((92, 55), (100, 78), 3), ((64, 75), (52, 100), 4),
                    ((52, 100), (50, 120), 4), ((64, 75), (76, 100), 4), ((76, 100), (84, 120), 4)]:
        m |= _capsule(yy, xx, a, b, r)
    return m


def l_shape() -> np.ndarray:
    m = np.zeros((S, S), bool)
    m[20:110, 20:45] = True
    m[85:110, 20:100] = True
    return m


def star() -> np.ndarray:
    yy, xx = _grid()
    ang, r = np.arctan2(yy - 64, xx - 64), np.hypot(yy - 64, xx - 64)
    return r <= 20 + 35 * ((np.cos(5 * ang) + 1) / 2) ** 2  # tips at angles 0, 72, ... degrees


def blob() -> np.ndarray:
    """A lobed blob (a sum of Gaussian bumps, thresholded)."""
    yy, xx = _grid()
    f = sum(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            for cy, cx, s in [(40, 40, 12), (64, 64, 16), (90, 80, 12), (50, 90, 10), (95, 40, 9)])
    return f > 0.5


def with_holes() -> np.ndarray:
    m = l_shape()
    m[92:102, 60:75] = False
    m[50:60, 28:37] = False
    return m


def ring() -> np.ndarray:
    yy, xx = _grid()
    r = np.hypot(yy - 64, xx - 64)
    return (r < 45) & (r > 20)


def bumpy_bar() -> np.ndarray:
    """A thick bar with small bumps on its long sides: each bump grows a spur on the thinned axis."""
    m = np.zeros((S, S), bool)
    m[50:80, 10:118] = True
    for x in range(20, 110, 12):
        m[48:50, x:x + 3] = True
        m[80:83, x + 5:x + 7] = True
    return m


def two_parts() -> np.ndarray:
    yy, xx = _grid()
    return _capsule(yy, xx, (20, 30), (100, 30), 8) | _capsule(yy, xx, (20, 90), (60, 100), 5)


SHAPES = {"stick figure": stick_figure, "L": l_shape, "star": star, "blob": blob, "holes": with_holes,
          "ring": ring, "bumpy bar": bumpy_bar, "two components": two_parts}


# ------------------------------------------------------------------------------------------------ checks


def _pixels_at(mask: np.ndarray, x: float, y: float) -> list[bool]:
    """Mask values of the pixels containing the point (x, y): one pixel, or the 2 or 4 that share the edge or
    corner it lies exactly on. Outside the image counts as background."""
    H, W = mask.shape
    cols = [int(math.floor(x))] + ([int(x) - 1] if x == int(x) else [])
    rows = [int(math.floor(y))] + ([int(y) - 1] if y == int(y) else [])
    return [bool(mask[r, c]) if 0 <= r < H and 0 <= c < W else False for r in rows for c in cols]


def assert_valid(mask: np.ndarray, a, lo: int = 8, hi: int = 20) -> None:
    kp = np.asarray(a.keypoints)
    n = len(kp)
    assert lo <= n <= hi, n
    assert len(a.names) == n and len(set(a.names)) == n
    for x, y in kp:  # every keypoint inside
        assert all(_pixels_at(mask, x, y)), (x, y)
    # a tree: n - 1 distinct bones between distinct keypoints, all connected
    edges = {tuple(sorted(e)) for e in a.skeleton}
    assert len(a.skeleton) == n - 1 == len(edges) and all(i != j for i, j in a.skeleton)
    nbrs = {i: set() for i in range(n)}
    for i, j in a.skeleton:
        nbrs[i].add(j)
        nbrs[j].add(i)
    seen, queue = {0}, deque([0])
    while queue:
        for v in nbrs[queue.popleft()] - seen:
            seen.add(v)
            queue.append(v)
    assert len(seen) == n
    # every bone inside: points every 0.1 px along it, each in a mask pixel (on a pixel edge or corner: in any
    # of the pixels that share it, i.e. the segment may pass between two diagonal mask pixels, nothing more)
    for i, j in a.skeleton:
        p, q = kp[i], kp[j]
        steps = max(1, int(math.ceil(np.hypot(*(q - p)) / 0.1)))
        for t in np.linspace(0.0, 1.0, steps + 1):
            x, y = p + (q - p) * t
            assert any(_pixels_at(mask, float(x), float(y))), f"bone {i}-{j} leaves the mask at ({x:.2f}, {y:.2f})"


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, k = ndimage.label(mask, structure=np.ones((3, 3)))
    return lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))


def _ends(a) -> np.ndarray:
    deg = np.bincount(np.array(a.skeleton).ravel(), minlength=len(a.keypoints))
    return np.asarray(a.keypoints)[deg == 1]


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("name", list(SHAPES))
def test_keypoints_and_bones_inside_a_tree_of_8_to_20(name):
    from skimage.morphology import skeletonize

    mask = SHAPES[name]()
    a = auto_keypoints(mask)
    assert_valid(mask, a)
    # on the medial axis: every keypoint is the centre of a pixel of the mask's (largest part's) thinning
    axis = skeletonize(_largest(mask))
    for x, y in a.keypoints:
        assert x % 1 == 0.5 and y % 1 == 0.5 and axis[int(y), int(x)], (x, y)
    b = auto_keypoints(mask.copy())  # deterministic
    assert np.array_equal(a.keypoints, b.keypoints) and a.skeleton == b.skeleton and a.names == b.names


def test_stick_figure_ends_at_head_hands_and_feet():
    a = auto_keypoints(stick_figure())
    ends = _ends(a)
    assert len(ends) == 5, ends
    for e in STICK_ENDS:  # each extremity has an end keypoint within its limb's thickness + a few px
        assert np.hypot(*(ends - np.array(e)).T).min() < 10, (e, ends)


def test_star_has_one_end_per_arm():
    a = auto_keypoints(star())
    ends = _ends(a)
    assert len(ends) == 5
    ang = np.sort(np.degrees(np.arctan2(ends[:, 1] - 64, ends[:, 0] - 64)) % 360)
    np.testing.assert_allclose(ang, [0, 72, 144, 216, 288], atol=8)
    assert (np.hypot(ends[:, 0] - 64, ends[:, 1] - 64) > 35).all()  # out along the arms


def test_spurs_are_pruned():
    # the L's outer corner and the bar's bumps grow spurs on the thinned axis; pruned, only the real ends remain
    ends = _ends(auto_keypoints(l_shape()))
    assert len(ends) == 2
    assert min(ends[:, 1]) < 40 and max(ends[:, 0]) > 80  # up the vertical arm, out along the horizontal one
    a = auto_keypoints(bumpy_bar())
    ends = _ends(a)
    assert len(ends) == 2 and ends[:, 0].min() < 35 and ends[:, 0].max() > 95, ends  # one at each end of the bar
    middle = a.keypoints[(a.keypoints[:, 0] > 35) & (a.keypoints[:, 0] < 95)]
    assert len(middle) >= 4 and (np.abs(middle[:, 1] - 65.0) < 2).all(), middle  # none out in a bump


def test_loops_are_broken_and_the_ring_is_covered():
    a = auto_keypoints(ring())
    ang = np.degrees(np.arctan2(a.keypoints[:, 1] - 64, a.keypoints[:, 0] - 64)) % 360
    gaps = np.diff(np.sort(np.concatenate([ang, ang[:1] + 360]) % 360))
    assert 360 - np.sort(ang)[-1] + np.sort(ang)[0] < 90 and gaps.max() < 90  # keypoints all round the ring
    assert_valid(ring(), a)


def test_several_components_use_the_largest():
    mask = two_parts()
    a = auto_keypoints(mask)
    big = _largest(mask)
    assert all(big[int(y), int(x)] for x, y in a.keypoints)


@pytest.mark.parametrize("mask,words", [
    (np.zeros((S, S), bool), "empty"),
    (np.pad(np.ones((4, 5), bool), 40), "only 20 pixels"),
    ((lambda yy, xx: (yy - 64) ** 2 + (xx - 64) ** 2 <= 40 ** 2)(*_grid()), "too round"),
])
def test_too_little_object_is_a_one_line_error(mask, words):
    with pytest.raises(ValueError) as e:
        auto_keypoints(mask)
    assert words in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ scene masks


def _alpha(path: Path) -> np.ndarray:
    from dynapose4d.core.io import read_image

    return read_image(path)[..., 3].numpy() > 0.5


@pytest.mark.parametrize("template", ["humanoid", "quadruped", "lamp", "hand", "bird", "random"])
def test_synthetic_scene_masks(template, tmp_path):
    from dynapose4d.data.synthetic import write_scene

    root = write_scene(template, tmp_path / template, seed=1, num_frames=1, size=96)
    mask = _alpha(root / "image.png")
    assert_valid(mask, auto_keypoints(mask))


@pytest.mark.parametrize("template", ["puppet", "spider", "crane", "eel"])
def test_second_generator_masks(template, tmp_path):
    root = _fakes.load_sdf_scenes().make_scene(template, tmp_path / template, seed=0, frames=1, size=64)
    mask = _alpha(root / "image.png")
    assert_valid(mask, auto_keypoints(mask))


def test_a_large_mask_gets_its_keypoints_on_a_shrunk_copy(tmp_path, monkeypatch):
    """A 2560-px stick figure (the 128-px one, 20 times larger): the scene's automatic keypoints are made on its
    mask shrunk by k = 2 (`AUTO_MAX_SIDE` 1024) and scaled back; they agree with the ones made at full size (same
    ends and count, ends within 1% of the figure's size) and lie inside the mask."""
    import torch

    import dynapose4d.data.scene as scene_mod

    big = np.kron(stick_figure(), np.ones((20, 20), bool))  # [2560, 2560]
    image = torch.zeros(*big.shape, 4)
    image[..., 3] = torch.from_numpy(big).float()
    shrunk = scene_mod._auto_keypoints(image, tmp_path / "p.png", has_camera=False)
    monkeypatch.setattr(scene_mod, "AUTO_MAX_SIDE", 10**6)
    whole = scene_mod._auto_keypoints(image, tmp_path / "p.png", has_camera=False)
    e1, e2 = _ends(shrunk), _ends(whole)
    assert len(e1) == len(e2) == 5 and len(shrunk.keypoints) == len(whole.keypoints)
    gap = np.hypot(*(e1[:, None] - e2[None]).transpose(2, 0, 1)).min(1)  # each shrunk end to its nearest
    side = 2560 * (120 - 5) / 128  # the figure's height, px
    assert gap.max() < 0.01 * side, gap
    for e in STICK_ENDS:  # the true extremities, 20 times larger
        assert np.hypot(*(e1 - 20 * np.array(e)).T).min() < 200
    ij = np.floor(shrunk.keypoints).astype(int)
    assert big[ij[:, 1], ij[:, 0]].all()


def _prune_one_at_a_time(graph, spur_ratio: float, gap: float) -> None:
    """Reference for `_AxisGraph.prune_spurs`: walk every terminal branch again after each removal and remove the
    spur of least reach (ties by end pixel)."""
    while True:
        spurs = []
        for _, e, p in graph.terminal_branches():
            reach = graph.reach(p)
            if reach < spur_ratio * graph.radius[p[-1]] or reach < gap:
                spurs.append((reach, e, p))
        if not spurs:
            return
        graph.remove(min(spurs, key=lambda s: (s[0], s[1]))[2])


def _noisy_blob(size: int, seed: int) -> np.ndarray:
    """A blob with a ragged outline (smoothed noise thresholded): its medial axis has hundreds of spurs."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 1.0 - 4 * ((yy - 0.5) ** 2 + (xx - 0.5) ** 2)
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.5)
    return base + 0.6 * noise / noise.std() > 0.55


def test_pruning_spurs_by_heap_equals_pruning_them_one_walk_at_a_time(tmp_path):
    """The heap-ordered pruning leaves exactly the tree the plain loop leaves (same removals in the same order:
    least reach first), on clean shapes, a synthetic scene's mask and ragged blobs with hundreds of spurs."""
    import copy

    from dynapose4d.data.auto_keypoints import _AxisGraph
    from dynapose4d.data.synthetic import write_scene

    scene = write_scene("quadruped", tmp_path / "q", seed=0, num_frames=1, size=128)
    masks = [l_shape(), bumpy_bar(), _alpha(scene / "image.png"), _noisy_blob(160, 0), _noisy_blob(200, 1)]
    spurs_seen = []
    for mask in masks:
        from scipy import ndimage

        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
        obj = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
        for ratio, gap in ((0.5, 4.0), (0.5, 12.0)):
            g0 = _AxisGraph(obj)
            fast, ref = copy.copy(g0), copy.copy(g0)
            fast.adj, ref.adj = [set(a) for a in g0.adj], [set(a) for a in g0.adj]
            spurs_seen.append(len(ref.terminal_branches()))
            fast.prune_spurs(ratio, gap)
            _prune_one_at_a_time(ref, ratio, gap)
            assert fast.adj == ref.adj
    assert max(spurs_seen) > 100  # the ragged blobs do have many spurs


def test_a_branch_that_becomes_a_spur_when_its_junction_goes_is_pruned():
    """A thick body's centre J (radius 40) with arms left and up, and a thin arm right that forks at j (radius 5)
    into a long twig A and a stub B. Only B is a spur at first; once it is gone j is no junction, A runs on to J,
    and there its reach is far below half J's radius: A must go too (the heap has to take A in at that point)."""
    import copy

    from dynapose4d.data.auto_keypoints import _AxisGraph

    coords, radius = [(0, 0)], [40.0]  # 0: J

    def chain(start: int, steps: list[tuple[int, int]], r: float) -> list[int]:
        ids, prev = [], start
        for c in steps:
            coords.append(c)
            radius.append(r)
            ids.append(len(coords) - 1)
            edges.append((prev, ids[-1]))
            prev = ids[-1]
        return ids

    edges: list[tuple[int, int]] = []
    chain(0, [(0, -x) for x in range(1, 60)], 20.0)  # left arm
    chain(0, [(-y, 0) for y in range(1, 60)], 20.0)  # up arm
    right = chain(0, [(0, x) for x in range(1, 11)], 5.0)  # to j = (0, 10)
    j = right[-1]
    chain(j, [(0, x) for x in range(11, 21)], 3.0)  # A: ten pixels on
    chain(j, [(-1, 10)], 1.0)  # B: one pixel up
    g = _AxisGraph.__new__(_AxisGraph)
    g.coords, g.radius = np.array(coords, dtype=np.float64), np.array(radius)
    g.adj = [set() for _ in coords]
    for a, b in edges:
        g.adj[a].add(b)
        g.adj[b].add(a)
    ref = copy.copy(g)
    ref.adj = [set(a) for a in g.adj]
    g.prune_spurs(0.5, 1.0)
    _prune_one_at_a_time(ref, 0.5, 1.0)
    assert g.adj == ref.adj
    assert not g.adj[right[0]] and len(g.adj[0]) == 2  # the whole right arm is gone: a path left to up
