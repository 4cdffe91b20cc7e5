"""Readers / writers in medprobe.data.io: real headers from ../shared/data and bad-input errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medprobe.data.io import VolumeData, read_image, read_volume, write_png, write_volume
from medprobe.errors import DataError

FS = "format-samples"


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "Traceback" not in msg
    return msg


# ------------------------------------------------------------------------------------------ real data
def test_nifti_ct_int16_hu(shared_data: Path) -> None:
    v = read_volume(shared_data / FS / "totalsegmentator-ct-mr" / "example_ct_sm.nii.gz")
    assert isinstance(v, VolumeData)
    assert v.array.shape == (122, 101, 30) and v.array.dtype == np.int16
    assert v.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert v.slice_axis == 2 and nib.aff2axcodes(v.affine) == ("R", "A", "S")
    assert v.array.min() <= -1000 and v.array.max() > 300  # air and bone in HU


def test_nifti_mri_anisotropic_spacing(shared_data: Path) -> None:
    v = read_volume(shared_data / FS / "sct-spinalcord" / "t2s" / "t2s.nii.gz")
    assert v.array.shape == (49, 54, 9)
    assert v.spacing == pytest.approx((0.5, 0.5, 7.5), abs=1e-4)


def test_nifti_reoriented_to_ras(shared_data: Path) -> None:
    path = shared_data / FS / "sct-spinalcord" / "t2" / "t2.nii.gz"  # stored P-S-R
    raw = nib.load(str(path))
    v = read_volume(path)
    assert nib.aff2axcodes(raw.affine) != ("R", "A", "S")
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    canon = nib.as_closest_canonical(raw)
    assert v.array.shape == canon.shape
    np.testing.assert_array_equal(v.array, np.asarray(canon.dataobj))
    np.testing.assert_allclose(v.affine, canon.affine, atol=1e-4)
    # the same voxel maps to the same world point before and after
    ijk = np.array([10, 20, 30, 1.0])
    world = raw.affine @ ijk
    new_ijk = np.linalg.solve(v.affine, world)
    assert np.allclose(new_ijk, np.round(new_ijk), atol=1e-3)
    assert v.array[tuple(np.round(new_ijk[:3]).astype(int))] == np.asarray(raw.dataobj)[10, 20, 30]


@pytest.mark.parametrize("name,shape,spacing", [
    ("brain1_image.nrrd", (256, 256, 25), (0.78125, 0.78125, 6.5)),
    ("breast1_image.nrrd", (45, 120, 21), (0.664062, 0.664062, 2.1)),
    ("prostate_phantom_subvolume.nrrd", (82, 67, 13), (0.5, 0.5, 3.0)),
])
def test_nrrd_spacing_shape_and_affine(shared_data: Path, name: str, shape: tuple, spacing: tuple) -> None:
    path = shared_data / FS / "pyradiomics-nrrd" / name
    v = read_volume(path)
    assert v.array.shape == shape
    assert v.spacing == pytest.approx(spacing, abs=1e-5)
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    sitk = pytest.importorskip("SimpleITK")  # cross-check the LPS->RAS affine against ITK's reading
    img = sitk.ReadImage(str(path))
    origin_ras = np.array(img.GetOrigin()) * [-1, -1, 1]
    world0 = v.affine @ np.linalg.solve(v.affine, np.r_[origin_ras, 1.0])
    np.testing.assert_allclose(world0[:3], origin_ras, atol=1e-3)
    ijk = np.linalg.solve(v.affine, np.r_[origin_ras, 1.0])[:3]
    assert np.allclose(ijk, np.round(ijk), atol=1e-3)  # ITK voxel (0,0,0) is a voxel corner of ours
    arr_itk = sitk.GetArrayFromImage(img).transpose(2, 1, 0)
    assert v.array[tuple(np.round(ijk).astype(int))] == arr_itk[0, 0, 0]


def test_isbi_em_png(shared_data: Path) -> None:
    img = read_image(shared_data / "isbi2012-em" / "train" / "image" / "0.png")
    lab = read_image(shared_data / "isbi2012-em" / "train" / "label" / "0.png")
    assert img.shape == (512, 512) and img.dtype == np.uint8 and img.std() > 10
    assert lab.shape == (512, 512) and set(np.unique(lab)) <= {0, 255}


def test_nct_rgb_tiff(shared_data: Path) -> None:
    tiles = sorted((shared_data / "nct-crc-he-tiles").glob("*.tif"))
    assert len(tiles) == 9
    img = read_image(tiles[0])
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8
    assert not np.array_equal(img[..., 0], img[..., 1])  # really colour


# ---------------------------------------------------------------------------------------- synthetic
def test_png_16bit_and_rgba(tmp_path: Path) -> None:
    from PIL import Image

    a16 = (np.arange(64 * 48, dtype=np.uint32) * 20).reshape(48, 64).astype(np.uint16)
    write_png(tmp_path / "a16.png", a16)
    back = read_image(tmp_path / "a16.png")
    assert back.dtype == np.uint16 and np.array_equal(back, a16)
    rgba = np.random.default_rng(0).integers(0, 255, (8, 9, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb = read_image(tmp_path / "rgba.png")
    assert rgb.shape == (8, 9, 3) and np.array_equal(rgb, rgba[..., :3])
    assert not list(tmp_path.glob(".*.tmp"))


def test_tiff_16bit(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(1).integers(0, 60000, (20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", a)
    b = read_image(tmp_path / "x.tif")
    assert b.dtype == np.uint16 and np.array_equal(a, b)


def test_dicom_rescale_and_monochrome1(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def make(path: Path, photometric: str, slope: float, inter: float) -> np.ndarray:
        arr = np.arange(12, dtype=np.uint16).reshape(3, 4) * 10
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns = arr.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, inter
        ds.PixelData = arr.tobytes()
        ds.save_as(str(path), enforce_file_format=True) if int(pydicom.__version__[0]) >= 3 else \
            ds.save_as(str(path), write_like_original=False)
        return arr

    raw = make(tmp_path / "ct.dcm", "MONOCHROME2", 2.0, -1024.0)
    got = read_image(tmp_path / "ct.dcm")
    assert got.dtype == np.float32 and np.allclose(got, raw * 2.0 - 1024.0)
    raw = make(tmp_path / "cr.dcm", "MONOCHROME1", 1.0, 0.0)
    got = read_image(tmp_path / "cr.dcm")
    assert np.array_equal(got, raw.max() - raw + raw.min())


def test_nifti_4d_multichannel_and_write_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(2).normal(size=(5, 6, 7, 2)).astype(np.float32)
    aff = np.diag([-2.0, 1.5, 3.0, 1.0])  # L-A-S: x is flipped on read
    write_volume(tmp_path / "mc.nii.gz", arr, aff)
    assert not list(tmp_path.glob(".*.tmp"))
    v = read_volume(tmp_path / "mc.nii.gz")
    assert v.array.shape == (5, 6, 7, 2)
    assert v.spacing == pytest.approx((2.0, 1.5, 3.0))
    np.testing.assert_allclose(v.array, arr[::-1])
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    write_volume(tmp_path / "m.nii", np.zeros((3, 3, 3), dtype=bool))
    assert read_volume(tmp_path / "m.nii").array.dtype == np.uint8


def test_nrrd_lps_to_ras(tmp_path: Path) -> None:
    nrrd = pytest.importorskip("nrrd")
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    hdr = {"space": "left-posterior-superior", "space directions": np.diag([0.7, 0.8, 2.5]),
           "space origin": np.array([10.0, 20.0, 30.0])}
    nrrd.write(str(tmp_path / "x.nrrd"), arr, hdr)
    v = read_volume(tmp_path / "x.nrrd")
    assert v.spacing == pytest.approx((0.7, 0.8, 2.5))
    assert nib.aff2axcodes(v.affine) == ("R", "A", "S")
    # LPS voxel (0,0,0) at (10,20,30) is RAS (-10,-20,30); find it in the reoriented array
    ijk = np.round(np.linalg.solve(v.affine, [-10.0, -20.0, 30.0, 1.0])[:3]).astype(int)
    assert tuple(ijk) == (3, 4, 0) and v.array[tuple(ijk)] == arr[0, 0, 0]


def test_metaimage_and_dicom_series(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    arr = np.random.default_rng(3).integers(-1000, 1000, (4, 5, 6), dtype=np.int16)  # (Z, Y, X)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.6, 0.7, 2.0))
    sitk.WriteImage(img, str(tmp_path / "x.mha"))
    v = read_volume(tmp_path / "x.mha")
    assert v.array.shape == (6, 5, 4) and v.spacing == pytest.approx((0.6, 0.7, 2.0))
    # identity LPS direction -> x and y flipped in RAS
    np.testing.assert_array_equal(v.array, arr.transpose(2, 1, 0)[::-1, ::-1, :])
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep our SeriesInstanceUID so the slices form one series
    for z in range(arr.shape[0]):
        sl = img[:, :, z]
        sl.SetMetaData("0020|0032", "\\".join(map(str, img.TransformIndexToPhysicalPoint((0, 0, z)))))
        sl.SetMetaData("0020|0013", str(z + 1))
        sl.SetMetaData("0020|000e", "1.2.3.4.5")
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0028|0030", "0.7\\0.6")
        writer.SetFileName(str(series / f"{z:03d}.dcm"))
        writer.Execute(sl)
    d = read_volume(series)
    assert d.array.shape == (6, 5, 4)
    assert d.spacing[2] == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_array_equal(d.array, v.array)


# ---------------------------------------------------------------------------------------- bad input
def test_truncated_gz_is_one_line_data_error(tmp_path: Path) -> None:
    good = tmp_path / "good.nii.gz"
    write_volume(good, np.random.default_rng(4).normal(size=(30, 30, 30)).astype(np.float32), np.eye(4))
    bad = tmp_path / "cut.nii.gz"
    data = good.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_volume(bad)
    _one_line_naming(e, bad)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti header" * 3))
    with pytest.raises(DataError) as e:
        read_volume(junk)
    _one_line_naming(e, junk)


def test_missing_file(tmp_path: Path) -> None:
    for fn, name in ((read_volume, "nope.nii.gz"), (read_image, "nope.png")):
        with pytest.raises(DataError) as e:
            fn(tmp_path / name)
        assert "not found" in _one_line_naming(e, tmp_path / name)


def test_wrong_extension(tmp_path: Path) -> None:
    for fn, name in ((read_volume, "vol.xyz"), (read_image, "img.docx")):
        p = tmp_path / name
        p.write_bytes(b"hello")
        with pytest.raises(DataError) as e:
            fn(p)
        assert "unsupported" in _one_line_naming(e, p)


def test_zero_byte_and_corrupt_png(tmp_path: Path) -> None:
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError) as e:
        read_image(p)
    assert "empty" in _one_line_naming(e, p)
    q = tmp_path / "corrupt.png"
    q.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    with pytest.raises(DataError) as e:
        read_image(q)
    _one_line_naming(e, q)


def test_nan_only_and_empty_volume(tmp_path: Path) -> None:
    p = tmp_path / "nan.nii.gz"
    write_volume(p, np.full((4, 4, 4), np.nan, dtype=np.float32))
    with pytest.raises(DataError) as e:
        read_volume(p)
    assert "NaN" in _one_line_naming(e, p)
    q = tmp_path / "empty.nii"
    write_volume(q, np.zeros((4, 0, 4), dtype=np.float32))
    with pytest.raises(DataError) as e:
        read_volume(q)
    assert "empty" in _one_line_naming(e, q)


def test_write_png_rejects_bad_floats(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        write_png(tmp_path / "x.png", np.array([[0.0, 2.0]]))
    write_png(tmp_path / "m.png", np.array([[True, False]]))
    assert read_image(tmp_path / "m.png").tolist() == [[255, 0]]
