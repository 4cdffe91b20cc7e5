"""Intensity options: every image ends up float32 in [0, 1] (one or three channels) before mean/std.

Spec strings (stored verbatim with every result):

* ``none`` -- values used as they are (assumed already in [0, 1]);
* ``uint8`` -- divide by 255; ``uint16`` -- divide by 65535; ``minmax`` -- per image/volume min-max;
* ``ct:<preset>`` or ``ct:<level>,<width>`` -- Hounsfield window (presets below), clipped to [0, 1];
* ``ct-multi:<a>,<b>,<c>`` -- three windows as the three channels (e.g. ``ct-multi:lung,soft_tissue,bone``);
* ``mri:percentile`` or ``mri:percentile:<lo>,<hi>`` -- per-volume percentile clip (default 0.5, 99.5);
* ``mri:zscore`` -- per-volume z-score over non-zero voxels, clipped to [-3, 3] and mapped to [0, 1];
* ``pet:suv`` or ``pet:suv:<lo>,<hi>`` -- SUV clip (default 0, 10) mapped to [0, 1];
* ``auto`` -- resolved per dataset by :func:`resolve_intensity` (modality and dtype) before anything runs.
"""

from __future__ import annotations

import numpy as np

from medprobe.errors import ConfigError

CT_WINDOWS: dict[str, tuple[float, float]] = {  # name: (level, width)
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (60.0, 400.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "eva": (37.5, 425.0),  # eva's clip [-175, 250]
}


def resolve_intensity(spec: str, modality: str, dtype: np.dtype | str) -> str:
    """Turn ``auto`` into a concrete option from the modality and the stored dtype."""
    if spec != "auto":
        parse_intensity(spec)  # validate
        return spec
    dt = np.dtype(dtype)
    if modality in ("ct",):  # HU only in signed / float storage; 8-bit CT is already windowed (MedMNIST)
        return "uint8" if dt == np.uint8 else "ct:soft_tissue"
    if modality in ("mri",):
        return "mri:percentile:0.5,99.5"
    if modality in ("pet",):
        return "pet:suv:0,10"
    if dt == np.uint8:
        return "uint8"
    return "minmax"


def parse_intensity(spec: str) -> tuple[str, tuple[float, ...]]:
    """Parse an intensity spec into (kind, parameters); raise ConfigError on anything unknown."""
    kind, _, arg = spec.partition(":")
    try:
        if kind in ("none", "uint8", "uint16", "minmax") and not arg:
            return kind, ()
        if kind == "ct":
            if arg in CT_WINDOWS:
                return "ct", CT_WINDOWS[arg]
            level, width = (float(v) for v in arg.split(","))
            if width <= 0:
                raise ValueError
            return "ct", (level, width)
        if kind == "ct-multi":
            names = arg.split(",")
            if len(names) != 3:
                raise ValueError
            vals: list[float] = []
            for n in names:
                vals += CT_WINDOWS[n]
            return "ct-multi", tuple(vals)
        if kind == "mri":
            sub, _, rng = arg.partition(":")
            if sub == "percentile":
                lo, hi = (float(v) for v in rng.split(",")) if rng else (0.5, 99.5)
                if not 0 <= lo < hi <= 100:
                    raise ValueError
                return "mri-percentile", (lo, hi)
            if sub == "zscore" and not rng:
                return "mri-zscore", ()
        if kind == "pet":
            sub, _, rng = arg.partition(":")
            if sub == "suv":
                lo, hi = (float(v) for v in rng.split(",")) if rng else (0.0, 10.0)
                if hi <= lo:
                    raise ValueError
                return "pet-suv", (lo, hi)
    except (ValueError, KeyError):
        pass
    raise ConfigError(f"unknown intensity option {spec!r}; use none, uint8, uint16, minmax, ct:<preset>|ct:<level>,"
                      f"<width>, ct-multi:<a>,<b>,<c>, mri:percentile[:lo,hi], mri:zscore, pet:suv[:lo,hi] "
                      f"(CT presets: {', '.join(CT_WINDOWS)})")


def _window(a: np.ndarray, level: float, width: float) -> np.ndarray:
    lo = level - width / 2.0
    return np.clip((a - lo) / width, 0.0, 1.0)


def apply_intensity(arr: np.ndarray, spec: str, has_channels: bool = False) -> np.ndarray:
    """Map raw intensities of one image or volume to float32 in [0, 1].

    Statistics (min/max, percentiles, z-score) are taken over the whole array given, so a volume is
    normalised once, consistently across its slices. ``ct-multi`` adds a trailing channel axis of 3.
    """
    kind, p = parse_intensity(spec)
    a = arr.astype(np.float32, copy=False)
    if kind == "none":
        out = a
    elif kind == "uint8":
        out = a / 255.0
    elif kind == "uint16":
        out = a / 65535.0
    elif kind == "minmax":
        lo, hi = float(a.min()), float(a.max())
        out = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    elif kind == "ct":
        out = _window(a, p[0], p[1])
    elif kind == "ct-multi":
        if has_channels:
            raise ConfigError("ct-multi needs a single-channel CT image")
        out = np.stack([_window(a, p[i], p[i + 1]) for i in (0, 2, 4)], axis=-1)
    elif kind == "mri-percentile":
        lo, hi = np.percentile(a, [p[0], p[1]])
        out = np.clip((a - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(a)
    elif kind == "mri-zscore":
        fg = a[a != 0]
        ref = fg if fg.size > 16 else a.ravel()
        mu, sd = float(ref.mean()), float(ref.std())
        out = np.clip(((a - mu) / (sd if sd > 0 else 1.0) + 3.0) / 6.0, 0.0, 1.0)
    else:  # pet-suv
        out = np.clip((a - p[0]) / (p[1] - p[0]), 0.0, 1.0)
    return np.ascontiguousarray(out, dtype=np.float32)
