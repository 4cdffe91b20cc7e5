"""``medprobe cache list | verify | rm``: the feature cache's entries."""

from __future__ import annotations

import argparse

from medprobe.cli import common
from medprobe.errors import ConfigError


def _common(p: argparse.ArgumentParser, keys_help: str) -> None:
    p.add_argument("keys", nargs="*", help=keys_help)
    p.add_argument("--cache-dir", default=None,
                   help="feature cache root, e.g. /scratch/cache (default ./medprobe-cache or $MEDPROBE_CACHE)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="inspect, verify or remove cached features",
                       description="Examples: medprobe cache list; medprobe cache verify 3f2a; "
                       "medprobe cache rm --incomplete")
    s = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = s.add_parser("list", help="one line per entry: encoder, weights, dataset, resolution, layers, size",
                      description="Example: medprobe cache list --cache-dir /scratch/cache")
    _common(ls, "only entries whose key starts with one of these, e.g. 3f2a")
    vf = s.add_parser("verify", help="check each entry's files against its manifest (exit 1 on a problem)",
                      description="Example: medprobe cache verify 3f2a")
    _common(vf, "only entries whose key starts with one of these, e.g. 3f2a (default: every entry)")
    rm = s.add_parser("rm", help="remove entries (by key or a key prefix of >= 4 characters, --all --yes or "
                      "--incomplete)",
                      description="Example: medprobe cache rm 3f2a 9bc1")
    _common(rm, "entry keys or prefixes to remove, e.g. 3f2a (or use --all / --incomplete)")
    rm.add_argument("--all", action="store_true", help="remove every entry")
    rm.add_argument("--incomplete", action="store_true", help="remove entries without a manifest (killed runs)")
    rm.add_argument("--yes", action="store_true", help="rm --all: confirm removing every entry (listed first)")
    for q in (ls, vf, rm):
        q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medprobe.features import list_entries, remove_entry, verify_entry

    root = common.cache_root(args)
    entries = list_entries(root)
    short = [k for k in args.keys if len(k) < 4]
    if short and args.action == "rm":  # an empty or short prefix would match (almost) every entry
        raise ConfigError(f"cache rm: key prefix {short[0]!r} is too short: give at least 4 characters of a key "
                          "(or --all --yes)", root)
    if args.keys:
        entries = [e for e in entries if any(e["key"].startswith(k) for k in args.keys)]
        if not entries:
            raise ConfigError(f"no cache entry matches {args.keys}", root)
    if args.action == "list":
        if not entries:
            print(f"(no cached features under {root})")
        for e in entries:
            state = f"{e.get('n_items')} items" if e["complete"] else f"INCOMPLETE ({e.get('shards_done', 0)} shards)"
            if e.get("damaged"):
                state = f"DAMAGED ({e['damaged']}; 'medprobe cache rm {e['key']}' removes it)"
            print(f"{e['key']}  {e['encoder']:<22} {str(e['weights'])[:24]:<24} {e['dataset']:<28} "
                  f"res={e['resolution']} layers={e['layers']} {state} {e['bytes'] / 1e6:.1f} MB")
        return 0
    if args.action == "verify":
        bad = 0
        for e in entries:
            problems = verify_entry(e["path"])
            if e.get("damaged") and not any("manifest.json" in q for q in problems):
                problems.insert(0, f"damaged: {e['damaged']}")
            print(f"{e['key']}: {'ok' if not problems else '; '.join(problems)}")
            bad += bool(problems)
        return 1 if bad else 0
    if not (args.keys or args.all or args.incomplete):
        raise ConfigError("cache rm needs entry keys, --all or --incomplete")
    doomed = [e for e in entries if not (args.incomplete and e["complete"])]
    for e in doomed:  # only medprobe entries are listed: other folders under the cache root are never touched
        print(f"{'removing' if args.yes or not args.all else 'would remove'} {e['key']}  {e['encoder']}  "
              f"{e['dataset']}  {e['bytes'] / 1e6:.1f} MB")
    if args.all and not args.yes:
        print(f"(cache rm --all removes the {len(doomed)} entries above: add --yes to confirm)")
        return 1
    for e in doomed:
        remove_entry(e["path"])
    print(f"removed {len(doomed)} entr{'y' if len(doomed) == 1 else 'ies'} from {root}")
    return 0
