"""Readers and writers for medical image files.

* :func:`read_image` -- one 2D image (PNG, JPEG, BMP, TIFF, DICOM, ``.npy``) as ``(H, W)`` or ``(H, W, 3)``.
* :func:`read_volume` -- one 3D volume (NIfTI, NRRD, MetaImage, DICOM series folder, ``.npy``) as
  :class:`VolumeData` with the array in ``(X, Y, Z[, C])`` order, reoriented to the closest canonical
  RAS orientation (so axis 2 is the axial / inferior->superior axis), spacing in mm and a 4x4 RAS affine.
* :func:`write_volume` / :func:`write_png` -- atomic writers for outputs.

Every failure raises :class:`medprobe.errors.DataError` with one line naming the file and the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import io as _io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import DataError
from medprobe.utils import atomic_write_bytes, hash_obj

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom",
                                     ".npy")
VOLUME_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".npy")

# LPS (DICOM / ITK / most NRRD) -> RAS (NIfTI): negate the first two world axes.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class VolumeData:
    """A 3D volume: ``array`` is ``(X, Y, Z)`` or ``(X, Y, Z, C)``; ``affine`` maps voxel -> RAS mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    slice_axis: int = 2


# --------------------------------------------------------------------------------------------- helpers
def _reason(e: BaseException, limit: int = 160) -> str:
    """A short one-line reason from an exception (no traceback)."""
    msg = " ".join(str(e).split()) or type(e).__name__
    if len(msg) > limit:
        msg = msg[: limit - 3] + "..."
    return f"{type(e).__name__}: {msg}"


def suffix_of(path: str | Path) -> str:
    """Lower-case extension, treating ``.nii.gz`` as one suffix."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def is_dicom_file(path: str | Path) -> bool:
    """True when the file has the DICOM preamble magic ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError("file not found", source=path)
    if path.is_dir():
        raise DataError("expected a file, found a folder", source=path)
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", source=path)


def _check_array(arr: np.ndarray, path: Path, min_ndim: int) -> np.ndarray:
    if arr.ndim < min_ndim:
        raise DataError(f"expected at least {min_ndim} dimensions, got shape {tuple(arr.shape)}", source=path)
    if arr.size == 0:
        raise DataError(f"empty image (shape {tuple(arr.shape)})", source=path)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.any():
            raise DataError("image contains no finite values (all NaN/inf)", source=path)
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, size, mtime, ctime, inode) -> digest, per process


def content_digest(path: str | Path) -> str:
    """BLAKE2b-128 of a file's bytes (streamed), remembered in this process under a key that any rewrite moves
    (path, size, mtime, ctime, inode: restoring an mtime still moves the ctime). A missing file gives ``""``."""
    p = Path(path)
    try:
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if key not in _DIGESTS:
            h = hashlib.blake2b(digest_size=16)
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
            _DIGESTS[key] = h.hexdigest()
        return _DIGESTS[key]
    except OSError:
        return ""


def file_signature(path: str | Path) -> tuple[str, int, str]:
    """``(name, size, content digest)`` of a file (or of a folder's files: total size, digest of their names and
    digests) for fingerprints that see content (two same-size files swapping bytes change them)."""
    p = Path(path)
    try:
        if p.is_dir():
            files = [f for f in sorted(p.iterdir()) if f.is_file()]
            listing = [(f.name, content_digest(f)) for f in files]
            return (p.name, sum(f.stat().st_size for f in files), hash_obj(listing, n=32))
        return (p.name, p.stat().st_size, content_digest(p))
    except OSError:
        return (p.name, -1, "")


def files_fingerprint(paths: Iterable[str | Path], extra: Any = None) -> str:
    """Hash of the names, sizes and content digests of ``paths`` plus ``extra`` (labels, split, options)."""
    return hash_obj({"files": [file_signature(p) for p in paths], "extra": extra})


# ------------------------------------------------------------------------------------------ 2D images
def read_image(path: str | Path) -> np.ndarray:
    """Read one 2D image as ``(H, W)`` or ``(H, W, 3)``, raw intensities (uint8/uint16/int16/float32).

    RGBA / LA drop alpha; palette PNGs keep their indices (label maps); 1-bit becomes uint8 0/1.
    DICOM: RescaleSlope/Intercept applied (float32 unless they are 1/0), MONOCHROME1 inverted.
    Multi-page TIFF: the first page.
    """
    p = Path(path)
    _check_file(p)
    ext = suffix_of(p)
    if ext in (".dcm", ".dicom") or (ext not in IMAGE_EXTENSIONS and is_dicom_file(p)):
        arr = _read_dicom_2d(p)
    elif ext == ".npy":
        arr = _read_npy(p)
    elif ext in (".tif", ".tiff"):
        arr = _read_tiff(p)
    elif ext in (".png", ".jpg", ".jpeg", ".bmp"):
        arr = _read_pil(p)
    else:
        raise DataError(f"unsupported image extension {ext or '(none)'!r} "
                        f"(supported: {', '.join(IMAGE_EXTENSIONS)})", source=p)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim != 2 and not (arr.ndim == 3 and arr.shape[-1] == 3):
        raise DataError(f"not a 2D grey or RGB image (shape {tuple(arr.shape)})", source=p)
    return np.ascontiguousarray(_check_array(arr, p, 2))


def _read_pil(p: Path) -> np.ndarray:
    try:
        from PIL import Image

        with Image.open(p) as opened:
            opened.load()
            mode = opened.mode
            im: Image.Image = opened
            if mode in ("CMYK", "YCbCr", "HSV", "LAB"):
                im = opened.convert("RGB")
            elif mode == "PA":
                im = opened.convert("P")
            arr = np.array(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        raise DataError(f"cannot read image ({_reason(e)})", source=p) from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if mode in ("I;16", "I;16B", "I;16L") and arr.dtype != np.uint16:
        arr = arr.astype(np.uint16)
    elif mode == "I" and arr.dtype == np.int32 and arr.size and arr.min() >= 0 and arr.max() < 65536:
        arr = arr.astype(np.uint16)  # 16-bit PNGs often open as 32-bit 'I'
    return arr


def _read_tiff(p: Path) -> np.ndarray:
    try:
        import tifffile

        arr = np.asarray(tifffile.imread(p, key=0))
    except Exception as e:
        try:  # some TIFF flavours (e.g. old JPEG-compressed) are handled by PIL only
            return _read_pil(p)
        except DataError:
            raise DataError(f"cannot read TIFF ({_reason(e)})", source=p) from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):  # planar RGB
        arr = np.moveaxis(arr, 0, -1)
    return arr


def _read_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except Exception as e:
        raise DataError(f"cannot read .npy ({_reason(e)})", source=p) from None


def _read_dicom_2d(p: Path) -> np.ndarray:
    try:
        import pydicom
    except ImportError:
        raise DataError("reading DICOM needs pydicom (pip install 'medprobe[volumes]')", source=p) from None
    try:
        ds = pydicom.dcmread(p)
        if "PixelData" not in ds and "FloatPixelData" not in ds:
            raise DataError("DICOM file has no pixel data", source=p)
        arr = ds.pixel_array
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read DICOM ({_reason(e)})", source=p) from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"multi-frame DICOM ({frames} frames): not a 2D image", source=p)
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1.0 or inter != 0.0:
        arr = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        lo, hi = arr.min(), arr.max()
        arr = (hi - arr) + lo if arr.dtype.kind == "f" else (hi.astype(np.int64) - arr + lo).astype(arr.dtype)
    return np.asarray(arr)


# -------------------------------------------------------------------------------------------- volumes
def read_volume(path: str | Path) -> VolumeData:
    """Read a 3D volume (file or DICOM series folder) reoriented to the closest canonical RAS.

    Returns ``VolumeData(array (X, Y, Z[, C]), spacing (mm per axis), affine (4x4 voxel->RAS),
    slice_axis=2)``.
    """
    p = Path(path)
    if p.is_dir():
        return _finish(_read_dicom_series(p), p)
    _check_file(p)
    ext = suffix_of(p)
    if ext in (".nii", ".nii.gz"):
        vol = _read_nifti(p)
    elif ext in (".nrrd", ".nhdr"):
        vol = _read_nrrd(p)
    elif ext in (".mha", ".mhd"):
        vol = _read_sitk_file(p)
    elif ext == ".npy":
        arr = _read_npy(p)
        vol = (arr, np.eye(4))
    else:
        raise DataError(f"unsupported volume extension {ext or '(none)'!r} "
                        f"(supported: {', '.join(VOLUME_EXTENSIONS)} or a DICOM series folder)", source=p)
    return _finish(vol, p)


def _finish(vol: tuple[np.ndarray, np.ndarray], p: Path) -> VolumeData:
    arr, affine = vol
    arr = np.asarray(arr)
    while arr.ndim > 4 and arr.shape[3] == 1:  # (X, Y, Z, 1, C) from ITK vector NIfTI
        arr = arr.reshape(arr.shape[:3] + arr.shape[4:])
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (3, 4):
        raise DataError(f"expected a 3D or 4D (multi-channel) volume, got shape {tuple(arr.shape)}", source=p)
    arr = _check_array(arr, p, 3)
    arr, affine = reorient_to_ras(arr, affine)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return VolumeData(np.ascontiguousarray(arr), spacing, affine, 2)  # type: ignore[arg-type]


def reorient_to_ras(arr: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip / transpose the first three axes to the closest canonical RAS orientation."""
    import nibabel.orientations as nio

    affine = np.asarray(affine, dtype=np.float64)
    try:
        ornt = nio.io_orientation(affine)
    except Exception:  # degenerate affine: keep array order
        return arr, affine
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return arr, affine
    new = nio.apply_orientation(arr, ornt)
    affine = affine @ nio.inv_ornt_aff(ornt, arr.shape[:3])
    return new, affine


def _read_nifti(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import nibabel as nib
        from nibabel.spatialimages import SpatialImage

        img = nib.load(str(p))
        if not isinstance(img, SpatialImage):
            raise DataError(f"not a NIfTI image (nibabel read a {type(img).__name__})", source=p)
        dataobj = img.dataobj
        slope = float(getattr(dataobj, "slope", 1.0) or 1.0)
        inter = float(getattr(dataobj, "inter", 0.0) or 0.0)
        scaled = (np.isfinite(slope) and slope != 1.0) or (np.isfinite(inter) and inter != 0.0)
        arr = np.asarray(dataobj, dtype=np.float32) if scaled else np.asarray(dataobj)
        affine = np.asarray(img.affine, dtype=np.float64)
    except DataError:
        raise
    except Exception as e:  # truncated gzip (EOFError, zlib.error), bad header (HeaderDataError), ...
        raise DataError(f"cannot read NIfTI ({_reason(e)})", source=p) from None
    return arr, affine


def _read_nrrd(p: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        import nrrd
    except ImportError:
        raise DataError("reading NRRD needs pynrrd (pip install pynrrd)", source=p) from None
    try:
        arr, hdr = nrrd.read(str(p), index_order="F")
        arr = np.asarray(arr)
    except Exception as e:
        raise DataError(f"cannot read NRRD ({_reason(e)})", source=p) from None
    ndim = arr.ndim
    dirs = hdr.get("space directions")
    spatial: list[int] = list(range(min(ndim, 3)))
    mat = np.eye(3)
    if dirs is not None:
        rows = [None if d is None or np.any(np.isnan(np.asarray(d, dtype=float))) else np.asarray(d, float)
                for d in dirs]
        spatial = [i for i, r in enumerate(rows) if r is not None]
        if len(spatial) != 3:
            raise DataError(f"expected 3 spatial axes, 'space directions' has {len(spatial)}", source=p)
        mat = np.stack([r for r in rows if r is not None], axis=1)  # columns = the spatial axes' directions
        if mat.shape != (3, 3):
            raise DataError(f"unsupported 'space directions' of shape {mat.shape}", source=p)
    elif hdr.get("spacings") is not None:
        sp = [float(s) for s in hdr["spacings"]]
        spatial = [i for i, s in enumerate(sp) if np.isfinite(s)][:3]
        mat = np.diag([sp[i] for i in spatial] + [1.0] * (3 - len(spatial)))
    nonspatial = [i for i in range(ndim) if i not in spatial]
    if len(nonspatial) > 1:
        raise DataError(f"expected 3D or 3D+channels, got {ndim} axes", source=p)
    if nonspatial:  # channel axis (often the first in NRRD) -> last
        arr = np.moveaxis(arr, nonspatial[0], -1)
    affine = np.eye(4)
    affine[:3, :3] = mat
    origin = hdr.get("space origin")
    if origin is not None and not np.any(np.isnan(np.asarray(origin, float))):
        affine[:3, 3] = np.asarray(origin, float)[:3]
    space = str(hdr.get("space", "")).lower()
    if space in ("left-posterior-superior", "lps", "scanner-xyz"):
        affine = _LPS_TO_RAS @ affine
    elif space in ("left-anterior-superior", "las"):
        affine = np.diag([-1.0, 1.0, 1.0, 1.0]) @ affine
    return arr, affine


def _sitk_to_ras(img: Any) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C])
    if img.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
    arr = arr.transpose(2, 1, 0, 3) if arr.ndim == 4 else arr.transpose(2, 1, 0)
    direction = np.asarray(img.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(img.GetSpacing())
    affine[:3, 3] = img.GetOrigin()
    return arr, _LPS_TO_RAS @ affine


def _import_sitk(p: Path) -> Any:
    try:
        import SimpleITK as sitk
    except ImportError:
        raise DataError("this format needs SimpleITK (pip install 'medprobe[volumes]')", source=p) from None
    return sitk


def _read_sitk_file(p: Path) -> tuple[np.ndarray, np.ndarray]:
    sitk = _import_sitk(p)
    try:
        return _sitk_to_ras(sitk.ReadImage(str(p)))
    except Exception as e:
        raise DataError(f"cannot read image ({_reason(e)})", source=p) from None


def _read_dicom_series(p: Path) -> tuple[np.ndarray, np.ndarray]:
    sitk = _import_sitk(p)
    try:
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(p))
    except Exception as e:
        raise DataError(f"cannot scan DICOM folder ({_reason(e)})", source=p) from None
    if not series:
        raise DataError("folder holds no DICOM series", source=p)
    if len(series) > 1:  # pick the series with the most slices
        series = sorted(series, key=lambda s: -len(reader.GetGDCMSeriesFileNames(str(p), s)))
    try:
        files = reader.GetGDCMSeriesFileNames(str(p), series[0])
        reader.SetFileNames(files)
        return _sitk_to_ras(reader.Execute())
    except Exception as e:
        raise DataError(f"cannot read DICOM series ({_reason(e)})", source=p) from None


# -------------------------------------------------------------------------------------------- writers
def write_volume(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write ``array`` (X, Y, Z[, C]) as NIfTI (``.nii`` or ``.nii.gz``) atomically (temp + rename)."""
    import nibabel as nib

    p = Path(path)
    ext = suffix_of(p)
    if ext not in (".nii", ".nii.gz"):
        raise DataError(f"write_volume writes NIfTI only (.nii / .nii.gz), got {ext or '(none)'!r}", source=p)
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.int64 and (arr.size == 0 or (arr.min() >= -(2**31) and arr.max() < 2**31)):
        arr = arr.astype(np.int32)
    elif arr.dtype == np.uint64 and (arr.size == 0 or arr.max() < 2**32):
        arr = arr.astype(np.uint32)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(arr, aff)
    img.header.set_xyzt_units("mm")
    data = img.to_bytes()
    if ext == ".nii.gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(p, data)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a 2D ``(H, W)`` or ``(H, W, 3)`` array as PNG atomically.

    bool -> 0/255; uint8 / uint16 kept; other integers must fit uint16; floats in [0, 1] -> 0..255.
    """
    from PIL import Image

    p = Path(path)
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise DataError(f"write_png needs (H, W) or (H, W, 3|4), got shape {a.shape}", source=p)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
            raise DataError("write_png: float arrays must be finite and within [0, 1]", source=p)
        a = np.round(a * 255).astype(np.uint8)
    elif a.dtype.kind in "iu" and a.dtype not in (np.uint8, np.uint16):
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError("write_png: integer values must be within [0, 65535]", source=p)
        a = a.astype(np.uint8 if (a.size == 0 or a.max() < 256) else np.uint16)
    if a.dtype == np.uint16 and a.ndim == 3:
        raise DataError("write_png: 16-bit colour PNG is not supported", source=p)
    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    atomic_write_bytes(p, buf.getvalue())


__all__ = ["IMAGE_EXTENSIONS", "VOLUME_EXTENSIONS", "VolumeData", "file_signature", "files_fingerprint",
           "is_dicom_file", "read_image", "read_volume", "reorient_to_ras", "suffix_of", "write_png",
           "write_volume"]
