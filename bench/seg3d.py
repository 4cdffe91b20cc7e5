"""Memory and time of pseudo-3D segmentation on a synthetic 512x512x200 CT (ViT-S/16, random init, 224 px/slice).

    python bench/seg3d.py [--work /tmp/seg3d-bench] [--slices 200] [--size 512] [--steps 20]

Each phase runs in its own child process; the child reports its peak resident memory (``VmHWM`` from
/proc/self/status) and wall time: ``extract`` (encoder: every slice through ViT-S/16, bf16 autocast, float16
feature storage), ``train`` (``decoder3d`` on random 16-slice crops of the memory-mapped features, plus the
preprocessed image / label cache it needs) and ``infer`` (sliding-window inference over the whole volume,
reassembled at 512x512x200). Prints peak RSS per phase and the share of time in the encoder vs the decoder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make_volume(work: Path, size: int, slices: int) -> None:
    """Synthetic CT (int16 HU): body ellipse, an organ and a lesion; labels 0/1/2."""
    if (work / "ct.npy").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    ct = np.empty((size, size, slices), np.int16)
    lab = np.zeros((size, size, slices), np.uint8)
    for z in range(slices):
        t = z / max(slices - 1, 1)
        body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
        organ = ((x - 0.25) / (0.3 + 0.1 * np.sin(3 * t))) ** 2 + ((y + 0.1) / 0.25) ** 2 < 1
        lesion = ((x - 0.3) ** 2 + (y + 0.05) ** 2 < 0.07 ** 2) & (abs(t - 0.5) < 0.15)
        sl = np.where(body, 40, -1000) + np.where(organ, 60, 0) + np.where(lesion, -50, 0)
        ct[..., z] = (sl + rng.normal(0, 15, sl.shape)).astype(np.int16)
        lab[..., z] = np.where(lesion, 2, np.where(organ, 1, 0))
    np.save(work / "ct.npy", ct)
    np.save(work / "lab.npy", lab)


def _setup(work: Path) -> tuple[Any, Any, Any]:
    from medprobe.data.base import ArrayDataset, TaskInfo
    from medprobe.encoders import create_encoder
    from medprobe.features import ExtractConfig
    from medprobe.preprocess import PreprocessConfig

    ds = ArrayDataset([np.load(work / "ct.npy", mmap_mode="r")], spatial_dims=3, name="synthetic-ct512",
                      modality="ct", task=TaskInfo("segmentation", ("background", "organ", "lesion")),
                      masks=[np.load(work / "lab.npy", mmap_mode="r")], spacing=(0.8, 0.8, 1.5), ids=["ct0"])
    ds._fp = "synthetic-ct512-v1"  # skip hashing 100 MB of voxels
    enc = create_encoder("dinov3-vits16", weights="random")
    return ds, enc, (PreprocessConfig(resolution=(224, 224), intensity="ct:abdomen"),
                     ExtractConfig(layers="four", tokens=("patch",), batch_size=32, amp="bf16", storage="float16",
                                   progress=False))


def phase(name: str, work: Path, steps: int) -> dict[str, Any]:
    import torch

    from medprobe.features import extract
    from medprobe.heads.seg_heads import create_seg_head
    from medprobe.heads.seg_train import SegData, SegTrainConfig, fit, predict_proba, prepare_targets, to_original
    from medprobe.preprocess import PreprocessConfig

    ds, enc, (pre, ecfg) = _setup(work)
    t0 = time.perf_counter()
    store = extract(ds, enc, pre, ecfg, cache_dir=work / "cache", device="cpu")
    assert store is not None
    out: dict[str, Any] = {}
    if name == "extract":
        out["seconds"] = time.perf_counter() - t0
        out["cached"] = bool(store.reused)
    else:
        targets = prepare_targets(ds, store, [0], work / "cache", 16, progress=False)
        data = SegData(store, targets, list(store.layers), 16)
        cfg = SegTrainConfig(epochs=1, iters_per_epoch=steps, batch_size=2, crop_depth=16, lr=1e-3, infer_batch=2)
        torch.manual_seed(0)
        head = create_seg_head("decoder3d", data.dims, 3, 16, data.n_views, width=64)
        ckpt = work / "head.pt"
        t0 = time.perf_counter()
        if name == "train":
            fit(head, data, [0], [], cfg, progress=False)
            torch.save(head.state_dict(), ckpt)
            out["seconds"] = time.perf_counter() - t0
            out["seconds_per_step"] = out["seconds"] / steps
        else:
            head.load_state_dict(torch.load(ckpt))
            prob = predict_proba(head, data, 0, cfg)
            pred = to_original(prob, (ds.load(0).image.shape[2], *ds.load(0).image.shape[:2]),
                               PreprocessConfig.from_dict(store.spec["preprocess"]))
            out["seconds"] = time.perf_counter() - t0
            out["pred_shape"] = list(pred.shape)
    out["peak_rss_mb"] = round(vm_hwm_mb(), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/seg3d-bench")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    work = Path(a.work)
    if a.phase:
        print("RESULT " + json.dumps(phase(a.phase, work, a.steps)))
        return
    make_volume(work, a.size, a.slices)
    res = {}
    for ph in ("extract", "train", "infer"):
        p = subprocess.run([sys.executable, __file__, "--work", str(work), "--steps", str(a.steps), "--phase", ph],
                           capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            sys.exit(f"phase {ph} failed:\n{p.stderr[-3000:]}")
        res[ph] = json.loads(line[0][7:])
        print(f"{ph:>8}: peak RSS {res[ph]['peak_rss_mb'] / 1024:.2f} GB, {res[ph]['seconds']:.1f} s"
              + (f" ({res[ph]['seconds_per_step']:.2f} s/step of 2x16 slices)" if ph == "train" else ""))
    enc_s = res["extract"]["seconds"]
    dec_s = res["train"]["seconds"] + res["infer"]["seconds"]
    print(f"volume {a.size}x{a.size}x{a.slices}, ViT-S/16 random, 224 px/slice, four layers, float16 storage")
    print(f"time: encoder {enc_s:.1f} s ({100 * enc_s / (enc_s + dec_s):.0f}%), decoder train {a.steps} steps + "
          f"inference {dec_s:.1f} s ({100 * dec_s / (enc_s + dec_s):.0f}%); per-slice encoder "
          f"{1000 * enc_s / a.slices:.0f} ms")


if __name__ == "__main__":
    main()
