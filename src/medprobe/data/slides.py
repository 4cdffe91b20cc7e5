"""Whole-slide images: one :class:`Slide` over OpenSlide, tifffile or Pillow, read by region.

:func:`open_slide` picks the reader:

* **OpenSlide** (``pip install 'medprobe[wsi]'``: openslide-python + openslide-bin): Aperio SVS, Hamamatsu NDPI,
  MIRAX MRXS, Philips / Leica / Ventana TIFF, generic tiled TIFF and (OpenSlide 4) DICOM-WSI (open any ``.dcm``
  of the series);
* **tifffile** (``backend="tiff"``): TIFFs OpenSlide refuses (plain strip TIFFs, pyramids stored as series
  levels / SubIFDs). Uncompressed contiguous pages are memory-mapped; otherwise only the strips / tiles a read
  touches are decoded (a small byte-bounded cache keeps a band of decoded strips for neighbouring tiles);
* **Pillow** (``backend="pillow"``): JPEG / PNG / BMP slides (BCNB ships JPEG). These formats cannot be read
  by region, so the image is decoded once, on the first read, and held while the slide is open.

Physical scale: ``mpp`` (µm per level-0 pixel) from the header (``openslide.mpp-x/y`` or TIFF resolution tags in
cm / inch within 0.02..50 µm); an explicit ``mpp`` overrides it and is recorded in ``mpp_source``. A slide
without one raises :class:`~medprobe.errors.DataError` (one line naming the file) unless ``require_mpp=False``.

Coordinates are ``(x, y)`` level-0 pixels (OpenSlide's order); arrays are ``(H, W, 3)`` uint8 RGB.
A :class:`Slide` is also a :class:`medprobe.data.RegionSource`, so it can be an :class:`Item`'s image; it is
picklable (the file handle is dropped and reopened on the next read), so worker processes can use it.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import DataError

PILLOW_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MPP_RANGE = (0.02, 50.0)  # µm/px accepted from TIFF / image resolution tags (72 dpi defaults are not a scale)
BAND_PIXELS = 1 << 24  # level pixels read per band when streaming a thumbnail
SEGMENT_CACHE_BYTES = 128 << 20  # decoded TIFF strips / tiles kept per slide


def _reason(e: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {msg[: limit - 3] + '...' if len(msg) > limit else msg}"


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _mpp_from_resolution(xres: float | None, yres: float | None, unit: str) -> float | None:
    """µm per pixel from resolution tags (pixels per ``unit``); None when absent or not a microscope scale."""
    per_um = {"centimeter": 1e-4, "cm": 1e-4, "inch": 1.0 / 25400.0, "millimeter": 1e-3, "micrometer": 1.0}
    if unit not in per_um:
        return None
    vals = [v for v in (xres, yres) if v is not None and np.isfinite(v) and v > 0]
    if not vals:
        return None
    mpp = float(np.mean([1.0 / (v * per_um[unit]) for v in vals]))
    return mpp if MPP_RANGE[0] <= mpp <= MPP_RANGE[1] else None


def _to_rgb(a: np.ndarray, background: tuple[int, int, int], source: Path) -> np.ndarray:
    """(H, W[, C]) uint8 -> (H, W, 3) uint8; alpha composited onto ``background``."""
    if a.dtype != np.uint8:
        raise DataError(f"expected 8-bit RGB pixels, got {a.dtype}", source=source)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] == 2:
        return np.repeat(a[..., :1], 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[..., 3:4]
        if (alpha == 255).all():
            return np.ascontiguousarray(a[..., :3])
        w = alpha.astype(np.float32) / 255.0
        bg = np.asarray(background, dtype=np.float32)
        return np.round(a[..., :3].astype(np.float32) * w + bg * (1.0 - w)).astype(np.uint8)
    return np.ascontiguousarray(a[..., :3])


# ------------------------------------------------------------------------------------------- backends
class _Backend:
    """A reader: level sizes and ``read(level, xl, yl, w, h)`` in *level* pixels (outside -> background)."""

    name = ""
    level_dimensions: tuple[tuple[int, int], ...] = ()
    properties: dict[str, str] = {}
    background: tuple[int, int, int] = (255, 255, 255)
    header_mpp: float | None = None
    header_mpp_source: str = ""
    objective_power: float | None = None

    def read(self, level: int, location0: tuple[int, int], xl: int, yl: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        return None


class _OpenSlideBackend(_Backend):
    name = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        self.osr = openslide.OpenSlide(str(path))
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self.osr.level_dimensions)
        self.properties = {str(k): str(v) for k, v in self.osr.properties.items()}
        bg = self.properties.get("openslide.background-color", "FFFFFF")
        try:
            self.background = (int(bg[0:2], 16), int(bg[2:4], 16), int(bg[4:6], 16))
        except ValueError:
            self.background = (255, 255, 255)
        mx, my = self.properties.get("openslide.mpp-x"), self.properties.get("openslide.mpp-y")
        vals = []
        for v in (mx, my):
            try:
                f = float(v) if v is not None else float("nan")
            except ValueError:
                f = float("nan")
            if np.isfinite(f) and f > 0:
                vals.append(f)
        if vals:
            self.header_mpp, self.header_mpp_source = float(np.mean(vals)), "header (openslide.mpp-x/y)"
        else:  # generic TIFF written with resolution tags OpenSlide did not turn into mpp
            unit = self.properties.get("tiff.ResolutionUnit", "").lower()
            xr, yr = self.properties.get("tiff.XResolution"), self.properties.get("tiff.YResolution")
            mpp = _mpp_from_resolution(float(xr) if xr else None, float(yr) if yr else None, unit)
            if mpp is not None:
                self.header_mpp, self.header_mpp_source = mpp, "header (TIFF resolution tags)"
        op = self.properties.get("openslide.objective-power") or self.properties.get("aperio.AppMag")
        try:
            self.objective_power = float(op) if op else None
        except ValueError:
            self.objective_power = None

    def read(self, level: int, location0: tuple[int, int], xl: int, yl: int, w: int, h: int) -> np.ndarray:
        img = self.osr.read_region(location0, level, (w, h))
        return _to_rgb(np.asarray(img), self.background, self.path)

    def close(self) -> None:
        self.osr.close()


class _TiffLevel:
    """One TIFF page read by region: a memory map when possible, else the strips / tiles a read touches."""

    def __init__(self, owner: _TiffBackend, page: Any) -> None:
        self.owner, self.page = owner, page
        self.w, self.h = int(page.imagewidth), int(page.imagelength)
        self.spp = int(page.samplesperpixel)
        if page.dtype is None or np.dtype(page.dtype) != np.uint8:
            raise DataError(f"expected an 8-bit slide, TIFF page holds {page.dtype}", source=owner.path)
        if self.spp > 1 and int(page.planarconfig) != 1:
            raise DataError("planar (separate-plane) TIFF slides are not supported", source=owner.path)
        self.mm: np.ndarray | None = None
        if getattr(page, "is_memmappable", False) and page.dataoffsets:
            self.mm = np.memmap(owner.path, dtype=np.uint8, mode="r", offset=int(page.dataoffsets[0]),
                                shape=(self.h, self.w, self.spp) if self.spp > 1 else (self.h, self.w))
        if page.is_tiled:
            self.sw, self.sh = int(page.tilewidth), int(page.tilelength)
        else:
            self.sw, self.sh = self.w, int(min(page.rowsperstrip or self.h, self.h))
        self.nx = -(-self.w // self.sw)
        if self.mm is None and page.dataoffsets:
            self._segment(0)  # an undecodable compression fails here, at open, not mid-tiling

    def _segment(self, index: int) -> np.ndarray:
        key = (id(self), index)
        cache = self.owner.cache
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        page, fh = self.page, self.owner.tif.filehandle
        with self.owner.lock:
            fh.seek(int(page.dataoffsets[index]))
            data = fh.read(int(page.databytecounts[index]))
        try:
            seg = page.decode(data, index, jpegtables=getattr(page, "jpegtables", None))[0]
        except Exception as e:
            raise DataError(f"cannot decode TIFF {'tile' if page.is_tiled else 'strip'} {index} ({_reason(e)}); "
                            "compressed TIFFs may need imagecodecs (pip install imagecodecs)",
                            source=self.owner.path) from None
        seg = np.asarray(seg).reshape(-1, *np.asarray(seg).shape[-3:])[0]  # (h_s, w_s, spp)
        cache[key] = seg
        self.owner.cache_bytes += seg.nbytes
        while self.owner.cache_bytes > SEGMENT_CACHE_BYTES and len(cache) > 1:
            _, old = cache.popitem(last=False)
            self.owner.cache_bytes -= old.nbytes
        return seg

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = np.asarray(self.owner.background, dtype=np.uint8)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, self.w), min(y + h, self.h)
        if x1 <= x0 or y1 <= y0:
            return out
        if self.mm is not None:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = _to_rgb(np.asarray(self.mm[y0:y1, x0:x1]), self.owner.background,
                                                        self.owner.path)
            return out
        for ty in range(y0 // self.sh, (y1 - 1) // self.sh + 1):
            for tx in range(x0 // self.sw, (x1 - 1) // self.sw + 1):
                seg = self._segment(ty * self.nx + tx if self.page.is_tiled else ty)
                sx0, sy0 = tx * self.sw, ty * self.sh
                ax0, ay0 = max(x0, sx0), max(y0, sy0)
                ax1, ay1 = min(x1, sx0 + self.sw, sx0 + seg.shape[1]), min(y1, sy0 + self.sh, sy0 + seg.shape[0])
                if ax1 > ax0 and ay1 > ay0:
                    part = seg[ay0 - sy0:ay1 - sy0, ax0 - sx0:ax1 - sx0]
                    out[ay0 - y:ay1 - y, ax0 - x:ax1 - x] = _to_rgb(part, self.owner.background, self.owner.path)
        return out


class _TiffBackend(_Backend):
    name = "tiff"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        self.lock = threading.Lock()
        self.cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.cache_bytes = 0
        self.tif = tifffile.TiffFile(str(path))
        try:
            series = self.tif.series[0]
            pages = [lv.keyframe if lv.keyframe is not None else lv.pages[0] for lv in series.levels]
            self.levels = [_TiffLevel(self, p) for p in pages]
        except DataError:
            self.tif.close()
            raise
        except Exception:
            self.tif.close()
            raise
        self.level_dimensions = tuple((lv.w, lv.h) for lv in self.levels)
        page = pages[0]
        tags = page.tags
        unit_tag = tags.get("ResolutionUnit")
        unit = {2: "inch", 3: "centimeter"}.get(int(unit_tag.value) if unit_tag is not None else 2, "")

        def res(name: str) -> float | None:
            t = tags.get(name)
            if t is None:
                return None
            v = t.value
            return float(v[0]) / float(v[1]) if isinstance(v, tuple) and len(v) == 2 and v[1] else None

        self.properties = {"tiff.ResolutionUnit": unit}
        mpp = _mpp_from_resolution(res("XResolution"), res("YResolution"), unit)
        if mpp is not None:
            self.header_mpp, self.header_mpp_source = mpp, "header (TIFF resolution tags)"

    def read(self, level: int, location0: tuple[int, int], xl: int, yl: int, w: int, h: int) -> np.ndarray:
        return self.levels[level].read(xl, yl, w, h)

    def close(self) -> None:
        self.cache.clear()
        self.cache_bytes = 0
        self.levels = []
        self.tif.close()


class _PillowBackend(_Backend):
    name = "pillow"

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.path = path
        self._array: np.ndarray | None = None
        with Image.open(path) as im:  # header only
            w, h = im.size
            dpi = im.info.get("dpi")
        self.level_dimensions = ((int(w), int(h)),)
        if dpi:
            mpp = _mpp_from_resolution(float(dpi[0]), float(dpi[1]), "inch")
            if mpp is not None:
                self.header_mpp, self.header_mpp_source = mpp, "header (image dpi)"

    def _load(self) -> np.ndarray:
        if self._array is None:
            from PIL import Image

            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # slides are large on purpose
            try:
                with Image.open(self.path) as im:
                    self._array = np.asarray(im.convert("RGB"))
            except Exception as e:
                raise DataError(f"cannot decode image ({_reason(e)})", source=self.path) from None
            finally:
                Image.MAX_IMAGE_PIXELS = old
        return self._array

    def read(self, level: int, location0: tuple[int, int], xl: int, yl: int, w: int, h: int) -> np.ndarray:
        a = self._load()
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0, x1, y1 = max(xl, 0), max(yl, 0), min(xl + w, a.shape[1]), min(yl + h, a.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - yl:y1 - yl, x0 - xl:x1 - xl] = a[y0:y1, x0:x1]
        return out

    def close(self) -> None:
        self._array = None


def _open_backend(path: Path) -> _Backend:
    """The reader for ``path``: Pillow for JPEG/PNG/BMP, else OpenSlide, else tifffile for TIFFs."""
    suffix = path.suffix.lower()
    if suffix in PILLOW_EXTENSIONS:
        try:
            return _PillowBackend(path)
        except Exception as e:
            raise DataError(f"not a readable slide image ({_reason(e)})", source=path) from None
    reasons = []
    try:
        import openslide
    except ImportError:
        openslide = None  # type: ignore[assignment]
        reasons.append("OpenSlide not installed (pip install 'medprobe[wsi]')")
    if openslide is not None:
        try:
            return _OpenSlideBackend(path)
        except (openslide.OpenSlideError, OSError) as e:  # OpenSlideUnsupportedFormatError is an OpenSlideError
            reasons.append(f"OpenSlide: {' '.join(str(e).split()) or type(e).__name__}")
    if _is_tiff(path):
        try:
            return _TiffBackend(path)
        except DataError as e:
            reasons.append(f"tifffile: {e.problem}")
        except Exception as e:
            reasons.append(f"tifffile: {_reason(e)}")
        try:  # e.g. old-style JPEG strips without imagecodecs: Pillow decodes the whole first page
            return _PillowBackend(path)
        except Exception:
            pass
    return _raise_unreadable(path, reasons)


def _raise_unreadable(path: Path, reasons: list[str]) -> _Backend:
    raise DataError(f"not a readable slide ({'; '.join(reasons) or 'unknown format'})", source=path)


# ---------------------------------------------------------------------------------------------- slide
class Slide:
    """A whole-slide image read by region (see the module docstring); use :func:`open_slide`."""

    n_channels = 3
    dtype = np.dtype(np.uint8)

    def __init__(self, path: str | Path, mpp: float | None = None, *, require_mpp: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError("slide file not found", source=self.path)
        if self.path.is_dir():
            raise DataError("expected a slide file, found a folder", source=self.path)
        if self.path.stat().st_size == 0:
            raise DataError("empty file (0 bytes)", source=self.path)
        self._backend: _Backend | None = _open_backend(self.path)
        b = self._backend
        self.backend = b.name
        self.level_dimensions: tuple[tuple[int, int], ...] = b.level_dimensions
        self.dimensions: tuple[int, int] = b.level_dimensions[0]
        w0, h0 = self.dimensions
        if w0 <= 0 or h0 <= 0:
            raise DataError(f"slide has no pixels (level 0 is {w0} x {h0})", source=self.path)
        self.shape: tuple[int, int] = (h0, w0)
        self.level_count = len(self.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple((w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions)
        self.objective_power = b.objective_power
        self.header_mpp = b.header_mpp
        if mpp is not None:
            m = float(mpp)
            if not (np.isfinite(m) and m > 0):
                raise DataError(f"mpp must be a positive number of µm per pixel, got {mpp!r}", source=self.path)
            self.mpp: float | None = m
            self.mpp_source = "option mpp" + (f" (header says {b.header_mpp:.4g})" if b.header_mpp else "")
        elif b.header_mpp is not None:
            self.mpp, self.mpp_source = b.header_mpp, b.header_mpp_source
        else:
            self.mpp, self.mpp_source = None, "unknown"
            if require_mpp:
                self.close()
                raise DataError(missing_mpp_message(self), source=self.path)

    # ------------------------------------------------------------------------------- state / handles
    @property
    def _b(self) -> _Backend:
        if self._backend is None:
            self._backend = _open_backend(self.path)
        return self._backend

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._b.properties)

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_backend"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"Slide({self.path.name!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp}, {self.backend})"

    def info(self) -> dict[str, Any]:
        """Plain-data description (recorded with features)."""
        return {"path": str(self.path), "backend": self.backend, "dimensions": list(self.dimensions),
                "level_dimensions": [list(d) for d in self.level_dimensions],
                "level_downsamples": list(self.level_downsamples), "mpp": self.mpp, "mpp_source": self.mpp_source,
                "objective_power": self.objective_power}

    # ------------------------------------------------------------------------------------- reading
    def best_level(self, downsample: float, tolerance: float = 0.01) -> int:
        """The level with the largest downsample ``<= downsample * (1 + tolerance)`` (level 0 at least)."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1.0 + tolerance) and d >= self.level_downsamples[best]:
                best = i
        return best

    def read_level(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide semantics: level-0 ``(x, y)`` top-left, ``size=(w, h)`` in ``level`` pixels -> (h, w, 3) uint8.

        Pixels outside the slide (or transparent) are the background colour (white)."""
        if not 0 <= level < self.level_count:
            raise DataError(f"level {level} out of range (slide has {self.level_count})", source=self.path)
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise DataError(f"read size must be positive, got {size}", source=self.path)
        x0, y0 = int(location[0]), int(location[1])
        ds = self.level_downsamples[level]
        xl, yl = (x0, y0) if level == 0 else (int(math.floor(x0 / ds)), int(math.floor(y0 / ds)))
        return self._b.read(level, (x0, y0), xl, yl, w, h)

    def read_region(self, y: int, x: int, h: int, w: int, scale: float = 1.0) -> np.ndarray:
        """:class:`~medprobe.data.RegionSource`: the level-0 box ``[y, y+h) x [x, x+w)`` resampled by ``scale``
        (read from the best pyramid level, then resized bilinearly with antialiasing)."""
        if scale <= 0:
            raise DataError(f"scale must be positive, got {scale}", source=self.path)
        if scale == 1.0:
            return self.read_level((x, y), 0, (w, h))
        level = self.best_level(1.0 / scale)
        ds = self.level_downsamples[level]
        lw, lh = max(1, math.ceil(w / ds)), max(1, math.ceil(h / ds))
        box = self.read_level((x, y), level, (lw, lh))
        return resize_rgb(box, (max(1, round(w * scale)), max(1, round(h * scale))), "bilinear",
                          box=(0.0, 0.0, min(w / ds, lw), min(h / ds, lh)))

    def thumbnail(self, target_mpp: float | None = None, max_px: int | None = None) -> np.ndarray:
        """The whole slide at ``target_mpp`` µm/px (or with its longer side ``max_px``), ``(h, w, 3)`` uint8.

        Read in bands from the best level and box-filtered, so no large level is held whole; the level-0 scale
        of the result is ``dimensions[0] / w`` (x) and ``dimensions[1] / h`` (y). Never upsamples."""
        w0, h0 = self.dimensions
        if target_mpp is not None:
            if self.mpp is None:
                raise DataError(missing_mpp_message(self), source=self.path)
            d = float(target_mpp) / self.mpp
        elif max_px is not None:
            d = max(w0, h0) / float(max_px)
        else:
            raise DataError("thumbnail needs target_mpp or max_px", source=self.path)
        d = max(d, 1.0)
        tw, th = max(1, round(w0 / d)), max(1, round(h0 / d))
        level = self.best_level(d)
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        rows_per_out = lh / th
        band = max(1, int(BAND_PIXELS / max(1.0, lw * rows_per_out)))
        for r0 in range(0, th, band):
            r1 = min(th, r0 + band)
            fy0, fy1 = r0 * rows_per_out, min(lh, r1 * rows_per_out)
            ly0, ly1 = int(math.floor(fy0)), min(lh, int(math.ceil(fy1)))
            ly1 = max(ly1, ly0 + 1)
            part = self.read_level((0, int(round(ly0 * ds))), level, (lw, ly1 - ly0))
            out[r0:r1] = resize_rgb(part, (tw, r1 - r0), "box", box=(0.0, fy0 - ly0, float(lw), fy1 - ly0))
        return out


def missing_mpp_message(slide: Slide) -> str:
    """The one-line problem for a slide without a pixel size."""
    hint = ""
    if slide.objective_power:
        hint = f"; the header says {slide.objective_power:g}x objective (20x is about 0.5, 40x about 0.25)"
    return ("no pixel size (mpp) in the slide header; pass mpp=<µm per pixel> (data option 'mpp', e.g. 0.5 "
            f"for 20x, 0.25 for 40x){hint}")


def resize_rgb(a: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear",
               box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Resize an (H, W, 3) uint8 array to ``size=(w, h)`` with Pillow (antialiased when shrinking);
    ``box`` selects a sub-rectangle (float pixel coordinates) of the input to resample."""
    from PIL import Image

    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
               "lanczos": Image.Resampling.LANCZOS}
    if interpolation not in filters:
        raise DataError(f"unknown interpolation {interpolation!r} (known: {', '.join(filters)})")
    w, h = int(size[0]), int(size[1])
    if box is None and a.shape[1] == w and a.shape[0] == h:
        return a
    im = Image.fromarray(np.ascontiguousarray(a))
    return np.asarray(im.resize((w, h), filters[interpolation], box=box))


def open_slide(path: str | Path, mpp: float | None = None, *, require_mpp: bool = True) -> Slide:
    """Open a whole-slide image (OpenSlide, tifffile or Pillow; see the module docstring).

    ``mpp``: µm per level-0 pixel, overriding the header. Without it, a slide whose header has no pixel size
    raises :class:`DataError` (one line naming the file) unless ``require_mpp=False``; a broken or unsupported
    file raises :class:`DataError` naming the file and each reader's reason."""
    return Slide(path, mpp, require_mpp=require_mpp)


__all__ = ["MPP_RANGE", "PILLOW_EXTENSIONS", "Slide", "missing_mpp_message", "open_slide", "resize_rgb"]
