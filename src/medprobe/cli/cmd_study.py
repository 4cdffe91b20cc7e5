"""``medprobe study``: the study (arXiv 2509.06467) table by table -- which rows this machine can reproduce with the
weights and data it finds, what is missing for the others -- then runs the runnable part."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_SWEEP = "sweeps/dinov3-medical.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="the study table by table: what this machine can reproduce; then run it",
                       description="Example: medprobe study --data-root /work/shared/data --db runs/study --dry-run",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Rows whose data is found but whose weights are not run with random weights and are "
                              "labelled UNTRAINED\n(a pipeline check, not the study's number); --trained-only "
                              "leaves them out.")
    p.add_argument("--sweep", default=None, help=f"the study sweep, e.g. my-study.yaml (default {DEFAULT_SWEEP})")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="folder searched for the datasets by their usual names, e.g. /work/shared/data (repeatable;"
                        " default $MEDPROBE_DATA, ~/data)")
    p.add_argument("--db", default=None, help="results database, e.g. runs/study (default ./medprobe-results)")
    p.add_argument("--cache-dir", default=None, help="feature cache root for every cell, e.g. /scratch/cache")
    p.add_argument("--dry-run", action="store_true", help="print the coverage and the cells it would run; run nothing")
    p.add_argument("--task", action="append", default=[], metavar="NAME",
                   help="run only this sweep task, e.g. msd-hippocampus (repeatable)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="run at most N cells now, e.g. 1")
    p.add_argument("--trained-only", action="store_true", help="run only rows whose weights were found")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                   help="override a task option in every cell run, e.g. head_params.decoder3d.epochs=2 or "
                        "data.limit=20 (a smaller check; recorded with the rows)")
    p.add_argument("--report", default=None, metavar="HTML", help="write the report afterwards, e.g. runs/study.html")
    p.set_defaults(func=run)


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``a.b.c=v`` items -> nested raw task options (values read as YAML scalars / flow lists)."""
    from medprobe.cli.common import _value
    from medprobe.errors import ConfigError

    out: dict[str, Any] = {}
    for kv in items:
        key, sep, val = kv.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set must be KEY=VALUE, e.g. data.limit=20, got {kv!r}")
        parts = key.strip().split(".")
        d = out
        for k in parts[:-1]:
            d = d.setdefault(k, {})
            if not isinstance(d, dict):
                raise ConfigError(f"--set {key}: {k} is set both as a value and as a section")
        # YAML 1.1 reads on/off/yes/no as booleans: here they stay words (audit.mode=off)
        d[parts[-1]] = val.strip() if val.strip().lower() in ("on", "off", "yes", "no") else _value(val)
    return out


def run(args: argparse.Namespace) -> int:
    from medprobe.errors import ConfigError
    from medprobe.pipeline.study import coverage_lines, study_coverage, study_sweep
    from medprobe.pipeline.sweep import expand, load_sweep
    from medprobe.pipeline.task import parse_task

    path = Path(args.sweep or DEFAULT_SWEEP)
    if args.sweep is None and not path.is_file():
        raise ConfigError(f"{DEFAULT_SWEEP} not found here: give --sweep (run from the medprobe checkout)", path)
    roots = list(args.data_root) or [r for r in (os.environ.get("MEDPROBE_DATA"), "~/data") if r]
    sw = load_sweep(path)
    cov = study_coverage(sw, roots)
    known = {c.task for c in cov}
    unknown = [t for t in args.task if t not in known]
    if unknown:
        raise ConfigError(f"--task {unknown[0]} is not a task of the sweep ({', '.join(sorted(known))})", path)
    print(f"study sweep {sw.name} ({path}); data roots: {', '.join(str(Path(r).expanduser()) for r in roots)}")
    for line in coverage_lines(cov, sw):
        print(line)
    runnable = study_sweep(sw, cov, trained_only=args.trained_only, tasks=args.task or None)
    if runnable is None:
        print("nothing to run on this machine (no study data found" + (" with weights" if args.trained_only else "")
              + ")")
        return 0
    overrides = parse_sets(args.sets)
    if overrides:
        parse_task({**overrides, "name": "check"}, source="--set")  # a misspelt key stops here, before any run
        print(f"--set applies {', '.join(args.sets)} to every cell run (cell keys keep the sweep's names; the rows "
              "record what ran)")
    if args.dry_run:
        cells = expand(runnable)
        todo = cells if args.limit is None else cells[: max(args.limit, 0)]
        print(f"would run {len(todo)} of {len(cells)} runnable cell(s):")
        for c in todo:
            print(f"  {c.key}")
        return 0
    from medprobe.pipeline.sweep import run_sweep
    from medprobe.results import ResultsDB

    db = ResultsDB(args.db) if args.db else ResultsDB()
    res = run_sweep(runnable, db=db, cache_dir=args.cache_dir, overrides=overrides or None, limit=args.limit)
    if args.report:
        from medprobe.report import build_report

        out = build_report(db, args.report, sweep=runnable.name, cache_dir=args.cache_dir)
        print(f"report: {out}")
    return 1 if res["failed"] else 0
