"""Results as a pandas data frame for notebooks: ``medprobe.results.load(db)``.

One row per stored run. Metrics of the chosen split are columns named as stored (``auc``) with their CI bounds
(``auc_low``, ``auc_high``); metrics of other splits carry the split as a prefix (``val/auc``). The task config,
timings and compute cost are flattened with dots (``config.features.token``, ``timings.extraction_s``).
pandas is an optional extra (``pip install 'medprobe[pandas]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError

RUN_COLUMNS = ("run_id", "created", "status", "task", "task_type", "dataset", "encoder", "weights", "pretrained",
               "head", "seed", "layers", "resolution", "config_hash", "sweep", "device", "dataset_fingerprint")
FLATTENED = ("config", "timings", "compute")


def flatten(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2, 3]}`` -> ``{"<prefix>.a.b": 1, "<prefix>.c": (2, 3)}`` (lists as tuples, so
    the columns can be grouped on)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        elif isinstance(v, list):
            out[key] = _tuple(v)
        else:
            out[key] = v
    return out


def _tuple(v: Any) -> Any:
    return tuple(_tuple(x) for x in v) if isinstance(v, list) else v


def run_row(run: Mapping[str, Any], split: str = "test") -> dict[str, Any]:
    """One stored run (as :meth:`ResultsDB.runs` returns it) as a flat row."""
    row: dict[str, Any] = {k: _tuple(run.get(k)) for k in RUN_COLUMNS}
    extra = run.get("extra") or {}
    row["encoder_family"] = extra.get("encoder_family")  # None for runs recorded before families were stored
    for sp, metrics in run.get("metrics_all", {}).items():
        pre = "" if sp == split else f"{sp}/"
        for name, (value, low, high) in metrics.items():
            row[f"{pre}{name}"] = value
            row[f"{pre}{name}_low"] = low
            row[f"{pre}{name}_high"] = high
    for part in FLATTENED:
        row.update(flatten(run.get(part) or {}, part))
    return row


def load(db: Any = None, split: str = "test", **filters: Any) -> Any:
    """The results database as a :class:`pandas.DataFrame`, one row per run (oldest first).

    ``db``: a :class:`ResultsDB`, a database file or folder (default: ``./medprobe-results/results.db`` or
    ``$MEDPROBE_RESULTS``); ``split``: whose metrics get the plain column names; ``filters`` as
    :meth:`ResultsDB.runs` takes them (task, encoder, head, sweep, config_hash, ...).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ConfigError("medprobe.results.load needs pandas: pip install 'medprobe[pandas]'") from None
    from medprobe.results.db import ResultsDB

    if db is not None and not isinstance(db, (ResultsDB, str, Path)):
        raise ConfigError(f"medprobe.results.load: db must be a ResultsDB or a path, got {type(db).__name__}")
    rdb = db if isinstance(db, ResultsDB) else ResultsDB(db) if db is not None else ResultsDB()
    if not rdb.exists():
        raise ConfigError("no results database (run a task first or pass the database path)", rdb.path)
    rows = [run_row(r, split) for r in rdb.runs(**filters)]
    if not rows:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    frame = pd.DataFrame(rows)
    frame["created"] = pd.to_datetime(frame["created"], utc=True)
    return frame
