"""Automatic support keypoints and skeleton from an object's mask, for scenes without keypoints.json.

`auto_keypoints(mask)` follows the mask's medial axis:
  1. the mask's largest 8-connected component is kept (other components get no keypoints: a bone between two
     components would cross the background); fewer than `MIN_AREA` pixels is an error;
  2. its medial axis is the 1-px thinning of `skimage.morphology.skeletonize`, taken as a graph of 8-neighbour
     pixels; each axis pixel's radius r is its distance to the background;
  3. cycles (the axis runs around every hole, and makes little triangles at staircase steps) are broken by a
     minimum spanning tree with edge cost length / r: each loop is cut where the object is thinnest;
  4. spurs are pruned, the shortest first: a terminal branch (end point to junction) shorter than
     `spur_ratio` x the junction's radius, or than the keypoint spacing (thinning grows such branches into
     convex corners and boundary bumps); a tree that is a single path is never pruned;
  5. keypoints go on the end points and junctions (junctions closer than the spacing merge into the wider
     one); consecutive keypoints along the axis are joined by a bone. A bone whose straight segment leaves the
     mask is split at the axis pixel farthest from the segment, until every bone lies inside; then the
     longest bones are split at their middle along the axis until there are `target` keypoints. While there
     are more than `max_points`, the shortest terminal branch is pruned and the keypoints placed again;
  6. the keypoints are numbered breadth-first from the widest one (largest r), so bones are (parent, child)
     pairs: a tree, N - 1 bones, connected. Names say what each is: end07, joint00, mid03.

A bone "inside the mask" crosses only mask pixels (`segment_inside`, exact): it may pass through the shared
corner of two diagonal mask pixels, nothing more. Keypoints are at axis pixel centres, so they are inside.
Deterministic (no randomness).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

MIN_AREA = 30  # fewest object pixels for automatic keypoints


@dataclass
class AutoKeypoints:
    """Keypoints made from a mask: pixels of the mask's image (pixel centres at +0.5), a tree skeleton."""

    keypoints: np.ndarray  # [N, 2] float64 (x, y) pixels
    skeleton: list[tuple[int, int]]  # N - 1 (parent, child) index pairs
    names: list[str]  # N names: end.., joint.., mid.. + index

    def to_json(self) -> dict:
        """The keypoints.json contents ({"keypoints", "skeleton", "names"}) of a scene folder."""
        return {"keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in self.keypoints],
                "skeleton": [[int(i), int(j)] for i, j in self.skeleton], "names": list(self.names)}

    def to_text(self) -> str:
        """`to_json` as JSON text with one keypoint per line (index and name in the order of the lists), easy
        to edit by hand."""
        import json

        d = self.to_json()
        kps = ",\n".join(f"    {json.dumps(p)}" for p in d["keypoints"])
        bones = ", ".join(json.dumps(e) for e in d["skeleton"])
        return (f'{{\n  "keypoints": [\n{kps}\n  ],\n  "skeleton": [{bones}],\n'
                f'  "names": {json.dumps(d["names"])}\n}}\n')


def segment_inside(mask: np.ndarray, p: np.ndarray, q: np.ndarray) -> bool:
    """Whether every pixel whose interior the segment p -> q (pixels (x, y), centres at +0.5) crosses is in `mask`
    [H, W] (outside the image is background). Exact: the segment is cut where it crosses the pixel grid lines,
    and the middle of each piece tells its pixel; a segment through a pixel corner crosses none of the two
    pixels that only touch it there."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    d = q - p
    ts = [np.array([0.0, 1.0])]
    for k in range(2):
        if d[k] != 0.0:
            lo, hi = sorted((p[k], q[k]))
            lines = np.arange(math.ceil(lo), math.floor(hi) + 1, dtype=np.float64)
            ts.append((lines - p[k]) / d[k])
    t = np.unique(np.clip(np.concatenate(ts), 0.0, 1.0))  # [K] sorted crossing parameters
    mid = (t[:-1] + t[1:])[(t[1:] - t[:-1]) > 1e-12] / 2.0 if len(t) > 1 else np.array([0.0])
    pts = p[None] + d[None] * mid[:, None]  # [P, 2] one point inside each crossed pixel
    if len(pts) == 0:
        pts = p[None]
    H, W = mask.shape
    c, r = np.floor(pts[:, 0]).astype(np.int64), np.floor(pts[:, 1]).astype(np.int64)
    ok = (c >= 0) & (c < W) & (r >= 0) & (r < H)
    return bool(ok.all() and mask[r, c].all())


def auto_keypoints(mask: np.ndarray, target: int = 14, min_points: int = 8, max_points: int = 20,
                   spur_ratio: float = 0.5, spacing: float = 0.04, min_gap: float = 0.0) -> AutoKeypoints:
    """Keypoints and a tree skeleton along the medial axis of `mask` [H, W] (bool, or alpha > 0.5), with between
    `min_points` and `max_points` keypoints (`target` when the axis allows). The larger of `spacing` x the mask's
    longer bounding-box side and `min_gap` px is the smallest distance along the axis between keypoints (halved,
    down to 1 px, when the axis is too short for `min_points`). Raises ValueError (one line) when the mask is
    (nearly) empty or its axis cannot hold `min_points` keypoints. See the module docstring for the method."""
    from scipy import ndimage

    m = np.asarray(mask)
    m = m > 0.5 if m.dtype != bool else m
    if m.ndim != 2:
        raise ValueError(f"auto_keypoints: expected a mask [H, W], got shape {m.shape}")
    labels, k = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
    if k == 0:
        raise ValueError("the object mask is empty: no object to place keypoints on")
    sizes = np.bincount(labels.ravel())[1:]
    obj = labels == int(np.argmax(sizes)) + 1  # [H, W] the largest component (first on ties)
    area = int(obj.sum())
    if area < MIN_AREA:
        raise ValueError(f"the object mask has only {area} pixels (at least {MIN_AREA} are needed for automatic "
                         "keypoints)")
    ys, xs = np.nonzero(obj)
    side = float(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    graph = _AxisGraph(obj)
    gap = max(1.0, spacing * side, min_gap)
    while True:  # too short an axis: prune less first (round shapes), then allow closer keypoints
        for ratio in (spur_ratio, spur_ratio / 4.0, 0.0):
            out = _place(graph, obj, gap, target, min_points, max_points, ratio)
            if out is not None:
                return out
        if gap <= 1.0:
            raise ValueError(f"the object's medial axis is too short for {min_points} keypoints (the object is "
                             "too small or too round): give keypoints.json")
        gap = max(1.0, gap / 2.0)


# ------------------------------------------------------------------------------------------------ helpers


class _AxisGraph:
    """The medial axis of a one-component mask as a tree of pixels: coords [M, 2] (row, col), radius [M], and
    adjacency sets (after the spanning tree that breaks cycles)."""

    def __init__(self, obj: np.ndarray):
        from scipy import ndimage
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
        from skimage.morphology import skeletonize

        skel = skeletonize(np.pad(obj, 1))[1:-1, 1:-1] & obj  # [H, W]; padded so the border is background
        dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]  # [H, W] distance to the background
        rows, cols = np.nonzero(skel)
        index = -np.ones(obj.shape, dtype=np.int64)
        index[rows, cols] = np.arange(len(rows))
        H, W = obj.shape
        src, dst, cost = [], [], []
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            r2, c2 = rows + dr, cols + dc
            ok = (r2 >= 0) & (r2 < H) & (c2 >= 0) & (c2 < W)
            j = np.full(len(rows), -1)
            j[ok] = index[r2[ok], c2[ok]]
            has = j >= 0
            i = np.nonzero(has)[0]
            rad = np.minimum(dist[rows[i], cols[i]], dist[rows[j[has]], cols[j[has]]])
            src.append(i)
            dst.append(j[has])
            cost.append(math.hypot(dr, dc) / rad)
        src_a, dst_a, cost_a = np.concatenate(src), np.concatenate(dst), np.concatenate(cost)
        M = len(rows)
        g = coo_matrix((cost_a, (src_a, dst_a)), shape=(M, M)).tocsr()
        # keep the axis component with the most pixels (one per mask component; thinning keeps topology)
        _, comp = connected_components(g, directed=False)
        keep = comp == np.argmax(np.bincount(comp))
        sel = np.nonzero(keep)[0]
        remap = -np.ones(M, dtype=np.int64)
        remap[sel] = np.arange(len(sel))
        e = keep[src_a] & keep[dst_a]
        g = coo_matrix((cost_a[e], (remap[src_a[e]], remap[dst_a[e]])), shape=(len(sel), len(sel))).tocsr()
        tree = minimum_spanning_tree(g).tocoo()
        self.coords = np.stack([rows[sel], cols[sel]], 1)  # [M, 2] (row, col)
        self.radius = dist[rows[sel], cols[sel]].astype(np.float64)  # [M]
        self.adj: list[set[int]] = [set() for _ in range(len(sel))]
        for a, b in zip(tree.row.tolist(), tree.col.tolist()):
            self.adj[a].add(b)
            self.adj[b].add(a)

    def step(self, a: int, b: int) -> float:
        return float(np.hypot(*(self.coords[a] - self.coords[b])))

    def walk(self, start: int, first: int) -> tuple[list[int], float]:
        """Follow the axis from `start` through `first` until a pixel whose degree is not 2: (path, length)."""
        path, length, prev, cur = [start, first], self.step(start, first), start, first
        while len(self.adj[cur]) == 2:
            nxt = next(iter(self.adj[cur] - {prev}))
            length += self.step(cur, nxt)
            path.append(nxt)
            prev, cur = cur, nxt
        return path, length

    def terminal_branches(self) -> list[tuple[float, int, list[int]]]:
        """(length, end pixel, path from the end to its junction) of each branch ending in a junction."""
        out = []
        for e in range(len(self.adj)):
            if len(self.adj[e]) == 1:
                path, length = self.walk(e, next(iter(self.adj[e])))
                if len(self.adj[path[-1]]) >= 3:
                    out.append((length, e, path))
        return out

    def remove(self, path: list[int]) -> None:
        """Remove a terminal branch's pixels (all but its junction, the last)."""
        for a in path[:-1]:
            for b in self.adj[a]:
                self.adj[b].discard(a)
            self.adj[a] = set()

    def reach(self, path: list[int]) -> float:
        """How far a terminal branch's disks (its pixels with their radii) reach beyond its junction's disk."""
        j = path[-1]
        d = np.hypot(*(self.coords[path] - self.coords[j]).T)  # [P]
        return float((d + self.radius[path]).max() - self.radius[j])

    def prune_spurs(self, spur_ratio: float, gap: float) -> None:
        """Remove terminal branches whose reach is below `spur_ratio` x their junction's radius or below `gap`
        px (least reach first, ties by end pixel) until none is left or the tree is a single path.

        One at a time, as the order matters (removing a spur can turn its junction into a plain axis pixel and
        lengthen the branches that ended there), but without walking the whole tree after each removal (a noisy
        mask's axis has hundreds of spurs: 32 s of a 12-megapixel photo's load): a heap of (reach, end) entries,
        each checked against the branch from its end as the tree is now when it comes out, and the branches
        through a junction that stopped being one pushed again."""
        heap: list[tuple[float, int, int]] = []  # (reach, end pixel, junction pixel)

        def push(e: int) -> None:  # the branch from end pixel e as the tree is now, when it is a spur
            if len(self.adj[e]) != 1:
                return
            path, _ = self.walk(e, next(iter(self.adj[e])))
            if len(self.adj[path[-1]]) >= 3:
                reach = self.reach(path)
                if reach < spur_ratio * self.radius[path[-1]] or reach < gap:
                    heapq.heappush(heap, (reach, e, path[-1]))

        for _, e, _p in self.terminal_branches():
            push(e)
        while heap:
            reach, e, j = heapq.heappop(heap)
            if len(self.adj[e]) != 1:
                continue  # removed with another branch
            path, _ = self.walk(e, next(iter(self.adj[e])))
            if path[-1] != j or len(self.adj[j]) < 3 or self.reach(path) != reach:
                push(e)  # it changed since it was pushed: in again with what it is now (if still a spur)
                continue
            self.remove(path)
            if len(self.adj[j]) == 2:  # no longer a junction: the branches that ended there go on through it
                for first in list(self.adj[j]):
                    far, _ = self.walk(j, first)
                    push(far[-1])

    def path_between(self, a: int, b: int) -> list[int]:
        """The tree path of pixels from a to b."""
        parent = {a: -1}
        queue = [a]
        for u in queue:
            if u == b:
                break
            for v in sorted(self.adj[u]):
                if v not in parent:
                    parent[v] = u
                    queue.append(v)
        out = [b]
        while out[-1] != a:
            out.append(parent[out[-1]])
        return out[::-1]


def _arc(graph: _AxisGraph, path: list[int]) -> np.ndarray:
    """Cumulative length [len(path)] along a pixel path."""
    d = np.hypot(*(np.diff(graph.coords[path], axis=0).T)) if len(path) > 1 else np.zeros(0)
    return np.concatenate([[0.0], np.cumsum(d)])


def _xy(graph: _AxisGraph, i: int) -> np.ndarray:
    r, c = graph.coords[i]
    return np.array([c + 0.5, r + 0.5], dtype=np.float64)


def _split_inside(graph: _AxisGraph, obj: np.ndarray, path: list[int]) -> list[list[int]]:
    """Cut a bone's pixel path at the pixel farthest from the straight segment until every piece's segment lies
    inside the mask."""
    p, q = _xy(graph, path[0]), _xy(graph, path[-1])
    if len(path) <= 2 or segment_inside(obj, p, q):
        return [path]
    pts = np.stack([_xy(graph, i) for i in path[1:-1]])  # [P, 2]
    d = q - p
    n = float(np.hypot(*d))
    off = (np.abs(d[0] * (pts[:, 1] - p[1]) - d[1] * (pts[:, 0] - p[0])) / n if n > 0
           else np.hypot(*(pts - p).T))
    k = int(np.argmax(off)) + 1
    return _split_inside(graph, obj, path[:k + 1]) + _split_inside(graph, obj, path[k:])


def _bones(graph: _AxisGraph, gap: float) -> list[list[int]]:
    """Pixel paths between keypoints (end points and junctions, junctions closer than `gap` merged)."""
    nodes = [i for i in range(len(graph.adj)) if len(graph.adj[i]) != 2]
    if not nodes:  # cannot happen for a tree with pixels; kept for safety
        return []
    if len(nodes) == 1 and not graph.adj[nodes[0]]:
        return [[nodes[0]]]
    node_set = set(nodes)
    branches = []
    for u in nodes:
        for v in sorted(graph.adj[u]):
            path, length = graph.walk(u, v) if v not in node_set else ([u, v], graph.step(u, v))
            if path[0] < path[-1]:
                branches.append((path, length))
    # merge junctions joined by a short branch: each group is represented by its widest pixel
    rep = {u: u for u in nodes}

    def find(u: int) -> int:
        while rep[u] != u:
            u = rep[u]
        return u

    for path, length in sorted(branches, key=lambda b: (b[1], b[0][0], b[0][-1])):
        a, b = path[0], path[-1]
        if length < gap and len(graph.adj[a]) >= 3 and len(graph.adj[b]) >= 3:
            ra, rb = find(a), find(b)
            if ra != rb:
                keep, drop = sorted((ra, rb), key=lambda u: (-graph.radius[u], u))
                rep[drop] = keep
    out = []
    for path, _ in branches:
        a, b = find(path[0]), find(path[-1])
        if a == b:
            continue
        full = path
        if a != path[0]:
            full = graph.path_between(a, path[0])[:-1] + full
        if b != path[-1]:
            full = full + graph.path_between(path[-1], b)[1:]
        out.append(full)
    return out


def _place(graph0: _AxisGraph, obj: np.ndarray, gap: float, target: int, min_points: int, max_points: int,
           spur_ratio: float) -> AutoKeypoints | None:
    """Keypoints with spacing `gap`, or None when the axis cannot hold `min_points` of them."""
    import copy

    graph = copy.copy(graph0)
    graph.adj = [set(a) for a in graph0.adj]
    graph.prune_spurs(spur_ratio, gap)
    while True:
        bones = [piece for b in _bones(graph, gap) for piece in _split_inside(graph, obj, b)]
        n = len({i for b in bones for i in (b[0], b[-1])}) if bones else 1
        if n <= max_points:
            break
        branches = graph.terminal_branches()
        if not branches:
            break  # a single path that needs more than max_points pieces to stay inside: keep them all
        graph.remove(min(branches, key=lambda s: (s[0], s[1]))[2])
    if not bones or len(bones[0]) == 1:
        return None
    # split the longest bones at their middle (along the axis) up to `target` keypoints
    heap = [(-float(_arc(graph, b)[-1]), k, b) for k, b in enumerate(bones)]
    heapq.heapify(heap)
    counter = len(heap)
    goal = min(max(target, min_points), max_points)
    while n < goal and heap:
        neg, _, b = heapq.heappop(heap)
        arc = _arc(graph, b)
        if -neg < 2 * gap:
            heapq.heappush(heap, (neg, _, b))
            break
        mid = int(np.argmin(np.abs(arc - arc[-1] / 2.0)))
        mid = min(max(mid, 1), len(b) - 2)
        pieces = [p for half in (b[:mid + 1], b[mid:]) for p in _split_inside(graph, obj, half)]
        n += len(pieces) - 1
        for p in pieces:
            heapq.heappush(heap, (-float(_arc(graph, p)[-1]), counter, p))
            counter += 1
    bones = [b for _, _, b in heap]
    if n < min_points:
        return None
    return _number(graph, bones)


def _number(graph: _AxisGraph, bones: list[list[int]]) -> AutoKeypoints:
    """Number the keypoints breadth-first from the widest and name them by their degree in the keypoint tree."""
    nbrs: dict[int, set[int]] = {}
    for b in bones:
        nbrs.setdefault(b[0], set()).add(b[-1])
        nbrs.setdefault(b[-1], set()).add(b[0])
    root = min(nbrs, key=lambda u: (-graph.radius[u], u))
    order, parent = [root], {root: -1}
    for u in order:
        for v in sorted(nbrs[u], key=lambda v: (-graph.radius[v], v)):
            if v not in parent:
                parent[v] = u
                order.append(v)
    pos = {u: k for k, u in enumerate(order)}
    kinds = {1: "end", 2: "mid"}
    names = [f"{kinds.get(len(nbrs[u]), 'joint')}{k:02d}" for k, u in enumerate(order)]
    keypoints = np.stack([_xy(graph, u) for u in order])
    skeleton = [(pos[parent[u]], pos[u]) for u in order[1:]]
    return AutoKeypoints(keypoints=keypoints, skeleton=skeleton, names=names)
