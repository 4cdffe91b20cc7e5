"""Input selection for multi-channel data: which of a case's channels reach the encoder (torch-free).

The study's PET/CT input ablation (CT only, PET only, CT+PET) is ``data.inputs`` of a task: ``CT``, ``PET``,
``CT+PET`` (channel names, from the dataset's ``channel_names``, case-insensitive), ``0``, ``1``, ``0+1`` or
``[0, 1]`` (channel indices), or ``all`` (every channel, the default). It is one more value of a task, so three
tasks (or three sweep entries) that differ only in it are the ablation. The selected dataset's fingerprint,
channel names and modality (``ct`` for CT alone, ``pet`` for PET alone) follow the selection, so cached
features, ``intensity: auto`` and the record all say which inputs were used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medprobe.data.base import Dataset, Item
from medprobe.errors import ConfigError, DataError
from medprobe.preprocess.intensity import channel_kind


def parse_inputs(v: Any) -> tuple[str, ...] | None:
    """``all``/None -> None; ``"CT+PET"``, ``"0,1"``, ``[0, "PET"]``, ``1`` -> the entries as strings."""
    if v is None:
        return None
    if isinstance(v, bool):
        raise ConfigError(f"data.inputs: must be all, channel names or indices like CT+PET or 0+1, got {v!r}")
    if isinstance(v, (list, tuple)):
        parts = [str(x).strip() for x in v]
    else:
        s = str(v).strip()
        if s.lower() in ("all", ""):
            return None
        parts = [p.strip() for p in s.replace(",", "+").split("+")]
    if not parts or any(not p for p in parts):
        raise ConfigError(f"data.inputs: must be all, channel names or indices like CT+PET or 0+1, got {v!r}")
    if len({p.lower() for p in parts}) != len(parts):
        raise ConfigError(f"data.inputs: a channel is listed twice ({'+'.join(parts)})")
    return tuple(parts)


def resolve_inputs(inputs: tuple[str, ...], names: list[str] | None, n_channels: int, where: str
                   ) -> list[int]:
    """Channel indices of ``inputs`` (names matched case-insensitively against ``names``)."""
    low = [str(n).strip().lower() for n in (names or [])]
    out: list[int] = []
    for p in inputs:
        if p.lstrip("-").isdigit():
            i = int(p)
            if not 0 <= i < n_channels:
                raise ConfigError(f"data.inputs: channel {i} out of range for {n_channels}-channel input", where)
        elif p.lower() in low:
            i = low.index(p.lower())
        else:
            known = ", ".join(f"{j}={n}" for j, n in enumerate(names or [])) or "the dataset names no channels"
            raise ConfigError(f"data.inputs: no channel named {p!r} ({known}); use names or indices", where)
        out.append(i)
    return out


class ChannelSelection(Dataset):
    """The cases of ``base`` with only the channels ``channels`` (in that order; one channel -> a grey image)."""

    def __init__(self, base: Dataset, channels: list[int], names: list[str] | None) -> None:
        self.base, self.channels = base, list(channels)
        self.n_base = len(names) if names else None
        self.channel_names = [names[i] for i in channels] if names else [str(i) for i in channels]
        self.name = f"{base.name}[{'+'.join(self.channel_names)}]"
        self.spatial_dims, self.task = base.spatial_dims, base.task
        kinds = {channel_kind(n) for n in self.channel_names} if names else {None}
        single = next(iter(kinds)) if len(kinds) == 1 else None
        self.modality = single if single in ("ct", "pet", "mri") else base.modality  # type: ignore[assignment]
        for attr in ("source", "root"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    @property
    def label(self) -> str:
        """``CT+PET`` / ``PET`` ... (what the record and tables call the selection)."""
        return "+".join(self.channel_names)

    def __len__(self) -> int:
        return len(self.base)

    def ids(self) -> list[str]:
        return self.base.ids()

    def labels(self) -> list[Any]:
        return self.base.labels()

    def patients(self) -> list[str]:
        return self.base.patients()

    def splits(self) -> dict[str, list[int]] | None:
        return self.base.splits()

    def fingerprint(self) -> str:
        from medprobe.utils import hash_obj

        return hash_obj({"base": self.base.fingerprint(), "channels": self.channels})

    def load(self, i: int) -> Item:
        item = self.base.load(i)
        img = item.image
        if not isinstance(img, np.ndarray):
            raise DataError("data.inputs selects channels of whole images; this case is read by region",
                            item.source or item.id)
        c = 1 if img.ndim == item.spatial_dims else int(img.shape[-1])
        if max(self.channels) >= c:
            raise DataError(f"data.inputs asks for channel {max(self.channels)}, the image has {c}",
                            item.source or item.id)
        if img.ndim == item.spatial_dims:  # grey: only channel 0 exists
            return item
        sel = img[..., self.channels]
        item.image = np.ascontiguousarray(sel[..., 0] if len(self.channels) == 1 else sel)
        item.meta = {**item.meta, "inputs": self.label}
        return item


def channel_names(ds: Any) -> list[str] | None:
    """The dataset's channel names (``channel_names``, looked up through wrappers such as a ``Subset``'s
    ``base``), or None when it names none."""
    seen = 0
    while ds is not None and seen < 16:
        names = getattr(ds, "channel_names", None)
        if names:
            return [str(n) for n in names]
        ds, seen = getattr(ds, "base", None), seen + 1
    return None


def select_inputs(ds: Dataset, inputs: Any, where: str | None = None) -> Dataset:
    """``ds`` restricted to the channels ``inputs`` names (``all``/None: ``ds`` itself)."""
    sel = parse_inputs(inputs)
    if sel is None:
        return ds
    names = channel_names(ds) or []
    n = len(names) if names else ds.load(0).n_channels
    idx = resolve_inputs(sel, names, n, where or ds.name)
    return ChannelSelection(ds, idx, names or None)


__all__ = ["ChannelSelection", "channel_names", "parse_inputs", "resolve_inputs", "select_inputs"]
