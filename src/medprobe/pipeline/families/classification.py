"""Classification (the study's 2D and 3D classification): one vector per case (or a bag of slice / tile
vectors) -> a head's probabilities -> AUC, accuracy, F1 ... with bootstrap CIs over test cases."""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics import bootstrap_ci, classification_metrics
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, feature_bags, feature_matrix, register_family
from medprobe.pipeline.fewshot import aggregate_draws, kshot_draws, parse_kshot


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
    head_outputs = ("proba", "proba_ks")
    rank_by = ("auc", "acc", "balanced_acc")
    paired_scores = True
    rescore = "proba"  # metrics of y_score (k-shot: mean over draws of y_score_draws)

    def budget_labels(self, ds: Any) -> list[Any] | None:
        return ds.labels() if ds.task.type != "multilabel" else None

    def check_head(self, head_cls: type[Any], name: str, ds: Any) -> None:
        if not {"proba", "proba_ks"} & set(getattr(head_cls, "outputs", ("proba",))):
            raise ConfigError(f"head {name!r} gives no class probabilities (outputs: "
                              f"{', '.join(getattr(head_cls, 'outputs', ()))}); retrieval heads run with kind: "
                              "retrieval", ds.name)
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

    def head_params(self, head_cls: type[Any]) -> list[str]:
        """The head's own keywords, plus ``calibrate`` (temperature scaling on validation) for probabilistic
        heads."""
        names = [n for n in super().head_params(head_cls) if n not in getattr(head_cls, "context_params", ())]
        if "proba" in getattr(head_cls, "outputs", ("proba",)):
            names = sorted({*names, "calibrate"})
        return names

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        ds, spec = ctx.dataset, ctx.spec
        task, y, n_classes = ds.task.type, ctx.state["y"], ctx.state["n_classes"]
        X = self._inputs(head_cls.input_kind, ctx)
        train, val, test = ctx.train, ctx.val, ctx.test
        params = dict(spec.head_params.get(head_name, {}))
        calibrate = _calibrate_option(params.pop("calibrate", "none"), head_name, spec.name)
        # heads that need more than features (a zero-shot head: the checkpoint's text tower and class prompts)
        params = {**(head_cls.context_kwargs(ctx) if hasattr(head_cls, "context_kwargs") else {}), **params}
        kshot = parse_kshot(spec.budget)

        def rows(idx: list[int]) -> Any:
            return [X[i] for i in idx] if isinstance(X, list) else X[idx]

        if kshot is not None and calibrate != "none":
            raise ConfigError(f"head_params.{head_name}.calibrate: temperature scaling needs validation labels, "
                              f"which a k-shot budget ({spec.budget}) does not give", spec.name)
        notes: dict[str, Any] = {}
        if kshot is not None and getattr(head_cls, "uses_labels", True):
            return self._evaluate_kshot(head_cls, head_name, ctx, X, params, kshot)
        if kshot is not None:  # a head that learns nothing from labels (zeroshot): one fit, no draws
            notes["kshot"] = {"k": kshot[0], "draws": kshot[1], "applied": False,
                              "why": f"head {head_name} uses no training labels"}
        head = head_cls(task=task, n_classes=n_classes, seed=spec.seed, **params)
        head.fit(rows(train), y[train], rows(val) if val else None, y[val] if val else None)
        if "proba_ks" in head_cls.outputs:  # several k from one search; the headline k is scored with CIs
            by_k = head.predict_proba_ks(rows(test))
            proba = by_k[head.k_]
            notes["knn_by_k"] = {str(k): point_metrics(y[test], p, task, ds.task.classes) for k, p in by_k.items()}
        else:
            proba = head.predict_proba(rows(test))
        hp = head.get_params()
        if calibrate == "temperature":
            proba, hp = _temperature(head, proba, rows(val) if val else None, y[val] if val else None, task, hp,
                                     head_name, spec.name)
        ci = bootstrap_ci(y[test], proba, task, n_resamples=spec.metrics.bootstrap, seed=spec.seed,
                          alpha=spec.metrics.alpha, classes=list(ds.task.classes) or None)
        ids = ds.ids()
        preds = {"ids": np.asarray([ids[i] for i in test]), "y_true": y[test], "y_score": proba}
        return HeadResult(head=head_name, metrics=ci, predictions=preds, head_params=hp, notes=notes)

    def _evaluate_kshot(self, head_cls: type[Any], head_name: str, ctx: RunContext, X: Any,
                        params: dict[str, Any], kshot: tuple[int, int]) -> HeadResult:
        """``budget: kshot:<k>x<draws>``: one fit per seeded draw of k training cases per class (validation labels
        stay unused: heads select on their own hold-out of the draw); metrics are the mean over draws with a
        bootstrap CI over the draws (:mod:`medprobe.pipeline.fewshot`)."""
        ds, spec = ctx.dataset, ctx.spec
        task, y, n_classes, test = ds.task.type, ctx.state["y"], ctx.state["n_classes"], ctx.test
        draws, facts = kshot_draws(ctx.train, y, kshot[0], kshot[1], spec.seed)

        def rows(idx: list[int]) -> Any:
            return [X[i] for i in idx] if isinstance(X, list) else X[idx]

        probas, per_draw, selected = [], [], []
        classes = list(ds.task.classes) or None
        for idx in draws:
            head = head_cls(task=task, n_classes=n_classes, seed=spec.seed, **params)
            head.fit(rows(idx), y[idx])
            proba = head.predict_proba(rows(test))
            probas.append(proba)
            per_draw.append(classification_metrics(y[test], proba, task, classes=classes))
            selected.append(head.get_params().get("selected"))
        metrics = aggregate_draws(per_draw, spec.metrics.bootstrap, spec.seed, spec.metrics.alpha)
        ids = ds.ids()
        preds = {"ids": np.asarray([ids[i] for i in test]), "y_true": y[test], "y_score": probas[0],
                 "y_score_draws": np.stack(probas).astype(np.float64)}
        headline = [m for m in self.headline if m in per_draw[0]]
        notes = {"kshot": {**facts, "ci": "percentile bootstrap of the mean over draws",
                           "predictions": "y_score is draw 0; y_score_draws holds every draw",
                           "per_draw": {m: [round(float(d[m]), 6) for d in per_draw] for m in headline},
                           "train_ids_draw0": [ids[i] for i in draws[0]][:200]}}
        if any(s is not None for s in selected):
            notes["kshot"]["selected"] = selected
        hp = head.get_params()
        return HeadResult(head=head_name, metrics=metrics, predictions=preds, head_params=hp, notes=notes,
                          table=[f"k-shot: {kshot[0]} per class x {kshot[1]} draws (mean and CI over draws)"])


def _calibrate_option(v: Any, head: str, where: str) -> str:
    s = str(v).strip().lower() if v is not None else "none"
    s = {"false": "none", "off": "none", "no": "none", "true": "temperature"}.get(s, s)
    if s not in ("none", "temperature"):
        raise ConfigError(f"head_params.{head}.calibrate: must be none or temperature, got {v!r}", where)
    return s


def _temperature(head: Any, proba: np.ndarray, X_val: Any, y_val: Any, task: str, hp: dict[str, Any], name: str,
                 where: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Temperature scaling: ``T`` fitted on the validation predictions (NLL), applied to the test predictions."""
    from medprobe.metrics.calibration import apply_temperature, fit_temperature

    if X_val is None:
        raise ConfigError(f"head_params.{name}.calibrate: temperature scaling needs a validation split (this "
                          "task has none)", where)
    t = fit_temperature(head.predict_proba(X_val), y_val, task)
    hp = {**hp, "calibrate": "temperature", "selected": {**hp.get("selected", {}), "temperature": round(t, 6)}}
    return apply_temperature(proba, t, task), hp
