"""Import the field's reference packages (timm, open_clip, segment_anything, torchvision, MONAI) for equality tests.

Goes through :func:`medprobe.encoders.extras.import_extra`, which makes torchvision's pure-Python layers
importable where its compiled ops do not match the local CPU torch build (see that module's docstring).
"""

from __future__ import annotations

from types import ModuleType

from medprobe.encoders.extras import import_extra


def import_reference(name: str) -> ModuleType:
    """A reference package by module name (``timm``, ``open_clip``, ``segment_anything``, ``monai``...)."""
    return import_extra(name, "the reference test")
