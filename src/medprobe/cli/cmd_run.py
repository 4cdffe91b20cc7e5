"""``medprobe run [TASK.yaml] [--flags]``: one task end to end; flags override the YAML."""

from __future__ import annotations

import argparse
from typing import Any

from medprobe.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a task (YAML and/or flags): features -> heads -> metrics with CIs -> results",
                       description="Example: medprobe run --encoder dinov3-vits16 --weights "
                       "~/w/dinov3_vits16_pretrain_lvd1689m-08c60483.pth --dataset medmnist:pneumoniamnist "
                       "--data-root ~/data/medmnist --resolution 224 --head logreg")
    p.add_argument("task", nargs="?", help="task YAML (see tasks/ in the repository)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--encoder", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--head", default=None, help="comma list: logreg,linear,knn,abmil (segmentation: linear,decoder2d,"
                   "decoder3d)")
    p.add_argument("--resolution", default=None)
    p.add_argument("--intensity", default=None)
    p.add_argument("--layers", default=None, help="layers to extract: last, four, all, 2,5,8,11")
    p.add_argument("--select-layer", type=int, default=None, help="use this one extracted layer")
    p.add_argument("--token", default=None, choices=["cls", "mean", "cls+mean"])
    p.add_argument("--amp", default=None, choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--split", default=None, help="official | fractions:0.7,0.1,0.2 | folds:5:0 (k folds, fold i)")
    p.add_argument("--budget", default=None, help="fraction of training labels or <k>/class")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--db", default=None, help="results database (default ./medprobe-results/results.db)")
    p.add_argument("--name", default=None)
    p.add_argument("--kind", default=None, choices=["classification", "segmentation"])
    p.set_defaults(func=run)


def _split(s: str | None) -> Any:
    if s is None or s == "official":
        return s
    kind, _, rest = s.partition(":")
    if kind == "fractions":
        return {"fractions": [float(v) for v in rest.split(",")]}
    if kind == "folds":
        k, _, i = rest.partition(":")
        return {"folds": int(k), "fold": int(i or 0)}
    from medprobe.errors import ConfigError

    raise ConfigError(f"--split must be official, fractions:a,b,c or folds:k:i, got {s!r}")


def run(args: argparse.Namespace) -> int:
    from medprobe.pipeline import TaskSpec, load_task, run_task
    from medprobe.results import ResultsDB

    spec = load_task(args.task) if args.task else TaskSpec(name=args.name or "cli")
    over: dict[str, Any] = {}
    for k in ("dataset", "encoder", "weights", "seed", "device", "cache_dir", "name", "kind"):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    if args.no_verify:
        over["verify_weights"] = False
    if args.head:
        over["heads"] = [h for h in args.head.split(",") if h]
    if args.budget is not None:
        over["budget"] = args.budget if "/" in args.budget else float(args.budget)
    if args.split:
        over["split"] = _split(args.split)
    data = dict(spec.data)
    data.update(common.dataset_options(args))
    over["data"] = data
    pre: dict[str, Any] = {}
    if args.resolution:
        pre["resolution"] = list(common.parse_resolution(args.resolution) or ())
    if args.intensity:
        pre["intensity"] = args.intensity
    if pre:
        over["preprocess"] = pre
    feats: dict[str, Any] = {}
    for k, v in (("layers", args.layers), ("select", args.select_layer), ("token", args.token), ("amp", args.amp),
                 ("batch_size", args.batch_size)):
        if v is not None:
            feats[k] = v
    if feats:
        over["features"] = feats
    spec = spec.with_overrides(**over)
    run_task(spec, db=ResultsDB(args.db) if args.db else None)
    return 0
