"""``medprobe report``: one self-contained HTML report (+ report.md, one CSV per table) from the results DB."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report (+ Markdown, CSV) of the results DB",
                       description="Example: medprobe report --db runs/ --sweep dinov3-medical --out report.html")
    p.add_argument("--db", default=None, help="results database, e.g. runs/ (default ./medprobe-results/results.db)")
    p.add_argument("--out", default="report.html",
                   help="HTML file, e.g. runs/report.html; report.md and report-<table>.csv go beside it"
                   " (default report.html)")
    p.add_argument("--sweep", default=None, help="only rows of this sweep (its name), e.g. dinov3-medical")
    p.add_argument("--cache-dir", default=None, help="feature cache to search for PCA pictures, e.g. /scratch/cache")
    p.add_argument("--title", default=None, help="report title, e.g. 'DINOv3 on MedMNIST'")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="paired-bootstrap resamples per comparison, e.g. 2000 (default 1000)")
    p.add_argument("--no-pca", action="store_true", help="leave out the PCA-of-patch-features pictures")
    p.add_argument("--no-live-pca", action="store_true",
                   help="only use patch tokens found in the cache (never re-encode sample images)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medprobe.report import build_report
    from medprobe.results import ResultsDB

    db = ResultsDB(args.db) if args.db else ResultsDB()
    out = build_report(db, args.out, sweep=args.sweep, cache_dir=args.cache_dir, title=args.title,
                       n_boot=args.bootstrap, pca=not args.no_pca, pca_live=not args.no_live_pca)
    print(f"report: {out} (+ {out.with_suffix('.md').name}, CSV tables beside it)")
    return 0
