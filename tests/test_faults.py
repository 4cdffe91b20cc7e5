"""Fault injection: data-loss and silent-corruption cases first. Cleanup never touches foreign folders;
a damaged cache entry is detected on the next run, said in one line, recomputed, and the stored numbers equal
an undamaged run's; a weights file rewritten in place with its mtime restored gets a new hash."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from medprobe.cli.main import main
from medprobe.errors import ConfigError
from medprobe.features import is_entry, list_entries, remove_entry

FLAGS = ["--dataset", "phantom:xray2d-binary", "--data-opt", "n=40", "--data-opt", "size=32", "--encoder", "none",
         "--head", "logreg", "--resolution", "32", "--split", "fractions:0.6,0.2,0.2", "--token", "mean"]


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def _run(tmp: Path, db: str, cache: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    assert main(["run", *FLAGS, "--db", str(tmp / db), "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    from medprobe.results import ResultsDB

    (row,) = ResultsDB(tmp / db).runs()
    return row, err


def test_cache_rm_never_touches_foreign_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    _run(tmp_path, "db", cache, capsys)
    foreign = [cache / "a", cache / "b", cache / "0123456789abcdef01234567", cache / "seg-targets"]
    for d in foreign:  # other people's folders, one even named like a key but without medprobe's spec.json
        d.mkdir(parents=True, exist_ok=True)
        (d / "keep.txt").write_text("mine", encoding="utf-8")
    entries = list_entries(cache)
    assert len(entries) == 1 and all(is_entry(Path(e["path"])) for e in entries)
    assert main(["cache", "rm", "--incomplete", "--cache-dir", str(cache)]) == 0
    assert main(["cache", "rm", "--all", "--cache-dir", str(cache)]) == 1  # lists, asks for --yes
    out = capsys.readouterr().out
    assert "add --yes" in out and entries[0]["key"] in out and Path(entries[0]["path"]).exists()
    assert main(["cache", "rm", "--all", "--yes", "--cache-dir", str(cache)]) == 0
    assert not Path(entries[0]["path"]).exists()
    assert all((d / "keep.txt").read_text(encoding="utf-8") == "mine" for d in foreign)
    with pytest.raises(ConfigError, match="not a medprobe feature-cache entry"):
        remove_entry(cache / "a")


@pytest.mark.parametrize("damage", ["flip-byte", "truncate-array", "truncate-manifest", "drop-array"])
def test_damaged_cache_is_detected_recomputed_and_numbers_equal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 damage: str) -> None:
    cache = tmp_path / "cache"
    clean, _ = _run(tmp_path, "db0", cache, capsys)
    (entry,) = [Path(e["path"]) for e in list_entries(cache)]
    arr = entry / "shard-00000" / "mean_L0.npy"
    if damage == "flip-byte":
        b = bytearray(arr.read_bytes())
        b[-5] ^= 0x80  # the sign bit of one float
        arr.write_bytes(bytes(b))
    elif damage == "truncate-array":
        arr.write_bytes(arr.read_bytes()[:-16])
    elif damage == "truncate-manifest":
        mf = entry / "manifest.json"
        mf.write_text(mf.read_text(encoding="utf-8")[:40], encoding="utf-8")
    else:
        arr.unlink()
    from medprobe.features import cache as cache_mod

    cache_mod._VERIFIED.clear()  # a new process would check again
    again, err = _run(tmp_path, "db1", cache, capsys)
    assert "damaged" in err and "recomputing" in err and entry.name in err
    assert len([ln for ln in err.splitlines() if "damaged" in ln]) == 1
    assert again["metrics"] == clean["metrics"]
    assert again["timings"]["cached"] is False  # recomputed, not silently reused
    done = json.loads((entry / "shard-00000" / "done.json").read_text(encoding="utf-8"))
    assert "mean_L0.npy" in done["files"]  # the recomputed entry carries checksums again
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 0


def test_old_entry_without_checksums_is_read_and_verify_says_so(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    clean, _ = _run(tmp_path, "db0", cache, capsys)
    (entry,) = [Path(e["path"]) for e in list_entries(cache)]
    done_f = entry / "shard-00000" / "done.json"
    done = json.loads(done_f.read_text(encoding="utf-8"))
    done.pop("files")
    done_f.write_text(json.dumps(done), encoding="utf-8")
    again, err = _run(tmp_path, "db1", cache, capsys)
    assert "damaged" not in err and again["timings"]["cached"] is True and again["metrics"] == clean["metrics"]
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 1
    assert "no checksums recorded" in capsys.readouterr().out


def test_weights_rewritten_in_place_with_mtime_restored_get_a_new_hash(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import medprobe.encoders.weights as w

    monkeypatch.setattr(w, "_sha_memo", lambda: tmp_path / "memo.json")
    f = tmp_path / "weights.safetensors"
    f.write_bytes(np.arange(4096, dtype=np.uint8).tobytes())
    h1 = w.file_sha256(f)
    st = f.stat()
    time.sleep(0.01)
    with open(f, "r+b") as fh:  # same size, one byte changed, modification time put back
        fh.seek(100)
        fh.write(b"\xff")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns and f.stat().st_size == st.st_size
    h2 = w.file_sha256(f)
    assert h2 != h1 and h2 == w.sha256_file(f)
    assert json.loads((tmp_path / "memo.json").read_text(encoding="utf-8")) == {
        k: h2 for k in json.loads((tmp_path / "memo.json").read_text(encoding="utf-8"))}  # one entry, the new one
    shutil.copy(f, tmp_path / "copy.safetensors")
    assert w.file_sha256(tmp_path / "copy.safetensors") == h2


def test_decoder_training_resumes_after_a_kill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed in epoch 3 of 4: the rerun resumes after epoch 2 from the atomic checkpoint and ends exactly as an
    uninterrupted run; the checkpoint is gone once the row is stored."""
    import medprobe.heads.seg_train as st
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    spec = parse_task({"name": "seg", "dataset": "phantom:mri2d-segmentation", "data": {"n": 12, "size": 32},
                       "encoder": "none", "heads": ["decoder2d"], "preprocess": {"resolution": 32},
                       "split": {"fractions": [0.6, 0.2, 0.2]}, "metrics": {"bootstrap": 50, "overlays": 0},
                       "head_params": {"decoder2d": {"epochs": 4, "iters_per_epoch": 3, "batch_size": 2,
                                                     "width": 16, "lr": 1e-3}},
                       "cache_dir": str(tmp_path / "cache")})
    ref = run_task(spec, db=ResultsDB(tmp_path / "ref"), verbose=False)[0]

    real_validate, calls = st.validate, []

    def dying_validate(*a, **k):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_validate(*a, **k)

    monkeypatch.setattr(st, "validate", dying_validate)
    with pytest.raises(KeyboardInterrupt):
        run_task(spec, db=ResultsDB(tmp_path / "res"), verbose=False)
    (ckpt,) = (tmp_path / "res" / "checkpoints").glob("*.pt")
    assert not ResultsDB(tmp_path / "res").runs()
    monkeypatch.setattr(st, "validate", real_validate)
    resumed = run_task(spec, db=ResultsDB(tmp_path / "res"), verbose=False)[0]
    hist = resumed["record"]["notes"]["history"]
    assert hist == ref["record"]["notes"]["history"] | {"seconds": hist["seconds"]}
    assert resumed["metrics"] == ref["metrics"]
    assert not ckpt.exists()


def test_absurd_resolution_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", *FLAGS, "--resolution", "100000", "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # batch_size auto (the default): not even one item fits, so the line says what one item needs and what to change
    assert len(err.splitlines()) == 1 and "100000x100000" in err and "for one item" in err and "GB" in err
    assert "lower the resolution" in err
    assert not list_entries(tmp_path / "c")  # no half-made cache entry


def test_full_disk_during_extraction_is_one_line_and_keeps_finished_shards(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import medprobe.features.common as eng  # write_shard saves the arrays

    real, calls = eng.atomic_save_npy, []

    def full_disk(path, arr):  # type: ignore[no-untyped-def]
        calls.append(path)
        if "shard-00001" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, arr)

    monkeypatch.setattr(eng, "atomic_save_npy", full_disk)
    cache = tmp_path / "c"
    argv = ["run", *FLAGS, "--data-opt", "n=300", "--db", str(tmp_path / "db"), "--cache-dir", str(cache)]
    assert main(argv) == 2  # 300 images: two shards (256 + 44); the second cannot be written
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("extract ")]  # progress lines
    assert len(err) == 1 and "No space left on device" in err[0] and "resumes" in err[0]
    (entry,) = [p for p in cache.iterdir() if p.name != "audit"]
    assert (entry / "shard-00000" / "done.json").is_file() and not (entry / "manifest.json").exists()
    monkeypatch.setattr(eng, "atomic_save_npy", real)
    assert main(argv) == 0  # resumes: only the missing shard is computed
    assert (entry / "manifest.json").is_file()


def test_hf_folder_with_truncated_safetensors_or_pickle_is_one_line(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A Hugging Face model folder loads from safetensors; a truncated file or pickle-only weights are refused
    with one line naming the file, and no pickle is ever unpickled."""
    import torch

    from medprobe.encoders import create_encoder, get_spec
    from medprobe.encoders.hf_vit import build_hf_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_hf_model(get_spec("dinov2-vits14"))
    good = tmp_path / "good"
    model.save_pretrained(good, safe_serialization=True)
    enc = create_encoder("dinov2-vits14", weights=str(good))
    assert enc.pretrained and enc.weights_id.startswith("sha256:")
    capsys.readouterr()  # transformers' own progress bars while saving

    bad = tmp_path / "truncated"
    shutil.copytree(good, bad)
    (st,) = bad.glob("*.safetensors")
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    pick = tmp_path / "pickle"
    shutil.copytree(good, pick)
    next(pick.glob("*.safetensors")).unlink()
    marker = tmp_path / "unpickled"
    (pick / "pytorch_model.bin").write_bytes(  # a pickle that would create a file if it were ever loaded
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    for folder, needle in ((bad, "truncated or not a safetensors file"), (pick, "only pickle weights")):
        argv = ["run", *FLAGS, "--encoder", "dinov2-vits14", "--weights", str(folder), "--db", str(tmp_path / "db"),
                "--cache-dir", str(tmp_path / "c")]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err and str(folder) in err
    assert not marker.exists()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines()
           if not ln.startswith(("extract ", "medprobe: head ", "medprobe: warning:"))]
    assert len(err) == 1 and err[0].startswith("medprobe: error:") and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("extra,needle", [
    (["--device", "foo"], "device: 'foo' is not a device"),
    (["--device", "cuda"], "torch sees no CUDA device"),
])
def test_cli_values_fail_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                     needle: str) -> None:
    import torch

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the no-CUDA case cannot happen here")  # never in CI (CPU only)
    assert main(["run", *FLAGS, *extra, "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert needle in _one_line_error(capsys)


def test_non_utf8_yaml_and_unknown_dataset_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.data.io import write_png

    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert main(["run", str(bad), "--db", str(tmp_path / "db")]) == 2
    assert str(bad) in _one_line_error(capsys)
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            write_png(tmp_path / "imgs" / c / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    argv = ["run", "--dataset", f"folder:{tmp_path / 'imgs'}", "--data-opt", "limit=60", "--encoder", "none",
            "--db", str(tmp_path / "db")]
    assert main(argv) == 2
    assert "unknown key 'data.limit'" in _one_line_error(capsys)


def test_stray_label_in_an_untyped_csv_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.data.io import write_png

    rows = ["path,label"]
    for i in range(12):
        write_png(tmp_path / f"{i}.png", np.full((16, 16), i * 10, np.uint8))
        rows.append(f"{i}.png,{7 if i == 5 else i % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert main(["run", "--dataset", f"csv:{tmp_path / 'labels.csv'}", "--data-opt", "label_columns=label",
                 "--encoder", "none", "--db", str(tmp_path / "db")]) == 2
    err = _one_line_error(capsys)
    assert "labels.csv" in err and "label 7 makes classes 0..7" in err and "row 6" in err


def test_non_finite_features_never_reach_a_solver(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.features.cache import FeatureStore

    real = FeatureStore.pooled

    def poisoned(self, *a, **k):  # type: ignore[no-untyped-def]
        x = real(self, *a, **k).copy()
        x[3, 0] = np.inf
        return x

    monkeypatch.setattr(FeatureStore, "pooled", poisoned)
    assert main(["run", *FLAGS, "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "NaN or infinite" in _one_line_error(capsys)


def test_cache_folder_removed_mid_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.pipeline.families.classification import ClassificationFamily

    real = ClassificationFamily.prepare

    def vanish(self, ctx):  # type: ignore[no-untyped-def]
        shutil.rmtree(tmp_path / "c")  # someone cleans the cache while the task runs
        return real(self, ctx)

    monkeypatch.setattr(ClassificationFamily, "prepare", vanish)
    assert main(["run", *FLAGS, "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "No such file or directory" in _one_line_error(capsys)


def test_report_md_escapes_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = "<img src=x onerror=alert(1)>"
    assert main(["run", *FLAGS, "--name", evil, "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert main(["report", "--db", str(tmp_path / "db"), "--out", str(tmp_path / "r.html"), "--no-pca"]) == 0
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "&lt;img src=x onerror=alert(1)&gt;" in md and evil not in md and evil not in html


def test_unwritable_results_folder_is_found_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:  # root writes anywhere: make the results path a file instead of a folder
        (tmp_path / "db").write_text("not a folder", encoding="utf-8")
        db = tmp_path / "db" / "sub"
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o500)
        db = tmp_path / "ro" / "db"
    assert main(["run", *FLAGS, "--db", str(db), "--cache-dir", str(tmp_path / "c")]) == 2
    _one_line_error(capsys)
    assert not (tmp_path / "c").exists() or not list_entries(tmp_path / "c")  # nothing extracted first


def test_rerun_adds_no_duplicate_row_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.results import ResultsDB

    argv = ["run", *FLAGS, "--head", "logreg,knn", "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 0 and main(argv) == 0
    err = capsys.readouterr().err
    assert len(ResultsDB(tmp_path / "db").runs()) == 2 and err.count("already stored with this config") == 2
    assert main([*argv, "--rerun"]) == 0
    assert len(ResultsDB(tmp_path / "db").runs()) == 4


def test_recorded_devices_are_those_that_computed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Features extracted on a GPU machine, heads fitted here on the CPU: each device is recorded as such."""
    from medprobe.results import ResultsDB

    cache = tmp_path / "c"
    _run(tmp_path, "db0", cache, capsys)
    (entry,) = [Path(e["path"]) for e in list_entries(cache)]
    side = entry / "compute.json"
    comp = json.loads(side.read_text(encoding="utf-8"))
    side.write_text(json.dumps({**comp, "device": "cuda:0"}), encoding="utf-8")  # as if extracted on a GPU
    assert main(["run", *FLAGS, "--db", str(tmp_path / "db1"), "--cache-dir", str(cache), "--device", "cpu"]) == 0
    (row,) = ResultsDB(tmp_path / "db1").runs()
    assert row["device"] == "cpu" and row["timings"]["cached"] is True
    assert row["compute"]["devices"] == {"features": "cuda:0", "heads": "cpu"}


# -- issue 22: nothing lost, nothing stale ------------------------------------------------------------------------
def test_case01_export_never_overwrites_a_database_or_an_existing_file(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from medprobe.results import ResultsDB

    _run(tmp_path, "db", tmp_path / "c", capsys)
    dbf = tmp_path / "db" / "results.db"
    before = dbf.read_bytes()[:16]
    for target in (dbf, tmp_path / "db"):  # the database itself, and its folder
        assert main(["results", "export", "--db", str(tmp_path / "db"), "--csv", str(target), "--force"]) == 2
        assert str(target) in _one_line_error(capsys)
    other = tmp_path / "other.db"
    shutil.copy(dbf, other)  # another medprobe database: never written over, --force or not
    assert main(["results", "export", "--db", str(tmp_path / "db"), "--csv", str(other), "--force"]) == 2
    assert "is a database" in _one_line_error(capsys)
    assert dbf.read_bytes()[:16] == before == other.read_bytes()[:16] and len(ResultsDB(dbf).runs()) == 1
    out = tmp_path / "r.csv"
    out.write_text("mine\n", encoding="utf-8")
    assert main(["results", "export", "--db", str(tmp_path / "db"), "--csv", str(out)]) == 2
    assert "--force" in _one_line_error(capsys) and out.read_text(encoding="utf-8") == "mine\n"
    assert main(["results", "export", "--db", str(tmp_path / "db"), "--csv", str(out), "--force"]) == 0
    assert out.read_text(encoding="utf-8").startswith("run_id,") or "," in out.read_text(encoding="utf-8")
    assert main(["results", "export", "--db", str(tmp_path / "db"), "--csv", str(tmp_path / "new.csv")]) == 0
    assert (tmp_path / "new.csv").read_text(encoding="utf-8") == out.read_text(encoding="utf-8")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


def test_case04_cache_rm_needs_a_real_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    _run(tmp_path, "db", cache, capsys)
    (entry,) = [Path(e["path"]) for e in list_entries(cache)]
    for prefix in ("", entry.name[:3]):
        assert main(["cache", "rm", prefix, "--cache-dir", str(cache)]) == 2
        assert "too short" in _one_line_error(capsys)
        assert entry.is_dir()
    assert main(["cache", "rm", entry.name[:4], "--cache-dir", str(cache)]) == 0
    assert not entry.exists()


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00garbage", b"{not json", b"[1, 2, 3]", b'{"spec": 7}'])
def test_case05_cache_commands_survive_a_damaged_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          damage: bytes) -> None:
    cache = tmp_path / "cache"
    _run(tmp_path, "db", cache, capsys)
    (entry,) = [Path(e["path"]) for e in list_entries(cache)]
    (entry / "manifest.json").write_bytes(damage)
    if not damage.startswith(b'{"'):  # both damaged: still an entry by its shards (an object naming no key is
        (entry / "spec.json").write_bytes(damage)  # someone else's folder, never ours to list or remove)
    capsys.readouterr()
    assert main(["cache", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr()
    assert entry.name in out.out and "DAMAGED" in out.out and "Traceback" not in out.err
    assert main(["cache", "verify", "--cache-dir", str(cache)]) == 1
    out = capsys.readouterr()
    assert f"{entry.name}: " in out.out and "manifest.json" in out.out and not out.err
    assert main(["cache", "rm", "--all", "--yes", "--cache-dir", str(cache)]) == 0
    assert not entry.exists()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "---\n"])
def test_case08_an_empty_task_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    f = tmp_path / "task.yaml"
    f.write_text(text, encoding="utf-8")
    assert main(["run", str(f), "--db", str(tmp_path / "db"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = _one_line_error(capsys)
    assert str(f) in err and "empty" in err
    assert not (tmp_path / "c").exists() and not (tmp_path / "db").exists()  # nothing ran


def test_case09_one_line_per_event(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A damaged entry: one line (no 'features cached' first, no second damage line); a dataset option that
    takes a list read from one string; --layers out of range for a blockless encoder refused; encoder none is
    the image-only baseline, not 'UNTRAINED weights'."""
    import logging

    from medprobe.data.io import write_png
    from medprobe.features import cache as cache_mod

    cache = tmp_path / "c"
    _, err = _run(tmp_path, "db0", cache, capsys)
    (entry,) = [Path(e["path"]) for e in list_entries(cache)]
    (entry / "manifest.json").write_text("{broken", encoding="utf-8")
    cache_mod._VERIFIED.clear()
    with caplog.at_level(logging.INFO, logger="medprobe"):
        assert main(["run", *FLAGS, "--db", str(tmp_path / "db1"), "--cache-dir", str(cache)]) == 0
    cap = capsys.readouterr()
    said = [ln for ln in cap.err.splitlines() + caplog.text.splitlines() if entry.name in ln]
    assert len(said) == 1 and "damaged" in said[0], said
    assert "no encoder: the image-only baseline" in cap.out and "UNTRAINED" not in cap.out

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(6):
            write_png(tmp_path / "imgs" / c / f"{i}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
        write_png(tmp_path / "imgs" / c / "x.jpg.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    assert main(["config", "show", "--dataset", f"folder:{tmp_path / 'imgs'}", "--data-opt", "extensions=.png",
                 "--encoder", "none"]) == 0
    out = capsys.readouterr().out
    assert "extensions: [.png]" in out.replace("'", "") and "(., .p" not in out

    argv = ["run", *FLAGS, "--layers", "99", "--db", str(tmp_path / "db2"), "--cache-dir", str(cache)]
    assert main(argv) == 2
    assert "layer 99 out of range for none" in _one_line_error(capsys)
    assert not (tmp_path / "db2" / "results.db").exists()


def _hashes(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    assert main(["config", "show", *argv]) == 0
    out = capsys.readouterr().out.split("# config hash per head", 1)[1]
    return [ln.split(":")[1].strip() for ln in out.splitlines() if ln.startswith("#   ")]


def test_case02_weights_rewritten_at_the_same_path_change_the_config_hash(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDPROBE_CACHE", str(tmp_path / "cache"))  # where the weights-hash memo lives
    f = tmp_path / "model.safetensors"
    f.write_bytes(np.arange(64 * 1024, dtype=np.uint8).tobytes())
    argv = ["--encoder", "dinov3-vits16", "--weights", str(f), "--no-verify", "--head", "logreg,knn"]
    h1 = _hashes(capsys, argv)
    assert len(h1) == 2 and _hashes(capsys, argv) == h1  # memoised, stable
    st = f.stat()
    with open(f, "r+b") as fh:  # 4 KiB overwritten in place: size kept, mtime restored
        fh.seek(8192)
        fh.write(b"\x07" * 4096)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    h2 = _hashes(capsys, argv)
    assert all(a != b for a, b in zip(h1, h2))
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(f, moved)  # the same bytes under another name: the same identity
    assert _hashes(capsys, [*argv[:3], str(moved), *argv[4:]]) == h2
    # weights: random and encoder none hash as before (no file behind them)
    for extra in (["--encoder", "dinov3-vits16", "--weights", "random"], ["--encoder", "none"]):
        base = _hashes(capsys, [*extra, "--head", "logreg"])
        from medprobe.pipeline.task import parse_task

        raw: dict = {"name": "cli", "encoder": extra[1], "heads": ["logreg"]}
        if "--weights" in extra:
            raw["weights"] = "random"
        d = parse_task(raw)
        assert base == [d.config_hash("logreg")]  # pinned values: test_typed_options (shipped hashes unchanged)


def test_case03_fingerprint_sees_swapped_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two same-size PNGs in different class folders swap their bytes (mtimes restored): the dataset fingerprint
    changes, so the feature cache is not served stale; the config hash does not change."""
    from medprobe.data import create_dataset
    from medprobe.data import io as dio
    from medprobe.data.io import write_png

    rng = np.random.default_rng(0)
    for c, base in (("a", 40), ("b", 200)):
        for i in range(8):
            img = np.clip(rng.normal(base, 5, (32, 32)), 0, 255).astype(np.uint8)
            write_png(tmp_path / "imgs" / c / f"{i}.png", img)
    a, b = tmp_path / "imgs" / "a" / "0.png", tmp_path / "imgs" / "b" / "0.png"
    pad = max(a.stat().st_size, b.stat().st_size)  # same size: pad the shorter PNG after IEND (readers ignore it)
    for f in (a, b):
        f.write_bytes(f.read_bytes().ljust(pad, b"\0"))
    argv = ["run", "--dataset", f"folder:{tmp_path / 'imgs'}", "--encoder", "none", "--resolution", "32",
            "--head", "knn", "--split", "fractions:0.5,0.25,0.25", "--cache-dir", str(tmp_path / "c")]
    fp1 = create_dataset(f"folder:{tmp_path / 'imgs'}").fingerprint()
    assert main([*argv, "--db", str(tmp_path / "db1")]) == 0
    sa, sb = a.stat(), b.stat()
    ba, bb = a.read_bytes(), b.read_bytes()
    a.write_bytes(bb)
    b.write_bytes(ba)
    os.utime(a, ns=(sa.st_atime_ns, sa.st_mtime_ns))
    os.utime(b, ns=(sb.st_atime_ns, sb.st_mtime_ns))
    dio._DIGESTS.clear()  # a new process remembers nothing
    fp2 = create_dataset(f"folder:{tmp_path / 'imgs'}").fingerprint()
    assert fp1 != fp2
    assert main([*argv, "--db", str(tmp_path / "db2")]) == 0
    from medprobe.results import ResultsDB

    (r1,), (r2,) = ResultsDB(tmp_path / "db1").runs(), ResultsDB(tmp_path / "db2").runs()
    assert r1["config_hash"] == r2["config_hash"] and r1["dataset_fingerprint"] != r2["dataset_fingerprint"]
    assert r2["timings"]["cached"] is False  # features computed for the new bytes, not served from the cache
    assert len([p for p in (tmp_path / "c").iterdir() if p.name != "audit"]) == 2


def test_case06_identical_runs_at_once_store_one_row(tmp_path: Path) -> None:
    """Three identical `medprobe run` processes started together: one row per (config hash, head); the others
    say "already stored" (skipped before work, or not stored after it)."""
    import subprocess
    import sys

    from medprobe.results import ResultsDB

    cmd = [sys.executable, "-m", "medprobe.cli.main", "run", *FLAGS, "--db", str(tmp_path / "db"),
           "--cache-dir", str(tmp_path / "c")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    rows = ResultsDB(tmp_path / "db").runs()
    assert len(rows) == 1
    assert sum("already stored with this config" in e for _, e in outs) == 2
    db = ResultsDB(tmp_path / "db")  # the store's own rule, whatever the caller checked before
    again = db.add_run({**rows[0], "run_id": None}, {"auc": 0.5}, unique=True)
    assert again == rows[0]["run_id"] and len(db.runs()) == 1


CASE7 = ["run", "--dataset", "phantom:ct3d-binary", "--data-opt", "n=24", "--data-opt", "size=16", "--encoder",
         "dinov3-vits16", "--weights", "random", "--resolution", "32", "--head", "logreg", "--split",
         "fractions:0.6,0.2,0.2", "--token", "mean"]


def _done_shards(cache: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/shard-*/done.json")}


def _interrupt_after_a_shard(cmd: list[str], cache: Path, sig: int) -> tuple[int, str, dict[str, int]]:
    """Start ``cmd`` the way a shell starts ``medprobe ... &`` (SIGINT handed over ignored), send ``sig`` once
    one more shard is done than before, and return the exit code, stderr and the shards done then."""
    import signal
    import subprocess
    import time

    before = _done_shards(cache)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    t0 = time.monotonic()
    while p.poll() is None and len(_done_shards(cache)) <= len(before) and time.monotonic() - t0 < 500:
        time.sleep(0.05)
    done = _done_shards(cache)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return p.returncode, err, done


def test_case07_sigint_and_sigterm_stop_extraction_keep_shards_store_nothing(tmp_path: Path) -> None:
    """SIGINT (even when the shell handed it over ignored) and SIGTERM after a finished shard: the run stops
    within a batch, exits 130 in one line, stores no row; the next run resumes from the finished shards (not
    recomputed) and the last one stores exactly one row."""
    import signal
    import subprocess
    import sys

    from medprobe.results import ResultsDB

    cache, db = tmp_path / "c", tmp_path / "db"
    cmd = [sys.executable, "-m", "medprobe.cli.main", *CASE7, "--db", str(db), "--cache-dir", str(cache)]
    kept: dict[str, int] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        rc, err, done = _interrupt_after_a_shard(cmd, cache, sig)
        assert rc == 130, err
        assert err.strip().splitlines()[-1] == "medprobe: interrupted (finished work is kept; rerun to resume)"
        assert "Traceback" not in err
        after = _done_shards(cache)
        assert len(kept) < len(done) <= len(after) < 3  # stopped before the last of the 3 shards
        assert {k: after[k] for k in kept} == kept  # the earlier run's shards were not recomputed
        assert not list(cache.glob("*/manifest.json"))
        assert not ResultsDB(db).runs()
        kept = after
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr
    after = _done_shards(cache)
    assert len(after) == 3 and {k: after[k] for k in kept} == kept
    (row,) = ResultsDB(db).runs()
    assert row["head"] == "logreg"


def _conflict_set(root: Path) -> None:
    """train/val/test class folders of distinct smooth images; one train image also sits, pixel for pixel, in
    test under the other class (a label conflict), one in test under its own class (a plain test leak)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = {}
    for split, n in (("train", 8), ("val", 3), ("test", 4)):
        for cls in ("benign", "malignant"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                small = (rng.random((6, 6)) * 255).astype(np.uint8)
                img = np.asarray(Image.fromarray(small).resize((48, 48), Image.BICUBIC))
                Image.fromarray(img).save(root / split / cls / f"{cls[0]}{k}.png")
                imgs[f"{split}/{cls}/{k}"] = img
    Image.fromarray(imgs["train/benign/0"]).save(root / "test" / "malignant" / "same.png")
    Image.fromarray(imgs["train/benign/1"]).save(root / "test" / "benign" / "copy.png")


def test_case10_label_conflicts_are_named_stored_dropped_or_refused(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The same image under two class folders across train/test: `medprobe audit` lists it as a label conflict
    (first, with both labels); a run counts it in its one warning line and stores it; audit.mode drop removes
    the conflicting (and the leaked) test cases, strict refuses in one line and stores nothing."""
    from medprobe.results import ResultsDB

    data = tmp_path / "busi"
    _conflict_set(data)
    assert main(["audit", f"folder:{data}", "--cache-dir", str(tmp_path / "c"), "--json",
                 str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    conflict_lines = [ln for ln in out.splitlines() if "LABEL CONFLICT" in ln]
    assert len(conflict_lines) == 1
    assert "test/malignant/same" in conflict_lines[0] and "train/benign/b0" in conflict_lines[0]
    assert "malignant/benign" in conflict_lines[0]
    assert "1 label conflict(s)" in out and "2 test case(s) alike a train/val case" in out
    found = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert found["label_conflicts"] == 1 and found["label_conflict_test_cases"] == ["test/malignant/same"]
    assert found["pairs"][0]["conflict"] is True and found["pairs"][1]["conflict"] is False

    def task(mode: str) -> str:
        t = tmp_path / f"{mode}.yaml"
        t.write_text(f"name: busi-{mode}\ndataset: folder:{data}\nencoder: none\npreprocess: {{resolution: 32}}\n"
                     f"features: {{token: mean, progress: false}}\nheads: [logreg]\naudit: {{mode: {mode}}}\n",
                     encoding="utf-8")
        return str(t)

    db = tmp_path / "db"
    common = ["--db", str(db), "--cache-dir", str(tmp_path / "c")]
    assert main(["run", task("strict"), *common]) == 2  # first: strict hashes as warn (it changes no number)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 label conflict(s)" in err[0] and "test/malignant/same" in err[0], err
    assert not ResultsDB(db).runs()
    assert main(["run", task("warn"), *common]) == 0
    err = capsys.readouterr().err
    warn = [ln for ln in err.splitlines() if ln.startswith("medprobe: warning: audit:")]
    assert len(warn) == 1 and "1 label conflict(s)" in warn[0] and "kept (audit.mode: warn)" in warn[0]
    (row,) = ResultsDB(db).runs()
    notes = row["labels"]["audit"]  # the record's notes
    assert notes["label_conflicts"] == 1 and notes["label_conflict_test_cases"] == ["test/malignant/same"]
    assert notes["pairs"][0]["conflict"] and {notes["pairs"][0]["label_a"], notes["pairs"][0]["label_b"]} == {
        "benign", "malignant"}
    assert row["split"]["n_test"] == 10

    assert main(["run", task("drop"), *common]) == 0
    capsys.readouterr()
    drop = next(r for r in ResultsDB(db).runs() if r["task"] == "busi-drop")
    assert drop["labels"]["audit"]["dropped_from_test"] == ["test/benign/copy", "test/malignant/same"]
    assert drop["split"]["n_test"] == 8
