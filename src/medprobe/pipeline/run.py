"""The one run path: any task family, any head it can feed.

dataset -> family (from ``kind`` or the dataset's task type) -> family defaults -> splits + label budget ->
heads looked up by what they take (checked with their parameters before any work) -> cached features ->
per head: the family fits, predicts and scores -> one record per head, built here -> every row written once
all heads succeeded -> one printed table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from medprobe.data import create_dataset
from medprobe.errors import ConfigError
from medprobe.pipeline.common import (
    apply_budget,
    encoder_identity,
    features_for,
    make_splits,
    pick_device,
)
from medprobe.pipeline.family import (
    HeadResult,
    RunContext,
    TaskFamily,
    family_for_task_type,
    feature_layers,
    get_family,
    print_table,
)
from medprobe.pipeline.task import TaskSpec, check_data_options
from medprobe.schema import unknown_key
from medprobe.utils import hash_obj

log = logging.getLogger("medprobe.pipeline")


def _family_data_options() -> set[str]:
    from medprobe.pipeline.family import _FAMILIES, _load_builtin

    _load_builtin()
    return {o for cls in _FAMILIES.values() for o in cls.data_options}


def load_dataset(spec: TaskSpec, source: str | None = None) -> tuple[Any, TaskFamily]:
    """The task's dataset (dataset options checked first) and the family that runs it."""
    fam_opts = _family_data_options()
    check_data_options(spec, source, extra=fam_opts)
    ds = create_dataset(spec.dataset, **{k: v for k, v in spec.data.items() if k not in fam_opts})
    family = get_family(spec.kind) if spec.kind else family_for_task_type(ds.task.type, spec.dataset)
    family.check_dataset(ds, spec)
    return ds, family


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


def run_task(spec: TaskSpec, db: Any = None, verbose: bool = True, source: str | None = None) -> list[dict[str, Any]]:
    """Run every head of a task (any family); each head becomes one results row. Returns the rows
    (``{run_id, head, metrics, record, ...}``)."""
    from medprobe.results import ResultsDB, collect_environment

    t_total = time.perf_counter()
    user_spec = spec
    ds, family = load_dataset(spec, source)
    ds, notes = family.prepare_dataset(ds, spec, verbose)
    heads = resolve_heads(spec, family, ds, source)
    db = db if db is not None else ResultsDB()
    _check_writable(Path(db.path).parent)
    device = pick_device(spec.device)
    info = encoder_identity(spec)
    if info is None:  # identity known only once loaded (hub ids): build now, extraction reuses it
        from medprobe.pipeline.common import build_encoder

        info = build_encoder(spec, device)
    spec = family.resolve(spec, ds, info)
    labels = family.budget_labels(ds)
    splits = make_splits(ds, spec, labels)
    splits["train"] = apply_budget(splits["train"], ds.patients(), labels, spec.budget, spec.seed)
    enc, store, extraction = features_for(ds, spec, device, family.tokens, info=info)
    if extraction["timing"]["cached"]:
        log.info("features reused from cache %s: extraction skipped", extraction["cache_key"])
    ctx = RunContext(spec=spec, user_spec=user_spec, dataset=ds, splits=splits, device=device, encoder=enc,
                     store=store, preprocess=store.preprocess, layers=feature_layers(store, spec),
                     extraction=extraction, verbose=verbose, results_root=Path(db.path).parent, notes=notes)
    family.prepare(ctx)
    env = collect_environment(str(device))
    results: list[tuple[HeadResult, dict[str, Any]]] = []
    for name, cls in heads:
        t0 = time.perf_counter()
        res = family.evaluate(cls, name, ctx)
        res.timings.setdefault("head_fit_s", round(time.perf_counter() - t0, 3))
        results.append((res, build_record(ctx, family, res, env, t_total)))
    # every head is fitted and scored before anything is written: a failing head leaves no partial task
    rows = []
    for res, record in results:
        family.write_outputs(res, ctx)
        run_id = db.add_run(record, res.metrics, predictions=res.predictions, split="test")
        res.run_id = str(run_id)
        rows.append({**res.extra, "run_id": res.run_id, "head": res.head, "metrics": res.metrics, "record": record,
                     "result": res})
    if verbose:
        print_table(ctx, family, [r for r, _ in results], db.path)
    return rows


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medprobe-write-check-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"results folder is not writable ({e.strerror})", folder) from None


def build_record(ctx: RunContext, family: TaskFamily, res: HeadResult, env: dict[str, Any],
                 t_total: float) -> dict[str, Any]:
    """The one result record: what ran, on what, with which resolved settings, and how long it took."""
    spec, ds, enc = ctx.spec, ctx.dataset, ctx.encoder
    ids = ds.ids()
    return {
        "run_id": res.run_id, "task": spec.name, "task_type": ds.task.type,
        "config": {**spec.to_dict(), "head": res.head, "family": family.name},
        "config_hash": ctx.user_spec.config_hash(res.head),
        "encoder": enc.spec.name, "weights": enc.weights_id, "pretrained": enc.pretrained,
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
        "split": {"spec": spec.to_dict()["split"], "n_train": len(ctx.train), "n_val": len(ctx.val),
                  "n_test": len(ctx.test), "budget": spec.budget,
                  "test_ids_hash": hash_obj([ids[i] for i in ctx.test], n=12)},
        "seed": spec.seed, "head": res.head, "head_params": res.head_params,
        "layer": list(ctx.layers), "resolution": list(ctx.preprocess.resolution),
        "preprocessing": ctx.preprocess.to_dict(), "versions": env.get("versions", env),
        "device": str(ctx.device),
        "timings": {**ctx.extraction["timing"], **res.timings,
                    "total_s": round(time.perf_counter() - t_total, 3)},
        "compute": ctx.extraction["compute"],
        "notes": {**spec.notes, "family": family.name, "untrained": not enc.pretrained,
                  "cache_key": ctx.extraction["cache_key"], "features": spec.to_dict()["features"],
                  **ctx.notes, **res.notes},
    }
