"""Registration: ConvexAdam equals the authors' package, recovers known deformations; MIND; affine; Jacobian
metrics on analytic fields; pair loading and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from medprobe.data import create_dataset
from medprobe.data.base import Item
from medprobe.data.pairs import make_pair
from medprobe.errors import DataError
from medprobe.metrics.registration import folding_fraction, jacobian_determinant, landmark_tre, pair_metrics
from medprobe.registration import ConvexAdamConfig, affine_register, convex_adam, mind_ssc, warp_image

SMALL = ConvexAdamConfig(grid_sp=4, disp_hw=3, niter=40)


def _phantom(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Textured blobs: smoothed noise plus a few bright ellipsoids."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random(shape), 1.5)
    idx = np.indices(shape, dtype=np.float64)
    for _ in range(6):
        c = rng.uniform(0.2, 0.8, len(shape)) * np.asarray(shape)
        r = rng.uniform(0.1, 0.2, len(shape)) * np.asarray(shape)
        img += 0.5 * (sum(((idx[k] - c[k]) / r[k]) ** 2 for k in range(len(shape))) < 1)
    return (img / img.max()).astype(np.float32)


def _smooth_field(shape: tuple[int, ...], amp: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 8) for _ in shape])
    return (amp * u / np.abs(u).max()).astype(np.float32)


def test_convexadam_equals_package_on_mind():
    from convexAdam import convex_adam_MIND as pkg
    fix = _phantom((40, 36, 24))
    mov = ndimage.shift(fix, (1.5, -2.0, 0.5), order=1, mode="nearest").astype(np.float32)
    ref = pkg.convex_adam_pt(fix, mov, grid_sp=4, disp_hw=3, selected_niter=20, device=torch.device("cpu"))
    ours = convex_adam(mind_ssc(fix)[0], mind_ssc(mov)[0], ConvexAdamConfig(grid_sp=4, disp_hw=3, niter=20))
    ref = np.moveaxis(ref, -1, 0)
    assert np.abs(ref - ours).max() < 1e-3  # stated tolerance: 1e-3 voxel (measured ~1e-6)
    assert np.abs(ours[:, 20, 18, 12] - (1.5, -2.0, 0.5)).max() < 0.6


def test_mind_equals_package_bitwise():
    from convexAdam import convex_adam_utils as utils
    img = _phantom((24, 21, 17))
    ref = utils.MINDSSC(torch.from_numpy(img)[None, None], 1, 2, device="cpu")
    ours = mind_ssc(img)
    assert ours.shape == (1, 12, 24, 21, 17)
    assert torch.equal(ref, ours)  # same channels, same order, same bits
    assert mind_ssc(img[:, :, 0]).shape == (1, 4, 24, 21)


def _package_field(fix: np.ndarray, mov: np.ndarray, **kw) -> np.ndarray:
    from convexAdam import convex_adam_MIND as pkg
    return np.moveaxis(pkg.convex_adam_pt(fix, mov, device=torch.device("cpu"), **kw), -1, 0)


def test_convexadam_equals_package_on_a_shape_not_a_multiple_of_the_grid():
    """Package defaults (grid 6, Adam grid 2): no axis a multiple of 6, odd axes for the Adam grid."""
    shape = (41, 37, 26)
    fix = _phantom(shape, seed=3)
    mov = (0.9 * ndimage.shift(fix, (1.5, -2.0, 1.0), order=1, mode="nearest")
           + 0.1 * _phantom(shape, seed=4)).astype(np.float32)
    ref = _package_field(fix, mov)
    ours = convex_adam(mind_ssc(fix)[0], mind_ssc(mov)[0], ConvexAdamConfig())
    assert np.abs(ref - ours).max() <= 1e-4


def test_convexadam_2d_non_divisible_convex_stage_equals_package_on_an_embedded_pair(monkeypatch):
    """The package is 3D only, so a 2D pair (47 x 43, no axis a multiple of 6) is embedded exactly: its 2D MIND
    channels extruded along a third axis of 15 coarse cells plus two channels (cos, sin) of 40 degrees per cell
    (unit norm: every third-axis shift costs, every in-plane border costs 1, as a constant (1, 0) pair does in
    2D), handed to the package in place of its own features. Away from the third axis' ends, where its zero
    padding reaches in, the package's convex stage (coupled convex + inverse consistency) is the 2D problem:
    its in-plane field on the middle slice equals ours. (The Adam stage is not comparable this way: its box
    filters' zero padding at those ends reaches every slice through the chaotic lr=1 steps.)"""
    from convexAdam import convex_adam_MIND as pkg
    fix = _phantom((47, 43), seed=5)
    mov = ndimage.shift(fix, (6.0, -6.0), order=1, mode="nearest").astype(np.float32)
    ff, fm = mind_ssc(fix), mind_ssc(mov)
    depth = 6 * 15
    theta = np.deg2rad(40.0) * (np.arange(depth) // 6)
    ring = torch.from_numpy(np.stack([np.cos(theta), np.sin(theta)]).astype(np.float32)).view(1, 2, 1, 1, depth)

    def embed(f: torch.Tensor) -> torch.Tensor:
        return torch.cat([f[..., None].expand(*f.shape, depth), ring.expand(1, 2, *f.shape[2:], depth)],
                         1).contiguous()

    def flat(f: torch.Tensor) -> torch.Tensor:
        return torch.cat([f, torch.ones_like(f[:, :1]), torch.zeros_like(f[:, :1])], 1)[0]

    monkeypatch.setattr(pkg, "extract_features", lambda **kw: (embed(ff), embed(fm)))
    blank = np.zeros((47, 43, depth), np.float32)
    ref = _package_field(blank, blank, lambda_weight=0)
    ours = convex_adam(flat(ff), flat(fm), ConvexAdamConfig(lambda_weight=0))
    assert np.abs(ref[2]).max() == 0  # no shift along the third axis
    assert np.abs(ref[:2, :, :, depth // 2] - ours).max() <= 1e-4
    centre = ours[:, 12:36, 12:32].reshape(2, -1).mean(1)
    assert centre[0] > 2 and centre[1] < -2  # it found the shift (backward field +6, -6)


@pytest.mark.parametrize("features", ["mind", "intensity"])
@pytest.mark.parametrize("shape", [(48, 48, 24), (96, 96)])
def test_known_deformation_is_recovered(features, shape):
    mov = _phantom(shape)
    u = _smooth_field(shape, amp=5.0)
    fix = warp_image(mov, u)  # fix(x) = mov(x + u(x)): registering fix <- mov must give u
    if features == "mind":
        ff, fm = mind_ssc(fix)[0], mind_ssc(mov)[0]
    else:
        ff, fm = torch.from_numpy(fix)[None], torch.from_numpy(mov)[None]
    cfg = SMALL if features == "mind" else ConvexAdamConfig(grid_sp=4, disp_hw=3, niter=60, cost_scale=200.0)
    disp = convex_adam(ff, fm, cfg)
    inner = tuple(slice(6, -6) for _ in shape)
    epe = np.linalg.norm((disp - u)[(slice(None), *inner)], axis=0).mean()
    mag = np.linalg.norm(u[(slice(None), *inner)], axis=0).mean()
    # stated: mean end-point error below 35 % (MIND) / 60 % (one raw intensity channel) of the mean magnitude
    assert epe < (0.35 if features == "mind" else 0.6) * mag, (epe, mag)
    assert folding_fraction(disp) < 0.001
    assert np.abs(warp_image(mov, disp) - fix)[inner].mean() < 0.5 * np.abs(mov - fix)[inner].mean()


def test_affine_recovers_a_translation_and_scaling():
    mov = _phantom((64, 64), seed=3)
    idx = np.indices(mov.shape, dtype=np.float32)
    c = (np.asarray(mov.shape, dtype=np.float32) - 1)[:, None, None] / 2
    u = (0.08 * (idx - c) + np.asarray([2.0, -3.0], dtype=np.float32)[:, None, None]).astype(np.float32)
    fix = warp_image(mov, u)
    disp = affine_register(mind_ssc(fix)[0], mind_ssc(mov)[0])
    inner = (slice(None), slice(10, -10), slice(10, -10))
    assert np.linalg.norm((disp - u)[inner], axis=0).mean() < 0.5


def test_jacobian_on_analytic_fields():
    shape = (20, 18, 16)
    zero = np.zeros((3, *shape))
    assert np.allclose(jacobian_determinant(zero), 1.0)
    assert folding_fraction(zero) == 0.0
    idx = np.indices(shape, dtype=np.float64)
    scale = 0.5 * idx  # phi = 1.5 x: det = 1.5^3 everywhere
    assert np.allclose(jacobian_determinant(scale), 1.5 ** 3)
    fold = zero.copy()
    fold[0] = -2.0 * idx[0]  # phi_0 = -x_0: det = -1 everywhere, every voxel folded
    assert np.allclose(jacobian_determinant(fold), -1.0)
    assert folding_fraction(fold) == 1.0
    half = zero.copy()
    half[0, :10] = -2.0 * idx[0, :10]  # folded on (about) half the grid
    assert 0.4 < folding_fraction(half) < 0.6
    m = pair_metrics(None, None, scale, [1], (1.0, 1.0, 1.0))
    assert m["folding_pct"] == 0.0 and m["std_log_jacobian"] < 1e-9


def test_pair_metrics_dice_hd95_pixels_and_tre():
    fixed = np.zeros((30, 30), np.int16)
    fixed[10:20, 10:20] = 1
    moving = np.roll(fixed, 2, axis=0)
    disp = np.zeros((2, 30, 30), np.float32)
    disp[0] = 2.0  # warped(x) = moving(x + 2) = fixed(x)
    from medprobe.metrics.registration import warp_labels
    m = pair_metrics(warp_labels(moving, disp), fixed, disp, [1], (2.0, 2.0),
                     landmarks=(np.array([[10.0, 10.0]]), np.array([[12.0, 10.0]])))
    assert m["dice"] == 1.0 and m["hd95"] == 0.0 and m["tre_mm"] == 0.0
    m0 = pair_metrics(moving, fixed, np.zeros_like(disp), [1], (2.0, 2.0),
                      landmarks=(np.array([[10.0, 10.0]]), np.array([[12.0, 10.0]])))
    assert m0["hd95_px"] == 2.0 and m0["hd95"] == 4.0 and m0["tre_mm"] == 4.0
    assert landmark_tre(np.array([[1.0, 1.0]]), np.array([[1.0, 4.0]]), np.zeros((2, 5, 5)), 1.0)[0] == 3.0


# ------------------------------------------------------------------------------------------- pair data
def _item(shape, spacing=None, mask=None, affine=None):
    dims = len(shape)
    return Item(id="x", image=np.ones(shape, np.float32), spatial_dims=dims, spacing=spacing or (1.0,) * dims,
                mask=mask, affine=affine)


def test_bad_pairs_each_give_one_line():
    with pytest.raises(DataError, match=r"^p1: fixed image is 2D .* moving image is 3D"):
        make_pair("p1", _item((8, 8)), _item((8, 8, 8)))
    with pytest.raises(DataError, match=r"^p2: only the fixed image has a label map"):
        make_pair("p2", _item((8, 8), mask=np.zeros((8, 8), int)), _item((8, 8)))
    a, b = np.zeros((8, 8), int), np.zeros((8, 8), int)
    a[2, 2], b[2, 2] = 1, 3
    with pytest.raises(DataError, match=r"^p3: label values differ between fixed \[0, 1\] and moving \[0, 3\]"):
        make_pair("p3", _item((8, 8), mask=a), _item((8, 8), mask=b))
    far = np.eye(4)
    far[:3, 3] = 500.0
    with pytest.raises(DataError, match=r"^p4: fixed and moving images do not overlap in world space"):
        make_pair("p4", _item((8, 8, 8), affine=np.eye(4)), _item((8, 8, 8), affine=far))
    for e in ("p1",):
        assert "\n" not in e


def test_pairs_csv_missing_file_and_resampling(tmp_path: Path):
    img = _phantom((20, 20, 10))
    lab = (img > 0.6).astype(np.uint8)
    nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "f.nii.gz")
    nib.save(nib.Nifti1Image(lab, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "fl.nii.gz")
    mov = ndimage.zoom(img, (0.5, 0.5, 1.0), order=1)
    nib.save(nib.Nifti1Image(mov, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "m.nii.gz")
    nib.save(nib.Nifti1Image(ndimage.zoom(lab, (0.5, 0.5, 1.0), order=0), np.diag([2.0, 2.0, 2.0, 1.0])),
             tmp_path / "ml.nii.gz")
    (tmp_path / "pairs.csv").write_text("id,fixed,moving,fixed_label,moving_label\n"
                                        "a,f.nii.gz,m.nii.gz,fl.nii.gz,ml.nii.gz\n")
    ds = create_dataset(f"pairs-csv:{tmp_path / 'pairs.csv'}")
    p = ds.load_pair(0)
    assert p.moving.spatial_shape == p.fixed.spatial_shape == (20, 20, 10)
    assert p.meta["resampled"]["moving"]["from"] == [10, 10, 10]
    assert np.abs(p.moving.image - img)[4:-4, 4:-4].mean() < 0.1
    (tmp_path / "bad.csv").write_text("id,fixed,moving\nb,f.nii.gz,gone.nii.gz\n")
    with pytest.raises(DataError, match=r"bad.csv line 2 \(b\): moving file gone.nii.gz does not exist$"):
        create_dataset(f"pairs-csv:{tmp_path / 'bad.csv'}")


# ------------------------------------------------------------------------------------------- real data
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HIPPO = SHARED / "msd-task04-hippocampus"
SCT = SHARED / "format-samples" / "sct-spinalcord"


@pytest.mark.skipif(not HIPPO.is_dir(), reason="../shared/data/msd-task04-hippocampus is absent")
def test_convexadam_head_equals_package_on_a_real_34x47x43_pair():
    """The first seeded hippocampus pair (fixed hippocampus_336, 34 x 47 x 43, moving resampled onto it): the
    convexadam head's field equals convex_adam_pt at the package defaults on the same normalised images
    (once 0.49 voxel apart: the Adam stage amplified 1e-7 differences of the MIND channels)."""
    from medprobe.registration.dino import normalise_intensity
    from medprobe.registration.methods import ConvexAdamHead

    p = create_dataset(f"seg-pairs:msd:{HIPPO}", n_pairs=1, seed=0).load_pair(0)
    assert p.fixed.image.shape == (34, 47, 43)
    ref = _package_field(normalise_intensity(p.fixed.image), normalise_intensity(p.moving.image))
    ours, _ = ConvexAdamHead(features="mind").register(p.fixed.image, p.moving.image)
    assert np.abs(ref - ours).max() <= 1e-4
    assert np.abs(ours).max() > 1.0  # a real deformation, not two zero fields


@pytest.mark.skipif(not HIPPO.is_dir(), reason="../shared/data/msd-task04-hippocampus is absent")
def test_hippocampus_inter_subject_mind_convexadam_beats_identity():
    from medprobe.metrics.registration import warp_labels
    from medprobe.registration.methods import ConvexAdamHead, IdentityHead

    ds = create_dataset(f"seg-pairs:msd:{HIPPO}", n_pairs=3, seed=0)
    assert len(set(ds.ids())) == 3 and all(a != b for a, b in (i.split("<-") for i in ds.ids()))
    before, after = [], []
    for i in range(len(ds)):
        p = ds.load_pair(i)
        for head, out in ((IdentityHead(), before), (ConvexAdamHead(features="mind", niter=20), after)):
            disp, _ = head.register(p.fixed.image, p.moving.image)
            out.append(pair_metrics(warp_labels(p.moving.mask, disp), p.fixed.mask, disp, [1, 2],
                                    p.fixed.spacing)["dice"])
    assert np.mean(after) > np.mean(before) + 0.05


@pytest.mark.skipif(not SCT.is_dir(), reason="../shared/data/format-samples/sct-spinalcord is absent")
def test_family_runs_multimodal_spinal_cord_and_writes_outputs(tmp_path: Path):
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    rows = [f"t2<-t1,{SCT}/t2/t2.nii.gz,{SCT}/t1/t1w.nii.gz,{SCT}/t2/t2_seg-manual.nii.gz,"
            f"{SCT}/t1/t1w_seg-manual.nii.gz",
            f"t1<-t2,{SCT}/t1/t1w.nii.gz,{SCT}/t2/t2.nii.gz,{SCT}/t1/t1w_seg-manual.nii.gz,"
            f"{SCT}/t2/t2_seg-manual.nii.gz"]
    (tmp_path / "pairs.csv").write_text("id,fixed,moving,fixed_label,moving_label\n" + "\n".join(rows) + "\n")
    spec = parse_task({"kind": "registration", "dataset": f"pairs-csv:{tmp_path / 'pairs.csv'}",
                       "data": {"shape": [32, 32, 32]}, "encoder": "none", "preprocess": {"resolution": 32},
                       "heads": ["identity", "convexadam"], "metrics": {"bootstrap": 50},
                       "head_params": {"convexadam": {"features": "mind", "niter": 10, "grid_sp": 4}}}, "t")
    out = {r["head"]: r for r in run_task(spec, db=ResultsDB(tmp_path / "r.db"), verbose=False)}
    ident, ca = out["identity"]["metrics"], out["convexadam"]["metrics"]
    for m in (ident, ca):
        assert np.isfinite(m["dice"][0]) and np.isfinite(m["hd95"][0]) and m["dice_before"] == ident["dice"]
    assert ca["folding_pct"][0] < 5.0 and ca["dice"] != ident["dice"]  # before (identity) and after both reported
    folder = Path(out["convexadam"]["outputs"])
    files = sorted(p.name for p in folder.iterdir())
    assert {"t2_-t1_warped.nii.gz", "t2_-t1_disp.nii.gz", "t2_-t1_warped_labels.nii.gz",
            "t2_-t1_checkerboard.png", "t2_-t1_jacobian.png"} <= set(files)
    img = nib.load(folder / "t2_-t1_disp.nii.gz")
    assert img.shape == (32, 32, 32, 3)


# ------------------------------------------------------------------------------------------- layouts
def _save(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), path)


def test_camus_acdc_learn2reg_layouts(tmp_path: Path):
    img2, lab2 = _phantom((60, 50)), np.zeros((60, 50), np.uint8)
    lab2[20:40, 20:30], lab2[10:20, 20:30], lab2[40:50, 20:30] = 1, 2, 3
    for v in ("2CH", "4CH"):
        for ph in ("ED", "ES"):
            base = tmp_path / "camus" / "patient0001" / f"patient0001_{v}_{ph}"
            _save(Path(f"{base}.nii.gz"), img2[:, :, None])
            _save(Path(f"{base}_gt.nii.gz"), lab2[:, :, None])
    cam = create_dataset(f"camus:{tmp_path / 'camus'}")
    assert cam.ids() == ["patient0001_2CH", "patient0001_4CH"] and cam.spatial_dims == 2
    p = cam.load_pair(1)
    assert p.fixed.image.shape == p.moving.image.shape == (128, 128)
    assert sorted(np.unique(p.moving.mask).tolist()) == [0, 1, 2, 3]
    vol = _phantom((40, 36, 10))
    pdir = tmp_path / "acdc" / "patient001"
    pdir.mkdir(parents=True)
    (pdir / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: NOR\n", encoding="utf-8")
    for fr in (1, 12):
        _save(pdir / f"patient001_frame{fr:02d}.nii.gz", vol, np.diag([1.5, 1.5, 10.0, 1.0]))
        _save(pdir / f"patient001_frame{fr:02d}_gt.nii.gz", (vol > 0.6).astype(np.uint8),
              np.diag([1.5, 1.5, 10.0, 1.0]))
    ac = create_dataset(f"acdc:{tmp_path / 'acdc'}", shape=[64, 64, 16])
    q = ac.load_pair(0)
    assert q.fixed.image.shape == q.moving.image.shape == (64, 64, 16)
    assert np.allclose(q.fixed.spacing, (40 * 1.5 / 64, 36 * 1.5 / 64, 100 / 16))
    assert q.meta["resampled"]["fixed"] == {"from": [40, 36, 10], "to": [64, 64, 16]}
    l2r = tmp_path / "l2r"
    for n in ("0001_0000", "0001_0001"):
        _save(l2r / "imagesTr" / f"{n}.nii.gz", vol)
        _save(l2r / "labelsTr" / f"{n}.nii.gz", (vol > 0.6).astype(np.uint8))
        (l2r / "keypointsTr").mkdir(exist_ok=True)
        np.savetxt(l2r / "keypointsTr" / f"{n}.csv", [[5.0, 6.0, 7.0], [10.0, 11.0, 2.0]], delimiter=",")
    (l2r / "dataset.json").write_text('{"name": "t", "labels": {"0": "bg", "1": "fg"}, "registration_val": '
                                      '[{"fixed": "./imagesTr/0001_0000.nii.gz", '
                                      '"moving": "./imagesTr/0001_0001.nii.gz"}]}')
    lr = create_dataset(f"learn2reg:{l2r}")
    r = lr.load_pair(0)
    assert lr.ids() == ["0001_0000<-0001_0001"] and lr.task.classes == ("bg", "fg")
    assert r.fixed.meta["landmarks"].shape == (2, 3) and r.moving.mask is not None
    with pytest.raises(Exception, match="no pair list 'registration_test'"):
        create_dataset(f"learn2reg:{l2r}", split="registration_test")


def test_dino_features_joint_pca_and_head():
    """The DINO-Reg path end to end with the blockless ``none`` encoder (3 channels per patch: CPU-cheap; the
    ViTs run in bench/registration.py)."""
    from medprobe.encoders import create_encoder
    from medprobe.registration.dino import encoder_dense, joint_pca
    from medprobe.registration.methods import ConvexAdamHead

    enc = create_encoder("none")
    vol = _phantom((24, 20, 12))
    f = encoder_dense(enc, vol, layer=-1, axes=(0, 1, 2), size=32)
    assert f.shape == (3, 24, 20, 12) and float(f.std()) > 0
    a, b, info = joint_pca(f, f.flip(1), k=2)
    assert a.shape == b.shape == (2, 24, 20, 12) and info["k"] == 2 and 0 < info["explained"] <= 1
    assert torch.allclose(a.norm(dim=0), torch.full((24, 20, 12), 0.3 * 2 ** 0.5), atol=1e-4)
    head = ConvexAdamHead(features="dino+mind", pca_k=2, input_size=32, grid_sp=4, disp_hw=2, niter=5)
    disp, tm = head.register(vol, np.roll(vol, 1, axis=0), enc)
    assert disp.shape == (3, 24, 20, 12) and head.pca_["k"] == 2 and tm["features_s"] > 0
    assert encoder_dense(enc, vol[:, :, 0], size=32).shape == (3, 24, 20)
    with pytest.raises(DataError, match=r"needs at least 3 grid cells per axis"):
        convex_adam(torch.zeros(1, 24, 20, 8), torch.zeros(1, 24, 20, 8), SMALL)


def test_family_dino_features_record_pca_k(tmp_path: Path):
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    for n, seed in (("a", 0), ("b", 1)):
        vol = _phantom((24, 24, 12), seed=seed)
        _save(tmp_path / f"{n}.nii.gz", vol)
        _save(tmp_path / f"{n}_l.nii.gz", (vol > 0.5).astype(np.uint8))
    (tmp_path / "p.csv").write_text("fixed,moving,fixed_label,moving_label\na.nii.gz,b.nii.gz,a_l.nii.gz,b_l.nii.gz\n"
                                    "b.nii.gz,a.nii.gz,b_l.nii.gz,a_l.nii.gz\n")
    spec = parse_task({"kind": "registration", "dataset": f"pairs-csv:{tmp_path / 'p.csv'}", "encoder": "none",
                       "preprocess": {"resolution": 32}, "heads": ["convexadam"], "metrics": {"bootstrap": 20},
                       "head_params": {"convexadam": {"features": "dino", "pca_k": 2, "input_size": 32,
                                                      "grid_sp": 4, "disp_hw": 2, "niter": 5}}}, "t")
    (row,) = run_task(spec, db=ResultsDB(tmp_path / "r.db"), verbose=False)
    notes = row["record"]["notes"]
    assert notes["pca"]["k"] == 2 and 0 < notes["pca"]["explained_mean"] <= 1 and notes["n_pairs"] == 2
    assert row["metrics"]["seconds_per_pair"] > 0 and len(row["metrics"]["dice"]) == 3
