"""``medprobe sweep SWEEP.yaml``: run a grid of cells (task x encoder x resolution x layer x head x budget x
seed); cells already complete in the results DB are skipped, so a killed sweep resumes. ``--launcher local|slurm``
runs the cells as a job graph of worker processes or SLURM jobs (docs/cluster.md)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    from medprobe.cli.launch_args import add_launcher_args

    p = sub.add_parser("sweep", help="run a sweep YAML (grid of cells); finished cells are skipped",
                       description="Examples: medprobe sweep sweeps/demo.yaml --db runs/ --report runs/report.html; "
                                   "medprobe sweep sweeps/dinov3-medical.yaml --db /shared/runs --launcher slurm "
                                   "--partition gpu --time 4:00:00; medprobe sweep sweeps/demo.yaml --db runs/ "
                                   "--status")
    p.add_argument("sweep", help="sweep YAML, e.g. sweeps/demo.yaml (see docs/sweeps.md)")
    p.add_argument("--db", default=None, help="results database, e.g. runs/ or postgresql://user@host/medprobe "
                   "(default ./medprobe-results/results.db)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root for every cell, e.g. /scratch/cache (default: each task's)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are done (with --launcher: the "
                   "job graph and the sbatch script); run nothing")
    p.add_argument("--skip-missing-tasks", action="store_true", help="leave out task YAMLs that do not exist")
    p.add_argument("--report", default=None, metavar="HTML",
                   help="write the report of this sweep afterwards, e.g. runs/report.html")
    add_launcher_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medprobe.cli.launch_args import cluster_from_args, launched_action
    from medprobe.pipeline.sweep import expand, load_sweep, run_sweep
    from medprobe.results import ResultsDB

    sw = load_sweep(args.sweep, skip_missing=args.skip_missing_tasks)
    db = ResultsDB(args.db) if args.db else ResultsDB()
    if args.status or args.cancel:  # config hashes do not depend on the cache folder
        code = launched_action(sw, expand(sw), db, args)
        return 0 if code is None else code
    launched = args.launcher != "inprocess"
    cfg = cluster_from_args(args) if launched else None
    res = run_sweep(sw, db=db, cache_dir=args.cache_dir, dry_run=args.dry_run,
                    launcher=args.launcher if launched else None, cluster=cfg, detach=args.detach)
    if args.dry_run and launched:
        print_graph(res["cells"], db, cfg, args.launcher, sw.name)
    if args.report and not args.dry_run and not res.get("detached"):
        from medprobe.report import build_report

        out = build_report(db, args.report, sweep=sw.name, cache_dir=args.cache_dir)
        print(f"report: {out}")
    return 1 if res["failed"] else 0


def print_graph(cells: list[Any], db: Any, cfg: Any, launcher: str, name: str) -> None:
    """``--dry-run --launcher ...``: the job graph of the cells still to run and (SLURM) the sbatch script."""
    from medprobe.pipeline.launch import build_graph, iter_jobs_text, jobs_folder, sbatch_preview

    stored = db.stored_hashes([c.config_hash for c in cells])
    todo = [c for c in cells if c.config_hash not in stored]
    jobs = build_graph(todo, cfg.cells_per_job, int(cfg.extract_gpus or 1),
                       workers=cfg.workers if launcher == "local" else None)
    n_ext = sum(j.kind == "extract" for j in jobs)
    print(f"job graph ({launcher}): {n_ext} extraction job(s), {len(jobs) - n_ext} head job(s) for {len(todo)} "
          f"cell(s); jobs folder {jobs_folder(db, name, cfg)}")
    for line in iter_jobs_text(jobs):
        print(line)
    if launcher == "slurm" and jobs:
        n = sum(j.kind == "cells" for j in jobs if j.deps == jobs[-1].deps) if jobs[-1].deps else 1
        print("sbatch script of a head-job array (submitit writes one per submission):")
        print(sbatch_preview(cfg, name, "cells", n=max(n, 1)))
