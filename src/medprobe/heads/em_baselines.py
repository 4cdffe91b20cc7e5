"""Encoder-free EM instance baselines, as heads of the ``instances`` family (input kind ``dense``, task
``instances``): they read the raw sections, not features, and their settings are chosen on the selection
sections (validation, else the last training sections) by :func:`medprobe.heads.agglomerate.grid_search`,
whose grid widens when a choice sits on its edge.

* ``baseline-one``: every pixel one segment (the floor: VOI split 0, everything merged);
* ``baseline-threshold``: connected components of ``raw > percentile`` (the raw image, no smoothing: dark pixels
  inside cells break them up or join everything; kept as shipped, percentile grid 5-60 chosen by ARAND);
* ``baseline-classical``: what an EM user tries first: Gaussian blur (``sigma`` px), a percentile threshold,
  connected components of the bright (cell interior) side, then a watershed on the blurred image expands them
  over the dark membranes;
* ``baseline-waterz``: a boundary map without any encoder: the blurred image scaled to [0, 1] (1st-99th
  percentile) as nearest-neighbour affinities (the darker pixel of each pair), seeded watershed fragments and
  mean-affinity agglomeration (:func:`medprobe.heads.agglomerate.agglomerate`: waterz when installed).

Each class lists its grid axes (:class:`GridAxis`) and segments one 2D section for a batch of grid points,
sharing the blur between points. Per section 2D, like the affinity head's 2D decoders.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from medprobe.errors import ConfigError
from medprobe.heads.agglomerate import METHODS, GridAxis, agglomerate
from medprobe.heads.base import register_head

Point = tuple[float, ...]
SELECT_BY = ("cremi_score", "voi", "arand")

__all__ = ["BASELINES", "ClassicalBaseline", "EMBaseline", "OneSegmentBaseline", "ThresholdBaseline",
           "WaterzBaseline", "boundary_affinities", "classical_segmentation"]


def _floats(v: Any, name: str, lo: float, hi: float) -> tuple[float, ...]:
    try:
        out = tuple(sorted(float(t) for t in (v if isinstance(v, (list, tuple)) else [v])))
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be numbers in [{lo:g}, {hi:g}], got {v!r}") from None
    if not out or not all(lo <= t <= hi for t in out):
        raise ConfigError(f"{name} must be numbers in [{lo:g}, {hi:g}], got {v!r}")
    return out


class EMBaseline:
    """Base of the baselines: hyper-parameters in ``defaults`` (recorded), grid ``axes()``, ``segment``."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "dense"
    tasks: ClassVar[tuple[str, ...]] = ("instances",)
    outputs: ClassVar[tuple[str, ...]] = ("segmentation",)
    baseline: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {}
    note_key: ClassVar[str] = ""  # its key among the baselines recorded beside every EM row

    @classmethod
    def available(cls) -> bool:
        """Whether it runs beside every EM row here (its package installed)."""
        return True

    def __init__(self, **hp: Any) -> None:
        bad = sorted(set(hp) - set(self.defaults))
        if bad:
            raise ConfigError(f"unknown option(s) {', '.join(bad)} (allowed: {', '.join(sorted(self.defaults))})",
                              f"head {self.name}")
        self.params: dict[str, Any] = {**self.defaults, **hp}
        sel = self.params.get("select_by", "cremi_score")
        if sel not in SELECT_BY:
            raise ConfigError(f"select_by must be one of {', '.join(SELECT_BY)}, got {sel!r}", f"head {self.name}")

    @property
    def select_by(self) -> str:
        return str(self.params.get("select_by", "cremi_score"))

    def get_params(self) -> dict[str, Any]:
        return dict(self.params)

    def axes(self) -> list[GridAxis]:
        """The settings searched on the selection sections (none: nothing to choose)."""
        return []

    def segment(self, raw: np.ndarray, points: Sequence[Point], cache: dict[Any, Any] | None = None
                ) -> Iterator[tuple[Point, np.ndarray]]:
        """``(point, labels)`` of one 2D section for each grid point (labels int, ids from 1); ``cache``: a dict
        the caller keeps for this section across calls (a search in rounds), for work shared between points."""
        raise NotImplementedError


@register_head("baseline-one")
class OneSegmentBaseline(EMBaseline):
    """Every pixel of a section in one segment (no encoder, nothing chosen)."""

    note_key = "one_segment"

    def segment(self, raw: np.ndarray, points: Sequence[Point], cache: dict[Any, Any] | None = None
                ) -> Iterator[tuple[Point, np.ndarray]]:
        for p in points:
            yield p, np.ones(np.shape(raw), np.int64)


@register_head("baseline-threshold")
class ThresholdBaseline(EMBaseline):
    """Connected components of the raw image above a percentile (no smoothing; percentile chosen on the
    selection sections)."""

    defaults: ClassVar[dict[str, Any]] = {"percentiles": [5, 10, 15, 20, 25, 30, 40, 50, 60], "select_by": "arand",
                                          "limits": [5, 60]}
    note_key = "threshold_cc"

    def axes(self) -> list[GridAxis]:
        lim = _floats(self.params["limits"], "limits", 0, 100)
        return [GridAxis("percentile", _floats(self.params["percentiles"], "percentiles", 0, 100),
                         (lim[0], lim[-1]))]

    def segment(self, raw: np.ndarray, points: Sequence[Point], cache: dict[Any, Any] | None = None
                ) -> Iterator[tuple[Point, np.ndarray]]:
        from scipy import ndimage

        img = np.asarray(raw)
        for p in points:
            yield p, ndimage.label(img > np.percentile(img, p[0]))[0]


def classical_segmentation(raw: np.ndarray, sigma: float, percentile: float, blurred: np.ndarray | None = None
                           ) -> np.ndarray:
    """Gaussian blur, threshold at a percentile of the blurred section, connected components of the bright
    side, watershed of the negated blurred image from them (membranes are dark): int labels from 1."""
    from scipy import ndimage

    try:
        from skimage.segmentation import watershed
    except ImportError:
        raise ConfigError("baseline-classical needs scikit-image (pip install 'medprobe[em]')") from None
    s = blurred if blurred is not None else ndimage.gaussian_filter(np.asarray(raw, np.float32), sigma)
    markers, n = ndimage.label(s > np.percentile(s, percentile))
    if n == 0:
        return np.ones(s.shape, np.int64)
    return np.asarray(watershed(-s, markers), np.int64)


@register_head("baseline-classical")
class ClassicalBaseline(EMBaseline):
    """Gaussian blur + percentile threshold + connected components + watershed expansion (blur sigma and
    percentile chosen on the selection sections)."""

    defaults: ClassVar[dict[str, Any]] = {"sigmas": [1, 2, 3], "percentiles": [30, 40, 50],
                                          "select_by": "cremi_score"}
    note_key = "classical"

    def axes(self) -> list[GridAxis]:
        return [GridAxis("sigma", _floats(self.params["sigmas"], "sigmas", 0.5, 16), (0.5, 16.0)),
                GridAxis("percentile", _floats(self.params["percentiles"], "percentiles", 1, 99), (5.0, 95.0))]

    def segment(self, raw: np.ndarray, points: Sequence[Point], cache: dict[Any, Any] | None = None
                ) -> Iterator[tuple[Point, np.ndarray]]:
        from scipy import ndimage

        img = np.asarray(raw, np.float32)
        for sigma in sorted({p[0] for p in points}):
            s = ndimage.gaussian_filter(img, sigma)
            for p in points:
                if p[0] == sigma:
                    yield p, classical_segmentation(img, sigma, p[1], blurred=s)


def boundary_affinities(raw: np.ndarray, sigma: float) -> np.ndarray:
    """``(2, H, W)`` float32 nearest-neighbour affinities (offsets -1 along y, x) from the blurred section
    scaled to [0, 1] between its 1st and 99th percentiles: the darker pixel of each pair (membranes dark)."""
    from scipy import ndimage

    s = ndimage.gaussian_filter(np.asarray(raw, np.float32), sigma)
    lo, hi = np.percentile(s, (1, 99))
    g = np.clip((s - lo) / max(float(hi - lo), 1e-6), 0, 1).astype(np.float32)
    aff = np.zeros((2, *g.shape), np.float32)
    aff[0, 1:] = np.minimum(g[1:], g[:-1])
    aff[1, :, 1:] = np.minimum(g[:, 1:], g[:, :-1])
    return aff


@register_head("baseline-waterz")
class WaterzBaseline(EMBaseline):
    """Boundary map from the blurred image -> seeded watershed fragments -> mean-affinity agglomeration (waterz
    when installed); blur, seed threshold and merge threshold chosen on the selection sections."""

    defaults: ClassVar[dict[str, Any]] = {"sigmas": [1, 2, 3], "seed_thresholds": [0.5, 0.7, 0.9],
                                          "thresholds": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5], "method": "auto",
                                          "select_by": "cremi_score"}
    note_key = "waterz"

    @classmethod
    def available(cls) -> bool:
        from medprobe.heads.agglomerate import waterz_available

        return waterz_available()

    def __init__(self, **hp: Any) -> None:
        super().__init__(**hp)
        if self.params["method"] not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.params['method']!r}",
                              f"head {self.name}")

    def axes(self) -> list[GridAxis]:
        return [GridAxis("sigma", _floats(self.params["sigmas"], "sigmas", 0.5, 16), (0.5, 16.0)),
                GridAxis("seed_threshold", _floats(self.params["seed_thresholds"], "seed_thresholds", 0.005, 0.995),
                         (0.05, 0.99), "halve", 0.005),
                GridAxis("threshold", _floats(self.params["thresholds"], "thresholds", 0.005, 0.995),
                         (0.005, 0.995), "halve", 0.005)]

    def segment(self, raw: np.ndarray, points: Sequence[Point], cache: dict[Any, Any] | None = None
                ) -> Iterator[tuple[Point, np.ndarray]]:
        for sigma in sorted({p[0] for p in points}):
            memo = {} if cache is None else cache.setdefault(("sigma", sigma), {})
            aff = memo.get("affinities")
            if aff is None:
                aff = memo["affinities"] = boundary_affinities(raw, sigma)
            for seed in sorted({p[1] for p in points if p[0] == sigma}):
                ths = sorted({p[2] for p in points if p[0] == sigma and p[1] == seed})
                segs = agglomerate(aff, ths, method=self.params["method"], seed_threshold=seed, cache=memo)
                for t in ths:
                    yield (sigma, seed, t), np.asarray(segs[t], np.int64)


# the baselines reported beside every EM run, in table order (waterz only where installed)
BASELINES = ("baseline-one", "baseline-threshold", "baseline-classical", "baseline-waterz")
