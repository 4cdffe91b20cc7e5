"""The package version and the feature-cache format version: constants every layer may read (the package root
re-exports them; a lower layer imports them from here, never from ``medprobe`` itself)."""

from __future__ import annotations

__version__ = "0.1.0"
FEATURE_FORMAT_VERSION = 1  # bump when the layout of a feature-cache entry changes (it is in every cache key)

__all__ = ["FEATURE_FORMAT_VERSION", "__version__"]
