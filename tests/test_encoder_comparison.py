"""The study's comparison: several encoder families on one sweep axis, side by side in the report.

Random-init encoders of ten families (DINOv3 ViT and ConvNeXt, ResNet-50, CLIP, SigLIP 2, BiomedCLIP, PE core,
CONCH, SAM, MAE) on the real PneumoniaMNIST file, logreg + k-NN; every row records its family, weights id and
feature contract.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medprobe.pipeline.sweep import load_sweep, run_sweep
from medprobe.results import ResultsDB

# one encoder of each 2D family of the study's comparison (3D volume encoders: tests/test_encoders_volume3d.py)
ENCODERS = ["dinov3-vits16", "resnet50", "dinov3-convnext-tiny", "clip-vit-b16", "siglip2-vitb16", "biomedclip",
            "pe-core-b16", "conch", "sam-vit-b", "mae-vitb16"]


@pytest.mark.shared_data
def test_families_side_by_side(shared_data: Path, tmp_path: Path, single_thread: None) -> None:
    from medprobe.encoders import get_spec
    from medprobe.report import build_report

    npz = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} is absent")
    sweep = {
        "name": "families",
        "base": {"features": {"progress": False, "batch_size": 64}, "metrics": {"bootstrap": 50},
                 "head_params": {"logreg": {"Cs": [0.1, 1.0]}, "knn": {"k": 5}}},
        "tasks": [{"name": "pneumoniamnist-small", "dataset": "medmnist:pneumoniamnist",
                   "data": {"root": str(npz.parent), "limit": "120,30,90"}}],
        "grid": {"encoder": ENCODERS, "resolution": [32], "head": ["logreg", "knn"], "seed": [0]},
    }
    cfg = tmp_path / "families.yaml"
    cfg.write_text(yaml.safe_dump(sweep), encoding="utf-8")
    db = ResultsDB(tmp_path / "db")
    res = run_sweep(load_sweep(cfg), db=db, cache_dir=str(tmp_path / "cache"), echo=lambda s: None)
    assert res["failed"] == 0 and res["ran"] == 2 * len(ENCODERS)
    rows = db.runs()
    assert sorted({r["encoder"] for r in rows}) == sorted(ENCODERS)
    for r in rows:
        fam = get_spec(r["encoder"]).family
        assert r["extra"]["encoder_family"] == fam
        contract = r["extra"]["feature_contract"]
        assert contract["family"] == fam and contract["cls"] and contract["taps"]
        assert r["weights"].startswith("random:") and not r["pretrained"]
        assert 0.0 <= r["metrics"]["auc"][0] <= 1.0
    assert len({r["extra"]["encoder_family"] for r in rows}) == len(ENCODERS)

    out = tmp_path / "report.html"
    build_report(db, out, n_boot=50, pca=False)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    table = md[md.index("pneumoniamnist-small"):]
    for name in ENCODERS:  # every family in the task's leaderboard
        assert name in table
