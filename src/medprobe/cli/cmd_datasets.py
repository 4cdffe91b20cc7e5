"""``medprobe datasets [KIND]``: the dataset kinds ``--dataset KIND:ARG`` accepts and the options of each
(``--data-opt KEY=VALUE`` / ``data:`` in a task YAML). Imports no torch."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list the dataset kinds (--dataset KIND:ARG) and the options each accepts",
                       description="Examples: medprobe datasets; medprobe datasets seg2d")
    p.add_argument("kind", nargs="?", default=None,
                   help="show one kind in full (its whole docstring), e.g. medmnist")
    p.set_defaults(func=run)


def factory_options(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """The options a dataset factory declares (``name=default`` for keyword parameters, or its ``options``
    attribute) and whether it takes further ``**options``."""
    declared = getattr(fn, "options", None)
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first one is the ARG of kind:ARG
    more = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    if declared:
        return [str(o) for o in declared], False
    out = []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        out.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    return out, more


def _summary(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n")[0].split())


def run(args: argparse.Namespace) -> int:
    from medprobe.data import dataset_factory, dataset_kinds
    from medprobe.errors import ConfigError

    kinds = dataset_kinds()
    if args.kind:
        if args.kind not in kinds:
            raise ConfigError(f"unknown dataset kind {args.kind!r}; known: {', '.join(kinds)}", "datasets")
        kinds = [args.kind]
    for kind in kinds:
        fn = dataset_factory(f"{kind}:")
        opts, more = factory_options(fn)
        print(f"{kind}:ARG  {_summary(fn)}")
        if more:
            where = "described below" if args.kind else f"see 'medprobe datasets {kind}'"
            listed = (", ".join(opts) + "; more keyword options, " if opts else "keyword options, ") + where
        else:
            listed = ", ".join(opts) if opts else "none"
        print(f"    options: {listed}")
        if args.kind:
            doc = inspect.getdoc(fn) or ""
            mod = inspect.getmodule(fn)
            mod_doc = inspect.getdoc(mod) if mod is not None else None
            for text in (doc, mod_doc):
                if text:
                    print("\n" + "\n".join("    " + ln for ln in text.splitlines()))
    if not args.kind:
        print("\nUse: --dataset KIND:ARG [--data-opt KEY=VALUE ...] (or 'dataset:' and 'data:' in a task YAML); "
              "'medprobe datasets KIND' shows one kind in full.")
    return 0
