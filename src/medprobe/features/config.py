"""The extraction options, one typed class for the task and the engine (torch-free).

:class:`EngineOptions` holds what the encoder is asked for and how it runs (layers, autocast, storage dtype,
batching, readers, progress). The task's ``features`` section
(:class:`~medprobe.pipeline.task.FeaturesConfig`) extends it with how features become a head's input; the
engine's :class:`ExtractConfig` extends it with the tokens a task family asks for and the shard size.
:meth:`ExtractConfig.from_features` builds the engine's options from a task's features section, so the two
never disagree on a value, a default or an error text.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from medprobe.errors import ConfigError
from medprobe.features.cache import TOKENS
from medprobe.schema import Layers, choice, normalise_fields, opt, to_bool, to_int, to_layers

AMP_MODES = ("auto", "bf16", "fp16", "off")
STORAGE_DTYPES = ("float32", "float16")


def _tokens(v: Any, path: str) -> tuple[str, ...]:
    """A non-empty subset of cls, mean, patch (a list or a comma string), in the order given."""
    items = [t.strip() for t in v.split(",")] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) \
        else None
    if items is None or not [t for t in items if t] or any(t not in TOKENS for t in items if t):
        raise ConfigError(f"{path}: must be a non-empty subset of {', '.join(TOKENS)}, got {v!r}")
    return tuple(dict.fromkeys(str(t) for t in items if t))


def _batch(v: Any, path: str) -> int | str:
    """``auto`` or a whole number >= 1 (a batch never changes a feature value: rows are independent)."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return "auto"
    return to_int(1)(v, path)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class EngineOptions:
    """Options shared by the task's ``features`` section and the engine."""

    layers: Layers = opt(Layers("last"), norm=to_layers, type="last|four|all|2,5,8,11",
                         help="blocks to extract: last, four (the encoder's standard taps), all or 0-based indices")
    amp: str = opt("auto", norm=choice(*AMP_MODES), type="|".join(AMP_MODES),
                   help="autocast (auto: bf16 on a GPU, off on the CPU)")
    storage: str = opt("float32", norm=choice(*STORAGE_DTYPES), type="|".join(STORAGE_DTYPES),
                       help="dtype of cached features")
    batch_size: int | str = opt("auto", norm=_batch, type="auto|int", numbers=False,
                                help="items per encoder batch (auto: the largest that fits the encoder's "
                                     "memory model with headroom, confirmed on the first batch)")
    workers: int = opt(0, norm=to_int(0), type="int", numbers=False, help="reader processes")
    progress: bool = opt(True, norm=to_bool, type="bool", numbers=False, help="show a progress line")

    def __post_init__(self) -> None:
        normalise_fields(self)


@dataclass(frozen=True)
class ExtractConfig(EngineOptions):
    """Options of one extraction: :class:`EngineOptions` plus the ``tokens`` to store and ``shard_items``.

    ``layers``: 'last', 'four', 'all' or indices (a :class:`~medprobe.schema.Layers`); ``amp``: 'auto' (bf16
    on CUDA, off on CPU), 'bf16', 'fp16' or 'off'; ``storage``: 'float32' or 'float16'."""

    tokens: tuple[str, ...] = opt(TOKENS, norm=_tokens, type="cls,mean,patch", help="tokens to store")
    shard_items: int | None = opt(None, norm=to_int(1, optional=True), type="int|null", numbers=False,
                                  help="items per shard (null: 256 images or 8 volumes)")

    @classmethod
    def from_features(cls, features: EngineOptions, tokens: Any = TOKENS, **kw: Any) -> ExtractConfig:
        """The engine's options from a task's (family-resolved) features section: every shared field is
        taken from it as it is."""
        shared = {f.name: getattr(features, f.name) for f in fields(EngineOptions)}
        return cls(**{**shared, "tokens": tokens, **kw})


__all__ = ["AMP_MODES", "STORAGE_DTYPES", "TOKENS", "EngineOptions", "ExtractConfig"]
