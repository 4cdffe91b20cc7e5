"""Preprocessing options (torch-free): every field changes the features, so each is part of the cache key
and stored with every result."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medprobe.errors import ConfigError
from medprobe.preprocess.intensity import CHANNEL_SEP, check_intensity, resolve_intensity
from medprobe.schema import as_dict, choice, normalise_fields, opt, to_bool, to_int, to_size, to_triple

CHANNEL_MODES = ("auto", "replicate", "keep", "per_channel", "first3")
RESIZE_MODES = ("stretch", "pad", "aspect_pad")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")


def _intensity(v: Any, path: str) -> str:
    """One option, or one per channel (a list, or ``a|b``), canonical as ``a|b``."""
    s = CHANNEL_SEP.join(str(x).strip() for x in v) if isinstance(v, (list, tuple)) else str(v).strip()
    s = CHANNEL_SEP.join(p.strip() for p in s.split(CHANNEL_SEP))
    if s != "auto":
        try:
            check_intensity(s)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e.problem}") from None
    return s


@dataclass(frozen=True)
class PreprocessConfig:
    """All preprocessing choices. ``None``/``auto`` fields are filled from the encoder / dataset by
    :meth:`resolved`.

    * ``intensity``: see :mod:`medprobe.preprocess.intensity` (``auto`` resolved from modality and dtype); one
      option per channel as a list / ``a|b`` (multi-channel input: each channel its own window, percentiles or
      SUV range; ``per_channel`` input is always normalised channel by channel).
    * ``channels``: ``auto`` (grey replicated to 3, RGB kept, RGBA -> RGB), ``replicate`` (first channel
      replicated), ``keep`` (needs 3 channels), ``per_channel`` (each channel encoded separately as a grey
      image, features concatenated: multi-modal volumes), ``first3`` (first three channels as RGB).
    * ``resize``: ``stretch`` to ``resolution``; ``pad`` zero-pads to it without scaling (MedMNIST+ style,
      images larger than the target are refused); ``aspect_pad`` scales the longer side to the target and
      zero-pads the other.
    * ``resolution``: ``(H, W)``; ``None`` -> the encoder's native (pre-training) resolution.
    * ``mean``/``std``: ``None`` -> the encoder's.
    * ``slice_axis``: for volumes, ``None`` -> each item's own (axial) axis.
    """

    intensity: str = opt("auto", norm=_intensity, type="str",
                         help="auto, minmax, uint8, uint16, none, ct:<preset>, ct:<level>,<width>, ct-multi:a,b,c, "
                              "mri:percentile[:lo,hi], mri:zscore, pet:suv[:lo,hi]; or one per channel: a list "
                              "or a|b (e.g. ct:soft_tissue|pet:suv:0,10)")
    channels: str = opt("auto", norm=choice(*CHANNEL_MODES), type="|".join(CHANNEL_MODES),
                        help="grey -> RGB handling (auto: grey replicated, RGB kept)")
    resize: str = opt("stretch", norm=choice(*RESIZE_MODES), type="|".join(RESIZE_MODES),
                      help="how images reach the input size")
    resolution: tuple[int, int] | None = opt(None, norm=to_size, type="N | HxW | [H, W] | native",
                                             help="encoder input size (null: the encoder's native size)")
    interpolation: str = opt("bilinear", norm=choice(*INTERPOLATIONS), type="|".join(INTERPOLATIONS),
                             help="resampling kernel")
    antialias: bool = opt(True, norm=to_bool, type="bool", help="anti-alias when shrinking")
    mean: tuple[float, float, float] | None = opt(None, norm=to_triple, type="[r, g, b]",
                                                  help="normalisation mean (null: the encoder's)")
    std: tuple[float, float, float] | None = opt(None, norm=to_triple, type="[r, g, b]",
                                                 help="normalisation std (null: the encoder's)")
    slice_axis: int | None = opt(None, norm=to_int(0, 2, optional=True), type="0|1|2|null",
                                 help="volumes: axis sliced for the 2D encoder (null: each item's axial axis)")

    def __post_init__(self) -> None:
        normalise_fields(self)  # the schema's normalisers: 64, "64", "64x64", [64, 64] are one resolution

    def resolved(self, *, mean: tuple[float, ...], std: tuple[float, ...], native_resolution: int,
                 modality: str = "generic", dtype: Any = np.float32) -> PreprocessConfig:
        """A copy with every ``None``/``auto`` replaced by the concrete value used."""
        return replace(
            self,
            intensity=resolve_intensity(self.intensity, modality, dtype),
            resolution=self.resolution or (native_resolution, native_resolution),
            mean=tuple(float(v) for v in (self.mean or mean)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in (self.std or std)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(as_dict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(**d)


# ------------------------------------------------------------------------------------------ what was done
def channel_handling(mode: str, n_channels: int) -> tuple[str, str]:
    """The channel mode actually applied to ``n_channels``-channel input, and what it did (for the record)."""
    if mode == "auto":
        if n_channels == 1:
            mode = "replicate"
        elif n_channels in (3, 4):
            mode = "keep"
        else:
            return mode, f"{n_channels}-channel input: auto cannot map it (choose per_channel or first3)"
    what = {"replicate": "grey replicated to RGB" if n_channels == 1 else
            f"first of {n_channels} channels replicated to RGB",
            "keep": "RGB kept" if n_channels == 3 else ("RGBA -> RGB (alpha dropped)" if n_channels == 4 else
                                                       "RGB kept"),
            "first3": f"first 3 of {n_channels} channels as RGB",
            "per_channel": f"each of {n_channels} channels encoded as a grey image, features concatenated"}[mode]
    return mode, what


def geometry_effects(cfg: PreprocessConfig, min_hw: tuple[int, int] | None, max_hw: tuple[int, int] | None
                     ) -> dict[str, Any]:
    """Which geometry options acted on inputs of these sizes (2D): resizing (enlarging / shrinking) and
    anti-aliasing, which acts only when a bilinear or bicubic resize shrinks an image."""
    res = cfg.resolution
    if res is None or min_hw is None or max_hw is None:
        return {"antialias": {"requested": cfg.antialias, "effective": cfg.antialias,
                              "why": "input sizes not known"}}
    th, tw = res
    same = tuple(min_hw) == tuple(max_hw) == (th, tw)
    if cfg.resize == "pad" or same:
        action = "none (already the input size)" if same else "zero-padded, no resampling"
        shrink = enlarge = False
    else:
        shrink = max_hw[0] > th or max_hw[1] > tw
        enlarge = min_hw[0] < th or min_hw[1] < tw
        action = ("enlarged and shrunk" if shrink and enlarge else "shrunk" if shrink else
                  "enlarged" if enlarge else "none")
    sizes = f"{min_hw[0]}x{min_hw[1]}" + ("" if tuple(min_hw) == tuple(max_hw) else f"..{max_hw[0]}x{max_hw[1]}")
    kernel_aa = cfg.interpolation in ("bilinear", "bicubic")
    eff = bool(cfg.antialias and kernel_aa and shrink)
    if not cfg.antialias:
        why = "off"
    elif not kernel_aa:
        why = f"no effect: {cfg.interpolation} resampling has no anti-aliasing"
    elif not shrink:
        why = f"no effect: no image is shrunk ({sizes} -> {th}x{tw}, {action}); anti-aliasing acts only when shrinking"
    else:
        why = f"applied to images larger than {th}x{tw}"
    return {"resize": {"mode": cfg.resize, "input": sizes, "target": f"{th}x{tw}", "done": action},
            "antialias": {"requested": cfg.antialias, "effective": eff, "why": why}}
