"""Features: the extraction engine and the content-addressed, memory-mapped feature cache."""

from medprobe.features.cache import (
    CorruptEntry,
    FeatureStore,
    cache_key,
    is_entry,
    list_entries,
    remove_entry,
    verify_entry,
)
from medprobe.features.engine import ExtractConfig, amp_dtype, entry_spec, extract, lookup, resolve_preprocess

__all__ = ["CorruptEntry", "ExtractConfig", "FeatureStore", "amp_dtype", "cache_key", "entry_spec", "extract",
           "is_entry", "list_entries", "lookup", "remove_entry", "resolve_preprocess", "verify_entry"]
