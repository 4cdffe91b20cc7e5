"""Running sweep cells into a results store -- shared by the in-process sweep (:mod:`medprobe.pipeline.sweep`) and
launched jobs (:mod:`medprobe.pipeline.launch`): the wrapper that tags every stored row with its cell and the compute
figures of cached runs, the images/s of the run that extracted a cache entry, and which cells are one ``run_task``
(cells differing only in the head)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medprobe.errors import MedprobeError


class TaggingDB:
    """Wraps a ResultsDB so every stored record carries its cell tag and compute figures of cached runs."""

    def __init__(self, db: Any, cells_by_head: dict[str, Any], ips_lookup: Callable[[str], float | None]) -> None:
        self._db, self._cells, self._ips = db, cells_by_head, ips_lookup
        self.path = db.path

    def add_run(self, record: dict[str, Any], metrics: Any, predictions: Any = None, split: str = "test",
                **kw: Any) -> str:
        rec = copy.deepcopy(record)
        cell = self._cells.get(rec.get("head", ""))
        notes = dict(rec.get("notes") or {})
        if cell is not None:
            notes.update(cell=cell.key, sweep=cell.spec.notes.get("sweep"),
                         sweep_hash=cell.spec.notes.get("sweep_hash"))
        rec["notes"] = notes
        comp = dict(rec.get("compute") or {})
        try:
            from medprobe.encoders.registry import get_spec

            comp.setdefault("params_m", get_spec(rec["encoder"]).params_m)
            comp.setdefault("depth", get_spec(rec["encoder"]).depth)
        except (MedprobeError, KeyError):
            pass
        if comp.get("images_per_s") is None and notes.get("cache_key"):
            ips = self._ips(str(notes["cache_key"]))
            if ips is not None:
                comp["images_per_s"] = ips
                comp["images_per_s_from"] = "extracting run"
        rec["compute"] = comp
        return str(self._db.add_run(rec, metrics, predictions=predictions, split=split, **kw))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def ips_finder(db: Any, cache_dirs: Iterable[str | None]) -> Callable[[str], float | None]:
    """Images/s of the run that extracted a cache entry: from the DB, else from the entry's manifest."""
    known: dict[str, float] = {}
    loaded = [False]

    def find(key: str) -> float | None:
        if key in known:
            return known[key]
        if not loaded[0]:
            for r in db.runs():
                k = (r.get("labels") or {}).get("cache_key")
                v = (r.get("compute") or {}).get("images_per_s")
                if k and v is not None and not (r.get("timings") or {}).get("cached", False):
                    known.setdefault(k, float(v))
            loaded[0] = True
            if key in known:
                return known[key]
        import json

        from medprobe.utils import default_cache_dir

        for d in {str(c) for c in cache_dirs if c} | {str(default_cache_dir())}:
            mf = Path(d) / key / "manifest.json"
            if mf.is_file():
                m = json.loads(mf.read_text(encoding="utf-8"))
                secs, rows = m.get("seconds_last_run"), m.get("n_rows")
                if secs and rows:
                    known[key] = round(float(rows) / float(secs), 2)
                    return known[key]
        return None

    return find


def fmt_s(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def same_but_head(a: Any, b: Any) -> bool:
    da, db_ = a.spec.to_dict(), b.spec.to_dict()
    for d in (da, db_):
        d.pop("heads")
        d["notes"] = {k: v for k, v in d["notes"].items() if k != "cell"}
    return da == db_


def headline(metrics: dict[str, Any]) -> str:
    for k in ("auc", "acc", "dice", "miou", "iou"):
        if k in metrics:
            v = metrics[k]
            v0 = v[0] if isinstance(v, (tuple, list)) else v
            return f"{k} {v0:.4f}"
    return ""
