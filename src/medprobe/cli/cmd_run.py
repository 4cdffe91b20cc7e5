"""``medprobe run [TASK.yaml] [--flags]``: one task end to end; flags override the YAML."""

from __future__ import annotations

import argparse
from typing import Any

from medprobe.cli import common


def add_task_args(p: argparse.ArgumentParser) -> None:
    """The flags that set task options (shared by ``run`` and ``config show``)."""
    p.add_argument("task", nargs="?", help="task YAML, e.g. tasks/pneumoniamnist.yaml (flags override its keys)")
    p.add_argument("--dataset", default=None, help="dataset kind:arg, e.g. medmnist:pneumoniamnist, msd:/data/Task04 "
                   "('medprobe datasets')")
    p.add_argument("--data-root", default=None, help="folder the dataset reads from (data.root), e.g. ~/data/medmnist")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option (repeatable), e.g. --data-opt size=64 ('medprobe datasets KIND')")
    p.add_argument("--encoder", default=None, help="encoder registry name, e.g. dinov3-vits16 ('medprobe models')")
    p.add_argument("--weights", default=None,
                   help="weights: Meta .pth, .safetensors, HF dir, hub id or random[:seed=N], e.g. random:seed=1")
    p.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check of Meta checkpoint names")
    p.add_argument("--encoder-option", action="append", default=[], metavar="KEY=VALUE",
                   help="encoder family option (repeatable; encoder_options.KEY), e.g. --encoder-option "
                   "onnx_output=/backbone/norm/Add_1_output_0 ('medprobe models' lists each family's options)")
    p.add_argument("--head", default=None, help="comma list, e.g. logreg,knn (segmentation: decoder2d; "
                   "regression: ridge; 'medprobe heads')")
    p.add_argument("--resolution", default=None, help="input size N or HxW, e.g. 224 (default: encoder's native)")
    p.add_argument("--intensity", default=None, help="intensity handling, e.g. ct:lung, mri:percentile, minmax")
    p.add_argument("--layers", default=None, help="blocks to extract: last, four, all or indices, e.g. 2,5,8,11")
    p.add_argument("--select-layer", type=int, default=None, help="use this one extracted block, e.g. 5")
    p.add_argument("--token", default=None, choices=["cls", "mean", "cls+mean"], help="vector token(s), e.g. cls")
    p.add_argument("--amp", default=None, choices=["auto", "bf16", "fp16", "off"], help="autocast, e.g. bf16")
    p.add_argument("--batch-size", default=None, help="encoder batch size, e.g. 64, or auto")
    p.add_argument("--split", default=None,
                   help="official | fractions:a,b,c | folds:k:i (k folds, fold i), e.g. folds:5:0")
    p.add_argument("--budget", default=None, help="fraction of training labels or <k>/class, e.g. 0.1")
    p.add_argument("--seed", default=None, help="seed, e.g. 0")
    p.add_argument("--device", default=None,
                   help="torch device, e.g. cpu, cuda or cuda:1 (default: cuda when available)")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root, e.g. /scratch/cache (default ./medprobe-cache)")
    p.add_argument("--name", default=None, help="task name stored with the rows, e.g. pneumonia-224")
    p.add_argument("--kind", default=None,
                   help="task family override, e.g. segmentation (default: taken from the dataset's task type; "
                   "'medprobe config families')")


RUN_EPILOG = """\
where to find the lists:
  medprobe models        encoders (registry names) and the weights found locally
  medprobe datasets      dataset kinds (the KIND of --dataset KIND:ARG) and the options each accepts
  medprobe heads         heads per task family and the parameters each accepts (head_params.<head>.*)
  medprobe config keys   every task key (YAML or flag), its default and whether it changes numbers

The task family (classification, segmentation, regression) is taken from the dataset's task type; --kind
overrides it. --dry-run shows what a run would do (config hashes, rows already stored, cached features,
extraction estimate) and runs nothing."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a task (YAML and/or flags): features -> heads -> metrics with CIs -> results",
                       description="Example: medprobe run --encoder dinov3-vits16 --weights "
                       "~/w/dinov3_vits16_pretrain_lvd1689m-08c60483.pth --dataset medmnist:pneumoniamnist "
                       "--data-root ~/data/medmnist --resolution 224 --head logreg",
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(p)
    p.add_argument("--db", default=None,
                   help="results database, e.g. runs/ or runs/results.db (default ./medprobe-results/results.db)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, hash per head, rows already stored, cached features and an "
                   "extraction estimate; run nothing")
    p.add_argument("--rerun", action="store_true",
                   help="run heads whose row is already stored with the same config again (default: skip them), "
                   "e.g. after changing code")
    p.set_defaults(func=run)


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """CLI flags as a raw option mapping (the same parser as YAML and sweep cells normalises it)."""
    over: dict[str, Any] = {}
    for k in ("dataset", "encoder", "weights", "seed", "device", "cache_dir", "name", "kind", "budget", "split"):
        if getattr(args, k) is not None:
            over[k] = getattr(args, k)
    if args.no_verify:
        over["verify_weights"] = False
    if args.head:
        over["heads"] = args.head
    enc_opts = common.encoder_options(args.encoder_option)
    if enc_opts:
        over["encoder_options"] = enc_opts
    data = common.dataset_options(args)
    if data:
        over["data"] = data
    pre = {k: v for k, v in (("resolution", args.resolution), ("intensity", args.intensity)) if v is not None}
    if pre:
        over["preprocess"] = pre
    feats = {k: v for k, v in (("layers", args.layers), ("select", args.select_layer), ("token", args.token),
                               ("amp", args.amp), ("batch_size", args.batch_size)) if v is not None}
    if feats:
        over["features"] = feats
    return over


def task_from_args(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The task spec of a YAML file and/or flags, and the source named in errors."""
    from medprobe.pipeline.task import load_task_raw, merge_raw, parse_task

    over = flag_overrides(args)
    if args.task:
        raw = load_task_raw(args.task)
        parse_task(raw, source=args.task)  # errors in the file name the file
        return parse_task(merge_raw(raw, over), source=f"{args.task} + command line"), args.task
    over.setdefault("name", "cli")
    return parse_task(over, source="command line"), None


def run(args: argparse.Namespace) -> int:
    from medprobe.results import ResultsDB

    spec, source = task_from_args(args)
    if args.dry_run:
        from medprobe.pipeline.plan import print_plan

        print_plan(spec, db=ResultsDB(args.db) if args.db else ResultsDB(), source=source)
        return 0
    from medprobe.pipeline.run import run_task

    run_task(spec, db=ResultsDB(args.db) if args.db else None, source=source, rerun=args.rerun)
    return 0
