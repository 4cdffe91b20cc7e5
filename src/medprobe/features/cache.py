"""Content-addressed feature cache: sharded ``.npy`` arrays + a JSON manifest.

Layout of one entry ``<root>/<key>/``::

    spec.json                 everything the key was computed from (+ shard plan)
    shard-00000/cls_L11.npy   (rows, C)        one row per 2D image or per volume slice
    shard-00000/mean_L11.npy  (rows, C)        mean of patch tokens
    shard-00000/patch_L11.npy (rows, C, h, w)  patch grid
    shard-00000/rows.npy      (items_in_shard,) slices per item
    shard-00000/done.json     written last: the shard is complete (+ size and CRC-32 of every array)
    manifest.json             written when every shard is complete: the entry is usable

Every file is written atomically (temp + rename). A killed extraction leaves complete shards behind and
resumes from them; an entry without ``manifest.json`` is never read as features.

An entry is recognised by its name (24 hex digits) and a ``spec.json`` naming that key: listing and removal
touch nothing else under the cache root. Opening an entry checks every array against the size and CRC-32 its
shard recorded (once per process and entry); a mismatch, a truncated file or an unreadable manifest raises
:class:`CorruptEntry`, and the engine recomputes the entry, saying so in one line.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import ConfigError, DataError
from medprobe.utils import atomic_write_json, hash_obj
from medprobe.version import FEATURE_FORMAT_VERSION

TOKENS = ("cls", "mean", "patch")
_KEY = re.compile(r"[0-9a-f]{24}")
_VERIFIED: set[tuple[str, int]] = set()  # (entry path, manifest mtime) whose arrays this process checked


class CorruptEntry(DataError):
    """A complete cache entry whose files do not match what was written (bit rot, truncation, tampering)."""


def file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    """CRC-32 of a file's bytes, streamed."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


def array_checksums(shard: Path, names: list[str]) -> dict[str, list[int]]:
    """``{file name: [bytes, crc32]}`` of a shard's arrays (recorded in its done.json)."""
    return {n: [(shard / n).stat().st_size, file_crc32(shard / n)] for n in names}


def is_entry(d: Path) -> bool:
    """True for a medprobe cache entry: a 24-hex-digit folder whose spec.json names that key."""
    if not (d.is_dir() and _KEY.fullmatch(d.name)):
        return False
    try:
        return json.loads((d / "spec.json").read_text(encoding="utf-8")).get("key") == d.name
    except (OSError, ValueError, AttributeError):
        return (d / "manifest.json").is_file() or any(d.glob("shard-*/done.json"))


def cache_key(spec: dict[str, Any]) -> str:
    """Key of an entry: hash over every input that changes a feature value."""
    return hash_obj({**spec, "format_version": FEATURE_FORMAT_VERSION}, n=24)


def shard_dir(entry: Path, k: int) -> Path:
    return entry / f"shard-{k:05d}"


def shard_done(entry: Path, k: int) -> bool:
    return (shard_dir(entry, k) / "done.json").is_file()


def array_name(token: str, layer: int) -> str:
    return f"{token}_L{layer}.npy"


@dataclass
class ShardPlan:
    """Items split into contiguous shards."""

    bounds: list[tuple[int, int]]  # [start, stop) item indices per shard

    @classmethod
    def make(cls, n_items: int, shard_items: int) -> ShardPlan:
        shard_items = max(1, int(shard_items))
        return cls([(s, min(s + shard_items, n_items)) for s in range(0, n_items, shard_items)] or [(0, 0)])

    def __len__(self) -> int:
        return len(self.bounds)


def write_manifest(entry: Path, spec: dict[str, Any], plan: ShardPlan, extra: dict[str, Any]) -> dict[str, Any]:
    """Assemble the manifest from complete shards (call only when all are done)."""
    rows: list[int] = []
    shards = []
    for k, (a, b) in enumerate(plan.bounds):
        d = shard_dir(entry, k)
        r = np.load(d / "rows.npy") if b > a else np.zeros(0, np.int64)
        rows += [int(v) for v in r]
        done = json.loads((d / "done.json").read_text(encoding="utf-8"))
        shards.append({"dir": d.name, "items": [a, b], "rows": int(r.sum()), "seconds": done.get("seconds")})
    manifest = {"key": entry.name, "spec": spec, "slices_per_item": rows, "n_items": len(rows),
                "n_rows": int(sum(rows)), "shards": shards, **extra}
    atomic_write_json(entry / "manifest.json", manifest)
    return manifest


class FeatureStore:
    """Read-only, memory-mapped view of one complete cache entry."""

    def __init__(self, entry: str | Path, verify: bool = True) -> None:
        self.path = Path(entry)
        mf = self.path / "manifest.json"
        if not mf.is_file():
            raise DataError("feature cache entry is incomplete (no manifest.json)", self.path)
        try:  # any damage (not UTF-8, not JSON, not an object, keys missing or of the wrong type) is one error
            self.manifest: dict[str, Any] = json.loads(mf.read_text(encoding="utf-8"))
            if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("spec"), dict):
                raise TypeError("not a manifest object")
            self.spec: dict[str, Any] = self.manifest["spec"]
            self.layers: list[int] = list(self.spec["layers"])
            self.tokens: list[str] = list(self.spec["tokens"])
            self.ids: list[str] = list(self.manifest["ids"])
            self.slices = np.asarray(self.manifest["slices_per_item"], dtype=np.int64)
            self.offsets = np.concatenate([[0], np.cumsum(self.slices)])
            self._shard_items = [tuple(s["items"]) for s in self.manifest["shards"]]
            self._shard_row0 = np.concatenate([[0], np.cumsum([s["rows"] for s in self.manifest["shards"]])])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptEntry(f"unreadable manifest.json ({type(e).__name__})", self.path) from None
        self._mm: dict[tuple[str, int, int], np.ndarray] = {}
        self.reused = False  # set by the engine when the entry was found complete (no extraction ran)
        if verify:
            self.verify_checksums()
        self.preprocess: Any = None  # the resolved PreprocessConfig, set by the engine that opened the entry
        self.extract_config: Any = None  # the ExtractConfig, likewise

    def verify_checksums(self, force: bool = False) -> int:
        """Check every array against its shard's recorded size and CRC-32 (once per process unless
        ``force``); returns the number of files checked (0 for entries made before checksums were kept).
        Raises :class:`CorruptEntry` naming the first bad file."""
        stamp = (str(self.path.resolve()), (self.path / "manifest.json").stat().st_mtime_ns)
        if stamp in _VERIFIED and not force:
            return 0
        n = 0
        for s in self.manifest.get("shards", []):
            d = self.path / s["dir"]
            try:
                sums = json.loads((d / "done.json").read_text(encoding="utf-8")).get("files") or {}
            except (OSError, ValueError) as e:
                raise CorruptEntry(f"{s['dir']}/done.json unreadable ({type(e).__name__})", self.path) from None
            for name, (size, crc) in sums.items():
                f = d / name
                if not f.is_file():
                    raise CorruptEntry(f"{s['dir']}/{name} is missing", self.path)
                if f.stat().st_size != size or file_crc32(f) != crc:
                    raise CorruptEntry(f"{s['dir']}/{name} does not match its checksum", self.path)
                n += 1
        _VERIFIED.add(stamp)
        return n

    # ------------------------------------------------------------------ metadata
    @property
    def n_items(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])  # type: ignore[return-value]

    def dim_of(self, layer: int) -> int:
        """Channels of one tapped layer (CNN stages and SAM's neck differ from the last layer's ``dim``)."""
        return int(self.manifest.get("dims", {}).get(str(layer), self.dim))

    def grid_of(self, layer: int) -> tuple[int, ...]:
        """Patch grid of one tapped layer (CNN stages have one stride each)."""
        return tuple(self.manifest.get("grids", {}).get(str(layer), self.manifest["grid"]))

    def __repr__(self) -> str:
        return (f"FeatureStore({self.path.name}: {self.n_items} items, {int(self.offsets[-1])} rows, "
                f"layers {self.layers})")

    def _check(self, token: str, layer: int) -> None:
        if token not in self.tokens:
            raise ConfigError(f"token {token!r} was not extracted (have {self.tokens})", self.path)
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} was not extracted (have {self.layers})", self.path)

    def _shard(self, token: str, layer: int, k: int) -> np.ndarray:
        key = (token, layer, k)
        if key not in self._mm:
            self._mm[key] = np.load(self.path / self.manifest["shards"][k]["dir"] / array_name(token, layer),
                                    mmap_mode="r")
        return self._mm[key]

    def _locate(self, i: int) -> tuple[int, int, int]:
        """(shard, row start within shard, row stop within shard) of item i."""
        k = int(np.searchsorted([b for _, b in self._shard_items], i, side="right"))
        start = int(self.offsets[i] - self._shard_row0[k])
        return k, start, start + int(self.slices[i])

    # ------------------------------------------------------------------ reading
    def item(self, i: int, token: str = "cls", layer: int | None = None) -> np.ndarray:
        """Features of item ``i``: ``(S, C)`` or ``(S, C, h, w)`` (memory-mapped slice)."""
        layer = self.layers[-1] if layer is None else layer
        self._check(token, layer)
        k, a, b = self._locate(i)
        return self._shard(token, layer, k)[a:b]

    def iter_items(self, token: str = "cls", layer: int | None = None) -> Iterator[np.ndarray]:
        for i in range(self.n_items):
            yield self.item(i, token, layer)

    def rows(self, token: str = "cls", layer: int | None = None, dtype: Any = np.float32) -> np.ndarray:
        """All rows ``(R, ...)`` in item order (loaded into memory)."""
        layer = self.layers[-1] if layer is None else layer
        self._check(token, layer)
        parts = [np.asarray(self._shard(token, layer, k), dtype=dtype) for k in range(len(self._shard_items))
                 if self._shard_items[k][1] > self._shard_items[k][0]]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim_of(layer)), dtype)

    def pooled(self, token: str = "cls", layer: int | None = None, method: str = "mean") -> np.ndarray:
        """One vector per item: rows pooled over slices (identity for 2D). ``(N, C)`` float32."""
        if token == "patch":
            raise ConfigError("pool 'cls' or 'mean' tokens; patch grids are dense features")
        r = self.rows(token, layer)
        if np.all(self.slices == 1):
            return r
        if method == "mean":
            return (np.add.reduceat(r, self.offsets[:-1], axis=0) / self.slices[:, None]).astype(np.float32)
        if method == "max":
            return np.maximum.reduceat(r, self.offsets[:-1], axis=0)
        raise ConfigError(f"pooling must be 'mean' or 'max', got {method!r}")

    def bags(self, token: str = "cls", layer: int | None = None) -> list[np.ndarray]:
        """Per-item ``(S_i, C)`` arrays (for attention-MIL heads)."""
        r = self.rows(token, layer)
        return [r[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def list_entries(root: str | Path) -> list[dict[str, Any]]:
    """Summaries of every entry under ``root`` (complete or not)."""
    out: list[dict[str, Any]] = []
    root = Path(root)
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if is_entry(p)):  # nothing but medprobe's entries
        info: dict[str, Any] = {"key": d.name, "path": str(d)}
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        info["bytes"] = size
        spec_f, mf = d / "spec.json", d / "manifest.json"
        spec, spec_bad = _json_object(spec_f) if spec_f.is_file() else ({}, None)
        info["complete"] = mf.is_file()
        info["encoder"] = str(spec.get("encoder", "?"))
        info["weights"] = str(spec.get("weights", "?"))
        info["dataset"] = str(spec.get("dataset_name", "?"))
        info["layers"] = spec.get("layers")
        pre = spec.get("preprocess")
        info["resolution"] = pre.get("resolution") if isinstance(pre, dict) else None
        damage = [f"spec.json {spec_bad}"] if spec_bad else []
        if mf.is_file():
            manifest, mf_bad = _json_object(mf)
            info["n_items"] = manifest.get("n_items")
            wrong = [k for k, t in (("spec", dict), ("shards", list), ("ids", list))
                     if not isinstance(manifest.get(k), t)]
            if mf_bad or wrong:
                damage.append(f"manifest.json {mf_bad or 'lacks ' + ', '.join(wrong)}")
        else:
            n = len(list(d.glob("shard-*/done.json")))
            info["shards_done"] = n
        if damage:
            info["damaged"] = "; ".join(damage)
        out.append(info)
    return out


def _json_object(f: Path) -> tuple[dict[str, Any], str | None]:
    """``(object, None)`` for a readable JSON object file, ``({}, what is wrong)`` for any damage."""
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except OSError as e:
        return {}, f"unreadable ({e.strerror or type(e).__name__})"
    except UnicodeDecodeError:
        return {}, "is not UTF-8 text"
    except ValueError:
        return {}, "is not valid JSON"
    if not isinstance(obj, dict):
        return {}, f"is a JSON {type(obj).__name__}, not an object"
    return obj, None


def verify_entry(entry: str | Path) -> list[str]:
    """Problems found in an entry (empty list = fine): missing shards/arrays, wrong shapes, non-finite values."""
    entry = Path(entry)
    problems: list[str] = []
    try:
        store = FeatureStore(entry, verify=False)
    except DataError as e:
        return [str(e)]
    try:
        if not store.verify_checksums(force=True) and store.manifest["shards"]:  # (an entry without arrays: none)
            problems.append(f"{entry}: no checksums recorded (made by an older medprobe): contents not checked")
    except CorruptEntry as e:
        problems.append(str(e))
    vec_dims: dict[tuple[str, int], int] = {}
    for k, s in enumerate(store.manifest["shards"]):
        d = entry / s["dir"]
        if not (d / "done.json").is_file():
            problems.append(f"{d}: shard not complete")
            continue
        for t in store.tokens:
            for layer in store.layers:
                f = d / array_name(t, layer)
                try:
                    a = np.load(f, mmap_mode="r")
                except (OSError, ValueError) as e:
                    problems.append(f"{f}: unreadable ({type(e).__name__})")
                    continue
                # the width recorded for this array (cls / mean vectors may differ from the patch grid's channels:
                # encoder none's cls is the flattened pixel grid); entries made before widths were recorded: patch
                # grids have the layer's channels, vectors keep one width across shards
                recorded = store.manifest.get("token_dims", {}).get(f.name[:-4])
                want = int(recorded) if recorded is not None else store.dim_of(layer) if t == "patch" else \
                    vec_dims.setdefault((t, layer), a.shape[1] if a.ndim == 2 else -1)
                if a.shape[0] != s["rows"] or a.ndim < 2 or a.shape[1] != want:
                    problems.append(f"{f}: shape {a.shape} does not match manifest ({s['rows']} rows, "
                                    f"dim {want})")
                elif not np.isfinite(np.asarray(a[: min(len(a), 4096)], dtype=np.float32)).all():
                    problems.append(f"{f}: non-finite values")
        _ = k
    return problems


def remove_entry(entry: str | Path) -> None:
    """Delete one cache entry; refuses (ConfigError) any folder that is not a medprobe entry."""
    d = Path(entry)
    if not d.exists():
        return
    if not (_KEY.fullmatch(d.name) and d.is_dir()):
        raise ConfigError("not a medprobe feature-cache entry: refusing to delete it", d)
    shutil.rmtree(d, ignore_errors=True)
