"""CLI: ``medprobe extract`` on bad input (one clear line, exit 2, no partial cache entry), ``models``, ``cache``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medprobe.cli.main import main
from medprobe.data.io import write_png, write_volume
from medprobe.encoders import list_specs


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


@pytest.fixture(autouse=True)
def _private_sha_memo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import medprobe.encoders.weights as w

    monkeypatch.setattr(w, "_sha_memo", lambda: tmp_path / "sha256.json")


def make_folder(root: Path, n: int = 3, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(n):
            write_png(root / c / f"{i}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def extract_args(dataset: str, cache: Path, *extra: str) -> list[str]:
    return ["extract", "--dataset", dataset, "--cache-dir", str(cache), "--resolution", "32", "--device", "cpu",
            "--no-progress", *extra]


def assert_one_error_line(err: str, *needles: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    line = lines[0]
    assert line.startswith("medprobe: error: "), line
    for n in needles:
        assert n in line, f"{n!r} not in {line!r}"
    return line


def assert_no_entry(capsys: pytest.CaptureFixture[str], cache: Path) -> None:
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir()), list(cache.iterdir())
    rc, out, _ = run_cli(capsys, "cache", "list", "--cache-dir", str(cache))
    assert rc == 0 and "(no cached features" in out


# ------------------------------------------------------------------------------------------ bad input
def test_missing_file_in_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_folder(tmp_path / "img", n=1)
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\nimg/a/0.png,0\nimg/b/gone.png,1\n", encoding="utf-8")
    cache = tmp_path / "cache"
    rc, _, err = run_cli(capsys, *extract_args(f"csv:{csv}", cache, "--data-opt", "label_columns=label"))
    assert rc == 2
    assert_one_error_line(err, "labels.csv", "gone.png", "missing")
    assert_no_entry(capsys, cache)
    rc, _, err = run_cli(capsys, *extract_args(f"folder:{tmp_path / 'nowhere'}", cache))
    assert rc == 2
    assert_one_error_line(err, "nowhere", "not found")


def test_truncated_png_mid_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "data")
    bad = data / "b" / "2.png"  # the last item: earlier items are already extracted when it fails
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    cache = tmp_path / "cache"
    rc, _, err = run_cli(capsys, *extract_args(f"folder:{data}", cache, "--encoder", "none"))
    assert rc == 2
    assert_one_error_line(err, str(bad))
    assert_no_entry(capsys, cache)


def test_truncated_volume_mid_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    for i in range(2):
        write_volume(tmp_path / f"v{i}.nii.gz", rng.integers(-1000, 1000, (16, 16, 4)).astype(np.int16))
    bad = tmp_path / "v1.nii.gz"
    raw = bad.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    csv = tmp_path / "vols.csv"
    csv.write_text("path,label\nv0.nii.gz,0\nv1.nii.gz,1\n", encoding="utf-8")
    cache = tmp_path / "cache"
    rc, _, err = run_cli(capsys, *extract_args(f"volumes:{csv}", cache, "--encoder", "none", "--data-opt",
                                               "modality=ct"))
    assert rc == 2
    assert_one_error_line(err, str(bad))
    assert_no_entry(capsys, cache)


def test_image_smaller_than_a_patch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "data", n=2)
    tiny = data / "b" / "9.png"
    write_png(tiny, np.full((8, 8), 100, np.uint8))
    cache = tmp_path / "cache"
    # a source smaller than a patch is resized up to the encoder's input like any other (MedMNIST-style)
    rc, _, err = run_cli(capsys, *extract_args(f"folder:{data}", cache, "--encoder", "dinov3-vits16"))
    assert rc == 0, err
    # an encoder input smaller than one patch is refused in one line
    cache2 = tmp_path / "cache2"
    args = extract_args(f"folder:{data}", cache2, "--encoder", "dinov3-vits16")
    args[args.index("--resolution") + 1] = "8"
    rc, _, err = run_cli(capsys, *args)
    assert rc == 2
    assert_one_error_line(err, "8x8", "patch size 16")  # checked before any image is read
    assert_no_entry(capsys, cache2)


def test_unknown_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "data", n=1)
    cache = tmp_path / "cache"
    rc, _, err = run_cli(capsys, *extract_args(f"folder:{data}", cache, "--encoder", "dinov9-vitz99"))
    assert rc == 2
    assert_one_error_line(err, "'dinov9-vitz99'", "unknown encoder")
    assert_no_entry(capsys, cache)


def test_weights_with_wrong_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "data", n=1)
    w = tmp_path / "dinov3_vits16_pretrain_lvd1689m-deadbeef.pth"
    torch.save({"not": torch.zeros(3)}, w)
    cache = tmp_path / "cache"
    rc, _, err = run_cli(capsys, *extract_args(f"folder:{data}", cache, "--weights", str(w)))
    assert rc == 2
    assert_one_error_line(err, str(w), "SHA-256 mismatch", "deadbeef")
    assert_no_entry(capsys, cache)
    # --no-verify gets past the hash, then the content is refused (still one line naming the file)
    rc, _, err = run_cli(capsys, *extract_args(f"folder:{data}", cache, "--weights", str(w), "--no-verify"))
    assert rc == 2
    assert_one_error_line(err, str(w))
    assert_no_entry(capsys, cache)


def test_subprocess_bad_png_one_stderr_line(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", n=1)
    bad = data / "a" / "0.png"
    bad.write_bytes(bad.read_bytes()[:40])
    cache = tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "medprobe.cli.main", *extract_args(f"folder:{data}", cache,
                                                                                  "--encoder", "none")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert_one_error_line(r.stderr, str(bad))
    assert not cache.exists() or not any(p.is_dir() for p in cache.iterdir())


# ------------------------------------------------------------------------------------------ models / cache
def test_models_lists_every_registry_entry(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0
    lines = out.splitlines()
    assert lines[-1].startswith("feature contract per family")
    first_words = {line.split()[0] for line in lines[1:-1] if line.strip()}
    names = {s.name for s in list_specs()}
    assert names == first_words


def test_cache_list_verify_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "data", n=2)
    cache = tmp_path / "cache"
    rc, out, _ = run_cli(capsys, *extract_args(f"folder:{data}", cache, "--layers", "5,11"))
    assert rc == 0 and "UNTRAINED" in out
    (entry,) = [p for p in cache.iterdir()]
    key = entry.name
    rc, out, _ = run_cli(capsys, "cache", "list", "--cache-dir", str(cache))
    assert rc == 0 and key in out and "dinov3-vits16" in out and "4 items" in out
    rc, out, _ = run_cli(capsys, "cache", "verify", "--cache-dir", str(cache))
    assert rc == 0 and out.strip() == f"{key}: ok"

    # overwrite one array with garbage: verify names the file
    f = entry / "shard-00000" / "cls_L5.npy"
    orig = f.read_bytes()
    f.write_bytes(orig[: len(orig) // 2])
    rc, out, _ = run_cli(capsys, "cache", "verify", key[:8], "--cache-dir", str(cache))
    assert rc == 1 and "cls_L5.npy" in out and "unreadable" in out
    # same shape, but NaNs
    a = np.frombuffer(orig, dtype=np.uint8)  # restore first
    f.write_bytes(a.tobytes())
    arr = np.load(f)
    arr[0, 0] = np.nan
    np.save(f, arr)
    rc, out, _ = run_cli(capsys, "cache", "verify", "--cache-dir", str(cache))
    assert rc == 1 and "cls_L5.npy" in out and "non-finite" in out
    # wrong shape
    np.save(f, arr[:, :10])
    rc, out, _ = run_cli(capsys, "cache", "verify", "--cache-dir", str(cache))
    assert rc == 1 and "shape" in out

    rc, _, err = run_cli(capsys, "cache", "rm", "--cache-dir", str(cache))
    assert rc == 2 and "needs entry keys" in err
    rc, _, err = run_cli(capsys, "cache", "rm", "ffffffff", "--cache-dir", str(cache))
    assert rc == 2 and "no cache entry matches" in err
    rc, out, _ = run_cli(capsys, "cache", "rm", key[:10], "--cache-dir", str(cache))
    assert rc == 0 and f"removing {key}" in out and "removed 1 entry" in out and not entry.exists()
    assert_no_entry(capsys, cache)
