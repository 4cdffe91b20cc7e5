"""Typed option sections that task families read under ``data:`` (torch-free).

A family declares the dataset-level options it consumes itself as one typed section (``TaskFamily.data_schema``,
a frozen dataclass of :func:`~medprobe.schema.opt` fields; a field may hold a nested section, e.g. the slides
family's ``tiling`` and ``tissue``). :func:`parse_family_data` -- called by :func:`~medprobe.pipeline.task.parse_task`
for every task, whatever its source (YAML, CLI flags, a sweep cell) -- parses those keys with the same
:func:`~medprobe.schema.parse_section` as every other section: an unknown key at any depth is one line with the
closest valid key, values are normalised before the config hash, and ``medprobe config keys`` lists them with
their help and whether they change numbers.

Hashed form: a schema's ``hash_always`` fields are always in the task's ``data`` (defaults filled in); every
other field only when it differs from its default. So the same setting written out, left out or spelled
differently (``tile_px: 224`` / ``"224"``) gives one config hash, and a field added later with a default changes
no stored hash.

The schemas of the built-in families live here (not in their modules, which load torch) so that ``medprobe
config`` checks them without loading a model library; a plug-in family's ``data_schema`` is registered by
:func:`~medprobe.pipeline.family.register_family`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from medprobe.data.tiling import TilingConfig
from medprobe.errors import ConfigError
from medprobe.preprocess.tissue import TissueConfig
from medprobe.schema import field_default, opt, parse_section, section, section_fields, to_bool


def _inputs(v: Any, path: str) -> str | None:
    """``all``/null -> None (every channel); ``CT+PET``, ``[CT, PET]``, ``0,1`` -> ``"CT+PET"``, ``"0+1"``."""
    from medprobe.preprocess.channels import parse_inputs

    try:
        parts = parse_inputs(v)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.problem.split(': ', 1)[-1]}") from None
    return None if parts is None else "+".join(parts)


@dataclass(frozen=True)
class SlidesData:
    """``data:`` options of the ``slides`` family: how a slide becomes tiles and its tissue mask."""

    family: ClassVar[str] = "slides"
    hash_always: ClassVar[tuple[str, ...]] = ("tiling", "tissue")

    tiling: TilingConfig = opt(factory=TilingConfig, norm=section(TilingConfig), type="section",
                               help="tile grid at a physical scale (medprobe.data.tiling.TilingConfig)")
    tissue: TissueConfig = opt(factory=TissueConfig, norm=section(TissueConfig), type="section",
                               help="tissue mask on a thumbnail (medprobe.preprocess.tissue.TissueConfig)")


@dataclass(frozen=True)
class SegmentationData:
    """``data:`` options of the ``segmentation`` family."""

    family: ClassVar[str] = "segmentation"
    hash_always: ClassVar[tuple[str, ...]] = ()

    skip_invalid: bool = opt(False, norm=to_bool, type="bool",
                             help="validate every case first; list and drop the invalid ones (else: stop)")
    inputs: str | None = opt(None, norm=_inputs, type="all|CT+PET|0+1",
                             help="only these channels (names or indices joined by +; the PET/CT input ablation)")


_SCHEMAS: dict[str, type] = {s.family: s for s in (SlidesData, SegmentationData)}  # built-in families' sections
_UNTYPED: dict[str, tuple[str, ...]] = {}  # plug-in families that list data keys without a schema


def register_data_schema(family: str, schema: type | None, keys: Sequence[str] = ()) -> None:
    """Make ``schema`` the typed ``data:`` section of ``family`` (``keys``: further untyped keys it reads)."""
    if schema is not None:
        _SCHEMAS[family] = schema
    else:
        _SCHEMAS.pop(family, None)
    extra = tuple(k for k in keys if schema is None or k not in schema_keys(schema))
    if extra:
        _UNTYPED[family] = extra
    else:
        _UNTYPED.pop(family, None)


def schema_keys(schema: type) -> tuple[str, ...]:
    return tuple(f.name for f in section_fields(schema))


def data_schemas() -> dict[str, type]:
    """Family name -> its typed ``data:`` section (built-in and registered)."""
    return dict(_SCHEMAS)


def family_of_data(kind: str | None, data: Mapping[str, Any]) -> str | None:
    """The family whose typed ``data:`` section applies: ``kind`` when given, else the family whose section declares
    a key of ``data`` (None when none does; two different sections declaring the written keys is a ConfigError).
    Families that list the same keys without a section (reading the slides' ``tiling`` for their own slide
    datasets, say) do not compete with the section."""
    if kind:
        return kind
    typed: dict[type, list[str]] = {}
    for name, schema in _SCHEMAS.items():
        if set(schema_keys(schema)) & set(data):
            typed.setdefault(schema, []).append(name)
    if len(typed) > 1:
        names = sorted(n for v in typed.values() for n in v)
        keys = sorted(set(data) & {k for s in typed for k in schema_keys(s)})
        raise ConfigError(f"data: {', '.join(keys)} are options of the {' and '.join(names)} families: set 'kind'")
    if typed:
        return sorted(next(iter(typed.values())))[0]
    return None


def _all_keys() -> dict[str, tuple[str, ...]]:
    out = {name: schema_keys(s) for name, s in _SCHEMAS.items()}
    for name, keys in _UNTYPED.items():
        out[name] = (*out.get(name, ()), *keys)
    return out


def family_data_keys(kind: str | None, data: Mapping[str, Any] = {}) -> set[str]:  # noqa: B006 (read only)
    """The ``data:`` keys the task's family reads itself (not passed to the dataset factory): those of ``kind``;
    without a kind, those of every family declaring a key of ``data``."""
    keys = _all_keys()
    if kind:
        return set(keys.get(kind, ()))
    return {k for fam in keys.values() if set(fam) & set(data) for k in fam}


def parse_family_data(kind: str | None, data: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """``data`` with the family's keys parsed into typed values (nested sections become section objects) and
    put in their hashed form: ``hash_always`` fields always present, others only when not the default."""
    fam = family_of_data(kind, data)
    schema = _SCHEMAS.get(fam) if fam else None
    if schema is None:
        return dict(data)
    keys = schema_keys(schema)
    inst: Any = parse_section(schema, {k: data[k] for k in keys if k in data}, "data", source)
    out = {k: v for k, v in data.items() if k not in keys}
    always = getattr(schema, "hash_always", ())
    for f in section_fields(schema):
        v = getattr(inst, f.name)
        if f.name in always or v != field_default(f):
            out[f.name] = v
    return out


def family_options(kind: str | None, data: Mapping[str, Any], source: str | None = None) -> Any:
    """The family's typed ``data:`` section of a task (defaults filled in), or None when it declares none."""
    fam = family_of_data(kind, data)
    schema = _SCHEMAS.get(fam) if fam else None
    if schema is None:
        return None
    return parse_section(schema, {k: data[k] for k in schema_keys(schema) if k in data}, "data", source)


__all__ = ["SegmentationData", "SlidesData", "data_schemas", "family_data_keys", "family_of_data",
           "family_options", "parse_family_data", "register_data_schema", "schema_keys"]
