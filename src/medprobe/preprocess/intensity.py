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

**Multi-channel input** (PET/CT, multi-sequence MRI): ``<spec>|<spec>|...`` gives each channel its own option
(``ct:soft_tissue|pet:suv:0,10``: CT windowed in HU, PET clipped in SUV; a YAML list is the same), applied to
each channel separately with its own statistics. With ``channels: per_channel`` (each channel encoded as its
own grey image) a single option is applied to every channel separately as well, so a 0-15 SUV PET channel is
not squeezed into a sliver of a CT channel's -1024..3000 HU range; with channels combined as colour (``keep``,
``first3``) a single option's statistics are joint. :func:`channel_intensities` turns ``auto`` (or one option)
into the per-channel list from the channel names (CT -> ``ct:soft_tissue``, PET -> ``pet:suv:0,10``, MRI
sequences -> ``mri:percentile:0.5,99.5``), and that list is what is resolved, hashed and recorded.
"""

from __future__ import annotations

from typing import Any

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


CHANNEL_SEP = "|"


def split_channels(spec: str) -> list[str]:
    """``"a|b"`` -> ``["a", "b"]`` (one option per channel); a single option -> ``[spec]``."""
    return [p.strip() for p in str(spec).split(CHANNEL_SEP)]


def channel_kind(name: str) -> str | None:
    """``ct``, ``pet`` or ``mri`` from a channel name (``CT``, ``PET``/``PT``, ``T2``, ``FLAIR``, ``ADC`` ...), else
    None."""
    n = str(name).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    if "pet" in n or n in ("pt", "suv"):  # PT: the DICOM modality code of PET (HECKTOR's channel name)
        return "pet"
    if n == "ct" or n.startswith("ct") or n == "hu":
        return "ct"
    if n.startswith(("t1", "t2", "mr", "flair", "adc", "dwi", "pd", "swi")) or n in ("nonenhanced", "enhanced",
                                                                                   "hbv", "perfusion"):
        return "mri"
    return None


def channel_intensities(spec: str, n_channels: int, channel_names: list[str] | None = None,
                        modality: str = "generic", dtype: Any = np.float32) -> str:
    """The per-channel option list (``a|b|...``) for ``n_channels``-channel input that is encoded channel by
    channel: ``auto`` resolved per channel from its name (CT, PET, MRI sequence; an unnamed channel from the
    dataset's ``modality``, PET/CT without names -> ``minmax``), a single option repeated, a list checked."""
    parts = split_channels(spec)
    if len(parts) > 1:
        if len(parts) != n_channels:
            raise ConfigError(f"intensity lists {len(parts)} per-channel options ({spec}) for "
                              f"{n_channels}-channel input")
        return CHANNEL_SEP.join(resolve_intensity(p, modality, dtype) if p != "auto" else
                                _auto_channel(channel_names, i, modality, dtype) for i, p in enumerate(parts))
    if spec != "auto":
        resolve_intensity(spec, modality, dtype)
        return CHANNEL_SEP.join([spec] * n_channels)
    return CHANNEL_SEP.join(_auto_channel(channel_names, i, modality, dtype) for i in range(n_channels))


def _auto_channel(names: list[str] | None, i: int, modality: str, dtype: Any) -> str:
    kind = channel_kind(names[i]) if names and i < len(names) else None
    if kind is None:
        kind = modality if modality in ("ct", "mri", "pet") else "generic"
    return resolve_intensity("auto", kind, dtype)


def resolve_intensity(spec: str, modality: str, dtype: np.dtype | str) -> str:
    """Turn ``auto`` into a concrete option from the modality and the stored dtype (each entry of a
    per-channel list; an ``auto`` entry from the modality alone)."""
    if CHANNEL_SEP in spec:
        return CHANNEL_SEP.join(resolve_intensity(p, modality, dtype) for p in split_channels(spec))
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
    """Parse one intensity spec into (kind, parameters); raise ConfigError on anything unknown (a per-channel
    list is checked entry by entry: use :func:`check_intensity`)."""
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


def check_intensity(spec: str) -> list[tuple[str, tuple[float, ...]]]:
    """Parse a single option or a per-channel list (``ct-multi`` makes three channels of one: not in a list)."""
    parts = split_channels(spec)
    out = [parse_intensity(p) if p != "auto" else ("auto", ()) for p in parts]
    if len(parts) > 1 and any(k == "ct-multi" for k, _ in out):
        raise ConfigError(f"ct-multi makes three channels of one CT image; it cannot be one entry of a per-channel "
                          f"list ({spec})")
    return out


def apply_channel_intensity(arr: np.ndarray, spec: str) -> np.ndarray:
    """Normalise each channel of ``(..., C)`` separately with its own option and statistics: ``spec`` is one
    option (applied to every channel) or a list of ``C`` (``a|b``). Returns float32 ``(..., C)`` in [0, 1]."""
    parts = split_channels(spec)
    c = arr.shape[-1]
    if len(parts) == 1:
        parts = parts * c
    if len(parts) != c:
        raise ConfigError(f"intensity lists {len(parts)} per-channel options ({spec}) for a {c}-channel image")
    out = np.empty(arr.shape, np.float32)
    for j, p in enumerate(parts):
        if parse_intensity(p)[0] == "ct-multi":
            raise ConfigError("ct-multi needs a single-channel CT image")
        out[..., j] = apply_intensity(arr[..., j], p)
    return out


def _window(a: np.ndarray, level: float, width: float) -> np.ndarray:
    lo = level - width / 2.0
    return np.clip((a - lo) / width, 0.0, 1.0)


def apply_intensity(arr: np.ndarray, spec: str, has_channels: bool = False) -> np.ndarray:
    """Map raw intensities of one image or volume to float32 in [0, 1].

    Statistics (min/max, percentiles, z-score) are taken over the whole array given, so a volume is
    normalised once, consistently across its slices. ``ct-multi`` adds a trailing channel axis of 3.
    """
    if CHANNEL_SEP in spec:
        if not has_channels:
            raise ConfigError(f"intensity lists per-channel options ({spec}) for a single-channel image")
        return apply_channel_intensity(arr, spec)
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
