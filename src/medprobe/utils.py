"""Small shared helpers: hashing, atomic writes, canonical JSON, progress, seeding."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing configs."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def hash_obj(obj: Any, n: int = 16) -> str:
    """Short SHA-256 hex digest of the canonical JSON of ``obj``."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Full SHA-256 hex digest of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_open(path: str | Path) -> Iterator[Any]:
    """``with atomic_open(p) as f: f.write(...)``: writes a temp file in the same folder, fsyncs it and
    renames it over ``path`` only when the block succeeds, so a killed run never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str, encoding="utf-8") -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", encoding="utf-8")


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    """Save a .npy atomically (temp + rename)."""
    with atomic_open(path) as f:
        np.save(f, arr, allow_pickle=False)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


class Progress:
    """Minimal progress line with items/s and ETA, written to stderr (quiet when not a TTY and disabled)."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", enabled: bool = True,
                 stream: Any = None, min_interval: float = 0.5) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = time.perf_counter()
        self._last = self.t0
        self.min_interval = min_interval

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.min_interval or (self.total and self.n >= self.total)):
            self._last = now
            self._print(now)

    @property
    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.n / dt if dt > 0 else 0.0

    def _print(self, now: float) -> None:
        rate = self.rate
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            eta_s = f"{eta:5.0f}s" if eta != float("inf") else "   ?s"
            msg = f"\r{self.desc} {self.n}/{self.total} {self.unit} [{rate:7.1f} {self.unit}/s, ETA {eta_s}]"
        else:
            msg = f"\r{self.desc} {self.n} {self.unit} [{rate:7.1f} {self.unit}/s]"
        self.stream.write(msg)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.n:
            self._print(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()


def progress_iter(it: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
                  enabled: bool = True) -> Iterator[T]:
    p = Progress(total, desc, unit, enabled)
    try:
        for x in it:
            yield x
            p.update()
    finally:
        p.close()


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...``; afterwards ``t['s']`` holds the elapsed seconds."""
    d: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        yield d
    finally:
        d["s"] = time.perf_counter() - t0


def default_cache_dir() -> Path:
    return Path(os.environ.get("MEDPROBE_CACHE", "./medprobe-cache"))
