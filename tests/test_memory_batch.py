"""Memory-aware batching (issue 29): the per-family memory model, batch_size auto, the one-line refusal of a
batch that cannot fit, the halving fallback, batch-independent features and progress over encoded items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medprobe.data.base import ArrayDataset
from medprobe.encoders import create_encoder, get_spec
from medprobe.encoders.families import FAMILIES, memory_model
from medprobe.errors import ConfigError
from medprobe.features import ExtractConfig, engine
from medprobe.features import common as fc
from medprobe.preprocess import PreprocessConfig


def _ds(n: int = 20) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.random((n, 40, 40)).astype(np.float32), np.arange(n) % 2, name=f"mem{n}")


PRE = PreprocessConfig(resolution=(32, 32))


def test_every_family_declares_a_memory_model() -> None:
    FAMILIES.names()  # loads the built-in families
    for name, fam in FAMILIES.items():
        assert callable(fam.memory), name
    sam, vit = get_spec("medsam-vit-b"), get_spec("dinov2-vitb14")
    m_sam = memory_model(sam, (1024, 1024))
    # a global block's attention map at 1024 px: 12 heads x 4096^2 float32 = 805 MB; with the decomposed
    # rel-pos sum and the softmax about three of them live at once
    assert m_sam.per_item > 3 * 12 * 4096**2 * 4 * 0.99
    assert m_sam.per_item > 100 * memory_model(vit, (224, 224)).per_item
    assert memory_model(sam, (64, 64)).per_item < m_sam.per_item / 100  # the model follows the resolution
    assert memory_model(get_spec("resnet50"), (224, 224)).why.startswith("CNN")


def test_auto_batch_follows_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = create_encoder("medsam-vit-b", weights="random")
    gb = 2**30
    monkeypatch.setattr(fc, "available_memory", lambda device: 24 * gb)
    big = fc.plan_batch(enc, (1024, 1024), "auto", torch.device("cpu"))
    monkeypatch.setattr(fc, "available_memory", lambda device: 6 * gb)
    small = fc.plan_batch(enc, (1024, 1024), "auto", torch.device("cpu"))
    assert 1 <= small.batch < big.batch <= 64
    assert small.batch * small.model_per_item <= 6 * gb * fc.HEADROOM
    monkeypatch.setattr(fc, "available_memory", lambda device: 2 * gb)
    with pytest.raises(ConfigError) as e:  # not even one item: one line naming what it needs
        fc.plan_batch(enc, (1024, 1024), "auto", torch.device("cpu"))
    assert "\n" not in str(e.value) and "needs" in str(e.value) and "GB" in str(e.value)


def test_explicit_batch_that_cannot_fit_is_one_line_before_work(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path) -> None:  # type: ignore[no-untyped-def]
    enc = create_encoder("medsam-vit-b", weights="random")
    monkeypatch.setattr(fc, "available_memory", lambda device: 8 * 2**30)
    calls: list[int] = []
    monkeypatch.setattr(enc, "forward_features", lambda *a, **k: calls.append(1))
    with pytest.raises(ConfigError) as e:
        engine.extract(_ds(4), enc, PreprocessConfig(resolution=(1024, 1024)), ExtractConfig(batch_size=32),
                       cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "batch_size 32" in msg and "fits" in msg
    assert not calls and not any(tmp_path.iterdir())  # nothing ran, nothing written


def _features(enc, ds, tmp, **cfg):  # type: ignore[no-untyped-def]
    store = engine.extract(ds, enc, PRE, ExtractConfig(layers="four", progress=False, **cfg), cache_dir=tmp)
    assert store is not None
    return store


def test_batch_size_changes_no_feature_and_no_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enc = create_encoder("dinov3-vits16", weights="random")
    ds = _ds(20)
    a = _features(enc, ds, tmp_path / "a", batch_size=64)
    b = _features(enc, ds, tmp_path / "b", batch_size=7)
    c = _features(enc, ds, tmp_path / "c")  # auto
    assert a.path.name == b.path.name == c.path.name  # one cache key whatever the batch
    for layer in a.layers:
        for tok in ("cls", "mean", "patch"):
            x, y, z = (s.rows(tok, layer) for s in (a, b, c))
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(x, z, rtol=1e-4, atol=1e-5)
    m = json.loads((c.path / "manifest.json").read_text())
    assert m["batch"]["asked"] == "auto" and m["batch_size"] >= 1 and m["batch"]["measured_mb_per_item"] is not None


def test_allocation_failure_halves_the_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enc = create_encoder("dinov3-vits16", weights="random")
    ds = _ds(12)
    ref = _features(enc, ds, tmp_path / "ref", batch_size=12)
    real = enc.forward_features
    seen: list[int] = []

    def tight(x, layers):  # type: ignore[no-untyped-def]
        seen.append(len(x))
        if len(x) > 3:
            raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate "
                               f"{len(x) * 10**9} bytes")
        return real(x, layers)

    enc.forward_features = tight  # type: ignore[method-assign]
    got = _features(enc, ds, tmp_path / "tight", batch_size=12)
    assert max(s for s in seen if s <= 3) == 3 and 12 in seen  # tried 12, then 6, then 3
    m = json.loads((got.path / "manifest.json").read_text())
    assert m["batch_size"] == 3 and m["batch"]["halvings"] == 2
    for layer in ref.layers:
        np.testing.assert_allclose(ref.rows("cls", layer), got.rows("cls", layer), rtol=1e-4, atol=1e-5)


def test_other_errors_are_not_swallowed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    enc = create_encoder("dinov3-vits16", weights="random")

    def broken(x, layers):  # type: ignore[no-untyped-def]
        raise RuntimeError("shape mismatch")

    enc.forward_features = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _features(enc, _ds(4), tmp_path, batch_size=4)


def test_progress_counts_encoded_items(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each update comes after the forward that finished those items: no item is counted while unencoded."""
    from medprobe import utils

    enc = create_encoder("dinov3-vits16", weights="random")
    forwards: list[int] = []
    real = enc.forward_features

    def counted(x, layers):  # type: ignore[no-untyped-def]
        out = real(x, layers)
        forwards.append(len(x))
        return out

    enc.forward_features = counted  # type: ignore[method-assign]
    updates: list[tuple[int, int]] = []
    orig = utils.Progress.update

    def update(self, k: int = 1) -> None:  # type: ignore[no-untyped-def]
        updates.append((k, sum(forwards)))
        orig(self, k)

    monkeypatch.setattr(utils.Progress, "update", update)
    engine.extract(_ds(10), enc, PRE, ExtractConfig(batch_size=4, progress=True), cache_dir=tmp_path)
    done = 0
    for k, encoded in updates:
        done += k
        assert done <= encoded  # never ahead of the encoder
    assert done == 10 and [k for k, _ in updates] == [4, 4, 2]
