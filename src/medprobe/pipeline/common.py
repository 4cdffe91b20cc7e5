"""Pieces the run path shares across task families: splits, label budgets, device, encoder + features."""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from medprobe.data import Dataset
from medprobe.data.splits import kfold_by_patient, split_by_patient, validate_splits
from medprobe.encoders import Encoder, create_encoder, encoder_info
from medprobe.encoders.flops import spec_gflops
from medprobe.errors import ConfigError, DataError
from medprobe.features import ExtractConfig, FeatureStore, extract, lookup
from medprobe.pipeline.task import TaskSpec
from medprobe.utils import atomic_write_json


def make_splits(ds: Dataset, spec: TaskSpec, labels: list[Any] | None = None,
                info: dict[str, Any] | None = None) -> dict[str, list[int]]:
    """Train/val/test indices from the task's split, checked for patient leakage and emptiness. ``labels``
    stratify generated splits (single-label classification). ``info`` (when given) receives what was done:
    ``kind`` (``official``: the dataset's own; ``generated``: seeded fractions; ``folds``), ``requested``,
    and for generated splits ``seed``, ``fractions``, ``stratified``, ``level`` and ``why``."""
    split = spec.split
    patients = ds.patients()
    seed = spec.split_seed
    done: dict[str, Any] = {"requested": split.kind}
    strat = labels is not None
    if split.kind == "official":
        s = ds.splits()
        if s is None:
            s = split_by_patient(patients, (0.7, 0.1, 0.2), seed=seed, stratify=labels)
            done.update(kind="generated", seed=seed, fractions=[0.7, 0.1, 0.2], stratified=strat, level="patient",
                        why="the dataset has no official split: a seeded, patient-level 70/10/20 split was made")
        else:
            done["kind"] = "official"
    elif split.kind == "folds":
        assert split.folds is not None
        folds = kfold_by_patient(patients, k=split.folds, seed=seed, val_fraction=split.val_fraction,
                                 stratify=labels)
        if not 0 <= split.fold < len(folds):
            raise ConfigError(f"split.fold {split.fold} out of range for {len(folds)} folds", spec.name)
        s = folds[split.fold]
        done.update(kind="folds", seed=seed, folds=split.folds, fold=split.fold, val_fraction=split.val_fraction,
                    stratified=strat, level="patient")
    else:
        assert split.fractions is not None
        s = split_by_patient(patients, tuple(split.fractions), seed=seed, stratify=labels)
        done.update(kind="generated", seed=seed, fractions=list(split.fractions), stratified=strat, level="patient")
    s = {k: list(v) for k, v in s.items()}
    if "val" not in s:
        s["val"] = []
    source = getattr(ds, "source", None) if split.kind == "official" else None
    for k in ("train", "test"):  # a split column without any 'test' rows gives no 'test' key at all
        if not s.get(k):
            raise DataError(f"split {k!r} is empty (no case is assigned to it)", source=source or spec.name)
    # validation asked for (a non-zero share) must hold cases; none asked for (fractions [train, test] or
    # [a, 0, b], val_fraction 0, an official split without val) means heads select on an internal hold-out of
    # the training cases, which each head records
    if done.get("kind") == "generated":
        fr = list(done["fractions"])
        asked = len(fr) == 3 and fr[1] > 0
    else:
        asked = split.kind == "folds" and split.val_fraction > 0
    if asked and not s["val"]:
        raise DataError("split 'val' is empty although validation cases were asked for (too few patients for the "
                        "share?); use a larger share or no validation split", source=source or spec.name)
    validate_splits({k: v for k, v in s.items() if v or k != "val"}, patients, source=source or spec.name)
    if info is not None:
        info.update(done)
    return s


def apply_budget(train: list[int], patients: list[str], labels: list[Any] | None, budget: Any,
                 seed: int) -> list[int]:
    """Nested label budget: patients are shuffled once (seeded); a budget keeps a prefix of that order, so a
    smaller budget is always a subset of a larger one. ``budget``: fraction in (0, 1] or ``"<k>/class"``."""
    if budget in (None, 1, 1.0, "all"):
        return list(train)
    if isinstance(budget, str) and budget.startswith("kshot:"):  # the family draws k per class (pipeline.fewshot)
        if labels is None:
            raise ConfigError(f"budget {budget}: a k-shot budget needs single-label classes (classification)")
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
                          seed=_weights_seed(spec), **spec.encoder_options)


def encoder_identity(spec: TaskSpec) -> Any:
    """The encoder's identity (:class:`EncoderInfo`) without building it, or None when only loading tells."""
    return encoder_info(spec.encoder, spec.weights, seed=_weights_seed(spec), verify=spec.verify_weights,
                        **spec.encoder_options)


def pick_device(name: str | None) -> torch.device:
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but torch sees no CUDA device")
    return dev


def extract_config(spec: TaskSpec, tokens: tuple[str, ...]) -> ExtractConfig:
    """The engine's options from the task's (family-resolved) features section."""
    f = spec.features
    if f.layers.symbol == "auto":
        raise ConfigError("features.layers is still 'auto': the task family resolves it first", spec.name)
    return ExtractConfig.from_features(f, tokens)


def features_for(ds: Dataset, spec: TaskSpec, device: torch.device, tokens: tuple[str, ...], info: Any = None,
                 unit: str | None = None, unit_options: Mapping[str, Any] | None = None
                 ) -> tuple[Any, FeatureStore, dict[str, Any]]:
    """Cached features when they exist (the encoder is then never built), else build + extract.

    ``unit`` / ``unit_options``: the extraction unit the family asks for and its options (a unit that runs no
    encoder -- registration pairs -- never has the network built here either).
    Returns (encoder or :class:`EncoderInfo`, store, {timing, compute, cache_key, precision});
    ``store.preprocess`` is the resolved preprocessing the features were made with; ``precision`` is the
    encoder's effective autocast (the one the cache key holds) and why."""
    from medprobe.features.engine import extraction_unit, precision_facts

    cfg = extract_config(spec, tokens)
    t0 = time.perf_counter()
    info = info if info is not None else encoder_identity(spec)
    store = lookup(ds, info, spec.preprocess, cfg, unit=unit, unit_options=unit_options, cache_dir=spec.cache_dir,
                   device=device) if info is not None else None
    if store is not None:
        out = _describe(store, info, device, time.perf_counter() - t0)
        return info, store, {**out, "precision": precision_facts(cfg.amp, cfg.storage, device, info)}
    runs_encoder = info is None or extraction_unit(ds, info, unit).runs_encoder
    enc = info if isinstance(info, Encoder) or not runs_encoder else build_encoder(spec, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    store = extract(ds, enc, spec.preprocess, cfg, unit=unit, unit_options=unit_options, cache_dir=spec.cache_dir,
                    device=device)
    assert store is not None
    out = _describe(store, enc, device, time.perf_counter() - t0)
    return enc, store, {**out, "precision": precision_facts(cfg.amp, cfg.storage, device, enc)}


def _describe(store: FeatureStore, enc: Any, device: torch.device, dt: float) -> dict[str, Any]:
    """Timing + compute cost; measured once when the entry is made and kept beside it (compute.json)."""
    side = store.path / "compute.json"
    if store.reused and side.is_file():
        compute = json.loads(side.read_text(encoding="utf-8"))
    else:
        res = list(store.preprocess.resolution)
        n_rows = int(store.offsets[-1])
        compute = {"resolution": res, "gflops": None, "device": str(device)}
        try:
            # costed to the deepest tapped block: extraction stops there
            g = spec_gflops(enc.spec.name, tuple(res), store.layers)  # type: ignore[arg-type]
            compute["gflops"] = float(f"{float(g):.4g}")  # type: ignore[arg-type]  # 4 significant digits
        except Exception:  # FLOP counting is best effort for exotic backbones
            compute["gflops"] = None
        secs = store.manifest.get("seconds_last_run", dt)
        compute["images_per_s"] = round(n_rows / secs, 2) if secs else None
        compute["extraction_seconds"] = round(secs, 3)
        cfg = store.manifest.get("extract_config") or {}
        compute["batch_size"] = store.manifest.get("batch_size", cfg.get("batch_size"))
        if "batch" in store.manifest:
            compute["batch"] = store.manifest["batch"]
        if device.type == "cuda":
            compute["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        else:
            compute["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        atomic_write_json(side, compute)
    timing = {"extraction_s": round(dt, 3), "cached": bool(store.reused)}
    return {"timing": timing, "compute": compute, "cache_key": store.path.name}


def _weights_seed(spec: TaskSpec) -> int:
    return spec.seed if spec.weights is None else 0
