"""The study, table by table: which of its rows this machine can reproduce, what is missing, then run them.

:func:`study_coverage` reads the study sweep (``sweeps/dinov3-medical.yaml``) and per task finds

* the data: every place the task reads files from -- its ``kind:path``, its ``data.root``, and the parts of a
  composite dataset (``external:``'s ``data.train`` / ``data.test``, each ``{dataset: kind:path}`` or a
  ``root``) -- each at the path the task file names, else under a data root (``--data-root``) by the dataset's
  usual folder names (:data:`DATA_DIRS`, keyed by the study task, e.g. ``msd-heart``, or by the dataset kind, e.g.
  ``camelyon17``, ``bcnb``);
* the weights of every encoder of the grid (a file that exists; a hub id counts as found).

Every cell of the grid (task x encoder x ... x head) is then

* ``reproducible``: data and weights found (or a head that never runs the encoder, e.g. ``identity``);
* ``untrained-only``: data found, weights not: it runs with random weights, labelled UNTRAINED everywhere (a
  pipeline check, not the study's number);
* ``missing weights``: data found, weights not, and ``--trained-only`` leaves it out;
* ``missing data``: the data was not found (where it looked is printed).

The study's tables (:data:`medprobe.pipeline.study_tables.STUDY_TABLES`, read from the reference tables of
:mod:`medprobe.report.reference`) are printed row by row with the same statuses, plus ``not supported`` with the
reason for rows medprobe cannot produce (supervised networks trained end to end, prompted models, ...: the reference
file's ``why``) and ``not in the sweep`` for rows medprobe produces but no cell of this sweep runs under the paper's
protocol (e.g. MIND + ConvexAdam: encoder-free, no weights needed; the row says what the cell needs).
:func:`study_why` gives the same reasons per study task / encoder / row for the report's study section (written
beside the results database, :func:`medprobe.report.study.save_study_why`, so ``medprobe report`` shows them too).
:func:`study_sweep` turns the runnable part into a sweep (dataset paths rewritten to where the data was found,
missing weights replaced by random ones) for :func:`~medprobe.pipeline.sweep.run_sweep`, which skips cells already
stored (resumable). Torch-free: nothing here imports torch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medprobe.pipeline.study_tables import STUDY_TABLES, StudyRow, StudyTable, table_of
from medprobe.pipeline.sweep import Sweep, load_sweep
from medprobe.pipeline.task import TaskSpec

REPRODUCIBLE = "reproducible"
UNTRAINED = "untrained-only"
MISSING_DATA = "missing data"
MISSING_WEIGHTS = "missing weights"
NOT_SUPPORTED = "not supported"
NOT_IN_SWEEP = "not in the sweep"  # medprobe produces the row, but no cell of this sweep runs the paper's protocol
STATUSES = (REPRODUCIBLE, UNTRAINED, MISSING_DATA, MISSING_WEIGHTS, NOT_SUPPORTED, NOT_IN_SWEEP)
ROW_ONLY = (NOT_SUPPORTED, NOT_IN_SWEEP)  # statuses of printed rows, never of grid cells

_MSD = ("BrainTumour", "Heart", "Liver", "Hippocampus", "Prostate", "Lung", "Pancreas", "HepaticVessel", "Spleen",
        "Colon")

# where each study dataset usually lives under a data root (first hit wins); keyed by study task or dataset kind
DATA_DIRS: dict[str, tuple[str, ...]] = {
    "nih14": ("nih-chestxray14", "nih14", "NIH-ChestXray14"),
    "rsna-pneumonia": ("rsna-pneumonia", "rsna"),
    "kvasir-capsule": ("kvasir-capsule/labelled_images", "kvasir-capsule/labeled-images"),
    "autolaparo": ("autolaparo/task1", "autolaparo", "AutoLaparo_Task1"),
    "ct-rate": ("ct-rate/dataset", "CT-RATE/dataset"),
    "camelyon16": ("camelyon16", "CAMELYON16"),
    "camelyon17": ("camelyon17", "CAMELYON17"),
    "bcnb": ("bcnb", "BCNB"),
    "endovis2018": ("endovis2018", "endovis18", "EndoVis2018"),
    "edd2020": ("edd2020", "EDD2020"),
    **{f"msd-{t.lower()}": (f"msd-task{i:02d}-{t.lower()}", f"Task{i:02d}_{t}") for i, t in enumerate(_MSD, 1)},
    "cremi-a": ("cremi/sample_A_20160501.hdf", "cremi/sample_A.hdf"),
    "cremi-b": ("cremi/sample_B_20160501.hdf", "cremi/sample_B.hdf"),
    "cremi-c": ("cremi/sample_C_20160501.hdf", "cremi/sample_C.hdf"),
    "ac3-ac4": ("snemi3d", "ac3-ac4"),
    "autopet-ii": ("autopet/FDG-PET-CT-Lesions", "FDG-PET-CT-Lesions", "autopet"),
    "hecktor2022": ("hecktor2022", "HECKTOR2022"),
    "camus": ("CAMUS/database_nifti", "camus"),
    "acdc": ("ACDC/database/training", "acdc/training", "acdc"),
}


@dataclass(frozen=True)
class Location:
    """One place a task reads files from: ``key`` (``dataset``, ``data.root``, ``data.test.dataset``, ...), the
    dataset kind there and the path the task names (None: it names none)."""

    key: str
    kind: str
    given: str | None


def _pathlike(arg: str) -> bool:
    return "/" in arg or arg.startswith(("~", ".")) or Path(arg).suffix != ""


def locations(spec: TaskSpec) -> list[Location]:
    """Every place the task reads files from (empty: the dataset needs no files, e.g. ``phantom:``)."""
    kind, _, arg = spec.dataset.partition(":")
    out: list[Location] = []
    if arg and _pathlike(arg):
        out.append(Location("dataset", kind, arg))
    elif spec.data.get("root"):
        out.append(Location("data.root", kind, str(spec.data["root"])))
    for side, sub in spec.data.items():  # composite datasets (external:) name their parts {dataset: kind:path}
        if not isinstance(sub, Mapping) or not isinstance(sub.get("dataset"), str):
            continue
        k2, _, a2 = str(sub["dataset"]).partition(":")
        if a2 and _pathlike(a2):
            out.append(Location(f"data.{side}.dataset", k2, a2))
        elif sub.get("root"):
            out.append(Location(f"data.{side}.root", k2, str(sub["root"])))
    return out


def find_location(loc: Location, keys: list[str], data_roots: list[Path]) -> tuple[Path | None, list[str]]:
    """The path the task names when it exists, else the first of :data:`DATA_DIRS` (of ``keys``) under a root."""
    looked: list[str] = []
    if loc.given is not None:
        p = Path(loc.given).expanduser()
        looked.append(str(p))
        if p.exists():
            return p, looked
    for root in data_roots:
        for key in keys:
            for name in DATA_DIRS.get(key, ()):
                q = root.expanduser() / name
                looked.append(str(q))
                if q.exists():
                    return q, looked
    return None, looked


def _keys(loc: Location, study_task: str | None) -> list[str]:
    keys = [study_task] if (study_task and loc.key in ("dataset", "data.root")) else []
    return [k for k in dict.fromkeys([*keys, loc.kind]) if k]


def find_data(spec: TaskSpec, study_task: str | None, data_roots: list[Path]) -> tuple[Path | None, list[str]]:
    """The task's data: (the first location's path, or None when any location is missing; where it looked)."""
    found, missing, looked = _find_all(spec, study_task, data_roots)
    first = next(iter(found.values()), None)
    return (None if missing else first), looked


def _find_all(spec: TaskSpec, study_task: str | None, roots: list[Path]
              ) -> tuple[dict[str, Path], list[str], list[str]]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    looked: list[str] = []
    for loc in locations(spec):
        hit, seen = find_location(loc, _keys(loc, study_task), roots)
        looked += seen
        if hit is None:
            missing.append(loc.key)
        else:
            found[loc.key] = hit
    return found, missing, looked


def _weights_found(w: Any) -> tuple[str | None, str]:
    if w is None or (isinstance(w, str) and w.strip().lower() in ("", "random", "none", "null")):
        return None, "no weights given"
    s = str(w)
    p = Path(s).expanduser()
    if "/" in s and not s.startswith(("hf:", "http")) and (s.startswith(("~", "/", ".")) or p.suffix):
        return (str(p), "") if p.exists() else (None, str(p))  # a file, or a model folder (safetensors)
    return s, ""  # a hub id or registry weights name: resolved (or refused) when the cell runs


@dataclass
class TaskCoverage:
    """One task of the study sweep on this machine."""

    task: str  # the sweep's task name
    study_task: str | None  # its study key (the reference row it matches)
    table: str | None  # the study table (StudyTable.key) it belongs to
    data_found: Path | None  # the first location's path (None: missing, or the dataset needs no files)
    data_looked: list[str]
    weights: dict[str, str | None]  # encoder -> weights found (None: not found / random)
    weights_missing: dict[str, str]  # encoder -> what was looked for
    n_cells: int = 0
    cells_by_encoder: dict[str, int] = field(default_factory=dict)
    data_paths: dict[str, Path] = field(default_factory=dict)  # location key -> where it was found
    data_missing: list[str] = field(default_factory=list)  # location keys not found
    heads: list[str] = field(default_factory=list)  # the heads of its grid
    inputs: list[Any] = field(default_factory=list)  # the input ablation values of its grid
    head_params: dict[str, Any] = field(default_factory=dict)  # the task's head parameters, per head
    resolutions: list[Any] = field(default_factory=list)  # the resolutions of its grid (None: native)

    @property
    def has_data(self) -> bool:
        return not self.data_missing

    def status(self, encoder: str, needs_weights: bool = True, trained_only: bool = False) -> str:
        """The status of this task's cells of ``encoder`` (``needs_weights`` False: a head that never runs it)."""
        if not self.has_data:
            return MISSING_DATA
        if self.weights.get(encoder):
            return REPRODUCIBLE
        if trained_only:
            return MISSING_WEIGHTS  # study_sweep leaves the encoder out
        return REPRODUCIBLE if not needs_weights else UNTRAINED


def _study_key(name: str) -> str | None:
    from medprobe.report.reference import match_task

    return match_task(name)


def _side(res: Any) -> int | None:
    """A grid resolution as the protocols write it (a square side), None for native / non-square."""
    if isinstance(res, (list, tuple)):
        return int(res[0]) if len(res) == 2 and res[0] == res[1] else None
    return int(res) if isinstance(res, (int, float)) or str(res).isdigit() else None


def study_coverage(sweep: Sweep | str | Path, data_roots: list[str | Path] | None = None) -> list[TaskCoverage]:
    """Per task of the study sweep: the study table, where its data was found, which weights exist."""
    from medprobe.pipeline.sweep import _axis

    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    roots = [Path(r).expanduser() for r in (data_roots or [])]
    out = []
    for spec in sw.tasks:
        key = _study_key(spec.name)
        table = table_of(key)
        found, missing, looked = _find_all(spec, key, roots)
        g = sw.grid_for(spec.name)
        wmap = dict(g.get("weights") or {})
        weights: dict[str, str | None] = {}
        wmissing: dict[str, str] = {}
        for enc in [str(e) for e in _axis(g, "encoder", spec.encoder)]:
            w = wmap.get(enc, spec.weights if enc == spec.encoder else None)
            hit, why = _weights_found(w)
            weights[enc] = hit
            if hit is None:
                wmissing[enc] = why
        heads = [str(h) for h in (_axis(g, "head", None) if g.get("head") is not None else spec.heads)]
        inputs = [spec.data.get("inputs") if v is None else v for v in _axis(g, "inputs", None)]
        res = [_side(r) for r in _axis(g, "resolution", spec.preprocess.resolution)]
        first = next(iter(found.values()), None)
        out.append(TaskCoverage(spec.name, key, table.key if table else None, None if missing else first, looked,
                                weights, wmissing, data_paths=found, data_missing=missing, heads=heads,
                                inputs=inputs, head_params={h: dict(v) for h, v in spec.head_params.items()
                                                            if isinstance(v, Mapping)}, resolutions=res))
    return out


def _set_path(spec: TaskSpec, key: str, path: Path) -> TaskSpec:
    loc = next(x for x in locations(spec) if x.key == key)
    parts = key.split(".")
    if key == "dataset":
        return spec.with_overrides(dataset=f"{loc.kind}:{path}")
    if key == "data.root":
        return spec.with_overrides(data={"root": str(path)})
    side, what = parts[1], parts[2]
    value = f"{loc.kind}:{path}" if what == "dataset" else str(path)
    return spec.with_overrides(data={side: {what: value}})


def _with_data(spec: TaskSpec, found: Path | Mapping[str, Path]) -> TaskSpec:
    """The task reading its data where it was found: a path (the first location) or ``{location key: path}``."""
    if not isinstance(found, Mapping):
        locs = locations(spec)
        found = {locs[0].key: Path(found)} if locs else {}
    for key, path in found.items():
        spec = _set_path(spec, key, path)
    return spec


def _needs_weights(table: StudyTable | None, head: str) -> bool:
    return table is None or head not in table.encoder_free_heads


def _study_notes(spec: TaskSpec, table: StudyTable | None) -> TaskSpec:
    """Records which study table a cell belongs to (notes: stored with the row, not in the config hash)."""
    if table is None:
        return spec
    study = dict(spec.notes.get("study") or {})
    study.setdefault("table", table.key)
    study["table_title"] = table.title
    return spec.with_overrides(notes={"study": study})


def study_sweep(sweep: Sweep | str | Path, coverage: list[TaskCoverage], trained_only: bool = False,
                tasks: list[str] | None = None) -> Sweep | None:
    """The runnable part of the study sweep: tasks whose data was found (paths rewritten to it), encoders whose
    weights were not found run with random weights (UNTRAINED) unless ``trained_only`` leaves them out; ``tasks``
    keeps only those task names. None when nothing can run."""
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    by_name = {c.task: c for c in coverage}
    keep: list[TaskSpec] = []
    grids: dict[str, dict[str, Any]] = {}
    for spec in sw.tasks:
        cov = by_name.get(spec.name)
        if cov is None or not cov.has_data or (tasks and spec.name not in tasks):
            continue
        encs = [e for e, w in cov.weights.items() if w is not None or not trained_only]
        if not encs:
            continue
        table = table_of(cov.study_task)
        keep.append(_study_notes(_with_data(spec, cov.data_paths), table))
        g = copy.deepcopy(sw.grid_for(spec.name))
        g["encoder"] = encs
        g["weights"] = {e: (cov.weights[e] or "random") for e in encs}
        grids[spec.name] = g
    if not keep:
        return None
    return Sweep(name=sw.name, tasks=keep, grid=dict(sw.grid), source=sw.source, task_grids=grids)


def describe(match: Mapping[str, Any]) -> str:
    """A protocol's ``match`` in a few words: ``linear, preset study, 256 px``."""
    head = str(match["head"])
    parts = [head, *(f"head_params.{head}.{k}: {v}" for k, v in (match.get("head_params") or {}).items())]
    if match.get("resolution"):
        parts.append("/".join(str(r) for r in match["resolution"]) + " px")
    if match.get("inputs"):
        parts.append(f"inputs {match['inputs']}")
    if match.get("folds"):
        parts.append(f"{match['folds']}-fold CV")
    if match.get("encoder_free"):
        parts.append("encoder-free (no weights needed)")
    return ", ".join(parts)


def _norm_inputs(v: Any) -> str:
    return "+".join(x.strip().upper() for x in str(v or "").replace(",", "+").split("+") if x.strip())


def grid_gap(row: StudyRow, cov: TaskCoverage) -> str:
    """'' when a cell of the task's grid runs one of the row's protocols (head, head parameters, resolution,
    inputs), else what the closest protocol needs that the grid lacks."""
    gaps: list[str] = []
    for m in row.matches:
        head, g = str(m["head"]), []
        if head not in cov.heads:
            g.append(f"head {head}")
        else:
            have = cov.head_params.get(head) or {}
            g += [f"head_params.{head}.{k}: {v}" for k, v in (m.get("head_params") or {}).items() if have.get(k) != v]
        res = m.get("resolution")
        if res and not set(res) & set(cov.resolutions):
            g.append(f"resolution {'/'.join(str(r) for r in res)}")
        if m.get("inputs") and _norm_inputs(m["inputs"]) not in {_norm_inputs(i) for i in cov.inputs}:
            g.append(f"inputs {m['inputs']}")
        if not g:
            return ""
        gaps.append(", ".join(g))
    return min(gaps, key=len) if gaps else ""


def row_status(row: StudyRow, table: StudyTable, cov: TaskCoverage, trained_only: bool = False) -> tuple[str, str]:
    """(status, why) of one printed row of ``table`` on one of its tasks."""
    if not row.supported:
        return NOT_SUPPORTED, row.reason
    if row.encoder is not None and row.encoder not in cov.weights:
        return NOT_IN_SWEEP, f"{row.encoder} is not in this sweep's grid"
    gap = grid_gap(row, cov)
    if gap:
        free = ", encoder-free: runs without weights" if not row.needs_weights else ""
        return NOT_IN_SWEEP, (f"medprobe produces it{free}; needs a cell with {gap}, which this sweep lacks "
                              f"(data {'found' if cov.has_data else 'missing'})")
    if not cov.has_data:
        return MISSING_DATA, ""
    if row.encoder is None:  # encoder-free (e.g. Unregistered): data only, on any encoder the sweep runs
        runs = any(cov.weights.values()) or not trained_only
        return (REPRODUCIBLE, "") if runs else (MISSING_WEIGHTS, "")
    return cov.status(row.encoder, row.needs_weights, trained_only), ""


def study_why(coverage: list[TaskCoverage], trained_only: bool = False) -> dict[str, str]:
    """Why a study cell has no run, as :func:`medprobe.report.build_report` takes it (``study_why``): keyed by
    study task (``msd-heart``: its data was not found), ``task:encoder`` (weights not found, or not in the grid)
    and ``task:row`` (a printed row no cell of this sweep runs, e.g. ``camus:MIND + ConvexAdam``). Rows medprobe
    cannot produce are left out: the reference file says why."""
    out: dict[str, str] = {}
    for c in coverage:
        key = c.study_task
        if key is None:
            continue
        table = table_of(key)
        if table is None:
            continue
        if not c.has_data:
            out[key] = (f"missing data: {', '.join(c.data_missing)} of task {c.task} not found (looked in "
                        f"{', '.join(c.data_looked[:4]) or '-'}{', ...' if len(c.data_looked) > 4 else ''})")
        for enc, looked in c.weights_missing.items():
            then = "left out (--trained-only)" if trained_only else "its cells run with random weights (UNTRAINED)"
            out[f"{key}:{enc}"] = f"missing weights ({looked}) -> {then}"
        for row in table.rows:
            if not row.supported:
                continue
            s, why = row_status(row, table, c, trained_only)
            if s == NOT_IN_SWEEP and row.encoder is not None and row.encoder not in c.weights:
                out.setdefault(f"{key}:{row.encoder}", f"{NOT_IN_SWEEP}: {why}")
            elif s == NOT_IN_SWEEP:
                out[f"{key}:{row.method}"] = f"{NOT_IN_SWEEP}: {why}"
    return out


def save_why(root: str | Path, coverage: list[TaskCoverage], trained_only: bool = False,
             sweep: str | None = None) -> dict[str, str]:
    """:func:`study_why`, written beside the results database ``root`` (``medprobe report`` reads it); returned."""
    from medprobe.report.study import save_study_why

    why = study_why(coverage, trained_only)
    save_study_why(root, why, sweep=sweep)
    return why


def cell_statuses(coverage: list[TaskCoverage], sweep: Sweep, trained_only: bool = False) -> dict[str, int]:
    """Cells of the whole grid by status (and fills each coverage's ``n_cells`` / ``cells_by_encoder``)."""
    from medprobe.pipeline.sweep import expand

    by_task = {c.task: c for c in coverage}
    totals = {s: 0 for s in STATUSES if s not in ROW_ONLY}
    for c in coverage:
        c.n_cells, c.cells_by_encoder = 0, {}
    for cell in expand(sweep):
        cov = by_task.get(cell.axes["task"])
        if cov is None:
            continue
        enc, head = str(cell.axes["encoder"]), str(cell.axes["head"])
        cov.n_cells += 1
        cov.cells_by_encoder[enc] = cov.cells_by_encoder.get(enc, 0) + 1
        totals[cov.status(enc, _needs_weights(table_of(cov.study_task), head), trained_only)] += 1
    return totals


def _short(enc: str) -> str:
    from medprobe.report.reference import ENCODERS

    return {v: k for k, v in ENCODERS.items()}.get(enc, enc)


def coverage_lines(coverage: list[TaskCoverage], sweep: Sweep, trained_only: bool = False) -> list[str]:
    """The table-by-table report printed by ``medprobe study``: every study table, every printed row with its
    status per task (and why, for rows medprobe cannot produce), where the data was found or looked for, which
    weights are missing, then the cells of the grid by status."""
    totals = cell_statuses(coverage, sweep, trained_only)
    rows_total = {s: 0 for s in STATUSES}
    looked_for: dict[str, str] = {}
    lines: list[str] = []
    for table in STUDY_TABLES:
        covs = [c for c in coverage if c.table == table.key]
        lines.append(f"{table.title}" + (f"  [{table.note}]" if table.note else ""))
        if not covs:
            lines.append(f"  not in this sweep (tasks {', '.join(table.tasks)}): nothing to run here")
            continue
        lines.append("  tasks: " + ", ".join(f"{c.task} ({c.n_cells} cells)" for c in covs))
        prots = list(dict.fromkeys(describe(m) for r in table.rows for m in r.matches))
        if prots:
            lines.append("  the paper's protocol: " + " | ".join(prots))
        unsupported: dict[str, list[str]] = {}
        for row in table.rows:
            per = [(c, *row_status(row, table, c, trained_only)) for c in covs]
            if not row.supported:  # a row medprobe cannot produce counts once, whatever the datasets
                rows_total[NOT_SUPPORTED] += 1
            for _, s, _ in per if row.supported else ():
                rows_total[s] += 1
            if all(s == NOT_SUPPORTED for _, s, _ in per) and len({w for _, _, w in per}) == 1:
                unsupported.setdefault(per[0][2], []).append(row.method)
                continue
            groups: dict[str, list[str]] = {}
            for c, s, w in per:
                groups.setdefault(s + (f" ({w})" if w else ""), []).append(c.task)
            if len(groups) == 1:
                txt = next(iter(groups))
            else:
                txt = "; ".join(f"{g}: " + (", ".join(ts) if len(ts) <= 3 else f"{len(ts)} tasks")
                                for g, ts in groups.items())
            lines.append(f"  {row.method:<28} {txt}" + (f"  -- {row.note}" if row.note else ""))
        for why, methods in unsupported.items():
            lines.append(f"  not supported: {', '.join(methods)} -- {why}")
        for part in table.not_supported:
            lines.append(f"  not supported: {part}")
        printed = {r.encoder for r in table.rows if r.encoder and r.supported}
        for c in covs:
            extra = [e for e in c.weights if e not in printed]
            if extra:
                lines.append(f"  also in the grid for {c.task} (no printed row): "
                             + ", ".join(f"{_short(e)}: {c.status(e, trained_only=trained_only)}" for e in extra))
        for c in covs:
            if c.has_data:
                where = ", ".join(str(p) for p in c.data_paths.values()) or "(the dataset needs no files)"
                lines.append(f"  data of {c.task}: {where}")
            else:
                lines.append(f"  data of {c.task} MISSING ({', '.join(c.data_missing)}): looked in "
                             f"{', '.join(c.data_looked) or '-'}")
        missing_w = list(dict.fromkeys(e for c in covs for e in c.weights_missing))
        if missing_w:
            then = "left out (--trained-only)" if trained_only else "run UNTRAINED (random weights)"
            lines.append(f"  weights not found: {', '.join(_short(e) for e in missing_w)} -> {then}")
        for c in covs:
            looked_for.update(c.weights_missing)
    other = [c for c in coverage if c.table is None]
    if other:
        lines.append("Not a study task: " + ", ".join(c.task for c in other))
    if looked_for:
        lines.append("Weights not found (give them in the sweep's grid.weights):")
        lines += [f"  {e}: {why}" for e, why in looked_for.items()]
    lines.append("study rows (a printed row on one dataset; a row medprobe cannot produce counts once): "
                 + ", ".join(f"{rows_total[s]} {s}" for s in STATUSES))
    lines.append(f"cells: {sum(totals.values())} in the grid: {totals[REPRODUCIBLE]} reproducible (data + weights), "
                 f"{totals[UNTRAINED]} untrained-only (UNTRAINED pipeline checks), {totals[MISSING_WEIGHTS]} missing "
                 f"weights, {totals[MISSING_DATA]} missing data")
    return lines


__all__ = ["DATA_DIRS", "MISSING_DATA", "MISSING_WEIGHTS", "NOT_IN_SWEEP", "NOT_SUPPORTED", "REPRODUCIBLE",
           "STATUSES", "UNTRAINED", "Location", "TaskCoverage", "cell_statuses", "coverage_lines", "describe",
           "find_data", "find_location", "grid_gap", "locations", "row_status", "save_why", "study_coverage",
           "study_sweep", "study_why"]
