"""Extraction units (medprobe.features.units): which unit serves a dataset / encoder, unit options checked in one
line, no import cycle inside features/, and the pair unit: a registration run on two hippocampus pairs builds no
encoder and writes no feature array for its MIND heads, runs no engine forward for DINO-Reg (the head encodes what
it uses), and scores the same Dice as before the unit existed."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medprobe.data import ArrayDataset, TaskInfo
from medprobe.encoders import create_encoder, encoder_info
from medprobe.errors import ConfigError
from medprobe.features import UNITS, ExtractConfig, extract, is_entry, lookup, unit_for, unit_names
from medprobe.features.slides import slide_options
from medprobe.preprocess import PreprocessConfig

FEATURES = Path(__file__).resolve().parents[1] / "src" / "medprobe" / "features"
HIPPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "msd-task04-hippocampus"


@pytest.fixture(scope="module", autouse=True)
def _single_thread(single_thread: None) -> None:
    """Module-wide: see conftest.single_thread."""


def _images(n: int = 4) -> ArrayDataset:
    rng = np.random.default_rng(0)
    return ArrayDataset([rng.random((24, 24)).astype(np.float32) for _ in range(n)], [i % 2 for i in range(n)],
                        name="imgs", task=TaskInfo("binary", ("a", "b")))


class _SlideLike(ArrayDataset):
    unit = "slide"


def test_the_registry_picks_the_unit_asked_for_or_claiming() -> None:
    assert {"image", "volume", "tile", "pair"} <= set(unit_names())
    ds, none = _images(), create_encoder("none")
    swin = encoder_info("swin-unetr", None, seed=0)
    slides = _SlideLike([np.zeros((8, 8), np.float32)], [0], name="s")
    assert unit_for(ds, none).name == "image" and unit_for(ds, none, "image").name == "image"
    assert unit_for(ds, swin).name == "volume"  # a 3D encoder claims the dataset
    assert unit_for(slides, none).name == "tile" and unit_for(slides, none, "tile").name == "tile"
    with pytest.raises(ConfigError, match=r"unknown extraction unit 'tiles' \(did you mean 'tile'\?"):
        unit_for(ds, none, "tiles")
    with pytest.raises(ConfigError, match="the pair extraction unit takes registration pair datasets; imgs has"):
        unit_for(ds, none, "pair")
    with pytest.raises(ConfigError, match="the tile extraction unit takes datasets of unit 'slide'; imgs"):
        unit_for(ds, none, "tile")
    with pytest.raises(ConfigError, match="claimed by the extraction units tile and volume"):
        unit_for(slides, swin)  # never decided by registration order


def test_unit_options_are_checked_in_one_line(tmp_path: Path) -> None:
    ds, enc = _images(), create_encoder("none")
    cfg = ExtractConfig(progress=False)
    with pytest.raises(ConfigError, match=r"imgs: unknown option 'tiling' of the image extraction unit \(it takes "
                                          r"none\)$"):
        extract(ds, enc, PreprocessConfig(resolution=16), cfg, unit_options={"tiling": {}}, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown option 'tilling' of the tile extraction unit \(did you mean "
                                          r"'tiling'\?\)"):
        UNITS.get("tile").parse_options({"tilling": {}})
    # the tile unit's options: typed objects, or mappings parsed like a task section; defaults when absent
    tiling, tissue = slide_options({"tiling": {"tile_px": "256"}})
    assert tiling.tile_px == 256 and tissue == slide_options()[1]
    with pytest.raises(ConfigError, match=r"unknown key 'tiling.tile_pxx' \(did you mean 'tiling.tile_px'\?\)"):
        slide_options({"tiling": {"tile_pxx": 256}}, "camelyon16")
    assert not list(tmp_path.iterdir())  # refused before anything was written
    store = extract(ds, enc, PreprocessConfig(resolution=16), cfg, cache_dir=tmp_path)
    assert store is not None and store.n_items == 4 and store.manifest.get("unit") is None  # image entries as before
    again = lookup(ds, enc, PreprocessConfig(resolution=16), cfg, unit="image", cache_dir=tmp_path)
    assert again is not None and again.path == store.path and again.reused


def _imports(path: Path) -> list[tuple[str, str]]:
    """(imported module, first imported name) of every import in a module, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
    return out


def test_features_has_no_import_cycle_and_no_private_cross_imports() -> None:
    mods = {p.stem: p for p in FEATURES.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for m, p in mods.items():
        for mod, name in _imports(p):
            if mod == "medprobe.features" and name in mods:  # from medprobe.features import engine
                mod = f"medprobe.features.{name}"
            if mod.startswith("medprobe.features."):
                target = mod.rsplit(".", 1)[1]
                graph[m].add(target)
                if name.startswith("_") and target != m:
                    private.append(f"{m} imports {target}.{name}")
    assert not private, private
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:  # depth-first search; 1 = on the stack, 2 = done
        seen[m] = 1
        for t in sorted(graph.get(m, ())):
            assert seen.get(t) != 1, f"import cycle in features/: {' -> '.join([*stack, m, t])}"
            if t not in seen:
                visit(t, [*stack, m])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [])
    # the engine asks the registry: it imports no unit module and compares no unit name
    assert not graph["engine"] & {"image", "volume", "slides", "pairs"}
    src = (FEATURES / "engine.py").read_text(encoding="utf-8")
    assert not any(f'"{u}"' in src for u in ("image", "volume", "tile", "pair", "slide"))


# ------------------------------------------------------------------------------------------- the pair unit
# Dice of pairs 0 and 1 of seg-pairs:msd:<hippocampus> (n_pairs 2, seed 0) at 32 px through run_task, recorded on
# main at 302ac57 -- before the pair unit, when the run extracted per-image cls features it never used
DICE_BEFORE = {"identity": [0.09553188044155336, 0.47122054122656154],
               "convexadam": [0.31084217852443763, 0.7941075676907183],
               "convexadam-dino": [0.1578524826049088, 0.7885604214708177]}


@pytest.mark.skipif(not HIPPO.is_dir(), reason="../shared/data/msd-task04-hippocampus is absent")
def test_registration_extracts_nothing_it_does_not_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medprobe.features import common
    from medprobe.pipeline import common as pipeline_common
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    runs: list[int] = []
    builds: list[str] = []
    real_run, real_build = common.Runner.run, pipeline_common.build_encoder

    def counting_run(self: Any, x: Any) -> None:
        runs.append(len(x))
        real_run(self, x)

    def counting_build(spec: Any, device: Any) -> Any:
        builds.append(spec.encoder)
        return real_build(spec, device)

    monkeypatch.setattr(common.Runner, "run", counting_run)
    monkeypatch.setattr(pipeline_common, "build_encoder", counting_build)
    cache = tmp_path / "cache"
    base = {"kind": "registration", "dataset": f"seg-pairs:msd:{HIPPO}", "data": {"n_pairs": 2, "seed": 0},
            "encoder": "none", "preprocess": {"resolution": 32}, "cache_dir": str(cache),
            "metrics": {"bootstrap": 50}}
    mind = parse_task({**base, "heads": ["identity", "convexadam"],
                       "head_params": {"convexadam": {"features": "mind", "niter": 20}}}, "t")
    rows = {r["head"]: r for r in run_task(mind, db=ResultsDB(tmp_path / "r.db"), verbose=False)}
    assert runs == [] and builds == []  # MIND / intensity heads: the encoder is never built, let alone run
    (entry,) = [p for p in cache.iterdir() if is_entry(p)]
    assert not list(cache.rglob("*.npy")) and not list(entry.glob("shard-*"))  # no per-image feature written
    for head in ("identity", "convexadam"):
        assert rows[head]["result"].predictions["dice"].tolist() == pytest.approx(DICE_BEFORE[head], abs=1e-9)
        rec = rows[head]["record"]
        # no encoder input was used: the row records none (issue 23: the input size the head used, not the native)
        assert rec["notes"]["cache_key"] == entry.name and rec["resolution"] is None
    dino = parse_task({**base, "heads": ["convexadam"],
                       "head_params": {"convexadam": {"features": "dino+mind", "pca_k": 2, "input_size": 32,
                                                      "niter": 20}}}, "t")
    (row,) = run_task(dino, db=ResultsDB(tmp_path / "r2.db"), verbose=False)
    # DINO-Reg: the head encodes the slices it uses (the family builds the encoder once, for it); the engine
    # runs nothing and reuses the same pair entry
    assert runs == [] and builds == ["none"] and row["record"]["timings"]["cached"] is True
    assert row["result"].predictions["dice"].tolist() == pytest.approx(DICE_BEFORE["convexadam-dino"], abs=1e-9)
    assert [p.name for p in cache.iterdir() if is_entry(p)] == [entry.name] and not list(cache.rglob("*.npy"))
