"""The study, table by table: which of its rows this machine can reproduce, what is missing, then run them.

:func:`study_coverage` reads the study sweep (``sweeps/dinov3-medical.yaml``), groups its tasks by the study's
tables (:data:`medprobe.report.reference.TABLES`, through each task's reference row), and per task finds

* the data: the task file's own path, else one of the dataset's usual folder names (:data:`DATA_DIRS`) under a
  data root (``--data-root``, e.g. ``/work/shared/data``);
* the weights of every encoder of the grid (a file that exists; a hub id counts as found).

A row (task x encoder) is ``reproducible`` (data and weights found), ``untrained`` (data found, weights not: it
runs with random weights, labelled UNTRAINED everywhere -- a pipeline check, not the study's number) or
``no data``. :func:`study_sweep` turns the runnable part into a sweep (dataset paths rewritten to
where the data was found, missing weights replaced by random ones) for :func:`~medprobe.pipeline.sweep.run_sweep`.
Torch-free: nothing here imports torch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medprobe.pipeline.sweep import Sweep, load_sweep
from medprobe.pipeline.task import TaskSpec

_MSD = ("BrainTumour", "Heart", "Liver", "Hippocampus", "Prostate", "Lung", "Pancreas", "HepaticVessel", "Spleen",
        "Colon")

# where each study dataset usually lives under a data root (first hit wins)
DATA_DIRS: dict[str, tuple[str, ...]] = {
    "nih14": ("nih-chestxray14", "nih14", "NIH-ChestXray14"),
    "rsna-pneumonia": ("rsna-pneumonia", "rsna"),
    "kvasir-capsule": ("kvasir-capsule/labelled_images", "kvasir-capsule/labeled-images"),
    "autolaparo": ("autolaparo/task1", "autolaparo", "AutoLaparo_Task1"),
    "ct-rate": ("ct-rate/dataset", "CT-RATE/dataset"),
    "camelyon16": ("camelyon16",),
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
    "acdc": ("ACDC/database", "acdc"),
}


@dataclass
class TaskCoverage:
    """One study task of the sweep on this machine."""

    task: str  # the sweep's task name
    study_task: str | None  # the reference row it matches
    table: str | None
    data_found: Path | None
    data_looked: list[str]
    weights: dict[str, str | None]  # encoder -> weights found (None: not found / random)
    weights_missing: dict[str, str]  # encoder -> what was looked for
    n_cells: int = 0
    cells_by_encoder: dict[str, int] = field(default_factory=dict)

    def status(self, encoder: str) -> str:
        if self.data_found is None:
            return "no data"
        return "reproducible" if self.weights.get(encoder) else "untrained"


def _location(spec: TaskSpec) -> tuple[str, str | None]:
    """Where a task reads its data: ``("arg", path)`` for ``kind:path``, ``("root", data.root)`` for
    ``kind:`` with a root option, else ``("none", None)``."""
    _, _, arg = spec.dataset.partition(":")
    if arg:
        return "arg", arg
    root = spec.data.get("root")
    return ("root", str(root)) if root else ("none", None)


def find_data(spec: TaskSpec, study_task: str | None, data_roots: list[Path]) -> tuple[Path | None, list[str]]:
    """The task's data: its own path when it exists, else the first of :data:`DATA_DIRS` under a data root."""
    kind, where = _location(spec)
    looked: list[str] = []
    if where is not None:
        p = Path(where).expanduser()
        looked.append(str(p))
        if p.exists():
            return p, looked
    for root in data_roots:
        for name in DATA_DIRS.get(study_task or "", ()):
            q = root.expanduser() / name
            looked.append(str(q))
            if q.exists():
                return q, looked
    if kind == "none" and where is None:
        looked.append("(the dataset needs no files)" if not spec.dataset.partition(":")[2] else "")
    return None, [x for x in looked if x]


def _weights_found(w: Any) -> tuple[str | None, str]:
    if w is None or (isinstance(w, str) and w.strip().lower() in ("", "random", "none", "null")):
        return None, "no weights given"
    s = str(w)
    p = Path(s).expanduser()
    if "/" in s and not s.startswith(("hf:", "http")) and (s.startswith(("~", "/", ".")) or p.suffix):
        return (str(p), "") if p.is_file() else (None, str(p))
    return s, ""  # a hub id or registry weights name: resolved (or refused) when the cell runs


def study_coverage(sweep: Sweep | str | Path, data_roots: list[str | Path] | None = None) -> list[TaskCoverage]:
    """Per task of the study sweep: the study table, where its data was found, which weights exist."""
    from medprobe.pipeline.sweep import _axis
    from medprobe.report.reference import match_task, references_for

    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    roots = [Path(r).expanduser() for r in (data_roots or [])]
    out = []
    for spec in sw.tasks:
        key = match_task(spec.name)
        refs = references_for(spec.name)
        data, looked = find_data(spec, key, roots)
        g = sw.grid_for(spec.name)
        wmap = dict(g.get("weights") or {})
        found: dict[str, str | None] = {}
        missing: dict[str, str] = {}
        encs = [str(e) for e in _axis(g, "encoder", spec.encoder)]
        for enc in encs:
            w = wmap.get(enc, spec.weights if enc == spec.encoder else None)
            hit, why = _weights_found(w)
            found[enc] = hit
            if hit is None:
                missing[enc] = why
        out.append(TaskCoverage(spec.name, key, refs[0].table if refs else None, data, looked, found, missing))
    return out


def _with_data(spec: TaskSpec, path: Path) -> TaskSpec:
    kind, _ = _location(spec)
    if kind == "root":
        return spec.with_overrides(data={"root": str(path)})
    prefix = spec.dataset.partition(":")[0]
    return spec.with_overrides(dataset=f"{prefix}:{path}")


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
        if cov is None or cov.data_found is None or (tasks and spec.name not in tasks):
            continue
        encs = [e for e, w in cov.weights.items() if w is not None or not trained_only]
        if not encs:
            continue
        keep.append(_with_data(spec, cov.data_found))
        g = copy.deepcopy(sw.grid_for(spec.name))
        g["encoder"] = encs
        g["weights"] = {e: (cov.weights[e] or "random") for e in encs}
        grids[spec.name] = g
    if not keep:
        return None
    return Sweep(name=sw.name, tasks=keep, grid=dict(sw.grid), source=sw.source, task_grids=grids)


def coverage_lines(coverage: list[TaskCoverage], sweep: Sweep) -> list[str]:
    """The table-by-table report printed by ``medprobe study``."""
    from medprobe.pipeline.sweep import expand
    from medprobe.report.reference import ENCODERS, TABLES, reference_table

    cells = expand(sweep)
    for c in coverage:
        mine = [x for x in cells if x.axes["task"] == c.task]
        c.n_cells = len(mine)
        c.cells_by_encoder = {e: sum(x.axes["encoder"] == e for x in mine) for e in c.weights}
    lines: list[str] = []
    totals = {"reproducible": 0, "untrained": 0, "no data": 0}
    for tkey, title in TABLES.items():
        rows = [c for c in coverage if c.table == tkey]
        lines.append(f"Table: {title}")
        if not rows:
            study = sorted({r.task for r in reference_table() if r.table == tkey})
            lines.append(f"  not in this sweep ({', '.join(study)}): nothing to run here yet")
            continue
        for c in rows:
            per = {e: c.status(e) for e in c.weights}
            for e, s in per.items():
                totals[s] += c.cells_by_encoder.get(e, 0)
            short = {v: k for k, v in ENCODERS.items()}
            enc_txt = ", ".join(f"{short.get(e, e)}: {s}" for e, s in per.items())
            lines.append(f"  {c.task:<20} {c.n_cells:>3} cells  {enc_txt}")
            if c.data_found is not None:
                lines.append(f"    data: {c.data_found}")
            else:
                lines.append(f"    data MISSING: looked in {', '.join(c.data_looked) or '-'}")
            for e, why in c.weights_missing.items():
                if c.data_found is not None:
                    lines.append(f"    weights of {e} not found ({why}): runs UNTRAINED (random weights)")
    other = [c for c in coverage if c.table is None]
    if other:
        lines.append("Not a study task: " + ", ".join(c.task for c in other))
    lines.append(f"cells: {totals['reproducible']} reproducible (data + weights), {totals['untrained']} runnable "
                 f"only as UNTRAINED pipeline checks, {totals['no data']} without data")
    return lines


__all__ = ["DATA_DIRS", "TaskCoverage", "coverage_lines", "find_data", "study_coverage", "study_sweep"]
