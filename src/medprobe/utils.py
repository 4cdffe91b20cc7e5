"""Small shared helpers: hashing, atomic writes, canonical JSON, progress, seeded torch blocks."""

from __future__ import annotations

import hashlib
import json
import os
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


_SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite_file(path: str | Path) -> bool:
    """True when ``path`` is a SQLite database file (its 16-byte header), e.g. a medprobe results database."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def check_output_path(path: str | Path, force: bool = False) -> Path:
    """An output file the caller may write: never a SQLite database (whatever ``force``), never a folder, and an
    existing file only with ``force``. Raises ``ConfigError`` naming the file."""
    from medprobe.errors import ConfigError

    p = Path(path)
    if p.is_dir():
        raise ConfigError("is a folder, not an output file", p)
    if is_sqlite_file(p) or (p.exists() and p.suffix.lower() in (".db", ".sqlite", ".sqlite3") and p.stat().st_size):
        raise ConfigError("is a database: medprobe never writes an export over it; name another file", p)
    if p.exists() and not force:
        raise ConfigError("exists already: not overwritten (add --force to replace it)", p)
    return p


def write_new_file(path: str | Path, data: bytes, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically after :func:`check_output_path`; without ``force`` the file is
    published with a hard link, so a file someone creates meanwhile is never replaced either."""
    from medprobe.errors import ConfigError

    p = check_output_path(path, force)
    if force:
        atomic_write_bytes(p, data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, p)
        except FileExistsError:
            raise ConfigError("exists already: not overwritten (add --force to replace it)", p) from None
        except OSError:  # a filesystem without hard links: the check above is the guard
            if p.exists():
                raise ConfigError("exists already: not overwritten (add --force to replace it)", p) from None
            os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n", encoding="utf-8")


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    """Save a .npy atomically (temp + rename)."""
    with atomic_open(path) as f:
        np.save(f, arr, allow_pickle=False)


@contextmanager
def torch_seeded(seed: int, device: Any = None) -> Iterator[None]:
    """Inside the block torch's global random stream starts from ``seed`` (the numbers drawn are those after
    ``torch.manual_seed(seed)``); on exit every generator it touched is restored, so no seeding leaks out.

    ``device``: where the block computes; a CUDA device (or CUDA already started) seeds and restores the CUDA
    generators too, as ``torch.manual_seed`` would; on CPU only the CPU generator is touched."""
    import torch

    cuda = torch.cuda.is_available() and (torch.cuda.is_initialized()
                                          or (device is not None and torch.device(device).type == "cuda"))
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        if cuda:
            torch.manual_seed(int(seed))
        else:
            torch.random.default_generator.manual_seed(int(seed))
        yield


class Progress:
    """Progress of a loop with items/s and ETA on stderr, drawn by tqdm.

    On a terminal it is tqdm's bar (redrawn in place); otherwise (a log file, a pipe) it writes one plain line
    every ``log_interval`` seconds or every 10 % of ``total``, whichever comes first, and a last one on
    ``close()``: no carriage returns. ``enabled=False`` prints nothing but still counts (``n``, ``rate``).
    """

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", enabled: bool = True,
                 stream: Any = None, min_interval: float = 0.5, log_interval: float = 10.0) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.n = 0
        self.t0 = time.perf_counter()
        self.min_interval, self.log_interval = min_interval, log_interval
        self._bar: Any = None
        self._last_t = self.t0
        self._last_n = 0
        self._printed_n = -1
        if enabled and _is_tty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, mininterval=min_interval,
                             dynamic_ncols=True, leave=True)

    @property
    def rate(self) -> float:
        """Items per second since the start."""
        dt = time.perf_counter() - self.t0
        return self.n / dt if dt > 0 else 0.0

    def update(self, k: int = 1) -> None:
        """Count ``k`` more items (and draw when due)."""
        self.n += k
        if self._bar is not None:
            self._bar.update(k)
        elif self.enabled:
            now = time.perf_counter()
            step = max(1, -(-self.total // 10)) if self.total else 0
            due = now - self._last_t >= self.log_interval or (step and self.n - self._last_n >= step)
            if due or (self.total and self.n >= self.total):
                self._line(now)

    def line(self) -> str:
        """The plain progress line: ``desc: n/total unit (p%) [elapsed<ETA, rate]``."""
        from tqdm import tqdm

        fmt = ("{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}]"
               if self.total else "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]")
        return str(tqdm.format_meter(self.n, self.total, time.perf_counter() - self.t0, prefix=self.desc,
                                     unit=self.unit, bar_format=fmt))

    def _line(self, now: float) -> None:
        self._last_t, self._last_n = now, self.n
        if self.n == self._printed_n:
            return
        self._printed_n = self.n
        self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state (once) and release the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n:
            self._line(time.perf_counter())


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_iter(it: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
                  enabled: bool = True) -> Iterator[T]:
    """Yield from ``it`` while a :class:`Progress` counts."""
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


def weights_memo_path() -> Path:
    """Where remembered weight hashes live: beside the feature cache (per project, not per home directory)."""
    return default_cache_dir() / "weights-sha256.json"


def memo_sha256(path: str | Path, memo_file: Path) -> str:
    """SHA-256 of a file, remembered in ``memo_file`` (so multi-GB files hash once) under a key that any change
    of content invalidates: path, size, mtime, ctime and inode (rewriting a file in place and restoring its mtime
    still moves its ctime, which no user call can set back)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    try:
        memo = json.loads(memo_file.read_text(encoding="utf-8"))
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return str(memo[key])
    digest = sha256_file(path)
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{path}|")}  # one entry per file: the latest
    memo[key] = digest
    try:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(memo_file, memo)
    except OSError:
        pass
    return digest


_WEIGHT_FILES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".onnx", ".npz", ".json", ".txt", ".model")


def weights_content_id(path: str | Path, memo_file: Path | None = None) -> str:
    """The identity of local weights by content: ``sha256:<hex>`` of a file, or for a model folder the hash of
    its files' names and SHA-256s (weights, configs, tokenizers; each remembered as in :func:`memo_sha256`).
    Moving or renaming the weights keeps the identity; any change of bytes changes it."""
    memo = memo_file if memo_file is not None else weights_memo_path()
    p = Path(path).expanduser()
    if p.is_file():
        return "sha256:" + memo_sha256(p, memo)
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _WEIGHT_FILES
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    listing = [(f.relative_to(p).as_posix(), memo_sha256(f, memo)) for f in files]
    return "sha256-folder:" + hashlib.sha256(canonical_json(listing).encode()).hexdigest()
