"""Modality-aware preprocessing: intensity -> channels -> slices -> geometry -> encoder mean/std.

:class:`PreprocessConfig` (torch-free) holds every option; :class:`Preprocessor` (torch, imported on first
use) turns one :class:`~medprobe.data.Item` into a ``(S, V, 3, H, W)`` tensor: S slices (1 for 2D), V views
(1, or one per channel with ``per_channel``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medprobe.preprocess.config import CHANNEL_MODES, INTERPOLATIONS, RESIZE_MODES, PreprocessConfig
from medprobe.preprocess.intensity import CT_WINDOWS, apply_intensity, parse_intensity, resolve_intensity

if TYPE_CHECKING:
    from medprobe.preprocess.transform import Preprocessor


def __getattr__(name: str) -> Any:
    if name == "Preprocessor":  # the torch part, loaded only when something is preprocessed
        from medprobe.preprocess.transform import Preprocessor

        return Preprocessor
    raise AttributeError(f"module 'medprobe.preprocess' has no attribute {name!r}")


__all__ = ["CHANNEL_MODES", "CT_WINDOWS", "INTERPOLATIONS", "RESIZE_MODES", "PreprocessConfig", "Preprocessor",
           "apply_intensity", "parse_intensity", "resolve_intensity"]
