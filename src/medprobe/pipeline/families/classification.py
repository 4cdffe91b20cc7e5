"""Classification (the study's 2D and 3D classification): one vector per case (or a bag of slice / tile
vectors) -> a head's probabilities -> AUC, accuracy, F1 ... with bootstrap CIs over test cases."""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics import bootstrap_ci, classification_metrics
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, feature_bags, feature_matrix, register_family


def label_matrix(labels: list[Any], task: str) -> np.ndarray:
    if task == "multilabel":
        return np.stack([np.asarray(v, dtype=np.int64).ravel() for v in labels])
    return np.asarray([int(np.asarray(v).ravel()[0]) for v in labels], dtype=np.int64)


def checked_labels(ds: Any) -> tuple[np.ndarray, int]:
    """The dataset's labels as a matrix / vector and its number of classes; labels outside the classes are a
    one-line ConfigError."""
    task = ds.task.type
    y = label_matrix(ds.labels(), task)
    n_classes = ds.task.n_classes or (y.shape[1] if y.ndim == 2 else int(y.max()) + 1)
    if task != "multilabel" and (y.min() < 0 or y.max() >= max(n_classes, 2)):
        raise ConfigError(f"labels outside 0..{n_classes - 1} for a {task} task", ds.name)
    return y, int(n_classes)


def point_metrics(y: np.ndarray, proba: np.ndarray, task: str, classes: Any) -> dict[str, float | None]:
    """Class-averaged point metrics (no CI) of one prediction set, for secondary settings such as other k."""
    m = classification_metrics(y, proba, task, classes=list(classes) or None)
    return {key: (round(v, 6) if np.isfinite(v) else None) for key, v in m.items() if "/" not in key}


@register_family
class ClassificationFamily(TaskFamily):
    name = "classification"
    task_types = ("binary", "multiclass", "multilabel", "ordinal")
    head_inputs = ("vector", "bag")
    tokens = ("cls", "mean")
    headline = ("auc", "acc", "balanced_acc", "f1_macro")
    rank_by = ("auc", "acc", "balanced_acc")
    paired_scores = True

    def budget_labels(self, ds: Any) -> list[Any] | None:
        return ds.labels() if ds.task.type != "multilabel" else None

    def check_head(self, head_cls: type[Any], name: str, ds: Any) -> None:
        if head_cls.input_kind == "bag" and ds.spatial_dims != 3:
            raise ConfigError(f"head {name!r} pools the slices of volumes (or tiles of slides); this dataset is 2D",
                              ds.name)

    def prepare(self, ctx: RunContext) -> None:
        y, n_classes = checked_labels(ctx.dataset)
        ctx.state.update(y=y, n_classes=n_classes)

    def _inputs(self, kind: str, ctx: RunContext) -> Any:
        key = f"inputs_{kind}"
        if key not in ctx.state:
            ctx.state[key] = feature_bags(ctx) if kind == "bag" else feature_matrix(ctx)
        return ctx.state[key]

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        ds, spec = ctx.dataset, ctx.spec
        task, y, n_classes = ds.task.type, ctx.state["y"], ctx.state["n_classes"]
        X = self._inputs(head_cls.input_kind, ctx)
        train, val, test = ctx.train, ctx.val, ctx.test

        def rows(idx: list[int]) -> Any:
            return [X[i] for i in idx] if isinstance(X, list) else X[idx]

        head = head_cls(task=task, n_classes=n_classes, seed=spec.seed, **spec.head_params.get(head_name, {}))
        head.fit(rows(train), y[train], rows(val) if val else None, y[val] if val else None)
        notes: dict[str, Any] = {}
        if "proba_ks" in head_cls.outputs:  # several k from one search; the headline k is scored with CIs
            by_k = head.predict_proba_ks(rows(test))
            proba = by_k[head.k_]
            notes["knn_by_k"] = {str(k): point_metrics(y[test], p, task, ds.task.classes) for k, p in by_k.items()}
        else:
            proba = head.predict_proba(rows(test))
        ci = bootstrap_ci(y[test], proba, task, n_resamples=spec.metrics.bootstrap, seed=spec.seed,
                          alpha=spec.metrics.alpha, classes=list(ds.task.classes) or None)
        ids = ds.ids()
        preds = {"ids": np.asarray([ids[i] for i in test]), "y_true": y[test], "y_score": proba}
        return HeadResult(head=head_name, metrics=ci, predictions=preds, head_params=head.get_params(), notes=notes)
