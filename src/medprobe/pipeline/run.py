"""The one run path: any task family, any head it can feed.

dataset -> family (from ``kind`` or the dataset's task type) -> family defaults -> splits + label budget ->
heads looked up by what they take (checked with their parameters before any work) -> cached features ->
per head: the family fits, predicts and scores -> one record per head, built here -> every row written once
all heads succeeded -> one printed table. A leakage audit (:mod:`medprobe.audit`) runs once the splits exist
(pixel hashes; again with the cached features once they exist) and its findings go into every record.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import create_dataset
from medprobe.errors import ConfigError, DataError
from medprobe.pipeline.common import (
    apply_budget,
    build_encoder,
    encoder_identity,
    features_for,
    make_splits,
    pick_device,
)
from medprobe.pipeline.family import (
    HeadResult,
    RunContext,
    TaskFamily,
    family_for_dataset,
    feature_layers,
    get_family,
    print_table,
)
from medprobe.pipeline.task import TaskSpec, check_data_options
from medprobe.schema import unknown_key
from medprobe.utils import default_cache_dir, hash_obj

log = logging.getLogger("medprobe.pipeline")


def _family_data_options() -> set[str]:
    from medprobe.pipeline.family import FAMILIES

    return {o for _, cls in FAMILIES.items() for o in cls.data_options}


def load_dataset(spec: TaskSpec, source: str | None = None) -> tuple[Any, TaskFamily]:
    """The task's dataset (dataset options checked first) and the family that runs it."""
    fam_opts = _family_data_options()
    check_data_options(spec, source, extra=fam_opts)
    ds = create_dataset(spec.dataset, **{k: v for k, v in spec.data.items() if k not in fam_opts})
    family = get_family(spec.kind) if spec.kind else family_for_dataset(ds, spec.dataset)
    family.check_dataset(ds, spec)
    return ds, family


def prepared_for_extraction(spec: TaskSpec, loaded: tuple[Any, TaskFamily] | None = None
                            ) -> tuple[Any, TaskFamily, TaskSpec, Any, Any]:
    """What a task resolves before its features, as ``run_task`` does: the prepared dataset, its family, the spec
    with the family's options resolved, the device and the encoder identity (the encoder itself when its identity
    needs it built). ``loaded``: ``load_dataset(spec)`` when the caller has it already."""
    ds, family = loaded or load_dataset(spec)
    ds, _ = family.prepare_dataset(ds, spec, False)
    device = pick_device(spec.device)
    info = encoder_identity(spec)
    if info is None:
        info = build_encoder(spec, device)
    return ds, family, family.resolve(spec, ds, info), device, info


def resolve_heads(spec: TaskSpec, family: TaskFamily, ds: Any, source: str | None = None
                  ) -> list[tuple[str, type[Any]]]:
    """Each head name -> the registered class that takes this family's input and fits ``task_type``; every
    ``head_params`` key checked (one line naming the key path and the closest valid key)."""
    from medprobe.heads.base import find_head

    out = []
    for name in spec.heads:
        cls = find_head(name, family.head_inputs, ds.task.type, where=source or spec.name)
        family.check_head(cls, name, ds)
        out.append((name, cls))
    from medprobe.heads.base import _names_for

    for name, params in spec.head_params.items():
        if name in spec.heads:
            cls = dict(out)[name]
        else:  # parameters of a head this run does not use (a YAML may set several; flags pick some)
            try:
                cls = find_head(name, family.head_inputs)
            except ConfigError:
                raise unknown_key("head_params", name, _names_for(family.head_inputs, None),
                                  source or spec.name) from None
        valid = family.head_params(cls)
        for k in params:
            if k not in valid:
                raise unknown_key(f"head_params.{name}", k, valid, source or spec.name)
    return out


def run_task(spec: TaskSpec, db: Any = None, verbose: bool = True, source: str | None = None,
             rerun: bool = False) -> list[dict[str, Any]]:
    """Run every head of a task (any family); each head becomes one results row. Returns the rows
    (``{run_id, head, metrics, record, ...}``).

    A head whose row is already stored with the same config hash is not run again (one line says so; its
    stored row is returned with ``skipped: True``) unless ``rerun``."""
    from medprobe.results import ResultsDB, collect_environment

    t_total = time.perf_counter()
    user_spec = spec
    ds, family = load_dataset(spec, source)
    ds, notes = family.prepare_dataset(ds, spec, verbose)
    heads = resolve_heads(spec, family, ds, source)
    db = db if db is not None else ResultsDB()
    results_root = Path(getattr(db, "root", None) or Path(db.path).parent)  # a server store keeps files here
    _check_writable(results_root)
    stored: list[dict[str, Any]] = []
    if not rerun:
        for name, _cls in heads:
            row = db.find(spec.config_hash(name))
            if row is not None:
                print(f"medprobe: head {name}: already stored with this config (run {row['run_id'][:10]}): "
                      "skipped (--rerun runs it again)", file=sys.stderr, flush=True)
                stored.append({"run_id": row["run_id"], "head": name, "metrics": row["metrics"], "record": row,
                               "skipped": True})
        heads = [(n, c) for n, c in heads if n not in {r["head"] for r in stored}]
        if not heads:
            return stored
    _check_volume_encoder(spec, family)
    device = pick_device(spec.device)
    info = encoder_identity(spec)
    if info is None:  # identity known only once loaded (hub ids): build now, extraction reuses it
        from medprobe.pipeline.common import build_encoder

        info = build_encoder(spec, device)
    spec = family.resolve(spec, ds, info)
    labels = family.budget_labels(ds)
    split_info: dict[str, Any] = {}
    splits = make_splits(ds, spec, labels, info=split_info)
    splits["train"] = apply_budget(splits["train"], ds.patients(), labels, spec.budget, spec.seed)
    found = audit_splits(ds, splits, spec)  # before extraction: mode error stops here
    enc, store, extraction = features_for(ds, spec, device, family.tokens, info=info, unit=family.feature_unit,
                                          unit_options=family.unit_options(spec))
    if extraction["timing"]["cached"]:
        log.info("features reused from cache %s: extraction skipped", extraction["cache_key"])
    notes = {**notes, "audit": settle_audit(found, ds, splits, spec, store, enc.pretrained)}
    volume = getattr(store, "volume", None)
    if volume:  # a 3D encoder's input geometry and feature contract (features.volume)
        notes["volume_input"] = volume
    extraction = {**extraction, "split": split_info, "inputs": input_facts(ds, found)}
    ctx = RunContext(spec=spec, user_spec=user_spec, dataset=ds, splits=splits, device=device, encoder=enc,
                     store=store, preprocess=store.preprocess, layers=feature_layers(store, spec),
                     extraction=extraction, verbose=verbose, results_root=results_root, notes=notes)
    family.prepare(ctx)
    env = collect_environment(str(device))
    results: list[tuple[HeadResult, dict[str, Any]]] = []
    for name, cls in heads:
        t0 = time.perf_counter()
        res = family.evaluate(cls, name, ctx)
        add_case_metrics(ctx, res)
        res.timings.setdefault("head_fit_s", round(time.perf_counter() - t0, 3))
        results.append((res, build_record(ctx, family, res, env, t_total, head_cls=cls)))
    # every head is fitted and scored before anything is written: a failing head leaves no partial task
    rows = []
    for res, record in results:
        mine = res.run_id  # outputs/<run_id>/ is written under the id the row is stored with
        family.write_outputs(res, ctx)
        run_id = db.add_run({**record, "run_id": mine}, res.metrics, predictions=res.predictions, split="test",
                            unique=not rerun)
        if run_id != mine:  # an identical run stored this config first (one row per config hash)
            shutil.rmtree(results_root / "outputs" / mine, ignore_errors=True)  # they belong to no stored row
            print(f"medprobe: head {res.head}: already stored with this config (run {str(run_id)[:10]}, by an "
                  "identical run that finished first): not stored again", file=sys.stderr, flush=True)
        res.run_id = str(run_id)
        rows.append({**res.extra, "run_id": res.run_id, "head": res.head, "metrics": res.metrics, "record": record,
                     "result": res})
    if verbose:
        print_table(ctx, family, [r for r, _ in results], db.path)
    return rows + stored


def add_case_metrics(ctx: RunContext, res: HeadResult) -> None:
    """Metrics a dataset defines per case (``case_metrics(pred, item) -> {name: value}``, e.g. EndoVis binary and
    challenge IoU, EDD2020 multi-label Dice) on the head's predicted masks, aggregated like the family's own
    (mean over cases, bootstrap CI) and added to the row's metrics and per-case values."""
    base = ctx.dataset
    while getattr(base, "case_metrics", None) is None and getattr(base, "base", None) is not None:
        base = base.base  # a Subset (e.g. skip_invalid) of a dataset that defines them
    fn = getattr(base, "case_metrics", None)
    preds = ctx.state.get(f"masks_{res.run_id}")
    if fn is None or preds is None:
        return
    from medprobe.metrics.segmentation import aggregate_cases

    per_case = [fn(np.asarray(p), ctx.dataset.load(i)) for i, p in zip(ctx.test, preds)]
    m = ctx.spec.metrics
    agg = aggregate_cases(per_case, n_resamples=m.bootstrap, seed=ctx.spec.seed, alpha=m.alpha)
    res.metrics.update(agg)
    pr = res.predictions
    if pr is not None and "metric_names" in pr and "values" in pr:
        names = list(agg)
        pr["metric_names"] = np.asarray([*pr["metric_names"].tolist(), *names])
        extra = np.asarray([[float(c.get(k, np.nan)) for k in names] for c in per_case], np.float64)
        pr["values"] = np.concatenate([pr["values"].reshape(len(per_case), -1), extra], axis=1)
    res.notes["dataset_metrics"] = {"from": type(base).__name__, "names": sorted(agg)}


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medprobe-write-check-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"results folder is not writable ({e.strerror})", folder) from None


def head_precision(head_cls: Any, res: HeadResult) -> str:
    """The head's arithmetic: a declared ``precision``, a decoder trained under bf16 autocast, else fp32."""
    train = res.head_params.get("train") if isinstance(res.head_params, dict) else None
    if isinstance(train, dict) and train.get("amp") == "bf16":
        return "bf16 autocast (decoder training)"
    return str(getattr(head_cls, "precision", None) or "fp32")  # heads not in plain float32 declare it


def head_tokens(head_cls: Any, spec: TaskSpec) -> list[str]:
    """The tokens this head consumed: patch grids for dense heads, else ``features.token`` (per block)."""
    from medprobe.pipeline.family import _TOKENS

    kind = getattr(head_cls, "input_kind", "vector")
    return ["patch"] if kind == "dense" else list(_TOKENS[spec.features.token])


def preprocessing_done(ctx: RunContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved preprocessing with what was actually done (channel mode, anti-aliasing), and the effects:
    per option what was asked, what happened and why."""
    from medprobe.preprocess.config import channel_handling, geometry_effects

    pre = ctx.preprocess.to_dict()
    facts = ctx.extraction.get("inputs") or {}
    chans = sorted(int(c) for c in (facts.get("channels") or {}))
    done = [channel_handling(ctx.preprocess.channels, c) for c in chans]
    modes = sorted({m for m, _ in done})
    effects: dict[str, Any] = {"channels": {"requested": ctx.preprocess.channels,
                                            "done": modes[0] if len(modes) == 1 else modes,
                                            "what": "; ".join(w for _, w in done)}}
    if ctx.dataset.spatial_dims == 2:
        effects.update(geometry_effects(ctx.preprocess, facts.get("min_shape"), facts.get("max_shape")))
    pre["channels"] = effects["channels"]["done"]
    if "antialias" in effects:
        pre["antialias"] = effects["antialias"]["effective"]
    return pre, effects


def _check_volume_encoder(spec: TaskSpec, family: TaskFamily) -> None:
    """A 3D volume encoder gives one feature vector (and a 3D grid) per volume: families that need 2D patch
    grids per slice (segmentation decoders, instances, registration) cannot use it."""
    from medprobe.encoders import get_family, get_spec

    enc_family = get_spec(spec.encoder).family
    if get_family(enc_family).volumetric and "patch" in family.tokens:
        raise ConfigError(f"encoder {spec.encoder} is a 3D volume encoder ({enc_family}): the {family.name} "
                          "family needs 2D patch grids; use it for classification or regression tasks", spec.name)


def feature_contract(spec: Any) -> dict[str, Any]:
    """What the features of this encoder are (docs/encoders.md): its family's contract and the spec's geometry."""
    from medprobe.encoders import get_family

    fam = get_family(spec.family)
    return {"family": spec.family, "cls": fam.cls_feature, "patch": fam.patch_feature, "taps": fam.taps,
            "patch_size": spec.patch_size, "native_resolution": spec.native_resolution,
            "mean": list(spec.mean), "std": list(spec.std), "extra": fam.extra}


def build_record(ctx: RunContext, family: TaskFamily, res: HeadResult, env: dict[str, Any],
                 t_total: float, head_cls: Any = None) -> dict[str, Any]:
    """The one result record: what ran, on what, with which resolved settings (each the value in effect, with
    why when it differs from what was asked), and how long it took."""
    spec, ds, enc = ctx.spec, ctx.dataset, ctx.encoder
    ids = ds.ids()
    pre, effects = preprocessing_done(ctx)
    resolution = list(ctx.preprocess.resolution)
    if "resolution" in res.extra:  # the family knows the input its head used (registration: input_size, or none)
        resolution = res.extra["resolution"]
        if resolution is not None:
            pre["resolution"] = resolution
    split_done = ctx.extraction.get("split") or {}
    return {
        "run_id": res.run_id, "task": spec.name, "task_type": ds.task.type,
        "config": {**spec.to_dict(), "head": res.head, "family": family.name},
        "config_hash": ctx.user_spec.config_hash(res.head),
        "encoder": enc.spec.name, "weights": enc.weights_id, "pretrained": enc.pretrained,
        "encoder_family": enc.spec.family, "feature_contract": feature_contract(enc.spec),
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
        "split": {"spec": spec.to_dict()["split"], **split_done, "n_train": len(ctx.train), "n_val": len(ctx.val),
                  "n_test": len(ctx.test), "budget": spec.budget,
                  "test_ids_hash": hash_obj([ids[i] for i in ctx.test], n=12)},
        "seed": spec.seed, "head": res.head, "head_params": res.head_params,
        "layer": list(ctx.layers), "resolution": resolution,
        "feature_layers": {"extracted": list(ctx.store.layers), "used": list(ctx.layers)},
        "tokens": head_tokens(head_cls, spec),
        "precision": {**ctx.extraction.get("precision", {}), "head": head_precision(head_cls, res)},
        "preprocessing": pre, "preprocess_effects": effects,
        "units": res.extra.get("units", {}), "spacing": res.extra.get("spacing"),
        "report": {"rank_by": list(family.rank_by), "headline": list(family.headline),
                   "paired_scores": family.paired_scores,
                   "panels": list(family.report_panels), "probe": getattr(head_cls, "probe", "") or res.head,
                   "rescore": family.rescore},
        "versions": env.get("versions", env),
        "device": str(ctx.device),
        "timings": {**ctx.extraction["timing"], **res.timings,
                    "total_s": round(time.perf_counter() - t_total, 3)},
        "compute": {**ctx.extraction["compute"],  # the features' device is the one that extracted them
                    "devices": {"features": ctx.extraction["compute"].get("device"), "heads": str(ctx.device)}},
        "notes": {**spec.notes, "family": family.name, "untrained": not enc.pretrained,
                  "cache_key": ctx.extraction["cache_key"], "features": spec.to_dict()["features"],
                  **ctx.notes, **res.notes},
    }


# ---------------------------------------------------------------------------------- the leakage audit
def audit_splits(ds: Any, splits: dict[str, list[int]], spec: TaskSpec) -> Any:
    """Pixel-level audit (content hash + perceptual hash) of the task's cases against its splits, labels compared
    (label conflicts); ``audit.mode: error`` stops the run here, before extraction, on a test case alike a
    train/val case, ``strict`` also on any label conflict."""
    from medprobe.audit import audit, case_labels

    a = spec.audit
    if a.mode == "off":
        return None
    cache = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
    try:
        found = audit(ds, splits, near_threshold=a.near_threshold, near_correlation=a.near_correlation,
                      feature_threshold=a.feature_threshold, cache_dir=cache, labels=case_labels(ds))
    except DataError as e:  # e.g. slides: no whole-image fingerprint
        log.info("audit skipped: %s", e)
        return None
    _stop_on_leak(found, spec)
    return found


def _stop_on_leak(found: Any, spec: TaskSpec) -> None:
    dup = found.test_duplicates()
    conf = found.conflicts()
    if spec.audit.mode == "strict" and conf:
        ex = next(r for r in found.rows(None) if r.get("conflict"))
        raise DataError(f"leakage audit: {len(conf)} label conflict(s): alike images labelled differently (e.g. "
                        f"{ex['a']} [{ex['split_a']}, {ex['label_a']}] ~ {ex['b']} [{ex['split_b']}, "
                        f"{ex['label_b']}], {'+'.join(ex['kinds'])}); fix the labels, or set audit.mode: drop or "
                        "warn", spec.name)
    if spec.audit.mode in ("error", "strict") and dup:
        ex = next(r for r in found.rows(None) if r["split_a"] == "test")
        raise DataError(f"leakage audit: {len(dup)} test case(s) alike a train/val case (e.g. {ex['a']} ~ "
                        f"{ex['b']}, {'+'.join(ex['kinds'])}); set audit.mode: drop or warn", spec.name)


def settle_audit(found: Any, ds: Any, splits: dict[str, list[int]], spec: TaskSpec, store: Any,
                 enc_pretrained: bool) -> dict[str, Any]:
    """Adds the cached-feature detector (blocked cosine search), applies the mode (error / strict / drop),
    prints one warning line, and returns the findings for the record's notes. ``drop`` edits ``splits['test']``:
    test cases alike a train/val case and test cases in a label conflict leave it."""
    from medprobe.audit import audit

    a = spec.audit
    if found is None:
        return {"mode": a.mode, "ran": False}
    token = next((t for t in ("cls", "mean") if t in getattr(store, "tokens", ())), None)
    skipped = (None if not a.features else "random weights: their features say nothing about image content"
               if not enc_pretrained else "no cls/mean vectors cached (patch grids only)" if token is None else None)
    if a.features and skipped is None and token is not None:
        X = store.pooled(token, store.layers[-1])
        found = audit(ds, splits, near_threshold=a.near_threshold, near_correlation=a.near_correlation,
                      feature_threshold=a.feature_threshold, features=X.reshape(len(X), -1),
                      feature_label=f"{token} token, block {store.layers[-1]}", fingerprints=found.fingerprints,
                      labels=found.labels)
        _stop_on_leak(found, spec)
    notes = {"mode": a.mode, "ran": True, **found.to_notes(limit=20)}
    if skipped:
        notes["features_skipped"] = skipped
    dup = set(found.to_drop())
    if a.mode == "drop" and dup:
        ids = ds.ids()
        splits["test"] = [i for i in splits["test"] if i not in dup]
        if not splits["test"]:
            raise DataError("leakage audit: every test case is alike a train/val case or in a label conflict; "
                            "nothing left to test", spec.name)
        notes["dropped_from_test"] = sorted(ids[i] for i in dup)
    if found.counts()["any"]["across"] or found.conflicts():
        verb = "dropped from test" if a.mode == "drop" and dup else f"kept (audit.mode: {a.mode})"
        print(f"medprobe: warning: {found.summary()}; {verb}", file=sys.stderr, flush=True)
    return notes


def input_facts(ds: Any, found: Any) -> dict[str, Any]:
    """Input sizes and channel counts: from the audit's fingerprints (every case), else the first case."""
    from medprobe.audit import input_facts as facts

    if found is not None and found.fingerprints is not None:
        return facts(found.fingerprints)
    item = ds.load(0)
    if not isinstance(item.image, np.ndarray):
        return {}
    shape = list(item.spatial_shape)
    return {"min_shape": shape, "max_shape": shape, "channels": {str(item.n_channels): 1}, "from": "first case"}
