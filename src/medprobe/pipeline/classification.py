"""Classification protocol (the study's 2D and 3D classification): frozen features -> head -> metrics + CIs."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.features import FeatureStore
from medprobe.heads import create_head
from medprobe.metrics import bootstrap_ci, classification_metrics
from medprobe.pipeline.common import (
    apply_budget,
    build_dataset,
    feature_layers,
    features_for,
    make_splits,
    pick_device,
    run_header,
)
from medprobe.pipeline.task import TaskSpec
from medprobe.results import ResultsDB, collect_environment

log = logging.getLogger("medprobe.pipeline")
HEADLINE = ("auc", "acc", "balanced_acc", "f1_macro")


def label_matrix(labels: list[Any], task: str) -> np.ndarray:
    if task == "multilabel":
        return np.stack([np.asarray(v, dtype=np.int64).ravel() for v in labels])
    return np.asarray([int(np.asarray(v).ravel()[0]) for v in labels], dtype=np.int64)


def feature_matrix(store: FeatureStore, spec: TaskSpec) -> np.ndarray:
    """One vector per case: chosen token(s) x chosen layer(s), slices pooled per volume."""
    token = spec.features.get("token", "cls")
    toks = {"cls": ["cls"], "mean": ["mean"], "cls+mean": ["cls", "mean"]}.get(token)
    if toks is None:
        raise ConfigError(f"features.token must be cls, mean or cls+mean, got {token!r}", spec.name)
    pooling = spec.features.get("pooling", "mean")
    parts = [store.pooled(t, layer, pooling) for layer in feature_layers(store, spec) for t in toks]
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def feature_bags(store: FeatureStore, spec: TaskSpec) -> list[np.ndarray]:
    token = spec.features.get("token", "cls")
    layers = feature_layers(store, spec)
    toks = ["cls", "mean"] if token == "cls+mean" else [token]
    per = [store.bags(t, layer) for layer in layers for t in toks]
    return [np.concatenate([p[i] for p in per], axis=1) for i in range(store.n_items)]


def run_classification(spec: TaskSpec, db: ResultsDB | None = None, verbose: bool = True) -> list[dict[str, Any]]:
    """Run every head of a classification task; each head becomes one results row. Returns the rows."""
    t_total = time.perf_counter()
    ds = build_dataset(spec)
    task = ds.task.type
    if task not in ("binary", "multiclass", "multilabel", "ordinal"):
        raise ConfigError(f"dataset {ds.name} is a {task} task, not classification", spec.name)
    bad = [h for h in spec.heads if h not in ("logreg", "linear", "knn", "abmil")]
    if bad:
        raise ConfigError(f"unknown classification head(s) {bad}; use logreg, linear, knn, abmil", spec.name)
    if "abmil" in spec.heads and ds.spatial_dims != 3:
        raise ConfigError("head 'abmil' pools slices of volumes (or tiles of slides); this dataset is 2D", spec.name)
    splits = make_splits(ds, spec)
    labels = ds.labels()
    y = label_matrix(labels, task)
    n_classes = ds.task.n_classes or (y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    if task != "multilabel" and (y.min() < 0 or y.max() >= max(n_classes, 2)):
        raise ConfigError(f"labels outside 0..{n_classes - 1} for a {task} task", ds.name)
    train = apply_budget(splits["train"], ds.patients(), labels if task != "multilabel" else None, spec.budget,
                         spec.seed)
    val, test = splits.get("val", []), splits["test"]

    device = pick_device(spec.device)
    enc, store, info = features_for(ds, spec, device, tokens=("cls", "mean"))
    if info["timing"]["cached"]:
        log.info("features reused from cache %s: extraction skipped", info["cache_key"])
    X = feature_matrix(store, spec)
    bags = feature_bags(store, spec) if "abmil" in spec.heads else None
    ids = ds.ids()
    db = db or ResultsDB()
    env = collect_environment(str(device))
    n_boot = int(spec.metrics.get("bootstrap", 1000))
    alpha = float(spec.metrics.get("alpha", 0.05))
    rows = []
    for head_name in spec.heads:
        hp = dict(spec.head_params.get(head_name, {}))
        head = create_head(head_name, task=task, n_classes=n_classes, seed=spec.seed, **hp)
        t0 = time.perf_counter()
        if head_name == "abmil":
            assert bags is not None
            head.fit([bags[i] for i in train], y[train], [bags[i] for i in val] if val else None,
                     y[val] if val else None)
            proba = head.predict_proba([bags[i] for i in test])
        else:
            head.fit(X[train], y[train], X[val] if val else None, y[val] if val else None)
            if head_name == "knn":  # the protocol's k = 10/20/100/200 from one search; headline k scored below
                by_k = head.predict_proba_ks(X[test])
                proba = by_k[head.k_]
            else:
                proba = head.predict_proba(X[test])
        fit_s = time.perf_counter() - t0
        notes_k = {"knn_by_k": {str(k): _point_metrics(y[test], p, task, ds.task.classes)
                                for k, p in by_k.items()}} if head_name == "knn" else {}
        ci = bootstrap_ci(y[test], proba, task, n_resamples=n_boot, seed=spec.seed, alpha=alpha,
                          classes=list(ds.task.classes) or None)
        record = {
            "task": spec.name, "task_type": task, "config": {**spec.to_dict(), "head": head_name},
            "config_hash": spec.config_hash(head_name), "encoder": enc.spec.name, "weights": enc.weights_id,
            "pretrained": enc.pretrained, "dataset": ds.name, "dataset_fingerprint": ds.fingerprint(),
            "split": {"spec": spec.split, "n_train": len(train), "n_val": len(val), "n_test": len(test),
                      "budget": spec.budget, "test_ids_hash": _ids_hash([ids[i] for i in test])},
            "seed": spec.seed, "head": head_name, "head_params": head.get_params(),
            "layer": feature_layers(store, spec), "resolution": store.spec["preprocess"]["resolution"],
            "preprocessing": store.spec["preprocess"], "versions": env.get("versions", env),
            "device": str(device),
            "timings": {**info["timing"], "head_fit_s": round(fit_s, 3),
                        "total_s": round(time.perf_counter() - t_total, 3)},
            "compute": info["compute"],
            "notes": {**spec.notes, "untrained": not enc.pretrained, "cache_key": info["cache_key"],
                      "features": spec.features, **notes_k},
        }
        preds = {"ids": np.asarray([ids[i] for i in test]), "y_true": y[test], "y_score": proba}
        rows.append({"head": head_name, "metrics": ci, "record": record, "predictions": preds})
    # every head is fitted and scored before anything is written: a failing head leaves no partial task
    for r in rows:
        r["run_id"] = db.add_run(r["record"], r["metrics"], predictions=r.pop("predictions"), split="test")
    if verbose:
        print_table(spec, enc, rows, db)
    return rows


def _point_metrics(y: np.ndarray, proba: np.ndarray, task: str, classes: Any) -> dict[str, float]:
    """Class-averaged point metrics (no CI) of one prediction set, for secondary settings such as other k."""
    m = classification_metrics(y, proba, task, classes=list(classes) or None)
    return {key: (round(v, 6) if np.isfinite(v) else None) for key, v in m.items() if "/" not in key}


def _ids_hash(ids: list[str]) -> str:
    from medprobe.utils import hash_obj

    return hash_obj(ids, n=12)


def print_table(spec: TaskSpec, enc: Any, rows: list[dict[str, Any]], db: ResultsDB) -> None:
    if not rows:
        return
    r0 = rows[0]["record"]
    print(run_header(spec, enc, r0, r0["task_type"]))
    cols = [m for m in HEADLINE if m in rows[0]["metrics"]]
    print(f"  {'head':<8} " + " ".join(f"{m:>22}" for m in cols) + "   run id")
    for r in rows:
        cells = []
        for m in cols:
            v, lo, hi = r["metrics"][m]
            cells.append(f"{v:6.3f} [{lo:5.3f}, {hi:5.3f}]".rjust(22))
        print(f"  {r['head']:<8} " + " ".join(cells) + f"   {r['run_id'][:10]}")
    print(f"  (95% bootstrap CIs over test cases; results in {db.path})")
