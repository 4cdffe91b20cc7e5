"""Result shards: one small JSON file per stored row, for jobs that finish on many nodes at once.

SQLite's locking is not to be trusted on a shared (NFS) filesystem, so a job launched by ``medprobe sweep
--launcher slurm|local`` never writes the database file. Each row it stores becomes one file
``<db folder>/shards/<config_hash>.json``, published atomically and exclusively: the file is written under a
temporary name, fsynced, then hard-linked to its final name, which fails when the name exists. So

* a reader never sees half a shard (the final name appears complete or not at all);
* two jobs finishing the same cell at the same moment (a retry racing a pre-empted twin) publish one row: the
  first link wins, the second finds the winner and drops its own row (no duplicate);
* jobs of different cells never touch the same file (nothing is lost).

Readers (:class:`~medprobe.results.ResultsDB`) see the database and its shards as one store;
``medprobe results merge`` moves the shards' rows into the database and removes the shards.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError

SHARD_DIR = "shards"
FORMAT = "medprobe-results-shard"


def shard_dir(root: Path) -> Path:
    """The shard folder of a results folder."""
    return Path(root) / SHARD_DIR


def shard_name(config_hash: str) -> str:
    """File name of the shard holding the row of ``config_hash`` (one row per config hash)."""
    if not config_hash or not all(c.isalnum() or c in "-_" for c in config_hash):
        raise ConfigError(f"config hash {config_hash!r} cannot name a result shard")
    return f"{config_hash}.json"


def list_shards(root: Path) -> list[Path]:
    """Published shard files, by name (temporary files of jobs still writing are not listed)."""
    d = shard_dir(root)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(".json") and not n.startswith("."))
    except FileNotFoundError:
        return []
    return [d / n for n in names]


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def encode(row: dict[str, Any], metrics: list[tuple[str, str, float, float | None, float | None]]) -> bytes:
    """A shard's bytes: the ``runs`` row (column -> value) and its metric rows; NaN is written as null."""
    doc = {"format": FORMAT, "version": 1, "run": row,
           "metrics": [[sp, name, _clean(v), _clean(lo), _clean(hi)] for sp, name, v, lo, hi in metrics]}
    return (json.dumps(doc, sort_keys=True, allow_nan=False) + "\n").encode()


def decode(path: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    """``(run row, metric rows)`` of one shard; a file that is not a shard is a one-line ConfigError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"unreadable results shard ({e})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("run"), dict) \
            or not isinstance(doc.get("metrics"), list):
        raise ConfigError("not a medprobe results shard", path)
    return doc["run"], doc["metrics"]


def publish(root: Path, name: str, data: bytes) -> bool:
    """Write ``data`` as shard ``name`` unless a shard of that name exists: True when this call published it.

    Temp file in the shard folder, fsync, then ``os.link`` to the final name (atomic and exclusive, also on
    NFS); where hard links are not supported, an exclusive rename check is the fallback."""
    d = shard_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    final = d / name
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.{uuid.uuid4().hex[:8]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some FUSE / SMB mounts): check, then rename
            if final.exists():
                return False
            os.replace(tmp, final)
            return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["FORMAT", "SHARD_DIR", "decode", "encode", "list_shards", "publish", "shard_dir", "shard_name"]
