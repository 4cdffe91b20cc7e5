"""Text towers of image-text checkpoints, for zero-shot classification (the image towers are in
:mod:`medprobe.encoders.clip`).

A :class:`TextTower` is what zero-shot needs besides the cached image features: the text encoder (prompts ->
joint-space embeddings), the image projection (the image tower's pooled feature -> the joint space), the logit
scale (and bias) -- all read from the *same checkpoint* as the image tower -- and a tokenizer.

* ``clip`` -- OpenAI / open_clip layout (``token_embedding.weight``, ``transformer.resblocks.N.*``,
  ``ln_final.*``, ``text_projection``, ``visual.proj``, ``logit_scale``) and transformers' ``CLIPModel`` layout
  (``text_model.*``, ``text_projection.weight``, ``visual_projection.weight``, ``logit_scale``; a ``config.json``
  beside the weights gives the text config). Both run on transformers' ``CLIPTextModelWithProjection`` (causal
  self-attention, final norm, the end-of-text token pooled: open_clip's ``argmax`` pooling, which is the first
  end-of-text token for CLIP's tokenizer, then the projection). The text config of the open_clip layout comes
  from the tensor shapes (vocabulary, width, context length, depth); heads are ``hf_config['text_heads']`` of
  the encoder spec, else ``width // 64`` (open_clip's rule for OpenAI checkpoints); the activation is the image
  tower's (``quick_gelu`` for OpenAI models).
* ``pe_core`` -- open_clip's PE-Core layout (``CustomTextCLIP``: the same text transformer under ``text.*``, GELU;
  the image embedding is the timm trunk's ``head`` Linear on the cached attention-pool output).
* ``biomedclip`` -- open_clip's BiomedCLIP layout: a BERT under ``text.transformer.*`` (config from the tensor
  shapes), padding masked, the [CLS] token, the ``text.proj.*`` MLP; image projection ``visual.head.proj``; the
  tokenizer (PubMedBERT's) must be saved beside the weights.
* ``siglip2`` -- transformers' ``SiglipModel`` layout (``text_model.*`` with its ``head``, ``logit_scale``,
  ``logit_bias``; ``config.json`` beside the weights): transformers' ``SiglipTextModel`` (last token pooled).

Tokenizers: a tokenizer saved in the checkpoint's folder (transformers ``AutoTokenizer``, padded to the context
length), else, for CLIP, open_clip's bundled CLIP BPE (``SimpleTokenizer``: lower-cased, ``<start_of_text>``
... ``<end_of_text>``, zero-padded to the context length; needs the ``openclip`` extra). Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medprobe.encoders.registry import EncoderSpec, get_spec
from medprobe.errors import ConfigError, WeightsError


@dataclass
class TextTower:
    """A checkpoint's text side: ``encode`` prompts into the joint space; ``project`` image features into it."""

    family: str
    model: torch.nn.Module  # token ids (B, L) -> text embeddings (B, D), not normalised
    tokenize: Callable[[list[str]], torch.Tensor]
    image_projection: torch.Tensor | None  # (C_image, D): pooled image feature @ it = image embedding
    logit_scale: float  # exp(log scale) as stored
    logit_bias: float
    weights_id: str
    image_width: int
    image_projection_bias: torch.Tensor | None = None  # PE core: the trunk's head is a Linear with a bias

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """``(len(texts), D)`` float32 text embeddings (not normalised)."""
        out = []
        for a in range(0, len(texts), batch_size):
            ids = self.tokenize(list(texts[a:a + batch_size]))
            out.append(self.model(ids).float())
        return torch.cat(out)

    def project(self, feats: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Image features (the image tower's pooled ``cls`` of the last block) -> joint-space embeddings."""
        x = torch.as_tensor(np.asarray(feats, dtype=np.float32))
        if x.shape[1] != self.image_width:
            raise ConfigError(f"image features have width {x.shape[1]}; the checkpoint's image projection takes "
                              f"{self.image_width} (use the last block's cls token)")
        x = x if self.image_projection is None else x @ self.image_projection
        return x if self.image_projection_bias is None else x + self.image_projection_bias


class _ClipText(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.m(input_ids=ids).text_embeds
        return out


class _SiglipText(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.m(input_ids=ids).pooler_output
        return out


class _BertText(torch.nn.Module):
    """open_clip's ``HFTextEncoder`` as BiomedCLIP uses it: a BERT, padding masked, the first ([CLS]) token of the
    last hidden state, then the projection (``mlp``: Linear - GELU - Linear, or ``linear``), all without biases."""

    def __init__(self, bert: torch.nn.Module, proj: torch.nn.Module, pad_id: int) -> None:
        super().__init__()
        self.transformer, self.proj, self.pad_id = bert, proj, pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        out = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        res: torch.Tensor = self.proj(out)
        return res


# ---------------------------------------------------------------------------------- tokenizers
def _folder_tokenizer(folder: Path | None, context: int, pad: str = "max_length"
                      ) -> Callable[[list[str]], torch.Tensor] | None:
    if folder is None or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt",
                                                                   "spiece.model", "tokenizer.model",
                                                                   "tokenizer_config.json")):
        return None
    from medprobe.encoders.clip import transformers_module

    tok = transformers_module().AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def run(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, padding=pad, max_length=context, truncation=True, return_tensors="pt")
        ids: torch.Tensor = enc["input_ids"]
        return ids

    return run


def openclip_tokenizer(context: int) -> Callable[[list[str]], torch.Tensor]:
    """open_clip's bundled CLIP BPE tokenizer, zero-padded to ``context`` tokens (the ``openclip`` extra)."""
    from medprobe.encoders.extras import import_extra, import_torchvision

    try:
        import_torchvision()
    except ImportError:
        pass
    tokenizer_mod = import_extra("open_clip", "zero-shot prompts (CLIP's BPE tokenizer)").tokenizer
    tok = tokenizer_mod.SimpleTokenizer(context_length=context)

    def run(texts: list[str]) -> torch.Tensor:
        out: torch.Tensor = tok(texts)
        return out

    return run


# ---------------------------------------------------------------------------------- clip
_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj", "mlp.c_fc": "mlp.fc1",
          "mlp.c_proj": "mlp.fc2"}
_BLOCK_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_QKV_KEY = re.compile(r"^transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def _openai_text(sd: dict[str, torch.Tensor], spec: EncoderSpec, source: Path, act: str | None = None,
                 image_projection: str = "visual.proj") -> tuple[Any, dict[str, Any]]:
    """open_clip / OpenAI layout -> (CLIPTextModelWithProjection, facts); ``act``: the text blocks' activation
    (default: the image tower's, ``quick_gelu`` for OpenAI models)."""
    from medprobe.encoders.clip import load_exact, transformers_module

    need = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection", "logit_scale",
            image_projection)
    missing = [k for k in need if k not in sd]
    if missing:
        raise WeightsError(f"no text tower for zero-shot: missing tensor {missing[0]!r} (open_clip / OpenAI layout)",
                           source)
    vocab, width = sd["token_embedding.weight"].shape
    context = sd["positional_embedding"].shape[0]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k) or _QKV_KEY.match(k)))
    proj = sd["text_projection"]
    hc = dict(spec.hf_config)
    heads = int(hc.get("text_heads") or max(1, width // 64))
    mlp = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    tr = transformers_module()
    cfg = tr.CLIPTextConfig(vocab_size=int(vocab), hidden_size=int(width), intermediate_size=int(mlp),
                            num_hidden_layers=depth, num_attention_heads=heads, max_position_embeddings=int(context),
                            hidden_act=act or str(hc.get("hidden_act", "quick_gelu")), layer_norm_eps=1e-5,
                            projection_dim=int(proj.shape[1]), eos_token_id=2)  # 2: argmax pooling (open_clip)
    cfg._attn_implementation = "sdpa"
    model = tr.CLIPTextModelWithProjection(cfg)
    out: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": proj.T.contiguous(),
    }
    for k, v in sd.items():
        if m := _QKV_KEY.match(k):
            i, kind = m.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"text_model.encoder.layers.{i}.self_attn.{name}.{kind}"] = part.contiguous()
        elif (m := _BLOCK_KEY.match(k)) and m.group(2) in _BLOCK:
            i, mod, kind = m.groups()
            out[f"text_model.encoder.layers.{i}.{_BLOCK[mod]}.{kind}"] = v
    own = model.state_dict()
    out.update({k: own[k] for k in own if k.endswith("position_ids") and k not in out})  # buffers, recomputed
    load_exact(model, out, source, f"{spec.name} text tower (open_clip layout)")
    return model, {"context": int(context), "image_projection": sd[image_projection].float(),
                   "logit_scale": float(sd["logit_scale"].float().exp()),
                   "logit_bias": float(sd["logit_bias"].float()) if "logit_bias" in sd else 0.0}


def _hf_text(sd: dict[str, torch.Tensor], spec: EncoderSpec, source: Path, folder: Path | None, kind: str
             ) -> tuple[Any, dict[str, Any]]:
    """transformers ``CLIPModel`` / ``SiglipModel`` layout (``config.json`` beside the weights)."""
    from medprobe.encoders.clip import load_exact, transformers_module

    if folder is None or not (folder / "config.json").is_file():
        raise WeightsError(f"a transformers {kind} checkpoint needs its config.json beside the weights for the "
                           "text tower", source)
    tr = transformers_module()
    conf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if kind == "clip":
        cfg = tr.CLIPConfig(**{k: v for k, v in conf.items() if k in ("text_config", "vision_config",
                                                                         "projection_dim")})
        tcfg = cfg.text_config
        tcfg.projection_dim = cfg.projection_dim
        tcfg._attn_implementation = "sdpa"
        model = tr.CLIPTextModelWithProjection(tcfg)
        own = {k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection."))}
        vis = sd.get("visual_projection.weight")
        if vis is None:
            raise WeightsError("no 'visual_projection.weight' (the image projection) for zero-shot", source)
        proj = vis.float().T.contiguous()
    else:
        cfg = tr.SiglipConfig(**{k: v for k, v in conf.items() if k in ("text_config", "vision_config")})
        tcfg = cfg.text_config
        tcfg._attn_implementation = "sdpa"
        model = tr.SiglipTextModel(tcfg)
        own = {k: v for k, v in sd.items() if k.startswith("text_model.")}
        proj = None
    mine = model.state_dict()
    if not any(k.startswith("text_model.") for k in own):
        raise WeightsError(f"no text tower ('text_model.*') in this {kind} checkpoint", source)
    if not any(k.startswith("text_model.") for k in mine):  # transformers 5 SiglipTextModel: no nesting
        own = {k.removeprefix("text_model."): v for k, v in own.items()}
    own.update({k: mine[k] for k in mine if k.endswith("position_ids") and k not in own})
    load_exact(model, own, source, f"{spec.name} text tower (transformers layout)")
    scale = sd.get("logit_scale")
    if scale is None:
        raise WeightsError("no 'logit_scale' in the checkpoint", source)
    bias = sd.get("logit_bias")
    return model, {"context": int(tcfg.max_position_embeddings), "image_projection": proj,
                   "logit_scale": float(scale.float().exp()), "logit_bias": float(bias.float()) if bias is not None
                   else 0.0}


def load_text_tower(encoder: str, weights: str | None, verify: bool = True) -> TextTower:
    """The text tower, image projection, logit scale and tokenizer of ``encoder``'s checkpoint ``weights``."""
    from medprobe.encoders import clip as clip_mod
    from medprobe.encoders.weights import parse_weights_arg

    spec = get_spec(encoder)
    if spec.family not in ("clip", "siglip2", "pe_core", "biomedclip"):
        raise ConfigError(f"encoder {encoder} ({spec.family}) has no text tower loader; zero-shot runs with clip, "
                          "siglip2, pe_core and biomedclip checkpoints")
    ref = parse_weights_arg(weights, spec, verify=verify)
    if ref.kind == "random":
        raise ConfigError(f"zero-shot needs the checkpoint's text tower: give {encoder} weights (a file or folder), "
                          "not random ones")
    files = clip_mod.weight_files(ref)
    folder = files[0].parent if ref.kind != "file" else None
    source = files[0] if len(files) == 1 else files[0].parent
    sd = clip_mod.read_files(files)
    bias = None
    wrapped: torch.nn.Module
    if spec.family == "biomedclip":
        wrapped, facts = _biomedclip_text(sd, spec, source)
    elif spec.family == "pe_core":
        model, facts, bias = _pe_text(sd, spec, source)
        wrapped = _ClipText(model)
    elif spec.family == "clip" and "token_embedding.weight" in sd:
        model, facts = _openai_text(sd, spec, source)
        wrapped = _ClipText(model)
    elif spec.family == "clip":
        model, facts = _hf_text(sd, spec, source, folder, "clip")
        wrapped = _ClipText(model)
    else:
        model, facts = _hf_text(sd, spec, source, folder, "siglip")
        wrapped = _SiglipText(model)
    tok = _folder_tokenizer(folder, facts["context"])
    if tok is None:
        if spec.family in ("siglip2", "biomedclip"):
            raise WeightsError("no tokenizer files beside the weights (tokenizer.json / vocab.txt / spiece.model): "
                               f"{spec.family}'s text tower has its own tokenizer", source)
        tok = openclip_tokenizer(facts["context"])
    proj = facts["image_projection"]
    return TextTower(family=spec.family, model=wrapped.eval().requires_grad_(False), tokenize=tok,
                     image_projection=proj, logit_scale=facts["logit_scale"], logit_bias=facts["logit_bias"],
                     weights_id=clip_mod.files_weights_id(files),
                     image_width=int(proj.shape[0]) if proj is not None else int(spec.width),
                     image_projection_bias=bias)


def _biomedclip_text(sd: dict[str, torch.Tensor], spec: EncoderSpec, source: Path) -> tuple[Any, dict[str, Any]]:
    """BiomedCLIP in open_clip's layout: a BERT (PubMedBERT) under ``text.transformer.*`` whose config comes from
    the tensor shapes (heads: ``hf_config['text_heads']``, else width // 64), the projection ``text.proj.*``, the
    image projection ``visual.head.proj.weight``."""
    from medprobe.encoders.clip import load_exact, transformers_module

    bert = {k[len("text.transformer."):]: v for k, v in sd.items() if k.startswith("text.transformer.")}
    if "embeddings.word_embeddings.weight" not in bert or "visual.head.proj.weight" not in sd:
        raise WeightsError("no BiomedCLIP text tower for zero-shot: expected open_clip's layout "
                           "('text.transformer.embeddings.*', 'text.proj.*', 'visual.head.proj.weight')", source)
    vocab, width = bert["embeddings.word_embeddings.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in bert if (m := re.match(r"^encoder\.layer\.(\d+)\.", k)))
    tr = transformers_module()
    cfg = tr.BertConfig(vocab_size=int(vocab), hidden_size=int(width), num_hidden_layers=depth,
                        num_attention_heads=int(dict(spec.hf_config).get("text_heads") or max(1, width // 64)),
                        intermediate_size=int(bert["encoder.layer.0.intermediate.dense.weight"].shape[0]),
                        max_position_embeddings=int(bert["embeddings.position_embeddings.weight"].shape[0]),
                        type_vocab_size=int(bert["embeddings.token_type_embeddings.weight"].shape[0]))
    cfg._attn_implementation = "sdpa"
    model = tr.BertModel(cfg, add_pooling_layer=any(k.startswith("pooler.") for k in bert))
    own = model.state_dict()
    bert.update({k: own[k] for k in own if k.endswith(("position_ids", "token_type_ids")) and k not in bert})
    load_exact(model, bert, source, f"{spec.name} text tower (BiomedCLIP open_clip layout)",
               lambda k: "text.transformer." + k)
    if "text.proj.0.weight" in sd:  # mlp
        w0, w2 = sd["text.proj.0.weight"], sd["text.proj.2.weight"]
        proj: torch.nn.Module = torch.nn.Sequential(torch.nn.Linear(w0.shape[1], w0.shape[0], bias=False),
                                                    torch.nn.GELU(),
                                                    torch.nn.Linear(w2.shape[1], w2.shape[0], bias=False))
        proj.load_state_dict({"0.weight": w0, "2.weight": w2})
    elif "text.proj.weight" in sd:
        proj = torch.nn.Linear(sd["text.proj.weight"].shape[1], sd["text.proj.weight"].shape[0], bias=False)
        proj.load_state_dict({"weight": sd["text.proj.weight"]})
    else:
        proj = torch.nn.Identity()
    wrapped = _BertText(model, proj, int(cfg.pad_token_id or 0))
    return wrapped, {"context": int(cfg.max_position_embeddings),
                     "image_projection": sd["visual.head.proj.weight"].float().T.contiguous(),
                     "logit_scale": float(sd["logit_scale"].float().exp()), "logit_bias": 0.0}


def _pe_text(sd: dict[str, torch.Tensor], spec: EncoderSpec, source: Path
             ) -> tuple[Any, dict[str, Any], torch.Tensor | None]:
    """Perception Encoder core in open_clip's layout (``CustomTextCLIP``): the text tower under ``text.*`` (the
    standard open_clip text transformer, GELU), the image embedding = the timm trunk's ``head`` (Linear) on the
    attention-pool output (the cached ``cls``)."""
    if "text.token_embedding.weight" not in sd or "visual.trunk.head.weight" not in sd:
        raise WeightsError("no PE text tower for zero-shot: expected open_clip's PE-Core layout ('text.*', "
                           "'visual.trunk.head.weight')", source)
    text = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    text["logit_scale"] = sd["logit_scale"]
    if "logit_bias" in sd:
        text["logit_bias"] = sd["logit_bias"]
    text["image_projection"] = sd["visual.trunk.head.weight"].T.contiguous()
    model, facts = _openai_text(text, spec, source, act="gelu", image_projection="image_projection")
    bias = sd.get("visual.trunk.head.bias")
    return model, facts, None if bias is None else bias.float()


def zero_shot_classifier(tower: TextTower, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``(D, K)`` class embeddings as open_clip's ``build_zero_shot_classifier``: per class every template
    filled with its name, each embedding L2-normalised, the mean over templates, normalised again."""
    texts = [t.format(c) for c in classnames for t in templates]
    emb = torch.nn.functional.normalize(tower.encode_text(texts), dim=-1)
    emb = emb.reshape(len(classnames), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1).T.contiguous()


__all__ = ["TextTower", "load_text_tower", "openclip_tokenizer", "zero_shot_classifier"]
