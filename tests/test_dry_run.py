"""``medprobe run --dry-run`` for every task family and extraction unit: the plan is printed (family, config
hash per head, what would be extracted and a measured batch where an encoder runs) and nothing is written.

Tiny phantom datasets per family; the slides family on the two real slides in ../shared/data/wsi-samples, whose
tiles are counted on their tissue masks and timed on a batch of one slide's tiles (a slide is never encoded whole;
the timing probe used to wrap the slides in a ``Subset`` that lost their unit and tried to encode them as images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medprobe.cli.main import main

COMMON = ["--encoder", "none", "--device", "cpu"]


def _dry(tmp: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    db, cache = tmp / "res" / "results.db", tmp / "cache"
    rc = main(["run", *args, *COMMON, "--db", str(db), "--cache-dir", str(cache), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "nothing is run or written" in out and "heads (config hash" in out
    assert not db.exists() and not any(p.is_dir() for p in cache.glob("*"))  # nothing written
    return out


@pytest.mark.parametrize("family, args, want", [
    ("classification", ["--dataset", "phantom:xray2d-binary", "--head", "logreg"], "will extract 8 items (8 images)"),
    ("segmentation", ["--dataset", "phantom:xray2d-segmentation", "--head", "decoder2d"], "(8 images)"),
    ("regression", ["--dataset", "phantom:xray2d-regression", "--head", "ridge"], "(8 images)"),
])
def test_dry_run_image_families(family: str, args: list[str], want: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = _dry(tmp_path, capsys, *args, "--data-opt", "n=8", "--data-opt", "size=32", "--resolution", "32")
    assert f"# family: {family}" in out and want in out and "one batch of 8 measured" in out


def test_dry_run_instances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 48, 48), np.uint64)
    labels[:, :24], labels[:, 24:] = 1, 2
    with h5py.File(tmp_path / "em.h5", "w") as f:
        f["volumes/raw"] = (rng.random((4, 48, 48)) * 255).astype(np.uint8)
        f["volumes/labels/neuron_ids"] = labels
    out = _dry(tmp_path, capsys, "--kind", "instances", "--dataset", f"em:{tmp_path / 'em.h5'}", "--data-opt",
               "target=instances", "--head", "affinity", "--resolution", "32")
    assert "# family: instances" in out and "(4 images/slices)" in out and "one batch of 4 measured" in out


def test_dry_run_registration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    rows = ["id,fixed,moving,fixed_label,moving_label"]
    for k in range(2):
        for side in ("f", "m"):
            img = rng.random((16, 16, 16)).astype(np.float32)
            nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / f"{side}{k}.nii.gz")
            nib.save(nib.Nifti1Image((img > 0.5).astype(np.uint8), np.eye(4)), tmp_path / f"{side}{k}_l.nii.gz")
        rows.append(f"p{k},f{k}.nii.gz,m{k}.nii.gz,f{k}_l.nii.gz,m{k}_l.nii.gz")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = _dry(tmp_path, capsys, "--kind", "registration", "--dataset", f"pairs-csv:{tmp_path / 'pairs.csv'}",
               "--head", "identity", "--resolution", "16")
    assert "# family: registration" in out and "features:" in out and "2 items" in out


def test_dry_run_slides_counts_tiles_and_times_a_batch(shared_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    wsi = shared_data / "wsi-samples"
    (tmp_path / "s.csv").write_text(
        "id,path,label,mpp\n"
        f"cmu,{wsi / 'cmu-1-small-region.svs'},0,\ntcga,{wsi / 'tcga-cr-7395-01a-01-ts1.svs'},1,0.25\n",
        encoding="utf-8")
    args = ["--kind", "slides", "--dataset", f"slides:{tmp_path / 's.csv'}", "--data-opt", "label_columns=label",
            "--data-opt", "id_column=id", "--data-opt", "mpp_column=mpp", "--data-opt", "task=binary",
            "--head", "meanpool", "--batch-size", "16"]
    out = _dry(tmp_path, capsys, *args)
    # 49 tissue tiles on CMU-1, 47 on the TCGA slide (tests/test_tissue.py), counted on both tissue masks
    assert "# family: slides" in out and "will extract 2 items (96 tiles)" in out
    assert "tiles counted on 2 of 2 slides" in out and "one batch of 16 measured" in out and "tiles/s" in out
    assert "estimated extraction" in out
