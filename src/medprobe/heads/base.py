"""Head base class, target validation and the head registry.

Heads follow scikit-learn: hyper-parameters are ``__init__`` arguments stored verbatim, learned state
lives in attributes ending in ``_``, ``fit(X, y, X_val=None, y_val=None)`` returns ``self``.
A new head is one new file with a ``@register_head("name")`` class (a built-in one also lists its module in
``BUILTIN_MODULES``: the registry imports those on first use, so it is complete whatever was imported first).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.registry import Registry

TASKS = ("binary", "multiclass", "multilabel", "ordinal")
INPUT_KINDS = ("vector", "bag", "dense", "pair")

# one registry for every head: keyed by (name, input kind), so ``linear`` names both the linear layer on
# vectors and the linear segmentation head on dense grids; a task family asks for the kinds it can feed. The
# built-in heads register themselves when their modules are imported (lazily, on the first question).
BUILTIN_MODULES = ("medprobe.heads.logreg", "medprobe.heads.knn", "medprobe.heads.linear", "medprobe.heads.ridge",
                   "medprobe.heads.mil", "medprobe.heads.seg_heads", "medprobe.heads.affinity",
                   "medprobe.heads.em_baselines", "medprobe.registration.methods", "medprobe.heads.prototype",
                   "medprobe.heads.retrieval", "medprobe.heads.zeroshot",
                   "medprobe.heads.cox")
HEADS: Registry[type[Any]] = Registry("head", builtin=BUILTIN_MODULES, where="heads")
_ALIASES: dict[tuple[str, str], str] = {}  # (alias, input kind) -> name; filled by register_head


def register_head(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type[Any]], type[Any]]:
    """Class decorator: register head class ``cls`` under ``name`` (and ``aliases``).

    The class declares its capabilities: ``input_kind`` (``vector``: one feature vector per case, ``bag``:
    a variable-size set of vectors, ``dense``: patch grids, ``pair``: fixed/moving features), ``tasks``
    (the dataset task types it fits) and ``outputs`` (``proba``, ``values``, ``proba_ks``: several k at once,
    ``logits``). Its hyper-parameters are its ``__init__`` keywords (or ``defaults`` for torch modules)."""

    def deco(cls: type[Any]) -> type[Any]:
        kind = getattr(cls, "input_kind", "vector")
        if kind not in INPUT_KINDS:
            raise ConfigError(f"head {name!r} declares input_kind {kind!r}; use one of {', '.join(INPUT_KINDS)}",
                              "medprobe.heads")
        key = (name, kind)
        old = HEADS.find(key, load=False)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ConfigError(f"head {name!r} for {kind} input is registered twice", "medprobe.heads")
        cls.name = name
        HEADS.register(key, cls)
        for a in aliases:
            _ALIASES[(a, kind)] = name
        return cls

    return deco


def unregister_head(name: str, input_kind: str = "vector") -> None:
    """Remove a registered head (tests and plug-ins that register temporary heads)."""
    HEADS.unregister((name, input_kind))
    for k in [k for k, v in _ALIASES.items() if v == name and k[1] == input_kind]:
        del _ALIASES[k]


def head_names(input_kind: str | None = None) -> list[str]:
    """Names of the registered heads (of one input kind), sorted."""
    return sorted({n for n, k in HEADS if input_kind is None or k == input_kind})


def head_classes() -> list[type[Any]]:
    """Every registered head class, by name then input kind."""
    return [cls for _, cls in sorted(HEADS.items(), key=lambda kv: kv[0])]


def _lookup(name: str, kind: str) -> type[Any] | None:
    HEADS.load_builtins()
    return HEADS.find((_ALIASES.get((name, kind), name), kind))


def find_head(name: str, input_kinds: tuple[str, ...] | list[str], task: str | None = None,
              where: str | None = None) -> type[Any]:
    """The head ``name`` that takes one of ``input_kinds`` (the first that matches) and fits ``task``.

    Errors say why: unknown name, a head for other inputs, or a task type the head does not fit."""
    for kind in input_kinds:
        cls = _lookup(name, kind)
        if cls is None:
            continue
        tasks = tuple(getattr(cls, "tasks", ()))
        if task is not None and tasks and task not in tasks:
            raise ConfigError(f"head {name!r} does not fit {task} tasks (it fits {', '.join(tasks)})",
                              where or "heads")
        return cls
    others = sorted({k for n, k in HEADS if n == name or _ALIASES.get((name, k)) == n})
    if others:
        raise ConfigError(f"head {name!r} takes {'/'.join(others)} input; this task feeds "
                          f"{'/'.join(input_kinds)} (heads for it: {', '.join(_names_for(input_kinds, task))})",
                          where or "heads")
    raise ConfigError(HEADS.unknown_message(name, _names_for(input_kinds, task)), where or "heads")


def _names_for(input_kinds: tuple[str, ...] | list[str], task: str | None) -> list[str]:
    return sorted({n for (n, k), c in HEADS.items() if k in input_kinds
                   and (task is None or not getattr(c, "tasks", ()) or task in c.tasks)})


def head_param_names(cls: type[Any]) -> list[str]:
    """The hyper-parameters a head accepts (what ``head_params.<head>`` may set)."""
    extra = getattr(cls, "extra_params", ())
    if isinstance(getattr(cls, "defaults", None), dict) and cls.defaults:
        return sorted({*cls.defaults, *extra})
    fixed = {"self", "task", "n_classes"}
    return sorted({n for n in inspect.signature(cls.__init__).parameters if n not in fixed} | set(extra))


def get_head_class(name: str, input_kind: str = "vector") -> type[Head]:
    """The head ``name`` (or an alias) registered for ``input_kind``; unknown -> one-line ConfigError."""
    cls = _lookup(name, input_kind)
    if cls is None:
        raise ConfigError(HEADS.unknown_message(name, head_names(input_kind)), "heads")
    return cls


def create_head(name: str, task: str = "multiclass", input_kind: str | None = None, **hp: Any) -> Head:
    """Build the vector/bag head ``name`` for ``task`` with hyper-parameters ``hp`` (unknown ones ->
    ConfigError). ``input_kind``: which registration of ``name`` (default: vector, else bag)."""
    cls = get_head_class(name, input_kind) if input_kind else find_head(name, ("vector", "bag"))
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    bad = sorted(set(hp) - allowed)
    if bad:
        raise ConfigError(f"unknown hyper-parameter(s) {', '.join(bad)} "
                          f"(allowed: {', '.join(sorted(allowed - {'task'}))})", f"head {name}")
    return cls(task=task, **hp)  # type: ignore[no-any-return]


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return v


class Head:
    """Base of all heads. Subclasses set ``tasks`` and implement ``fit`` and ``predict_proba``."""

    name: str = "head"
    tasks: tuple[str, ...] = TASKS
    input_kind: str = "vector"
    outputs: tuple[str, ...] = ("proba",)
    probe: str = ""  # the evaluation protocol it implements ("linear": a linear probe); "" = its own name

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0) -> None:
        self.task = task
        self.n_classes = n_classes
        self.seed = seed

    # -- scikit-learn style API -----------------------------------------------------------------
    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> Head:  # pragma: no cover
        raise NotImplementedError

    def predict_proba(self, X: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def predict(self, X: Any) -> np.ndarray:
        """Class index (argmax) or, for multi-label, the 0/1 matrix thresholded at 0.5."""
        p = self.predict_proba(X)
        if self.task == "multilabel":
            return (p >= 0.5).astype(np.int64)
        return p.argmax(axis=1).astype(np.int64)

    def hyper_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments, as given."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {n: getattr(self, n) for n in names}

    def selected_params(self) -> dict[str, Any]:
        """Values chosen during ``fit`` (best C, k, epoch ...); empty before ``fit``."""
        return {}

    def get_params(self) -> dict[str, Any]:
        """JSON-able hyper-parameters plus ``head`` name and, once fitted, the ``selected`` values."""
        out = {"head": self.name, **_jsonable(self.hyper_params())}
        sel = self.selected_params()
        if sel:
            out["selected"] = _jsonable(sel)
        json.dumps(out)  # fail loudly here rather than in the results database
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyper_params().items())
        return f"{type(self).__name__}({args})"

    # -- helpers for subclasses -----------------------------------------------------------------
    def _where(self) -> str:
        return f"head {self.name}"

    def _check_task(self) -> None:
        if self.task not in self.tasks:
            raise ConfigError(f"task {self.task!r} not supported (supported: {', '.join(self.tasks)})",
                              self._where())

    def _check_X(self, X: Any, what: str = "X", dim: int | None = None) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim != 2:
            raise ConfigError(f"{what} must be a 2-D feature matrix (N, C), got shape {X.shape}",
                              self._where())
        if not np.issubdtype(X.dtype, np.number):
            raise ConfigError(f"{what} must be numeric, got dtype {X.dtype}", self._where())
        if not np.isfinite(X).all():
            raise ConfigError(f"{what} contains NaN or inf", self._where())
        if dim is not None and X.shape[1] != dim:
            raise ConfigError(f"{what} has {X.shape[1]} features, the head was fitted on {dim}",
                              self._where())
        return X

    def _check_y(self, y: Any, n: int, what: str = "y", n_classes: int | None = None) -> tuple[np.ndarray, int]:
        """Validate targets; returns (y as int64, number of classes / labels)."""
        self._check_task()
        y = np.asarray(y)
        if y.shape[0] != n:
            raise ConfigError(f"{what} has {y.shape[0]} rows but the features have {n}", self._where())
        if y.dtype.kind == "f":
            if not np.isfinite(y).all() or not np.all(y == np.round(y)):
                raise ConfigError(f"{what} must hold integer labels", self._where())
        elif y.dtype.kind not in "iub":
            raise ConfigError(f"{what} must hold integer labels, got dtype {y.dtype}", self._where())
        y = y.astype(np.int64)
        k = n_classes if n_classes is not None else self.n_classes
        if self.task == "multilabel":
            if y.ndim != 2:
                raise ConfigError(f"multilabel {what} must be (N, L) 0/1, got shape {y.shape}", self._where())
            if y.size and (y.min() < 0 or y.max() > 1):
                raise ConfigError(f"multilabel {what} must be 0/1", self._where())
            if k is not None and y.shape[1] != k:
                raise ConfigError(f"{what} has {y.shape[1]} labels, expected {k}", self._where())
            return y, y.shape[1]
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ConfigError(f"{self.task} {what} must be (N,) class indices, got shape {y.shape}",
                              self._where())
        if k is None:
            k = 2 if self.task == "binary" else int(y.max()) + 1 if y.size else 0
        if self.task == "binary" and k != 2:
            raise ConfigError(f"binary task needs n_classes=2, got {k}", self._where())
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ConfigError(f"{what} labels must lie in 0..{k - 1} for task {self.task!r} "
                              f"(found {int(y.min())}..{int(y.max())})", self._where())
        if k < 2:
            raise ConfigError(f"{what} needs at least 2 classes, found {k}", self._where())
        return y, k

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise ConfigError("head is not fitted; call fit() first", self._where())


def one_hot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y), k), dtype=np.float64)
    out[np.arange(len(y)), y] = 1.0
    return out


def score(task: str, y: np.ndarray, proba: np.ndarray, metric: str) -> float:
    """Validation score used for model selection: ``auc`` (binary / macro OvR / mean per-label) or
    ``accuracy`` (argmax, or 0.5 threshold for multi-label). AUC is :func:`medprobe.numerics.roc_auc`, the
    one the metrics report. Degenerate AUCs count as 0.5 (multi-label, binary); a multi-class class absent
    or alone is left out of the mean (0.5 when none is left)."""
    from medprobe.numerics import roc_auc

    if metric == "accuracy":
        if task == "multilabel":
            return float(((proba >= 0.5) == (y == 1)).mean())
        return float((proba.argmax(1) == y).mean())
    if metric != "auc":
        raise ConfigError(f"unknown selection metric {metric!r} (use 'auc' or 'accuracy')", "heads")
    if task == "multilabel":
        aucs = np.array([roc_auc(y[:, j] == 1, proba[:, j]) for j in range(y.shape[1])])
        return float(np.mean(np.nan_to_num(aucs, nan=0.5)))
    k = proba.shape[1]
    if k == 2:
        auc = roc_auc(y == 1, proba[:, 1])
        return 0.5 if np.isnan(auc) else auc
    aucs = np.array([roc_auc(y == c, proba[:, c]) for c in range(k)])
    return float(np.nanmean(aucs)) if not np.isnan(aucs).all() else 0.5


def default_metric(task: str) -> str:
    return "accuracy" if task in ("multiclass", "ordinal") else "auc"


def holdout_split(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of row indices into (train, held-out); stratified by class (or, for multi-label,
    by the label pattern of the rarest positive label), at least one held-out row."""
    rng = np.random.default_rng(seed)
    n = len(y)
    strata = y if y.ndim == 1 else np.where(y.any(1), np.argmin(np.where(y == 1, y.sum(0), n + 1), 1), -1)
    val: list[np.ndarray] = []
    for c in np.unique(strata):
        idx = np.flatnonzero(strata == c)
        rng.shuffle(idx)
        m = int(round(frac * len(idx)))
        if len(idx) >= 2:
            val.append(idx[: max(m, 1)])
    v = np.sort(np.concatenate(val)) if val else rng.choice(n, max(1, int(frac * n)), replace=False)
    mask = np.ones(n, bool)
    mask[v] = False
    return np.flatnonzero(mask), v
