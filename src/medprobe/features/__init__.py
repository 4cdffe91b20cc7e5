"""Features: the extraction engine and the content-addressed, memory-mapped feature cache."""

from medprobe.features.cache import FeatureStore, cache_key, list_entries, remove_entry, verify_entry
from medprobe.features.engine import ExtractConfig, amp_dtype, entry_spec, extract, lookup, resolve_preprocess

__all__ = ["ExtractConfig", "FeatureStore", "amp_dtype", "cache_key", "entry_spec", "extract", "list_entries", "lookup",
           "remove_entry", "resolve_preprocess", "verify_entry"]
