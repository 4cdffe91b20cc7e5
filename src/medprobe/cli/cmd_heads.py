"""``medprobe heads [NAME]``: the registered heads grouped by task family, with the parameters each accepts
(``head_params.<head>.<key>`` in a task YAML). Loads torch: heads are torch modules."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("heads", help="list the heads per task family and the parameters each accepts (loads torch)",
                       description="Examples: medprobe heads; medprobe heads logreg")
    p.add_argument("name", nargs="?", default=None, help="show only heads of this name, e.g. decoder2d")
    p.set_defaults(func=run)


def family_defaults(fam: Any) -> dict[str, Any]:
    """Defaults of parameters a family adds to its heads (training options): the fields of the dataclasses its
    module uses (e.g. the segmentation family's training config)."""
    out: dict[str, Any] = {}
    mod = inspect.getmodule(type(fam))
    for obj in vars(mod).values() if mod is not None else ():
        if isinstance(obj, type) and dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if f.default is not dataclasses.MISSING:
                    out.setdefault(f.name, f.default)
    return out


def param_defaults(cls: type[Any], names: list[str], fam: Any = None) -> list[str]:
    """``name=default`` for each accepted parameter (class ``defaults``, its ``__init__`` keywords, then the
    family's training options)."""
    defaults: dict[str, Any] = dict(getattr(cls, "defaults", None) or {})
    for n, p in inspect.signature(cls.__init__).parameters.items():
        if p.default is not inspect.Parameter.empty:
            defaults.setdefault(n, p.default)
    for n, v in (family_defaults(fam) if fam is not None else {}).items():
        if n in names:
            defaults.setdefault(n, v)
    return [f"{n}={defaults[n]!r}" if n in defaults else n for n in names]


def _summary(cls: type[Any]) -> str:
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def run(args: argparse.Namespace) -> int:
    from medprobe.errors import ConfigError
    from medprobe.heads.base import head_classes
    from medprobe.pipeline.family import family_names, get_family

    shown = 0
    for fam_name in family_names():
        fam = get_family(fam_name)
        heads = [c for c in head_classes() if fam.serves_head(c) and args.name in (None, c.name)]
        if not heads:
            continue
        print(f"{fam_name} (dataset task types {', '.join(fam.task_types)}; heads take "
              f"{'/'.join(fam.head_inputs)} input)")
        for cls in heads:
            tasks = f" fits {', '.join(cls.tasks)};" if cls.tasks else ""
            print(f"  {cls.name:<10} [{cls.input_kind}]{tasks} {_summary(cls)}")
            print(f"             params: {', '.join(param_defaults(cls, fam.head_params(cls), fam)) or 'none'}")
            shown += 1
    if args.name and not shown:
        names = sorted({c.name for c in head_classes()})
        raise ConfigError(f"unknown head {args.name!r}; known: {', '.join(names)}", "heads")
    if not args.name:
        print("\nUse: --head a,b (or 'heads:' in a task YAML); set parameters in a task YAML under "
              "head_params.<head>.<param>.")
    return 0
