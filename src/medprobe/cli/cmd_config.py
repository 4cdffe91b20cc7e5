"""``medprobe config show|keys|families``: the resolved task config and its hash; every key; the families."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show a task's fully resolved config and hash, or list every config key",
                       description="Examples: medprobe config show tasks/nih14.yaml --resolution 512; "
                       "medprobe config keys")
    s = p.add_subparsers(dest="config_command", metavar="ACTION")
    from medprobe.cli.cmd_run import add_task_args

    show = s.add_parser("show", help="print the resolved config (defaults filled in) and its hash per head",
                        description="Example: medprobe config show tasks/pneumoniamnist.yaml --head logreg,knn")
    add_task_args(show)
    show.set_defaults(func=run_show)
    keys = s.add_parser("keys", help="list every task key with its type, default and whether it changes numbers",
                        description="Example: medprobe config keys")
    keys.set_defaults(func=run_keys)
    fam = s.add_parser("families", help="list the task families and the heads each can feed (loads torch)",
                       description="Example: medprobe config families")
    fam.set_defaults(func=run_families)
    p.set_defaults(func=lambda a: (p.print_help(), 1)[1])


def run_show(args: argparse.Namespace) -> int:
    import yaml

    from medprobe.cli.cmd_run import task_from_args
    from medprobe.pipeline.task import check_data_options

    spec, source = task_from_args(args)
    check_data_options(spec, source)  # the dataset factory's options + those the task's family declares
    print(yaml.safe_dump(spec.to_dict(), sort_keys=False, default_flow_style=None, width=110).rstrip())
    print("# config hash per head (what a sweep or a rerun matches on):")
    for h in spec.heads:
        print(f"#   {h}: {spec.config_hash(h)}")
    print("# 'auto' values are the task family's defaults (layers/use), resolved and recorded when the task runs")
    return 0


def run_keys(args: argparse.Namespace) -> int:
    from medprobe.pipeline.task import config_keys

    rows = list(config_keys())
    w = max(len(r[0]) for r in rows)
    wt = min(max(len(r[1]) for r in rows), 34)
    print(f"{'key':<{w}}  {'type':<{wt}}  {'default':<22} numbers  help")
    for path, typ, default, numbers, help_ in rows:
        print(f"{path:<{w}}  {typ:<{wt}}  {default:<22} {'yes' if numbers else 'no ':<7}  {help_}")
    print("\nnumbers: 'yes' keys enter the config hash (a change gives new results); head_params.<head>.* are the "
          "heads' own hyper-parameters ('medprobe config families').")
    return 0


def run_families(args: argparse.Namespace) -> int:
    from medprobe.heads.base import head_classes
    from medprobe.pipeline.family import family_names, get_family

    for name in family_names():
        fam = get_family(name)
        print(f"{name}: datasets of type {', '.join(fam.task_types)}; features per {fam.feature_unit}; "
              f"heads take {'/'.join(fam.head_inputs)} input")
        for cls in head_classes():
            if fam.serves_head(cls):
                print(f"  {cls.name:<10} [{cls.input_kind}] params: {', '.join(fam.head_params(cls))}")
    return 0
