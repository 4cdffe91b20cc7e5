"""``zeroshot``: zero-shot classification with an image-text checkpoint's own text tower -- no label is used.

Class embeddings are built as open_clip's zero-shot classifier builds them (``build_zero_shot_classifier``):
every template of the task's ``prompts.templates`` filled with each class name (``prompts.classnames``, else the
dataset's class names), each text embedding L2-normalised, averaged over templates, normalised again. A case's
image embedding is its cached pooled feature (the image tower's last-block ``cls``) times the checkpoint's image
projection, L2-normalised; ``logits = logit_scale * image @ classes (+ logit_bias)`` with the scale (and bias)
read from the checkpoint; probabilities are the softmax over classes. The text tower, projection and scale come
from the same weights file as the image tower (:func:`medprobe.encoders.text.load_text_tower`).

The classification family hands the head its run context through :meth:`ZeroShotHead.context_kwargs` (the
task's encoder, weights and prompts), so ``heads: [zeroshot, logreg]`` compares zero-shot with a probe in one
run or sweep, on the same test cases, metrics and CIs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medprobe.errors import ConfigError
from medprobe.heads.base import Head, register_head

DEFAULT_TEMPLATES = ("a photo of a {}.",)


@register_head("zeroshot")
class ZeroShotHead(Head):
    """Zero-shot: the checkpoint's text tower scores class prompts (no training labels are used)."""

    tasks = ("binary", "multiclass", "ordinal")
    context_params = ("tower",)  # given by the run (context_kwargs), never by head_params
    uses_labels = False  # a k-shot budget fits it once (no draws): it learns nothing from training labels

    def __init__(self, task: str = "multiclass", n_classes: int | None = None, seed: int = 0,
                 templates: list[str] | None = None, classnames: list[str] | None = None,
                 tower: Any = None) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.templates = templates
        self.classnames = classnames
        self.tower = tower

    @classmethod
    def context_kwargs(cls, ctx: Any) -> dict[str, Any]:
        """What the head takes from the run: the checkpoint's text tower and the task's prompts. The features
        must be the image tower's pooled output (last block, ``cls`` token, one block)."""
        from medprobe.encoders.text import load_text_tower

        spec, ds = ctx.spec, ctx.dataset
        f = spec.features
        depth = int(getattr(ctx.encoder.spec, "depth", 0))
        if f.token != "cls" or len(ctx.layers) != 1 or (depth and ctx.layers[0] != depth - 1):
            raise ConfigError(f"zeroshot scores the image tower's pooled output: features.token cls of the last block "
                              f"(got token {f.token}, blocks {ctx.layers}, the encoder has {depth})", spec.name)
        key = "zeroshot_tower"
        if key not in ctx.state:
            ctx.state[key] = load_text_tower(spec.encoder, spec.weights, verify=spec.verify_weights)
        prompts = getattr(spec, "prompts", None)
        templates = list(getattr(prompts, "templates", ()) or DEFAULT_TEMPLATES)
        names = list(getattr(prompts, "classnames", None) or ds.task.classes or [])
        return {"templates": templates, "classnames": names, "tower": ctx.state[key]}

    def hyper_params(self) -> dict[str, Any]:
        return {"templates": self.templates, "classnames": self.classnames}  # the tower is the run's checkpoint

    def fit(self, X: Any, y: Any = None, X_val: Any = None, y_val: Any = None) -> ZeroShotHead:
        """Builds the class embeddings; ``y`` only fixes the number of classes (no label is learned from)."""
        from medprobe.encoders.text import zero_shot_classifier

        self._check_task()
        if self.tower is None:
            raise ConfigError("zeroshot needs a checkpoint's text tower: run it through a classification task "
                              "(medprobe run) with the encoder's weights", self._where())
        X = self._check_X(X)
        k = self.n_classes or (2 if self.task == "binary" else None)
        names = list(self.classnames or [])
        if not names or (k is not None and len(names) != k):
            raise ConfigError(f"zeroshot needs one class name per class ({k} classes, got {names!r}): set "
                              "prompts.classnames", self._where())
        templates = list(self.templates or DEFAULT_TEMPLATES)
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ConfigError(f"prompt template {bad[0]!r} has no '{{}}' for the class name", self._where())
        self.tower.project(X[:1])  # the features fit the checkpoint's image projection
        self.classifier_ = zero_shot_classifier(self.tower, names, templates)
        self.n_features_in_ = X.shape[1]
        return self

    def logits(self, X: Any) -> np.ndarray:
        """``logit_scale * normalise(X @ projection) @ classifier (+ logit_bias)``, (N, K)."""
        self._check_fitted("classifier_")
        X = self._check_X(X, dim=self.n_features_in_)
        with torch.no_grad():
            img = torch.nn.functional.normalize(self.tower.project(X), dim=-1)
            out = self.tower.logit_scale * img @ self.classifier_ + self.tower.logit_bias
        return out.double().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        z = self.logits(X)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def selected_params(self) -> dict[str, Any]:
        if not hasattr(self, "classifier_"):
            return {}
        return {"logit_scale": round(float(self.tower.logit_scale), 6), "logit_bias": float(self.tower.logit_bias),
                "text_weights": self.tower.weights_id, "text_family": self.tower.family}
