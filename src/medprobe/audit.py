"""Leakage audit: the same image (or nearly the same) in two places of a dataset, within and across splits.

Sits between ``data`` / ``features`` and ``pipeline`` (imports only ``data``-level types and reads a
:class:`~medprobe.features.cache.FeatureStore` when given one; torch-free).

Three detectors, each a blocked search (never an n^2 Python loop):

* ``exact``: a content hash of the decoded pixels (shape, dtype and bytes): pixel-identical images whatever
  their names, classes or file formats;
* ``hash``: a perceptual hash (pHash: the image as grey, area-resampled to 32 x 32, its 8 x 8 lowest DCT
  frequencies thresholded at their median = 64 bits); pairs within ``near_threshold`` bits (Hamming distance
  from one +/-1 matrix product per block) are candidates, confirmed when their 32 x 32 thumbnails correlate at
  ``near_correlation`` or more (chest X-rays share a layout, so 64 bits alone match different patients):
  resized, re-encoded (JPEG), re-windowed copies;
* ``feature``: cached encoder vectors, centred and L2-normalised, pairs with cosine >= ``feature_threshold``
  (one matrix product per block of rows).

Pairs whose cases carry different labels (classification tasks: the same image labelled benign and malignant)
are **label conflicts**: counted in the summary line, listed first, stored with the record.

Volumes are hashed whole (exact) and by their middle slice along the slice axis (pHash). Fingerprints are
cached per dataset fingerprint under ``<cache>/audit/`` so a rerun reads them instead of decoding again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import DataError

KINDS = ("exact", "hash", "feature")
LABELLED = ("binary", "multiclass", "ordinal", "multilabel")  # task types whose label conflicts are compared
_VERSION = 1
_GRID = 32  # pHash: image resampled to 32 x 32, DCT, 8 x 8 low frequencies
_BITS = 8


# ------------------------------------------------------------------------------------------ fingerprints
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` area-averaging resampling weights (each row sums to 1); enlarges by linear overlap."""
    edges_in = np.arange(n_in + 1, dtype=np.float64)
    edges_out = np.linspace(0.0, n_in, n_out + 1)
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    w = np.clip(hi - lo, 0.0, None)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m.astype(np.float32)


_DCT = _dct_matrix(_GRID)[:_BITS]


def grey_plane(image: np.ndarray, spatial_dims: int = 2, slice_axis: int = 2) -> np.ndarray:
    """A float32 2D plane of an image (channels averaged) or of a volume (its middle slice)."""
    a = np.asarray(image)
    if spatial_dims == 3:
        a = np.take(a, a.shape[slice_axis] // 2, axis=slice_axis)
        if a.ndim == 3:
            a = a.mean(-1)
    elif a.ndim == 3:
        a = a.astype(np.float32).mean(-1)
    return np.asarray(a, dtype=np.float32)


def phash_bits(plane: np.ndarray, cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """64 perceptual-hash bits (bool) of a 2D plane (32 x 32 area resample -> DCT -> 8 x 8 > median) and the
    resample itself, centred and L2-normalised (a thumbnail whose dot products are correlations)."""
    h, w = plane.shape
    key = (h, w)
    mats = cache.get(key) if cache is not None else None
    if mats is None:
        mats = (_area_matrix(h, _GRID), _area_matrix(w, _GRID))
        if cache is not None:
            cache[key] = mats
    a = np.where(np.isfinite(plane), plane, 0.0).astype(np.float32)
    thumb = mats[0] @ a @ mats[1].T
    coef = (_DCT @ thumb @ _DCT.T).ravel()  # 8 x 8 lowest frequencies of the 32 x 32 resample
    med = np.median(coef[1:])  # the DC term says only how bright the image is
    t = thumb.ravel() - thumb.mean()
    return np.asarray(coef > med), t / max(float(np.linalg.norm(t)), 1e-12)


def content_hash(image: np.ndarray) -> str:
    """Hash of the decoded pixels (shape, dtype, bytes): equal for pixel-identical images in any file format."""
    a = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.shape}|{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class Fingerprints:
    """Per case: its id, pixel content hash, 64 pHash bits, spatial shape and channel count."""

    ids: list[str]
    exact: list[str]
    bits: np.ndarray  # (n, 64) bool
    thumbs: np.ndarray  # (n, 1024) float16: 32 x 32 grey resamples, centred, unit norm
    shapes: list[tuple[int, ...]]
    channels: list[int]
    seconds: float = 0.0
    cached: bool = False

    def save(self, path: Path) -> None:
        import io

        from medprobe.utils import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, ids=np.asarray(self.ids), exact=np.asarray(self.exact), bits=np.packbits(self.bits, axis=1),
                 shapes=np.asarray([list(s) + [0] * (3 - len(s)) for s in self.shapes], np.int64).reshape(-1, 3),
                 dims=np.asarray([len(s) for s in self.shapes], np.int64), channels=np.asarray(self.channels),
                 thumbs=self.thumbs.astype(np.float16), version=np.asarray(_VERSION))
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> Fingerprints | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["version"]) != _VERSION:
                    return None
                dims = z["dims"].tolist()
                shapes = [tuple(int(v) for v in row[:d]) for row, d in zip(z["shapes"], dims)]
                return cls(ids=[str(v) for v in z["ids"]], exact=[str(v) for v in z["exact"]],
                           bits=np.unpackbits(z["bits"], axis=1)[:, :64].astype(bool), thumbs=z["thumbs"],
                           shapes=shapes,
                           channels=[int(v) for v in z["channels"]], cached=True)
        except (OSError, ValueError, KeyError):
            return None


def fingerprint(ds: Any, cache_dir: str | Path | None = None) -> Fingerprints:
    """Fingerprints of every case of ``ds`` (decoded once; cached per dataset fingerprint under
    ``<cache_dir>/audit/`` when ``cache_dir`` is given)."""
    t0 = time.perf_counter()
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "audit" / f"{ds.fingerprint()}-v{_VERSION}.npz"
        got = Fingerprints.load(path) if path.is_file() else None
        if got is not None and got.ids == list(ds.ids()):
            got.seconds = time.perf_counter() - t0
            return got
    mats: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    n = len(ds)
    exact, shapes, chans = [], [], []
    bits = np.zeros((n, _BITS * _BITS), dtype=bool)
    thumbs = np.zeros((n, _GRID * _GRID), dtype=np.float16)
    fast = _stacked_images(ds)
    for i in range(n):
        if fast is not None:
            img, sd, axis = fast[i], 2, 2
        else:
            item = ds.load(i)
            if not isinstance(getattr(item, "image", None), np.ndarray):
                raise DataError("only whole images and volumes are fingerprinted (not slides read by region, "
                                "not image pairs)", getattr(item, "source", None) or getattr(item, "id", None))
            img, sd, axis = item.image, item.spatial_dims, item.slice_axis
        exact.append(content_hash(img))
        shapes.append(tuple(int(v) for v in img.shape[:sd]))
        chans.append(1 if img.ndim == sd else int(img.shape[-1]))
        bits[i], thumbs[i] = phash_bits(grey_plane(img, sd, axis), mats)
    fp = Fingerprints(ids=list(ds.ids()), exact=exact, bits=bits, thumbs=thumbs, shapes=shapes, channels=chans)
    if path is not None:
        fp.save(path)
    fp.seconds = time.perf_counter() - t0
    return fp


def _stacked_images(ds: Any) -> Any:
    """A MedMNIST 2D dataset's images as one indexable view (no per-item ``load``), else None."""
    from medprobe.data.medmnist import MedMNISTDataset

    if not isinstance(ds, MedMNISTDataset) or ds.spatial_dims != 2:
        return None

    class _View:
        def __getitem__(self, i: int) -> np.ndarray:
            split, k = ds.locate(i)
            img = np.array(ds._split_array(split)[int(ds._rows[split][k])])
            return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img

    return _View()


# ------------------------------------------------------------------------------------------ searches
def hamming_pairs(bits: np.ndarray, threshold: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` whose bit rows differ in at most ``threshold`` bits, and those distances; blocked
    ``(+/-1) @ (+/-1).T`` products (Hamming = (64 - s) / 2), never an n^2 Python loop."""
    s = np.where(bits, 1.0, -1.0).astype(np.float32)
    nb = s.shape[1]
    need = nb - 2 * threshold  # s_ij >= need  <=>  hamming <= threshold
    out_p, out_d = [], []
    for a in range(0, len(s), block):
        sim = s[a:a + block] @ s[a:].T
        ii, jj = np.nonzero(sim >= need - 0.5)
        keep = jj > ii  # upper triangle: j counted from a
        ii, jj = ii[keep], jj[keep]
        out_p.append(np.stack([ii + a, jj + a], 1))
        out_d.append(((nb - sim[ii, jj]) / 2).round().astype(np.int64))
    if not out_p:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_p).astype(np.int64), np.concatenate(out_d)


def cosine_pairs(X: np.ndarray, threshold: float, block: int = 2048, centre: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` with cosine similarity >= ``threshold`` of the (centred) rows of ``X`` and their
    similarities: one float32 matrix product per block of rows."""
    Y = np.asarray(X, dtype=np.float32)
    if centre:
        Y = Y - Y.mean(0, keepdims=True)
    Y = Y / np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-12)
    out_p, out_s = [], []
    for a in range(0, len(Y), block):
        sim = Y[a:a + block] @ Y[a:].T
        ii, jj = np.nonzero(sim >= threshold)
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
        out_p.append(np.stack([ii + a, jj + a], 1))
        out_s.append(sim[ii, jj].astype(np.float64))
    if not out_p:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    return np.concatenate(out_p).astype(np.int64), np.concatenate(out_s)


def exact_pairs(hashes: Sequence[str]) -> np.ndarray:
    """Every pair ``i < j`` of equal content hashes."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(h, []).append(i)
    pairs = [(g[a], g[b]) for g in groups.values() if len(g) > 1 for a in range(len(g)) for b in range(a + 1, len(g))]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def cached_vectors(entry: str | Path, token: str = "cls") -> tuple[list[str], np.ndarray, int]:
    """One vector per item from a complete feature-cache entry (its deepest block; slices averaged), read
    with numpy only: ``(ids, (n, C) array, block)``."""
    import json

    root = Path(entry)
    man = root / "manifest.json"
    if not man.is_file():
        raise DataError("not a complete feature-cache entry (no manifest.json)", root)
    m = json.loads(man.read_text(encoding="utf-8"))
    spec = json.loads((root / "spec.json").read_text(encoding="utf-8"))
    layer = int(spec["layers"][-1])
    if token not in spec["tokens"]:
        raise DataError(f"the entry holds no {token!r} vectors (tokens: {', '.join(spec['tokens'])})", root)
    parts = []
    for shard in sorted(root.glob("shard-*")):
        a = np.load(shard / f"{token}_L{layer}.npy").astype(np.float32)
        rows = np.load(shard / "rows.npy")
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        parts.append(np.add.reduceat(a, starts, axis=0) / rows[:, None] if len(rows) else a[:0])
    X = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    ids = [str(v) for v in m.get("ids", [])]
    if len(ids) != len(X):
        raise DataError(f"the entry lists {len(ids)} ids but holds {len(X)} vectors", root)
    return ids, X, layer


# ------------------------------------------------------------------------------------------ the audit
@dataclass
class Pair:
    """Two cases found alike: by which detectors (``kinds``), how close, and where they sit."""

    i: int
    j: int
    kinds: list[str]
    hamming: int | None = None
    cosine: float | None = None
    splits: tuple[str, str] = ("", "")
    labels: tuple[Any, Any] | None = None  # the two cases' labels (None: not compared)

    @property
    def conflict(self) -> bool:
        """The two cases carry different labels."""
        return self.labels is not None and self.labels[0] != self.labels[1]

    @property
    def across(self) -> bool:
        return self.splits[0] != self.splits[1]

    @property
    def leaks_into_test(self) -> bool:
        """One case in test, the other in train or val."""
        a, b = self.splits
        return ("test" in (a, b)) and (a != b) and bool({a, b} & {"train", "val"})


@dataclass
class AuditReport:
    """Findings of one audit: suspicious pairs, counts per detector within / across splits, timings."""

    n: int
    ids: list[str]
    pairs: list[Pair]
    thresholds: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    fingerprints: Fingerprints | None = None
    features: str | None = None  # which feature vectors were compared
    labels: list[Any] | None = None  # per-case labels compared (None: not compared)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per detector (and ``any``): pairs within one split, across splits, and leaking into test."""
        out = {k: {"within": 0, "across": 0, "test_leaks": 0} for k in (*KINDS, "any")}
        for p in self.pairs:
            for k in (*p.kinds, "any"):
                out[k]["across" if p.across else "within"] += 1
                out[k]["test_leaks"] += int(p.leaks_into_test)
        return out

    def test_duplicates(self) -> list[int]:
        """Test cases alike a train or val case, sorted."""
        return sorted({(p.i if p.splits[0] == "test" else p.j) for p in self.pairs if p.leaks_into_test})

    def conflicts(self) -> list[Pair]:
        """Pairs whose labels differ (label conflicts), wherever they sit."""
        return [p for p in self.pairs if p.conflict]

    def conflict_test_cases(self) -> list[int]:
        """Test cases in a label conflict (with a train/val case or another test case), sorted."""
        return sorted({k for p in self.conflicts() for k, s in ((p.i, p.splits[0]), (p.j, p.splits[1]))
                       if s == "test"})

    def to_drop(self) -> list[int]:
        """What ``mode: drop`` removes from test: cases alike a train/val case and cases in a label conflict."""
        return sorted({*self.test_duplicates(), *self.conflict_test_cases()})

    def summary(self) -> str:
        """One line: how many pairs, how many across splits and into test."""
        c = self.counts()
        per = ", ".join(f"{k} {c[k]['within'] + c[k]['across']}" for k in KINDS if c[k]["within"] + c[k]["across"])
        conf = self.conflicts()
        across = sum(p.across for p in conf)
        return (f"audit: {c['any']['within'] + c['any']['across']} duplicate pair(s) among {self.n} cases"
                + (f" ({per})" if per else "") + f"; {c['any']['across']} across splits, "
                f"{len(self.test_duplicates())} test case(s) alike a train/val case"
                + (f"; {len(conf)} label conflict(s) (alike, labelled differently; {across} across splits)"
                   if conf else ""))

    def rows(self, limit: int | None = 50) -> list[dict[str, Any]]:
        """The suspicious pairs as plain rows (label conflicts first, then test leaks, then other cross-split,
        then within); ``label_a`` / ``label_b`` / ``conflict`` when labels were compared."""
        order = sorted(self.pairs, key=lambda p: (not p.conflict, not p.leaks_into_test, not p.across,
                                                   "exact" not in p.kinds,
                                                   p.hamming if p.hamming is not None else 99, p.i, p.j))
        return [{"a": self.ids[p.i], "b": self.ids[p.j], "split_a": p.splits[0], "split_b": p.splits[1],
                 "kinds": list(p.kinds), "hamming": p.hamming,
                 "cosine": None if p.cosine is None else round(p.cosine, 4),
                 **({"label_a": p.labels[0], "label_b": p.labels[1], "conflict": p.conflict}
                    if p.labels is not None else {})}
                for p in (order if limit is None else order[:limit])]

    def to_notes(self, limit: int = 50) -> dict[str, Any]:
        """What the record stores: counts, thresholds, test duplicates (ids) and the first pairs."""
        return {"summary": self.summary(), "n_cases": self.n, "counts": self.counts(),
                "thresholds": self.thresholds, "features": self.features,
                "test_duplicates": [self.ids[i] for i in self.test_duplicates()][:limit],
                "label_conflicts": len(self.conflicts()),
                "label_conflict_test_cases": [self.ids[i] for i in self.conflict_test_cases()][:limit],
                "pairs": self.rows(limit), "n_pairs": len(self.pairs),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def _plain(v: Any) -> Any:
    """A label as plain JSON (numpy scalars and arrays to Python; a list for multi-label vectors)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def case_labels(ds: Any) -> list[Any] | None:
    """Per-case labels to compare in a pair (class names where the dataset names them), for classification
    tasks (:data:`LABELLED`); None for any other task or a dataset without per-case labels."""
    task = getattr(ds, "task", None)
    if task is None or getattr(task, "type", None) not in LABELLED or not hasattr(ds, "labels"):
        return None
    names = tuple(getattr(task, "classes", ()) or ())
    out = []
    for v in ds.labels():
        v = _plain(v)
        if task.type != "multilabel" and isinstance(v, int) and 0 <= v < len(names):
            v = names[v]
        out.append(v)
    return out


def split_names(n: int, splits: Mapping[str, Sequence[int]] | None) -> list[str]:
    """Per case its split name (``unused`` when in none; ``all`` without splits)."""
    if not splits:
        return ["all"] * n
    out = ["unused"] * n
    for name, idx in splits.items():
        for i in idx:
            out[int(i)] = name
    return out


def audit(ds: Any, splits: Mapping[str, Sequence[int]] | None = None, *, near_threshold: int = 10,
          near_correlation: float = 0.97, feature_threshold: float = 0.998, features: np.ndarray | None = None,
          feature_label: str | None = None,
          cache_dir: str | Path | None = None, fingerprints: Fingerprints | None = None,
          labels: Sequence[Any] | None = None) -> AuditReport:
    """Audit ``ds`` for duplicates within and across ``splits`` (``{name: case indices}``; None: the whole
    set). ``features``: one vector per case (e.g. cached CLS tokens) for the cosine detector. ``labels``: one
    per case (e.g. :func:`case_labels`); pairs whose labels differ are label conflicts."""
    t0 = time.perf_counter()
    fp = fingerprints if fingerprints is not None else fingerprint(ds, cache_dir)
    t_fp = time.perf_counter() - t0
    n = len(fp.ids)
    where = split_names(n, splits)
    found: dict[tuple[int, int], Pair] = {}

    def add(pairs: np.ndarray, kind: str, values: np.ndarray | None = None) -> None:
        for k, (i, j) in enumerate(pairs.tolist()):
            p = found.get((i, j))
            if p is None:
                p = found[(i, j)] = Pair(i, j, [], splits=(where[i], where[j]))
            if kind not in p.kinds:
                p.kinds.append(kind)
            if kind == "hash" and values is not None:
                p.hamming = int(values[k])
            if kind == "feature" and values is not None:
                p.cosine = float(values[k])

    t1 = time.perf_counter()
    add(exact_pairs(fp.exact), "exact")
    hp, hd = hamming_pairs(fp.bits, near_threshold)
    if len(hp):  # confirm the candidates: their thumbnails correlate
        th = fp.thumbs
        corr = np.einsum("ij,ij->i", th[hp[:, 0]].astype(np.float32), th[hp[:, 1]].astype(np.float32))
        ok = corr >= near_correlation
        hp, hd = hp[ok], hd[ok]
    add(hp, "hash", hd)
    t_hash = time.perf_counter() - t1
    t2 = time.perf_counter()
    if features is not None:
        if len(features) != n:
            raise DataError(f"{len(features)} feature vectors for {n} cases", getattr(ds, "name", None))
        cp, cs = cosine_pairs(features, feature_threshold)
        add(cp, "feature", cs)
    t_feat = time.perf_counter() - t2
    pairs = sorted(found.values(), key=lambda p: (p.i, p.j))
    for p in pairs:  # ordered so that a test case comes first in a test leak
        if p.splits[1] == "test" and p.splits[0] != "test":
            p.i, p.j, p.splits = p.j, p.i, (p.splits[1], p.splits[0])
    if labels is not None:
        if len(labels) != n:
            raise DataError(f"{len(labels)} labels for {n} cases", getattr(ds, "name", None))
        for p in pairs:
            p.labels = (_plain(labels[p.i]), _plain(labels[p.j]))
    return AuditReport(n=n, ids=fp.ids, pairs=pairs, fingerprints=fp,
                       labels=None if labels is None else [_plain(v) for v in labels],
                       features=feature_label if features is not None else None,
                       thresholds={"near_threshold": near_threshold, "near_correlation": near_correlation,
                                   "feature_threshold": feature_threshold},
                       seconds={"fingerprints": t_fp, "hash_search": t_hash, "feature_search": t_feat,
                                "total": time.perf_counter() - t0})


def input_facts(fp: Fingerprints) -> dict[str, Any]:
    """What the fingerprints tell about the inputs: spatial sizes (per axis min / max) and channel counts."""
    chans: dict[str, int] = {}
    for c in fp.channels:
        chans[str(c)] = chans.get(str(c), 0) + 1
    dims = {len(s) for s in fp.shapes}
    if len(dims) != 1:
        return {"min_shape": None, "max_shape": None, "channels": chans}
    a = np.asarray(fp.shapes)
    return {"min_shape": a.min(0).tolist(), "max_shape": a.max(0).tolist(), "channels": chans}


__all__ = ["KINDS", "LABELLED", "AuditReport", "Fingerprints", "Pair", "audit", "cached_vectors", "case_labels",
           "content_hash", "cosine_pairs",
           "exact_pairs", "fingerprint", "grey_plane", "hamming_pairs", "input_facts", "phash_bits", "split_names"]
