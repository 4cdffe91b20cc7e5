"""Encoder ``none`` as a real pixel baseline for classification (the image's pixels on the patch grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medprobe.encoders import create_encoder, encoder_info
from medprobe.encoders.families import get_family


def test_none_cls_is_the_flattened_patch_grid() -> None:
    enc = create_encoder("none")
    x = torch.randn(2, 3, 64, 96)
    out = enc.forward_features(x, (0,))
    grid = F.avg_pool2d(x, 16)
    assert out.patch[0].shape == (2, 3, 4, 6) and torch.equal(out.patch[0], grid)  # dense heads: unchanged
    assert out.cls[0].shape == (2, 3 * 4 * 6) and torch.equal(out.cls[0], grid.flatten(1))
    assert torch.equal(out.cls[0][:, :24].reshape(2, 4, 6), grid[:, 0])  # channel-major: channel 0 first
    assert enc.weights_id == "none:pixel-grid" and not enc.pretrained
    info = encoder_info("none")
    assert info is not None and info.weights_id == enc.weights_id  # the cache key says which baseline
    assert "pixels on the patch grid" in get_family("none").cls_feature


def test_none_logreg_on_pneumoniamnist_pixels(shared_data: Path, tmp_path: Path) -> None:
    """1000 training images, the full validation and test sets: logistic regression on the 14 x 14 pixel grid
    (224 px / 16) reaches the field's pixel baseline (AUC >= 0.9); the old 3-number image mean did not."""
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    npz = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} not present")
    base = {"name": "pneumonia-none", "dataset": f"medmnist:{npz}", "data": {"limit": {"train": 1000}},
            "encoder": "none", "heads": ["logreg"], "cache_dir": str(tmp_path / "cache"), "device": "cpu",
            "features": {"progress": False, "batch_size": 256}, "metrics": {"bootstrap": 200},
            "audit": {"mode": "off"}}
    db = ResultsDB(tmp_path / "res")
    row = run_task(parse_task(base), db=db, verbose=False)[0]
    rec = row["record"]
    assert (rec["split"]["n_train"], rec["split"]["n_test"]) == (1000, 624)
    assert rec["weights"] == "none:pixel-grid" and rec["resolution"] == [224, 224] and rec["tokens"] == ["cls"]
    auc = row["metrics"]["auc"][0]
    print(f"none (pixel grid) + logreg: AUC {auc:.3f}, balanced acc {row['metrics']['balanced_acc'][0]:.3f}")
    assert auc >= 0.9
    assert row["metrics"]["balanced_acc"][0] > 0.7
    # the same cached features, the 3-number mean token: the straw man the pixel grid replaces
    mean = run_task(parse_task({**base, "features": {**base["features"], "token": "mean"}}), db=db,
                    verbose=False)[0]
    assert mean["record"]["timings"]["cached"]
    assert mean["metrics"]["auc"][0] < auc - 0.1
    assert np.isfinite(mean["metrics"]["auc"][0])
