"""Typed option sections: frozen dataclasses whose fields say their help text, whether they change a number,
and how a raw value (YAML, a CLI string, a sweep cell) is normalised.

One parser (:func:`parse_section`) serves every source, so equal settings written differently (``224``,
``[224, 224]``, ``"224x224"``) become equal values and equal hashes. An unknown key at any depth is a
:class:`~medprobe.errors.ConfigError` naming the source, the key path and the closest valid key.
Torch-free: ``medprobe config`` and ``--help`` use it without loading a model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from medprobe.errors import ConfigError

T = TypeVar("T")
Normaliser = Callable[[Any, str], Any]


def opt(default: Any = dataclasses.MISSING, *, help: str, numbers: bool = True, norm: Normaliser | None = None,
        type: str = "", factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with schema metadata: ``help``, ``numbers`` (changes a result, so it is hashed),
    ``norm(value, key_path)`` (returns the canonical value or raises ConfigError), ``type`` (for listings)."""
    md = {"help": help, "numbers": numbers, "norm": norm, "type": type}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


def suggest(key: str, valid: Sequence[str]) -> str | None:
    """The closest valid key, or None when nothing is close."""
    hits = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return hits[0] if hits else None


def unknown_key(path: str, key: str, valid: Sequence[str], source: str | None) -> ConfigError:
    full = f"{path}.{key}" if path else key
    near = suggest(key, valid)
    hint = f" (did you mean '{f'{path}.{near}' if path else near}'?)" if near else f" (valid: {', '.join(valid)})"
    return ConfigError(f"unknown key '{full}'{hint}", source)


def bad_value(path: str, problem: str, source: str | None = None) -> ConfigError:
    return ConfigError(f"{path}: {problem}", source)


def section_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if f.init]


def parse_section(cls: type[T], raw: Any, path: str, source: str | None,
                  aliases: Mapping[str, str] | None = None) -> T:
    """Build section ``cls`` from a raw mapping: unknown keys and bad values are one-line ConfigErrors
    naming ``source`` and the key path; every value goes through its field's normaliser."""
    if raw is None:
        raw = {}
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise bad_value(path or "task", f"must be a mapping of options, got {raw!r}", source)
    flds = {f.name: f for f in section_fields(cls)}
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        k = (aliases or {}).get(str(key), str(key))
        if k not in flds:
            raise unknown_key(path, str(key), sorted(flds), source)
        norm = flds[k].metadata.get("norm")
        kp = f"{path}.{k}" if path else k
        try:
            kw[k] = norm(value, kp) if norm is not None else value
        except ConfigError as e:
            if e.source is None and not (e.problem.startswith(kp) or f"'{kp}." in e.problem):
                raise bad_value(kp, e.problem, source) from None
            raise ConfigError(e.problem, source) from None
    try:
        return cls(**kw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e.problem}" if path else e.problem, source) from None


def section(cls: type[T]) -> Normaliser:
    """Normaliser of a field holding a nested section ``cls`` (a mapping, or an instance, parsed by
    :func:`parse_section`: unknown keys inside it name their full key path)."""

    def norm(v: Any, path: str) -> T:
        return parse_section(cls, v, path, None)

    return norm


def normalise_fields(obj: Any, prefix: str = "") -> None:
    """Run every field's normaliser on a frozen section built directly (``Cls(key=value)``), so a section
    built in code holds the same canonical values as one parsed from YAML (call it in ``__post_init__``)."""
    for f in section_fields(type(obj)):
        norm = f.metadata.get("norm")
        if norm is not None:
            object.__setattr__(obj, f.name, norm(getattr(obj, f.name), f"{prefix}{f.name}"))


def field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def as_dict(obj: Any) -> Any:
    """Canonical plain-data form of a section (tuples become lists; nested sections recurse; typed values
    such as :class:`Layers` become their canonical plain form)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_dict(getattr(obj, f.name)) for f in section_fields(type(obj))}
    if isinstance(obj, Mapping):
        return {str(k): as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    if isinstance(obj, str) and type(obj) is not str:
        return str(obj)
    return obj


def numbers_only(obj: Any) -> Any:
    """Like :func:`as_dict` but without the fields marked ``numbers=False`` (what a config hash covers).

    A section class may declare ``hash_always`` (a tuple of field names): it is then hashed *sparsely*, as
    those fields plus every other field whose value differs from its default. Writing a default out or
    leaving it out then gives one hash, and a field added later with a default changes no stored hash."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        always = getattr(type(obj), "hash_always", None)
        out: dict[str, Any] = {}
        for f in section_fields(type(obj)):
            if not f.metadata.get("numbers", True):
                continue
            v = getattr(obj, f.name)
            if always is not None and f.name not in always and v == field_default(f):
                continue
            out[f.name] = numbers_only(v)
        return out
    if isinstance(obj, Mapping):
        return {str(k): numbers_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [numbers_only(v) for v in obj]
    return as_dict(obj)


def describe_field(f: dataclasses.Field[Any], path: str) -> tuple[str, str, str, bool, str]:
    """``(key path, type, default, changes numbers, help)`` of one field."""
    default = field_default(f)
    if default is dataclasses.MISSING:
        default = "(required)"
    return (path, f.metadata.get("type") or _type_name(f.type), _fmt(as_dict(default)),
            bool(f.metadata.get("numbers", True)), str(f.metadata.get("help", "")))


def describe_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, bool, str]]:
    """:func:`describe_field` for every field of section ``cls``; a field holding a nested section (declared
    with ``type="section"`` and a section default) lists that section's keys instead."""
    for f in section_fields(cls):
        default = field_default(f)
        if f.metadata.get("type") == "section" and dataclasses.is_dataclass(default):
            yield from describe_keys(type(default), f"{prefix}{f.name}.")
        else:
            yield describe_field(f, f"{prefix}{f.name}")


def _type_name(t: Any) -> str:
    return str(t).replace("typing.", "")


def _fmt(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# ------------------------------------------------------------------------------------------ normalisers
def choice(*values: str) -> Normaliser:
    def norm(v: Any, path: str) -> str:
        s = str(v).strip().lower() if isinstance(v, str) else v
        if s not in values:
            near = suggest(str(v), values)
            raise ConfigError(f"{path}: must be one of {', '.join(values)}, got {v!r}"
                              + (f" (did you mean '{near}'?)" if near else ""))
        return str(s)

    return norm


def to_int(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Normaliser:
    def norm(v: Any, path: str) -> int | None:
        if v is None or (optional and isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
            if optional:
                return None
            raise ConfigError(f"{path}: a whole number is required")
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            i = int(str(v).strip()) if isinstance(v, str) else int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: must be a whole number, got {v!r}") from None
        if (lo is not None and i < lo) or (hi is not None and i > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}" if lo is not None else f"<= {hi}"
            raise ConfigError(f"{path}: must be {rng}, got {i}")
        return i

    return norm


def to_float(lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> Normaliser:
    def norm(v: Any, path: str) -> float:
        try:
            if isinstance(v, bool):
                raise ValueError
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: must be a number, got {v!r}") from None
        if not math.isfinite(x) or (lo is not None and (x <= lo if open_lo else x < lo)) or (hi is not None and x > hi):
            raise ConfigError(f"{path}: must be {'>' if open_lo else '>='} {lo}" + (f" and <= {hi}" if hi else "")
                              + f", got {v!r}")
        return x

    return norm


def to_bool(v: Any, path: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ConfigError(f"{path}: must be true or false, got {v!r}")


def to_str(optional: bool = False) -> Normaliser:
    def norm(v: Any, path: str) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, (dict, list, tuple)) or v is None:
            raise ConfigError(f"{path}: must be a string, got {v!r}")
        return str(v)

    return norm


def to_mapping(v: Any, path: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{path}: must be a mapping, got {v!r}")
    return {str(k): v2 for k, v2 in v.items()}


def to_size(v: Any, path: str) -> tuple[int, int] | None:
    """``224``, ``"224"``, ``"224x192"``, ``[224, 192]``, ``"native"``/null -> ``(H, W)`` or None."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "native", "none", "null", "auto")):
        return None
    try:
        if isinstance(v, str):
            parts = [int(p) for p in v.lower().replace(",", "x").replace(" ", "").split("x") if p]
        elif isinstance(v, numbers.Real) and not isinstance(v, bool):  # numpy scalars too
            x = float(v)
            if not x.is_integer():
                raise ValueError
            parts = [int(x)]
        elif isinstance(v, (list, tuple)):
            parts = [int(p) for p in v]
            if any(float(p) != int(p) for p in v):
                raise ValueError
        else:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: must be N, HxW, [H, W] or native, got {v!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ConfigError(f"{path}: must be N, HxW, [H, W] or native, got {v!r}")
    return (parts[0], parts[1])


def to_triple(v: Any, path: str) -> tuple[float, float, float] | None:
    if v is None:
        return None
    try:
        vals = tuple(float(p) for p in (v.split(",") if isinstance(v, str) else v))
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: must be three numbers, got {v!r}") from None
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3:
        raise ConfigError(f"{path}: must be three numbers, got {v!r}")
    return (vals[0], vals[1], vals[2])


# ------------------------------------------------------------------------------------------ typed values
LAYER_WORDS = ("auto", "last", "four", "all")
_LAYERS_HELP = "must be auto, last, four, all or block indices like 2,5,8,11"


class Layers(str):
    """A block selection, parsed once (the one parser of layer selections; every encoder reads the result).

    Either a word -- ``auto`` (the task family's default), ``last``, ``four`` (the encoder's standard taps;
    ``default`` is read as ``four``), ``all`` -- or sorted unique 0-based block indices (negative counts from the
    end). The value is the canonical text (``"four"``, ``"2,5,8,11"``: what configs show and hash, and what
    compares equal to a plain string); :attr:`symbol` and :attr:`indices` are the typed parts.
    ``Layers(v, path)`` accepts a word, an int, a list of ints or a comma string; a bad one is a one-line
    :class:`ConfigError` naming ``path``."""

    symbol: str | None
    indices: tuple[int, ...]

    def __new__(cls, v: Any = "auto", path: str = "layers") -> Layers:
        if isinstance(v, Layers):
            return v
        if v is None:
            v = "auto"
        if isinstance(v, str) and v.strip().lower() in (*LAYER_WORDS, "default"):
            word = v.strip().lower()
            word = "four" if word == "default" else word
            obj = super().__new__(cls, word)
            obj.symbol, obj.indices = word, ()
            return obj
        try:
            if isinstance(v, bool):
                raise ValueError
            if isinstance(v, int):
                idx = [v]
            elif isinstance(v, str):
                idx = [int(p) for p in v.replace(" ", "").split(",") if p]
            elif isinstance(v, (list, tuple)):
                if any(isinstance(p, bool) or (isinstance(p, float) and not p.is_integer()) for p in v):
                    raise ValueError
                idx = [int(p) for p in v]
            else:
                raise ValueError
            if not idx:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: {_LAYERS_HELP}, got {v!r}") from None
        indices = tuple(sorted(set(idx)))
        obj = super().__new__(cls, ",".join(str(i) for i in indices))
        obj.symbol, obj.indices = None, indices
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (DataLoader workers) rebuild through the parser
        return (Layers, (str(self),))

    def __deepcopy__(self, memo: Any) -> Layers:
        return self

    def __copy__(self) -> Layers:
        return self


def to_layers(v: Any, path: str) -> Layers:
    """Normaliser of a layer selection (see :class:`Layers`)."""
    return Layers(v, path)
