"""Light trainable heads on frozen features, scikit-learn style (see ``base.Head``).

``create_head(name, task=..., **hp)``; names: ``logreg`` (DINOv3 C-swept logistic regression),
``knn`` (weighted cosine k-NN), ``linear`` (linear layer, AdamW), ``abmil`` (gated-attention MIL on
bags; ``transmil`` and ``meanpool`` are the other slide-level bag heads in ``mil``), ``ridge``, and the dense
(segmentation, affinity) and pair (registration) heads. Add a head: a module with ``@register_head("name")``;
the registry (:data:`medprobe.heads.base.HEADS`) imports the built-in modules on its first use, so importing
this package imports no head module (and no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medprobe.heads.base import Head, create_head, find_head, get_head_class, head_names, register_head

if TYPE_CHECKING:
    from medprobe.heads.knn import KNNHead
    from medprobe.heads.linear import LinearHead
    from medprobe.heads.logreg import LogRegHead
    from medprobe.heads.mil import MeanPoolLogRegHead, TransMILHead
    from medprobe.heads.pooling import ABMILHead, pool_slices
    from medprobe.heads.ridge import RidgeHead

# the head classes, importable from here; their modules are imported on first access
_LAZY = {"KNNHead": "knn", "LinearHead": "linear", "LogRegHead": "logreg", "MeanPoolLogRegHead": "mil",
         "TransMILHead": "mil", "ABMILHead": "pooling", "pool_slices": "pooling", "RidgeHead": "ridge"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"medprobe.heads.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'medprobe.heads' has no attribute {name!r}")


__all__ = ["Head", "create_head", "find_head", "get_head_class", "head_names", "register_head", "LogRegHead",
           "KNNHead", "LinearHead", "ABMILHead", "pool_slices", "RidgeHead", "TransMILHead", "MeanPoolLogRegHead"]
