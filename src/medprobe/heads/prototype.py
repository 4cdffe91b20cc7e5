"""Few-shot heads: ``prototype`` (nearest class mean) and ``simpleshot`` (SimpleShot: centre, L2-normalise,
nearest class mean; Wang et al. 2019, "CL2N").

Both keep one prototype per class, the mean of that class's (transformed) training vectors, and score a case by
its squared Euclidean distance ``d_c`` to each prototype: ``proba = softmax(-d / T)`` over classes (ProtoNets'
rule with a temperature). ``temperature: null`` (default) sets ``T`` from the training data, the mean squared
distance of the training vectors to their own prototype (recorded as ``selected.temperature``), so the
probabilities are not saturated whatever the feature scale; the nearest prototype (argmax) does not depend on
``T``. ``simpleshot`` subtracts the mean training vector, then L2-normalises every vector (``transform: cl2n``);
``prototype`` uses the vectors as they are (``transform: none``; ``l2`` normalises without centring).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, register_head

TRANSFORMS = ("none", "l2", "cl2n")


@register_head("prototype")
class PrototypeHead(Head):
    """Nearest class mean (squared Euclidean), probabilities ``softmax(-d / T)``."""

    tasks = ("binary", "multiclass", "ordinal")
    default_transform = "none"

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 transform: str | None = None, temperature: float | None = None) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.transform = transform
        self.temperature = temperature

    def _transform(self, X: np.ndarray) -> np.ndarray:
        t = self.transform or self.default_transform
        Z = X.astype(np.float64)
        if t == "cl2n":
            Z = Z - self.centre_
        if t in ("l2", "cl2n"):
            Z = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        return Z

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> PrototypeHead:
        X = self._check_X(X)
        y, k = self._check_y(y, len(X))
        t = self.transform or self.default_transform
        if t not in TRANSFORMS:
            raise ConfigError(f"transform must be one of {', '.join(TRANSFORMS)}, got {t!r}", self._where())
        if self.temperature is not None and not float(self.temperature) > 0:
            raise ConfigError(f"temperature must be > 0 (or null: from the data), got {self.temperature!r}",
                              self._where())
        self.n_features_in_ = X.shape[1]
        self.k_classes_ = k
        self.centre_ = X.astype(np.float64).mean(axis=0)
        Z = self._transform(X)
        present = np.bincount(y, minlength=k) > 0
        self.prototypes_ = np.zeros((k, Z.shape[1]))
        for c in np.flatnonzero(present):
            self.prototypes_[c] = Z[y == c].mean(axis=0)
        self.present_ = present  # a class without training cases gets probability 0
        spread = float(np.mean(((Z - self.prototypes_[y]) ** 2).sum(axis=1)))
        self.temperature_ = float(self.temperature) if self.temperature is not None else max(spread, 1e-12)
        return self

    def distances(self, X: Any) -> np.ndarray:
        """Squared Euclidean distance of each (transformed) case to each class prototype, (N, K)."""
        self._check_fitted("prototypes_")
        Z = self._transform(self._check_X(X, dim=self.n_features_in_))
        d = (Z ** 2).sum(1)[:, None] - 2.0 * Z @ self.prototypes_.T + (self.prototypes_ ** 2).sum(1)[None, :]
        return np.maximum(d, 0.0)

    def predict_proba(self, X: Any) -> np.ndarray:
        s = -self.distances(X) / self.temperature_
        s[:, ~self.present_] = -np.inf
        s -= s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "temperature_"):
            return {}
        return {"temperature": round(self.temperature_, 6), "transform": self.transform or self.default_transform}


@register_head("simpleshot")
class SimpleShotHead(PrototypeHead):
    """SimpleShot: centre on the training mean, L2-normalise, nearest class mean."""

    default_transform = "cl2n"
