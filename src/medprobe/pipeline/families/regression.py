"""Image regression: one vector per case -> a continuous target (head circumference in mm, bone age,
an organ's volume) -> MAE, RMSE, R^2 and Pearson r with bootstrap CIs over test cases.

Datasets of task type ``regression`` (``csv:`` / ``volumes:`` manifests with ``task: regression`` and one or
more numeric target columns, ``phantom:xray2d-regression``). Heads: ``ridge`` (closed-form alpha path chosen
on validation) and ``linear`` (linear layer, MSE on standardised targets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import DataError
from medprobe.metrics.regression import regression_ci
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, feature_matrix, register_family


@register_family
class RegressionFamily(TaskFamily):
    name = "regression"
    task_types = ("regression",)
    head_inputs = ("vector",)
    tokens = ("cls", "mean")
    headline = ("mae", "rmse", "r2", "pearson_r")
    rank_by = ("r2", "mae")
    rescore = "regression"  # metrics of y_pred against y_true

    def prepare(self, ctx: RunContext) -> None:
        ds = ctx.dataset
        try:
            y = np.asarray([np.asarray(v, dtype=np.float64) for v in ds.labels()], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError("regression targets must be numbers", ds.name) from None
        if not np.isfinite(y).all():
            raise DataError("regression targets contain NaN or inf", ds.name)
        ctx.state.update(y=y, X=feature_matrix(ctx))

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        spec, ds = ctx.spec, ctx.dataset
        X, y = ctx.state["X"], ctx.state["y"]
        train, val, test = ctx.train, ctx.val, ctx.test
        head = head_cls(task="regression", seed=spec.seed, **spec.head_params.get(head_name, {}))
        head.fit(X[train], y[train], X[val] if val else None, y[val] if val else None)
        pred = np.asarray(head.predict(X[test]), dtype=np.float64).reshape(y[test].shape)
        names = list(ds.task.classes) if y.ndim == 2 and len(ds.task.classes) == y.shape[1] else None
        ci = regression_ci(y[test], pred, n_resamples=max(spec.metrics.bootstrap, 1), seed=spec.seed,
                           alpha=spec.metrics.alpha, names=names)
        ids = ds.ids()
        preds = {"ids": np.asarray([ids[i] for i in test]), "y_true": y[test], "y_pred": pred}
        unit = ds.task.classes[0] if len(ds.task.classes) == 1 else "targets"
        return HeadResult(head=head_name, metrics=ci, predictions=preds, head_params=head.get_params(),
                          notes={"target": unit})
