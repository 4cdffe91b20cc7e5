"""Per-channel intensity normalisation (PET/CT, multi-sequence MRI) and the PET/CT input ablation (data.inputs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe.data import ArrayDataset, TaskInfo, register_dataset, unregister_dataset
from medprobe.errors import ConfigError
from medprobe.preprocess import PreprocessConfig, Preprocessor, apply_intensity
from medprobe.preprocess.channels import parse_inputs, select_inputs
from medprobe.preprocess.intensity import channel_intensities
from medprobe.results import ResultsDB

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def petct_case(seed: int, shape: tuple[int, int, int] = (48, 48, 4)) -> tuple[np.ndarray, np.ndarray]:
    """CT in HU (air -1024, soft tissue ~40, bone up to 3000) and PET in SUV (background ~1, one lesion up to
    15) as a ``(X, Y, Z, 2)`` float32 volume, and the lesion mask (1 = lesion). The lesion barely shows in CT."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    body = ((x - 24) / 20.0) ** 2 + ((y - 24) / 17.0) ** 2 < 1
    ct = np.where(body, 40.0, -1024.0)[..., None].repeat(shape[2], -1)
    ct[18:22, 30:36] = 3000.0  # a bone
    ct += rng.normal(0, 10, ct.shape)
    cx, cy = rng.integers(14, 34, 2)
    lesion = (((x - cx) / 4.0) ** 2 + ((y - cy) / 4.0) ** 2 < 1)[..., None].repeat(shape[2], -1)
    pet = np.where(body, 1.0, 0.0)[..., None].repeat(shape[2], -1) + rng.gamma(2.0, 0.1, ct.shape)
    pet[lesion] = 15.0 - rng.random(int(lesion.sum()))
    ct[lesion] += 15.0
    return np.stack([ct, pet], -1).astype(np.float32), lesion.astype(np.uint8)


def _unnormalise(x: Any) -> np.ndarray:
    """(S, V, 3, H, W) encoder input -> the [0, 1] grey values per view, (V, S, H, W)."""
    a = x.numpy()[:, :, 0] * STD[0] + MEAN[0]
    return np.moveaxis(a, 1, 0)


def _pre(**kw: Any) -> Preprocessor:
    cfg = PreprocessConfig(resolution=(48, 48), **kw).resolved(mean=MEAN, std=STD, native_resolution=48,
                                                               modality="petct")
    return Preprocessor(cfg, patch_size=16)


def _item(img: np.ndarray) -> Any:
    ds = ArrayDataset([img], spatial_dims=3, modality="petct")
    return ds.load(0)


def test_joint_minmax_squeezes_pet_but_per_channel_spans_each_range() -> None:
    img, _ = petct_case(0)
    joint = apply_intensity(img, "minmax", has_channels=True)
    assert np.ptp(joint[..., 1]) < 0.01  # the bug: PET lands in a sliver of the CT range
    for spec in ("minmax", "auto"):  # one option, applied channel by channel (per_channel input)
        views = _unnormalise(_pre(intensity=spec, channels="per_channel")(_item(img)))
        assert views.shape[0] == 2
        assert np.ptp(views[1]) > 0.95 and np.ptp(views[0]) > 0.95, spec
    per = channel_intensities("auto", 2, ["CT", "PET"], "petct")
    assert per == "ct:soft_tissue|pet:suv:0,10"
    views = _unnormalise(_pre(intensity=per, channels="per_channel")(_item(img)))
    pet = views[1]
    assert pet.max() == pytest.approx(1.0, abs=1e-3) and pet.min() < 0.01  # SUV 0..10 clipped, lesion saturates
    assert 0.05 < np.median(pet[pet > 0.05]) < 0.3  # background SUV ~1 -> ~0.1, well inside the range
    ct = views[0]
    body = ct[(ct > 0.01) & (ct < 0.99)]
    assert body.size and abs(float(np.median(body)) - 0.5) < 0.1  # 40 HU sits mid-window (40, 400)


def test_auto_resolves_per_channel_from_names() -> None:
    assert channel_intensities("auto", 2, ["T2", "ADC"], "mri") == "mri:percentile:0.5,99.5|mri:percentile:0.5,99.5"
    assert channel_intensities("auto", 4, ["FLAIR", "T1w", "t1gd", "T2w"], "mri").count("mri:percentile") == 4
    assert channel_intensities("auto", 2, None, "petct") == "minmax|minmax"  # unnamed: each its own min-max
    assert channel_intensities("minmax", 3) == "minmax|minmax|minmax"
    assert channel_intensities("auto", 2, ["CT", "PT"], "petct") == "ct:soft_tissue|pet:suv:0,10"  # HECKTOR names
    assert channel_intensities("ct:bone|auto", 2, ["CT", "PET"]) == "ct:bone|pet:suv:0,10"
    with pytest.raises(ConfigError, match="2 per-channel options .* for 3-channel input"):
        channel_intensities("minmax|minmax", 3)
    # the typed config: a YAML list and 'a|b' are one canonical value; a bad entry names the key
    assert PreprocessConfig(intensity=["ct:soft_tissue", "pet:suv:0,15"]).intensity == "ct:soft_tissue|pet:suv:0,15"
    assert PreprocessConfig(intensity="ct:soft_tissue | pet:suv").intensity == "ct:soft_tissue|pet:suv"
    with pytest.raises(ConfigError, match="intensity: unknown intensity option 'pet:sv'"):
        PreprocessConfig(intensity="ct:lung|pet:sv")
    with pytest.raises(ConfigError, match="ct-multi .* per-channel list"):
        PreprocessConfig(intensity="ct-multi:lung,bone,brain|minmax")
    grey = ArrayDataset([np.zeros((32, 32), np.float32)]).load(0)
    cfg = PreprocessConfig(intensity="minmax|minmax", resolution=32).resolved(mean=MEAN, std=STD,
                                                                             native_resolution=32)
    with pytest.raises(ConfigError, match="single-channel image"):
        Preprocessor(cfg, 16)(grey)


def test_multisequence_mri_channels_each_get_their_percentiles() -> None:
    rng = np.random.default_rng(1)
    t2 = rng.gamma(2.0, 200.0, (32, 32, 3))  # arbitrary units in the hundreds
    adc = rng.gamma(2.0, 5e-4, (32, 32, 3))  # mm^2/s, ~1e-3
    img = np.stack([t2, adc], -1).astype(np.float32)
    joint = apply_intensity(img, "mri:percentile:0.5,99.5", has_channels=True)
    assert np.ptp(joint[..., 1]) < 1e-3
    cfg = PreprocessConfig(intensity=channel_intensities("auto", 2, ["T2", "ADC"], "mri"), channels="per_channel",
                           resolution=32).resolved(mean=MEAN, std=STD, native_resolution=32, modality="mri")
    views = _unnormalise(Preprocessor(cfg, 16)(ArrayDataset([img], spatial_dims=3, modality="mri").load(0)))
    for v in views:
        assert v.min() == pytest.approx(0.0, abs=1e-4) and v.max() == pytest.approx(1.0, abs=1e-4)
        assert 0.1 < float(np.median(v)) < 0.6


def test_inputs_select_channels_by_name_or_index() -> None:
    img, mask = petct_case(2)
    base = ArrayDataset([img], masks=[mask], spatial_dims=3, modality="petct", name="pp",
                        task=TaskInfo("segmentation", ("background", "lesion")))
    base.channel_names = ["CT", "PET"]  # type: ignore[attr-defined]
    assert parse_inputs("all") is None and parse_inputs("CT+PET") == ("CT", "PET")
    assert parse_inputs([1, 0]) == ("1", "0")
    pet = select_inputs(base, "pet")
    assert pet.modality == "pet" and pet.name == "pp[PET]" and pet.fingerprint() != base.fingerprint()
    assert np.array_equal(pet.load(0).image, img[..., 1])
    both = select_inputs(base, "1+0")
    assert both.modality == "petct" and np.array_equal(both.load(0).image, img[..., ::-1])
    # names are found through a Subset (what data.skip_invalid leaves when it drops cases)
    from medprobe.data.base import Subset
    from medprobe.preprocess.channels import channel_names

    sub = Subset(base, [0], tag="valid")
    assert channel_names(sub) == ["CT", "PET"] and np.array_equal(select_inputs(sub, "CT").load(0).image, img[..., 0])
    with pytest.raises(ConfigError, match=r"no channel named 'MR' \(0=CT, 1=PET\)"):
        select_inputs(base, "MR")
    with pytest.raises(ConfigError, match="channel 2 out of range"):
        select_inputs(base, 2)
    with pytest.raises(ConfigError, match="listed twice"):
        parse_inputs("CT+ct")


@pytest.fixture
def petct_kind() -> Any:
    def factory(arg: str, n: int = 6) -> ArrayDataset:
        cases = [petct_case(100 + i) for i in range(n)]
        ds = ArrayDataset([c[0] for c in cases], masks=[c[1] for c in cases], spatial_dims=3, modality="petct",
                          name="petct-phantom", task=TaskInfo("segmentation", ("background", "lesion")),
                          spacing=(2.0, 2.0, 3.0))
        ds.channel_names = ["CT", "PET"]  # type: ignore[attr-defined]
        return ds

    register_dataset("petct-phantom")(factory)
    yield "petct-phantom:x"
    unregister_dataset("petct-phantom")


def test_petct_input_ablation_runs_ct_pet_and_both(petct_kind: str, tmp_path: Path) -> None:
    """The study's PET/CT ablation: three tasks differing only in data.inputs, each recorded as such."""
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task

    db = ResultsDB(tmp_path / "res")
    rows = {}
    for inputs in ("CT", "PET", "CT+PET"):
        spec = parse_task({
            "name": f"petct-{inputs}", "kind": "segmentation", "dataset": petct_kind, "data": {"inputs": inputs},
            "encoder": "none", "preprocess": {"resolution": 48}, "split": {"fractions": [0.5, 0.17, 0.33]},
            "heads": ["decoder2d"], "cache_dir": str(tmp_path / "cache"), "device": "cpu",
            "features": {"progress": False}, "metrics": {"bootstrap": 20, "overlays": 0},
            "head_params": {"decoder2d": {"epochs": 1, "iters_per_epoch": 2, "batch_size": 2, "width": 16}}})
        rows[inputs] = run_task(spec, db=db, verbose=False)[0]
    rec = {k: r["record"] for k, r in rows.items()}
    assert [rec[k]["notes"]["inputs"] for k in rows] == ["CT", "PET", "CT+PET"]
    assert [rec[k]["dataset"] for k in rows] == ["petct-phantom[CT]", "petct-phantom[PET]", "petct-phantom[CT+PET]"]
    assert rec["CT"]["preprocessing"]["intensity"] == "ct:soft_tissue"
    assert rec["PET"]["preprocessing"]["intensity"] == "pet:suv:0,10"
    assert rec["CT+PET"]["preprocessing"]["intensity"] == "ct:soft_tissue|pet:suv:0,10"
    assert rec["CT+PET"]["preprocessing"]["channels"] == "per_channel"
    assert len({r["notes"]["cache_key"] for r in rec.values()}) == 3  # three different feature sets
    assert len({r["config_hash"] for r in rec.values()}) == 3
    for r in rows.values():
        assert np.isfinite(r["metrics"]["dice"][0])
        assert r["record"]["head_params"]["use_image"] is False


def test_petct_ablation_as_a_sweep_axis() -> None:
    """grid.inputs: one cell per input selection (its own features and hash), keyed i<inputs>."""
    from medprobe.pipeline.sweep import expand, sweep_from_dict

    repo = Path(__file__).resolve().parents[1]
    sw = sweep_from_dict({"tasks": [{"task": str(repo / "tasks" / "seg-autopet-petct.yaml"), "name": "autopet-ii"}],
                          "grid": {"inputs": ["CT", "PET", "CT+PET"], "head": ["decoder3d"]}}, name="ablation")
    cells = expand(sw)
    assert [c.spec.data["inputs"] for c in cells] == ["CT", "PET", "CT+PET"]
    assert [c.axes["inputs"] for c in cells] == ["CT", "PET", "CT+PET"]
    assert [c.key.split("/")[3] for c in cells] == ["iCT", "iPET", "iCT+PET"]
    assert all(c.spec.data["skip_invalid"] is True for c in cells) and len({c.config_hash for c in cells}) == 3
    from medprobe.report.analyze import collect

    runs = [{"run_id": str(i), "task": "autopet-ii", "task_type": "segmentation", "encoder": "none",
             "head": "decoder3d", "labels": {"inputs": c.axes["inputs"]}, "config_hash": c.config_hash}
            for i, c in enumerate(cells)]
    assert [p["method"] for p in collect(runs)] == ["none (untrained) [CT]", "none (untrained) [PET]",
                                                    "none (untrained) [CT+PET]"]


def test_petct_ablation_as_sweep_entries() -> None:
    """The shipped PET/CT task files, three sweep entries differing only in data.inputs: three cells."""
    from medprobe.pipeline.sweep import expand, sweep_from_dict

    repo = Path(__file__).resolve().parents[1]
    for task in ("seg-autopet-petct", "seg-hecktor-petct"):
        entries = [{"task": str(repo / "tasks" / f"{task}.yaml"), "name": f"{task}-{i}", "data": {"inputs": i}}
                   for i in ("CT", "PET", "CT+PET")]
        cells = expand(sweep_from_dict({"tasks": entries}, name="ablation"))
        assert [c.spec.data for c in cells] == [{"skip_invalid": True, "inputs": i} for i in ("CT", "PET", "CT+PET")]
        assert {c.spec.preprocess.intensity for c in cells} == {"auto"} and {c.head for c in cells} == {"decoder3d"}
        assert len({c.config_hash for c in cells}) == 3
