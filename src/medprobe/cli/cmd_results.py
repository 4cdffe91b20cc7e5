"""``medprobe results list | show | export | merge``: browse the results database (merge: compact the result
shards of launched jobs into it)."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from medprobe.errors import ConfigError


def _add_common(p: argparse.ArgumentParser, filters: bool = True) -> None:
    p.add_argument("--db", default=None, help="results database file or folder, e.g. runs/ "
                   "(default ./medprobe-results/results.db or $MEDPROBE_RESULTS)")
    if filters:
        p.add_argument("--task", default=None, help="only this task name, e.g. pneumoniamnist")
        p.add_argument("--encoder", default=None, help="only this encoder, e.g. dinov3-vits16")
        p.add_argument("--head", default=None, help="only this head, e.g. logreg")
        p.add_argument("--sweep", default=None, help="only this sweep (labels.sweep), e.g. dinov3-medical")
        p.add_argument("--config-hash", default=None, help="only this config hash ('medprobe config show'), "
                       "e.g. 3f2a9c01d4e5b6a7")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("results", help="list, show, export or merge stored results",
                       description="Examples: medprobe results list --metric auc; medprobe results show 3f2a9c01; "
                       "medprobe results export --csv all.csv. From Python: medprobe.results.load() -> DataFrame")
    rs = p.add_subparsers(dest="results_action", metavar="ACTION", required=True)
    pl = rs.add_parser("list", help="one line per run with one metric and its CI")
    _add_common(pl)
    pl.add_argument("--metric", default=None, help="one metric for every run, e.g. dice or r2 (default: each "
                    "family's own columns, e.g. auc for classification, voi and arand for EM instances)")
    pl.add_argument("--split", default="test", choices=["test", "val"], help="whose metric, e.g. val (default test)")
    pl.set_defaults(func=run_list)
    ps = rs.add_parser("show", help="everything stored for one run")
    ps.add_argument("run_id", help="run id or a unique prefix, e.g. 3f2a9c01")
    _add_common(ps, filters=False)
    ps.set_defaults(func=run_show)
    pe = rs.add_parser("export", help="CSV with one row per run x metric")
    pe.add_argument("--csv", required=True, help="output file, e.g. results.csv (never a database; an existing "
                    "file only with --force)")
    pe.add_argument("--force", action="store_true", help="replace an existing CSV file (never a database)")
    _add_common(pe)
    pe.set_defaults(func=run_export)
    pm = rs.add_parser("merge", help="move the result shards of launched jobs into the database file",
                       description="Example: medprobe results merge --db runs/ (run it where SQLite locking works, "
                                   "e.g. the login node; jobs may still be adding shards meanwhile)")
    _add_common(pm, filters=False)
    pm.set_defaults(func=run_merge)


def _open(args: argparse.Namespace) -> Any:
    from medprobe.results import ResultsDB

    db = ResultsDB(args.db)
    if not db.exists():
        raise ConfigError("no results database (run an evaluation first, pass --db or set MEDPROBE_RESULTS)",
                          db.path)
    return db


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"task": args.task, "encoder": args.encoder, "head": args.head, "sweep": args.sweep,
            "config_hash": args.config_hash}


def _short_weights(r: dict[str, Any]) -> str:
    w = str(r.get("weights") or "")
    untrained = not r.get("pretrained") or w.startswith("random") or bool((r.get("labels") or {}).get("untrained"))
    if untrained:
        return f"UNTRAINED({w})" if w.startswith("random") else "UNTRAINED"
    return w[:12]


def _fmt_json(v: Any, sep: str = ",") -> str:
    """Compact text for a stored layers/resolution value: [224, 224] -> 224x224 (sep "x"), [2, 5] -> 2,5."""
    if v is None:
        return "-"
    if isinstance(v, list):
        return sep.join(map(str, v))
    return str(v)


def _fmt_num(v: float | None) -> str:
    if v is None:
        return "?"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{v:.4f}"


def _fmt_metric(m: tuple[float, float | None, float | None] | None) -> str:
    if m is None:
        return "-"
    value, low, high = m
    ci = f" [{_fmt_num(low)}, {_fmt_num(high)}]" if low is not None or high is not None else ""
    return _fmt_num(value) + ci


def _family(r: dict[str, Any]) -> str:
    """The task family a stored run came from ('' for rows that did not record it)."""
    fam = (r.get("config") or {}).get("family") or (r.get("labels") or {}).get("family")
    return str(fam or "")


def _family_metrics(runs: list[dict[str, Any]], split: str) -> list[str]:
    """The metric columns of one family's runs: the headline (else ranking) metrics their records list, those
    present in at least one run; ``auc`` for rows that recorded neither (as before families)."""
    listed: list[str] = []
    for r in runs:
        rep = (r.get("extra") or {}).get("report") or {}
        for m in rep.get("headline") or rep.get("rank_by") or ():
            if m not in listed:
                listed.append(m)
    have = {m for r in runs for m in r["metrics_all"].get(split, {})}
    cols = [m for m in listed if m in have]
    return cols or ["auc"]


def run_list(args: argparse.Namespace) -> int:
    db = _open(args)
    runs = db.runs(**_filters(args))
    if not runs:
        print(f"(no runs in {db.path} match)")
        return 0
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault("" if args.metric else _family(r), []).append(r)
    for n, (fam, group) in enumerate(groups.items()):
        metrics = [args.metric] if args.metric else _family_metrics(group, args.split)
        if len(groups) > 1:
            print(("\n" if n else "") + f"{fam or 'other'} ({len(group)} run{'s' if len(group) > 1 else ''})")
        header = ["id", "time (UTC)", "task", "encoder", "weights", "head", "res", "layer",
                  *(f"{args.split}/{m} [CI]" for m in metrics)]
        rows = [[r["run_id"][:8], r["created"][:16].replace("T", " "), r["task"], r["encoder"], _short_weights(r),
                 r["head"], _fmt_json(r["resolution"], "x"), _fmt_json(r["layers"]),
                 *(_fmt_metric(r["metrics_all"].get(args.split, {}).get(m)) for m in metrics)] for r in group]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def run_show(args: argparse.Namespace) -> int:
    db = _open(args)
    r = db.get(args.run_id)
    skip = {"metrics", "metrics_all", "extra"}
    width = max(len(k) for k in r)
    for k, v in r.items():
        if k in skip or (k == "extra" and not v):
            continue
        text = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
        print(f"{k:<{width}}  {text}")
    if r["extra"]:
        print(f"{'extra':<{width}}  {json.dumps(r['extra'], sort_keys=True)}")
    print("metrics:")
    for sp, ms in r["metrics_all"].items():
        for name, m in sorted(ms.items()):
            print(f"  {sp}/{name:<24} {_fmt_metric(m)}")
    if not r["metrics_all"]:
        print("  (none)")
    return 0


def run_export(args: argparse.Namespace) -> int:
    db = _open(args)
    n = db.export_csv(args.csv, force=args.force, **_filters(args))
    print(f"wrote {n} rows to {args.csv}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from medprobe.results import ResultsDB
    from medprobe.results.shards import list_shards

    db = ResultsDB(args.db)
    if db.reopen_args().get("files"):
        print(f"{db.path} is a PostgreSQL store: jobs write to it directly, there is nothing to merge")
        return 0
    n = len(list_shards(db.root))
    if not n:
        print(f"no result shards beside {db.path}: nothing to merge")
        return 0
    out = db.merge_shards()
    print(f"merged {out['merged']} row(s) from {n} shard(s) into {db.path}"
          + (f"; {out['already']} were in it already" if out["already"] else "")
          + (f"; {out['dropped']} dropped (their config hash was stored already)" if out["dropped"] else ""))
    return 0
