"""Surgical and endoscopic video datasets in their native layouts: AutoLaparo, EndoVis 2018, EDD2020.

* ``autolaparo:<task1 folder>`` -- AutoLaparo task 1 (7 surgical phases, frame-wise classification):
  ``videos/01.mp4 .. 21.mp4`` and ``labels/label_01.txt`` (a ``Frame Phase`` header, then one
  ``<frame> <phase>`` row per second: the annotations are at ``label_fps`` = 1 frame per second; a label file
  whose frame numbers count the video's own frames takes ``label_fps`` = the video's rate, e.g. 25, and only its
  listed frames are used). Frame ``k`` of video ``v`` is read from ``frames/<v>/<k>.(png|jpg)`` when such
  pre-extracted frames exist, else decoded from the video at ``k / label_fps`` seconds (needs ``imageio-ffmpeg``:
  ``pip install 'medprobe[video]'``).
  Phases 1..7 become classes 0..6 (``AUTOLAPARO_PHASES``). Official split by video: 1-10 train, 11-14 val,
  15-21 test (``videos={train: [...], val: [...], test: [...]}`` to change it). The video is the group.
* ``endovis2018:<root>`` -- EndoVis 2018 robotic scene segmentation: ``<root>/{train,test}/seq_<n>/left_frames/
  <frame>.png`` with masks in ``<seq>/<mask_dir>/<frame>.png``. ``target``: ``instruments`` (the 7 instrument
  types of ISINet's ``instruments_masks``, values 0..7; ``class_map={raw: class index}`` remaps other
  encodings), ``binary`` (any instrument vs background: the union of instruments) or ``scene`` (the RGB scene
  labels in ``labels/`` decoded with ``labels.json``). Split: ``train/`` sequences train (``val_sequences``
  moves some to val), ``test/`` sequences test. The sequence is the group.
  Study metrics, added to every run: ``binary_iou`` (IoU of the union of instruments per frame; a frame with no
  instrument in truth and prediction scores 1, as the challenge's evaluation code) and, for ``instruments``,
  ``instrument_iou`` (the challenge's IoU: per frame, the mean IoU over the instrument classes present in the
  truth; 1 / 0 for an instrument-free frame predicted empty / not empty).
* ``edd2020:<root>`` -- EDD2020 segmentation: images in ``originalImages/`` (or ``images/``), masks
  ``masks/<name>_<class>_mask.tif`` (also ``<name>_<class>.tif``), one per class present, classes BE,
  suspicious, HGD, cancer, polyp. Classes overlap: ``Item.meta['multilabel']`` keeps the ``(H, W, K)`` truth;
  ``Item.mask`` is a label map for training where the later class in ``classes`` wins (overlaps counted in
  ``meta['issues']``). Study metric: ``dice_multilabel`` (per class Dice of the predicted class against that
  class's own mask, so overlapping truth is scored as such; mean over classes present in truth or prediction).
  ``group_pattern`` groups images (no official split).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.data import register_dataset
from medprobe.data.base import Dataset, Item, Modality, TaskInfo
from medprobe.data.io import files_fingerprint, read_image, suffix_of
from medprobe.errors import ConfigError, DataError, MedprobeError

AUTOLAPARO_PHASES = ("Preparation", "Dividing Ligament and Peritoneum", "Dividing Uterine Vessels and Ligament",
                     "Transecting the Vagina", "Specimen Removal", "Suturing", "Washing")
AUTOLAPARO_VIDEOS = {"train": list(range(1, 11)), "val": list(range(11, 15)), "test": list(range(15, 22))}
ENDOVIS18_INSTRUMENTS = ("background", "Bipolar Forceps", "Prograsp Forceps", "Large Needle Driver",
                         "Monopolar Curved Scissors", "Ultrasound Probe", "Suction Instrument", "Clip Applier")
EDD2020_CLASSES = ("BE", "suspicious", "HGD", "cancer", "polyp")
_FRAME_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _stem(p: Path) -> str:
    suf = suffix_of(p)
    return p.name[: -len(suf)] if suf else p.name


# ------------------------------------------------------------------------------------------ study metrics
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.count_nonzero(a | b))
    return 1.0 if union == 0 else int(np.count_nonzero(a & b)) / union


def binary_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the union of all foreground classes (EndoVis "binary" IoU); 1 when both are empty."""
    return _iou(np.asarray(pred) > 0, np.asarray(truth) > 0)


def challenge_instrument_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """EndoVis challenge IoU of one frame: mean IoU over the instrument classes present in the truth; a frame
    without instruments scores 1 when the prediction is empty too, else 0."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    present = [int(c) for c in np.unique(truth) if c != 0]
    if not present:
        return 0.0 if np.any(pred > 0) else 1.0
    return float(np.mean([_iou(pred == c, truth == c) for c in present]))


def multilabel_dice(pred: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Per class Dice of ``pred == k+1`` against the multi-label truth ``truth[..., k]`` (NaN when the class is
    in neither) and their mean over the finite ones, as ``dice_multilabel/<class>`` and ``dice_multilabel``."""
    pred = np.asarray(pred)
    out: dict[str, float] = {}
    vals = []
    for k, name in enumerate(classes):
        p, t = pred == k + 1, np.asarray(truth[..., k]) > 0
        s = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
        v = float("nan") if s == 0 else 2.0 * int(np.count_nonzero(p & t)) / s
        out[f"dice_multilabel/{name}"] = v
        if v == v:
            vals.append(v)
    out["dice_multilabel"] = float(np.mean(vals)) if vals else float("nan")
    return out


# ------------------------------------------------------------------------------------------ frame datasets
class _Frames(Dataset):
    """Cases = frames: ``(id, image file, group, split)`` plus whatever ``_mask`` needs."""

    spatial_dims = 2

    def __init__(self, name: str, source: Path, rows: list[dict[str, Any]], task: TaskInfo,
                 modality: Modality, extra: dict[str, Any]) -> None:
        if not rows:
            raise DataError("no frames found", source=source)
        self.name, self.source, self.rows, self.task, self.modality = name, source, rows, task, modality
        self._extra = extra
        self._fp: str | None = None
        ids = [r["id"] for r in rows]
        if len(set(ids)) != len(ids):
            raise DataError("two frames share an id", source=source)

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def patients(self) -> list[str]:
        return [r["group"] for r in self.rows]

    def splits(self) -> dict[str, list[int]] | None:
        tags = [r.get("split") for r in self.rows]
        if all(t is None for t in tags):
            return None
        out = {k: [i for i, t in enumerate(tags) if t == k] for k in ("train", "val", "test")}
        return {k: v for k, v in out.items() if v}

    def fingerprint(self) -> str:
        if self._fp is None:
            files = [f for r in self.rows for f in r["files"]]
            self._fp = files_fingerprint(files, {"name": self.name, "task": self.task.to_dict(),
                                                 "rows": [(r["id"], r["group"], r.get("split")) for r in self.rows],
                                                 **self._extra})
        return self._fp

    def _read(self, path: Path, cid: str) -> np.ndarray:
        try:
            return read_image(path)
        except MedprobeError as e:
            raise DataError(str(e), source=cid) from None


class EndoVis2018(_Frames):
    """EndoVis 2018 frames with instrument / binary / scene masks (module docstring)."""

    def __init__(self, root: Path, rows: list[dict[str, Any]], task: TaskInfo, target: str,
                 class_map: dict[int, int] | None, colours: dict[tuple[int, ...], int] | None,
                 binary_from: set[int] | None) -> None:
        super().__init__("endovis2018", root, rows, task, "endoscopy",
                         {"target": target, "class_map": sorted((class_map or {}).items())})
        self.target, self.class_map, self.colours, self.binary_from = target, class_map, colours, binary_from

    def _mask(self, raw: np.ndarray, cid: str, path: Path) -> np.ndarray:
        if self.colours is not None:  # RGB scene labels
            rgb = raw[..., :3] if raw.ndim == 3 else np.repeat(raw[..., None], 3, axis=2)
            lab = np.full(rgb.shape[:2], -1, dtype=np.int64)
            for col, k in self.colours.items():
                lab[np.all(rgb == np.asarray(col, dtype=rgb.dtype), axis=-1)] = k
            if (lab < 0).any():
                bad = tuple(int(v) for v in rgb[np.argwhere(lab < 0)[0][0], np.argwhere(lab < 0)[0][1]])
                raise DataError(f"colour {bad} of {path.name} is not in labels.json", source=cid)
        else:
            lab = (raw[..., 0] if raw.ndim == 3 else raw).astype(np.int64)
            if self.class_map is not None:
                out = np.full(lab.shape, -1, dtype=np.int64)
                for v, k in self.class_map.items():
                    out[lab == v] = k
                if (out < 0).any():
                    v = int(lab[out < 0][0])
                    raise DataError(f"mask value {v} of {path.name} is not in class_map", source=cid)
                lab = out
        if self.binary_from is not None:
            lab = np.isin(lab, list(self.binary_from)).astype(np.int64)
        k = self.task.n_classes
        if lab.min() < 0 or lab.max() >= k:
            raise DataError(f"mask value {int(lab.max())} of {path.name} is outside classes 0..{k - 1}", source=cid)
        return lab.astype(np.uint8)

    def load(self, i: int) -> Item:
        r = self.rows[i]
        image = self._read(r["files"][0], r["id"])
        mask = self._mask(self._read(r["files"][1], r["id"]), r["id"], r["files"][1])
        if mask.shape != image.shape[:2]:
            raise DataError(f"image shape {image.shape[:2]} != mask shape {mask.shape}", source=r["id"])
        return Item(id=r["id"], image=image, spatial_dims=2, spacing=(1.0, 1.0), mask=mask, patient=r["group"],
                    source=str(r["files"][0]), meta={"split": r.get("split"), "sequence": r["group"],
                                                     "mask_files": [str(r["files"][1])]})

    def case_metrics(self, pred: np.ndarray, item: Item) -> dict[str, float]:
        """The study's EndoVis metrics of one frame (module docstring)."""
        assert item.mask is not None
        out = {"binary_iou": binary_iou(pred, item.mask)}
        if self.target == "instruments":
            out["instrument_iou"] = challenge_instrument_iou(pred, item.mask)
        return out


def _sequences(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: _natural(d.name))


def _frames_in(d: Path) -> dict[str, Path]:
    if not d.is_dir():
        return {}
    return {_stem(f): f for f in d.iterdir() if f.is_file() and suffix_of(f) in _FRAME_EXTS}


def _labels_json(root: Path, seqs: list[Path]) -> tuple[dict[tuple[int, ...], int], list[str]] | None:
    """EndoVis ``labels.json`` (top level or in a sequence): colour -> class id, and names by class id."""
    for c in [root / "labels.json", *(s / "labels.json" for s in seqs)]:
        if c.is_file():
            try:
                entries = sorted(json.loads(c.read_text(encoding="utf-8")), key=lambda e: int(e["classid"]))
                colours = {tuple(int(v) for v in e["color"]): int(e["classid"]) for e in entries}
                names = [str(e["name"]) for e in entries]
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"labels.json is not a list of {{name, color, classid}} ({e})", source=c) from None
            if [int(e["classid"]) for e in entries] != list(range(len(entries))):
                raise DataError("labels.json class ids must be 0..K-1", source=c)
            return colours, names
    return None


@register_dataset("endovis2018")
def create_endovis2018(arg: str = "", root: str | Path | None = None, target: str = "instruments",
                       mask_dir: str | None = None, class_map: Mapping[Any, int] | None = None,
                       val_sequences: Sequence[str] = (), frames_dir: str = "left_frames") -> EndoVis2018:
    """``endovis2018:<root>`` with ``{train,test}/seq_<n>/left_frames`` (module docstring)."""
    top = Path(arg or root or "").expanduser()
    if not str(top) or not top.is_dir():
        raise DataError("EndoVis 2018 folder not found (give endovis2018:/path/to/root)", source=top)
    if target not in ("instruments", "binary", "scene"):
        raise ConfigError(f"target must be instruments, binary or scene, got {target!r}", top)
    split_dirs = [(s, top / d) for s, d in (("train", "train"), ("test", "test")) if (top / d).is_dir()]
    if not split_dirs:
        split_dirs = [("", top)]
    all_seqs = [s for _, d in split_dirs for s in _sequences(d)]
    inst_dir = mask_dir or "instruments_masks"
    use_scene = target == "scene" or (target == "binary" and mask_dir is None
                                      and not any((s / "instruments_masks").is_dir() for s in all_seqs))
    colours = None
    binary_from: set[int] | None = None
    if use_scene:
        inst_dir = mask_dir or "labels"
        found = _labels_json(top, all_seqs)
        if found is None:
            raise DataError("scene labels need labels.json (name, color, classid per class)", source=top)
        colours, names = found
        classes: tuple[str, ...] = tuple(names)
        if target == "binary":
            binary_from = {k for k, n in enumerate(names) if "instrument" in n.lower()}
            if not binary_from:
                raise DataError("labels.json names no instrument class", source=top)
    else:
        classes = ENDOVIS18_INSTRUMENTS
        if target == "binary":
            binary_from = set(range(1, len(ENDOVIS18_INSTRUMENTS)))
    if target == "binary":
        classes = ("background", "instrument")
    cmap = None if class_map is None else {int(k): int(v) for k, v in class_map.items()}
    if cmap is not None and binary_from is not None and not use_scene:
        binary_from = {v for v in cmap.values() if v > 0}
    val_set = {str(v) for v in val_sequences}
    rows: list[dict[str, Any]] = []
    for split, d in split_dirs:
        for seq in _sequences(d):
            frames = _frames_in(seq / frames_dir)
            masks = _frames_in(seq / inst_dir)
            if not frames:
                continue
            missing = sorted(set(frames) - set(masks), key=_natural)
            if missing:
                raise DataError(f"{len(missing)} frame(s) without a mask in {inst_dir}/ (e.g. {missing[0]})",
                                source=seq)
            group = f"{split}/{seq.name}" if split else seq.name
            tag = ("val" if seq.name in val_set or group in val_set else split) or None
            for fr in sorted(frames, key=_natural):
                rows.append({"id": f"{group}/{fr}", "files": [frames[fr], masks[fr]], "group": group, "split": tag})
    unknown_val = val_set - {r["group"] for r in rows} - {r["group"].split("/")[-1] for r in rows}
    if unknown_val:
        raise ConfigError(f"val_sequences {sorted(unknown_val)} not found", top)
    return EndoVis2018(top, rows, TaskInfo("segmentation", classes), target, cmap, colours, binary_from)


class EDD2020(_Frames):
    """EDD2020 images with one mask file per class present (module docstring)."""

    def __init__(self, root: Path, rows: list[dict[str, Any]], classes: tuple[str, ...]) -> None:
        super().__init__("edd2020", root, rows, TaskInfo("segmentation", ("background", *classes)), "endoscopy",
                         {"classes": list(classes)})
        self.classes = classes

    def load(self, i: int) -> Item:
        r = self.rows[i]
        image = self._read(r["files"][0], r["id"])
        hw = image.shape[:2]
        ml = np.zeros((*hw, len(self.classes)), dtype=bool)
        for k, f in r["masks"].items():
            m = self._read(f, r["id"])
            if m.shape[:2] != hw:
                raise DataError(f"image shape {hw} != mask shape {m.shape[:2]} ({f.name})", source=r["id"])
            ml[..., k] = (m.max(axis=-1) if m.ndim == 3 else m) > 0
        mask = np.zeros(hw, dtype=np.uint8)
        for k in range(len(self.classes)):
            mask[ml[..., k]] = k + 1
        overlap = int((ml.sum(axis=-1) > 1).sum())
        issues = [f"{overlap} pixels in several class masks (label map: later class kept; multilabel kept all)"] \
            if overlap else []
        return Item(id=r["id"], image=image, spatial_dims=2, spacing=(1.0, 1.0), mask=mask, patient=r["group"],
                    source=str(r["files"][0]), meta={"multilabel": ml, "issues": issues,
                                                     "mask_files": [str(f) for f in r["masks"].values()]})

    def case_metrics(self, pred: np.ndarray, item: Item) -> dict[str, float]:
        """Multi-label Dice against the overlapping truth (module docstring)."""
        return multilabel_dice(pred, item.meta["multilabel"], self.classes)


@register_dataset("edd2020")
def create_edd2020(arg: str = "", root: str | Path | None = None, images: str | None = None, masks: str = "masks",
                   classes: Sequence[str] = EDD2020_CLASSES, group_pattern: str | None = None) -> EDD2020:
    """``edd2020:<root>`` with ``originalImages/`` and ``masks/<name>_<class>_mask.tif`` (module docstring)."""
    from medprobe.data.splits import compile_group_pattern, group_from_name

    top = Path(arg or root or "").expanduser()
    if not str(top) or not top.is_dir():
        raise DataError("EDD2020 folder not found (give edd2020:/path/to/root)", source=top)
    img_dir = top / images if images else next((top / d for d in ("originalImages", "images") if (top / d).is_dir()),
                                               top / "originalImages")
    mdir = top / masks
    for d in (img_dir, mdir):
        if not d.is_dir():
            raise DataError("folder not found", source=d)
    cls = tuple(str(c) for c in classes)
    imgs = _frames_in(img_dir)
    by_name: dict[str, dict[int, Path]] = {}
    pat = re.compile(r"^(?P<name>.+)_(?P<cls>" + "|".join(re.escape(c) for c in cls) + r")(?:_mask)?$",
                     re.IGNORECASE)
    lower = {c.lower(): k for k, c in enumerate(cls)}
    stray = []
    for f in sorted(mdir.iterdir()):
        if not f.is_file() or suffix_of(f) not in _FRAME_EXTS:
            continue
        m = pat.match(_stem(f))
        if m is None or m.group("name") not in imgs:
            stray.append(f.name)
            continue
        by_name.setdefault(m.group("name"), {})[lower[m.group("cls").lower()]] = f
    if stray:
        raise DataError(f"{len(stray)} mask file(s) match no image and class <name>_<class>_mask (e.g. {stray[0]}; "
                        f"classes {', '.join(cls)})", source=mdir)
    gp = compile_group_pattern(group_pattern, top) if group_pattern else None
    rows = []
    for name in sorted(imgs, key=_natural):
        ms = dict(sorted(by_name.get(name, {}).items()))
        rows.append({"id": name, "files": [imgs[name], *ms.values()], "masks": ms,
                     "group": group_from_name(imgs[name].name, gp, img_dir) if gp else name})
    return EDD2020(top, rows, cls)


# ------------------------------------------------------------------------------------------ AutoLaparo
def read_phase_labels(path: Path) -> list[tuple[int, int]]:
    """``(frame, phase)`` rows of an AutoLaparo label file (whitespace or comma separated; header skipped)."""
    if not path.is_file():
        raise DataError("label file not found", source=path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if not parts[0].lstrip("-").isdigit():
            if n == 1:
                continue  # header
            raise DataError(f"line {n}: expected '<frame> <phase>', got {line.strip()!r}", source=path)
        if len(parts) < 2 or not parts[1].isdigit():
            raise DataError(f"line {n}: expected '<frame> <phase>', got {line.strip()!r}", source=path)
        out.append((int(parts[0]), int(parts[1])))
    return out


class VideoFrames:
    """One frame of a video at a time (``imageio-ffmpeg``: ffmpeg seeks to the time, decodes one frame)."""

    def __init__(self, path: Path) -> None:
        try:
            import imageio_ffmpeg
        except ImportError:
            raise ConfigError("decoding videos needs imageio-ffmpeg (pip install 'medprobe[video]'), or put "
                              "pre-extracted frames in frames/<video>/<frame>.png", path) from None
        self._ff, self.path = imageio_ffmpeg, path

    def read(self, seconds: float) -> np.ndarray:
        """The RGB frame shown at ``seconds`` as ``(H, W, 3)`` uint8."""
        try:
            gen = self._ff.read_frames(str(self.path), input_params=["-ss", f"{seconds:.3f}"],
                                       output_params=["-frames:v", "1"])
            meta = next(gen)
            w, h = meta["size"]
            frame = next(gen, None)
            gen.close()
        except (OSError, RuntimeError, StopIteration) as e:
            raise DataError(f"cannot decode the frame at {seconds:.3f} s ({type(e).__name__}: {e})",
                            source=self.path) from None
        if frame is None:
            raise DataError(f"no frame at {seconds:.3f} s (the video is shorter)", source=self.path)
        return np.frombuffer(frame, dtype=np.uint8).reshape(h, w, 3).copy()


class AutoLaparo(Dataset):
    """AutoLaparo task 1 frames (annotations at ``label_fps``) with phases 0..6 (module docstring)."""

    spatial_dims = 2
    modality: Modality = "endoscopy"

    def __init__(self, root: Path, rows: list[dict[str, Any]], label_fps: float) -> None:
        if not rows:
            raise DataError("no annotated frames found", source=root)
        self.name, self.root, self.rows, self.label_fps = "autolaparo", root, rows, float(label_fps)
        self.task = TaskInfo("multiclass", AUTOLAPARO_PHASES)
        self._videos: dict[Path, VideoFrames] = {}
        self._fp: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def labels(self) -> list[Any]:
        return [r["label"] for r in self.rows]

    def patients(self) -> list[str]:
        return [r["video"] for r in self.rows]

    def splits(self) -> dict[str, list[int]] | None:
        out = {k: [i for i, r in enumerate(self.rows) if r["split"] == k] for k in ("train", "val", "test")}
        return {k: v for k, v in out.items() if v}

    def fingerprint(self) -> str:
        if self._fp is None:
            files = sorted({r["source"] for r in self.rows} | {r["labels"] for r in self.rows})
            self._fp = files_fingerprint(files, {"rows": [(r["id"], r["label"], r["split"]) for r in self.rows],
                                                 "label_fps": self.label_fps})
        return self._fp

    def load(self, i: int) -> Item:
        r = self.rows[i]
        src: Path = r["source"]
        if r["from_video"]:
            vf = self._videos.get(src) or self._videos.setdefault(src, VideoFrames(src))
            image = vf.read(r["frame"] / self.label_fps)
            how = f"decoded at {r['frame'] / self.label_fps:.3f} s"
        else:
            try:
                image = read_image(src)
            except MedprobeError as e:
                raise DataError(str(e), source=r["id"]) from None
            how = "pre-extracted frame"
        return Item(id=r["id"], image=image, spatial_dims=2, spacing=(1.0, 1.0), label=r["label"],
                    patient=r["video"], source=str(src), meta={"split": r["split"], "frame": r["frame"],
                                                               "frame_source": how})


@register_dataset("autolaparo")
def create_autolaparo(arg: str = "", root: str | Path | None = None, label_fps: float = 1.0,
                      videos: Mapping[str, Sequence[int]] | None = None) -> AutoLaparo:
    """``autolaparo:<task1 folder>`` with ``videos/``, ``labels/`` (and optional ``frames/``) (module docstring)."""
    top = Path(arg or root or "").expanduser()
    if not str(top) or not top.is_dir():
        raise DataError("AutoLaparo folder not found (give autolaparo:/path/to/task1)", source=top)
    if not label_fps > 0:
        raise ConfigError(f"label_fps must be > 0, got {label_fps}", top)
    assign = {k: list(v) for k, v in (videos or AUTOLAPARO_VIDEOS).items()}
    split_of: dict[int, str] = {}
    for k, vs in assign.items():
        if k not in ("train", "val", "test"):
            raise ConfigError(f"videos: unknown split {k!r} (use train, val, test)", top)
        for v in vs:
            if int(v) in split_of:
                raise ConfigError(f"videos: video {v} is in both {split_of[int(v)]} and {k}", top)
            split_of[int(v)] = k
    label_dir = top / "labels"
    if not label_dir.is_dir():
        raise DataError("labels/ folder not found", source=top)
    rows: list[dict[str, Any]] = []
    for lf in sorted(label_dir.glob("label_*.txt"), key=lambda p: _natural(p.name)):
        num = re.sub(r"\D", "", lf.stem)
        if not num or int(num) not in split_of:
            continue
        vid = f"{int(num):02d}"
        frames = _frames_in(top / "frames" / vid) or _frames_in(top / "frames" / num)
        video = next((p for p in (top / "videos").glob(f"{vid}.*") if suffix_of(p) in (".mp4", ".avi", ".mkv",
                                                                                        ".mov")), None) \
            if (top / "videos").is_dir() else None
        if not frames and video is None:
            raise DataError(f"video {vid}: neither videos/{vid}.mp4 nor frames/{vid}/ found", source=top)
        frame_by_index = {int(k): p for k, p in frames.items() if k.isdigit()}
        for frame, phase in read_phase_labels(lf):
            if not 1 <= phase <= len(AUTOLAPARO_PHASES):
                raise DataError(f"frame {frame}: phase {phase} is not one of 1..{len(AUTOLAPARO_PHASES)}", source=lf)
            if frames and frame not in frame_by_index:
                raise DataError(f"frame {frame} is annotated but frames/{vid}/ has no such file", source=lf)
            src = frame_by_index[frame] if frames else video
            rows.append({"id": f"{vid}/{frame:05d}", "video": vid, "frame": frame, "label": phase - 1,
                         "split": split_of[int(num)], "source": src, "from_video": not frames, "labels": lf})
    return AutoLaparo(top, rows, label_fps)


__all__ = ["AUTOLAPARO_PHASES", "AUTOLAPARO_VIDEOS", "EDD2020", "EDD2020_CLASSES", "ENDOVIS18_INSTRUMENTS",
           "AutoLaparo", "EndoVis2018", "VideoFrames", "binary_iou", "challenge_instrument_iou",
           "create_autolaparo", "create_edd2020", "create_endovis2018", "multilabel_dice", "read_phase_labels"]
