"""Progress counts encoded items in every unit that runs the encoder (issue 29): the volume unit counts a volume
once the forward holding it has run, the tile unit a slide once its last tile batch has; never one merely read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe import utils
from medprobe.data.base import ArrayDataset, TaskInfo
from medprobe.encoders import create_encoder
from medprobe.features import ExtractConfig, extract
from medprobe.preprocess import PreprocessConfig


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def _watch(monkeypatch: pytest.MonkeyPatch, enc: Any) -> tuple[list[int], list[tuple[int, int]]]:
    """Record the rows of every forward and, at each progress update, (count, items encoded so far)."""
    forwards: list[int] = []
    updates: list[tuple[int, int]] = []
    real = enc.forward_features

    def counted(x, layers):  # type: ignore[no-untyped-def]
        out = real(x, layers)
        forwards.append(len(x))
        return out

    enc.forward_features = counted
    orig = utils.Progress.update

    def update(self, k: int = 1) -> None:  # type: ignore[no-untyped-def]
        updates.append((k, sum(forwards)))
        orig(self, k)

    monkeypatch.setattr(utils.Progress, "update", update)
    return forwards, updates


def _never_ahead(updates: list[tuple[int, int]]) -> int:
    done = 0
    for k, encoded in updates:
        done += k
        assert done <= encoded, f"progress says {done} items done after {encoded} rows were encoded"
    return done


def test_volume_progress_counts_encoded_volumes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vols = [rng.normal(0, 300, (20, 24, 16)).astype(np.float32) for _ in range(5)]
    ds = ArrayDataset(vols, [i % 2 for i in range(5)], spatial_dims=3, modality="ct",
                      task=TaskInfo("binary", ("a", "b")), spacing=(1.0, 1.0, 2.0), name="ctvol")
    enc = create_encoder("swin-unetr")
    forwards, updates = _watch(monkeypatch, enc)
    store = extract(ds, enc, PreprocessConfig(resolution=32),
                    ExtractConfig(layers="last", batch_size=2, progress=True), cache_dir=tmp_path)
    assert store is not None and store.n_items == 5
    assert forwards == [2, 2, 1]
    assert _never_ahead(updates) == 5 and [k for k, _ in updates] == [2, 2, 1]


@pytest.mark.shared_data
def test_slide_progress_counts_encoded_slides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from _dist_slides import make_slides  # noqa: E402
    from conftest import shared_data_path

    shared_data_path()
    enc = create_encoder("none")
    forwards, updates = _watch(monkeypatch, enc)
    store = extract(make_slides(), enc, PreprocessConfig(), ExtractConfig(batch_size=16, progress=True),
                    cache_dir=tmp_path, device="cpu")
    assert store is not None and len(forwards) >= 2
    # one update per slide, each after that slide's tiles went through the encoder
    assert _never_ahead(updates) == 2 and [k for k, _ in updates] == [1, 1]
    assert 0 < updates[0][1] < updates[1][1] == sum(forwards)
