"""Retrieval (``kind: retrieval``): image-to-image retrieval on cached features of a classification dataset.

Queries are the test cases. ``across`` (the headline metrics ``acc@k``, ``map@k``, ``mv@k``): each query searches
the training and validation cases; ``within`` (``within_acc@k`` ...): each query searches the other test cases.
The search is the exact cosine search of the ``knn`` head (the ``cosine`` retrieval head). Before any number,
the leakage audit's duplicate pairs (exact pixels, perceptual hash, and -- with pretrained weights -- cached
features; :mod:`medprobe.audit`) are removed from each query's candidates, so a look-alike of the query never
counts as a hit; how many were removed is recorded. Per-query values are averaged with bootstrap CIs over
queries (:func:`medprobe.metrics.mean_ci`); definitions in :mod:`medprobe.metrics.retrieval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.metrics import mean_ci
from medprobe.metrics.retrieval import retrieval_values
from medprobe.pipeline.families.classification import checked_labels
from medprobe.pipeline.family import HeadResult, RunContext, TaskFamily, feature_matrix, register_family


@register_family
class RetrievalFamily(TaskFamily):
    name = "retrieval"
    task_types = ("binary", "multiclass", "multilabel", "ordinal")
    by_kind_only = True  # classification datasets go to 'classification' unless a task says kind: retrieval
    head_outputs = ("neighbours",)
    head_inputs = ("vector",)
    tokens = ("cls", "mean")
    headline = ("acc@1", "acc@5", "map@5", "mv@5", "within_map@5")
    rank_by = ("map@5", "acc@1", "mv@5")
    report_panels = ("retrieval",)  # medprobe.report.beyond

    def check_head(self, head_cls: type[Any], name: str, ds: Any) -> None:
        if "neighbours" not in getattr(head_cls, "outputs", ()):
            raise ConfigError(f"head {name!r} does not rank neighbours; the retrieval family runs retrieval heads "
                              "(cosine)", ds.name)

    def prepare(self, ctx: RunContext) -> None:
        y, n_classes = checked_labels(ctx.dataset)
        X = feature_matrix(ctx)
        pairs, facts = self._duplicates(ctx, X)
        ctx.state.update(y=y, n_classes=n_classes, X=X, pairs=pairs, dedup=facts)

    def _duplicates(self, ctx: RunContext, X: np.ndarray) -> tuple[dict[int, set[int]], dict[str, Any]]:
        """Per case the cases the audit found alike it (both directions); off with ``audit.mode: off``."""
        from medprobe.audit import audit
        from medprobe.utils import default_cache_dir

        a = ctx.spec.audit
        if a.mode == "off":
            return {}, {"applied": False, "why": "audit.mode: off"}
        cache = Path(ctx.spec.cache_dir) if ctx.spec.cache_dir else default_cache_dir()
        feats = X if ctx.encoder.pretrained and a.features else None
        found = audit(ctx.dataset, ctx.splits, near_threshold=a.near_threshold, near_correlation=a.near_correlation,
                      feature_threshold=a.feature_threshold, features=feats, cache_dir=cache,
                      feature_label="retrieval features" if feats is not None else None)
        out: dict[int, set[int]] = {}
        for p in found.pairs:
            out.setdefault(p.i, set()).add(p.j)
            out.setdefault(p.j, set()).add(p.i)
        return out, {"applied": True, "pairs": len(found.pairs), "features": feats is not None,
                     "summary": found.summary()}

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        ds, spec = ctx.dataset, ctx.spec
        y, X, pairs = ctx.state["y"], ctx.state["X"], ctx.state["pairs"]
        task = ds.task.type
        test = list(ctx.test)
        metrics: dict[str, Any] = {}
        notes: dict[str, Any] = {"dedup": dict(ctx.state["dedup"])}
        preds: dict[str, np.ndarray] = {}
        ids = np.asarray(ds.ids())
        hp: dict[str, Any] = {}
        for scope, db in (("across", sorted(ctx.train + ctx.val)), ("within", test)):
            head = head_cls(task=task, n_classes=ctx.state["n_classes"], seed=spec.seed,
                            **spec.head_params.get(head_name, {}))
            head.fit(X[db], y[db])
            hp = head.get_params()
            ks = head.cutoffs()
            pos = {c: j for j, c in enumerate(db)}
            excl = [{pos[j] for j in pairs.get(q, ()) if j in pos} | ({pos[q]} if q in pos else set()) for q in test]
            removed = sum(len(e) - (1 if q in pos else 0) for q, e in zip(test, excl))
            scores, idx = head.kneighbors(X[test], max(ks), exclude=excl)
            if idx.shape[1] == 0:
                raise ConfigError(f"retrieval {scope}: the database holds no case to retrieve", spec.name)
            nb = y[np.asarray(db)][idx]
            n_rel = _n_relevant(y, test, db, excl)
            values = retrieval_values(y[test], nb, n_rel, ks)
            prefix = "" if scope == "across" else "within_"
            for key, v in values.items():
                metrics[prefix + key] = _mean(v, spec.metrics.bootstrap, spec.seed, spec.metrics.alpha)
            notes[scope] = {"database": len(db), "queries": len(test), "duplicates_removed": int(removed),
                            "queries_without_relevant": int((n_rel == 0).sum())}
            preds[f"{scope}_neighbours"] = ids[np.asarray(db)][idx]
            preds[f"{scope}_scores"] = scores
        preds.update(ids=ids[test], y_true=y[test])
        return HeadResult(head=head_name, metrics=metrics, predictions=preds, head_params=hp, notes=notes)


def _mean(v: np.ndarray, n_resamples: int, seed: int, alpha: float) -> tuple[float, float, float]:
    """Mean of per-query values (NaN left out) with a bootstrap CI over queries (none with 0 resamples)."""
    if not np.isfinite(v).any():
        return (float("nan"), float("nan"), float("nan"))
    if n_resamples < 1:
        return (float(np.nanmean(v)), float("nan"), float("nan"))
    return mean_ci(v, n_resamples=n_resamples, seed=seed, alpha=alpha)


def _n_relevant(y: np.ndarray, queries: list[int], db: list[int], excl: list[set[int]]) -> np.ndarray:
    """Per query the relevant database cases left after its exclusions."""
    ydb = y[np.asarray(db)]
    out = np.empty(len(queries), np.int64)
    for r, q in enumerate(queries):
        rel = (ydb @ y[q] > 0) if y.ndim == 2 else (ydb == y[q])
        drop = np.fromiter(excl[r], dtype=np.int64) if excl[r] else np.zeros(0, np.int64)
        out[r] = int(rel.sum() - rel[drop].sum())
    return out
