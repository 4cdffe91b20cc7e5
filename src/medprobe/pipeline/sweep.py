"""Sweeps: one YAML = base task options x tasks x a grid of axes, expanded into cells that each give one
results row. Finished cells (same ``config_hash`` already complete in the results DB) are skipped, so a
killed sweep resumes where it stopped.

YAML layout::

    name: my-sweep                 # optional (default: file stem)
    base: {task: tasks/x.yaml, split: {fractions: [0.6, 0.2, 0.2]}, ...}   # TaskSpec fields
    tasks: [tasks/nih14.yaml, {name: inline, dataset: "phantom:xray2d-binary"}]
    grid:
      encoder: [dinov3-vits16, dinov3-vitb16]
      weights: {dinov3-vits16: ~/w/dinov3_vits16_pretrain_lvd1689m-08c60483.pth}  # missing -> random
      encoder_options: {onnx: {onnx_output: /backbone/norm/Add_1_output_0}}  # per encoder (else none)
      resolution: [224, 512]       # or native
      layer: all                   # or [5, 11]; one extraction serves every layer (features.select)
      head: [logreg, knn]
      budget: [0.1, 1.0]           # or ['1/class', '5/class']
      seed: [0, 1, 2]
      fold: all                    # k-fold CV: every fold of the task's split {folds: k} (or [0, 2])
      inputs: [CT, PET, CT+PET]    # input ablation of multi-channel data (data.inputs, e.g. PET/CT)

Cells are ordered task, encoder, resolution, inputs (outer: one extraction each) then fold, layer, budget, seed, head
(inner: they reuse the cached features). The fold axis needs tasks with ``split: {folds: k}``; each fold is one
row, and the report aggregates them (mean and CI across folds, and over the pooled test cases).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError, MedprobeError
from medprobe.pipeline.cellrun import TaggingDB as _TaggingDB
from medprobe.pipeline.cellrun import fmt_s as _fmt_s
from medprobe.pipeline.cellrun import headline as _headline
from medprobe.pipeline.cellrun import ips_finder as _ips_finder
from medprobe.pipeline.cellrun import same_but_head as _same_but_head
from medprobe.pipeline.task import TaskSpec, load_task_raw, merge_raw, parse_task, read_yaml
from medprobe.schema import to_size, unknown_key
from medprobe.utils import hash_obj

log = logging.getLogger("medprobe.sweep")

AXES = ("encoder", "weights", "encoder_options", "resolution", "inputs", "layer", "head", "budget", "seed", "fold")
_SWEEP_KEYS = ("base", "description", "grid", "name", "tasks")


@dataclass
class Sweep:
    """A parsed sweep: name, task specs (base applied) and grid axes."""

    name: str
    tasks: list[TaskSpec]
    grid: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    task_grids: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-task axis overrides
    skipped_tasks: list[str] = field(default_factory=list)  # task files not found (skip_missing)

    @property
    def hash(self) -> str:
        return hash_obj({"tasks": [t.to_dict() for t in self.tasks], "grid": self.grid,
                         "task_grids": self.task_grids}, n=12)

    def grid_for(self, task: str) -> dict[str, Any]:
        return {**self.grid, **self.task_grids.get(task, {})}


@dataclass
class Cell:
    """One point of the grid: a task spec with exactly one head."""

    index: int  # 1-based
    key: str
    spec: TaskSpec
    axes: dict[str, Any]

    @property
    def head(self) -> str:
        return self.spec.heads[0]

    @property
    def config_hash(self) -> str:
        return self.spec.config_hash(self.head)

    @property
    def group(self) -> tuple[Any, ...]:
        """Cells with the same group share one extraction."""
        return (self.axes["task"], self.axes["encoder"], str(self.axes["resolution"]), self.spec.weights)


# ------------------------------------------------------------------------------------------------ loading
def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    return merge_raw(base, over)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    return read_yaml(path, what)


def _resolve_path(p: str, base_dir: Path | None) -> Path:
    q = Path(p).expanduser()
    if q.is_absolute() or q.exists() or base_dir is None:
        return q
    for d in (base_dir, base_dir.parent):  # sweeps/x.yaml referencing tasks/y.yaml from the repo root
        if (d / q).exists():
            return d / q
    return q


def _task_dict(entry: Any, base_dir: Path | None, where: str) -> dict[str, Any]:
    """A task entry (path or mapping, possibly with ``task: path``) as a raw option mapping."""
    if isinstance(entry, str):
        path = _resolve_path(entry, base_dir)
        raw = load_task_raw(path)
        parse_task(raw, source=path)  # a misspelt key is reported against the task file itself
        return raw
    if not isinstance(entry, dict):
        raise ConfigError(f"a task must be a path or a mapping, got {entry!r}", where)
    entry = dict(entry)
    if "task" in entry:
        inner = _task_dict(str(entry.pop("task")), base_dir, where)
        return _merge(inner, entry)
    return entry


def _spec(raw: dict[str, Any], where: str) -> TaskSpec:
    return parse_task(raw, source=where)


def sweep_from_dict(d: dict[str, Any], name: str = "sweep", base_dir: str | Path | None = None,
                    source: str | None = None, skip_missing: bool = False) -> Sweep:
    """Build a :class:`Sweep` from a parsed YAML mapping (paths resolved against ``base_dir``). A task entry
    may carry ``grid:`` (axes overriding the sweep's for that task). ``skip_missing``: leave out task files
    that do not exist (listed in ``skipped_tasks``) instead of failing."""
    where = source or name
    for k in d:
        if k not in _SWEEP_KEYS:
            raise unknown_key("", str(k), _SWEEP_KEYS, where)
    bd = Path(base_dir) if base_dir is not None else None
    base = _task_dict(d.get("base") or {}, bd, where)
    entries = d.get("tasks")
    if entries is None:
        entries = [{}]
    if not isinstance(entries, list) or not entries:
        raise ConfigError("'tasks' must be a non-empty list of task YAML paths or mappings", where)
    specs = []
    task_grids: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    missing = [str(e if isinstance(e, str) else e.get("task")) for e in entries
               if (isinstance(e, str) or (isinstance(e, dict) and isinstance(e.get("task"), str)))
               and not _resolve_path(e if isinstance(e, str) else e["task"], bd).is_file()]
    if missing and not skip_missing:
        raise ConfigError(f"task file(s) not found: {', '.join(missing)} (write them, or pass --skip-missing-tasks)",
                          where)
    for e in entries:
        if str(e if isinstance(e, str) else (e or {}).get("task")) in missing:
            skipped.append(str(e if isinstance(e, str) else e["task"]))
            continue
        tg = None
        if isinstance(e, dict) and "grid" in e:
            e = dict(e)
            tg = e.pop("grid")
        spec = _spec(_merge(base, _task_dict(e, bd, where)), where)
        specs.append(spec)
        if tg:
            if not isinstance(tg, dict):
                raise ConfigError(f"task {spec.name}: grid must map axes ({', '.join(AXES)}) to values", where)
            for k in tg:
                if k not in AXES:
                    raise unknown_key(f"tasks[{spec.name}].grid", str(k), AXES, where)
            task_grids[spec.name] = dict(tg)
    if not specs:
        raise ConfigError("no task of the sweep exists", where)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"task names must be unique in a sweep, got {names}", where)
    grid = d.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"grid must map axes ({', '.join(AXES)}) to values", where)
    grid = dict(grid)
    for k in grid:
        if k not in AXES:
            raise unknown_key("grid", str(k), AXES, where)
    if any("weights" in gr and not isinstance(gr["weights"], dict) for gr in (grid, *task_grids.values())):
        raise ConfigError("grid.weights must map encoder name -> weights path", where)
    if any("encoder_options" in gr and not (isinstance(gr["encoder_options"], dict) and all(
            isinstance(v, dict) for v in gr["encoder_options"].values())) for gr in (grid, *task_grids.values())):
        raise ConfigError("grid.encoder_options must map encoder name -> {option: value}", where)
    return Sweep(name=str(d.get("name") or name), tasks=specs, grid=grid, source=source, task_grids=task_grids,
                 skipped_tasks=skipped)


def load_sweep(path: str | Path, skip_missing: bool = False) -> Sweep:
    """Read a sweep YAML; task paths are resolved against its folder (and that folder's parent)."""
    p = Path(path).expanduser()
    raw = _read_yaml(p, "sweep")
    return sweep_from_dict(raw, name=p.stem, base_dir=p.parent, source=str(p), skip_missing=skip_missing)


# ------------------------------------------------------------------------------------------------ expansion
def _axis(grid: dict[str, Any], name: str, default: Any) -> list[Any]:
    v = grid.get(name)
    if v is None:
        return [default]
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _depth(encoder: str) -> int:
    from medprobe.encoders.registry import get_spec

    return max(1, int(get_spec(encoder).depth))


def _fmt_budget(b: Any) -> str:
    return "all" if b in (None, 1, 1.0, "all") else str(b)


def expand(sweep: Sweep) -> list[Cell]:
    """Every cell of the sweep, grouped so one extraction serves many cells."""
    cells: list[Cell] = []
    sweep_hash = sweep.hash  # once: it hashes every task
    for task in sweep.tasks:
        g = sweep.grid_for(task.name)
        weights = dict(g.get("weights") or {})
        enc_options = dict(g.get("encoder_options") or {})
        for enc in _axis(g, "encoder", task.encoder):
            w = weights.get(enc, task.weights if enc == task.encoder else None)
            # like weights: the grid's options of this encoder, else the task's own options for its own encoder
            opts = dict(enc_options.get(enc, task.encoder_options if enc == task.encoder else {}))
            if isinstance(w, str) and w.strip().lower() in ("", "random", "none"):
                w = None
            w = str(Path(w).expanduser()) if isinstance(w, str) and ("/" in w or w.startswith("~")) else w
            layer_axis = g.get("layer")
            if layer_axis is None:
                layers: list[Any] = [None]
                layer_spec: Any = None
            elif layer_axis == "all" or layer_axis == ["all"]:
                layers = list(range(_depth(enc)))
                layer_spec = "all"
            else:
                layers = [int(v) for v in (layer_axis if isinstance(layer_axis, list) else [layer_axis])]
                depth = _depth(enc)
                layers = sorted({v + depth if v < 0 else v for v in layers})
                layer_spec = ",".join(str(v) for v in layers)
            folds = _folds(task, g.get("fold"), sweep.source or sweep.name)
            for res in _axis(g, "resolution", task.preprocess.resolution):
                for inputs in _axis(g, "inputs", None):
                    for fold in folds:
                        for layer in layers:
                            for budget in _axis(g, "budget", task.budget):
                                for seed in _axis(g, "seed", task.seed):
                                    for head in (_axis(g, "head", None) if g.get("head") is not None
                                                 else task.heads):
                                        cells.append(_cell(task, sweep, enc, w, res, layer, layer_spec, budget,
                                                           seed, head, len(cells) + 1, fold=fold,
                                                           encoder_options=opts, inputs=inputs,
                                                           sweep_hash=sweep_hash))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise ConfigError("the grid produces duplicate cells (repeated axis values?)", sweep.source or sweep.name)
    return cells


def _n_folds(task: TaskSpec) -> int | None:
    """How many folds the task has: its ``split: {folds: k}``, or a dataset's own cross-validation
    (``data: {folds: k, fold: i}``, e.g. BCNB's patient-level 5-fold CV); None when it has none."""
    if task.split.kind == "folds" and task.split.folds is not None:
        return int(task.split.folds)
    if "fold" in task.data and task.data.get("folds") is not None:
        return int(task.data["folds"])
    return None


def _folds(task: TaskSpec, axis: Any, where: str) -> list[int | None]:
    """The fold axis of one task: ``all`` (every fold of its ``split: {folds: k}``), a list or one index;
    ``[None]`` (the task's own split) without the axis."""
    if axis is None:
        return [None]
    k = _n_folds(task)
    if k is None:
        raise ConfigError(f"task {task.name}: grid.fold needs split: {{folds: k}} or a dataset with its own folds "
                          f"(data: {{folds: k, fold: i}}); its split is {task.split.kind}", where)
    if axis == "all" or axis == ["all"]:
        return list(range(k))
    vals = axis if isinstance(axis, (list, tuple)) else [axis]
    try:
        idx = [int(v) for v in vals]
    except (TypeError, ValueError):
        raise ConfigError(f"task {task.name}: grid.fold must be 'all' or fold indices, got {axis!r}", where) from None
    if any(not 0 <= v < k for v in idx) or len(set(idx)) != len(idx):
        raise ConfigError(f"task {task.name}: grid.fold {axis!r} must be distinct indices in 0..{k - 1}", where)
    return list(idx)


def _cell(task: TaskSpec, sweep: Sweep, enc: str, weights: Any, res: Any, layer: int | None, layer_spec: Any,
          budget: Any, seed: Any, head: str, index: int, fold: int | None = None,
          encoder_options: dict[str, Any] | None = None, inputs: Any = None, sweep_hash: str | None = None) -> Cell:
    over: dict[str, Any] = {"encoder": enc, "weights": weights, "heads": [head], "budget": budget,
                            "seed": int(seed)}
    data = dict(task.data)
    if fold is not None:
        if task.split.kind == "folds":
            over["split"] = {**task.to_dict()["split"], "fold": int(fold)}
        else:  # the dataset's own folds
            data["fold"] = int(fold)
    if inputs is not None:  # input ablation (e.g. CT / PET / CT+PET): the dataset's ``inputs`` option
        data["inputs"] = inputs
    if data != dict(task.data):
        over["data"] = data
    where = sweep.source or sweep.name
    if res in (None, "native"):
        over["preprocess"] = {"resolution": None}
        res_label = "native"
    else:
        r = to_size(res, "grid.resolution")
        if r is None:
            raise ConfigError(f"grid.resolution: bad value {res!r}", where)
        over["preprocess"] = {"resolution": list(r)}
        res_label = f"{r[0]}" if r[0] == r[1] else f"{r[0]}x{r[1]}"
    if layer is not None:
        over["features"] = {"layers": layer_spec, "select": int(layer)}
    in_label = [] if inputs is None else [f"i{inputs if isinstance(inputs, str) else '+'.join(map(str, inputs))}"]
    key = "/".join([task.name, enc, f"r{res_label}", *in_label, *([] if fold is None else [f"f{fold}"]),
                    "Ldefault" if layer is None else f"L{layer}", head, f"b{_fmt_budget(budget)}", f"s{seed}"])
    over["notes"] = {"sweep": sweep.name, "sweep_hash": sweep_hash or sweep.hash, "cell": key}
    try:
        base = task.to_dict()
        if encoder_options is not None:  # replaced, not merged: another encoder's options must not leak in
            base["encoder_options"] = dict(encoder_options)
        spec = parse_task(merge_raw(base, over), source=where)
    except ConfigError as e:
        raise ConfigError(f"cell {key}: {e.problem}", where) from None
    axes = {"task": task.name, "encoder": enc, "resolution": res_label, "layer": layer, "head": head,
            "budget": budget, "seed": int(seed), "fold": fold, "inputs": inputs}
    return Cell(index=index, key=key, spec=spec, axes=axes)


# ------------------------------------------------------------------------------------------------ running
def run_sweep(sweep: Sweep | str | Path, db: Any = None, cache_dir: str | None = None, dry_run: bool = False,
              echo: Callable[[str], None] | None = None, stop_on_error: bool = False,
              select: Callable[[Cell], bool] | None = None, overrides: dict[str, Any] | None = None,
              limit: int | None = None, launcher: str | None = None, cluster: Any = None,
              detach: bool = False) -> dict[str, Any]:
    """Run every cell not yet in ``db``; returns ``{total, ran, skipped, failed, cells, run_ids, errors}``.

    Log lines: ``cell i/N done already: skipped <key>``, ``running cell i/N: <key>``, and a progress line
    ``[name] k/N cells done (ran r, skipped s), ETA ...``. ``cache_dir`` overrides every task's feature cache;
    ``select`` keeps only the cells it accepts; ``overrides`` (raw task options, merged like a task file's) are
    applied to every cell; ``limit`` runs at most that many of the cells still to do (the rest wait).
    ``launcher``: ``None`` / ``"inprocess"`` runs the cells here, one after another; ``"local"`` or ``"slurm"``
    runs them as a job graph of processes or SLURM jobs (:mod:`medprobe.pipeline.launch`; ``cluster`` is its
    :class:`~medprobe.pipeline.launch.ClusterConfig`, ``detach`` submits and returns).
    """
    from medprobe.results import ResultsDB

    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    db = db if db is not None else ResultsDB()
    say = echo or (lambda s: print(s, flush=True))
    cells = expand(sw)
    if select is not None:
        cells = [c for c in cells if select(c)]
    if cache_dir is not None or overrides:
        for c in cells:
            over = merge_raw(dict(overrides or {}), {"cache_dir": str(cache_dir)} if cache_dir is not None else {})
            try:
                c.spec = c.spec.with_overrides(**over)
            except ConfigError as e:
                raise ConfigError(f"cell {c.key}: {e.problem}", sw.source or sw.name) from None
    n = len(cells)
    say(f"sweep {sw.name} [{sw.hash}]: {n} cells ({len(sw.tasks)} task(s)) -> {db.path}")
    for t in sw.skipped_tasks:
        say(f"task file {t} not found: its cells are left out")
    stored = db.stored_hashes([c.config_hash for c in cells]) if hasattr(db, "stored_hashes") else None
    done = {c.index: (c.config_hash in stored) if stored is not None else db.find(c.config_hash) is not None
            for c in cells}
    if dry_run:
        for c in cells:
            say(f"  cell {c.index}/{n} {'done' if done[c.index] else 'todo'}: {c.key} [{c.config_hash}]")
        todo = sum(not v for v in done.values())
        say(f"dry run: {n - todo} done, {todo} to run")
        return {"total": n, "ran": 0, "skipped": n - todo, "failed": 0, "todo": todo, "cells": cells,
                "run_ids": [], "errors": []}
    from medprobe.pipeline import run_task

    if limit is not None:  # the first `limit` cells still to do run; the others wait for a later call
        allowed = [c.index for c in cells if not done[c.index]][: max(int(limit), 0)]
        waiting = {c.index for c in cells if not done[c.index]} - set(allowed)
        if waiting:
            say(f"--limit {limit}: {len(waiting)} cell(s) left for a later run")
        cells = [c for c in cells if c.index not in waiting]
        n = len(cells)
    if launcher not in (None, "inprocess"):
        return _launched(sw, cells, done, db, launcher, cluster, say, detach)
    ips = _ips_finder(db, [c.spec.cache_dir for c in cells])
    ran = skipped = failed = 0
    run_ids: list[str] = []
    errors: list[str] = []
    t_run = 0.0
    i = 0
    while i < n:
        c = cells[i]
        if done[c.index]:
            say(f"cell {c.index}/{n} done already: skipped {c.key}")
            skipped += 1
            i += 1
            continue
        # batch consecutive missing cells that differ only in the head: one run_task, one row per head
        batch = [c]
        j = i + 1
        while j < n and not done[cells[j].index] and _same_but_head(cells[j], c) \
                and cells[j].head not in {b.head for b in batch}:
            batch.append(cells[j])
            j += 1
        for b in batch:
            say(f"running cell {b.index}/{n}: {b.key}")
        spec = c.spec.with_overrides(heads=[b.head for b in batch])
        t0 = time.perf_counter()
        try:
            rows = run_task(spec, db=_TaggingDB(db, {b.head: b for b in batch}, ips), verbose=False)
            run_ids += [r["run_id"] for r in rows]
            ran += len(batch)
            for b, r in zip(batch, rows):
                m = _headline(r.get("metrics") or {})
                say(f"  cell {b.index}/{n} finished: {m}")
        except MedprobeError as e:
            failed += len(batch)
            errors.append(f"{c.key}: {e}")
            say(f"  cell {c.index}/{n} FAILED: {e}")
            if stop_on_error:
                raise
        t_run += time.perf_counter() - t0
        i = j
        finished = ran + skipped + failed
        left = n - finished
        eta = t_run / max(ran + failed, 1) * left
        say(f"[{sw.name}] {finished}/{n} cells done (ran {ran}, skipped {skipped}"
            + (f", failed {failed}" if failed else "") + f"), ETA {_fmt_s(eta) if left else '0m00s'}")
    say(f"sweep {sw.name}: {ran} ran, {skipped} skipped (done already), {failed} failed, {n} cells")
    return {"total": n, "ran": ran, "skipped": skipped, "failed": failed, "todo": 0, "cells": cells,
            "run_ids": run_ids, "errors": errors}


def _launched(sw: Sweep, cells: list[Cell], done: dict[int, bool], db: Any, launcher: str, cluster: Any,
              say: Callable[[str], None], detach: bool) -> dict[str, Any]:
    """The cells still to run as a job graph (:func:`medprobe.pipeline.launch.launch`)."""
    from medprobe.pipeline.launch import launch, load_cluster_config

    cfg = cluster if cluster is not None else load_cluster_config()
    todo = [c for c in cells if not done[c.index]]
    skipped = len(cells) - len(todo)
    if skipped:
        say(f"{skipped} of {len(cells)} cells done already: skipped")
    res = launch(sw, todo, db, launcher, cfg, say, total=len(cells), skipped=skipped, detach=detach)
    if res.get("detached"):
        return {"total": len(cells), "ran": 0, "skipped": skipped, "failed": 0, "todo": len(todo), "cells": cells,
                "run_ids": [], "errors": [], "detached": True}
    ran, failed = int(res["ran"]), int(res["failed"])
    run_ids = [r["run_id"] for c in todo for r in [db.find(c.config_hash)] if r is not None]
    say(f"sweep {sw.name}: {ran} ran, {skipped} skipped (done already), {failed} failed, {len(cells)} cells"
        + (f" (launcher {launcher})" if launcher else ""))
    for e in res["errors"]:
        say(f"  {e}")
    return {"total": len(cells), "ran": ran, "skipped": skipped, "failed": failed, "todo": 0, "cells": cells,
            "run_ids": run_ids, "errors": list(res["errors"])}
