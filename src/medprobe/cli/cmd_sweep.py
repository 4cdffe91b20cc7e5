"""``medprobe sweep SWEEP.yaml``: run a grid of cells (task x encoder x resolution x layer x head x budget x
seed); cells already complete in the results DB are skipped, so a killed sweep resumes."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a sweep YAML (grid of cells); finished cells are skipped",
                       description="Example: medprobe sweep sweeps/demo.yaml --db runs/ --report runs/report.html")
    p.add_argument("sweep", help="sweep YAML, e.g. sweeps/demo.yaml (see docs/sweeps.md)")
    p.add_argument("--db", default=None, help="results database, e.g. runs/ (default ./medprobe-results/results.db)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root for every cell, e.g. /scratch/cache (default: each task's)")
    p.add_argument("--dry-run", action="store_true", help="list the cells and which are done; run nothing")
    p.add_argument("--skip-missing-tasks", action="store_true", help="leave out task YAMLs that do not exist")
    p.add_argument("--report", default=None, metavar="HTML",
                   help="write the report of this sweep afterwards, e.g. runs/report.html")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medprobe.pipeline.sweep import load_sweep, run_sweep
    from medprobe.results import ResultsDB

    sw = load_sweep(args.sweep, skip_missing=args.skip_missing_tasks)
    db = ResultsDB(args.db) if args.db else ResultsDB()
    res = run_sweep(sw, db=db, cache_dir=args.cache_dir, dry_run=args.dry_run)
    if args.report and not args.dry_run:
        from medprobe.report import build_report

        out = build_report(db, args.report, sweep=sw.name, cache_dir=args.cache_dir)
        print(f"report: {out}")
    return 1 if res["failed"] else 0
