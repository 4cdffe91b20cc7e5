"""Optional extras that some encoder families build on (timm, open_clip, segment_anything, MONAI).

:func:`import_extra` imports one by module name and, when it is not installed, raises a one-line
:class:`~medprobe.errors.ConfigError` naming the pip extra that provides it.

timm and open_clip import torchvision. Where torch is a local CPU build (as on medprobe's CI machines),
torchvision's compiled ops (``_C.so``) do not load beside it, and torchvision 0.28 then fails at import on an
unconditional ``register_fake("torchvision::nms")`` ("operator torchvision::nms does not exist"). No encoder
here calls those ops (they are detection kernels), so when -- and only when -- that import fails for that
reason, the two op schemas are declared (without kernels) and torchvision's pure-Python layers are imported
again. Where torchvision's ops load, nothing is changed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

from medprobe.errors import ConfigError

# module -> the pip extra of medprobe that installs it
EXTRA_OF = {"timm": "timm", "open_clip": "openclip", "segment_anything": "sam", "monai": "metrics",
            "torchvision": "timm"}

# pip extra -> the modules it installs (what must be importable for the extra to count as installed)
EXTRA_MODULES = {"timm": ("timm", "torchvision"), "openclip": ("open_clip", "torchvision"),
                 "sam": ("segment_anything", "torchvision"), "metrics": ("monai",), "onnx": ("onnxruntime",),
                 "wsi": ("openslide",), "volumes": ("SimpleITK",)}


def missing_modules(extra: str) -> list[str]:
    """The modules of a pip extra that are not installed (empty: the extra is there)."""
    return [m for m in EXTRA_MODULES.get(extra, (extra,)) if importlib.util.find_spec(m) is None]


_op_lib: Any = None


def _declare_torchvision_ops() -> None:
    global _op_lib
    if _op_lib is not None:
        return
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _op_lib = lib


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


def ensure_torchvision() -> None:
    """Make an installed torchvision importable before transformers looks for it (no-op when absent or loaded).

    transformers imports torchvision whenever it is installed; a torchvision whose compiled ops do not match
    torch would make every transformers model class fail to import ("Could not import module ...").
    """
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return
    import_torchvision()


def import_extra(name: str, needed_for: str = "") -> ModuleType:
    """Import an optional package by module name; missing -> one line naming ``pip install medprobe[extra]``."""
    try:
        if name in ("timm", "open_clip", "segment_anything", "torchvision"):
            import_torchvision()
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        extra = EXTRA_OF.get(name, name)
        what = f" for {needed_for}" if needed_for else ""
        raise ConfigError(f"{name} is not installed{what}: pip install 'medprobe[{extra}]' "
                          f"(missing module {e.name!r})") from None


__all__ = ["EXTRA_MODULES", "EXTRA_OF", "ensure_torchvision", "missing_modules", "import_extra", "import_torchvision"]
