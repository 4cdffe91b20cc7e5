"""Import the field's reference packages (timm, open_clip, segment_anything, torchvision) for equality tests.

On this machine kind torch is a local CPU build and torchvision's compiled ops (``_C.so``) do not load
beside it; torchvision 0.28 then fails at import on an unconditional ``register_fake("torchvision::nms")``
("operator torchvision::nms does not exist"). The reference networks compared here (ViTs, ResNets, SAM's
image encoder) never call those ops, so when -- and only when -- the compiled ops are missing, the two op
schemas are declared (no kernels) before importing torchvision: its pure-Python layers, which timm and
open_clip build their models from, then import unchanged. Where torchvision's ops load, nothing is done.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_declared = False


def _declare_torchvision_ops() -> None:
    global _declared
    if _declared:
        return
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    sys.modules.setdefault("_medprobe_tv_oplib", ModuleType("_medprobe_tv_oplib")).lib = lib  # type: ignore[attr-defined]
    _declared = True


def import_torchvision() -> ModuleType:
    """``torchvision``, importable even where its compiled ops do not match the installed torch."""
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_torchvision_ops()
    return importlib.import_module("torchvision")


def import_reference(name: str) -> ModuleType:
    """A reference package by module name (``timm``, ``open_clip``, ``segment_anything``, ``monai``...)."""
    if name in ("timm", "open_clip", "segment_anything", "torchvision"):
        import_torchvision()
    return importlib.import_module(name)
