"""``medprobe audit DATASET``: exact and near-duplicate images within and across splits (torch-free)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXAMPLES = """examples:
  medprobe audit medmnist:breastmnist --data-root ../shared/data/medmnist
  medprobe audit folder:/data/busi --seed 0 --show 50 --json busi-audit.json
  medprobe audit medmnist:pneumoniamnist --data-root data --features medprobe-cache/<key> --fail-on-leak
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="find duplicate images within and across splits (leakage audit)",
        description="Hash every image's decoded pixels (exact copies) and a perceptual hash confirmed by a "
        "thumbnail correlation (resized, re-encoded, re-windowed copies); optionally compare cached encoder "
        "vectors. Prints the counts within and across splits, label conflicts (alike images labelled differently) and "
        "a table of suspicious pairs, conflicts first. Runs no model.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET",
                   help="kind:arg, e.g. medmnist:breastmnist, folder:/data/tiles, csv:labels.csv")
    p.add_argument("--data-root", default=None, help="folder the dataset reads from, e.g. ../shared/data/medmnist")
    p.add_argument("--data-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dataset option (repeatable), e.g. --data-opt limit=100")
    p.add_argument("--split", default="auto", choices=["auto", "none"],
                   help="auto: the dataset's official split, else the run's generated 70/10/20 split "
                   "(seeded, stratified); none: the whole set as one group, e.g. --split none")
    p.add_argument("--seed", type=int, default=0, help="seed of a generated split (the task's seed), e.g. --seed 0")
    p.add_argument("--near-threshold", type=int, default=10,
                   help="perceptual-hash candidates differ in at most this many of 64 bits, e.g. 10")
    p.add_argument("--near-correlation", type=float, default=0.97,
                   help="a candidate is a near duplicate when its 32x32 thumbnails correlate this much, e.g. 0.97")
    p.add_argument("--features", default=None, metavar="CACHE_ENTRY",
                   help="a feature-cache entry folder of this dataset: also compare its cls vectors, e.g. "
                   "medprobe-cache/0123abcd...")
    p.add_argument("--feature-threshold", type=float, default=0.998,
                   help="cached vectors: centred cosine similarity at least this is a near duplicate, e.g. 0.998")
    p.add_argument("--cache-dir", default=None,
                   help="where fingerprints are cached (default ./medprobe-cache or $MEDPROBE_CACHE), e.g. /tmp/c")
    p.add_argument("--show", type=int, default=20, help="pairs printed (test leaks first), e.g. --show 50")
    p.add_argument("--json", default=None, metavar="FILE", help="write every finding as JSON, e.g. audit.json")
    p.add_argument("--fail-on-leak", action="store_true",
                   help="exit 1 when a test case is alike a train/val case or alike images are labelled "
                   "differently (for CI), e.g. --fail-on-leak")
    p.set_defaults(func=run)


def _splits(ds: Any, how: str, seed: int) -> tuple[dict[str, list[int]] | None, str]:
    """The split to audit against (the one a run would use) and how it was made."""
    if how == "none":
        return None, "none (whole set)"
    s = ds.splits() if hasattr(ds, "splits") else None
    if s:
        return {k: list(v) for k, v in s.items()}, "official"
    from medprobe.data.splits import split_by_patient

    strat = ds.labels() if ds.task.type in ("binary", "multiclass", "ordinal") else None
    return split_by_patient(ds.patients(), (0.7, 0.1, 0.2), seed=seed, stratify=strat), \
        f"generated 70/10/20 (seed {seed}{', stratified' if strat is not None else ''})"


def run(args: argparse.Namespace) -> int:
    from medprobe.audit import audit, cached_vectors, case_labels
    from medprobe.cli.common import dataset_options
    from medprobe.data import create_dataset
    from medprobe.errors import DataError
    from medprobe.utils import atomic_write_json, default_cache_dir

    ds = create_dataset(args.dataset, **dataset_options(args))
    splits, how = _splits(ds, args.split, args.seed)
    X, label = None, None
    if args.features:
        ids, X, layer = cached_vectors(args.features)
        if ids != list(ds.ids()):
            raise DataError("the feature entry was made from other cases than this dataset", args.features)
        label = f"cls token, block {layer}"
    cache = args.cache_dir or default_cache_dir()
    rep = audit(ds, splits, near_threshold=args.near_threshold, near_correlation=args.near_correlation,
                feature_threshold=args.feature_threshold, features=X, feature_label=label, cache_dir=cache,
                labels=case_labels(ds))
    print(f"dataset   {ds.name}: {len(ds)} cases; split {how}")
    c = rep.counts()
    print(f"{'detector':<9} {'within':>7} {'across':>7} {'test leaks':>11}")
    for k in (*[k for k in c if k != "any"], "any"):
        if k == "feature" and X is None:
            continue
        print(f"{k:<9} {c[k]['within']:>7} {c[k]['across']:>7} {c[k]['test_leaks']:>11}")
    conf = rep.conflicts()
    if rep.labels is not None:
        print(f"{'conflicts':<9} {sum(not p.across for p in conf):>7} {sum(p.across for p in conf):>7} "
              f"{sum(p.leaks_into_test for p in conf):>11}   (alike, labelled differently)")
    rows = rep.rows(args.show)
    if rows:
        w = max(len(r["a"]) for r in rows)
        lab = "conflict" in rows[0]
        print(f"\n{'case a':<{w}}  {'case b':<{w}}  {'splits':<12} {'found by':<19} {'hamming':>7} {'cosine':>7}"
              + ("  labels" if lab else ""))
        for r in rows:
            print(f"{r['a']:<{w}}  {r['b']:<{w}}  {r['split_a'] + '/' + r['split_b']:<12} "
                  f"{'+'.join(r['kinds']):<19} {'' if r['hamming'] is None else r['hamming']:>7} "
                  f"{'' if r['cosine'] is None else r['cosine']:>7}"
                  + (f"  {r['label_a']}/{r['label_b']}" + ("  LABEL CONFLICT" if r["conflict"] else "")
                     if lab else ""))
        if len(rep.pairs) > len(rows):
            print(f"... {len(rep.pairs) - len(rows)} more pair(s) (--show N, --json FILE)")
    print(f"\n{rep.summary()} ({rep.seconds['total']:.2f} s)")
    if args.json:
        atomic_write_json(args.json, {"dataset": ds.name, "split": how, **rep.to_notes(limit=len(rep.pairs))})
        print(f"findings in {args.json}")
    if args.fail_on_leak and (rep.test_duplicates() or conf):
        print("medprobe: leakage: " + ("test cases alike train/val cases" if rep.test_duplicates() else
                                       "label conflicts (alike images labelled differently)"), file=sys.stderr)
        return 1
    return 0


__all__ = ["register", "run"]
