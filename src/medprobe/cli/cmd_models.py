"""``medprobe models``: the encoder registry and whether weights are found locally."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered encoders and locally found weights")
    p.add_argument("--weights-dir", action="append", default=[], help="folder to search for Meta .pth files "
                   "(repeatable), e.g. ~/weights (also $MEDPROBE_WEIGHTS, ~/.cache/torch/hub/checkpoints, "
                   "the HF cache)")
    p.add_argument("--verify", action="store_true",
                   help="hash found Meta files against their name (slow for big files)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medprobe.encoders import get_family, list_specs, weights_available
    from medprobe.encoders.weights import verify_meta_hash
    from medprobe.errors import WeightsError

    dirs = [Path(d).expanduser() for d in args.weights_dir]
    print(f"{'name':<24} {'params':>8} {'patch':>5} {'dim':>5} {'depth':>5} {'native':>6}  taps           weights")
    for s in list_specs():
        found = weights_available(s, dirs)
        if not found:
            state = "not found (random init available)" if get_family(s.family).needs_weights else "-"
        else:
            f = found[0]
            state = f"found {f}"
            if args.verify and f.is_file() and f.suffix == ".pth":
                try:
                    verify_meta_hash(f)
                    state += " [sha256 ok]"
                except WeightsError as e:
                    state += f" [BAD: {e.problem}]"
        taps = ",".join(map(str, s.default_layers))
        print(f"{s.name:<24} {s.params_m:>7.1f}M {s.patch_size:>5} {s.width:>5} {s.depth:>5} {s.native_resolution:>6}  "
              f"{taps:<14} {state}")
    return 0
