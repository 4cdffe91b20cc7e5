"""Extraction units: what one row of a cache entry is (a 2D image or volume slice, a whole volume, a slide tile,
nothing per image for pairs), as a registry the engine asks instead of branching.

A unit is an :class:`ExtractionUnit` registered in :data:`UNITS` under its name. The engine
(:func:`medprobe.features.engine.extract` / ``lookup``) asks :func:`unit_for` which unit serves a dataset and
an encoder -- the one a task family asks for (``TaskFamily.feature_unit``), else the one that *claims* them (a
slide dataset: ``tile``; a whole-volume encoder: ``volume``), else ``image`` -- and hands the call to it with
the unit's options (``unit_options``, e.g. the tile unit's ``tiling`` / ``tissue``). Built-in units: ``image``
(:mod:`medprobe.features.image`), ``volume`` (:mod:`~medprobe.features.volume`), ``tile``
(:mod:`~medprobe.features.slides`) and ``pair`` (:mod:`~medprobe.features.pairs`). A new unit is one module
with an :class:`ExtractionUnit` subclass and ``UNITS.register(name, instance)``; the shared machinery (runner,
entry spec, memory check, ...) is :mod:`medprobe.features.common`.

Torch-free: importing this module loads no unit (the registry imports the built-in ones on first use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from medprobe.errors import ConfigError
from medprobe.registry import Registry
from medprobe.schema import suggest

if TYPE_CHECKING:
    from medprobe.features.cache import FeatureStore

DEFAULT_UNIT = "image"  # what a family asks for unless it names another: a 2D image or each slice of a volume

UNITS: Registry[ExtractionUnit] = Registry(
    "extraction unit",
    builtin=("medprobe.features.image", "medprobe.features.volume", "medprobe.features.slides",
             "medprobe.features.pairs"),
    where="features")


@dataclass(frozen=True)
class ResolvedEntry:
    """What a unit resolved for one extraction: the preprocessing in effect, the options it runs with (a unit
    may narrow them, e.g. tiles keep vectors only), the spec hashed into the cache key, the key, and any
    unit-private facts (the volume geometry, the per-slide entry specs, ...)."""

    preprocess: Any
    config: Any
    spec: dict[str, Any]
    key: str
    extra: dict[str, Any] = field(default_factory=dict)


class ExtractionUnit:
    """One kind of cache row. Subclasses set ``name`` and implement :meth:`resolve`, :meth:`lookup` and
    :meth:`extract` (signatures as :func:`medprobe.features.engine.extract`, plus the parsed ``options``).

    ``options``: the keys of ``unit_options`` the unit reads (any other key is refused in one line);
    ``dataset_unit``: datasets whose ``unit`` attribute is this are claimed (``slide`` for tiles);
    ``runs_encoder``: False when the unit writes no encoder output (the encoder is then never built for it and
    may be an :class:`~medprobe.encoders.EncoderInfo`)."""

    name: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    dataset_unit: ClassVar[str | None] = None
    runs_encoder: ClassVar[bool] = True

    def claims(self, dataset: Any, encoder: Any) -> bool:
        """True when this unit serves ``dataset`` / ``encoder`` even if the family asked for the default unit."""
        return self.dataset_unit is not None and getattr(dataset, "unit", None) == self.dataset_unit

    def check(self, dataset: Any, encoder: Any) -> None:
        """Refuse, in one line, a dataset or encoder this unit cannot serve (when asked for by name)."""
        if self.dataset_unit is not None and getattr(dataset, "unit", None) != self.dataset_unit:
            raise ConfigError(f"the {self.name} extraction unit takes datasets of unit {self.dataset_unit!r}; "
                              f"{getattr(dataset, 'name', 'the dataset')} is not one", "features")

    def parse_options(self, unit_options: Mapping[str, Any] | None, where: str | None = None) -> dict[str, Any]:
        """``unit_options`` checked against :attr:`options` (typed by the unit in :meth:`resolve`)."""
        opts = dict(unit_options or {})
        for k in opts:
            if k not in self.options:
                near = suggest(str(k), self.options)
                hint = f"did you mean {near!r}?" if near else f"it takes {', '.join(self.options) or 'none'}"
                raise ConfigError(f"unknown option {str(k)!r} of the {self.name} extraction unit ({hint})",
                                  where or "features")
        return opts

    def resolve(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                device: Any) -> ResolvedEntry:
        raise NotImplementedError

    def item_shape(self, resolved: ResolvedEntry) -> tuple[int, ...]:
        """The input of one encoder item, for the memory model: the resolved 2D resolution ``(H, W)`` (a unit
        whose items are volumes returns ``(D, H, W)``)."""
        return tuple(int(s) for s in resolved.preprocess.resolution)

    def lookup(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
               cache_dir: Any, device: Any) -> FeatureStore | None:
        raise NotImplementedError

    def extract(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                cache_dir: Any, device: Any, rank: int | None, world: int | None,
                shard: tuple[int, int] | None) -> FeatureStore | None:
        raise NotImplementedError


def register_unit(unit: ExtractionUnit) -> ExtractionUnit:
    """Add ``unit`` to :data:`UNITS` under ``unit.name`` (replacing a unit of that name); returns it."""
    if not unit.name:
        raise ConfigError(f"extraction unit {type(unit).__qualname__} has no name", "features")
    return UNITS.register(unit.name, unit)


def unit_names() -> list[str]:
    return [str(n) for n in UNITS.names()]


def unit_for(dataset: Any, encoder: Any, requested: str | None = None) -> ExtractionUnit:
    """The unit serving ``dataset`` / ``encoder``: ``requested`` when it names a unit other than the default
    (checked: it must accept them), else the one unit claiming them, else the default (``image``). Two units
    claiming the same inputs is an error naming both (registration order never decides)."""
    if requested not in (None, DEFAULT_UNIT):
        unit = UNITS.get(requested)
        unit.check(dataset, encoder)
        return unit
    claiming = [u for _, u in UNITS.items() if u.name != DEFAULT_UNIT and u.claims(dataset, encoder)]
    if len(claiming) > 1:
        names = " and ".join(u.name for u in claiming)
        enc = getattr(getattr(encoder, "spec", None), "name", "the encoder")
        raise ConfigError(f"dataset {getattr(dataset, 'name', '?')} with encoder {enc} is claimed by the "
                          f"extraction units {names}: a task family must ask for one (feature_unit)", "features")
    return claiming[0] if claiming else UNITS.get(DEFAULT_UNIT)


__all__ = ["DEFAULT_UNIT", "UNITS", "ExtractionUnit", "ResolvedEntry", "register_unit", "unit_for", "unit_names"]
