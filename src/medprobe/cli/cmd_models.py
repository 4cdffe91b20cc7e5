"""``medprobe models``: the encoder registry, each family's feature contract, and locally found weights."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered encoders, their feature contract and locally found weights")
    p.add_argument("--weights-dir", action="append", default=[], help="folder to search for weight files "
                   "(repeatable), e.g. ~/weights (also $MEDPROBE_WEIGHTS, ~/.cache/torch/hub/checkpoints, "
                   "the HF cache)")
    p.add_argument("--family", action="append", default=[],
                   help="only these encoder families (repeatable), e.g. --family clip --family resnet")
    p.add_argument("--contracts", action="store_true",
                   help="print the feature contract of each family (what cls/patch mean, taps, extra) instead")
    p.add_argument("--markdown", action="store_true", help="with --contracts: a Markdown table (docs/encoders.md)")
    p.add_argument("--verify", action="store_true",
                   help="hash found Meta files against their name (slow for big files)")
    p.set_defaults(func=run)


def contract_rows(families: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per encoder family: its feature contract, extra and named encoders."""
    from medprobe.encoders import encoder_families, get_family, list_specs

    specs = list_specs()
    rows = []
    for name in encoder_families():
        if families and name not in families:
            continue
        fam = get_family(name)
        members = [s for s in specs if s.family == name]
        rows.append({"family": name, "encoders": ", ".join(s.name for s in members) or "(any, by name)",
                     "cls": fam.cls_feature, "patch": fam.patch_feature, "taps": fam.taps,
                     "native": ", ".join(sorted({str(s.native_resolution) for s in members})) or "-",
                     "extra": fam.extra or "core"})
    return rows


def _print_contracts(rows: list[dict[str, Any]], markdown: bool) -> None:
    cols = ["family", "encoders", "cls", "patch", "taps", "native", "extra"]
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |")
        return
    for r in rows:
        print(f"{r['family']}  (extra: {r['extra']}; native {r['native']})")
        for c in ("encoders", "cls", "patch", "taps"):
            print(f"  {c:<9} {r[c]}")


def run(args: argparse.Namespace) -> int:
    from medprobe.encoders import get_family, list_specs, weights_available
    from medprobe.encoders.weights import verify_meta_hash
    from medprobe.errors import ConfigError, WeightsError

    fams = list(args.family) or None
    if fams:
        from medprobe.encoders import encoder_families

        unknown = [f for f in fams if f not in encoder_families()]
        if unknown:
            raise ConfigError(f"unknown encoder family {unknown[0]!r} (known: {', '.join(encoder_families())})")
    if args.contracts:
        _print_contracts(contract_rows(fams), args.markdown)
        return 0
    dirs = [Path(d).expanduser() for d in args.weights_dir]
    print(f"{'name':<26} {'family':<12} {'params':>8} {'patch':>5} {'dim':>5} {'depth':>5} {'native':>6}  "
          f"{'taps':<14} {'extra':<9} weights")
    for s in list_specs():
        if fams and s.family not in fams:
            continue
        fam = get_family(s.family)
        found = weights_available(s, dirs)
        if not found:
            state = "not found (random init available)" if fam.needs_weights else "-"
        else:
            f = found[0]
            state = f"found {f}"
            if args.verify and f.is_file() and f.suffix == ".pth" and s.meta_arch:
                try:
                    verify_meta_hash(f)
                    state += " [sha256 ok]"
                except WeightsError as e:
                    state += f" [BAD: {e.problem}]"
        taps = ",".join(map(str, s.default_layers))
        print(f"{s.name:<26} {s.family:<12} {s.params_m:>7.1f}M {s.patch_size:>5} {s.width:>5} {s.depth:>5} "
              f"{s.native_resolution:>6}  {taps:<14} {fam.extra or 'core':<9} {state}")
    print("feature contract per family: medprobe models --contracts (docs/encoders.md)")
    return 0
