"""The typed, canonical task config: one schema for YAML files, CLI flags and sweep cells (torch-free).

:func:`parse_task` is the one parser. Every value is normalised once (resolution, layers, split, budget,
...), defaults are filled in, and an unknown key at any depth is a one-line :class:`ConfigError` naming the
source file, the key path and the closest valid key. Equal configs therefore have equal
:meth:`TaskSpec.config_hash` values wherever they come from: ``medprobe run``, a sweep cell, the cache, the
results database and the report.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from medprobe.errors import ConfigError
from medprobe.features.config import EngineOptions
from medprobe.pipeline.options import data_schemas, family_data_keys, parse_family_data
from medprobe.preprocess.config import PreprocessConfig
from medprobe.schema import (
    Layers,
    as_dict,
    bad_value,
    choice,
    describe_field,
    describe_keys,
    numbers_only,
    opt,
    parse_section,
    to_bool,
    to_float,
    to_int,
    to_layers,
    to_mapping,
    to_str,
    unknown_key,
)
from medprobe.utils import hash_obj

# ------------------------------------------------------------------------------------------ normalisers
TOKENS = ("cls", "mean", "cls+mean")


def _budget(v: Any, path: str) -> float | str | None:
    """All labels (null), a fraction in (0, 1], ``"<k>/class"`` or the few-shot ``"kshot:<k>x<draws>"``."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("", "all", "none", "null")):
        return None
    if isinstance(v, str) and v.strip().lower().startswith("kshot"):
        from medprobe.pipeline.fewshot import normalise_kshot

        return normalise_kshot(v, path)
    if isinstance(v, str) and v.strip().endswith("/class"):
        k = v.strip().split("/")[0]
        if not k.isdigit() or int(k) < 1:
            raise ConfigError(f"{path}: must be a fraction in (0, 1] or '<k>/class', got {v!r}")
        return f"{int(k)}/class"
    try:
        if isinstance(v, bool):
            raise ValueError
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: must be a fraction in (0, 1] or '<k>/class', got {v!r}") from None
    if not 0 < x <= 1:
        raise ConfigError(f"{path}: must be a fraction in (0, 1] or '<k>/class', got {v!r}")
    return None if x == 1 else x


def _heads(v: Any, path: str) -> tuple[str, ...]:
    if isinstance(v, str):
        names = [h.strip() for h in v.split(",") if h.strip()]
    elif isinstance(v, (list, tuple)):
        names = [str(h).strip() for h in v if str(h).strip()]
    else:
        raise ConfigError(f"{path}: must be a head name or a list of names, got {v!r}")
    if not names:
        raise ConfigError(f"{path}: a task needs at least one head")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: a head is listed twice ({', '.join(names)})")
    return tuple(names)


def _head_params(v: Any, path: str) -> dict[str, dict[str, Any]]:
    d = to_mapping(v, path)
    for k, p in d.items():
        if not isinstance(p, Mapping):
            raise ConfigError(f"{path}.{k}: must be a mapping of the head's parameters, got {p!r}")
    return {k: {str(a): b for a, b in p.items()} for k, p in d.items()}


def _weights(v: Any, path: str) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    if s.lower() in ("", "random", "none", "null"):
        return None
    if "/" in s or s.startswith("~"):
        if not s.startswith(("hf:", "http")) and (s.startswith(("~", "/", ".")) or Path(s).expanduser().exists()):
            return str(Path(s).expanduser())
    return s


def _data(v: Any, path: str) -> dict[str, Any]:
    d = to_mapping(v, path)
    if isinstance(d.get("root"), str):
        d["root"] = str(Path(d["root"]).expanduser())
    return d


# ------------------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class SplitConfig:
    """How cases are split. ``kind``: ``official`` (the dataset's own; a seeded, stratified, patient-level
    70/10/20 split when it has none), ``fractions`` (patient-level, seeded) or ``folds`` (patient k-fold)."""

    kind: str = opt("official", norm=choice("official", "fractions", "folds"), type="official|fractions|folds",
                    help="official, fractions or folds")
    fractions: tuple[float, ...] | None = opt(None, type="[train, val, test]",
                                              help="fractions: train/val/test (or train/test) shares summing to 1")
    folds: int | None = opt(None, norm=to_int(2, optional=True), type="int", help="folds: number of folds k")
    fold: int = opt(0, norm=to_int(0), type="int", help="folds: which fold is the test fold")
    val_fraction: float = opt(0.2, norm=to_float(0, 1), type="float",
                              help="folds: share of the training patients held out for validation")
    seed: int | None = opt(None, norm=to_int(optional=True), type="int|null",
                           help="split seed (null: the task's seed)")

    def __post_init__(self) -> None:
        if self.kind == "fractions":
            fr = self.fractions
            try:
                vals = tuple(float(x) for x in (fr.split(",") if isinstance(fr, str) else fr))  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise ConfigError(f"fractions must be three numbers [train, val, test], got {fr!r}") from None
            if len(vals) not in (2, 3) or min(vals) < 0 or abs(sum(vals) - 1) > 1e-6 or vals[0] <= 0 \
                    or vals[-1] <= 0:
                raise ConfigError(f"fractions must be [train, val, test] or [train, test] shares summing to 1 "
                                  f"with train and test > 0, got {fr!r}")
            object.__setattr__(self, "fractions", vals)
        elif self.fractions is not None:
            raise ConfigError(f"fractions is only used with kind: fractions (kind is {self.kind})")
        if self.kind == "folds":
            if self.folds is None:
                raise ConfigError("folds (number of folds) is required with kind: folds")
            if not 0 <= self.fold < self.folds:
                raise ConfigError(f"fold {self.fold} out of range for {self.folds} folds")
        elif self.folds is not None:
            raise ConfigError(f"folds is only used with kind: folds (kind is {self.kind})")


def parse_split(v: Any, path: str = "split", source: str | None = None) -> SplitConfig:
    """``official``, ``fractions:0.7,0.1,0.2``, ``folds:5:0``, ``{fractions: [...], seed: s}``,
    ``{folds: 5, fold: 0}`` or the canonical ``{kind: ..., ...}`` mapping."""
    if isinstance(v, SplitConfig):
        return v
    if v is None:
        return SplitConfig()
    if isinstance(v, str):
        kind, _, rest = v.strip().partition(":")
        try:
            if kind == "official" and not rest:
                return SplitConfig()
            if kind == "fractions":
                return SplitConfig(kind="fractions", fractions=tuple(float(x) for x in rest.split(",")))  # type: ignore[arg-type]
            if kind == "folds":
                k, _, i = rest.partition(":")
                return SplitConfig(kind="folds", folds=int(k), fold=int(i or 0))
        except ValueError:
            pass
        except ConfigError as e:
            raise ConfigError(e.problem, source) from None
        raise bad_value(path, f"must be official, fractions:a,b,c or folds:k:i, got {v!r}", source)
    if not isinstance(v, Mapping):
        raise bad_value(path, f"must be official, fractions:a,b,c, folds:k:i or a mapping, got {v!r}", source)
    raw = dict(v)
    if "kind" not in raw:
        raw["kind"] = "fractions" if "fractions" in raw else "folds" if "folds" in raw else "official"
    return parse_section(SplitConfig, raw, path, source)


@dataclass(frozen=True)
class FeaturesConfig(EngineOptions):
    """What the encoder is asked for (:class:`~medprobe.features.config.EngineOptions`, shared with the engine's
    :class:`~medprobe.features.config.ExtractConfig`) and how features become a head's input."""

    layers: Layers = opt(Layers("auto"), norm=to_layers, type="auto|last|four|all|2,5,8,11",
                         help="blocks to extract (auto: the family's default, last for classification, four for "
                              "segmentation)")
    select: int | None = opt(None, norm=to_int(optional=True), type="int|null",
                             help="use only this one extracted block (negative counts from the end)")
    use: str = opt("auto", norm=choice("auto", "last", "concat"), type="auto|last|concat",
                   help="the last extracted block, or all of them concatenated (auto: the family's default)")
    token: str = opt("cls", norm=choice(*TOKENS), type="|".join(TOKENS), help="vector per image: class token, "
                     "mean patch token or both")
    pooling: str = opt("mean", norm=choice("mean", "max"), type="mean|max", help="volumes: slice pooling")


@dataclass(frozen=True)
class MetricsConfig:
    """Scoring options (confidence intervals, segmentation distances, outputs)."""

    bootstrap: int = opt(1000, norm=to_int(0), type="int", help="bootstrap resamples for 95% CIs (0: none)")
    alpha: float = opt(0.05, norm=to_float(0, 1, open_lo=True), type="float", help="1 - CI level")
    nsd_tolerance_mm: float = opt(1.0, norm=to_float(0), type="float", help="segmentation: NSD tolerance (mm)")
    empty_policy: str = opt("nan", norm=choice("nan", "one", "worst"), type="nan|one|worst",
                            help="segmentation: score of a class absent from both prediction and truth")
    empty_prediction: str = opt("worst", norm=choice("worst", "exclude"), type="worst|exclude",
                                help="segmentation: HD95/ASD of a class the truth holds and the prediction misses "
                                     "(worst: the image diagonal, in the distances' unit; exclude: left out of the "
                                     "means); the count of such cases is recorded either way")
    overlays: int = opt(4, norm=to_int(0), type="int", numbers=False, help="overlay figures written per head")

    # hashed sparsely: the fields above empty_prediction always (hashes as before it existed), a later one only
    # when it differs from its default
    hash_always: ClassVar[tuple[str, ...]] = ("bootstrap", "alpha", "nsd_tolerance_mm", "empty_policy")


@dataclass(frozen=True)
class AuditConfig:
    """The leakage audit run before any number is trusted (:mod:`medprobe.audit`): exact and near-duplicate
    images within and across splits. Only ``mode: drop`` changes numbers (test cases duplicating a train/val
    case are removed), so the section enters the config hash only then."""

    mode: str = opt("warn", norm=choice("warn", "error", "strict", "drop", "off"), type="warn|error|strict|drop|off",
                    help="cross-split duplicates and label conflicts (alike images labelled differently): warn "
                         "(one line, findings in the record), error (stop on a test case alike a train/val case), "
                         "strict (error, and stop on any label conflict), drop (remove those test cases and test "
                         "cases in a label conflict; changes numbers), off (no audit)")
    near_threshold: int = opt(10, norm=to_int(0, 64), type="int",
                              help="perceptual-hash candidates: at most this many of 64 bits differ")
    near_correlation: float = opt(0.97, norm=to_float(-1, 1), type="float",
                                  help="a candidate is a near duplicate when its 32x32 thumbnails correlate this much")
    feature_threshold: float = opt(0.998, norm=to_float(0, 1), type="float",
                                   help="cached-feature near duplicate: centred cosine similarity at least this "
                                        "(0.98 flagged ~0.05% of all PneumoniaMNIST pairs with a pretrained ViT)")
    features: bool = opt(True, norm=to_bool, type="bool",
                         help="also compare the run's cached features (blocked similarity search)")


def _templates(v: Any, path: str) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else list(v or ())
    out = tuple(str(t) for t in items)
    bad = [t for t in out if "{}" not in t]
    if bad:
        raise ConfigError(f"{path}: a template needs '{{}}' where the class name goes, got {bad[0]!r}")
    return out


def _classnames(v: Any, path: str) -> tuple[str, ...] | None:
    if v is None:
        return None
    items = [p.strip() for p in v.split(",")] if isinstance(v, str) else [str(x) for x in v]
    if not items or any(not x for x in items):
        raise ConfigError(f"{path}: class names must be non-empty text, got {v!r}")
    return tuple(items)


@dataclass(frozen=True)
class PromptsConfig:
    """Zero-shot prompts (the ``zeroshot`` head): templates x class names, ensembled as open_clip's zero-shot
    classifier. Left empty it enters no config hash (a task without prompts hashes as before)."""

    templates: tuple[str, ...] = opt((), norm=_templates, type="[str]",
                                     help="templates with '{}' for the class name, e.g. 'a chest X-ray showing {}.' "
                                          "(empty: 'a photo of a {}.'); embeddings averaged over templates")
    classnames: tuple[str, ...] | None = opt(None, norm=_classnames, type="[str]|null",
                                             help="the class names put in the templates, one per class in class "
                                                  "order (null: the dataset's class names)")


_SECTIONS: dict[str, type] = {"split": SplitConfig, "preprocess": PreprocessConfig, "features": FeaturesConfig,
                              "metrics": MetricsConfig, "audit": AuditConfig, "prompts": PromptsConfig}
_MERGED = ("data", "preprocess", "features", "metrics", "head_params", "notes", "encoder_options", "audit", "prompts")


def _section(cls: type) -> Any:
    def norm(v: Any, path: str) -> Any:
        return parse_split(v, path) if cls is SplitConfig else parse_section(cls, v, path, None)

    return norm


@dataclass(frozen=True)
class TaskSpec:
    """A runnable task: dataset + split + encoder + preprocessing + features + heads + metrics.

    Build it with :func:`parse_task` (or ``TaskSpec(**raw)``: every value is normalised the same way)."""

    name: str = opt("task", norm=to_str(), type="str", numbers=False, help="task name (rows are grouped by it)")
    kind: str | None = opt(None, norm=to_str(optional=True), type="str|null", numbers=False,
                           help="task family (null: from the dataset's task type); see 'medprobe config families'")
    dataset: str = opt("phantom:xray2d-binary", norm=to_str(), type="kind:arg",
                       help="dataset, e.g. medmnist:pneumoniamnist, msd:/data/Task04, csv:labels.csv")
    data: dict[str, Any] = opt(factory=dict, norm=_data, type="mapping", help="the dataset kind's options")
    split: SplitConfig = opt(factory=SplitConfig, norm=_section(SplitConfig), type="section",
                             help="train/val/test split")
    encoder: str = opt("dinov3-vits16", norm=to_str(), type="str", help="registry name ('medprobe models')")
    weights: str | None = opt(None, norm=_weights, type="path|hub id|random[:seed=N]|null",
                              help="weights (null: random, labelled untrained)")
    verify_weights: bool = opt(True, norm=to_bool, type="bool", numbers=False,
                               help="check the SHA-256 prefix of Meta checkpoint names")
    encoder_options: dict[str, Any] = opt(factory=dict, norm=to_mapping, type="mapping",
                                          help="family-specific encoder options (e.g. onnx_output)")
    preprocess: PreprocessConfig = opt(factory=PreprocessConfig, norm=_section(PreprocessConfig), type="section",
                                       help="preprocessing")
    features: FeaturesConfig = opt(factory=FeaturesConfig, norm=_section(FeaturesConfig), type="section",
                                   help="features")
    heads: tuple[str, ...] = opt(("logreg",), norm=_heads, type="list", numbers=False,
                                 help="heads fitted on the features (one result row each)")
    head_params: dict[str, dict[str, Any]] = opt(factory=dict, norm=_head_params, type="mapping",
                                                 help="per head: its hyper-parameters")
    metrics: MetricsConfig = opt(factory=MetricsConfig, norm=_section(MetricsConfig), type="section",
                                 help="metrics")
    audit: AuditConfig = opt(factory=AuditConfig, norm=_section(AuditConfig), type="section",
                             help="leakage audit (duplicates across splits)")
    prompts: PromptsConfig = opt(factory=PromptsConfig, norm=_section(PromptsConfig), type="section",
                                 help="zero-shot prompts (templates x class names) of the zeroshot head")
    budget: float | str | None = opt(None, norm=_budget, type="fraction|<k>/class|kshot:<k>x<draws>|null",
                                     help="share of training labels used (nested per patient); kshot:8x20: k = 8 "
                                          "per class, 20 seeded draws, mean and CI over draws")
    seed: int = opt(0, norm=to_int(), type="int", help="seed of heads, splits and random weights")
    device: str | None = opt(None, norm=to_str(optional=True), type="str|null", numbers=False,
                             help="cpu, cuda, cuda:1 (null: cuda when available)")
    cache_dir: str | None = opt(None, norm=to_str(optional=True), type="path|null", numbers=False,
                                help="feature cache root (null: ./medprobe-cache or $MEDPROBE_CACHE)")
    notes: dict[str, Any] = opt(factory=dict, norm=to_mapping, type="mapping", numbers=False,
                                help="free-form notes stored with the rows")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            norm = f.metadata.get("norm")
            if norm is not None:
                object.__setattr__(self, f.name, norm(getattr(self, f.name), f.name))
        # the family's own data options (e.g. slides: tiling, tissue) typed; list-valued dataset options from text
        data = parse_family_data(self.kind, self.data)
        object.__setattr__(self, "data", _dataset_option_values(self.dataset, data))

    # ------------------------------------------------------------------------------ canonical forms
    def to_dict(self) -> dict[str, Any]:
        """The canonical plain-data form (every default filled in)."""
        return copy.deepcopy(as_dict(self))

    def with_overrides(self, **kw: Any) -> TaskSpec:
        """A copy with ``kw`` applied: mapping sections are merged key by key, other values replaced."""
        return parse_task(merge_raw(self.to_dict(), kw), source=None)

    def numbers_dict(self) -> dict[str, Any]:
        """Everything that changes a number, canonical (no names, devices, paths to caches or notes)."""
        return numbers_only(self)

    def config_hash(self, head: str) -> str:
        """Hash of everything that changes this head's numbers: one task gives one hash whether it was
        written as CLI flags, a YAML file or a sweep cell."""
        d = self.numbers_dict()
        if self.audit.mode != "drop":  # warn / error / off leave every number as it is
            d.pop("audit", None)
        if not self.prompts.templates and self.prompts.classnames is None:  # no prompts: hashes as before
            d.pop("prompts", None)
        d.pop("head_params", None)
        d["head"] = head
        d["head_params"] = self.head_params.get(head, {})
        d["defaults"] = DEFAULTS_EPOCH
        from medprobe.heads.generations import HEAD_GENERATIONS

        if head in HEAD_GENERATIONS:
            d["head_epoch"] = HEAD_GENERATIONS[head]
        if self.weights and Path(self.weights).expanduser().exists():  # local weights: their content, not the path
            from medprobe.utils import weights_content_id

            try:
                d["weights"] = weights_content_id(self.weights)
            except OSError as e:
                raise ConfigError(f"weights cannot be read ({e.strerror or type(e).__name__})", self.weights) from None
        return hash_obj(d, n=16)

    @property
    def split_seed(self) -> int:
        return self.seed if self.split.seed is None else self.split.seed


# The generation of medprobe's number-changing defaults, part of every config hash: bumped whenever a default
# that a task does not spell out changes what it computes, so a stored row made under the old defaults is not
# taken for the new run's result (the features cache has its own keys and is unaffected).
#   1: milestone 1
#   2: decoders feature-only by default (use_image false); `none` for classification = the pixel grid
DEFAULTS_EPOCH = 2
# (a head whose own computation changed since hashes with its generation: medprobe.heads.generations)


# ------------------------------------------------------------------------------------------ parsing
def merge_raw(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Raw option mappings merged: the mapping sections (data, preprocess, features, metrics, head_params,
    notes, encoder_options) key by key (head_params and a family's data sections such as ``data.tiling`` one
    level deeper), everything else replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if k in _MERGED and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            merged = dict(out[k])
            for k2, v2 in v.items():
                if k in ("head_params", "data") and isinstance(v2, Mapping) and isinstance(merged.get(k2), Mapping):
                    merged[k2] = {**merged[k2], **copy.deepcopy(dict(v2))}
                else:
                    merged[k2] = copy.deepcopy(v2)
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_task(raw: Mapping[str, Any], source: str | Path | None = None) -> TaskSpec:
    """The one parser: a raw mapping (from YAML, CLI flags or a sweep cell) -> a canonical :class:`TaskSpec`.

    ``head`` is accepted for ``heads``. Errors name ``source`` and the key path."""
    src = str(source) if source is not None else None
    if not isinstance(raw, Mapping):
        raise ConfigError("a task must be a mapping of options", src)
    raw = dict(raw)
    if "head" in raw:
        if "heads" in raw:
            raise ConfigError("give 'heads' or 'head', not both", src)
        raw["heads"] = raw.pop("head")
    flds = {f.name: f for f in dataclasses.fields(TaskSpec)}
    kw: dict[str, Any] = {}
    for key, value in raw.items():
        k = str(key)
        if k not in flds:
            raise unknown_key("", k, sorted(flds), src)
        if k in _SECTIONS:
            cls = _SECTIONS[k]
            kw[k] = parse_split(value, k, src) if cls is SplitConfig else parse_section(cls, value, k, src)
            continue
        norm = flds[k].metadata.get("norm")
        try:
            kw[k] = norm(value, k) if norm is not None else value
        except ConfigError as e:
            raise ConfigError(e.problem, src) from None
    try:
        return TaskSpec(**kw)
    except ConfigError as e:
        raise ConfigError(e.problem, src) from None


def read_yaml(path: str | Path, what: str = "task") -> dict[str, Any]:
    """A YAML file as a mapping; a missing file, bad YAML or bad encoding is one line naming the file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what} file not found", p)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not a UTF-8 text file", p) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({str(e).splitlines()[0]})", p) from None
    if raw is None or raw == {}:  # never run every default (a full encoder on a phantom) for an empty file
        raise ConfigError(f"the {what} file is empty (no keys): nothing to run (e.g. dataset: "
                          "medmnist:pneumoniamnist, encoder: dinov3-vits16)", p)
    if not isinstance(raw, dict):
        raise ConfigError(f"a {what} file must be a mapping of options", p)
    return raw


def load_task_raw(path: str | Path) -> dict[str, Any]:
    """A task YAML's raw mapping with its default name (the file stem)."""
    raw = read_yaml(path)
    raw.setdefault("name", Path(path).stem)
    return raw


def load_task(path: str | Path, **overrides: Any) -> TaskSpec:
    """Read a task YAML (every key checked) and apply ``overrides`` (None values ignored)."""
    raw = merge_raw(load_task_raw(path), {k: v for k, v in overrides.items() if v is not None})
    return parse_task(raw, source=Path(path).expanduser())


def _text_list_params(dataset: str) -> set[str]:
    """Keyword parameters of the dataset kind's factory that take a list of strings and no plain string (e.g. a
    folder's ``extensions``); empty when the kind is unknown (reported by :func:`check_data_options`)."""
    from medprobe.data import dataset_factory

    try:
        fn = dataset_factory(dataset)
    except ConfigError:
        return set()
    out = set()
    for name, p in inspect.signature(fn).parameters.items():
        parts = [a.strip() for a in str(p.annotation).split("|")]
        if any(a.startswith(("Sequence[str", "list[str", "tuple[str")) for a in parts) \
                and not any(a in ("str", "Any", "object") or a.startswith("str ") for a in parts):
            out.add(name)
    return out


def _dataset_option_values(dataset: str, data: dict[str, Any]) -> dict[str, Any]:
    """A dataset option that takes a list of strings, written as one string (``extensions: .png``, ``--data-opt
    extensions=.png,.jpg``), becomes that list (a string would be read character by character)."""
    texts = [k for k, v in data.items() if isinstance(v, str)]
    if not texts:
        return data
    lists = _text_list_params(dataset)
    return {k: ([p.strip() for p in v.split(",") if p.strip()] if k in lists and isinstance(v, str) else v)
            for k, v in data.items()}


def check_data_options(spec: TaskSpec, source: str | Path | None = None, extra: set[str] | None = None) -> None:
    """Dataset options checked against the dataset kind's factory (its keyword parameters, or its ``options``
    attribute when it takes ``**options``); ``extra``: options a task family consumes itself (default: those
    the task's family declares, :func:`medprobe.pipeline.options.family_data_keys`)."""
    from medprobe.data import dataset_factory

    if extra is None:
        extra = family_data_keys(spec.kind, spec.data)

    try:
        fn = dataset_factory(spec.dataset)
    except ConfigError as e:
        raise ConfigError(f"dataset: {e.problem}", source) from None
    params = inspect.signature(fn).parameters
    declared = getattr(fn, "options", None)  # a factory taking **options may list them
    if declared is None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = set(declared) if declared is not None else {n for n, p in params.items()
                                                        if n != next(iter(params)) and p.kind is not p.VAR_POSITIONAL}
    valid = sorted(names | set(extra or ()))
    for k in spec.data:
        if k not in valid:
            raise unknown_key("data", k, valid, str(source) if source is not None else None)


def config_keys() -> Iterator[tuple[str, str, str, bool, str]]:
    """Every key of a task config: ``(path, type, default, changes numbers, help)``; the ``data:`` options a
    task family reads itself follow ``data`` (help starting with ``[family]``)."""
    for f in dataclasses.fields(TaskSpec):
        if f.name in _SECTIONS:
            yield from describe_keys(_SECTIONS[f.name], prefix=f"{f.name}.")
            continue
        yield describe_field(f, f.name)
        if f.name == "data":
            for fam, schema in sorted(data_schemas().items()):
                for path, typ, default, numbers, help_ in describe_keys(schema, prefix="data."):
                    yield path, typ, default, numbers, f"[{fam}] {help_}"


__all__ = ["AuditConfig", "FeaturesConfig", "MetricsConfig", "PromptsConfig", "SplitConfig", "TaskSpec",
           "check_data_options", "config_keys", "load_task", "load_task_raw", "merge_raw", "parse_split", "parse_task",
           "read_yaml"]
