"""Slide features out of the cache as CLAM / TRIDENT HDF5 bags (``medprobe export-features``): the task's tile
features are reused from the cache (or extracted, exactly as ``medprobe run`` would), then written one ``.h5`` per
slide by :func:`medprobe.features.slides.export_h5` (``coords`` level-0 int64 with ``patch_size`` / ``patch_level``
/ ``mpp`` / ``target_mpp`` attributes, ``features`` float32). Bags written by those tools come back with
:func:`medprobe.features.slides.import_h5`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medprobe.errors import ConfigError


def export_features(spec: Any, out_dir: str | Path, token: str = "mean", layer: int | None = None) -> list[Path]:
    """Write the slide bags of the slides task ``spec`` under ``out_dir``; returns the files written."""
    from medprobe.features.slides import export_h5
    from medprobe.pipeline.common import features_for
    from medprobe.pipeline.run import load_dataset, prepared_for_extraction

    ds, family = load_dataset(spec)
    if family.feature_unit != "tile":
        raise ConfigError(f"export-features writes slide tile bags: task family {family.name} has no slides "
                          "(use a slides task: camelyon16, camelyon17, bcnb, slides)", spec.name)
    if token not in family.tokens:
        raise ConfigError(f"token {token!r}: slide bags keep {', '.join(family.tokens)}", spec.name)
    ds, family, spec, device, info = prepared_for_extraction(spec, (ds, family))
    _, store, _ = features_for(ds, spec, device, family.tokens, info=info, unit=family.feature_unit,
                               unit_options=family.unit_options(spec))
    return export_h5(store, out_dir, token=token, layer=layer)
