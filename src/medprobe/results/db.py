"""SQLite results database: one row per finished run, its metrics with CIs, and per-case prediction files.

Layout beside the database file::

    results.db                  runs + metrics + schema_version (WAL mode)
    predictions/<run_id>.npz    per-case arrays (case ids, y_true, y_score, ...), written atomically
    shards/<config_hash>.json   rows stored by launched jobs (many nodes), one file each (medprobe.results.shards);
                                readers see them with the database's rows; ``medprobe results merge`` moves them in

The same schema and API on a PostgreSQL server: ``ResultsDB("postgresql://user@host/db")``
(:mod:`medprobe.results.postgres`).

Only complete runs are stored. :meth:`ResultsDB.add_run` first writes the predictions file (temp + rename),
then inserts the run row and all its metrics in ONE transaction; if anything fails the transaction is rolled
back and the predictions file removed, so nothing half-written remains. Every write opens a short
``BEGIN IMMEDIATE`` transaction with a long busy timeout, so several processes may add runs at once.

Metric values may be NaN (an undefined metric); SQLite stores NaN as NULL, which reads back as NaN. A CI
bound that is missing or NaN reads back as ``None``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.registry import Registry
from medprobe.results.shards import decode, encode, list_shards, publish, shard_dir, shard_name
from medprobe.utils import atomic_write_bytes, canonical_json, check_output_path, hash_obj, write_new_file

log = logging.getLogger("medprobe.results")
SCHEMA_VERSION = 2  # 2: task_type is any lowercase word (task families are plug-ins); 1 listed them
DB_NAME = "results.db"
TASK_TYPES = ("binary", "multiclass", "multilabel", "ordinal", "regression", "segmentation", "registration",
              "instances")
SPLITS = ("test", "val")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id              TEXT PRIMARY KEY,
    created             TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status = 'complete'),
    task                TEXT NOT NULL,
    task_type           TEXT NOT NULL CHECK (task_type GLOB '[a-z]*' AND task_type NOT GLOB '*[^a-z0-9_-]*'),
    config_json         TEXT NOT NULL,
    config_hash         TEXT NOT NULL,
    encoder             TEXT NOT NULL,
    weights             TEXT NOT NULL,
    pretrained          INTEGER NOT NULL,
    dataset             TEXT,
    dataset_fingerprint TEXT,
    split_json          TEXT,
    seed                INTEGER,
    head                TEXT NOT NULL,
    head_params_json    TEXT,
    layers_json         TEXT,
    resolution_json     TEXT,
    preprocess_json     TEXT,
    versions_json       TEXT,
    device              TEXT,
    timings_json        TEXT,
    compute_json        TEXT,
    labels_json         TEXT,
    sweep               TEXT,
    metrics_split       TEXT NOT NULL,
    predictions_path    TEXT,
    extra_json          TEXT
);
CREATE INDEX IF NOT EXISTS runs_config_hash ON runs (config_hash, created);
CREATE INDEX IF NOT EXISTS runs_task ON runs (task);
CREATE INDEX IF NOT EXISTS runs_encoder ON runs (encoder);
CREATE INDEX IF NOT EXISTS runs_sweep ON runs (sweep);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    split  TEXT NOT NULL CHECK (split IN ({", ".join(repr(s) for s in SPLITS)})),
    name   TEXT NOT NULL,
    value  REAL,
    low    REAL,
    high   REAL,
    PRIMARY KEY (run_id, split, name)
);
"""

# record key -> (column, kind); kind "json" values are stored as canonical JSON and decoded on read
_FIELDS: dict[str, tuple[str, str]] = {
    "task": ("task", "text"),
    "task_type": ("task_type", "text"),
    "config": ("config_json", "json"),
    "config_hash": ("config_hash", "text"),
    "encoder": ("encoder", "text"),
    "weights": ("weights", "text"),
    "pretrained": ("pretrained", "bool"),
    "dataset": ("dataset", "text"),
    "dataset_fingerprint": ("dataset_fingerprint", "text"),
    "split": ("split_json", "json"),
    "seed": ("seed", "int"),
    "head": ("head", "text"),
    "head_params": ("head_params_json", "json"),
    "layers": ("layers_json", "json"),
    "resolution": ("resolution_json", "json"),
    "preprocess": ("preprocess_json", "json"),
    "versions": ("versions_json", "json"),
    "device": ("device", "text"),
    "timings": ("timings_json", "json"),
    "compute": ("compute_json", "json"),
    "labels": ("labels_json", "json"),
}
_ALIASES = {"notes": "labels", "layer": "layers", "preprocessing": "preprocess", "config_json": "config"}
_REQUIRED = ("task", "task_type", "encoder", "head")
_RESERVED = {"run_id", "created", "status", "metrics", "metrics_split", "metrics_all", "predictions_path", "sweep",
             "extra"}
_FILTERS = {"task": "task", "task_type": "task_type", "encoder": "encoder", "weights": "weights", "head": "head",
            "dataset": "dataset", "sweep": "sweep", "config_hash": "config_hash", "status": "status",
            "seed": "seed", "pretrained": "pretrained"}
_RUN_COLUMNS = ("run_id", "created", "status", *(col for col, _ in _FIELDS.values()), "sweep", "metrics_split",
                "predictions_path", "extra_json")
_CSV_FIELDS = ("run_id", "created", "task", "task_type", "dataset", "encoder", "weights", "pretrained", "head",
               "layers", "resolution", "seed", "config_hash", "sweep", "split", "metric", "value", "low", "high")


def _env_results() -> str | None:
    return os.environ.get("MEDPROBE_RESULTS") or None


def default_results_path() -> Path:
    """``$MEDPROBE_RESULTS`` (a .db file or a folder) or ``./medprobe-results/results.db``."""
    return resolve_db_path(_env_results() or "./medprobe-results")


def resolve_db_path(path: str | Path) -> Path:
    """A folder (existing, or a name without suffix) means ``<folder>/results.db``; anything else is the file."""
    p = Path(path).expanduser()
    if p.is_dir() or (not p.exists() and not p.suffix):
        return p / DB_NAME
    return p


def utc_now() -> str:
    """Current time as ISO-8601 UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_environment(device: Any = None) -> dict[str, Any]:
    """``{"versions": {...}, "device": "..."}`` for a run record (merge it into the record).

    Versions of medprobe, torch, transformers, numpy, sklearn and python; ``device`` is a ``torch.device`` or
    string, and CUDA devices get the GPU name appended when torch can tell it.
    """
    from medprobe.version import __version__

    versions = {"medprobe": __version__, "torch": _version("torch"), "transformers": _version("transformers"),
                "numpy": np.__version__, "sklearn": _version("scikit-learn"), "python": platform.python_version()}
    dev = "cpu" if device is None else str(device)
    if dev.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        except Exception:  # pragma: no cover - name is cosmetic
            pass
    return {"versions": versions, "device": dev}


def _as_float(x: Any) -> float | None:
    if x is None:
        return None
    return float(x)


MetricRow = tuple[str, str, Any, Any, Any]  # (split, name, value, low, high); a missing value is None or NaN


def _parse_metrics(metrics: Mapping[str, Any], split: str) -> list[MetricRow]:
    """``{name | "split/name": value | (value, low, high)}`` -> rows ``(split, name, value, low, high)``;
    a missing value is stored as NaN, missing or NaN bounds as ``None``."""
    rows: list[MetricRow] = []
    for key, v in metrics.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"metric names must be non-empty strings, got {key!r}")
        sp, name = key.split("/", 1) if "/" in key and key.split("/", 1)[0] in SPLITS else (split, key)
        try:
            if isinstance(v, (tuple, list, np.ndarray)):
                if len(v) != 3:
                    raise ValueError("needs (value, low, high)")
                value, low, high = (_as_float(t) for t in v)
            else:
                value, low, high = _as_float(v), None, None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"metric {key!r}: expected a number or (value, low, high), got {v!r} ({e})") from None
        if value is None:
            value = math.nan
        low = None if low is None or math.isnan(low) else low
        high = None if high is None or math.isnan(high) else high
        rows.append((sp, name, value, low, high))
    return rows


_RESERVED_PREDICTION_NAMES = frozenset({"file", "allow_pickle"})  # savez_compressed's own parameters


def _check_predictions(predictions: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for k, v in predictions.items():
        arr = np.asarray(v)
        if arr.dtype == object:
            try:
                arr = arr.astype(str)
            except Exception:  # pragma: no cover - astype(str) rarely fails
                raise ConfigError(f"predictions[{k!r}]: cannot store an object array") from None
        if not isinstance(k, str) or not k.isidentifier():
            raise ConfigError(f"prediction names must be identifiers, got {k!r}")
        if k in _RESERVED_PREDICTION_NAMES:
            raise ConfigError(f"prediction name {k!r} is reserved by numpy.savez_compressed")
        out[k] = arr
    return out


# results stores on a server: a back-end module registers its ResultsDB subclass (imported on first use, so this
# module never imports it and there is no cycle)
SERVERS: Registry[type[ResultsDB]] = Registry("results server", builtin=("medprobe.results.postgres",), where="db")


def is_server_url(path: Any) -> bool:
    """True for a PostgreSQL URL (``postgresql://...`` or ``postgres://...``): a server store, not a file."""
    return isinstance(path, str) and path.strip().lower().startswith(("postgresql://", "postgres://"))


class ResultsDB:
    """Results database at ``path`` (file or folder; default :func:`default_results_path`), created on first write.

    Reading a database that does not exist yet behaves as an empty one. Readers see the database and its result
    shards (``<folder>/shards/*.json``, written by launched jobs; :mod:`medprobe.results.shards`) as one store.
    ``shards=True`` (jobs of ``medprobe sweep --launcher ...``): every stored row becomes its own shard file
    instead of a database write (safe from many nodes on a shared filesystem), and a row whose config hash is
    already stored is not added again (its stored run id is returned). ``path`` may be a PostgreSQL URL
    (``postgresql://user@host/db``): the same schema and API on a server (:mod:`medprobe.results.postgres`).
    """

    _seq = "rowid"  # insertion order column (SQLite's rowid)
    _begin = "BEGIN IMMEDIATE"

    def __new__(cls, path: str | Path | None = None, *args: Any, **kwargs: Any) -> ResultsDB:
        if cls is ResultsDB and (is_server_url(path) or (path is None and is_server_url(_env_results()))):
            return super().__new__(SERVERS.get("postgresql"))
        return super().__new__(cls)

    def __init__(self, path: str | Path | None = None, timeout: float = 120.0, shards: bool = False) -> None:
        self.path = resolve_db_path(path) if path is not None else default_results_path()
        self.root = self.path.parent
        self.timeout = timeout
        self.shards = bool(shards)
        self._ready = False
        self._shard_con: sqlite3.Connection | None = None
        self._shard_files: dict[str, tuple[float, int, str]] = {}  # name -> (mtime, size, run_id)
        self._bad_shards: set[str] = set()

    def __repr__(self) -> str:
        return f"ResultsDB({str(self.path)!r})"

    def reopen_args(self) -> dict[str, Any]:
        """Keyword arguments that reopen this store in another process (a launched job):
        ``ResultsDB(**db.reopen_args(), shards=True)``."""
        return {"path": str(self.path)}

    def exists(self) -> bool:
        return self.path.is_file() or bool(list_shards(self.root))

    # -- connections -------------------------------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open results database: {e}", self.path) from None
        try:
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            if not self._ready:
                self._init_schema(con)
            yield con
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.IntegrityError):
                raise
            raise ConfigError(f"results database error: {e}", self.path) from None
        finally:
            con.close()

    @contextmanager
    def _transaction(self, con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        con.execute(self._begin)
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def _init_schema(self, con: sqlite3.Connection) -> None:
        for attempt in range(50):  # switching to WAL needs a moment without other writers
            try:
                con.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.05)
        with self._transaction(con):
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is None:
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                raise ConfigError(f"results database has schema version {row[0]}; this medprobe reads up to "
                                  f"{SCHEMA_VERSION} (upgrade medprobe)", self.path)
            old = row[0] is not None and row[0] < 2
        if old:
            con.execute("PRAGMA foreign_keys = OFF")  # so dropping the old table cascades to no metrics row
            try:
                with self._transaction(con):
                    if con.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] < 2:
                        self._migrate_v1(con)
            finally:
                con.execute("PRAGMA foreign_keys = ON")
        self._ready = True

    def _migrate_v1(self, con: sqlite3.Connection) -> None:
        """Schema 1 -> 2 (in the caller's transaction, foreign keys off): ``runs`` rebuilt without the fixed
        list of task types, every row and index kept; metrics rows keep pointing at their runs."""
        ddl = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS runs"):_SCHEMA.index("CREATE INDEX")]
        con.execute(ddl.replace("CREATE TABLE IF NOT EXISTS runs", "CREATE TABLE runs_v2").rstrip().rstrip(";"))
        con.execute("INSERT INTO runs_v2 SELECT * FROM runs")
        con.execute("DROP TABLE runs")
        con.execute("ALTER TABLE runs_v2 RENAME TO runs")
        for stmt in _SCHEMA.split(";"):
            if "CREATE INDEX" in stmt:
                con.execute(stmt)
        con.execute("UPDATE schema_version SET version = 2")
        log.info("results database %s upgraded to schema 2", self.path)

    # -- writing -----------------------------------------------------------------------------------------------
    def _row_from_record(self, record: Mapping[str, Any]) -> dict[str, Any]:
        rec = dict(record)
        for alias, key in _ALIASES.items():
            if alias in rec:
                if rec.get(key) is not None:
                    raise ConfigError(f"run record has both {alias!r} and {key!r}")
                rec[key] = rec.pop(alias)
        missing = [k for k in _REQUIRED if rec.get(k) in (None, "")]
        if missing:
            raise ConfigError(f"run record lacks {', '.join(missing)}")
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", str(rec["task_type"])):
            raise ConfigError(f"task_type must be a lowercase word (e.g. {', '.join(TASK_TYPES)}); "
                              f"got {rec['task_type']!r}")
        status = rec.pop("status", "complete")
        if status != "complete":
            raise ConfigError(f"only complete runs are stored; got status {status!r}")
        if rec.get("config") is None and not rec.get("config_hash"):
            raise ConfigError("run record needs 'config' (the resolved config) or 'config_hash'")
        rec.setdefault("config", {})
        if not rec.get("config_hash"):
            rec["config_hash"] = hash_obj(rec["config"])
        weights = rec.get("weights")
        rec["weights"] = "none" if weights is None else str(weights)
        if rec.get("pretrained") is None:
            rec["pretrained"] = not (rec["weights"].startswith("random") or rec["weights"] == "none")
        if rec.get("versions") is None:
            rec["versions"] = collect_environment()["versions"]
        labels = rec.get("labels")
        if labels is not None and not isinstance(labels, Mapping):
            raise ConfigError(f"run record 'labels' must be a mapping, got {type(labels).__name__}")
        row: dict[str, Any] = {"created": rec.pop("created", None) or utc_now(), "status": "complete",
                               "sweep": None if not labels or labels.get("sweep") is None else str(labels["sweep"])}
        for key, (col, kind) in _FIELDS.items():
            v = rec.pop(key, None)
            if v is None:
                row[col] = None
            elif kind == "json":
                row[col] = canonical_json(v)
            elif kind == "bool":
                row[col] = int(bool(v))
            elif kind == "int":
                row[col] = int(v)
            else:
                row[col] = str(v)
        rec.pop("run_id", None)
        for k in _RESERVED:
            rec.pop(k, None)
        row["extra_json"] = canonical_json(rec) if rec else None
        return row

    def add_run(self, record: Mapping[str, Any], metrics: Mapping[str, float | tuple[float, float, float]],
                predictions: Mapping[str, np.ndarray] | None = None, split: str = "test", unique: bool = False) -> str:
        """Store one complete run with its metrics (and optional per-case predictions); returns the run id.

        ``record`` keys: task, task_type, config (or config_hash), encoder, weights, pretrained, dataset,
        dataset_fingerprint, split (description), seed, head, head_params, layers, resolution, preprocess,
        versions, device, timings, compute, labels; aliases notes -> labels, layer -> layers, preprocessing ->
        preprocess. Optional run_id and created. Other keys are
        kept under ``extra``. ``metrics`` values are a number or ``(value, low, high)``; a name ``"val/x"``
        stores ``x`` under the val split, otherwise ``split`` is used.

        With ``shards=True`` the row is published as its own shard file (one per config hash); when the hash is
        stored already (a retried job, or a twin finishing at the same moment) nothing is added and the stored
        row's id is returned. ``unique`` applies the same rule to the database (``medprobe run`` asks for it unless
        ``--rerun``): one complete row per config hash, checked inside the write transaction, so identical runs
        finishing at once store one row and the others get the stored row's id.
        """
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        row = self._row_from_record(record)
        metric_rows = [(sp, name, None if math.isnan(v) else v, lo, hi)
                       for sp, name, v, lo, hi in _parse_metrics(metrics, split)]
        run_id = str(record.get("run_id") or uuid.uuid4().hex)
        if not run_id.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"run_id must be alphanumeric (with - or _), got {run_id!r}")
        row["run_id"] = run_id
        row["metrics_split"] = split
        if self.shards or unique:
            stored = self._stored_id(row["config_hash"])
            if stored is not None:
                log.info("config %s is stored already (run %s): not stored again", row["config_hash"], stored)
                return stored
        pred_file: Path | None = None
        if predictions is not None:
            arrays = _check_predictions(predictions)
            pred_file = self.root / "predictions" / f"{run_id}.npz"
            if pred_file.exists():
                raise ConfigError(f"run id {run_id} already has a predictions file", pred_file)
            buf = io.BytesIO()
            np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # stub: **kwds may be allow_pickle
            atomic_write_bytes(pred_file, buf.getvalue())
            row["predictions_path"] = pred_file.relative_to(self.root).as_posix()
        else:
            row["predictions_path"] = None
        try:
            winner = self._store_row(row, metric_rows, unique=unique)
        except BaseException as e:
            if pred_file is not None:
                pred_file.unlink(missing_ok=True)
            if isinstance(e, self._integrity_errors()):
                raise ConfigError(f"cannot store run {run_id}: {e}", self.path) from None
            raise
        if winner != run_id:  # a twin job stored this config first: keep its row, drop ours
            if pred_file is not None:
                pred_file.unlink(missing_ok=True)
            log.info("config %s was stored by another job at the same moment (run %s): kept that row",
                     row["config_hash"], winner)
        return winner

    def _integrity_errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.IntegrityError,)

    def _stored_id(self, config_hash: str) -> str | None:
        hit = self._latest(config_hash)
        return hit[1] if hit else None

    def _store_row(self, row: dict[str, Any], metric_rows: Sequence[MetricRow], unique: bool = False) -> str:
        """Write one run row and its metrics; returns the id of the row now stored for it (another id when a twin
        job's shard of the same config hash won, or with ``unique`` a row of that hash committed first)."""
        if self.shards:
            name = shard_name(row["config_hash"])
            if publish(self.root, name, encode(row, list(metric_rows))):
                return str(row["run_id"])
            other, _ = decode(shard_dir(self.root) / name)
            return str(other["run_id"])
        with self._connect() as con, self._transaction(con):  # BEGIN IMMEDIATE: one writer checks and inserts
            if unique:
                hit = con.execute("SELECT run_id FROM runs WHERE config_hash = ? AND status = 'complete' LIMIT 1",
                                  (row["config_hash"],)).fetchone()
                if hit is not None:
                    return str(hit["run_id"])
            self._insert_run(con, row)
            self._insert_metrics(con, row["run_id"], metric_rows)
        return str(row["run_id"])

    def _insert_run(self, con: Any, row: Mapping[str, Any]) -> None:
        cols = ", ".join(row)
        con.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def _insert_metrics(self, con: Any, run_id: str, rows: Sequence[MetricRow]) -> None:
        for sp, name, value, low, high in rows:
            con.execute("INSERT INTO metrics (run_id, split, name, value, low, high) VALUES (?, ?, ?, ?, ?, ?)",
                        (run_id, sp, name, None if value is None or math.isnan(value) else value, low, high))

    def delete(self, run_id: str) -> None:
        """Remove a run (id or unique prefix), its metrics and its predictions file (a shard's run: the shard)."""
        rid = self._resolve(run_id)
        path = None
        if self._has_main():
            with self._connect() as con, self._transaction(con):
                hit = con.execute("SELECT predictions_path FROM runs WHERE run_id = ?", (rid,)).fetchone()
                if hit is not None:
                    path = hit["predictions_path"]
                    con.execute("DELETE FROM metrics WHERE run_id = ?", (rid,))
                    con.execute("DELETE FROM runs WHERE run_id = ?", (rid,))
        for name, (_, _, shard_run) in list(self._refresh_shards().items()):
            if shard_run == rid:
                row, _ = decode(shard_dir(self.root) / name)
                path = path or row.get("predictions_path")
                (shard_dir(self.root) / name).unlink(missing_ok=True)
        if path:
            (self.root / path).unlink(missing_ok=True)

    # -- shards ------------------------------------------------------------------------------------------------
    def _has_main(self) -> bool:
        return self.path.is_file()

    def _refresh_shards(self) -> dict[str, tuple[float, int, str]]:
        """Bring the in-memory index of the shard files up to date (new files read, removed ones dropped)."""
        files = list_shards(self.root)
        if not files and not self._shard_files:
            return self._shard_files
        if self._shard_con is None:
            self._shard_con = sqlite3.connect(":memory:", isolation_level=None)
            self._shard_con.row_factory = sqlite3.Row
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self._shard_con.execute(stmt)
        con = self._shard_con
        now: dict[str, tuple[float, int]] = {}
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:  # merged meanwhile
                continue
            now[f.name] = (st.st_mtime, st.st_size)
        for name in [n for n in self._shard_files if n not in now or now[n] != self._shard_files[n][:2]]:
            rid = self._shard_files.pop(name)[2]
            con.execute("DELETE FROM metrics WHERE run_id = ?", (rid,))
            con.execute("DELETE FROM runs WHERE run_id = ?", (rid,))
        for name, stamp in now.items():
            if name in self._shard_files:
                continue
            try:
                row, metrics = decode(shard_dir(self.root) / name)
                cols = [c for c in row if c in _RUN_COLUMNS]
                con.execute("BEGIN")
                marks = ", ".join("?" * len(cols))
                con.execute(f"INSERT OR REPLACE INTO runs ({', '.join(cols)}) VALUES ({marks})",
                            tuple(row[c] for c in cols))
                con.execute("DELETE FROM metrics WHERE run_id = ?", (row["run_id"],))
                for m in metrics:
                    con.execute("INSERT INTO metrics (run_id, split, name, value, low, high) "
                                "VALUES (?, ?, ?, ?, ?, ?)", (row["run_id"], *m))
                con.execute("COMMIT")
            except FileNotFoundError:
                continue
            except (ConfigError, sqlite3.Error, KeyError, TypeError) as e:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                if name not in self._bad_shards:
                    self._bad_shards.add(name)
                    print(f"medprobe: warning: {shard_dir(self.root) / name}: not a readable results shard "
                          f"({getattr(e, 'problem', e)}): left out", file=sys.stderr, flush=True)
                continue
            self._shard_files[name] = (*stamp, str(row["run_id"]))
        return self._shard_files

    @contextmanager
    def _sources(self) -> Iterator[list[Any]]:
        """Connections to read from: the database (when it exists), then the shards' index (when any)."""
        shards = bool(self._refresh_shards())
        if not self._has_main():
            yield [self._shard_con] if shards else []
            return
        with self._connect() as con:
            yield [con, self._shard_con] if shards else [con]

    def merge_shards(self) -> dict[str, int]:
        """Move every shard's row into the database, then remove the shard files. A shard whose run id is in the
        database already (an interrupted merge) is just removed; one whose config hash is stored already under
        another run id (two launches racing) is dropped with its predictions file. Returns ``{merged,
        already, dropped}``."""
        out = {"merged": 0, "already": 0, "dropped": 0}
        files = list_shards(self.root)
        if not files:
            return out
        done: list[Path] = []
        drop: list[str] = []
        with self._connect() as con, self._transaction(con):
            for f in files:
                try:
                    row, metrics = decode(f)
                except FileNotFoundError:
                    continue
                rid = row["run_id"]
                if con.execute("SELECT 1 FROM runs WHERE run_id = ?", (rid,)).fetchone() is not None:
                    out["already"] += 1
                elif con.execute("SELECT 1 FROM runs WHERE config_hash = ?", (row["config_hash"],)).fetchone():
                    out["dropped"] += 1
                    if row.get("predictions_path"):
                        drop.append(str(row["predictions_path"]))
                else:
                    self._insert_run(con, {c: row.get(c) for c in _RUN_COLUMNS})
                    self._insert_metrics(con, rid, [tuple(m) for m in metrics])  # type: ignore[misc]
                    out["merged"] += 1
                done.append(f)
        for f in done:  # only once the rows are committed
            f.unlink(missing_ok=True)
        for p in drop:
            (self.root / p).unlink(missing_ok=True)
        self._refresh_shards()
        return out

    # -- reading -----------------------------------------------------------------------------------------------
    def _resolve(self, run_id_or_prefix: str) -> str:
        prefix = str(run_id_or_prefix).strip()
        if not prefix:
            raise ConfigError("empty run id")
        if not self.exists():
            raise ConfigError("no results database here (pass --db or set MEDPROBE_RESULTS)", self.path)
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        ids: list[str] = []
        with self._sources() as cons:
            for con in cons:
                ids += [r["run_id"] for r in con.execute(
                    "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\' ORDER BY run_id LIMIT 6", (pattern,))
                        if r["run_id"] not in ids]
        if prefix in ids:
            return prefix
        if not ids:
            raise ConfigError(f"unknown run id {prefix!r}", self.path)
        if len(ids) > 1:
            raise ConfigError(f"run id prefix {prefix!r} is ambiguous ({', '.join(i[:12] for i in ids[:5])} ...)",
                              self.path)
        return ids[0]

    def _predictions_path(self, rel: str) -> str:
        return str(self.root / rel)

    def _decode(self, row: Any, metric_rows: list[Any]) -> dict[str, Any]:
        d = dict(row)
        out: dict[str, Any] = {"run_id": d["run_id"], "created": d["created"], "status": d["status"]}
        for key, (col, kind) in _FIELDS.items():
            v = d[col]
            if v is not None and kind == "json":
                v = json.loads(v)
            elif v is not None and kind == "bool":
                v = bool(v)
            out[key] = v
        out["sweep"] = d["sweep"]
        out["extra"] = json.loads(d["extra_json"]) if d["extra_json"] else {}
        out["predictions_path"] = self._predictions_path(d["predictions_path"]) if d["predictions_path"] else None
        out["metrics_split"] = d["metrics_split"]
        by_split: dict[str, dict[str, tuple[float, float | None, float | None]]] = {}
        for m in metric_rows:
            value = math.nan if m["value"] is None else float(m["value"])
            by_split.setdefault(m["split"], {})[m["name"]] = (value, m["low"], m["high"])
        out["metrics_all"] = {s: dict(sorted(v.items())) for s, v in sorted(by_split.items())}
        out["metrics"] = out["metrics_all"].get(d["metrics_split"], {})
        return out

    def get(self, run_id_or_prefix: str) -> dict[str, Any]:
        """One run as a dict (record fields + run_id, created, status, metrics {name: (value, low, high)},
        metrics_split, metrics_all {split: {...}}, predictions_path, extra)."""
        rid = self._resolve(run_id_or_prefix)
        with self._sources() as cons:
            for con in cons:
                row = con.execute("SELECT * FROM runs WHERE run_id = ?", (rid,)).fetchone()
                if row is not None:
                    ms = con.execute("SELECT * FROM metrics WHERE run_id = ?", (rid,)).fetchall()
                    return self._decode(row, ms)
        raise ConfigError(f"unknown run id {rid!r}", self.path)  # removed between the two reads

    def _where(self, filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for key, val in filters.items():
            if key not in _FILTERS:
                raise ConfigError(f"unknown results filter {key!r}; use {', '.join(sorted(_FILTERS))}")
            if val is None:
                continue
            col = f"r.{_FILTERS[key]}"
            vals = list(val) if isinstance(val, (list, tuple, set, frozenset)) else [val]
            vals = [int(bool(v)) if key == "pretrained" else v for v in vals]
            clauses.append(f"{col} IN ({', '.join('?' * len(vals))})")
            params.extend(vals)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def runs(self, **filters: Any) -> list[dict[str, Any]]:
        """All runs matching ``filters`` (task, task_type, encoder, weights, head, dataset, sweep, config_hash,
        status, seed, pretrained; a list value matches any), oldest first; the database's rows and its shards'."""
        where, params = self._where(filters)
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        hashes: set[str] = set()
        with self._sources() as cons:
            for i, con in enumerate(cons):
                seq = self._seq if i == 0 else "rowid"
                rows = con.execute(f"SELECT r.* FROM runs r{where} ORDER BY r.created, r.{seq}", params).fetchall()
                ms = con.execute(f"SELECT m.* FROM metrics m JOIN runs r ON r.run_id = m.run_id{where}",
                                 params).fetchall()
                by_run: dict[str, list[Any]] = {}
                for m in ms:
                    by_run.setdefault(m["run_id"], []).append(m)
                if i > 0:  # shard rows the database holds already (mid-merge), or under another id (a racing twin)
                    cand = sorted({r["config_hash"] for r in rows} - hashes)
                    if cand and cons[0] is not con and self._has_main():
                        marks = ", ".join("?" * len(cand))
                        hashes |= {h["config_hash"] for h in cons[0].execute(
                            f"SELECT DISTINCT config_hash FROM runs WHERE config_hash IN ({marks})", cand).fetchall()}
                for r in rows:
                    if r["run_id"] in seen or (i > 0 and r["config_hash"] in hashes):
                        continue
                    seen.add(r["run_id"])
                    if i == 0:
                        hashes.add(r["config_hash"])
                    out.append(self._decode(r, by_run.get(r["run_id"], [])))
        if len(cons) > 1:
            out.sort(key=lambda r: r["created"])  # stable: database rows first at equal times
        return out

    def _latest(self, config_hash: str) -> tuple[str, str] | None:
        """``(created, run_id)`` of the latest complete run with this hash, or None."""
        best: tuple[str, str] | None = None
        with self._sources() as cons:
            for i, con in enumerate(cons):
                row = con.execute(f"SELECT run_id, created FROM runs WHERE config_hash = ? AND status = 'complete' "
                                  f"ORDER BY created DESC, {self._seq if i == 0 else 'rowid'} DESC LIMIT 1",
                                  (config_hash,)).fetchone()
                if row is not None and (best is None or row["created"] > best[0]):
                    best = (row["created"], row["run_id"])
        return best

    def find(self, config_hash: str) -> dict[str, Any] | None:
        """Latest complete run with this config hash, or None (sweeps use it to skip finished cells)."""
        if not self.exists():
            return None
        hit = self._latest(config_hash)
        return self.get(hit[1]) if hit else None

    def stored_hashes(self, hashes: Sequence[str] | None = None) -> set[str]:
        """The config hashes (of ``hashes``, or all) that have a complete stored run: one query, for sweeps
        checking many cells."""
        out: set[str] = set()
        if not self.exists():
            return out
        with self._sources() as cons:
            for con in cons:
                if hashes is None:
                    out |= {r["config_hash"] for r in con.execute("SELECT DISTINCT config_hash FROM runs")}
                    continue
                hs = list(hashes)
                for k in range(0, len(hs), 500):
                    part = hs[k:k + 500]
                    out |= {r["config_hash"] for r in con.execute(
                        f"SELECT DISTINCT config_hash FROM runs WHERE config_hash IN ({', '.join('?' * len(part))})",
                        part)}
        return out

    def metrics_table(self, metric: str = "auc", split: str = "test", **filters: Any) -> list[dict[str, Any]]:
        """Flat rows, one per run that has ``metric`` in ``split``: run fields + metric, value, low, high."""
        out = []
        for r in self.runs(**filters):
            m = r["metrics_all"].get(split, {}).get(metric)
            if m is None:
                continue
            flat = {k: r[k] for k in ("run_id", "created", "task", "task_type", "dataset", "encoder", "weights",
                                      "pretrained", "head", "layers", "resolution", "seed", "config_hash", "sweep",
                                      "labels", "device", "timings", "compute")}
            flat.update(split=split, metric=metric, value=m[0], low=m[1], high=m[2])
            out.append(flat)
        return out

    def load_predictions(self, run_id: str) -> dict[str, np.ndarray]:
        """The per-case arrays stored with a run."""
        r = self.get(run_id)
        path = r["predictions_path"]
        if not path:
            raise ConfigError(f"run {r['run_id']} has no stored predictions", self.path)
        if not os.path.isfile(path):
            raise ConfigError("predictions file is missing", path)
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def export_csv(self, path: str | Path, force: bool = False, **filters: Any) -> int:
        """Write one CSV row per run x metric (atomic); returns the number of data rows. An existing ``path`` is
        replaced only with ``force``, and never when it is a database (this one or any other SQLite file)."""
        check_output_path(path, force)
        if isinstance(self.path, Path) and Path(path).resolve() == self.path.resolve():
            raise ConfigError("is the results database itself: name another file for the export", path)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(_CSV_FIELDS)
        n = 0
        for r in self.runs(**filters):
            for sp, ms in r["metrics_all"].items():
                for name, (value, low, high) in ms.items():
                    vals = {**r, "split": sp, "metric": name, "value": value, "low": low, "high": high}
                    w.writerow([_csv_cell(vals[k]) for k in _CSV_FIELDS])
                    n += 1
        write_new_file(path, buf.getvalue().encode("utf-8"), force=force)
        return n


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return canonical_json(v)
    return str(v)
