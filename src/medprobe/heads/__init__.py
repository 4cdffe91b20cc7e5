"""Light trainable heads on frozen features, scikit-learn style (see ``base.Head``).

``create_head(name, task=..., **hp)``; names: ``logreg`` (DINOv3 C-swept logistic regression),
``knn`` (weighted cosine k-NN), ``linear`` (linear layer, AdamW), ``abmil`` (gated-attention MIL on
bags; ``transmil`` and ``meanpool`` are the other slide-level bag heads in ``mil``).
Add a head: a new module with ``@register_head("name")`` plus its import below.
"""

from medprobe.heads.base import Head, create_head, get_head_class, head_names, register_head
from medprobe.heads.knn import KNNHead
from medprobe.heads.linear import LinearHead
from medprobe.heads.logreg import LogRegHead
from medprobe.heads.mil import MeanPoolLogRegHead, TransMILHead
from medprobe.heads.pooling import ABMILHead, pool_slices
from medprobe.heads.ridge import RidgeHead

__all__ = ["Head", "create_head", "get_head_class", "head_names", "register_head", "LogRegHead", "KNNHead",
           "LinearHead", "ABMILHead", "pool_slices", "RidgeHead",
           "TransMILHead", "MeanPoolLogRegHead"]
