"""The ``pair`` extraction unit: registration pairs, whose heads consume no per-image cache rows.

A registration head takes the fixed and moving images themselves: MIND, intensity and affine heads compute their
features from the pixels, and DINO-Reg features (``convexadam`` with ``features: dino | dino+mind``) are dense
slice-wise encoder maps along the head's own ``axes`` at its ``input_size``, computed by the head from the
encoder. Nothing the engine would store per image is used, so this unit runs no encoder forward and writes no
feature array: its entry is a manifest only (ids, the resolved preprocessing, the layers), so a run records a
cache key, a resolved input size and its layers like any other. ``runs_encoder = False``: the run path never
builds the network for it (a head that needs the encoder gets it built when it runs).
"""

from __future__ import annotations

from typing import Any

import torch

from medprobe.errors import ConfigError
from medprobe.features.cache import FeatureStore
from medprobe.features.common import (
    cache_root,
    device_of,
    entry_spec,
    found_entry,
    keyed,
    open_entry,
    open_or_drop,
    resolve_preprocess,
)
from medprobe.features.config import ExtractConfig
from medprobe.features.units import ExtractionUnit, ResolvedEntry, register_unit
from medprobe.preprocess import PreprocessConfig
from medprobe.utils import atomic_write_json

PAIR_FORMAT = 1  # layout of a pair entry (a manifest, no arrays); part of its key


class PairUnit(ExtractionUnit):
    """Image pairs (``load_pair``): no encoder rows; asked for by the registration family."""

    name = "pair"
    runs_encoder = False

    def check(self, dataset: Any, encoder: Any) -> None:
        if not callable(getattr(dataset, "load_pair", None)):
            raise ConfigError(f"the pair extraction unit takes registration pair datasets; "
                              f"{getattr(dataset, 'name', 'the dataset')} has no pairs", "features")

    def resolve(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                device: Any) -> ResolvedEntry:
        cfg = config or ExtractConfig()
        pre = resolve_preprocess(preprocess or PreprocessConfig(), dataset, encoder)
        spec = {**entry_spec(dataset, encoder, pre, cfg, torch.device(device)), "tokens": [], "unit": "pair",
                "pair_format": PAIR_FORMAT}
        return keyed(pre, cfg, spec)

    def lookup(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
               cache_dir: Any, device: Any) -> FeatureStore | None:
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=device)
        entry = found_entry(cache_dir, r, what="pair entry")
        return open_or_drop(entry, r.preprocess, r.config) if entry is not None else None

    def extract(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                cache_dir: Any, device: Any, rank: int | None, world: int | None,
                shard: tuple[int, int] | None) -> FeatureStore | None:
        """The manifest-only entry (made at once by whichever process gets here; nothing to shard)."""
        dev = device_of(encoder, device)
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=dev)
        entry = cache_root(cache_dir) / r.key
        if (entry / "manifest.json").is_file():
            store = open_or_drop(entry, r.preprocess, r.config)
            if store is not None:
                return store
        ids = dataset.ids()
        atomic_write_json(entry / "spec.json", {**r.spec, "shard_items": 0, "key": entry.name})
        atomic_write_json(entry / "manifest.json", {
            "key": entry.name, "spec": r.spec, "slices_per_item": [0] * len(ids), "n_items": len(ids),
            "n_rows": 0, "shards": [], "ids": ids, "dim": 0, "grid": [0, 0], "unit": "pair",
            "encoder_info": encoder.describe(), "device": str(dev), "seconds_last_run": 0.0,
            "torch": torch.__version__})
        return open_entry(entry, r.preprocess, r.config, reused=False)


PAIR = register_unit(PairUnit())

__all__ = ["PAIR", "PAIR_FORMAT", "PairUnit"]
