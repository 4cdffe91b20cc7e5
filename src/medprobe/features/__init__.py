"""Features: the extraction engine, its units and the content-addressed, memory-mapped feature cache.

The cache side (listing, verifying, reading entries) and the unit registry are torch-free; the engine (torch) is
imported on first use of one of its names, so ``medprobe cache`` starts without loading a model library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medprobe.features.cache import (
    CorruptEntry,
    FeatureStore,
    cache_key,
    is_entry,
    list_entries,
    remove_entry,
    verify_entry,
)
from medprobe.features.config import ExtractConfig
from medprobe.features.units import UNITS, ExtractionUnit, ResolvedEntry, register_unit, unit_for, unit_names

if TYPE_CHECKING:
    from medprobe.features.engine import (
        amp_dtype,
        entry_spec,
        extract,
        extraction_unit,
        lookup,
        resolve_entry,
        resolve_preprocess,
    )

_ENGINE = ("amp_dtype", "entry_spec", "extract", "extraction_unit", "lookup", "resolve_entry", "resolve_preprocess")
_SLIDES = ("extract_slides", "lookup_slides", "slide_coords", "slide_files", "export_h5",
           "import_h5")  # slide tile bags (torch)


def __getattr__(name: str) -> Any:
    if name in _ENGINE:
        from medprobe.features import engine

        return getattr(engine, name)
    if name in _SLIDES:
        from medprobe.features import slides

        return getattr(slides, name)
    raise AttributeError(f"module 'medprobe.features' has no attribute {name!r}")


__all__ = ["UNITS", "CorruptEntry", "ExtractConfig", "ExtractionUnit", "FeatureStore", "ResolvedEntry", "amp_dtype",
           "cache_key", "entry_spec", "extract", "extraction_unit", "is_entry", "list_entries", "lookup",
           "register_unit", "remove_entry", "resolve_entry", "resolve_preprocess", "unit_for", "unit_names",
           "verify_entry"]
