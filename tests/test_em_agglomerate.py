"""Affinity targets and agglomeration: rules of the targets, recovery of a known segmentation from noisy
affinities (waterz and the scikit-image fallback, 2D and 3D, per section)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medprobe.errors import ConfigError
from medprobe.heads.agglomerate import (
    affinities_from_labels,
    affinity_offsets,
    agglomerate,
    fragments,
    merge_fragments,
    waterz_available,
)
from medprobe.metrics.instances import instance_metrics


def cells(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Voronoi cells with one-voxel background (0) walls: a label volume like segmented neurons."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int64)
    seeds[tuple(np.stack([rng.integers(0, s, n) for s in shape]))] = np.arange(1, n + 1)
    _, idx = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    lab = seeds[tuple(idx)]
    wall = np.zeros(shape, bool)
    for ax in range(len(shape)):
        wall |= np.diff(lab, axis=ax, prepend=lab.take([0], axis=ax)) != 0
    lab[wall] = 0
    return lab


def test_affinity_targets_follow_the_mala_convention() -> None:
    lab = np.array([[1, 1, 0, 2], [1, 3, 3, 2]])
    aff, mask = affinities_from_labels(lab)
    # channel 0: voxel (y, x) vs (y - 1, x); channel 1: vs (y, x - 1)
    assert aff[0].tolist() == [[0, 0, 0, 0], [1, 0, 0, 1]]
    assert aff[1].tolist() == [[0, 1, 0, 0], [0, 0, 1, 0]]
    assert mask[0, 0].sum() == 0 and mask[0, 1].all() and mask[1, :, 0].sum() == 0 and mask[1, :, 1:].all()
    offs = affinity_offsets(3, [(0, -3, 0)])
    assert offs == [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -3, 0)]
    aff3, _ = affinities_from_labels(np.ones((2, 5, 5), np.int64), offs)
    assert aff3.shape == (4, 2, 5, 5) and aff3[3, :, 3:].all() and not aff3[3, :, :3].any()
    with pytest.raises(ConfigError, match="offset"):
        affinity_offsets(2, [(0, 0)])


METHODS = ["skimage"] + (["waterz"] if waterz_available() else [])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(160, 160), (6, 96, 96)])
def test_noisy_affinities_of_a_known_volume_are_recovered(method: str, shape: tuple[int, ...]) -> None:
    gt = cells(shape, 40, seed=len(shape))
    aff, _ = affinities_from_labels(gt)
    rng = np.random.default_rng(1)
    noisy = np.clip(aff + rng.normal(0.0, 0.3, aff.shape), 0, 1).astype(np.float32)
    segs = agglomerate(noisy, [0.2, 0.5, 0.8], method=method)
    best = min(instance_metrics(s, gt)["arand"] for s in segs.values())
    assert best <= 0.05
    assert all(s.shape == gt.shape and s.dtype == np.uint64 for s in segs.values())


def test_thresholds_are_hierarchical_and_per_section_ids_unique() -> None:
    gt = cells((4, 64, 64), 20, seed=3)
    aff, _ = affinities_from_labels(gt)
    noisy = np.clip(aff + np.random.default_rng(0).normal(0, 0.3, aff.shape), 0, 1).astype(np.float32)
    frags = fragments(noisy)
    segs = list(merge_fragments(frags, noisy, [0.1, 0.5, 0.95]))
    counts = [len(np.unique(s)) for s in segs]
    assert counts[0] >= counts[1] >= counts[2] >= 1
    for fine, coarse in zip(segs, segs[1:]):  # a coarser level only merges: each fine id maps to one coarse id
        pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()], 1), axis=0)
        assert len(np.unique(pairs[:, 0])) == len(pairs)
    per = agglomerate(noisy, [0.5], method="skimage", per_section=True)[0.5]
    ids = [set(np.unique(per[z]).tolist()) for z in range(per.shape[0])]
    assert all(not (ids[a] & ids[b]) for a in range(4) for b in range(a + 1, 4))
    assert max(instance_metrics(per[z], gt[z])["arand"] for z in range(4)) <= 0.05  # 2D: scored per section
    with pytest.raises(ConfigError, match="method"):
        agglomerate(noisy, [0.5], method="magic")


def test_grid_search_widens_an_edge_choice_until_interior_or_the_limit() -> None:
    from medprobe.heads.agglomerate import GridAxis, grid_search

    merge = GridAxis("threshold", (0.02, 0.05, 0.1, 0.2), (0.005, 0.995), "halve", 0.005)
    sigma = GridAxis("sigma", (1.0, 2.0, 3.0), (0.5, 16.0))
    calls: list[int] = []

    def bowl(points: list[tuple[float, ...]]) -> dict[tuple[float, ...], float]:
        calls.append(len(points))
        return {p: (p[0] - 0.7) ** 2 + (p[1] - 5.2) ** 2 for p in points}

    r = grid_search([merge, sigma], bowl)
    best, grid = r["best"], r["grid"]
    # optimum outside the starting grid on both axes: widened until the choice is interior
    assert best["sigma"] == 5.0 and grid["sigma"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert min(grid["threshold"]) < best["threshold"] < max(grid["threshold"])
    assert abs(best["threshold"] - 0.7) < 0.2 and r["at_limit"] == [] and r["rounds"] >= 2
    assert sum(calls) == len(r["scores"]) == len(grid["sigma"]) * len(grid["threshold"])  # each point once

    # an optimum beyond a limit: the grid ends on the limit and says so
    r = grid_search([merge, sigma], lambda pts: {p: p[0] + (p[1] - 0.1) ** 2 for p in pts})
    assert r["best"] == {"threshold": 0.005, "sigma": 0.5} and sorted(r["at_limit"]) == ["sigma", "threshold"]
    assert r["grid"]["threshold"][0] == 0.005 and r["grid"]["sigma"][0] == 0.5
    # a fixed axis (limits = its one value) never widens and is never reported
    fixed = GridAxis("seed_threshold", (0.5,), (0.5, 0.5), "halve", 0.005)
    r = grid_search([fixed, merge], lambda pts: {p: p[1] for p in pts})
    assert r["grid"]["seed_threshold"] == [0.5] and r["at_limit"] == ["threshold"]
