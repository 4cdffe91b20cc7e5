"""Task specs: one YAML = dataset + options + encoder + heads + metrics. Every field has a default."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medprobe.errors import ConfigError
from medprobe.utils import hash_obj

CLASSIFICATION_HEADS = ("logreg", "linear", "knn", "abmil")


@dataclass
class TaskSpec:
    """A runnable task. ``split``: ``"official"`` (the dataset's own), ``{"fractions": [tr, va, te],
    "seed": s}`` (patient-level, seeded) or ``{"folds": k, "fold": i, "seed": s}`` (patient k-fold).
    ``budget``: fraction (0-1] or ``"<k>/class"`` of the training labels, nested per patient.
    ``features``: layers ('last', 'four', '2,5,8,11'), ``use`` ('last' or 'concat' of tapped layers),
    ``token`` ('cls', 'mean' or 'cls+mean'), ``pooling`` for volumes ('mean' or 'max'), ``amp``,
    ``batch_size``, ``storage``, ``workers``."""

    name: str = "task"
    kind: str = "classification"  # classification | segmentation
    dataset: str = "phantom:xray2d-binary"
    data: dict[str, Any] = field(default_factory=dict)
    split: Any = "official"
    encoder: str = "dinov3-vits16"
    weights: str | None = None
    verify_weights: bool = True
    preprocess: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    heads: list[str] = field(default_factory=lambda: ["logreg"])
    head_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    budget: Any = None
    seed: int = 0
    device: str | None = None
    cache_dir: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.heads, str):
            self.heads = [h.strip() for h in self.heads.split(",") if h.strip()]
        if self.kind not in ("classification", "segmentation"):
            raise ConfigError(f"task kind must be classification or segmentation, got {self.kind!r}", self.name)
        if not self.heads:
            raise ConfigError("a task needs at least one head", self.name)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(asdict(self))

    def with_overrides(self, **kw: Any) -> TaskSpec:
        d = self.to_dict()
        for k, v in kw.items():
            if k in ("preprocess", "features", "data", "metrics", "head_params", "notes") and isinstance(v, dict):
                d[k] = {**d.get(k, {}), **v}
            else:
                d[k] = v
        return TaskSpec(**d)

    def config_hash(self, head: str) -> str:
        """Hash of everything that changes this head's numbers (not paths to caches, devices or notes)."""
        d = self.to_dict()
        for k in ("cache_dir", "device", "notes", "name", "heads"):
            d.pop(k, None)
        d["head"] = head
        d["head_params"] = self.head_params.get(head, {})
        return hash_obj(d, n=16)


def load_task(path: str | Path, **overrides: Any) -> TaskSpec:
    """Read a task YAML; unknown keys are an error naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("task file not found", path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    if not isinstance(raw, dict):
        raise ConfigError("a task file must be a mapping of options", path)
    known = {f.name for f in fields(TaskSpec)}
    if "head" in raw and "heads" not in raw:
        raw["heads"] = raw.pop("head")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown task option(s) {unknown}; known: {sorted(known)}", path)
    raw.setdefault("name", path.stem)
    data = raw.get("data") or {}
    if isinstance(data.get("root"), str):
        data["root"] = str(Path(data["root"]).expanduser())
    raw["data"] = data
    try:
        spec = TaskSpec(**raw)
    except TypeError as e:
        raise ConfigError(str(e), path) from None
    return spec.with_overrides(**{k: v for k, v in overrides.items() if v is not None})
