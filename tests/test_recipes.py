"""The recipes of docs/design.md, performed from this test module without editing a file under src/:
register an encoder family (+ one encoder), a dataset layout, a head and a task family, then run them end to
end through ``run_task`` and the ``medprobe run`` CLI. Registering is enough: nothing in pipeline/, cli/ or
report/ branches on a head, encoder-family or task-family name (checked on the source below)."""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medprobe.cli.main import main
from medprobe.data import ArrayDataset, TaskInfo, register_dataset, unregister_dataset
from medprobe.encoders import (
    Encoder,
    EncoderFamily,
    EncoderInfo,
    EncoderOutput,
    EncoderSpec,
    create_encoder,
    encoder_families,
    get_spec,
    register,
    register_family,
)
from medprobe.encoders.families import unregister_family as unregister_encoder_family
from medprobe.encoders.flops import gflops_per_image
from medprobe.encoders.registry import unregister as unregister_encoder
from medprobe.encoders.weights import WeightsRef
from medprobe.features import UNITS, ExtractConfig, ExtractionUnit, FeatureStore, ResolvedEntry, extract, lookup
from medprobe.features import register_unit as register_extraction_unit
from medprobe.features.common import (
    Runner,
    cache_root,
    device_of,
    entry_spec,
    found_entry,
    keyed,
    open_entry,
    open_or_drop,
    resolve_preprocess,
    run_shards,
    write_shard,
)
from medprobe.heads.base import Head, head_names, register_head, unregister_head
from medprobe.metrics import mean_ci
from medprobe.pipeline.family import (
    HeadResult,
    RunContext,
    TaskFamily,
    family_names,
    feature_matrix,
)
from medprobe.pipeline.family import (
    register_family as register_task_family,
)
from medprobe.pipeline.family import (
    unregister_family as unregister_task_family,
)
from medprobe.pipeline.run import run_task
from medprobe.pipeline.task import parse_task
from medprobe.preprocess import PreprocessConfig, Preprocessor
from medprobe.results import ResultsDB

SRC = Path(__file__).resolve().parents[1] / "src" / "medprobe"


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


# ---------------------------------------------------------------------------------- recipe 1: encoder family
class PoolNet(Encoder):
    """A patch-8 average-pool 'encoder' with a fixed random 1x1 mixing per block (seeded)."""

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.mix = torch.nn.ModuleList(torch.nn.Conv2d(3 if i == 0 else spec.width, spec.width, 1)
                                       for i in range(spec.depth))

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        self.check_input_size(x.shape[2], x.shape[3])
        h = torch.nn.functional.avg_pool2d(x, self.spec.patch_size)
        cls, patch = {}, {}
        for i in range(max(layers) + 1):
            h = torch.tanh(self.mix[i](h))
            if i in layers:
                patch[i], cls[i] = h, h.mean((2, 3))
        return EncoderOutput(cls=cls, patch=patch)


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ref.seed)
        enc = PoolNet(spec)
    enc.weights_id, enc.pretrained = f"random:seed={ref.seed}", False
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    return EncoderInfo(spec, f"random:seed={ref.seed}", False) if ref.kind == "random" else None


def _gflops(spec: EncoderSpec, res: tuple[int, int], layers: tuple[int, ...] | None) -> float | None:
    return gflops_per_image(PoolNet(spec), res, layers=layers)


# ---------------------------------------------------------------------------------- recipe 2: dataset layout
def _blobs(arg: str, n: int = 48, size: int = 32, seed: int = 0) -> ArrayDataset:
    """``toyblobs:``: grey images holding 0-3 bright squares; the label is how many (task type 'count')."""
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for i in range(n):
        k = i % 4
        img = rng.normal(0.2, 0.02, (size, size)).astype(np.float32)
        for j in range(k):
            y, x = 2 + 8 * j, int(rng.integers(2, size - 8))
            img[y:y + 6, x:x + 6] = 0.9
        imgs.append(img)
        labels.append(k)
    return ArrayDataset(imgs, labels, name="toyblobs", modality="generic", task=TaskInfo("count", ("count",)))


# ---------------------------------------------------------------------------------- recipe 3: head
class NearestMean(Head):
    """Predicts the label whose training-feature mean is nearest (Euclidean)."""

    tasks = ("count", "binary", "multiclass")
    input_kind = "vector"
    outputs = ("values", "proba")

    def __init__(self, task: str = "count", n_classes: int | None = None, seed: int = 0,
                 shrink: float = 0.0) -> None:
        super().__init__(task=task, n_classes=n_classes, seed=seed)
        self.shrink = shrink

    def fit(self, X: Any, y: Any, X_val: Any = None, y_val: Any = None) -> NearestMean:
        X, y = self._check_X(X), np.asarray(y).astype(int)
        self.classes_ = np.unique(y)
        mu = np.stack([X[y == c].mean(0) for c in self.classes_])
        self.means_ = (1 - self.shrink) * mu + self.shrink * X.mean(0)
        return self

    def _dist(self, X: Any) -> np.ndarray:
        X = self._check_X(X, dim=self.means_.shape[1])
        return ((X[:, None, :] - self.means_[None]) ** 2).sum(-1)

    def predict_proba(self, X: Any) -> np.ndarray:
        d = -self._dist(X)
        e = np.exp(d - d.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self._dist(X).argmin(1)]


# ---------------------------------------------------------------------------------- recipe 4: task family
class CountingFamily(TaskFamily):
    """Counting: one vector per image -> an integer count; exact-count accuracy and MAE with CIs."""

    name = "counting"
    task_types = ("count",)
    head_inputs = ("vector",)
    tokens = ("cls", "mean")
    headline = ("exact", "mae")

    def prepare(self, ctx: RunContext) -> None:
        ctx.state["y"] = np.asarray(ctx.dataset.labels(), dtype=np.int64)
        ctx.state["X"] = feature_matrix(ctx)

    def evaluate(self, head_cls: type[Any], head_name: str, ctx: RunContext) -> HeadResult:
        X, y, spec = ctx.state["X"], ctx.state["y"], ctx.spec
        head = head_cls(task="count", seed=spec.seed, **spec.head_params.get(head_name, {}))
        head.fit(X[ctx.train], y[ctx.train])
        pred = head.predict(X[ctx.test])
        m = spec.metrics
        metrics = {"exact": mean_ci((pred == y[ctx.test]).astype(float), m.bootstrap, spec.seed, m.alpha),
                   "mae": mean_ci(np.abs(pred - y[ctx.test]).astype(float), m.bootstrap, spec.seed, m.alpha)}
        ids = ctx.dataset.ids()
        return HeadResult(head=head_name, metrics=metrics, head_params=head.get_params(),
                          predictions={"ids": np.asarray([ids[i] for i in ctx.test]), "y_true": y[ctx.test],
                                       "y_pred": pred})


@pytest.fixture
def plugins() -> Iterator[None]:
    """All four registrations, made here and undone afterwards."""
    register_family(EncoderFamily(name="poolnet", build=_build, identity=_identity, gflops=_gflops))
    register(EncoderSpec(name="poolnet-s8", family="poolnet", patch_size=8, width=12, depth=2, params_m=0.0001,
                         default_layers=(0, 1, 1, 1), native_resolution=32))
    register_dataset("toyblobs")(_blobs)
    register_head("nearest-mean")(NearestMean)
    register_task_family(CountingFamily)
    try:
        yield
    finally:
        unregister_task_family("counting")
        unregister_head("nearest-mean")
        unregister_dataset("toyblobs")
        unregister_encoder("poolnet-s8")
        unregister_encoder_family("poolnet")


TOY = {"name": "count-blobs", "dataset": "toyblobs:", "data": {"n": 48}, "encoder": "poolnet-s8",
       "heads": ["nearest-mean"], "preprocess": {"resolution": 32, "intensity": "none"},
       "split": {"fractions": [0.5, 0.0, 0.5]}, "metrics": {"bootstrap": 100}, "features": {"token": "mean"}}


def test_registered_plugins_run_end_to_end(plugins: None, tmp_path: Path) -> None:
    assert "poolnet" in encoder_families() and "counting" in family_names() and "nearest-mean" in head_names()
    db = ResultsDB(tmp_path / "res")
    rows = run_task(parse_task({**TOY, "cache_dir": str(tmp_path / "cache")}), db=db, verbose=False)
    assert [r["head"] for r in rows] == ["nearest-mean"]
    rec = db.get(rows[0]["run_id"])
    assert rec["task_type"] == "count" and rec["encoder"] == "poolnet-s8" and rec["config"]["family"] == "counting"
    g = _gflops(get_spec("poolnet-s8"), (32, 32), (1,))  # the family's FLOP counter is what was recorded
    assert g and rec["compute"]["gflops"] == pytest.approx(g, rel=1e-3)
    exact = rows[0]["metrics"]["exact"][0]
    assert exact > 0.9  # mean patch token of a pooled image counts bright squares
    # the same plug-ins through the command line (family from the dataset's task type, no --kind)
    argv = ["run", "--dataset", "toyblobs:", "--data-opt", "n=48", "--encoder", "poolnet-s8", "--head",
            "nearest-mean", "--resolution", "32", "--split", "fractions:0.5,0,0.5", "--token", "mean",
            "--db", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert len(db.runs(task="cli")) == 1


def test_a_registered_head_serves_an_existing_family(plugins: None, tmp_path: Path) -> None:
    spec = parse_task({**TOY, "dataset": "phantom:xray2d-binary", "data": {"n": 40, "size": 32},
                       "heads": ["nearest-mean", "logreg"], "head_params": {"nearest-mean": {"shrink": 0.1}},
                       "cache_dir": str(tmp_path / "cache")})
    rows = run_task(spec, db=ResultsDB(tmp_path / "res"), verbose=False)
    assert {r["head"] for r in rows} == {"nearest-mean", "logreg"} and "auc" in rows[0]["metrics"]
    assert rows[0]["record"]["head_params"]["shrink"] == 0.1
    with pytest.raises(Exception, match=r"unknown key 'head_params.nearest-mean.shrnk' \(did you mean"):
        run_task(spec.with_overrides(head_params={"nearest-mean": {"shrnk": 1}}), db=ResultsDB(tmp_path / "r2"),
                 verbose=False)


def test_unregistered_names_are_clean_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--dataset", "toyblobs:", "--encoder", "none", "--db", str(tmp_path / "db")]
    assert main(argv) == 2
    assert "unknown dataset kind 'toyblobs'" in capsys.readouterr().err
    argv = ["run", "--dataset", "phantom:xray2d-binary", "--kind", "counting", "--db", str(tmp_path / "db")]
    assert main(argv) == 2
    assert "unknown task family 'counting'" in capsys.readouterr().err


def _names_compared(path: Path) -> list[tuple[int, str]]:
    """String constants compared with ==, !=, in, not in (incl. tuples/sets of them), or used as the keys of a
    dict literal (a lookup table by name is a branch too), in one module."""
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(v) for d in ast.walk(tree) if isinstance(d, ast.Dict) for v in d.values}  # config values
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and id(node) not in nested:
            out += [(node.lineno, k.value) for k in node.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        if isinstance(node, ast.Compare):
            for side in [node.left, *node.comparators]:
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                out += [(node.lineno, c.value) for c in consts
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return out


def test_no_branch_on_head_or_family_names_in_pipeline_cli_and_report() -> None:
    """pipeline/, cli/ and report/ read declared facts (a family's or head's attributes, or what they stored in
    the record), never a registered name."""
    from medprobe.encoders import encoder_families as enc_fams

    names = set(head_names()) | (set(enc_fams()) - {"none"}) | set(family_names())  # 'none' also means null
    assert {"decoder2d", "convexadam", "logreg", "slides", "dinov3"} <= names  # the registries load their built-ins
    hits = [f"{p.relative_to(SRC)}:{line} compares with {v!r}"
            for d in ("pipeline", "cli", "report") for p in sorted((SRC / d).rglob("*.py"))
            for line, v in _names_compared(p) if v in names]
    assert not hits, hits


def test_region_and_pair_items() -> None:
    """The item kinds the slide and registration families build on: a region-read image and a pair."""
    from medprobe.data import ArrayRegion, Item, PairDataset, PairItem, RegionSource
    from medprobe.errors import DataError

    a = np.arange(40 * 60 * 3, dtype=np.uint8).reshape(40, 60, 3)
    region = ArrayRegion(a, mpp=0.25)
    assert isinstance(region, RegionSource) and region.shape == (40, 60) and region.n_channels == 3
    np.testing.assert_array_equal(region.read_region(4, 8, 10, 12), a[4:14, 8:20])
    half = region.read_region(0, 0, 20, 20, scale=0.5)
    np.testing.assert_array_equal(half, a[0:20:2, 0:20:2])
    edge = region.read_region(35, 55, 10, 10)  # beyond the border: zeros
    assert edge.shape == (10, 10, 3) and not edge[5:, :].any() and (edge[:5, :5] == a[35:, 55:]).all()
    slide = Item(id="s1", image=region, spatial_dims=2)
    assert slide.is_region and slide.n_channels == 3
    pre = PreprocessConfig(resolution=(32, 32)).resolved(mean=(0, 0, 0), std=(1, 1, 1), native_resolution=32)
    with pytest.raises(DataError, match="s1: a region-readable slide is encoded tile by tile"):
        Preprocessor(pre)(slide)

    class Pairs(PairDataset):
        name = "pairs"

        def __len__(self) -> int:
            return 1

        def ids(self) -> list[str]:
            return ["p0"]

        def fingerprint(self) -> str:
            return "x"

        def load_pair(self, i: int) -> PairItem:
            f = Item(id="f", image=np.zeros((8, 8), np.float32), spatial_dims=2, mask=np.ones((8, 8), np.uint8))
            m = Item(id="m", image=np.ones((8, 8), np.float32), spatial_dims=2, mask=np.ones((8, 8), np.uint8))
            return PairItem(id="p0", fixed=f, moving=m)

    ds = Pairs()
    pair = ds.load_pair(0)
    assert ds.task.type == "registration" and pair.fixed.id == "f" and ds.load(0).id == "f"


# ---------------------------------------------------------------------------------- recipe 5: extraction unit
class QuadrantUnit(ExtractionUnit):
    """One cache row per image tile of a ``grid`` x ``grid`` split (each crop resized to the encoder's input),
    built from the shared machinery in medprobe.features.common; ``grid`` is its one unit option."""

    name = "quadrant"
    options = ("grid",)

    def resolve(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                device: Any) -> ResolvedEntry:
        cfg = config or ExtractConfig()
        pre = resolve_preprocess(preprocess or PreprocessConfig(), dataset, encoder)
        spec = {**entry_spec(dataset, encoder, pre, cfg, torch.device(device)), "unit": self.name,
                "grid": int(options.get("grid", 2))}
        return keyed(pre, cfg, spec)

    def lookup(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
               cache_dir: Any, device: Any) -> FeatureStore | None:
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=device)
        entry = found_entry(cache_dir, r)
        return open_or_drop(entry, r.preprocess, r.config) if entry is not None else None

    def extract(self, dataset: Any, encoder: Any, preprocess: Any, config: Any, *, options: dict[str, Any],
                cache_dir: Any, device: Any, rank: int | None, world: int | None,
                shard: tuple[int, int] | None) -> FeatureStore | None:
        dev = device_of(encoder, device)
        r = self.resolve(dataset, encoder, preprocess, config, options=options, device=dev)
        entry, g = cache_root(cache_dir) / r.key, r.spec["grid"]
        if found_entry(cache_dir, r) is not None:
            return open_or_drop(entry, r.preprocess, r.config)
        prep = Preprocessor(r.preprocess, patch_size=encoder.patch_size)

        def work(k: int, bounds: tuple[int, int], prog: Any) -> None:
            runner = Runner(encoder, r.spec["layers"], r.config.tokens, dev, None, np.dtype(r.config.storage))
            for i in range(*bounds):
                runner.run(quadrants(prep(dataset.load(i))[0], g))  # (1 slice, 1 view, 3, H, W) -> g*g crops
                prog.update()
            write_shard(entry, k, bounds, runner.take(1), [g * g] * (bounds[1] - bounds[0]), 0.0)

        def manifest(plan: Any, shard_items: int, seconds: float, world: int) -> dict[str, Any]:
            return {"ids": dataset.ids(), "dim": int(encoder.spec.width), "grid": [0, 0], "unit": self.name}

        done = run_shards(entry, r.spec, len(dataset), 16, rank=rank, world=world, shard=shard,
                          progress=r.config.progress, desc=f"quadrants {encoder.spec.name}", unit="images",
                          work=work, manifest=manifest)
        return open_entry(entry, r.preprocess, r.config, reused=False) if done else None


def quadrants(x: torch.Tensor, g: int) -> torch.Tensor:
    """``(1, 3, H, W)`` -> ``(g * g, 3, H, W)``: the grid's crops, row by row, each resized back to H x W."""
    h, w = x.shape[-2:]
    crops = [x[..., a * h // g:(a + 1) * h // g, b * w // g:(b + 1) * w // g] for a in range(g) for b in range(g)]
    return torch.cat([torch.nn.functional.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
                      for c in crops])


class QuadrantCounting(CountingFamily):
    """The counting family on quadrant rows (pooled per image by feature_matrix)."""

    name = "quadrant-counting"
    feature_unit = "quadrant"

    def unit_options(self, spec: Any) -> dict[str, Any]:
        return {"grid": 2}


@pytest.fixture
def quadrant_unit(plugins: None) -> Iterator[None]:
    register_extraction_unit(QuadrantUnit())
    register_task_family(QuadrantCounting)
    try:
        yield
    finally:
        unregister_task_family("quadrant-counting")
        UNITS.unregister("quadrant")


def test_a_registered_extraction_unit_runs_end_to_end(quadrant_unit: None, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    spec = parse_task({**TOY, "kind": "quadrant-counting", "cache_dir": str(cache)})
    (row,) = run_task(spec, db=ResultsDB(tmp_path / "res"), verbose=False)
    store = FeatureStore(cache / row["record"]["notes"]["cache_key"])
    assert store.manifest["unit"] == "quadrant" and store.spec["grid"] == 2
    assert store.n_items == 48 and list(store.slices) == [4] * 48  # four rows per image, pooled by the family
    assert row["metrics"]["exact"][0] > 0.5  # chance: 0.25
    # the rows are the encoder's output on the crops; the unit also serves extract/lookup directly with its options
    ds, enc = _blobs("", n=4), create_encoder("poolnet-s8", seed=0)
    pre = PreprocessConfig(resolution=32, intensity="none")
    cfg = ExtractConfig(layers="last", tokens=("mean",), progress=False)
    nine = extract(ds, enc, pre, cfg, unit="quadrant", unit_options={"grid": 3}, cache_dir=cache)
    assert nine is not None and list(nine.slices) == [9] * 4 and not nine.reused
    x = quadrants(Preprocessor(nine.preprocess, enc.patch_size)(ds.load(1))[0], 3)
    with torch.inference_mode():
        want = enc.forward_features(x, (1,)).patch[1].mean((2, 3)).numpy()
    np.testing.assert_allclose(nine.item(1, "mean", 1), want, rtol=1e-5, atol=1e-6)
    again = lookup(ds, enc, pre, cfg, unit="quadrant", unit_options={"grid": 3}, cache_dir=cache)
    assert again is not None and again.path == nine.path and again.reused
    with pytest.raises(Exception, match=r"unknown option 'gird' of the quadrant extraction unit \(did you mean "
                                        r"'grid'\?\)"):
        extract(ds, enc, pre, cfg, unit="quadrant", unit_options={"gird": 3}, cache_dir=cache)
