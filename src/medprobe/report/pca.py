"""PCA of patch features shown as RGB (DINOv3's signature picture) beside the input image.

A 3-component PCA is fitted jointly on the patch tokens of a few images, so colours mean the same across
them; each component is scaled to [0, 1] between its 1st and 99th percentile. Patch tokens come from the
run's feature-cache entry (``notes.cache_key``) when it holds them; otherwise, when ``live`` is on, the
run's encoder is rebuilt and the few sample images are encoded again (same preprocessing, same layer).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medprobe.errors import MedprobeError


def pca_rgb(patches: Sequence[np.ndarray], n_components: int = 3) -> list[np.ndarray]:
    """``(C, h, w)`` patch grids -> ``(h, w, 3)`` float images in [0, 1] from one joint PCA."""
    if not patches:
        return []
    flat = [np.asarray(p, dtype=np.float64).reshape(p.shape[0], -1).T for p in patches]
    X = np.concatenate(flat)
    X = X - X.mean(0, keepdims=True)
    k = min(n_components, X.shape[1], X.shape[0])
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    proj = X @ vt[:k].T
    if k < 3:
        proj = np.concatenate([proj, np.zeros((proj.shape[0], 3 - k))], axis=1)
    lo = np.percentile(proj, 1, axis=0)
    hi = np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.where(hi - lo > 1e-12, hi - lo, 1.0), 0, 1)
    out, i = [], 0
    for p in patches:
        n = p.shape[1] * p.shape[2]
        out.append(proj[i:i + n].reshape(p.shape[1], p.shape[2], 3))
        i += n
    return out


def find_entry(key: str, roots: Sequence[str | Path | None]) -> Path | None:
    """The complete cache entry ``key`` under the first root that has it."""
    for r in roots:
        if r and (Path(r) / key / "manifest.json").is_file():
            return Path(r) / key
    return None


def _display(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``(3, H, W)`` -> displayable ``(H, W, 3)`` in [0, 1] (what the encoder saw)."""
    img = x * np.asarray(std)[:, None, None] + np.asarray(mean)[:, None, None]
    return np.clip(img.transpose(1, 2, 0), 0, 1)


def sample_panels(point: Mapping[str, Any], roots: Sequence[str | Path | None], n_images: int = 3,
                  live: bool = True) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """``[(input (H, W, 3), pca (h, w, 3)), ...]`` for the first images of a run's dataset, and a note."""
    import torch

    from medprobe.data import create_dataset
    from medprobe.features import FeatureStore
    from medprobe.preprocess import PreprocessConfig, Preprocessor

    key = point.get("cache_key")
    if not key:
        return [], "no feature-cache key recorded with this run"
    entry = find_entry(str(key), roots)
    if entry is None:
        return [], f"feature-cache entry {key} not found under {', '.join(str(r) for r in roots if r)}"
    store = FeatureStore(entry)
    layer = point.get("layer")
    layer = int(layer) if isinstance(layer, int) else store.layers[-1]
    if layer not in store.layers:
        layer = store.layers[-1]
    cfg = point.get("config") or {}
    pre = point.get("preprocess") or store.spec["preprocess"]  # as recorded with the run (old rows: the entry's)
    pre_cfg = PreprocessConfig.from_dict({**pre, "resolution": tuple(pre["resolution"])})
    fam_opts = {"skip_invalid"}  # task-family options are not the dataset's
    data = {k: v for k, v in (cfg.get("data") or {}).items() if k not in fam_opts}
    ds = create_dataset(str(cfg.get("dataset", store.spec.get("dataset_name"))), **data)
    idx = list(range(min(n_images, len(ds), store.n_items)))
    have_patch = "patch" in store.tokens
    enc = None
    if not have_patch:
        if not live:
            return [], f"cache entry {key} holds no patch tokens (extract with tokens incl. 'patch')"
        from medprobe.encoders import create_encoder

        w = cfg.get("weights")
        enc = create_encoder(str(cfg.get("encoder", store.spec["encoder"])), weights=w, device="cpu",
                             verify=bool(cfg.get("verify_weights", True)),
                             seed=int(cfg.get("seed", 0)) if w in (None, "random") else 0)
        enc.eval()
    patch_size = enc.patch_size if enc is not None else int(store.manifest.get("encoder_info", {}).get(
        "patch_size", 16))
    prep = Preprocessor(pre_cfg, patch_size=patch_size)
    images, grids = [], []
    for i in idx:
        x = prep(ds.load(i))  # (S, V, 3, H, W)
        s = x.shape[0] // 2
        images.append(_display(x[s, 0].numpy(), pre_cfg.mean or (0, 0, 0), pre_cfg.std or (1, 1, 1)))
        if enc is not None:
            with torch.inference_mode():
                out = enc.forward_features(x[s:s + 1, 0].float(), [layer])
            grids.append(out.patch[layer][0].float().numpy())
        else:
            g = np.asarray(store.item(i, "patch", layer), dtype=np.float32)[s]
            grids.append(g[: g.shape[0] // max(x.shape[1], 1)])  # first view when views were folded
    note = f"layer {layer}, cache entry {key}" + ("" if have_patch else " (patch tokens recomputed for display)")
    return list(zip(images, pca_rgb(grids))), note


def pca_figure(panels: Sequence[tuple[np.ndarray, np.ndarray]], title: str = "") -> bytes:
    """Input images (top row) and their patch-feature PCA as RGB (bottom row) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    fig = Figure(figsize=(1.9 * n, 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for j, (img, rgb) in enumerate(panels):
        for row, (a, lab) in enumerate(((img, "input"), (rgb, "PCA of patch tokens"))):
            ax = fig.add_subplot(2, n, row * n + j + 1)
            ax.imshow(a, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(lab, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def task_pca(points: Sequence[Mapping[str, Any]], roots: Sequence[str | Path | None], n_images: int = 3,
             live: bool = True) -> tuple[bytes | None, str]:
    """PCA panel for a task: from its best pretrained run with a cache key (else any run). Never raises."""
    cands = sorted(points, key=lambda p: (not p.get("pretrained"), p.get("cache_key") is None))
    notes = []
    tried: set[str] = set()
    for p in cands:
        key = str(p.get("cache_key"))
        if key in tried:
            continue
        tried.add(key)
        cfg = p.get("config") or {}
        rr = [cfg.get("cache_dir"), *roots]
        try:
            panels, note = sample_panels(p, rr, n_images=n_images, live=live)
        except (MedprobeError, OSError, ValueError, KeyError, RuntimeError, json.JSONDecodeError) as e:
            panels, note = [], f"{type(e).__name__}: {e}"
        if panels:
            title = f"{p['encoder']}{'' if p.get('pretrained') else ' (untrained)'}, {p.get('resolution')} px, {note}"
            return pca_figure(panels), title
        notes.append(note)
        if len(tried) >= 3:
            break
    return None, "; ".join(notes) if notes else "no runs"


__all__ = ["pca_rgb", "pca_figure", "sample_panels", "task_pca", "find_entry"]
