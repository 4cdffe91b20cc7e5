"""Sweeps as a job graph on a SLURM cluster or as local worker processes, through submitit.

``medprobe sweep SWEEP.yaml --launcher slurm`` (or ``local``; the default runs in this process) turns the cells
still to run into a graph of jobs:

* cells that share features (same dataset, data options, encoder, weights, encoder options, preprocessing and
  extraction options) wait on **one extraction job** for that group -- a multi-GPU job when ``extract_gpus`` > 1:
  one process per GPU, each encoding its share of the items (the engine's ``--shard`` path, no process group);
* then fan out into **head jobs** (``cells_per_job`` cells each; cells differing only in the head are always one
  ``run_task`` call). On SLURM a group's head jobs are one job array, submitted at once with
  ``--dependency=afterok:<extraction job>`` (and ``--kill-on-invalid-dep=yes``); locally, at most ``workers``
  jobs run at a time and a head job starts once its extraction job succeeded. A group with one head job and
  single-GPU extraction gets no separate extraction job (the head job extracts).

Every job writes its rows as result shards (:mod:`medprobe.results.shards`; on a PostgreSQL store straight to the
server), one row per config hash, so rows are safe from many nodes and a retried job never duplicates a row.
A failed or pre-empted job is retried (``retries``; SLURM pre-emption and time-outs are requeued by submitit,
the job resumes): finished cells are skipped (their rows are stored) and extraction resumes from its finished
cache shards. The controller stays in the foreground, prints progress, and cancels its jobs on Ctrl-C; with
``--detach`` (SLURM) it submits and returns. ``jobs.json`` in the jobs folder (default ``<db folder>/jobs/<sweep
name>``) records every job and attempt: ``medprobe sweep --status`` shows done / running / failed cells with
their log paths, ``--cancel`` cancels what still runs, and a relaunch adopts jobs still queued or running.

Cluster options (:class:`ClusterConfig`) have defaults in a user file, ``$MEDPROBE_CLUSTER_CONFIG`` or
``~/.config/medprobe/cluster.yaml`` (keys as the fields below); flags override them. See docs/cluster.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError, MedprobeError
from medprobe.schema import opt, parse_section
from medprobe.utils import atomic_write_json, hash_obj

log = logging.getLogger("medprobe.launch")

LAUNCHERS = ("inprocess", "local", "slurm")
STATE_FILE = "jobs.json"
CANCEL_FILE = "CANCEL"  # written by --cancel: a controller still following the jobs stops instead of retrying
ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled", "blocked")
_SLURM_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "SUSPENDED", "RESIZING",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "READY", "UNKNOWN", "PREEMPTED"}


# ------------------------------------------------------------------------------------------------ options
def _time_min(v: Any, path: str) -> int:
    """SLURM time limit as minutes: ``240``, ``"4:00:00"`` (h:m:s), ``"30:00"`` (m:s), ``"1-12"`` (d-h),
    ``"2-00:00:00"``."""
    if isinstance(v, bool):
        raise ConfigError(f"{path}: a time limit in minutes or [D-]HH:MM:SS, got {v!r}")
    if isinstance(v, (int, float)):
        if v <= 0:
            raise ConfigError(f"{path}: must be positive, got {v!r}")
        return int(round(v))
    s = str(v).strip()
    try:
        days, _, rest = s.rpartition("-") if "-" in s else ("0", "", s)
        parts = [int(p) for p in rest.split(":")]
        d = int(days or 0)
        if "-" in s:  # d-h, d-h:m, d-h:m:s
            h, m, sec = (parts + [0, 0])[:3]
        elif len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = 0, parts[0], parts[1]
        elif len(parts) == 3:
            h, m, sec = parts
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{path}: a time limit in minutes or [D-]HH:MM:SS, got {v!r}") from None
    total = d * 1440 + h * 60 + m + (1 if sec else 0)
    if total <= 0:
        raise ConfigError(f"{path}: must be positive, got {v!r}")
    return total


def _int_opt(lo: int, optional: bool = False) -> Callable[[Any, str], Any]:
    def norm(v: Any, path: str) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ConfigError(f"{path}: an integer >= {lo}, got {v!r}")
        try:
            i = int(v)
        except ValueError:
            raise ConfigError(f"{path}: an integer >= {lo}, got {v!r}") from None
        if i < lo:
            raise ConfigError(f"{path}: an integer >= {lo}, got {v!r}")
        return i

    return norm


def _str_opt(v: Any, path: str) -> str | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if not isinstance(v, (str, int)):
        raise ConfigError(f"{path}: a string, got {v!r}")
    return str(v).strip()


def _lines(v: Any, path: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{path}: a list of strings, got {v!r}")
    return tuple(x.strip() for x in v if x.strip())


def _float_opt(v: Any, path: str) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: a number, got {v!r}") from None
    if f <= 0:
        raise ConfigError(f"{path}: must be positive, got {v!r}")
    return f


@dataclass(frozen=True)
class ClusterConfig:
    """How a launched sweep runs its jobs (none of these change a number)."""

    workers: int = opt(2, norm=_int_opt(1), numbers=False, type="int",
                       help="local launcher: jobs running at once")
    partition: str | None = opt(None, norm=_str_opt, numbers=False, type="str",
                                help="SLURM partition, e.g. gpu")
    gpus: int | None = opt(None, norm=_int_opt(0, optional=True), numbers=False, type="int",
                           help="GPUs per job (SLURM default 1; local default: 1 when GPUs are visible, else 0)")
    extract_gpus: int | None = opt(None, norm=_int_opt(1, optional=True), numbers=False, type="int",
                                   help="GPUs of an extraction job, one process each (default: gpus)")
    cpus: int | None = opt(None, norm=_int_opt(1, optional=True), numbers=False, type="int",
                           help="CPUs per task (SLURM --cpus-per-task)")
    mem_gb: float | None = opt(None, norm=_float_opt, numbers=False, type="float", help="memory per job in GB")
    time: int = opt(240, norm=_time_min, numbers=False, type="minutes|[D-]HH:MM:SS",
                    help="time limit per job, e.g. 240 or 4:00:00")
    account: str | None = opt(None, norm=_str_opt, numbers=False, type="str", help="SLURM account")
    qos: str | None = opt(None, norm=_str_opt, numbers=False, type="str", help="SLURM quality of service")
    array_parallelism: int = opt(32, norm=_int_opt(1), numbers=False, type="int",
                                 help="SLURM: head jobs of one array running at once (--array=...%%N)")
    sbatch: tuple[str, ...] = opt((), norm=_lines, numbers=False, type="list",
                                  help="extra sbatch lines, e.g. ['--constraint=a100', '--mail-type=FAIL']")
    setup: tuple[str, ...] = opt((), norm=_lines, numbers=False, type="list",
                                 help="shell lines run before each job, e.g. ['module load cuda/12.4']")
    cells_per_job: int | None = opt(None, norm=_int_opt(1, optional=True), numbers=False, type="int",
                                    help="cells one head job runs (cells differing only in the head: one run); "
                                         "default SLURM 1, local: each group's cells over the workers")
    retries: int = opt(1, norm=_int_opt(0), numbers=False, type="int",
                       help="resubmissions of a job that failed for another reason than bad input")
    poll_s: float | None = opt(None, norm=_float_opt, numbers=False, type="seconds",
                               help="how often job states are read (default: SLURM 15, local 0.5)")
    jobs_dir: str | None = opt(None, norm=_str_opt, numbers=False, type="path",
                               help="job logs and jobs.json (default <db folder>/jobs/<sweep name>); on SLURM a "
                                    "shared filesystem")
    python: str | None = opt(None, norm=_str_opt, numbers=False, type="command",
                             help="python that runs a job (default: this one), e.g. 'apptainer exec img.sif python'")

    def extra_sbatch(self) -> dict[str, Any]:
        """``sbatch`` lines as submitit's ``additional_parameters``: ``--constraint=a100`` -> {constraint: a100},
        ``--exclusive`` -> {exclusive: True}; ``#SBATCH`` prefixes are allowed."""
        out: dict[str, Any] = {}
        for line in self.sbatch:
            s = line.strip()
            if s.startswith("#SBATCH"):
                s = s[len("#SBATCH"):].strip()
            s = s.lstrip("-")
            key, sep, val = s.partition("=")
            if not sep and " " in key:
                key, _, val = key.partition(" ")
                sep = "="
            key = key.strip()
            if not key:
                raise ConfigError(f"cluster.sbatch: cannot read {line!r} (write e.g. --constraint=a100)")
            out[key.replace("_", "-")] = val.strip() if sep else True
        return out


def cluster_config_path() -> Path:
    """``$MEDPROBE_CLUSTER_CONFIG``, else ``$XDG_CONFIG_HOME/medprobe/cluster.yaml`` (``~/.config/...``)."""
    env = os.environ.get("MEDPROBE_CLUSTER_CONFIG")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
    return base / "medprobe" / "cluster.yaml"


def load_cluster_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ClusterConfig:
    """The user's cluster defaults (``path``, else :func:`cluster_config_path` when it exists) with ``overrides``
    (flags; None values are left out) on top. An unknown key is one line naming the file and the closest key."""
    raw: dict[str, Any] = {}
    p = Path(path).expanduser() if path is not None else cluster_config_path()
    if path is not None and not p.is_file():
        raise ConfigError("cluster config file not found", p)
    if p.is_file():
        import yaml

        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"not valid YAML ({str(e).splitlines()[0]})", p) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("must be a mapping of cluster options (partition, gpus, time, ...)", p)
        raw.update(loaded or {})
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None and v != () and v != []})
    return parse_section(ClusterConfig, raw, "", str(p) if p.is_file() else "cluster options")


# ------------------------------------------------------------------------------------------------ job graph
_LABEL_ONLY = ("fold", "folds", "target", "val_fraction", "val_sequences")  # data options that pick labels/splits


def feature_group(spec: Any) -> str:
    """Cells with the same group read the same cached features (one extraction serves them all): same dataset and
    pixel options, encoder, weights, encoder options, preprocessing and extraction options. Data options that
    only pick labels or splits (a fold, a target) do not split a group; a group too coarse costs nothing but a
    head job extracting for itself."""
    d = spec.to_dict()
    feats = dict(d.get("features") or {})
    feats.pop("select", None)
    data = {k: v for k, v in (d.get("data") or {}).items() if k not in _LABEL_ONLY}
    keys = ("kind", "dataset", "encoder", "weights", "encoder_options", "preprocess", "cache_dir", "device")
    return hash_obj({**{k: d.get(k) for k in keys}, "data": data, "features": feats}, n=10)


@dataclass
class JobSpec:
    """One job of the graph: an extraction job (``cells``: the cells it serves) or a head job (the cells it runs)."""

    name: str
    kind: str  # "extract" | "cells"
    cells: list[Any]
    deps: list[str] = field(default_factory=list)
    group: str = ""

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.cells]


def _units(cells: Sequence[Any]) -> list[list[Any]]:
    """Consecutive cells differing only in the head: one ``run_task`` (as the in-process sweep batches them)."""
    from medprobe.pipeline.cellrun import same_but_head

    out: list[list[Any]] = []
    for c in cells:
        if out and same_but_head(c, out[-1][0]) and c.head not in {b.head for b in out[-1]}:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def build_graph(cells: Sequence[Any], cells_per_job: int | None = 1, extract_gpus: int = 1,
                workers: int | None = None) -> list[JobSpec]:
    """The job graph of ``cells`` (those still to run), in sweep order: per feature group an extraction job
    (unless the group has one head job and extraction needs one GPU) and head jobs depending on it.
    ``cells_per_job=None`` with ``workers`` (the local launcher): as few jobs as keep the workers busy -- each
    group's cells split over ``ceil(workers / groups)`` jobs (every job is a Python start-up)."""
    groups: dict[str, list[Any]] = {}
    for c in cells:
        groups.setdefault(feature_group(c.spec), []).append(c)
    jobs: list[JobSpec] = []
    for g, members in groups.items():
        per = cells_per_job
        if per is None:  # SLURM: one cell a job; local: ceil(workers / groups) jobs per group
            per = -(-len(members) // -(-int(workers) // len(groups))) if workers else 1
        heads: list[list[Any]] = []
        for unit in _units(members):
            if heads and len(heads[-1]) < per:  # a run of several heads is never split (it may overshoot)
                heads[-1] += unit
            else:
                heads.append(list(unit))
        first = members[0]
        label = f"{first.axes['task']}-{first.axes['encoder']}-r{first.axes['resolution']}"
        deps: list[str] = []
        if len(heads) > 1 or extract_gpus > 1:
            ext = JobSpec(f"extract-{label}-{g[:6]}", "extract", list(members), group=g)
            jobs.append(ext)
            deps = [ext.name]
        for h in heads:
            jobs.append(JobSpec(f"cells-{label}-{hash_obj([c.key for c in h], n=8)}", "cells", h, deps, group=g))
    return jobs


# ------------------------------------------------------------------------------------------------ in the job
def _job_env() -> tuple[int, int, int]:
    """(global rank, tasks, local rank) of this process in its submitit job; (0, 1, 0) outside one."""
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        return int(env.global_rank), int(env.num_tasks), int(env.local_rank)
    except Exception:  # not inside a submitit job
        return 0, 1, 0


def extract_features(spec: Any, shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """What ``run_task`` does before its heads, up to the cached features: dataset, family, encoder identity, the
    family's resolved options, then features (reused, or extracted into the cache). ``shard=(i, n)``: only this
    process's share of the items (a multi-GPU extraction job; the last process to finish writes the manifest)."""
    from medprobe.pipeline.common import build_encoder, extract_config, features_for
    from medprobe.pipeline.run import prepared_for_extraction

    ds, family, spec, device, info = prepared_for_extraction(spec)
    unit: dict[str, Any] = {"unit": family.feature_unit, "unit_options": family.unit_options(spec)}  # as run_task
    if shard is None or shard[1] <= 1:
        _, _store, extraction = features_for(ds, spec, device, family.tokens, info=info, **unit)
        return {"cache_key": extraction["cache_key"], "cached": extraction["timing"]["cached"]}
    from medprobe.encoders import Encoder
    from medprobe.features import extract, lookup

    cfg = extract_config(spec, family.tokens)
    hit = lookup(ds, info, spec.preprocess, cfg, cache_dir=spec.cache_dir, device=device, **unit)
    if hit is not None:
        return {"cache_key": hit.path.name, "cached": True}
    enc = info if isinstance(info, Encoder) else build_encoder(spec, device)
    part = extract(ds, enc, spec.preprocess, cfg, cache_dir=spec.cache_dir, device=device, shard=shard, **unit)
    return {"cache_key": None if part is None else part.path.name, "cached": False, "shard": list(shard)}


def run_cells(cells: Sequence[Any], db: Any, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run cells (cells differing only in the head: one ``run_task``) into ``db``, skipping cells whose rows are
    stored. Bad input of a cell (a MedprobeError) is recorded and the next cell runs; anything else is raised
    (the job fails and is retried)."""
    from medprobe.pipeline import run_task
    from medprobe.pipeline.cellrun import TaggingDB, headline, ips_finder

    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    out: dict[str, Any] = {"ran": [], "skipped": [], "failed": {}}
    ips = ips_finder(db, [c.spec.cache_dir for c in cells])
    for unit in _units(cells):
        stored = db.stored_hashes([c.config_hash for c in unit])
        todo = [c for c in unit if c.config_hash not in stored]
        out["skipped"] += [c.key for c in unit if c.config_hash in stored]
        for c in unit:
            say(f"cell {c.key}: stored already, skipped" if c.config_hash in stored else f"running cell {c.key}")
        if not todo:
            continue
        spec = todo[0].spec.with_overrides(heads=[c.head for c in todo])
        try:
            rows = run_task(spec, db=TaggingDB(db, {c.head: c for c in todo}, ips), verbose=False)
        except MedprobeError as e:
            for c in todo:
                out["failed"][c.key] = str(e)
            say(f"cells {', '.join(c.key for c in todo)} FAILED: {e}")
            continue
        by_head = {r["head"]: r for r in rows}
        for c in todo:
            out["ran"].append(c.key)
            say(f"cell {c.key} finished: {headline((by_head.get(c.head) or {}).get('metrics') or {})}")
    return out


class SweepJob:
    """The callable a launched job runs (pickled by submitit). ``checkpoint`` makes a pre-empted or timed-out
    SLURM job requeue itself: it starts again, and stored cells and finished cache shards are not redone."""

    def __init__(self, kind: str, cells: list[Any], store: dict[str, Any], name: str) -> None:
        self.kind, self.cells, self.store, self.name = kind, cells, store, name

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        rank, world, _ = _job_env()
        print(f"medprobe job {self.name} ({self.kind}, {len(self.cells)} cell(s)), task {rank}/{world}",
              file=sys.stderr, flush=True)
        if self.kind == "extract":
            return extract_features(self.cells[0].spec, shard=(rank, world) if world > 1 else None)
        if rank != 0:
            return {}
        from medprobe.results import ResultsDB

        db = ResultsDB(**self.store, shards=True)
        return run_cells(self.cells, db)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


# ------------------------------------------------------------------------------------------------ backends
def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise ConfigError("--launcher local/slurm needs submitit: pip install 'medprobe[slurm]'") from None
    return submitit


def visible_gpus() -> int:
    """GPUs this machine shows (``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``), without importing torch."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([x for x in env.split(",") if x.strip() and x.strip() != "-1"])
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class _PidJob:
    """A local job adopted from an earlier launch (no process handle): alive while its pid is."""

    def __init__(self, folder: Path, job_id: str, tasks: int) -> None:
        from submitit.core.utils import JobPaths

        self.job_id, self.num_tasks = job_id, tasks
        self.paths = JobPaths(folder, job_id, 0)
        self.folder = folder

    def done(self) -> bool:
        try:
            os.kill(int(self.job_id), 0)
        except (ProcessLookupError, ValueError):
            return True
        except PermissionError:
            return False
        return False

    def cancel(self, check: bool = False) -> None:
        try:
            os.kill(int(self.job_id), signal.SIGINT)
        except (ProcessLookupError, ValueError):
            pass


class Backend:
    """Submits jobs and reads their states: submitit's LocalExecutor or SlurmExecutor underneath."""

    name = ""
    upfront = False  # submit the whole graph at once (SLURM dependencies), else when dependencies are done

    def __init__(self, folder: Path, cfg: ClusterConfig, sweep_name: str) -> None:
        self.folder, self.cfg, self.sweep_name = folder, cfg, sweep_name
        self.submitit = _submitit()

    def submit(self, jobs: list[tuple[JobSpec, SweepJob]], after: list[str], gpus: int) -> list[Any]:
        raise NotImplementedError

    def refresh(self) -> None:
        """Read the states of every submitted job (one cluster query)."""

    def state(self, handle: Any) -> str:
        """``queued``, ``running`` or ``ended`` (then :func:`outcome` tells how)."""
        raise NotImplementedError

    def handle(self, job_id: str, tasks: int) -> Any:
        raise NotImplementedError

    def cancel(self, handles: list[Any]) -> None:
        for h in handles:
            try:
                h.cancel(check=False)
            except Exception as e:  # pragma: no cover - best effort
                log.warning("cancel %s: %s", getattr(h, "job_id", h), e)


class LocalBackend(Backend):
    name = "local"

    def __init__(self, folder: Path, cfg: ClusterConfig, sweep_name: str) -> None:
        super().__init__(folder, cfg, sweep_name)
        self.n_gpus = visible_gpus()
        self._slot = 0

    def submit(self, jobs: list[tuple[JobSpec, SweepJob]], after: list[str], gpus: int) -> list[Any]:
        out = []
        for _spec, fn in jobs:
            ex = self.submitit.LocalExecutor(folder=self.folder, python=self.cfg.python)
            g = self.cfg.gpus if self.cfg.gpus is not None else (1 if self.n_gpus else 0)
            tasks = 1
            if fn.kind == "extract" and (self.cfg.extract_gpus or 1) > 1:
                g = tasks = int(self.cfg.extract_gpus or 1)
            params: dict[str, Any] = {"timeout_min": self.cfg.time, "tasks_per_node": tasks, "gpus_per_node": g}
            if g and self.n_gpus:  # round-robin over the visible GPUs, one slot per job
                params["visible_gpus"] = tuple((self._slot + k) % self.n_gpus for k in range(g))
                self._slot += g
            if self.cfg.setup:
                params["setup"] = list(self.cfg.setup)
            ex.update_parameters(**params)
            out.append(ex.submit(fn))
        return out

    def state(self, handle: Any) -> str:
        return "ended" if handle.done() else "running"

    def handle(self, job_id: str, tasks: int) -> Any:
        return _PidJob(self.folder, job_id, tasks)


class SlurmBackend(Backend):
    name = "slurm"
    upfront = True

    def __init__(self, folder: Path, cfg: ClusterConfig, sweep_name: str) -> None:
        super().__init__(folder, cfg, sweep_name)
        import shutil

        missing = [c for c in ("sbatch", "srun", "sacct", "scancel") if shutil.which(c) is None]
        if missing:
            raise ConfigError(f"--launcher slurm: {', '.join(missing)} not found on PATH (run it on a SLURM login "
                              "node, or use --launcher local)")
        self._handles: list[Any] = []

    def parameters(self, kind: str, gpus: int, n: int, after: list[str]) -> dict[str, Any]:
        """submitit's sbatch parameters of one submission (``n`` > 1: a job array)."""
        c = self.cfg
        tasks = 1
        if kind == "extract" and (c.extract_gpus or 1) > 1:
            gpus = tasks = int(c.extract_gpus or 1)
        extra = c.extra_sbatch()
        p: dict[str, Any] = {"job_name": f"mp-{self.sweep_name}-{kind}"[:64], "time": c.time,
                             "ntasks_per_node": tasks, "nodes": 1, "array_parallelism": c.array_parallelism,
                             "signal_delay_s": 120, "stderr_to_stdout": False}
        if gpus:
            p["gpus_per_node"] = gpus
        for key, val in (("partition", c.partition), ("account", c.account), ("qos", c.qos),
                         ("cpus_per_task", c.cpus)):
            if val is not None:
                p[key] = val
        if c.mem_gb is not None:
            p["mem"] = f"{int(c.mem_gb)}GB" if float(c.mem_gb).is_integer() else f"{int(c.mem_gb * 1024)}MB"
        if c.setup:
            p["setup"] = list(c.setup)
        if after:
            p["dependency"] = "afterok:" + ":".join(after)
            extra = {"kill-on-invalid-dep": "yes", **extra}
        if extra:
            p["additional_parameters"] = extra
        return p

    def submit(self, jobs: list[tuple[JobSpec, SweepJob]], after: list[str], gpus: int) -> list[Any]:
        ex = self.submitit.SlurmExecutor(folder=self.folder, python=self.cfg.python, max_num_timeout=3)
        ex.update_parameters(**self.parameters(jobs[0][1].kind, gpus, len(jobs), after))
        if len(jobs) == 1:
            handles = [ex.submit(jobs[0][1])]
        else:
            handles = ex.submit_array([fn for _, fn in jobs])
        self._handles += handles
        return handles

    def refresh(self) -> None:
        if self._handles:
            self._handles[0].watcher.update()

    def state(self, handle: Any) -> str:
        st = str(handle.watcher.get_state(handle.job_id, mode="cache")).split()[0].upper().rstrip("+")
        if st in ("PENDING", "UNKNOWN", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "READY"):
            return "queued"
        return "running" if st in _SLURM_ACTIVE else "ended"

    def handle(self, job_id: str, tasks: int) -> Any:
        h = self.submitit.SlurmJob(folder=self.folder, job_id=job_id, tasks=list(range(tasks)))
        self._handles.append(h)
        return h


def make_backend(launcher: str, folder: Path, cfg: ClusterConfig, sweep_name: str) -> Backend:
    if launcher == "local":
        return LocalBackend(folder, cfg, sweep_name)
    if launcher == "slurm":
        return SlurmBackend(folder, cfg, sweep_name)
    raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")


def outcome(handle: Any) -> tuple[str, Any]:
    """How an ended job went: ``("success", its return value)``, ``("error", traceback text)`` or
    ``("killed", why)`` (no result written: killed, cancelled, out of time or memory)."""
    n = int(getattr(handle, "num_tasks", 1) or 1)
    first: tuple[str, Any] | None = None
    for t in range(n):
        from submitit.core.utils import JobPaths

        p = JobPaths(handle.paths.folder, handle.job_id, t).result_pickle
        if not p.is_file():
            if t == 0:
                return "killed", "ended without a result (killed, cancelled, out of time or memory)"
            continue
        with p.open("rb") as f:
            status, value = pickle.load(f)
        if status != "success":
            return "error", value
        if first is None:
            first = (status, value)
    return first or ("killed", "no result")


def log_paths(handle: Any) -> tuple[str, str]:
    return str(handle.paths.stdout), str(handle.paths.stderr)


# ------------------------------------------------------------------------------------------------ the controller
@dataclass
class _Run:
    spec: JobSpec
    status: str = "waiting"  # waiting, queued, running, done, failed, cancelled, blocked
    attempts: list[dict[str, Any]] = field(default_factory=list)
    handle: Any = None
    error: str | None = None
    result: Any = None


def jobs_folder(db: Any, sweep_name: str, cfg: ClusterConfig | None = None) -> Path:
    """Where a launched sweep keeps ``jobs.json`` and the job logs."""
    if cfg is not None and cfg.jobs_dir:
        return Path(cfg.jobs_dir).expanduser().absolute()
    return (Path(db.root) / "jobs" / sweep_name).absolute()


def read_state(folder: Path) -> dict[str, Any] | None:
    f = folder / STATE_FILE
    if not f.is_file():
        return None
    try:
        return dict(json.loads(f.read_text(encoding="utf-8")))
    except (OSError, ValueError) as e:
        raise ConfigError(f"unreadable jobs file ({e})", f) from None


class Controller:
    """Submits the job graph, follows it to the end (retrying failed jobs), keeps ``jobs.json`` current."""

    def __init__(self, sweep: Any, cells: list[Any], db: Any, launcher: str, cfg: ClusterConfig,
                 say: Callable[[str], None], total: int, skipped: int) -> None:
        self.sweep, self.cells, self.db, self.launcher, self.cfg, self.say = sweep, cells, db, launcher, cfg, say
        self.total, self.skipped = total, skipped
        self.folder = jobs_folder(db, sweep.name, cfg)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.backend = make_backend(launcher, self.folder / "logs", cfg, sweep.name)
        (self.folder / CANCEL_FILE).unlink(missing_ok=True)  # a --cancel of an earlier launch is done with
        adopted = self._adoptable({c.key: c for c in cells})
        covered = {k for r in adopted if r.spec.kind == "cells" for k in r.spec.keys}
        graph = build_graph([c for c in cells if c.key not in covered], cfg.cells_per_job,
                            int(cfg.extract_gpus or 1), workers=cfg.workers if launcher == "local" else None)
        running_ext = {r.spec.group: r.spec.name for r in adopted if r.spec.kind == "extract"}
        moved = {j.name: running_ext[j.group] for j in graph if j.kind == "extract" and j.group in running_ext}
        for j in graph:  # a group whose extraction job still runs waits on that one, not on a new one
            j.deps = [moved.get(d, d) for d in j.deps]
        self.adopted = len(adopted)
        self.runs = {r.spec.name: r for r in adopted}
        self.runs.update({j.name: _Run(j) for j in graph if j.name not in moved})
        self.store = db.reopen_args()
        self.poll = cfg.poll_s or (15.0 if launcher == "slurm" else 0.5)
        self.gpus = cfg.gpus if cfg.gpus is not None else (1 if launcher == "slurm" else 0)
        self.t0 = time.perf_counter()

    # -- state file ----------------------------------------------------------------------------------------------
    def write_state(self) -> None:
        jobs = {}
        for name, r in self.runs.items():
            jobs[name] = {"kind": r.spec.kind, "status": r.status, "deps": r.spec.deps, "cells": r.spec.keys,
                          "group": r.spec.group,
                          "config_hashes": [c.config_hash for c in r.spec.cells], "attempts": r.attempts,
                          "error": r.error}
        atomic_write_json(self.folder / STATE_FILE, {
            "sweep": self.sweep.name, "sweep_hash": self.sweep.hash, "launcher": self.launcher,
            "store": {k: (v if k != "path" or not str(v).startswith("postgres") else self.db.path)
                      for k, v in self.store.items()},
            "logs": str(self.folder / "logs"), "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": jobs})

    def _adoptable(self, todo: dict[str, Any]) -> list[_Run]:
        """Jobs of an earlier launch (``jobs.json``) still queued or running that serve cells still to do: followed
        instead of submitted again (their cells leave the new graph; their group's new head jobs wait on a running
        extraction job)."""
        old = read_state(self.folder)
        if not old or old.get("launcher") != self.launcher:
            return []
        cand = []
        for name, j in (old.get("jobs") or {}).items():
            cells = [todo[k] for k in j.get("cells", []) if k in todo]
            if j.get("status") in ACTIVE and j.get("attempts") and cells:
                last = j["attempts"][-1]
                cand.append((name, j, cells, self.backend.handle(str(last["id"]), int(last.get("tasks", 1)))))
        if cand:
            self.backend.refresh()
        out = []
        for name, j, cells, h in cand:
            if self.backend.state(h) != "ended":
                spec = JobSpec(name, str(j["kind"]), cells, group=str(j.get("group") or ""))
                out.append(_Run(spec, status="queued", attempts=list(j["attempts"]), handle=h))
        return out

    # -- submitting ----------------------------------------------------------------------------------------------
    def _fn(self, r: _Run) -> SweepJob:
        return SweepJob(r.spec.kind, r.spec.cells, self.store, r.spec.name)

    def _submit(self, runs: list[_Run], after: list[str]) -> None:
        handles = self.backend.submit([(r.spec, self._fn(r)) for r in runs], after, self.gpus)
        for r, h in zip(runs, handles):
            out, err = log_paths(h)
            r.handle, r.status, r.error = h, "queued", None
            r.attempts.append({"id": str(h.job_id), "tasks": int(getattr(h, "num_tasks", 1) or 1),
                               "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "stdout": out, "stderr": err})
        ids = ", ".join(str(h.job_id) for h in handles[:3]) + (" ..." if len(handles) > 3 else "")
        what = runs[0].spec.kind if len(runs) == 1 else f"{len(runs)} {runs[0].spec.kind} jobs"
        self.say(f"submitted {what} {runs[0].spec.name if len(runs) == 1 else ''} [{ids}]".replace("  ", " ")
                 + (f" after {', '.join(after)}" if after else ""))

    def _ready(self, r: _Run) -> bool:
        return r.status == "waiting" and all(self.runs[d].status == "done" for d in r.spec.deps)

    def _dep_ids(self, r: _Run) -> list[str] | None:
        """Job ids this job waits on (SLURM afterok); None while one has no id yet."""
        ids = []
        for d in r.spec.deps:
            dep = self.runs[d]
            if dep.status == "done":
                continue
            if dep.handle is None or dep.status not in ACTIVE:
                return None
            ids.append(str(dep.handle.job_id))
        return ids

    def submit_ready(self) -> None:
        if self.backend.upfront:  # SLURM: everything at once, head jobs bound to their extraction job's id
            while True:
                by_after: dict[tuple[str, ...], list[_Run]] = {}
                for r in self.runs.values():
                    if r.status != "waiting" or any(self.runs[d].status in ("failed", "blocked", "cancelled")
                                                    for d in r.spec.deps):
                        continue
                    ids = self._dep_ids(r)
                    if ids is not None:
                        by_after.setdefault((r.spec.kind, r.spec.group, *ids), []).append(r)
                if not by_after:
                    return
                for key, rs in by_after.items():  # one submission (a job array for head jobs) per key
                    self._submit(rs, list(key[2:]))
        busy = sum(r.status in ACTIVE for r in self.runs.values())
        for r in self.runs.values():
            if busy >= self.cfg.workers:
                break
            if self._ready(r):
                self._submit([r], [])
                busy += 1

    # -- following -----------------------------------------------------------------------------------------------
    def poll_once(self) -> bool:
        """Read states, settle ended jobs; True when something changed."""
        changed = False
        self.backend.refresh()
        for r in self.runs.values():
            if r.status not in ACTIVE or r.handle is None:
                continue
            st = self.backend.state(r.handle)
            if st != "ended":
                if st != r.status:
                    r.status, changed = st, True
                continue
            changed = True
            how, value = outcome(r.handle)
            r.attempts[-1]["ended"] = how
            if how == "success":
                r.status, r.result = "done", value
                failed = (value or {}).get("failed") if isinstance(value, dict) else None
                if failed:
                    r.error = "; ".join(f"{k}: {v}" for k, v in failed.items())
                elif r.spec.kind == "cells":  # it ended well: every cell of it must have its row now
                    stored = self.db.stored_hashes([c.config_hash for c in r.spec.cells])
                    lost = [c.key for c in r.spec.cells if c.config_hash not in stored]
                    if lost:
                        r.error = (f"finished, but {len(lost)} cell(s) have no stored row under the config hash "
                                   f"this controller computed ({lost[0]}{' ...' if len(lost) > 1 else ''}); log "
                                   f"{r.attempts[-1]['stderr']}")
                        self.say(f"job {r.spec.name}: {r.error}")
                continue
            why = _last_line(value) if how == "error" else str(value)
            bad_input = how == "error" and _is_bad_input(value)
            if not bad_input and len(r.attempts) <= self.cfg.retries:
                self.say(f"job {r.spec.name} [{r.handle.job_id}] failed ({why}): retrying "
                         f"({len(r.attempts)}/{self.cfg.retries}); log {r.attempts[-1]['stderr']}")
                self._reset_dependents(r)
                r.status, r.handle = "waiting", None
                continue
            r.status, r.error = "failed", why
            self.say(f"job {r.spec.name} [{r.handle.job_id}] FAILED: {why}; log {r.attempts[-1]['stderr']}")
            self._block_dependents(r)
        for r in self.runs.values():  # a dependency failed for good: this job cannot run
            if r.status == "waiting" and any(self.runs[d].status in ("failed", "blocked", "cancelled")
                                             for d in r.spec.deps):
                r.status, r.error, changed = "blocked", "its extraction job failed", True
        return changed

    def _dependents(self, r: _Run) -> list[_Run]:
        return [x for x in self.runs.values() if r.spec.name in x.spec.deps]

    def _reset_dependents(self, r: _Run) -> None:
        """A retried job gets new dependents on SLURM (the old ones were bound to the failed job id)."""
        stale = [x for x in self._dependents(r) if x.status in ACTIVE]
        if stale:
            self.backend.cancel([x.handle for x in stale])
            for x in stale:
                x.attempts[-1]["ended"] = "dependency retried"
                x.status, x.handle = "waiting", None

    def _block_dependents(self, r: _Run) -> None:
        stale = [x for x in self._dependents(r) if x.status in ACTIVE]
        if stale:
            self.backend.cancel([x.handle for x in stale])
        for x in self._dependents(r):
            if x.status in ("waiting", *ACTIVE):
                x.status, x.error, x.handle = "blocked", f"dependency {r.spec.name} failed", None

    def cancel_all(self) -> int:
        active = [r for r in self.runs.values() if r.status in ACTIVE and r.handle is not None]
        self.backend.cancel([r.handle for r in active])
        for r in self.runs.values():
            if r.status in ACTIVE or r.status == "waiting":
                r.status = "cancelled"
        self.write_state()
        return len(active)

    def progress(self) -> None:
        done_cells = self.db.stored_hashes([c.config_hash for c in self.cells])
        ran = len(done_cells)
        counts = {s: sum(r.status == s for r in self.runs.values()) for s in
                  ("running", "queued", "waiting", "done", "failed", "blocked")}
        left = len(self.cells) - ran
        el = time.perf_counter() - self.t0
        eta = el / ran * left if ran else float("nan")
        from medprobe.pipeline.cellrun import fmt_s

        jobs = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        self.say(f"[{self.sweep.name}] {ran + self.skipped}/{self.total} cells done (ran {ran}, skipped "
                 f"{self.skipped}); jobs: {jobs}; ETA {fmt_s(eta) if left else '0m00s'}")

    def run(self, detach: bool = False) -> None:
        if self.adopted:
            self.say(f"{self.adopted} job(s) of an earlier launch still queued or running: followed, not resubmitted")
        n_ext = sum(r.spec.kind == "extract" for r in self.runs.values())
        self.say(f"job graph: {n_ext} extraction job(s), {len(self.runs) - n_ext} head job(s) for {len(self.cells)} "
                 f"cell(s); launcher {self.launcher}; jobs folder {self.folder}")
        old_term = signal.getsignal(signal.SIGTERM)
        if threading_main():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self.submit_ready()
            self.write_state()
            if detach:
                self.say(f"detached: follow with 'medprobe sweep {self.sweep.source or self.sweep.name} --status', "
                         "stop with --cancel")
                return
            while any(r.status in ("waiting", *ACTIVE) for r in self.runs.values()):
                time.sleep(self.poll)
                if (self.folder / CANCEL_FILE).exists():  # medprobe sweep --cancel, from another terminal
                    (self.folder / CANCEL_FILE).unlink(missing_ok=True)
                    n = self.cancel_all()
                    self.say(f"cancelled (--cancel): {n} job(s) cancelled; finished cells are stored, a rerun resumes")
                    break
                if self.poll_once():
                    self.submit_ready()
                    self.write_state()
                    self.progress()
        except KeyboardInterrupt:
            n = self.cancel_all()
            self.say(f"interrupted: cancelled {n} job(s); finished cells are stored, a rerun resumes")
            raise
        finally:
            if threading_main():
                signal.signal(signal.SIGTERM, old_term)
        self.write_state()

    def summary(self) -> dict[str, Any]:
        stored = self.db.stored_hashes([c.config_hash for c in self.cells])
        errors: list[str] = []
        for r in self.runs.values():
            if r.status in ("failed", "blocked", "cancelled"):
                log_hint = f" (log {r.attempts[-1]['stderr']})" if r.attempts else ""
                errors.append(f"{r.spec.name}: {r.status}: {r.error or ''}{log_hint}")
            elif r.error:
                errors.append(f"{r.spec.name}: {r.error}")
        ran = sum(c.config_hash in stored for c in self.cells)
        return {"ran": ran, "failed": len(self.cells) - ran, "errors": errors}


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _last_line(tb: Any) -> str:
    lines = [x for x in str(tb).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else "error"


def _is_bad_input(tb: Any) -> bool:
    """A job that raised medprobe's own error (bad input) fails the same way again: no retry."""
    last = _last_line(tb)
    return any(last.startswith(f"medprobe.errors.{n}") or last.startswith(f"{n}:")
               for n in ("MedprobeError", "ConfigError", "DataError", "WeightsError"))


# ------------------------------------------------------------------------------------------------ entry points
def launch(sweep: Any, cells: list[Any], db: Any, launcher: str, cfg: ClusterConfig, say: Callable[[str], None],
           total: int, skipped: int, detach: bool = False) -> dict[str, Any]:
    """Run ``cells`` (those not stored yet) as a job graph; returns ``{ran, failed, errors}`` (cells)."""
    if detach and launcher != "slurm":
        raise ConfigError("--detach needs --launcher slurm (the local launcher is the scheduler: it must stay)")
    if not cells:
        return {"ran": 0, "failed": 0, "errors": []}
    ctl = Controller(sweep, cells, db, launcher, cfg, say, total, skipped)
    ctl.run(detach=detach)
    if detach:
        return {"ran": 0, "failed": 0, "errors": [], "detached": True}
    return ctl.summary()


def sweep_status(sweep: Any, cells: list[Any], db: Any, cfg: ClusterConfig | None = None) -> list[dict[str, Any]]:
    """Per cell: ``{key, status (done / running / queued / waiting / failed / blocked / cancelled / todo), job,
    job_id, log, error, run_id}`` from the store and the jobs file (the cluster asked for live states)."""
    folder = jobs_folder(db, sweep.name, cfg)
    state = read_state(folder) or {}
    stored = db.stored_hashes([c.config_hash for c in cells])
    by_cell: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, j in (state.get("jobs") or {}).items():
        if j.get("kind") != "cells":
            continue
        for k in j.get("cells", []):
            by_cell[k] = (name, j)
    ext = {n: j for n, j in (state.get("jobs") or {}).items() if j.get("kind") == "extract"}
    live: dict[str, str] = {}
    launcher = state.get("launcher")
    if launcher in ("local", "slurm"):
        try:
            backend = make_backend(launcher, folder / "logs", cfg or ClusterConfig(), sweep.name)
        except ConfigError:
            backend = None
        if backend is not None:
            handles = {}
            for name, j in (state.get("jobs") or {}).items():
                if j.get("attempts") and j.get("status") in ACTIVE:
                    a = j["attempts"][-1]
                    handles[name] = backend.handle(str(a["id"]), int(a.get("tasks", 1)))
            backend.refresh()
            for name, h in handles.items():
                st = backend.state(h)
                live[name] = st if st != "ended" else ("done" if outcome(h)[0] == "success" else "failed")
    out = []
    for c in cells:
        row: dict[str, Any] = {"key": c.key, "status": "todo", "job": None, "job_id": None, "log": None,
                               "error": None, "run_id": None}
        if c.config_hash in stored:
            row["status"] = "done"
        hit = by_cell.get(c.key)
        if hit is not None:
            name, j = hit
            a = (j.get("attempts") or [{}])[-1]
            row.update(job=name, job_id=a.get("id"), log=a.get("stderr"))
            if row["status"] != "done":
                st = live.get(name, j.get("status", "todo"))
                if st == "waiting":  # waiting on its extraction job: show that job's state
                    for d in j.get("deps", []):
                        dst = live.get(d, (ext.get(d) or {}).get("status"))
                        if dst in ACTIVE:
                            st = f"waiting (extraction {dst})"
                            da = ((ext.get(d) or {}).get("attempts") or [{}])[-1]
                            row.update(job=d, job_id=da.get("id"), log=da.get("stderr"))
                row["status"] = "failed" if st == "done" else st
                row["error"] = j.get("error") if st in ("failed", "blocked", "done") else None
        out.append(row)
    return out


def cancel_sweep(sweep: Any, db: Any, cfg: ClusterConfig | None = None) -> int:
    """Cancel the jobs of the sweep's last launch that are still queued or running; returns how many."""
    folder = jobs_folder(db, sweep.name, cfg)
    state = read_state(folder)
    if not state:
        raise ConfigError("no launched jobs recorded for this sweep", folder / STATE_FILE)
    (folder / CANCEL_FILE).write_text("cancelled by medprobe sweep --cancel\n", encoding="utf-8")  # before scancel
    launcher = state.get("launcher")
    backend = make_backend(str(launcher), folder / "logs", cfg or ClusterConfig(), sweep.name)
    handles = []
    for j in (state.get("jobs") or {}).values():
        if j.get("attempts") and j.get("status") in (*ACTIVE, "waiting"):
            a = j["attempts"][-1]
            if j.get("status") in ACTIVE:
                handles.append(backend.handle(str(a["id"]), int(a.get("tasks", 1))))
            j["status"] = "cancelled"
        elif j.get("status") == "waiting":
            j["status"] = "cancelled"
    backend.refresh()
    live = [h for h in handles if backend.state(h) != "ended"]
    backend.cancel(live)
    atomic_write_json(folder / STATE_FILE, state)
    return len(live)


def sbatch_preview(cfg: ClusterConfig, sweep_name: str, kind: str = "cells", after: Sequence[str] = ("<id>",),
                   n: int = 2) -> str:
    """The sbatch script a head job array (or an extraction job) would be submitted with (``--dry-run``)."""
    from submitit.slurm.slurm import _make_sbatch_string

    b = SlurmBackend.__new__(SlurmBackend)
    b.cfg, b.sweep_name = cfg, sweep_name
    gpus = cfg.gpus if cfg.gpus is not None else 1
    p = b.parameters(kind, gpus, n, list(after) if kind == "cells" else [])
    p["map_count"] = n if n > 1 else None
    cmd = " ".join([shlex.quote(sys.executable) if cfg.python is None else cfg.python,
                    "-u -m submitit.core._submit", "<jobs folder>/logs"])
    return str(_make_sbatch_string(command=cmd, folder="<jobs folder>/logs", **p))


def iter_jobs_text(jobs: list[JobSpec]) -> Iterator[str]:
    for j in jobs:
        dep = f" after {', '.join(j.deps)}" if j.deps else ""
        yield f"  {j.kind:<7} {j.name}{dep}: {len(j.cells)} cell(s)"


__all__ = ["LAUNCHERS", "ClusterConfig", "Controller", "JobSpec", "SweepJob", "build_graph", "cancel_sweep",
           "cluster_config_path", "extract_features", "feature_group", "launch", "load_cluster_config",
           "run_cells", "sbatch_preview", "sweep_status"]


def _fields() -> list[str]:  # for docs/tests: the user-file keys
    return [f.name for f in dataclasses.fields(ClusterConfig)]
