"""The demo sweep: two untrained DINOv3 sizes x two resolutions on phantom tasks, then the report (``medprobe
demo``). Pipeline-level: it runs a sweep (:mod:`medprobe.pipeline.sweep`) and then writes the report
(:func:`medprobe.report.build_report`), which itself never imports the pipeline.

``DEMO_SWEEP`` is the same grid as ``sweeps/demo.yaml`` (kept in code so an installed package has it).
It is a pipeline check: weights are random, so the scores say nothing about DINOv3.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

DEMO_SWEEP: dict[str, Any] = {
    "name": "demo",
    "description": "pipeline check: untrained DINOv3 S/B x 2 resolutions on phantom tasks",
    "base": {
        "split": {"fractions": [0.5, 0.2, 0.3], "seed": 0},
        "features": {"amp": "bf16", "batch_size": 32, "progress": False},
        "head_params": {"logreg": {"Cs": [0.1, 1.0]}, "knn": {"k": 5}},
        "metrics": {"bootstrap": 200},
    },
    "tasks": [
        {"name": "phantom-xray", "dataset": "phantom:xray2d-binary", "data": {"n": 32, "size": 64}},
        {"name": "phantom-ct", "dataset": "phantom:ct3d-binary", "data": {"n": 16, "size": [32, 32, 8]}},
    ],
    "grid": {
        "encoder": ["dinov3-vits16", "dinov3-vitb16"],
        "resolution": [64, 96],
        "head": ["logreg", "knn"],
        "seed": [0],
    },
}


def demo_sweep_dict(quick: bool = True) -> dict[str, Any]:
    """The demo grid; ``quick`` keeps the X-ray task only (~1 minute on 2 CPU cores)."""
    d = copy.deepcopy(DEMO_SWEEP)
    if quick:
        d["tasks"] = d["tasks"][:1]
    return d


def run_demo_sweep(db: Any, cache_dir: str | Path | None, out_html: str | Path, quick: bool = True) -> Path:
    """Run the demo sweep into ``db`` (ResultsDB or path; finished cells are skipped) and write its report."""
    from medprobe.pipeline.sweep import run_sweep, sweep_from_dict
    from medprobe.report import build_report
    from medprobe.results import ResultsDB

    db = db if isinstance(db, ResultsDB) else ResultsDB(db)
    sw = sweep_from_dict(demo_sweep_dict(quick), name="demo")
    run_sweep(sw, db=db, cache_dir=None if cache_dir is None else str(cache_dir))
    demo_zeroshot(db, cache_dir, sweep=sw.name)  # zero-shot beside a probe; every row shows its calibration
    return build_report(db, out_html, sweep=sw.name, cache_dir=cache_dir, n_boot=200,
                        title="medprobe demo sweep (UNTRAINED encoders: pipeline check)")


# ---------------------------------------------------------------------------------- zero-shot (issue 27)
ZEROSHOT_ENCODER = "demo-clip-tiny-random"  # random weights in a checkpoint file: say so in its name


def demo_zeroshot(db: Any, cache_dir: str | Path | None, sweep: str = "demo") -> list[dict[str, Any]] | None:
    """Zero-shot vs a linear probe on the X-ray phantom with a tiny CLIP (image and text towers, transformers
    ``CLIPModel`` layout) whose seeded random weights are written once under the cache: the zeroshot head reads
    the text tower, projection and logit scale from the same checkpoint as the image tower. Needs open_clip's
    CLIP tokenizer (the ``openclip`` extra); without it one line says the part is skipped. Rows are tagged with
    ``sweep`` so the demo report shows them (and their reliability diagrams)."""
    import importlib.util

    import torch

    from medprobe.encoders import EncoderSpec, register
    from medprobe.encoders.clip import OPENAI_MEAN, OPENAI_STD, transformers_module
    from medprobe.pipeline.run import run_task
    from medprobe.pipeline.task import parse_task
    from medprobe.utils import default_cache_dir

    if importlib.util.find_spec("open_clip") is None:
        print("medprobe demo: zero-shot part skipped (the CLIP tokenizer comes with the openclip extra: "
              "pip install 'medprobe[openclip]')")
        return None
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
                  image_size=64, hidden_act="quick_gelu")
    register(EncoderSpec(name=ZEROSHOT_ENCODER, family="clip", patch_size=16, width=64, depth=2, params_m=2.0,
                         default_layers=(0, 1, 1, 1), native_resolution=64, mean=OPENAI_MEAN, std=OPENAI_STD,
                         license="demo (random weights)", hf_config=dict(vision)))
    folder = Path(cache_dir if cache_dir is not None else default_cache_dir()) / ZEROSHOT_ENCODER
    if not (folder / "model.safetensors").is_file():
        tr = transformers_module()
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=49408, max_position_embeddings=16, hidden_act="quick_gelu")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = tr.CLIPModel(tr.CLIPConfig(vision_config=vision, text_config=text, projection_dim=32))
        model.save_pretrained(folder)
    spec = parse_task({
        "name": "demo-xray2d-zeroshot", "dataset": "phantom:xray2d-binary", "data": {"n": 48, "size": 64},
        "encoder": ZEROSHOT_ENCODER, "weights": str(folder), "preprocess": {"resolution": 64},
        "split": {"fractions": [0.5, 0.2, 0.3], "seed": 0}, "heads": ["zeroshot", "logreg"],
        "head_params": {"logreg": {"Cs": [0.1, 1.0]}, "zeroshot": {"calibrate": "temperature"}},
        "prompts": {"templates": ["an x-ray phantom with {}.", "a radiograph showing {}."],
                    "classnames": ["no lesion", "a lesion"]},
        "metrics": {"bootstrap": 200}, "features": {"progress": False},
        "cache_dir": None if cache_dir is None else str(cache_dir), "notes": {"sweep": sweep, "demo": True}},
        source="demo")
    return run_task(spec, db=db)
