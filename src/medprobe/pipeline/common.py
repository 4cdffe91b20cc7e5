"""Pieces shared by the classification and segmentation pipelines: splits, budgets, encoder + features."""

from __future__ import annotations

import json
import math
import resource
import time
from typing import Any

import numpy as np
import torch

from medprobe.data import Dataset, create_dataset
from medprobe.data.splits import kfold_by_patient, split_by_patient, validate_splits
from medprobe.encoders import Encoder, create_encoder, encoder_info
from medprobe.encoders.flops import spec_gflops
from medprobe.errors import ConfigError, DataError
from medprobe.features import ExtractConfig, FeatureStore, extract, lookup
from medprobe.pipeline.task import TaskSpec
from medprobe.preprocess import PreprocessConfig
from medprobe.utils import atomic_write_json


def build_dataset(spec: TaskSpec) -> Dataset:
    return create_dataset(spec.dataset, **spec.data)


def make_splits(ds: Dataset, spec: TaskSpec) -> dict[str, list[int]]:
    """Train/val/test indices from the task's split option, checked for patient leakage and emptiness."""
    split = spec.split
    patients = ds.patients()
    labels = None
    if ds.task.type in ("binary", "multiclass", "ordinal"):
        labels = ds.labels()
    if split in (None, "official"):
        s = ds.splits()
        if s is None:
            s = split_by_patient(patients, (0.7, 0.1, 0.2), seed=spec.seed, stratify=labels)
    elif isinstance(split, dict) and "folds" in split:
        folds = kfold_by_patient(patients, k=int(split["folds"]), seed=int(split.get("seed", spec.seed)),
                                 val_fraction=float(split.get("val_fraction", 0.2)), stratify=labels)
        fold = int(split.get("fold", 0))
        if not 0 <= fold < len(folds):
            raise ConfigError(f"fold {fold} out of range for {len(folds)} folds", spec.name)
        s = folds[fold]
    elif isinstance(split, dict) and "fractions" in split:
        s = split_by_patient(patients, tuple(split["fractions"]), seed=int(split.get("seed", spec.seed)),
                             stratify=labels)
    else:
        raise ConfigError(f"split must be 'official', {{fractions: [...]}} or {{folds: k, fold: i}}, got {split!r}",
                          spec.name)
    s = {k: list(v) for k, v in s.items()}
    if "val" not in s:
        s["val"] = []
    source = getattr(ds, "source", None) if split in (None, "official") else None
    for k in ("train", "test"):  # a split column without any 'test' rows gives no 'test' key at all
        if not s.get(k):
            raise DataError(f"split {k!r} is empty (no case is assigned to it)", source=source or spec.name)
    validate_splits({k: v for k, v in s.items() if v or k != "val"}, patients, source=source or spec.name)
    return s


def apply_budget(train: list[int], patients: list[str], labels: list[Any] | None, budget: Any,
                 seed: int) -> list[int]:
    """Nested label budget: patients are shuffled once (seeded); a budget keeps a prefix of that order, so a
    smaller budget is always a subset of a larger one. ``budget``: fraction in (0, 1] or ``"<k>/class"``."""
    if budget in (None, 1, 1.0, "all"):
        return list(train)
    uniq: list[str] = sorted({patients[i] for i in train})
    rng = np.random.default_rng(seed)
    order = [uniq[j] for j in rng.permutation(len(uniq))]
    by_patient: dict[str, list[int]] = {}
    for i in train:
        by_patient.setdefault(patients[i], []).append(i)
    if isinstance(budget, str) and budget.endswith("/class"):
        k = int(budget.split("/")[0])
        if labels is None:
            raise ConfigError("a per-class budget needs single-label classes")
        taken: dict[Any, int] = {}
        keep: list[int] = []
        for p in order:
            lab = {labels[i] if np.ndim(labels[i]) == 0 else tuple(np.asarray(labels[i]).tolist())
                   for i in by_patient[p]}
            if any(taken.get(lb, 0) < k for lb in lab):
                keep += by_patient[p]
                for lb in lab:
                    taken[lb] = taken.get(lb, 0) + 1
        return sorted(keep)
    frac = float(budget)
    if not 0 < frac <= 1:
        raise ConfigError(f"budget must be a fraction in (0, 1] or '<k>/class', got {budget!r}")
    n = max(1, math.ceil(frac * len(order)))
    return sorted(i for p in order[:n] for i in by_patient[p])


def build_encoder(spec: TaskSpec, device: torch.device) -> Encoder:
    return create_encoder(spec.encoder, weights=spec.weights, device=device, verify=spec.verify_weights,
                          seed=_weights_seed(spec))


def pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _configs(spec: TaskSpec, tokens: tuple[str, ...]) -> tuple[PreprocessConfig, ExtractConfig]:
    f = spec.features
    pre = PreprocessConfig.from_dict({**spec.preprocess, **({"resolution": _res(spec.preprocess["resolution"])}
                                                          if spec.preprocess.get("resolution") else {})})
    cfg = ExtractConfig(layers=f.get("layers", "last"), tokens=tokens, batch_size=int(f.get("batch_size", 64)),
                        amp=f.get("amp", "auto"), storage=f.get("storage", "float32"),
                        workers=int(f.get("workers", 0)), progress=bool(f.get("progress", True)))
    return pre, cfg


def features_for(ds: Dataset, spec: TaskSpec, device: torch.device, tokens: tuple[str, ...]
                 ) -> tuple[Any, FeatureStore, dict[str, Any]]:
    """Cached features when they exist (the encoder is then never built), else build + extract.

    Returns (encoder or :class:`EncoderInfo`, store, {timing, compute, cache_key})."""
    pre, cfg = _configs(spec, tokens)
    t0 = time.perf_counter()
    info = encoder_info(spec.encoder, spec.weights, seed=_weights_seed(spec), verify=spec.verify_weights)
    store = lookup(ds, info, pre, cfg, cache_dir=spec.cache_dir, device=device) if info is not None else None
    if store is not None:
        return info, store, _describe(store, info, device, time.perf_counter() - t0)
    enc = build_encoder(spec, device)
    store, rec = extract_features(ds, enc, spec, device, tokens)
    return enc, store, rec


def extract_features(ds: Dataset, enc: Encoder, spec: TaskSpec, device: torch.device,
                     tokens: tuple[str, ...]) -> tuple[FeatureStore, dict[str, Any]]:
    """Extract (or reuse) features with a built encoder; returns the store and a timing/compute record."""
    pre, cfg = _configs(spec, tokens)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    store = extract(ds, enc, pre, cfg, cache_dir=spec.cache_dir, device=device)
    assert store is not None
    return store, _describe(store, enc, device, time.perf_counter() - t0)


def _describe(store: FeatureStore, enc: Any, device: torch.device, dt: float) -> dict[str, Any]:
    """Timing + compute cost; measured once when the entry is made and kept beside it (compute.json)."""
    side = store.path / "compute.json"
    if store.reused and side.is_file():
        compute = json.loads(side.read_text(encoding="utf-8"))
    else:
        res = store.spec["preprocess"]["resolution"]
        n_rows = int(store.offsets[-1])
        compute = {"resolution": res, "gflops": None, "device": str(device)}
        try:
            # costed to the deepest tapped block: extraction stops there
            g = spec_gflops(enc.spec.name, tuple(res), store.layers)  # type: ignore[arg-type]
            compute["gflops"] = round(float(g), 3)  # type: ignore[arg-type]
        except Exception:  # FLOP counting is best effort for exotic backbones
            compute["gflops"] = None
        secs = store.manifest.get("seconds_last_run", dt)
        compute["images_per_s"] = round(n_rows / secs, 2) if secs else None
        compute["extraction_seconds"] = round(secs, 3)
        if device.type == "cuda":
            compute["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        else:
            compute["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        atomic_write_json(side, compute)
    timing = {"extraction_s": round(dt, 3), "cached": bool(store.reused)}
    return {"timing": timing, "compute": compute, "cache_key": store.path.name}


def _weights_seed(spec: TaskSpec) -> int:
    return spec.seed if spec.weights in (None, "random") else 0


def _res(r: Any) -> tuple[int, int]:
    if isinstance(r, (int, float)):
        return (int(r), int(r))
    if isinstance(r, str):
        parts = [int(v) for v in r.lower().split("x")]
        return (parts[0], parts[-1])
    return (int(r[0]), int(r[1]))


def feature_layers(store: FeatureStore, spec: TaskSpec) -> list[int]:
    """Which extracted layers a head consumes: ``select`` (one index), ``use: concat`` (all) or the last."""
    f = spec.features
    if f.get("select") is not None:
        sel = int(f["select"])
        sel = sel + max(store.layers) + 1 if sel < 0 else sel
        if sel not in store.layers:
            raise ConfigError(f"layer {sel} was not extracted (have {store.layers})", spec.name)
        return [sel]
    return list(store.layers) if f.get("use", "last") == "concat" else [store.layers[-1]]


def run_header(spec: TaskSpec, enc: Any, r0: dict[str, Any], kind: str, unit: str = "px") -> str:
    """First line of a printed result table: task, data, encoder (untrained marked), input, layers, split."""
    label = "pretrained" if enc.pretrained else "UNTRAINED weights: a pipeline check, not a score"
    sp = r0["split"]
    return (f"\n{spec.name}: {r0['dataset']} ({kind}), {enc.spec.name} [{label}], "
            f"{r0['resolution'][0]}x{r0['resolution'][1]} {unit}, layer(s) {r0['layer']}, "
            f"train/val/test {sp['n_train']}/{sp['n_val']}/{sp['n_test']}"
            + ("  [features from cache]" if r0["timings"]["cached"] else ""))
