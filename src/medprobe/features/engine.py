"""The extraction engine: dataset + encoder -> cached features, whatever one cache row is.

The engine does not know the units: it asks the unit registry (:mod:`medprobe.features.units`) which unit
serves a dataset and an encoder (or the one a task family asks for) and hands the call to it with that unit's
options -- ``image`` (2D images, volume slices: :mod:`~medprobe.features.image`), ``volume`` (whole volumes
through a 3D encoder: :mod:`~medprobe.features.volume`), ``tile`` (whole slides as tile bags:
:mod:`~medprobe.features.slides`) or ``pair`` (registration pairs, no encoder rows:
:mod:`~medprobe.features.pairs`). The machinery they share lives in :mod:`medprobe.features.common`; its public
names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from medprobe.data.base import Dataset
from medprobe.errors import MedprobeError
from medprobe.features.cache import FeatureStore
from medprobe.features.common import (
    DTYPE_NAMES,
    Runner,
    amp_dtype,
    available_memory,
    batch_memory,
    batch_plan,
    check_memory,
    device_of,
    effective_amp,
    entry_spec,
    plan_batch,
    precision_facts,
    ranks,
    resolve_preprocess,
)
from medprobe.features.config import ExtractConfig
from medprobe.features.units import ExtractionUnit, ResolvedEntry, unit_for
from medprobe.preprocess import PreprocessConfig


def extraction_unit(dataset: Dataset, encoder: Any, unit: str | None = None) -> ExtractionUnit:
    """The unit that serves ``dataset`` / ``encoder`` (``unit``: the one a task family asks for)."""
    return unit_for(dataset, encoder, unit)


def resolve_entry(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
                  config: ExtractConfig | None = None, *, unit: str | None = None,
                  unit_options: Mapping[str, Any] | None = None,
                  device: str | torch.device = "cpu") -> ResolvedEntry:
    """What an extraction would use and write, without running anything: the resolved preprocessing, the
    options, the spec and the cache key of the entry (``encoder`` may be an ``EncoderInfo``)."""
    u = unit_for(dataset, encoder, unit)
    return u.resolve(dataset, encoder, preprocess or PreprocessConfig(), config or ExtractConfig(),
                     options=u.parse_options(unit_options, getattr(dataset, "name", None)), device=device)


def lookup(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
           config: ExtractConfig | None = None, *, unit: str | None = None,
           unit_options: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None,
           device: str | torch.device = "cpu") -> FeatureStore | None:
    """The complete cache entry for these inputs, or ``None``. ``encoder`` may be an
    :class:`~medprobe.encoders.EncoderInfo`, so a cached run never builds the network. ``unit`` /
    ``unit_options``: as for :func:`extract`."""
    u = unit_for(dataset, encoder, unit)
    return u.lookup(dataset, encoder, preprocess, config,
                    options=u.parse_options(unit_options, getattr(dataset, "name", None)), cache_dir=cache_dir,
                    device=device)


def extract(dataset: Dataset, encoder: Any, preprocess: PreprocessConfig | None = None,
            config: ExtractConfig | None = None, *, unit: str | None = None,
            unit_options: Mapping[str, Any] | None = None, cache_dir: str | Path | None = None,
            device: str | torch.device | None = None, rank: int | None = None, world: int | None = None,
            shard: tuple[int, int] | None = None) -> FeatureStore | None:
    """Extract (or reuse) features of every item of ``dataset``; returns the :class:`FeatureStore` with the
    resolved configs it was made with (``store.preprocess``, ``store.extract_config``, ``store.layers``).

    ``unit``: the extraction unit a task family asks for (default: the unit claiming the dataset / encoder, else
    ``image``); ``unit_options``: that unit's options (the tile unit: ``tiling``, ``tissue``), any other key is
    refused in one line. ``rank``/``world`` default to torch.distributed's when it is initialised. With
    ``shard=(i, n)`` only shards ``k % n == i`` are computed; the return value is ``None`` until all shards exist.
    """
    u = unit_for(dataset, encoder, unit)
    options = u.parse_options(unit_options, getattr(dataset, "name", None))
    cfg = config or ExtractConfig()
    if not u.runs_encoder:
        return u.extract(dataset, encoder, preprocess, replace(cfg, batch_size=1) if cfg.batch_size == "auto"
                         else cfg, options=options, cache_dir=cache_dir, device=device, rank=rank, world=world,
                         shard=shard)
    # the batch from the encoder family's memory model: 'auto' sized to fit, a number refused when it cannot
    # (one line, before any work); the unit sees a number, its Runner follows (measures, halves) the plan
    dev = device_of(encoder, device)
    r = u.resolve(dataset, encoder, preprocess or PreprocessConfig(), cfg, options=options, device=dev)
    try:
        plan = plan_batch(encoder, u.item_shape(r), cfg.batch_size, dev)
    except MedprobeError:  # features already made need no memory: reuse them, else the one line stands
        store = u.lookup(dataset, encoder, preprocess, cfg, options=options, cache_dir=cache_dir, device=dev)
        if store is not None:
            return store
        raise
    with batch_plan(plan):
        return u.extract(dataset, encoder, preprocess, replace(cfg, batch_size=plan.batch), options=options,
                         cache_dir=cache_dir, device=device, rank=rank, world=world, shard=shard)


__all__ = ["DTYPE_NAMES", "ExtractConfig", "Runner", "amp_dtype", "available_memory", "batch_memory",
           "check_memory", "effective_amp", "entry_spec", "extract", "extraction_unit", "lookup",
           "precision_facts", "ranks", "resolve_entry", "resolve_preprocess"]
