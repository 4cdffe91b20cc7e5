"""Deterministic medical-looking phantoms: the built-in dataset for demos and tests.

Modalities (``modality`` / ``spatial_dims``):

* ``"xray"`` 2D: chest PA radiograph (dark lung fields, ribs, clavicles, mediastinum, heart);
  ``uint16`` with a 12-bit range 0..4095, bright = more attenuation. Organ = lung fields.
* ``"ct"`` 2D slices / 3D volumes: upper-abdomen axial CT in Hounsfield units, ``int16`` (air -1000,
  fat ~-100, soft tissue 20..60, bone 200..1000), correlated Gaussian noise. Organ = liver.
* ``"mri"`` 2D / 3D: T1-like abdomen, positive ``float32`` intensities, smooth multiplicative bias
  field, Rician noise. Organ = liver.
* ``"us"`` 2D: convex-probe B-mode: fan-shaped field of view (0 outside), correlated speckle, depth
  attenuation, log compression; ``uint8``. Organ = a parenchymal organ (vessels excluded).

Arrays: 2D ``(H, W)`` with row 0 anterior/cranial and column increasing towards the patient's left
(radiological view); 3D ``(X, Y, Z)`` in RAS order (axis 0 towards the patient's right, axis 1
anterior, axis 2 superior), slice axis last. Anatomy is generated in physical units, so an
anisotropic ``spacing`` gives round lesions that span fewer slices.

Masks are integer label maps with the image's shape: **0 background, 1 organ, 2 lesion** (the lesion
label overrides the organ). Lesion types (:data:`LESION_TYPES`): ``round_bright``, ``round_dark``,
``elongated`` (bright, ~3.5:1, random orientation), ``ring`` (bright rim, darker core).

Regression phantoms (:func:`make_regression_phantom`, ``phantom:xray2d-regression`` and its 3D
counterpart ``phantom:ct3d-regression``; :data:`REGRESSION_SPECS`): a grey field of tissue with one
bright round lesion whose diameter in millimetres is the target (:data:`REGRESSION_TARGET`), drawn
uniformly from :data:`REGRESSION_DIAMETER_MM` (5-15 mm in 2D, 10-20 mm in 3D). The field of view is fixed
in millimetres (40 mm across; in 3D a 40 mm cube at the default 48 x 48 x 24 voxels), so the spacing
follows the image size (``regression_spacing``; 3D slices are twice as thick as the in-plane pixels) and
the target means the same at every ``size``. Tissue level and lesion contrast are fixed; the texture is
smooth and zero-mean over the field, the lesion edge has one voxel of partial volume, the noise is the
modality's (X-ray: Gaussian, 12-bit, a black electronic shutter border and a saturated lead marker, so a
per-image min-max maps intensities identically for every case; CT: correlated Gaussian noise, 10-16 HU,
lesion +120 HU over 45 HU tissue). A linear read-out of the mean intensity (lesion area ~ diameter^2,
volume ~ diameter^3) recovers the diameter with R^2 > 0.9.

Everything is a pure function of ``seed``: same seed -> bitwise identical arrays. Within one seed the
anatomy, the lesion and the acquisition noise come from separate random streams, so
``make_phantom(..., seed=s, lesion=None)`` and ``make_phantom(..., seed=s, lesion="ring")`` differ
(almost) only around the lesion.

Registration convention (:func:`phantom_registration_pairs`, :func:`warp`): the returned
``displacement`` ``u`` (channels first, in voxels, one channel per spatial axis) maps fixed-image
voxels to moving-image voxels, i.e. ``moving(x + u(x)) ~= fixed(x)``; ``warp(moving, u)`` resamples
the moving image onto the fixed grid. ``det(I + grad u) > 0`` everywhere (no folding).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medprobe.data import register_dataset
from medprobe.data.base import ArrayDataset, TaskInfo
from medprobe.errors import ConfigError

MODALITIES: tuple[str, ...] = ("xray", "ct", "mri", "us")
SUPPORTED_DIMS: dict[str, tuple[int, ...]] = {"xray": (2,), "ct": (2, 3), "mri": (2, 3), "us": (2,)}
LESION_TYPES: tuple[str, ...] = ("round_bright", "round_dark", "elongated", "ring")
MASK_LABELS: tuple[str, ...] = ("background", "organ", "lesion")
TASKS: tuple[str, ...] = ("binary", "multiclass", "segmentation", "regression")
REGRESSION_TARGET = "lesion_diameter_mm"
REGRESSION_SPECS: tuple[tuple[str, int], ...] = (("xray", 2), ("ct", 3))
REGRESSION_DIAMETER_MM: dict[int, tuple[float, float]] = {2: (5.0, 15.0), 3: (10.0, 20.0)}
_REGRESSION_FOV_MM = {2: 40.0, 3: 40.0}
BINARY_CLASSES: tuple[str, ...] = ("no_lesion", "lesion")

_SPACING: dict[tuple[str, int], tuple[float, ...]] = {
    ("xray", 2): (0.8, 0.8),
    ("ct", 2): (0.8, 0.8),
    ("ct", 3): (0.8, 0.8, 2.5),
    ("mri", 2): (1.0, 1.0),
    ("mri", 3): (1.0, 1.0, 2.0),
    ("us", 2): (0.4, 0.4),
}
_DTYPES: dict[str, Any] = {"xray": np.uint16, "ct": np.int16, "mri": np.float32, "us": np.uint8}
# lesion contrast (magnitude) in the modality's scene units
_CONTRAST: dict[str, tuple[float, float]] = {
    "xray": (0.08, 0.16), "ct": (30.0, 60.0), "mri": (80.0, 160.0), "us": (0.3, 0.5)}
# lesion radius as a fraction of the in-plane half extent, per spatial_dims
_RADIUS = {2: (0.09, 0.16), 3: (0.12, 0.2)}
_VALID_SPECS = ", ".join(f"{m}{d}d" for m in MODALITIES for d in SUPPORTED_DIMS[m])


# --------------------------------------------------------------------------------------------- helpers
def default_spacing(modality: str, spatial_dims: int) -> tuple[float, ...]:
    """Voxel spacing in mm used by the phantoms of ``modality`` / ``spatial_dims``."""
    _check(modality, spatial_dims)
    return _SPACING[(modality, spatial_dims)]


def _check(modality: str, spatial_dims: int) -> None:
    if modality not in MODALITIES:
        raise ConfigError(f"unknown phantom modality {modality!r}; valid: {', '.join(MODALITIES)}")
    if spatial_dims not in SUPPORTED_DIMS[modality]:
        raise ConfigError(f"phantom {modality!r} has no {spatial_dims}D version; valid: {_VALID_SPECS}")


def _shape(spatial_dims: int, size: int | tuple[int, ...] | None) -> tuple[int, ...]:
    if size is None:
        size = 64 if spatial_dims == 2 else (48, 48, 24)
    if isinstance(size, (int, np.integer)):
        s = int(size)
        shape: tuple[int, ...] = (s, s) if spatial_dims == 2 else (s, s, max(8, s // 2))
    else:
        shape = tuple(int(v) for v in size)
    if len(shape) != spatial_dims or min(shape) < 8:
        raise ConfigError(f"phantom size {size!r}: need an int or {spatial_dims} ints, each >= 8")
    return shape


def _ramp(q: np.ndarray, edge: float = 0.12) -> np.ndarray:
    """Soft inside-indicator of ``q < 1`` (linear ramp of width ``edge``), float32 in [0, 1]."""
    return np.clip((1.0 - q) / edge + 0.5, 0.0, 1.0).astype(np.float32, copy=False)


def _blend(v: np.ndarray, value: float | np.ndarray, w: np.ndarray) -> np.ndarray:
    return v + (value - v) * w


@lru_cache(maxsize=256)
def _interp_matrix(n_out: int, n_ctrl: int) -> np.ndarray:
    """(n_out, n_ctrl) Gaussian interpolation weights over evenly spaced control points (unit variance)."""
    t = np.linspace(-0.5, n_out - 0.5, n_ctrl)
    h = 0.55 * (n_out / max(n_ctrl - 1, 1))
    w = np.exp(-0.5 * ((np.arange(n_out)[:, None] - t[None, :]) / h) ** 2)
    w /= np.sqrt((w**2).sum(1, keepdims=True))  # iid unit-variance inputs -> unit-variance outputs
    return w.astype(np.float32)


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], n_ctrl: int | tuple[int, ...]) -> np.ndarray:
    """Smooth random field: a coarse Gaussian grid, smoothly interpolated (separable; float32)."""
    ctrl = (n_ctrl,) * len(shape) if isinstance(n_ctrl, int) else n_ctrl
    ctrl = tuple(max(2, min(c, s)) for c, s in zip(ctrl, shape))
    out = rng.standard_normal(ctrl, dtype=np.float32)
    for k, (s, c) in enumerate(zip(shape, ctrl)):
        out = np.moveaxis(np.tensordot(_interp_matrix(s, c), out, axes=(1, k)), 0, k)
    return np.ascontiguousarray(out)


@lru_cache(maxsize=64)
def _filter_gain(sigma: tuple[float, ...]) -> float:
    """Standard deviation of unit white noise after ``gaussian_filter(., sigma)`` (exact, discrete)."""
    delta = np.zeros([int(8 * s) + 9 for s in sigma])
    delta[tuple(n // 2 for n in delta.shape)] = 1.0
    return float(np.sqrt((ndi.gaussian_filter(delta, sigma) ** 2).sum()))


def _coloured_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Unit-variance Gaussian noise with Gaussian correlation ``sigma`` (voxels per axis)."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return n / np.float32(_filter_gain(tuple(sigma)))


class _Geo:
    """Normalised physical coordinates: ``ap`` (posterior +), ``lr`` (patient left +), ``si`` (superior +).

    The in-plane half extent is 1; ``si`` uses the same physical unit. ``vox`` is the voxel size in
    those units per array axis.
    """

    def __init__(self, shape: tuple[int, ...], spacing: tuple[float, ...], z0: float = 0.0) -> None:
        self.shape, self.spacing = shape, spacing
        half = max(shape[0] * spacing[0], shape[1] * spacing[1]) / 2.0
        self.vox = tuple(s / half for s in spacing)
        axes = []
        for k, (n, s) in enumerate(zip(shape, spacing)):
            v = ((np.arange(n) - (n - 1) / 2.0) * s / half).astype(np.float32)
            axes.append(v.reshape([n if j == k else 1 for j in range(len(shape))]))
        if len(shape) == 2:  # rows = anterior->posterior, cols = patient right->left
            self.ap, self.lr = axes[0], axes[1]
            self.si: Any = np.float32(z0)
        else:  # RAS: axis 0 -> right, axis 1 -> anterior, axis 2 -> superior
            self.ap, self.lr, self.si = -axes[1], -axes[0], axes[2]

    def point(self, flat_index: int) -> tuple[float, float, float]:
        idx = np.unravel_index(flat_index, self.shape)
        ap = float(np.broadcast_to(self.ap, self.shape)[idx])
        lr = float(np.broadcast_to(self.lr, self.shape)[idx])
        si = float(np.broadcast_to(self.si, self.shape)[idx])
        return ap, lr, si

    def ellipse(self, c: tuple[float, float, float], r: tuple[float, float, float],
                angle: float = 0.0) -> np.ndarray:
        """Normalised radius of an (in-plane rotated) ellipsoid: < 1 inside."""
        da, dl = self.ap - c[0], self.lr - c[1]
        if angle:
            ca, sa = np.cos(angle), np.sin(angle)
            da, dl = ca * da + sa * dl, -sa * da + ca * dl
        q2 = (da / r[0]) ** 2 + (dl / r[1]) ** 2 + ((self.si - c[2]) / r[2]) ** 2
        return np.sqrt(q2).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- lesions
def _lesion(g: _Geo, organ: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Place a lesion of ``kind`` inside ``organ``: (signed profile float32, hard mask bool)."""
    r = float(rng.uniform(*_RADIUS[len(g.shape)]))
    dist = ndi.distance_transform_edt(organ, sampling=g.vox)
    ok = np.flatnonzero(dist >= 1.15 * r)
    if ok.size == 0:  # organ too thin: use its deepest part
        ok = np.flatnonzero(dist >= 0.7 * dist.max()) if dist.max() > 0 else np.arange(organ.size)
    c = g.point(int(ok[rng.integers(ok.size)]))
    aniso = rng.uniform(0.85, 1.15, size=2)
    angle = float(rng.uniform(0, np.pi))
    rz = max(r, 1.6 * g.vox[2]) if len(g.shape) == 3 else r  # visible on >= 3 slices
    if kind == "elongated":
        q = g.ellipse(c, (1.9 * r, 0.55 * r, 0.8 * rz), angle)
    else:
        q = g.ellipse(c, (r * aniso[0], r * aniso[1], rz), angle)
    body = _ramp(q, 0.25)
    if kind == "round_dark":
        prof = -body
    elif kind == "ring":
        core = _ramp(q / 0.6, 0.25)
        prof = (body - core) * 1.2 - 0.6 * core
    else:
        prof = body
    return prof.astype(np.float32, copy=False), q < 1.0


# --------------------------------------------------------------------------------------------- scenes
class _Scene:
    """Noise-free scene (modality units, before acquisition noise), its mask and acquisition params."""

    def __init__(self, clean: np.ndarray, mask: np.ndarray, params: dict[str, Any]) -> None:
        self.clean, self.mask, self.params = clean, mask, params


def _abdomen(g: _Geo, rng: np.random.Generator, t: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Axial upper abdomen (body wall, viscera, kidneys, aorta, spine, ribs, liver) -> (values, liver)."""
    shape = g.shape
    u = rng.uniform
    n_ctrl = (5, 5, 4)[: len(shape)]
    body_q = g.ellipse((u(-0.03, 0.05), u(-0.05, 0.05), 0.0), (u(0.58, 0.68), u(0.82, 0.92), 9.0))
    body_q = body_q * (1.0 + 0.03 * _smooth(rng, shape, n_ctrl))
    if len(shape) == 3:
        body_q = body_q * (1.0 - 0.06 * g.si)
    tf, tm = u(0.06, 0.12), u(0.05, 0.08)
    tex = _smooth(rng, shape, tuple(max(3, s // 6) for s in shape))
    tex2 = _smooth(rng, shape, tuple(max(3, s // 5) for s in shape))
    v = np.full(shape, t["air"], np.float32)
    v = _blend(v, t["fat"], _ramp(body_q, 0.06))
    v = _blend(v, t["muscle"], _ramp(body_q / (1 - tf), 0.08))
    inner = _ramp(body_q / (1 - tf - tm), 0.08)
    visceral = _blend(np.asarray(t["bowel"], np.float32), t["fat"], np.clip(0.5 + 0.8 * tex, 0, 1))
    v = _blend(v, visceral, inner)
    gas = np.clip((tex2 - 1.1) / 0.3, 0, 1) * (g.lr > 0.05) * (g.ap < 0.15) * (inner > 0.99)
    v = _blend(v, t["gas"], gas)
    zk = u(-0.3, 0.3)
    for side in (-1.0, 1.0):  # kidneys
        kq = g.ellipse((u(0.22, 0.3), side * u(0.34, 0.42), zk + u(-0.05, 0.05)), (0.12, 0.085, 0.3),
                       angle=side * u(0.3, 0.6))
        v = _blend(v, t["kidney"], _ramp(kq, 0.15))
    spleen = g.ellipse((u(0.05, 0.15), u(0.5, 0.6), u(0.0, 0.3)), (0.2, 0.12, 0.5), angle=-0.6)
    v = _blend(v, t["spleen"], _ramp(spleen, 0.12))
    aorta_ap, aorta_lr = u(0.18, 0.24), u(0.02, 0.1)
    v = _blend(v, t["vessel"], _ramp(g.ellipse((aorta_ap, aorta_lr, 0.0), (0.05, 0.05, 99.0)), 0.2))
    sp_ap = aorta_ap + u(0.13, 0.17)
    vert = g.ellipse((sp_ap, 0.0, 0.0), (0.09, 0.1, 99.0))
    bone_in: Any = t["marrow"]
    if len(shape) == 3:
        disc = np.clip((np.cos(2 * np.pi * (g.si - u(0, 1)) / 0.45) - 0.75) / 0.2, 0, 1)
        bone_in = _blend(np.asarray(t["marrow"], np.float32), t["disc"], disc)
    v = _blend(v, t["cortex"], _ramp(vert, 0.15))
    v = _blend(v, bone_in, _ramp(vert / 0.8, 0.15))
    v = _blend(v, t["csf"], _ramp(g.ellipse((sp_ap + 0.14, 0.0, 0.0), (0.04, 0.045, 99.0)), 0.2))
    v = _blend(v, t["cortex"], _ramp(g.ellipse((sp_ap + 0.24, 0.0, 0.0), (0.07, 0.025, 99.0)), 0.2))
    liver_q = g.ellipse((u(-0.12, 0.0), u(-0.42, -0.32), u(-0.1, 0.2)), (u(0.36, 0.44), u(0.32, 0.4), 0.9),
                        angle=u(-0.4, 0.1))
    liver_q = liver_q + 0.12 * _smooth(rng, shape, n_ctrl)
    liver_w = _ramp(liver_q, 0.1) * inner
    v = _blend(v, t["liver"] + t["liver_tex"] * tex, liver_w)
    theta = np.arctan2(g.ap, g.lr)
    wall = (body_q > 1 - tf - tm - 0.03) & (body_q < 1 - tf + 0.01) & (g.ap > -0.2)
    ribs = np.clip((np.cos(9 * theta + u(0, 2 * np.pi) + 2 * np.pi * g.si / 0.7) - 0.55) / 0.3, 0, 1) * wall
    v = _blend(v, t["rib"], ribs)
    return v.astype(np.float32, copy=False), liver_w > 0.5


_CT = {"air": -1000.0, "fat": -100.0, "muscle": 45.0, "bowel": 25.0, "gas": -950.0, "kidney": 32.0,
       "spleen": 45.0, "vessel": 40.0, "cortex": 800.0, "marrow": 250.0, "disc": 80.0, "csf": 10.0,
       "liver": 58.0, "liver_tex": 3.0, "rib": 600.0}
_MRI = {"air": 0.0, "fat": 880.0, "muscle": 330.0, "bowel": 260.0, "gas": 0.0, "kidney": 380.0,
        "spleen": 400.0, "vessel": 40.0, "cortex": 40.0, "marrow": 560.0, "disc": 250.0, "csf": 150.0,
        "liver": 470.0, "liver_tex": 12.0, "rib": 80.0}


def _jitter(rng: np.random.Generator, table: dict[str, float], frac: float) -> dict[str, float]:
    return {k: v * (1.0 + frac * float(rng.uniform(-1, 1))) for k, v in table.items()}


def _scene_ct(g: _Geo, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    t = _jitter(rng, _CT, 0.08)
    t["air"] = -1000.0
    if rng.uniform() < 0.5:  # contrast-enhanced phase
        t.update(vessel=float(rng.uniform(150, 250)), kidney=float(rng.uniform(120, 180)),
                 liver=float(rng.uniform(80, 100)))
    v, organ = _abdomen(g, rng, t)
    return v, organ, {"sigma": float(rng.uniform(10.0, 20.0))}


def _scene_mri(g: _Geo, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    v, organ = _abdomen(g, rng, _jitter(rng, _MRI, 0.1))
    return v, organ, {"sigma": float(rng.uniform(18.0, 32.0))}


def _scene_xray(g: _Geo, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    shape, u = g.shape, rng.uniform
    y, x = g.ap, g.lr  # rows head->feet, cols right->left
    width = 0.22 + u(0.6, 0.7) / (1 + np.exp(-(y + 0.72) / 0.05))
    body = _ramp(np.abs(x) / width, 0.08)
    a = 0.42 * body
    lungs = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        q = g.ellipse((u(-0.12, -0.02) + (0.04 if side < 0 else 0.0), side * u(0.36, 0.44), 0.0),
                      (u(0.55, 0.64), u(0.25, 0.31), 99.0), angle=side * u(0.0, 0.12))
        q = q + 0.05 * _smooth(rng, shape, 4)
        lungs = np.maximum(lungs, _ramp(q, 0.12))
    heart_q = g.ellipse((u(0.25, 0.35), u(0.08, 0.16), 0.0), (u(0.24, 0.3), u(0.26, 0.32), 99.0), 0.3)
    heart = _ramp(heart_q, 0.15)
    medi = _ramp(np.abs(x) / 0.11, 0.3) * (y < 0.5)
    lungs = lungs * (1 - heart) * (1 - medi)
    markings = _smooth(rng, shape, tuple(max(4, s // 5) for s in shape))
    a = a - u(0.22, 0.3) * lungs + 0.025 * markings * lungs
    a = a + 0.1 * heart + 0.06 * medi + 0.05 * _ramp(np.abs(x) / 0.06, 0.4) * body
    t_rib = y + 0.6 * np.abs(x) - 0.7 * x**2
    ribs = np.clip((np.cos(2 * np.pi * t_rib / u(0.15, 0.19) + u(0, 2 * np.pi)) - 0.4) / 0.25, 0, 1)
    ribs = ribs * (np.abs(x) > 0.06) * _ramp(np.abs(x) / 0.85, 0.1) * (y > -0.75) * (y < 0.45)
    a = a + u(0.06, 0.1) * ribs
    clav = np.abs(y - (u(-0.68, -0.6) + 0.25 * (np.abs(x) - 0.3) ** 2)) < 0.035
    a = a + 0.1 * clav * (np.abs(x) > 0.08) * (np.abs(x) < 0.6)
    a = a + 0.04 * ((y + 1) / 2) * body  # abdomen thicker towards the bottom
    return a.astype(np.float32), lungs > 0.5, {"sigma": float(u(0.015, 0.03)), "gain": float(u(0.85, 1.1)),
                                               "heel": float(u(-0.08, 0.08)), "offset": float(u(0.05, 0.12))}


def _fan(g: _Geo, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    dy = g.ap - p["apex"]
    r = np.sqrt(dy**2 + g.lr**2)
    theta = np.arctan2(g.lr, dy)
    fan = _ramp(np.abs(theta) / p["half"], 0.03) * (r > p["r0"]) * (r < p["r0"] + 2.0)
    return fan.astype(np.float32), r.astype(np.float32)


def _scene_us(g: _Geo, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    shape, u = g.shape, rng.uniform
    p = {"apex": -1.0 - u(0.1, 0.3), "half": u(0.55, 0.72), "r0": u(0.15, 0.3),
         "atten": u(0.15, 0.45), "gain": u(0.8, 1.2)}
    fan, r = _fan(g, p)
    depth = r - p["r0"]
    e = 0.4 + 0.06 * _smooth(rng, shape, 6)
    e = np.where(depth < 0.08, 0.95, np.where(depth < 0.25, 0.3 + 0.25 * (np.cos(depth * 90) > 0), e))
    e = np.where((depth >= 0.25) & (depth < 0.33), 0.8, e)
    oq = g.ellipse((u(0.1, 0.35), u(-0.2, 0.2), 0.0), (u(0.4, 0.5), u(0.42, 0.55), 99.0), u(-0.5, 0.5))
    oq = oq + 0.08 * _smooth(rng, shape, 5)
    org = _ramp(oq, 0.06)
    e = _blend(e, 0.95, np.clip(1 - np.abs(oq - 1) / 0.04, 0, 1))  # capsule
    e = _blend(e, u(0.7, 0.85) + 0.05 * _smooth(rng, shape, 8), org)
    vessels = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(1, 4))):
        vq = g.ellipse((u(0.0, 0.5), u(-0.35, 0.35), 0.0), (u(0.04, 0.08), u(0.04, 0.08), 99.0))
        vessels = np.maximum(vessels, _ramp(vq, 0.2))
    e = _blend(e, 0.04, vessels * org)
    organ = (org > 0.5) & (vessels < 0.5) & (fan > 0.5)
    return e.astype(np.float32), organ, p


_SCENES = {"ct": _scene_ct, "mri": _scene_mri, "xray": _scene_xray, "us": _scene_us}


def _build(modality: str, shape: tuple[int, ...], seed: int, lesion: str | None) -> _Scene:
    spacing = _SPACING[(modality, len(shape))]
    s_anat, s_les, s_noise = np.random.SeedSequence(int(seed)).spawn(3)
    anat, les = np.random.default_rng(s_anat), np.random.default_rng(s_les)
    g = _Geo(shape, spacing, z0=float(anat.uniform(-0.3, 0.3)))
    clean, organ, params = _SCENES[modality](g, anat)
    mask = organ.astype(np.uint8)
    if lesion is not None:
        prof, hard = _lesion(g, organ, lesion, les)
        c = float(les.uniform(*_CONTRAST[modality]))
        if modality == "mri":  # scale with the local bias-free tissue level
            c *= float(np.mean(clean[organ])) / _MRI["liver"] if organ.any() else 1.0
        clean = clean + c * prof
        mask[hard] = 2
    if modality == "mri":
        clean = clean * np.exp(0.25 * _smooth(anat, shape, 3))
        clean = np.maximum(clean, 0.0)
    elif modality == "xray":
        clean = ndi.gaussian_filter(clean, 0.6)
        heel = 1.0 + params["heel"] * np.broadcast_to(g.lr, shape)
        clean = params["offset"] + params["gain"] * clean * heel
    elif modality == "us":
        clean = np.maximum(clean, 0.02)
        fan, _ = _fan(g, params)
        mask[fan < 0.5] = 0
    params["noise_seed"] = s_noise
    return _Scene(clean.astype(np.float32), mask, params)


def _acquire(modality: str, sc: _Scene, spacing: tuple[float, ...], noise: bool = True) -> np.ndarray:
    """Apply acquisition noise (unless ``noise=False``) / compression; cast to the modality dtype."""
    rng = np.random.default_rng(sc.params["noise_seed"])
    x, shape, p = sc.clean, sc.clean.shape, dict(sc.params)
    if not noise:
        p["sigma"] = 0.0
    if modality in ("mri", "us"):
        x = np.maximum(x, 0.02 if modality == "us" else 0.0)  # interpolation overshoot
    if modality == "ct":
        n = _coloured_noise(rng, shape, (0.7,) * len(shape))
        out = np.clip(np.rint(x + p["sigma"] * n), -1024, 3071)
    elif modality == "mri":
        n1, n2 = rng.standard_normal((2, *shape), dtype=np.float32) * p["sigma"]
        out = np.sqrt((x + n1) ** 2 + n2**2)
    elif modality == "xray":
        noisy = x + p["sigma"] * rng.standard_normal(shape, dtype=np.float32)
        out = np.clip(np.rint(noisy * 4095), 0, 4095)
    else:  # us
        g = _Geo(shape, spacing)
        fan, r = _fan(g, p)
        sig = (max(0.5, shape[0] / 160), max(0.9, shape[1] / 80))  # speckle grain, wider laterally
        speck = 1.0 if not noise else sum(np.hypot(_coloured_noise(rng, shape, sig), _coloured_noise(rng, shape, sig))
                    for _ in range(3)) / np.float32(3 * np.sqrt(np.pi / 2))  # 3 compounded looks, mean 1
        inten = x * speck * np.exp(-p["atten"] * np.clip(r - p["r0"], 0, None)) * p["gain"]
        db = 20 * np.log10(inten + 1e-3)
        out = np.clip(np.rint((db + 40.0) / 50.0 * 255.0), 0, 255) * (fan > 0.5)
    return out.astype(_DTYPES[modality])


# --------------------------------------------------------------------------------------------- public API
def make_phantom(modality: str, spatial_dims: int, size: int | tuple[int, ...] | None, seed: int,
                 lesion: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``(image, mask)``; mask 0 background, 1 organ, 2 lesion (see module docstring).

    ``lesion``: ``None`` (no lesion) or one of :data:`LESION_TYPES`. ``size``: int (3D -> ``(s, s,
    s // 2)``), a tuple of ``spatial_dims`` ints, or ``None`` for 64 (2D) / ``(48, 48, 24)`` (3D).
    """
    _check(modality, spatial_dims)
    if lesion is not None and lesion not in LESION_TYPES:
        raise ConfigError(f"unknown lesion type {lesion!r}; valid: None, {', '.join(LESION_TYPES)}")
    shape = _shape(spatial_dims, size)
    sc = _build(modality, shape, seed, lesion)
    return _acquire(modality, sc, _SPACING[(modality, spatial_dims)]), sc.mask


def _case_seed(seed: int, i: int, salt: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(i), salt]).generate_state(1)[0])


def _split(groups: np.ndarray, splits: tuple[float, float, float], rng: np.random.Generator
           ) -> dict[str, list[int]]:
    if len(splits) != 3 or min(splits) < 0 or abs(sum(splits) - 1.0) > 1e-6:
        raise ConfigError(f"phantom splits {tuple(splits)!r}: need 3 non-negative fractions summing to 1")
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for gval in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == gval))
        n_tr = int(round(len(idx) * splits[0]))
        n_va = min(len(idx) - n_tr, int(round(len(idx) * splits[1])))
        out["train"] += idx[:n_tr].tolist()
        out["val"] += idx[n_tr:n_tr + n_va].tolist()
        out["test"] += idx[n_tr + n_va:].tolist()
    return {k: sorted(int(i) for i in v) for k, v in out.items()}


def phantom_dataset(task: str = "binary", modality: str = "xray", spatial_dims: int = 2, n: int = 200,
                    size: int | tuple[int, ...] | None = None, seed: int = 0,
                    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> ArrayDataset:
    """An in-memory phantom dataset with balanced labels and a stratified official split.

    * ``binary``: label 1 = a lesion of random type is present (classes ``no_lesion``, ``lesion``).
    * ``multiclass``: every case has a lesion; label = index into :data:`LESION_TYPES`.
    * ``segmentation``: every case has a lesion of random type; label ``None``; masks as in
      :func:`make_phantom` (classes :data:`MASK_LABELS`).
    * ``regression``: see :func:`regression_dataset` (xray 2D and CT 3D only).

    Masks are attached for every task; ``Item.meta["lesion"]`` names the lesion type (or ``None``).
    ``size``: see :func:`make_phantom` (default 64 for 2D, 48x48x24 for 3D).
    """
    if task == "regression":
        return regression_dataset(modality, spatial_dims, n=n, size=size, seed=seed, splits=splits)
    _check(modality, spatial_dims)
    if task not in TASKS:
        raise ConfigError(f"unknown phantom task {task!r}; valid: {', '.join(TASKS)}")
    if int(n) < 1:
        raise ConfigError(f"phantom n={n!r}: need at least 1 case")
    n = int(n)
    shape = _shape(spatial_dims, size)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    if task == "binary":
        labels_arr = rng.permutation(np.arange(n) % 2)
        kinds: list[str | None] = [LESION_TYPES[int(k)] if lab else None
                                   for lab, k in zip(labels_arr, rng.integers(0, 4, n))]
        info = TaskInfo("binary", BINARY_CLASSES)
    else:
        labels_arr = rng.permutation(np.arange(n) % len(LESION_TYPES))
        kinds = [LESION_TYPES[int(k)] for k in labels_arr]
        info = TaskInfo(task, LESION_TYPES if task == "multiclass" else MASK_LABELS)  # type: ignore[arg-type]
    images, masks = [], []
    for i in range(n):
        img, msk = make_phantom(modality, spatial_dims, shape, _case_seed(seed, i, 101), kinds[i])
        images.append(img)
        masks.append(msk)
    tag = f"{modality}{spatial_dims}d"
    ids = [f"phantom-{tag}-{i:06d}" for i in range(n)]
    labels: list[Any] = [None] * n if task == "segmentation" else [int(v) for v in labels_arr]
    return ArrayDataset(images, labels, spatial_dims=spatial_dims, name=f"phantom:{tag}-{task}",
                        modality=modality, task=info, masks=masks,  # type: ignore[arg-type]
                        spacing=_SPACING[(modality, spatial_dims)], ids=ids,
                        splits=_split(labels_arr, splits, rng), patients=list(ids),
                        meta=[{"lesion": k} for k in kinds])


# --------------------------------------------------------------------------------------------- regression
def regression_spacing(spatial_dims: int, shape: tuple[int, ...]) -> tuple[float, ...]:
    """Voxel spacing (mm) of a regression phantom: the fixed field of view over the larger in-plane size."""
    s = _REGRESSION_FOV_MM[spatial_dims] / max(shape[0], shape[1])
    return (s, s) if spatial_dims == 2 else (s, s, 2.0 * s)


def _check_regression(modality: str, spatial_dims: int) -> None:
    _check(modality, spatial_dims)
    if (modality, spatial_dims) not in REGRESSION_SPECS:
        valid = ", ".join(f"{m}{d}d" for m, d in REGRESSION_SPECS)
        raise ConfigError(f"no regression phantom for {modality}{spatial_dims}d; valid: {valid}")


def make_regression_phantom(modality: str, spatial_dims: int, size: int | tuple[int, ...] | None, seed: int,
                            diameter_mm: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """One regression case: ``(image, mask, diameter_mm)`` (see the module docstring).

    ``diameter_mm``: the lesion diameter, or ``None`` to draw it from :data:`REGRESSION_DIAMETER_MM`.
    Mask: 0 outside the exposed field (X-ray shutter and marker), 1 tissue, 2 lesion.
    """
    _check_regression(modality, spatial_dims)
    shape = _shape(spatial_dims, size)
    spacing = regression_spacing(spatial_dims, shape)
    s_geo, s_tex, s_noise = (np.random.default_rng(q) for q in np.random.SeedSequence(int(seed)).spawn(3))
    lo, hi = REGRESSION_DIAMETER_MM[spatial_dims]
    d = float(s_geo.uniform(lo, hi)) if diameter_mm is None else float(diameter_mm)
    if not d > 0:
        raise ConfigError(f"diameter_mm must be positive, got {diameter_mm!r}")
    field = np.ones(shape, bool)
    marker = np.zeros(shape, bool)
    w = 0  # shutter border width (voxels)
    first_row = 0.0  # mm from the top edge the lesion must stay below (the marker band)
    if modality == "xray":
        w = max(1, int(round(0.04 * min(shape))))
        field[:w] = field[-w:] = field[:, :w] = field[:, -w:] = False
        mh, mw = max(2, int(round(0.06 * shape[0]))), max(2, int(round(0.1 * shape[1])))
        marker[w + 1:w + 1 + mh, w + 1:w + 1 + mw] = True
        first_row = (w + mh + 2) * spacing[0]
    # lesion centre: the whole lesion inside the field (1 mm margin), below the marker band
    r = d / 2.0
    extent = [n * sp for n, sp in zip(shape, spacing)]
    centre = []
    for k, (ext, sp) in enumerate(zip(extent, spacing)):
        a = max(w * sp, first_row if k == 0 else 0.0) + r + 1.0
        b = ext - w * sp - r - 1.0
        centre.append(float(s_geo.uniform(a, b)) if b > a else ext / 2.0)
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * sp for n, sp in zip(shape, spacing)], indexing="ij",
                        sparse=True)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre))).astype(np.float32)
    lesion = np.clip((r - dist) / spacing[0] + 0.5, 0.0, 1.0).astype(np.float32)  # 1-voxel partial volume
    tex = _smooth(s_tex, shape, tuple(max(2, min(5, n // 8)) for n in shape))
    tex = tex - tex[field].mean()  # zero-mean over the field: the mean intensity tracks the lesion only
    mask = field.astype(np.uint8)
    mask[(dist < r) & field] = 2
    mask[marker] = 0
    if modality == "xray":
        v = 0.35 + 0.02 * tex + 0.3 * lesion
        v = ndi.gaussian_filter(v, 0.6)  # detector blur
        v = v + float(s_noise.uniform(0.015, 0.025)) * s_noise.standard_normal(shape, dtype=np.float32)
        img = np.clip(np.rint(v * 4095), 0, 4095)
        img[~field] = 0  # electronic shutter
        img[marker] = 4095  # lead marker (saturated)
        return img.astype(np.uint16), mask, d
    v = 45.0 + 6.0 * tex + 120.0 * lesion  # soft tissue with a hyper-enhancing lesion, HU
    noise = _coloured_noise(s_noise, shape, (0.7,) * len(shape))
    img = np.clip(np.rint(v + float(s_noise.uniform(10.0, 16.0)) * noise), -1024, 3071)
    return img.astype(np.int16), mask, d


def regression_dataset(modality: str = "xray", spatial_dims: int = 2, n: int = 200,
                       size: int | tuple[int, ...] | None = None, seed: int = 0,
                       splits: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> ArrayDataset:
    """``n`` regression phantoms; label = lesion diameter in mm (float), ``TaskInfo("regression",
    (REGRESSION_TARGET,))``; split stratified by diameter quartile; ``meta["diameter_mm"]`` too."""
    _check_regression(modality, spatial_dims)
    if int(n) < 1:
        raise ConfigError(f"phantom n={n!r}: need at least 1 case")
    n = int(n)
    shape = _shape(spatial_dims, size)
    images, masks, diam = [], [], []
    for i in range(n):
        img, msk, d = make_regression_phantom(modality, spatial_dims, shape, _case_seed(seed, i, 303))
        images.append(img)
        masks.append(msk)
        diam.append(d)
    d_arr = np.asarray(diam)
    groups = np.searchsorted(np.quantile(d_arr, [0.25, 0.5, 0.75]), d_arr) if n >= 8 else np.zeros(n, int)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7927]))
    tag = f"{modality}{spatial_dims}d"
    ids = [f"phantom-{tag}-reg-{i:06d}" for i in range(n)]
    return ArrayDataset(images, diam, spatial_dims=spatial_dims, name=f"phantom:{tag}-regression",
                        modality=modality, task=TaskInfo("regression", (REGRESSION_TARGET,)),  # type: ignore[arg-type]
                        masks=masks, spacing=regression_spacing(spatial_dims, shape), ids=ids,
                        splits=_split(groups, splits, rng), patients=list(ids),
                        meta=[{"diameter_mm": d} for d in diam])


def warp(image: np.ndarray, displacement: np.ndarray, order: int = 1) -> np.ndarray:
    """Resample ``image`` at ``x + displacement(x)`` (voxels, channels first); edges clamp."""
    grid = np.indices(image.shape, dtype=np.float32)
    out = ndi.map_coordinates(image.astype(np.float32), grid + displacement, order=order, mode="nearest")
    return out.astype(image.dtype) if order == 0 else out


def jacobian_determinant(displacement: np.ndarray) -> np.ndarray:
    """``det(I + grad u)`` per voxel for a channels-first displacement ``u`` (central differences)."""
    d = displacement.shape[0]
    jac = np.empty((*displacement.shape[1:], d, d), np.float64)
    for i in range(d):
        for j, gr in enumerate(np.gradient(displacement[i].astype(np.float64))):
            jac[..., i, j] = gr + (i == j)
    return np.linalg.det(jac)


def _random_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...],
                  max_disp: float) -> np.ndarray:
    """Smooth random displacement (channels first, voxels) with |u| <= max_disp and |grad u| <= 0.4."""
    d = len(shape)
    n_ctrl = tuple(max(2, min(4, s // 16 + 2)) for s in shape)
    v = np.stack([ndi.gaussian_filter(_smooth(rng, shape, n_ctrl), 1.0) for _ in range(d)])
    for k in range(d):  # physically isotropic: fewer voxels along coarse axes
        v[k] *= spacing[0] / spacing[k]
    mag = float(np.sqrt((v**2).sum(0)).max())
    v *= max_disp / max(mag, 1e-6)
    grad = np.sqrt(sum(gr**2 for k in range(d) for gr in np.gradient(v[k])))
    gmax = float(grad.max())
    if gmax > 0.4:
        v *= 0.4 / gmax
    return v.astype(np.float32)


def phantom_registration_pairs(n: int, modality: str = "mri", spatial_dims: int = 2,
                               size: int | tuple[int, ...] | None = None, seed: int = 0,
                               max_disp: float = 4.0, noise: bool = True) -> list[dict[str, Any]]:
    """``n`` mono-modal pairs with a known smooth deformation (see the module's convention).

    Each dict: ``fixed``, ``moving`` (modality dtype, independent noise), ``fixed_mask``,
    ``moving_mask`` (uint8 label maps), ``displacement`` (float32 ``(D, *shape)``, voxels, with
    ``moving(x + u(x)) ~= fixed(x)``, ``|u| <= max_disp`` and no folding) and ``spacing``. About half the
    pairs contain a lesion. The moving image is the fixed scene warped by a random smooth field (coarse
    Gaussian grid, smooth upsampling, Gaussian smoothing, scaled so ``|grad u|`` stays small); the MRI
    bias field moves with the anatomy. ``noise=False`` skips acquisition noise / speckle, so warping
    the moving image reproduces the fixed one up to interpolation error.
    """
    _check(modality, spatial_dims)
    if max_disp < 0:
        raise ConfigError(f"max_disp={max_disp!r}: must be >= 0")
    shape = _shape(spatial_dims, size)
    spacing = _SPACING[(modality, spatial_dims)]
    pairs = []
    for i in range(int(n)):
        rng = np.random.default_rng(_case_seed(seed, i, 202))
        lesion = LESION_TYPES[int(rng.integers(4))] if rng.uniform() < 0.5 else None
        sc = _build(modality, shape, _case_seed(seed, i, 203), lesion)
        v = _random_field(rng, shape, spacing, max_disp)  # moving(y) = scene(y + v(y))
        grid = np.indices(shape, dtype=np.float32)
        mov = _Scene(ndi.map_coordinates(sc.clean, grid + v, order=3, mode="nearest"),
                     ndi.map_coordinates(sc.mask, grid + v, order=0, mode="nearest"),
                     dict(sc.params, noise_seed=np.random.SeedSequence(_case_seed(seed, i, 204))))
        u = -v  # invert: u(x) = -v(x + u(x)) by fixed-point iteration (contraction, |grad v| <= 0.4)
        for _ in range(10):
            u_new = -np.stack([ndi.map_coordinates(vk, grid + u, order=1, mode="nearest") for vk in v])
            done = float(np.abs(u_new - u).max()) < 1e-3
            u = u_new
            if done:
                break
        pairs.append({"fixed": _acquire(modality, sc, spacing, noise),
                      "moving": _acquire(modality, mov, spacing, noise),
                      "fixed_mask": sc.mask, "moving_mask": mov.mask.astype(np.uint8),
                      "displacement": u.astype(np.float32), "spacing": spacing})
    return pairs


# --------------------------------------------------------------------------------------------- registry
_SPEC_RE = re.compile(r"^(xray|ct|mri|us)(2d|3d)(?:-(binary|multiclass|segmentation|regression))?$")
_OPTIONS = ("n", "size", "seed", "splits")


@register_dataset("phantom")
def _phantom_factory(arg: str, **options: Any) -> ArrayDataset:  # its option names: ``options`` below
    """``phantom:<modality><2d|3d>[-<task>]``, e.g. ``ct3d-binary``, ``xray2d-regression``; options n, size,
    seed, splits."""
    m = _SPEC_RE.match(arg.strip().lower())
    if not m or int(m.group(2)[0]) not in SUPPORTED_DIMS[m.group(1)]:
        raise ConfigError(f"unknown phantom {arg!r}; valid: <{_VALID_SPECS}>-<{'|'.join(TASKS)}>, "
                          "e.g. ct3d-binary", f"phantom:{arg}")
    bad = sorted(set(options) - set(_OPTIONS))
    if bad:
        raise ConfigError(f"unknown option(s) {', '.join(bad)}; valid: {', '.join(_OPTIONS)}",
                          f"phantom:{arg}")
    return phantom_dataset(task=m.group(3) or "binary", modality=m.group(1), spatial_dims=int(m.group(2)[0]),
                           **options)


__all__ = ["LESION_TYPES", "MASK_LABELS", "MODALITIES", "REGRESSION_DIAMETER_MM", "REGRESSION_SPECS",
           "REGRESSION_TARGET", "TASKS", "default_spacing", "jacobian_determinant", "make_phantom",
           "make_regression_phantom", "phantom_dataset", "phantom_registration_pairs", "regression_dataset",
           "regression_spacing", "warp"]


_phantom_factory.options = _OPTIONS  # type: ignore[attr-defined]  # read by the task-config check
