"""Launcher options shared by ``medprobe sweep`` and ``medprobe study`` (parsing only; the launcher is
:mod:`medprobe.pipeline.launch`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launcher (defaults: $MEDPROBE_CLUSTER_CONFIG or ~/.config/medprobe/cluster.yaml; "
                             "docs/cluster.md)")
    g.add_argument("--launcher", default="inprocess", choices=["inprocess", "local", "slurm"],
                   help="inprocess (default: cells one after another here), local (a job graph of worker "
                        "processes) or slurm (SLURM jobs through submitit), e.g. slurm")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="local: jobs at once, e.g. 3 (default 2)")
    g.add_argument("--partition", default=None, help="SLURM partition, e.g. gpu")
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="GPUs per job, e.g. 1 (SLURM default 1; local: 1 when GPUs are visible)")
    g.add_argument("--extract-gpus", type=int, default=None, metavar="N",
                   help="GPUs of each extraction job, one process each, e.g. 4 (default: --gpus)")
    g.add_argument("--cpus", type=int, default=None, metavar="N", help="CPUs per task, e.g. 8")
    g.add_argument("--mem-gb", type=float, default=None, metavar="GB", help="memory per job, e.g. 64")
    g.add_argument("--time", default=None, metavar="LIMIT", help="time limit per job, e.g. 240 or 4:00:00 (default 240"
                   " min)")
    g.add_argument("--account", default=None, help="SLURM account, e.g. proj123")
    g.add_argument("--qos", default=None, help="SLURM quality of service, e.g. normal")
    g.add_argument("--array-parallelism", type=int, default=None, metavar="N",
                   help="SLURM: head jobs of one array at once, e.g. 16 (default 32)")
    g.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                   help="extra sbatch line (repeatable), e.g. --sbatch=--constraint=a100")
    g.add_argument("--setup", action="append", default=[], metavar="CMD",
                   help="shell line run before each job (repeatable), e.g. 'module load cuda/12.4'")
    g.add_argument("--cells-per-job", type=int, default=None, metavar="N",
                   help="cells one head job runs, e.g. 8 (default: SLURM 1; local: each feature group's cells "
                        "over the workers)")
    g.add_argument("--retries", type=int, default=None, metavar="N",
                   help="resubmissions of a failed job, e.g. 2 (default 1; bad input is never retried)")
    g.add_argument("--jobs-dir", default=None, metavar="DIR",
                   help="job logs and jobs.json, e.g. /shared/runs/jobs (default <db folder>/jobs/<sweep name>)")
    g.add_argument("--cluster-config", default=None, metavar="YAML",
                   help="cluster defaults file, e.g. cluster.yaml (default ~/.config/medprobe/cluster.yaml)")
    g.add_argument("--detach", action="store_true", help="SLURM: submit the jobs and return (then --status)")
    g.add_argument("--status", action="store_true",
                   help="show done / running / failed cells of the last launch with their log paths; run nothing")
    g.add_argument("--cancel", action="store_true", help="cancel the jobs of the last launch still queued or running")


def cluster_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~medprobe.pipeline.launch.ClusterConfig`: the user's file with the flags on top."""
    from medprobe.pipeline.launch import load_cluster_config

    over: dict[str, Any] = {"workers": args.workers, "partition": args.partition, "gpus": args.gpus,
                            "extract_gpus": args.extract_gpus, "cpus": args.cpus, "mem_gb": args.mem_gb,
                            "time": args.time, "account": args.account, "qos": args.qos,
                            "array_parallelism": args.array_parallelism, "cells_per_job": args.cells_per_job,
                            "retries": args.retries, "jobs_dir": args.jobs_dir}
    if args.sbatch:
        over["sbatch"] = list(args.sbatch)
    if args.setup:
        over["setup"] = list(args.setup)
    return load_cluster_config(args.cluster_config, over)


def launched_action(sweep: Any, cells: list[Any], db: Any, args: argparse.Namespace) -> int | None:
    """``--status`` / ``--cancel``: handled here (returns the exit code); None when neither was asked."""
    if not (args.status or args.cancel):
        return None
    from medprobe.pipeline.launch import cancel_sweep, jobs_folder, sweep_status

    cfg = cluster_from_args(args)
    if args.cancel:
        n = cancel_sweep(sweep, db, cfg)
        print(f"cancelled {n} job(s) of sweep {sweep.name} (finished cells stay stored; a rerun resumes)")
        return 0
    rows = sweep_status(sweep, cells, db, cfg)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"].split(" ")[0]] = counts.get(r["status"].split(" ")[0], 0) + 1
    print(f"sweep {sweep.name} [{sweep.hash}]: {len(rows)} cells: "
          + ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
          + f" (jobs folder {jobs_folder(db, sweep.name, cfg)})")
    width = max(len(r["status"]) for r in rows) if rows else 4
    for r in rows:
        where = f"job {r['job_id']}" if r["job_id"] else ""
        if r["status"] != "done" and r["log"]:
            where += f" log {r['log']}"
        print(f"  {r['status']:<{width}}  {r['key']}  {where}".rstrip())
        if r["error"] and r["status"] != "done":
            print(f"  {'':<{width}}  error: {r['error']}")
    return 1 if counts.get("failed") or counts.get("blocked") else 0


__all__ = ["add_launcher_args", "cluster_from_args", "launched_action"]
