"""The results store on a PostgreSQL server: the same schema and API as the SQLite file, for a team.

``ResultsDB("postgresql://user@host:5432/medprobe")`` (or ``--db postgresql://...``, or
``MEDPROBE_RESULTS=postgresql://...``) returns a :class:`PostgresResultsDB`. Rows and metrics live on the
server (tables ``runs``, ``metrics``, ``schema_version``, created on first use); per-case prediction files and
segmentation outputs stay files, under a local folder (``files=``, ``$MEDPROBE_RESULTS_FILES``, default
``./medprobe-results``). Needs psycopg 3 (``pip install 'medprobe[postgres]'``).

Many writers at once are what a server is for: every write is one transaction, and a launched job
(``shards=True``) takes an advisory lock on its config hash first, so two jobs finishing the same cell at the
same moment store one row (no shard files are used with a server).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError
from medprobe.results.db import _SCHEMA, SCHEMA_VERSION, SERVERS, MetricRow, ResultsDB

# the SQLite DDL with PostgreSQL's types: 8-byte floats (SQLite's REAL), a regex for the task-type check, and an
# insertion-order column (SQLite's rowid)
_PG_SCHEMA = (_SCHEMA
              .replace("REAL", "DOUBLE PRECISION")
              .replace("seed                INTEGER", "seed                BIGINT")
              .replace("CHECK (task_type GLOB '[a-z]*' AND task_type NOT GLOB '*[^a-z0-9_-]*')",
                       "CHECK (task_type ~ '^[a-z][a-z0-9_-]*$')")
              .replace("    run_id              TEXT PRIMARY KEY,",
                       "    run_id              TEXT PRIMARY KEY,\n    seq                 BIGSERIAL,"))
_SCHEMA_LOCK = 0x6D656470  # advisory lock id for creating the tables ("medp")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a PostgreSQL results store needs psycopg 3: pip install 'medprobe[postgres]'") from None
    return psycopg


def mask_url(url: str) -> str:
    """The URL without its password (for messages and listings)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class _Con:
    """A psycopg connection answering the SQLite-style ``execute(sql with ?, params)`` the store issues."""

    def __init__(self, con: Any) -> None:
        self.con = con

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.con.execute(sql.replace("?", "%s"), tuple(params) if params else None)


class PostgresResultsDB(ResultsDB):
    """Results store on a PostgreSQL server (see the module docstring); ``path`` is the server URL."""

    _seq = "seq"
    _begin = "BEGIN"

    def __init__(self, path: str | Path | None = None, timeout: float = 120.0, shards: bool = False,
                 files: str | Path | None = None) -> None:
        url = str(path if path is not None else os.environ.get("MEDPROBE_RESULTS", ""))
        self.url = url
        self.path = mask_url(url)  # type: ignore[assignment]  # a display name, not a file
        self.root = Path(files or os.environ.get("MEDPROBE_RESULTS_FILES") or "./medprobe-results").expanduser()
        self.timeout = timeout
        self.shards = bool(shards)
        self._ready = False
        self._tables = False
        self._shard_files = {}
        self._shard_con = None
        self._bad_shards = set()

    def __repr__(self) -> str:
        return f"PostgresResultsDB({self.path!r})"

    def reopen_args(self) -> dict[str, Any]:
        return {"path": self.url, "files": str(self.root)}

    # -- connections -------------------------------------------------------------------------------------------
    @contextmanager
    def _raw(self) -> Iterator[Any]:
        psycopg = _psycopg()
        from psycopg.rows import dict_row

        try:
            con = psycopg.connect(self.url, autocommit=True, row_factory=dict_row,
                                  connect_timeout=max(1, int(self.timeout)))
        except psycopg.Error as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot connect to the results server: {msg}", self.path) from None
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _connect(self) -> Iterator[Any]:  # type: ignore[override]
        psycopg = _psycopg()
        with self._raw() as raw:
            con = _Con(raw)
            try:
                if not self._ready:
                    self._init_schema(con)  # type: ignore[arg-type]
                yield con
            except psycopg.DatabaseError as e:
                if isinstance(e, psycopg.IntegrityError):
                    raise
                raise ConfigError(f"results database error: {str(e).strip().splitlines()[0]}", self.path) from None

    def _init_schema(self, con: Any) -> None:
        with self._transaction(con):
            con.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")  # two first writers: one creates
            for stmt in _PG_SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()
            if row["v"] is None:
                con.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row["v"] > SCHEMA_VERSION:
                raise ConfigError(f"results database has schema version {row['v']}; this medprobe reads up to "
                                  f"{SCHEMA_VERSION} (upgrade medprobe)", self.path)
        self._ready = self._tables = True

    def _integrity_errors(self) -> tuple[type[BaseException], ...]:
        return (_psycopg().IntegrityError,)

    # -- the store's hooks -------------------------------------------------------------------------------------
    def _has_main(self) -> bool:
        if not self._tables:
            with self._raw() as raw:
                self._tables = raw.execute("SELECT to_regclass('runs') AS t").fetchone()["t"] is not None
        return self._tables

    def exists(self) -> bool:
        return self._has_main()

    def _refresh_shards(self) -> dict[str, tuple[float, int, str]]:
        return {}  # a server takes every row directly

    def _store_row(self, row: dict[str, Any], metric_rows: Sequence[MetricRow], unique: bool = False) -> str:
        with self._connect() as con, self._transaction(con):
            if self.shards or unique:  # a launched job: one row per config hash, also when a twin finishes right now
                con.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (row["config_hash"],))
                hit = con.execute("SELECT run_id FROM runs WHERE config_hash = ? ORDER BY created DESC, seq DESC "
                                  "LIMIT 1", (row["config_hash"],)).fetchone()
                if hit is not None:
                    return str(hit["run_id"])
            self._insert_run(con, row)
            self._insert_metrics(con, row["run_id"], metric_rows)
        self._tables = True
        return str(row["run_id"])

    def merge_shards(self) -> dict[str, int]:
        return {"merged": 0, "already": 0, "dropped": 0}

    def _decode(self, row: Mapping[str, Any], metric_rows: list[Any]) -> dict[str, Any]:
        return super()._decode({k: v for k, v in row.items() if k != "seq"}, metric_rows)


SERVERS.register("postgresql", PostgresResultsDB)

__all__ = ["PostgresResultsDB", "mask_url"]
