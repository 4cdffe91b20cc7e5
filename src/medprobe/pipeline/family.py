"""Task families as plug-ins: the interface a family implements, its registry, and the pieces every family
shares (one run context, one result record built in one place, one table printer).

A family says which dataset task types it serves, which head inputs it can feed (``vector``, ``bag``,
``dense``, ``pair``), which features it asks the engine for (``tokens``, and the extraction unit
``feature_unit`` with its ``unit_options``: per image / slice, tiles of slides, pairs), and how it fits,
predicts and scores one head. Everything else --
dataset, splits, label budget, encoder, cached features, head look-up and parameter checks, the record,
writing results, the printed table -- is done once, by :func:`medprobe.pipeline.run.run_task`.

Add a family: one module with a :class:`TaskFamily` subclass decorated with ``@register_family`` (and, for a
built-in one, its module name in ``_BUILTIN``: the registry :data:`FAMILIES` imports those on first use); see
``docs/design.md``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from medprobe.errors import ConfigError, DataError
from medprobe.pipeline.options import register_data_schema, schema_keys
from medprobe.pipeline.task import TaskSpec
from medprobe.registry import Registry

_BUILTIN = ("classification", "segmentation", "regression", "instances", "registration", "slides", "retrieval",
            "survival")
FAMILIES: Registry[type[TaskFamily]] = Registry(
    "task family", builtin=tuple(f"medprobe.pipeline.families.{m}" for m in _BUILTIN), where="kind")


def register_family(cls: type[TaskFamily]) -> type[TaskFamily]:
    """Class decorator: make ``cls`` the family named ``cls.name``."""
    if not getattr(cls, "name", None):
        raise ConfigError(f"task family {cls.__qualname__} has no name", "medprobe.pipeline")
    if not isinstance(cls.feature_unit, str) or not cls.feature_unit:  # the unit registry checks the name
        raise ConfigError(f"task family {cls.name!r}: feature_unit must name an extraction unit",
                          "medprobe.pipeline")
    if cls.data_schema is not None:  # its typed data: section; the keys it reads are that section's fields
        cls.data_options = tuple(dict.fromkeys((*cls.data_options, *schema_keys(cls.data_schema))))
    register_data_schema(cls.name, cls.data_schema, cls.data_options)
    return FAMILIES.register(cls.name, cls)


def unregister_family(name: str) -> None:
    FAMILIES.unregister(name)
    register_data_schema(name, None)


def family_names() -> list[str]:
    return [str(n) for n in FAMILIES.names()]


def get_family(name: str) -> TaskFamily:
    return FAMILIES.get(name)()


def _in_order() -> list[type[TaskFamily]]:
    """The registered families, built-in ones first in ``_BUILTIN`` order, then plug-ins in registration order
    (so which module was imported first never decides)."""
    rank = {f"medprobe.pipeline.families.{m}": i for i, m in enumerate(_BUILTIN)}
    return sorted((cls for _, cls in FAMILIES.items()), key=lambda c: rank.get(c.__module__, len(rank)))


def family_for_dataset(ds: Any, where: str | None = None) -> TaskFamily:
    """The family serving a dataset: the one declaring its unit (``ds.unit``, e.g. whole slides), else the first
    that lists its task type."""
    unit = getattr(ds, "unit", None)
    if unit is not None:
        for cls in _in_order():
            if cls.dataset_unit == unit:
                return cls()
    return family_for_task_type(ds.task.type, where)


def family_for_task_type(task_type: str, where: str | None = None) -> TaskFamily:
    """The family serving a dataset task type: the first (built-ins in ``_BUILTIN`` order, then plug-ins) that
    lists it; families that declare a ``dataset_unit`` serve only datasets of that unit, ``by_kind_only`` ones
    only tasks that name them."""
    for cls in _in_order():
        if task_type in cls.task_types and cls.dataset_unit is None and not cls.by_kind_only:
            return cls()
    raise ConfigError(f"no task family serves {task_type!r} datasets (families: {', '.join(family_names())})",
                      where)


@dataclass
class RunContext:
    """Everything a family needs to fit and score heads: built once by the run path."""

    spec: TaskSpec  # resolved by the family (defaults of the family made explicit)
    user_spec: TaskSpec  # as the user wrote it (what the config hash covers)
    dataset: Any
    splits: dict[str, list[int]]  # train (label budget applied), val, test
    device: Any
    encoder: Any  # a built Encoder, or an EncoderInfo when the features came from the cache
    store: Any  # FeatureStore
    preprocess: Any  # the resolved PreprocessConfig the features were made with
    layers: list[int]  # the extracted blocks a head consumes
    extraction: dict[str, Any]  # timing, compute, cache_key
    verbose: bool = True
    results_root: Any = None  # folder of the results database (outputs/<run_id>/ live there)
    state: dict[str, Any] = field(default_factory=dict)  # family-private (targets, label matrix, ...)
    notes: dict[str, Any] = field(default_factory=dict)  # recorded with every row (skipped cases, warnings)

    @property
    def train(self) -> list[int]:
        return self.splits["train"]

    @property
    def val(self) -> list[int]:
        return self.splits.get("val", [])

    @property
    def test(self) -> list[int]:
        return self.splits["test"]


@dataclass
class HeadResult:
    """What a family returns for one head: metrics with CIs, per-case predictions, and what to record."""

    head: str
    metrics: dict[str, Any]
    predictions: dict[str, np.ndarray] | None
    head_params: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    table: list[str] = field(default_factory=list)  # extra printed lines under the head's row
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific values returned with the row


class TaskFamily:
    """Base class of task families (see the module docstring)."""

    name: ClassVar[str] = ""
    task_types: ClassVar[tuple[str, ...]] = ()  # dataset task types served
    head_inputs: ClassVar[tuple[str, ...]] = ("vector",)  # head input kinds this family can feed, preferred first
    feature_unit: ClassVar[str] = "image"  # the extraction unit asked for (medprobe.features.units; image: the
    # default, a 2D image or each slice of a volume, unless a unit claims the dataset/encoder: tile, volume)
    dataset_unit: ClassVar[str | None] = None  # datasets with this ``unit`` (e.g. "slide") come to this family
    by_kind_only: ClassVar[bool] = False  # chosen only when a task names it (kind: retrieval), never by task type
    head_outputs: ClassVar[tuple[str, ...] | None] = None  # a head must give one of these outputs (None: any)
    tokens: ClassVar[tuple[str, ...]] = ("cls", "mean")  # what the engine extracts
    default_layers: ClassVar[str] = "last"  # features.layers: auto
    default_use: ClassVar[str] = "last"  # features.use: auto
    headline: ClassVar[tuple[str, ...]] = ()  # metrics shown in the printed table
    # facts for reports, stored in every record (the report layer never looks a family up by name):
    rank_by: ClassVar[tuple[str, ...]] = ()  # metrics settings are ranked by: the first a row has (none: its commonest)
    paired_scores: ClassVar[bool] = False  # per-case class scores stored: settings compared by a paired bootstrap
    report_panels: ClassVar[tuple[str, ...]] = ()  # extra report panels of its rows (e.g. "slide-mil")
    # how the stored predictions give back the headline metrics (medprobe.results.rescore: proba, proba_seeds,
    # regression, cases, columns; "" none), stored in every record as report.rescore
    rescore: ClassVar[str] = ""
    data_options: ClassVar[tuple[str, ...]] = ()  # dataset options the family consumes itself
    # the typed section of those options (a frozen dataclass of medprobe.schema.opt fields, parsed by parse_task:
    # typos refused, values normalised before the hash, listed by 'medprobe config keys'); see pipeline/options.py
    data_schema: ClassVar[type | None] = None
    unit_label: ClassVar[str] = "px"

    # ------------------------------------------------------------------------------ set-up
    def unit_options(self, spec: TaskSpec) -> dict[str, Any]:
        """Options handed to the extraction unit (``extract(..., unit_options=...)``); default: none."""
        return {}

    def prepare_dataset(self, ds: Any, spec: TaskSpec, verbose: bool) -> tuple[Any, dict[str, Any]]:
        """Checks or filters the dataset; returns it and notes to record (e.g. skipped cases)."""
        return ds, {}

    def check_dataset(self, ds: Any, spec: TaskSpec) -> None:
        if ds.task.type not in self.task_types:
            raise ConfigError(f"dataset {ds.name} is a {ds.task.type} task; the {self.name} family takes "
                              f"{', '.join(self.task_types)}", spec.name)

    def resolve(self, spec: TaskSpec, ds: Any, encoder: Any) -> TaskSpec:
        """The spec with this family's defaults made explicit (recorded with every row)."""
        f = spec.features
        layers: str = f.layers
        if f.layers.symbol == "auto":
            layers = self.default_layers
            try:
                encoder.resolve_layers(layers)
            except ConfigError:  # encoders with fewer blocks than the default taps (none, ONNX graphs)
                layers = "last"
        use = self.default_use if f.use == "auto" else f.use
        return spec.with_overrides(features={"layers": layers, "use": use})

    def budget_labels(self, ds: Any) -> list[Any] | None:
        """Labels a per-class label budget counts (None: budgets are fractions of patients only)."""
        return None

    def check_head(self, head_cls: type[Any], name: str, ds: Any) -> None:
        """Refuse a head this dataset cannot feed (beyond its input kind and task type); default: none."""

    def serves_head(self, head_cls: type[Any]) -> bool:
        """Whether this family can run ``head_cls`` (input kind, task types, ``head_outputs``): what ``medprobe
        heads`` and ``medprobe config families`` list under it."""
        tasks = tuple(getattr(head_cls, "tasks", ()))
        outs = set(getattr(head_cls, "outputs", ("proba",)))
        return (head_cls.input_kind in self.head_inputs and (not tasks or bool(set(tasks) & set(self.task_types)))
                and (self.head_outputs is None or bool(outs & set(self.head_outputs))))

    def head_params(self, head_cls: type[Any]) -> list[str]:
        """Names ``head_params.<head>`` may set for this head."""
        from medprobe.heads.base import head_param_names

        return head_param_names(head_cls)

    def prepare(self, ctx: RunContext) -> None:
        """Work shared by every head (label matrices, targets); stored in ``ctx.state``."""

    # ------------------------------------------------------------------------------ per head
    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        raise NotImplementedError

    def write_outputs(self, result: HeadResult, ctx: RunContext) -> None:
        """Write per-case output files (after every head succeeded); default: nothing."""


# ---------------------------------------------------------------------------------- shared helpers
_TOKENS = {"cls": ["cls"], "mean": ["mean"], "cls+mean": ["cls", "mean"]}


def feature_matrix(ctx: RunContext) -> np.ndarray:
    """One vector per case: chosen token(s) x chosen block(s), slices pooled per volume."""
    f = ctx.spec.features
    parts = [ctx.store.pooled(t, layer, f.pooling) for layer in ctx.layers for t in _TOKENS[f.token]]
    X = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    check_finite(X, ctx)
    return X


def check_finite(X: np.ndarray, ctx: RunContext) -> None:
    """Features that are NaN/inf or absurdly large never reach a solver: one line naming the cache entry."""
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        ids = ctx.dataset.ids()
        raise DataError(f"features of {len(rows)} case(s) are NaN or infinite (first: {ids[rows[0]]}); the encoder "
                        "overflowed (try features.amp: off) or the cache entry is damaged", ctx.store.path)
    big = float(np.abs(X).max(initial=0.0))
    if big > 1e12:
        raise DataError(f"features reach {big:.3g}: absurd for an encoder's output (damaged cache entry?)",
                        ctx.store.path)


def feature_bags(ctx: RunContext) -> list[np.ndarray]:
    """Per case, its ``(S_i, C)`` slice (or tile) vectors."""
    per = [ctx.store.bags(t, layer) for layer in ctx.layers for t in _TOKENS[ctx.spec.features.token]]
    return [np.concatenate([p[i] for p in per], axis=1) for i in range(ctx.store.n_items)]


def feature_layers(store: Any, spec: TaskSpec) -> list[int]:
    """Which extracted blocks a head consumes: ``select`` (one block), ``use: concat`` (all) or the last."""
    f = spec.features
    if f.select is not None:
        sel = f.select + max(store.layers) + 1 if f.select < 0 else f.select
        if sel not in store.layers:
            raise ConfigError(f"features.select: block {sel} was not extracted (have {store.layers})", spec.name)
        return [sel]
    return list(store.layers) if f.use == "concat" else [store.layers[-1]]


def table_header(ctx: RunContext, unit: str = "px") -> str:
    """First line of a printed result table: task, data, encoder (untrained marked), input, layers, split."""
    enc, spec = ctx.encoder, ctx.spec
    label = ("pretrained" if enc.pretrained else "no encoder: the image-only baseline"
             if enc.spec.family == "none" else "UNTRAINED weights: a pipeline check, not a score")
    res = ctx.preprocess.resolution
    return (f"\n{spec.name}: {ctx.dataset.name} ({ctx.dataset.task.type}), {enc.spec.name} [{label}], "
            f"{res[0]}x{res[1]} {unit}, layer(s) {ctx.layers}, "
            f"train/val/test {len(ctx.train)}/{len(ctx.val)}/{len(ctx.test)}"
            + ("  [features from cache]" if ctx.extraction["timing"]["cached"] else ""))


def fmt_ci(v: Any, digits: int = 3, width: int = 22) -> str:
    """``value [lo, hi]`` right-aligned; n/a for a missing or non-finite value."""
    if v is None:
        return "n/a".rjust(width)
    m, lo, hi = (v if isinstance(v, (tuple, list)) else (v, np.nan, np.nan))
    if m is None or not np.isfinite(m):
        return "n/a".rjust(width)
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{m:6.{digits}f}".rjust(width)
    return f"{m:6.{digits}f} [{lo:5.{digits}f}, {hi:5.{digits}f}]".rjust(width)


def print_table(ctx: RunContext, family: TaskFamily, results: Sequence[HeadResult], db_path: Any,
                echo: Callable[[str], None] = print) -> None:
    """The one result table: a header, one row per head with the family's headline metrics (95% CIs) and the
    run id, then any extra lines the family added for that head."""
    if not results:
        return
    echo(table_header(ctx, family.unit_label))
    if ctx.notes.get("skipped_cases"):
        echo(f"  skipped {len(ctx.notes['skipped_cases'])} invalid case(s): " + "; ".join(ctx.notes["skipped_cases"]))
    cols = [m for m in family.headline if m in results[0].metrics]
    echo(f"  {'head':<10} " + " ".join(f"{m:>22}" for m in cols) + "   run id")
    for r in results:
        echo(f"  {r.head:<10} " + " ".join(fmt_ci(r.metrics.get(m)) for m in cols) + f"   {r.run_id[:10]}")
        for line in r.table:
            echo("    " + line)
    echo(f"  (95% bootstrap CIs over test cases; results in {db_path})")
