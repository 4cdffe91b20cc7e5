"""Survival (dataset task type ``survival``: per case a follow-up ``time`` and an ``event`` flag, e.g. TCGA-style
overall survival): volumes (slices pooled) or whole slides (tiles pooled; give ``kind: survival`` so the slide
dataset comes here rather than to the slide classifier) -> one vector per case (``cox``) or the bag of tile /
slice vectors (``abmil_cox``: gated attention trained with the Cox partial likelihood) -> a risk score ->
Harrell's and Uno's concordance index with bootstrap CIs over test cases (:mod:`medprobe.metrics.survival`).

Splits are patient-level as everywhere (``split: folds:5:0`` for patient-level 5-fold cross-validation; the
report aggregates the folds). Uno's censoring distribution is estimated on the training cases. A slide dataset
takes the tile unit's ``data.tiling`` / ``data.tissue`` (the slides family's options); per-case risks are stored
with the predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics.survival import check_survival, survival_ci
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, feature_bags, feature_matrix, register_family


@register_family
class SurvivalFamily(TaskFamily):
    name = "survival"
    task_types = ("survival",)
    head_inputs = ("vector", "bag")  # pooled vectors (cox) or the tile / slice bags (abmil_cox)
    head_outputs = ("risk",)
    tokens = ("cls", "mean")
    headline = ("c_index", "c_index_uno")
    rank_by = ("c_index", "c_index_uno")
    report_panels = ("survival",)  # medprobe.report.beyond
    data_options = ("tiling", "tissue")  # slide datasets: the tile unit's options (as the slides family)

    def check_dataset(self, ds: Any, spec: Any) -> None:
        if ds.task.type not in self.task_types:
            raise ConfigError(f"dataset {ds.name} is a {ds.task.type} task; the survival family takes datasets with "
                              "time and event columns (task: survival)", spec.name)

    def unit_options(self, spec: Any) -> dict[str, Any]:
        """``data.tiling`` / ``data.tissue`` for slide datasets (typed as the slides family's; none given: the tile
        unit's defaults)."""
        given = {k: spec.data[k] for k in ("tiling", "tissue") if k in spec.data}
        if not given:
            return {}
        from medprobe.pipeline.options import SlidesData
        from medprobe.schema import parse_section

        opts = parse_section(SlidesData, given, "data", spec.name)
        return {k: getattr(opts, k) for k in given}

    def check_head(self, head_cls: type[Any], name: str, ds: Any) -> None:
        if "risk" not in getattr(head_cls, "outputs", ()):
            raise ConfigError(f"head {name!r} gives no risk score; the survival family runs risk heads (cox)", ds.name)

    def prepare(self, ctx: RunContext) -> None:
        y = np.asarray([np.asarray(v, dtype=np.float64).ravel() for v in ctx.dataset.labels()])
        check_survival(y, ctx.dataset.name)
        for part in ("train", "test"):
            if not y[ctx.splits[part], 1].any():
                raise ConfigError(f"no event in the {part} split: the concordance index is undefined", ctx.spec.name)
        ctx.state.update(y=y)

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        spec, ds = ctx.spec, ctx.dataset
        y = ctx.state["y"]
        kind = head_cls.input_kind
        if f"X_{kind}" not in ctx.state:
            ctx.state[f"X_{kind}"] = feature_bags(ctx) if kind == "bag" else feature_matrix(ctx)
        X = ctx.state[f"X_{kind}"]

        def rows(idx: list[int]) -> Any:
            return [X[i] for i in idx] if isinstance(X, list) else X[idx]

        train, val, test = ctx.train, ctx.val, ctx.test
        head = head_cls(task="survival", seed=spec.seed, **spec.head_params.get(head_name, {}))
        head.fit(rows(train), y[train], rows(val) if val else None, y[val] if val else None)
        risk = head.predict_risk(rows(test))
        metrics = survival_ci(y[train], y[test], risk, n_resamples=spec.metrics.bootstrap, seed=spec.seed,
                              alpha=spec.metrics.alpha)
        ids = ds.ids()
        preds = {"ids": np.asarray([ids[i] for i in test]), "time": y[test, 0], "event": y[test, 1],
                 "risk": risk}
        notes = {"events": {"events_train": int(y[train, 1].sum()), "events_test": int(y[test, 1].sum()),
                              "n_features": int(rows(test[:1])[0].shape[-1])}}
        return HeadResult(head=head_name, metrics=metrics, predictions=preds, head_params=head.get_params(),
                          notes=notes)
