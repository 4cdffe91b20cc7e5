"""Affinities <-> instance labels: affinity targets, seeded watershed fragments, hierarchical agglomeration.

Conventions (MALA / gunpowder, CREMI):

* arrays are ``(z, y, x)`` stacks or ``(y, x)`` sections; an offset is a tuple over those axes;
* nearest-neighbour offsets come first: ``(-1, 0, 0), (0, -1, 0), (0, 0, -1)`` (3D) or ``(-1, 0), (0, -1)``;
  long-range offsets (e.g. ``(0, -9, 0)``) may follow;
* affinity of voxel ``v`` on channel ``c`` is 1 where ``v`` and ``v + offset_c`` carry the **same non-zero id**,
  else 0; id 0 is background (membrane, extracellular space, CREMI's unlabelled voxels once a loader mapped
  them to 0), so every affinity touching it is 0; affinities whose neighbour lies outside the array are
  masked out (mask 0) of the loss.

Agglomeration: fragments from a seeded watershed on the boundary map ``1 - mean nearest-neighbour
affinity`` (seeds = connected regions where that mean exceeds ``seed_threshold``), then region merging in
order of the mean affinity on each fragment boundary (score ``1 - mean affinity``; stop at ``threshold``),
the scheme ``waterz`` implements in C++ (``OneMinus<MeanAffinity>``). ``method="waterz"`` calls it (``pip
install waterz``; it yields one segmentation per threshold from one merge run), ``method="skimage"`` is the
pure scikit-image + NumPy fallback (same scheme; one merge pass also gives every threshold), ``auto`` takes
waterz when importable. ``per_section=True`` segments each section of a stack on its own (2D, in-plane
affinities only) with ids unique over the stack.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medprobe.errors import ConfigError

Offset = tuple[int, ...]
METHODS = ("auto", "waterz", "skimage")


def nn_offsets(ndim: int) -> list[Offset]:
    """Nearest-neighbour offsets (-1 along each axis) of a ``ndim``-D array, axis 0 first."""
    return [tuple(-1 if a == b else 0 for b in range(ndim)) for a in range(ndim)]


def affinity_offsets(ndim: int, long_range: Sequence[Sequence[int]] = ()) -> list[Offset]:
    """Nearest-neighbour offsets followed by the given long-range ones (each of length ``ndim``)."""
    out = nn_offsets(ndim)
    for o in long_range:
        t = tuple(int(v) for v in o)
        if len(t) != ndim or not any(t):
            raise ConfigError(f"affinity offset {list(o)} must be {ndim} integers, not all 0")
        if t not in out:
            out.append(t)
    return out


def _shifted(n: int, d: int) -> tuple[slice, slice]:
    """Slices (here, there) so that ``here`` index i pairs with ``there`` index i + d along one axis."""
    if d >= 0:
        return slice(0, n - d), slice(d, n)
    return slice(-d, n), slice(0, n + d)


def affinities_from_labels(labels: np.ndarray, offsets: Sequence[Offset] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Instance labels -> ``(affinities, mask)``, both ``(C, *labels.shape)`` float32 (rules above)."""
    lab = np.asarray(labels)
    offs = list(offsets) if offsets is not None else nn_offsets(lab.ndim)
    aff = np.zeros((len(offs), *lab.shape), np.float32)
    mask = np.zeros_like(aff)
    for c, off in enumerate(offs):
        if len(off) != lab.ndim:
            raise ConfigError(f"affinity offset {off} does not match a {lab.ndim}D label array")
        pairs = [_shifted(n, d) for n, d in zip(lab.shape, off)]
        here = tuple(p[0] for p in pairs)
        there = tuple(p[1] for p in pairs)
        a, b = lab[here], lab[there]
        aff[c][here] = (a == b) & (a != 0)
        mask[c][here] = 1.0
    return aff, mask


def boundary_map(affs: np.ndarray, n_nn: int | None = None) -> np.ndarray:
    """``1 - mean`` over the nearest-neighbour affinities of each voxel, both directions (float32)."""
    a = np.asarray(affs, np.float32)
    nd = a.ndim - 1
    k = n_nn if n_nn is not None else min(a.shape[0], nd)
    acc = np.zeros(a.shape[1:], np.float32)
    cnt = np.zeros(a.shape[1:], np.float32)
    for c in range(k):
        ax = nd - k + c
        acc += a[c]
        cnt += 1
        sl_src = [slice(None)] * nd
        sl_dst = [slice(None)] * nd
        sl_src[ax], sl_dst[ax] = slice(1, None), slice(0, -1)
        acc[tuple(sl_dst)] += a[c][tuple(sl_src)]
        cnt[tuple(sl_dst)] += 1
    return 1.0 - acc / np.maximum(cnt, 1)


def fragments(affs: np.ndarray, seed_threshold: float = 0.5, min_seed_size: int = 4, in_xy: bool = False
              ) -> np.ndarray:
    """Seeded watershed fragments (uint64 ids from 1) from nearest-neighbour affinities ``(C, ...)``;
    ``in_xy`` (stacks): each section on its own from its in-plane affinities (MALA's choice for anisotropic
    EM), ids unique over the stack."""
    from scipy import ndimage

    a = np.asarray(affs)
    if in_xy and a.ndim == 4:
        k = min(a.shape[0], 3)
        out = np.zeros(a.shape[1:], np.uint64)
        base = 0
        for z in range(a.shape[1]):
            f = fragments(a[k - 2:k, z], seed_threshold, min_seed_size)
            out[z] = f + np.uint64(base)
            base += int(f.max(initial=0))
        return out

    try:
        from skimage.segmentation import watershed
    except ImportError:
        raise ConfigError("watershed fragments need scikit-image (pip install 'medprobe[em]')") from None
    bnd = boundary_map(affs)
    inside = bnd < 1.0 - seed_threshold
    seeds, n = ndimage.label(inside)
    if min_seed_size > 1 and n:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_seed_size
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
    if not seeds.any():  # no interior at all: one fragment per connected region of the whole array
        return np.ones(bnd.shape, np.uint64)
    seg = watershed(bnd, markers=seeds)
    _, inv = np.unique(seg, return_inverse=True)
    return (inv.reshape(seg.shape) + 1).astype(np.uint64)


def region_graph(frags: np.ndarray, affs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges between touching fragments over the nearest-neighbour offsets: ``(pairs (E, 2) uint64 with
    a < b, affinity sums (E,), voxel-pair counts (E,))``."""
    f = np.asarray(frags, np.uint64)
    nd = f.ndim
    k = min(affs.shape[0], nd)
    keys_l, sums_l = [], []
    for c in range(k):
        ax = nd - k + c
        here = [slice(None)] * nd
        there = [slice(None)] * nd
        here[ax], there[ax] = slice(1, None), slice(0, -1)  # offset -1: voxel v pairs with v - 1
        a, b = f[tuple(here)], f[tuple(there)]
        diff = a != b
        if not diff.any():
            continue
        u, v = a[diff], b[diff]
        lo, hi = np.minimum(u, v), np.maximum(u, v)
        keys_l.append(np.stack([lo, hi], 1))
        sums_l.append(np.asarray(affs[c], np.float64)[tuple(here)][diff])
    if not keys_l:
        return np.zeros((0, 2), np.uint64), np.zeros(0), np.zeros(0)
    keys = np.concatenate(keys_l)
    sums = np.concatenate(sums_l)
    uniq, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.ravel()
    return uniq, np.bincount(inv, weights=sums), np.bincount(inv).astype(np.float64)


def merge_fragments(frags: np.ndarray, affs: np.ndarray, thresholds: Sequence[float]) -> Iterator[np.ndarray]:
    """Hierarchical agglomeration by mean boundary affinity; yields one segmentation per threshold
    (ascending), each merging while the cheapest edge's score ``1 - mean affinity`` is below it."""
    frags = np.asarray(frags, np.uint64)
    pairs, sums, counts = region_graph(frags, affs)
    n = int(frags.max(initial=0)) + 1
    parent = np.arange(n, dtype=np.int64)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = int(parent[root])
        while parent[x] != root:
            parent[x], x = root, int(parent[x])
        return root

    adj: list[dict[int, list[float]]] = [{} for _ in range(n)]
    heap: list[tuple[float, int, int]] = []
    for (a, b), s, k in zip(pairs.tolist(), sums.tolist(), counts.tolist()):
        adj[a][b] = [s, k]
        adj[b][a] = adj[a][b]
        heap.append((1.0 - s / k, a, b))
    heapq.heapify(heap)
    for t in sorted(float(x) for x in thresholds):
        while heap and heap[0][0] < t:
            score, a, b = heapq.heappop(heap)
            if parent[a] != a or parent[b] != b or b not in adj[a]:
                continue  # stale: a side was merged, or the edge was re-scored
            e = adj[a][b]
            if abs((1.0 - e[0] / e[1]) - score) > 1e-12:
                continue
            if len(adj[a]) < len(adj[b]):
                a, b = b, a  # merge the smaller neighbourhood into the larger
            parent[b] = a
            del adj[a][b], adj[b][a]
            for m, eb in adj[b].items():
                del adj[m][b]
                if m in adj[a]:
                    ea = adj[a][m]
                    ea[0] += eb[0]
                    ea[1] += eb[1]
                else:
                    ea = [eb[0], eb[1]]
                    adj[a][m] = ea
                    adj[m][a] = ea
                heapq.heappush(heap, (1.0 - ea[0] / ea[1], min(a, m), max(a, m)))
            adj[b] = {}
        roots = np.array([find(i) for i in range(n)], np.int64)
        yield roots[frags.astype(np.int64)].astype(np.uint64)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level stdout (waterz prints its progress)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w", encoding="utf-8") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def waterz_available() -> bool:
    try:
        import waterz  # noqa: F401
    except ImportError:
        return False
    return True


def _waterz(affs: np.ndarray, thresholds: Sequence[float], frags: np.ndarray | None) -> list[np.ndarray]:
    import waterz

    a = np.asarray(affs, np.float32)
    if a.ndim == 3:  # one section: a zero z channel in front, singleton z axis
        a = np.concatenate([np.zeros((1, 1, *a.shape[1:]), np.float32), a[:2, None]], 0)
        fr = None if frags is None else np.asarray(frags, np.uint64)[None]
    else:
        a = a[:3]
        fr = None if frags is None else np.asarray(frags, np.uint64)
    a = np.ascontiguousarray(a)
    with _quiet_stdout():
        out = [np.array(s, np.uint64, copy=True) for s in
               waterz.agglomerate(a, sorted(float(t) for t in thresholds),
                                  fragments=None if fr is None else np.ascontiguousarray(fr))]
    return [s[0] for s in out] if np.asarray(affs).ndim == 3 else out


def agglomerate(affs: np.ndarray, thresholds: Sequence[float], *, method: str = "auto",
                per_section: bool = False, seed_threshold: float = 0.5, fragments_in_xy: bool = True,
                cache: dict[Any, Any] | None = None) -> dict[float, np.ndarray]:
    """Affinities ``(C, [z,] y, x)`` (nearest-neighbour channels first) -> ``{threshold: segmentation}``
    (uint64, ids from 1). See the module docstring for the scheme and the methods; a 3D agglomeration starts
    from per-section fragments (``fragments_in_xy``, default) and merges them across sections. ``cache``: a
    dict the caller keeps for these affinities, holding their fragments per seed threshold (and section), so
    a search over merge thresholds in several rounds computes each watershed once."""
    if method not in METHODS:
        raise ConfigError(f"agglomeration method {method!r} must be one of {', '.join(METHODS)}")
    if method == "waterz" and not waterz_available():
        raise ConfigError("agglomeration method 'waterz' needs the waterz package (pip install waterz)")
    use_waterz = method == "waterz" or (method == "auto" and waterz_available())
    a = np.asarray(affs, np.float32)
    ths = sorted(float(t) for t in thresholds)
    if a.ndim == 4 and per_section:
        outs: dict[float, list[np.ndarray]] = {t: [] for t in ths}
        base = {t: 0 for t in ths}
        k = min(a.shape[0], 3)
        inplane = a[k - 2:k]  # the y and x nearest-neighbour channels
        for z in range(a.shape[1]):
            sub = None if cache is None else cache.setdefault(("section", z), {})
            seg_z = agglomerate(inplane[:, z], ths, method=method, seed_threshold=seed_threshold, cache=sub)
            for t in ths:
                s = seg_z[t]
                outs[t].append(np.where(s > 0, s + np.uint64(base[t]), 0).astype(np.uint64))
                base[t] += int(s.max(initial=0))
        return {t: np.stack(v) for t, v in outs.items()}
    key = ("fragments", float(seed_threshold), bool(fragments_in_xy))
    frags: np.ndarray | None = None if cache is None else cache.get(key)
    if frags is None:
        try:
            frags = fragments(a, seed_threshold=seed_threshold, in_xy=fragments_in_xy)
        except ConfigError:  # no scikit-image: waterz's own watershed makes the fragments
            if not use_waterz:
                raise
        if cache is not None and frags is not None:
            cache[key] = frags
    if use_waterz:
        segs = _waterz(a, ths, frags)
    else:
        assert frags is not None
        segs = list(merge_fragments(frags, a, ths))
    return dict(zip(ths, segs))


# ------------------------------------------------------------------------------------------- settings search
@dataclass(frozen=True)
class GridAxis:
    """One setting searched on a grid: its starting ``values`` and the hard ``limits`` a widened grid may reach
    (inclusive). ``step``: ``"linear"`` widens by the outermost gap of the grid; ``"halve"`` halves the distance
    between the outermost value and its limit (thresholds in (0, 1)), ending on the limit once that distance is
    below ``resolution``. A widened value never passes the limit, so a grid that reaches it ends there."""

    name: str
    values: tuple[float, ...]
    limits: tuple[float, float]
    step: str = "linear"
    resolution: float = 0.0

    def widened(self, values: Sequence[float], side: str) -> float | None:
        """The next value beyond ``values`` on ``side`` (``"lo"`` / ``"hi"``), or None at the limit."""
        v = sorted(values)
        lo, hi = self.limits
        edge, bound = (v[0], lo) if side == "lo" else (v[-1], hi)
        if (side == "lo" and edge <= bound) or (side == "hi" and edge >= bound):
            return None
        if self.step == "halve":
            new = edge + (bound - edge) / 2
            if abs(bound - new) <= self.resolution:
                new = bound
        else:
            gap = (v[1] - v[0] if side == "lo" else v[-1] - v[-2]) if len(v) > 1 else (hi - lo) / 10
            new = max(edge - gap, lo) if side == "lo" else min(edge + gap, hi)
        return float(round(new, 6))


def grid_search(axes: Sequence[GridAxis], score: Callable[[list[tuple[float, ...]]], dict[tuple[float, ...], float]],
                max_rounds: int = 8) -> dict[str, Any]:
    """Minimise ``score`` over the grid of ``axes``, widening an axis whenever the best point sits on that axis'
    edge (and the edge is not the axis' limit), for at most ``max_rounds`` widenings.

    ``score(points)`` returns ``{point: value}`` for a batch of points (tuples in axis order; lower is better,
    NaN / inf = worst) so callers can share work within a batch. Ties go to the point scored first. Returns
    ``{"best": {name: value}, "score": best value, "grid": {name: [values]}, "scores": {point label: value},
    "at_limit": [names whose choice is a limit the grid could not pass], "rounds": widenings done}``."""
    grid = {a.name: sorted(float(v) for v in a.values) for a in axes}
    scores: dict[tuple[float, ...], float] = {}

    def evaluate() -> None:
        todo = [p for p in itertools.product(*(grid[a.name] for a in axes)) if p not in scores]
        if todo:
            got = score(todo)
            for p in todo:
                v = float(got.get(p, np.inf))
                scores[p] = v if np.isfinite(v) else np.inf

    def best() -> tuple[float, ...]:
        pts = list(itertools.product(*(grid[a.name] for a in axes)))
        return min(pts, key=lambda p: scores[p])

    evaluate()
    rounds = 0
    while rounds < max_rounds:
        b = best()
        grew = False
        for k, a in enumerate(axes):
            vals = grid[a.name]
            for side, edge in (("lo", vals[0]), ("hi", vals[-1])):
                if b[k] == edge:
                    new = a.widened(vals, side)
                    if new is not None and new not in vals:
                        grid[a.name] = sorted([*vals, new])
                        grew = True
        if not grew:
            break
        rounds += 1
        evaluate()
    b = best()
    at_limit = [a.name for k, a in enumerate(axes) if b[k] in a.limits and a.limits[0] < a.limits[1]]
    return {"best": {a.name: b[k] for k, a in enumerate(axes)}, "score": scores[b],
            "grid": {a.name: list(grid[a.name]) for a in axes},
            "scores": {",".join(f"{v:g}" for v in p): s for p, s in sorted(scores.items())},
            "at_limit": at_limit, "rounds": rounds}


__all__ = ["METHODS", "GridAxis", "affinities_from_labels", "affinity_offsets", "agglomerate", "boundary_map",
           "fragments", "grid_search", "merge_fragments", "nn_offsets", "region_graph", "waterz_available"]
