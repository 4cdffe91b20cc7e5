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
    g = p.add_argument_group("sizing the run (--plan: nothing runs)")
    g.add_argument("--plan", action="store_true",
                   help="per table and in total: cells, extractions, images/volumes/slides to encode, GFLOPs, "
                        "GPU-hours; for the whole grid, data found or not")
    g.add_argument("--gpu", default=None, metavar="NAME", help="the GPU the hours are for, e.g. A100 (measured rows "
                   "in --db whose device names it count)")
    g.add_argument("--images-per-s", type=float, default=None, metavar="N",
                   help="extraction speed of --reference on that GPU, e.g. 2400 (measured with bench/extract.py)")
    g.add_argument("--reference", default="dinov3-vitb16@224", metavar="ENCODER@RES",
                   help="what --images-per-s was measured with, e.g. dinov3-vits16@256 (default dinov3-vitb16@224)")
    g.add_argument("--measure", action="store_true",
                   help="measure --reference's images/s on this machine's GPU now (random weights; ~10 s)")
    from medprobe.cli.launch_args import add_launcher_args

    add_launcher_args(p)
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
    from medprobe.pipeline.study import coverage_lines, save_why, study_coverage, study_sweep
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
    for line in coverage_lines(cov, sw, trained_only=args.trained_only):
        print(line)
    if args.plan:
        return print_plan(sw, cov, args)
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
    if args.status or args.cancel:
        from medprobe.cli.launch_args import launched_action
        from medprobe.results import ResultsDB

        code = launched_action(runnable, expand(runnable), ResultsDB(args.db) if args.db else ResultsDB(), args)
        return 0 if code is None else code
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
    why = save_why(db.root, cov, trained_only=args.trained_only, sweep=runnable.name)  # read by the report
    launched = args.launcher != "inprocess"
    cluster = None
    if launched:
        from medprobe.cli.launch_args import cluster_from_args

        cluster = cluster_from_args(args)
    res = run_sweep(runnable, db=db, cache_dir=args.cache_dir, overrides=overrides or None, limit=args.limit,
                    launcher=args.launcher if launched else None, cluster=cluster, detach=args.detach)
    if args.report and not res.get("detached"):
        from medprobe.report import build_report

        out = build_report(db, args.report, sweep=runnable.name, cache_dir=args.cache_dir, study_why=why)
        print(f"report: {out}")
    return 1 if res["failed"] else 0


def print_plan(sw: Any, cov: Any, args: argparse.Namespace) -> int:
    """``--plan``: the study's size per table (torch-free unless --measure)."""
    from medprobe.pipeline.study_plan import (
        _gflops,
        measure_images_per_s,
        parse_reference,
        plan_lines,
        speed_from_db,
        study_plan,
    )

    plan = study_plan(sw, cov)
    plan.gpu = args.gpu
    ref, res = parse_reference(args.reference)
    ips, source = args.images_per_s, "given"
    if args.measure:
        ips, name = measure_images_per_s(args.reference)
        plan.gpu = plan.gpu or name
        source = f"measured on {name} now"
    if ips:
        g = _gflops(ref, res, None)
        if not g:
            from medprobe.errors import ConfigError

            raise ConfigError(f"--reference {args.reference}: its FLOPs cannot be counted; name a ViT or CNN")
        speed = f"{ips:,.0f}" if ips >= 100 else f"{ips:.3g}"
        plan.gflops_per_s, plan.speed_from = float(ips) * g, f"{args.reference} at {speed} img/s, {source}"
    else:
        from medprobe.results import ResultsDB

        hit = speed_from_db(ResultsDB(args.db) if args.db else ResultsDB(), args.gpu)
        if hit is not None:
            plan.gflops_per_s, plan.speed_from = hit
    for line in plan_lines(plan):
        print(line)
    return 0
