"""Hugging Face BERT, RoBERTa and T5 checkpoints as ftbench's encoder weights
(`runtime.encoder_weights`).

`encoder_from_state_dict` maps a state dict in memory and `load_hf_encoder_weights` a
safetensors checkpoint (one file, or shards with an index, found as the decoder loader finds
them: `hf_checkpoint`) onto ftbench's layout: q, k, v stacked into the fused `qkv`, T5's
cross-attention k, v into `cross_kv`, gated T5's wi_0 (gate) and wi_1 (up) into `ffn_up`. Every
name and shape is checked against the spec first and every problem is reported in one error
(missing, mis-shaped and unexpected tensors, HF names with expected and actual shapes).

Names (N a layer, S a T5 stack: `encoder.` or `decoder.`; L is 1 in T5's encoder, 2 in its
decoder):

- `embed`: BERT `embeddings.word_embeddings`; T5 `shared`.
- BERT `positions`, `token_types`, `embed_norm`: `embeddings.position_embeddings`,
  `.token_type_embeddings`, `.LayerNorm`; `pooler`: `pooler.dense`. RoBERTa's names are BERT's.
  The `bert.` or `roberta.` prefix of task models is optional.
- A sequence-classification head (a spec with `num_labels`): BERT's `classifier` (after
  `pooler`); RoBERTa's `classifier.dense` as `pooler` and `classifier.out_proj` as
  `classifier`.
- BERT layers, under `encoder.layer.N.`: `qkv` = `attention.self.{query,key,value}`,
  `attn_out` = `attention.output.dense`, `ln1` = `attention.output.LayerNorm`, `ffn_up` =
  `intermediate.dense`, `ffn_down` = `output.dense`, `ln2` = `output.LayerNorm`.
- T5 `S.relative_bias`: `S.block.0.layer.0.SelfAttention.relative_attention_bias`;
  `S.final_norm`: `S.final_layer_norm`; `lm_head`: `lm_head` (tied: `shared`; untied with no
  `lm_head` stored, as transformers 5 saves T5: a copy of `shared`).
- T5 layers, under `S.block.N.`: `ln1` = `layer.0.layer_norm`, `qkv` =
  `layer.0.SelfAttention.{q,k,v}`, `attn_out` = `layer.0.SelfAttention.o`; the decoder's
  `ln_cross`, `cross_q`, `cross_kv`, `cross_out` = `layer.1.layer_norm`,
  `layer.1.EncDecAttention.q`, `.k` and `.v`, `.o`; `ln2` = `layer.L.layer_norm`, `ffn_up` =
  `layer.L.DenseReluDense.wi` (gated: `wi_0`, `wi_1`), `ffn_down` = `layer.L.DenseReluDense.wo`.

Skipped: the `embeddings.position_ids` and `token_type_ids` buffers, T5's `encoder.embed_tokens`
and `decoder.embed_tokens` (copies of `shared`), a tied model's stored `lm_head`, and a prefixed
BERT or RoBERTa checkpoint's task heads (every name outside the prefix that the spec does not
read: `cls.*`, `lm_head.*`, a classifier when the spec has no `num_labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import numpy_dtype
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.encoder_weights import (
    EncoderWeights,
    T5Weights,
    check_encoder_model,
    encoder_weight_shapes,
)
from ftbench.runtime.hf_checkpoint import opened_safetensors, read_float_tensor
from ftbench.runtime.weights import mismatch_problems, raise_mismatch

_BERT_PREFIXES = ("bert.", "roberta.")  # a task model's encoder: BertFor*, RobertaFor*
_BERT_TOP = {
    "embed": "embeddings.word_embeddings",
    "positions": "embeddings.position_embeddings",
    "token_types": "embeddings.token_type_embeddings",
    "embed_norm": "embeddings.LayerNorm",
    "pooler": "pooler.dense",
}
# A sequence-classification head, outside the prefix. BertForSequenceClassification's
# `classifier` reads the pooler; RobertaForSequenceClassification has no pooler, and its head's
# `classifier.dense` (then tanh) and `classifier.out_proj` are the same two linears.
_BERT_HEAD = {"classifier": "classifier"}
_ROBERTA_HEAD = {"pooler": "classifier.dense", "classifier": "classifier.out_proj"}
_BERT_LAYER = {
    "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn_out": ("attention.output.dense",),
    "ln1": ("attention.output.LayerNorm",),
    "ffn_up": ("intermediate.dense",),
    "ffn_down": ("output.dense",),
    "ln2": ("output.LayerNorm",),
}
_BERT_SKIPPED = ("embeddings.position_ids", "embeddings.token_type_ids")


def _t5_layer(stack: str, gated: bool) -> dict[str, tuple[str, ...]]:
    ffn = "layer.2" if stack == "decoder" else "layer.1"
    wi = ("wi_0", "wi_1") if gated else ("wi",)
    parts = {
        "ln1": ("layer.0.layer_norm",),
        "qkv": tuple(f"layer.0.SelfAttention.{p}" for p in "qkv"),
        "attn_out": ("layer.0.SelfAttention.o",),
        "ln2": (f"{ffn}.layer_norm",),
        "ffn_up": tuple(f"{ffn}.DenseReluDense.{w}" for w in wi),
        "ffn_down": (f"{ffn}.DenseReluDense.wo",),
    }
    if stack == "decoder":
        parts |= {
            "ln_cross": ("layer.1.layer_norm",),
            "cross_q": ("layer.1.EncDecAttention.q",),
            "cross_kv": ("layer.1.EncDecAttention.k", "layer.1.EncDecAttention.v"),
            "cross_out": ("layer.1.EncDecAttention.o",),
        }
    return parts


def _bert_modules(prefix: str, names: Collection[str]) -> dict[str, str]:
    """ftbench's BERT names outside the layers -> the HF modules a checkpoint with tensor
    `names` holds them in."""
    head = _ROBERTA_HEAD if "classifier.out_proj.weight" in names else _BERT_HEAD
    return {name: f"{prefix}{module}" for name, module in _BERT_TOP.items()} | head


def _hf_sources(spec: ModelSpec, prefix: str, names: Collection[str]) -> dict[str, tuple[str, ...]]:
    """ftbench name -> the HF tensors stacked by rows into it, for every array of `spec`, in a
    checkpoint with tensor `names`.

    An untied T5 head is `lm_head`, or, where the checkpoint stores none (transformers 5 ties
    T5's head to `shared` always and saves it once), a copy of `shared`."""
    sources = {}
    layers = {stack: _t5_layer(stack, spec.gated_ffn) for stack in ("encoder", "decoder")}
    bert_modules = _bert_modules(prefix, names)
    for name in encoder_weight_shapes(spec):
        *path, kind = name.split(".")
        if spec.architecture == "encoder":
            if "layers" in path:
                _, index, part = path
                layer = f"{prefix}encoder.layer.{index}."
                sources[name] = tuple(f"{layer}{hf}.{kind}" for hf in _BERT_LAYER[part])
            else:
                module = bert_modules[path[0] if path else kind]
                sources[name] = (f"{module}.{kind if path else 'weight'}",)
        elif name == "embed":
            sources[name] = ("shared.weight",)
        elif name == "lm_head.weight":
            if not spec.tie_word_embeddings:
                stored = "lm_head.weight" in names
                sources[name] = ("lm_head.weight" if stored else "shared.weight",)
        elif kind == "relative_bias":
            bias = f"{path[0]}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            sources[name] = (bias,)
        elif path[1:] == ["final_norm"]:
            sources[name] = (f"{path[0]}.final_layer_norm.{kind}",)
        else:
            stack, _, index, part = path
            block = f"{stack}.block.{index}."
            sources[name] = tuple(f"{block}{hf}.{kind}" for hf in layers[stack][part])
    return sources


def _skipped(spec: ModelSpec, name: str, prefix: str) -> bool:
    """Whether a stored tensor carries no weight ftbench reads (see the module docstring)."""
    if spec.architecture == "encoder":
        task_head = bool(prefix) and not name.startswith(prefix)
        return task_head or name.removeprefix(prefix) in _BERT_SKIPPED
    aliases = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    return name in aliases or (spec.tie_word_embeddings and name == "lm_head.weight")


def _map_checkpoint(
    spec: ModelSpec,
    shapes: Mapping[str, tuple[int, ...]],
    load: Callable[[str], np.ndarray],
    origin: str,
) -> EncoderWeights | T5Weights:
    """Check a checkpoint's names and shapes (`shapes`, by HF name) against `spec`, then build
    the weights with `load(name)` (one tensor, in the target dtype). Every problem is one
    error."""
    check_encoder_model(spec)
    prefix = ""
    if spec.architecture == "encoder":
        stored = (p for p in _BERT_PREFIXES if any(key.startswith(p) for key in shapes))
        prefix = next(stored, "")
    expected_shapes = encoder_weight_shapes(spec)
    sources = _hf_sources(spec, prefix, shapes.keys())
    missing, misshaped = [], []
    for name, hf_names in sources.items():
        shape = expected_shapes[name]
        # Stacked parts split the rows evenly (BERT and T5 have as many KV heads as heads).
        expected = (shape[0] // len(hf_names), *shape[1:])
        for hf_name in hf_names:
            if hf_name not in shapes:
                missing.append(hf_name)
            elif tuple(shapes[hf_name]) != expected:
                misshaped.append(
                    f"{hf_name} (expected {list(expected)}, got {list(shapes[hf_name])})"
                )
    used = {hf_name for hf_names in sources.values() for hf_name in hf_names}
    unexpected = [name for name in shapes if name not in used and not _skipped(spec, name, prefix)]
    raise_mismatch(origin, spec, mismatch_problems(missing, misshaped, unexpected))
    named = {}
    for name, hf_names in sources.items():
        parts = [load(hf_name) for hf_name in hf_names]
        named[name] = np.ascontiguousarray(parts[0] if len(parts) == 1 else np.concatenate(parts))
    if spec.architecture == "encoder":
        return EncoderWeights.from_named(named)
    if spec.tie_word_embeddings:
        named["lm_head.weight"] = named["embed"]
    return T5Weights.from_named(named)


def encoder_from_state_dict(
    state_dict: Mapping[str, Any], spec: ModelSpec, dtype: Any = None
) -> EncoderWeights | T5Weights:
    """BERT or T5 weights from a Hugging Face state dict (NumPy arrays or CPU torch tensors,
    copied). `dtype` defaults to the token embedding's dtype. Missing, unexpected or
    mis-shaped tensors are one `InvalidInputError` naming each of them."""
    shapes = {name: tuple(np.shape(value)) for name, value in state_dict.items()}
    if dtype is None:
        embeddings = ("word_embeddings.weight", "shared.weight")
        embed = [name for name in shapes if name.endswith(embeddings)]
        dtype = np.asarray(state_dict[embed[0]]).dtype if embed else np.float32
    target = numpy_dtype(dtype)
    return _map_checkpoint(
        spec, shapes, lambda name: np.asarray(state_dict[name]).astype(target), "the state dict"
    )


def load_hf_encoder_weights(
    directory: str | Path, spec: ModelSpec, dtype: Any
) -> EncoderWeights | T5Weights:
    """Load a BERT or T5 safetensors checkpoint (one file or shards with an index), each tensor
    converted to `dtype` ("fp16", "bf16", "fp32", "fp64" or a NumPy dtype; bf16 tensors are
    widened exactly from their raw bits, as the decoder loader does)."""
    target = numpy_dtype(dtype)
    with opened_safetensors(directory) as (files, shapes):
        return _map_checkpoint(
            spec,
            shapes,
            lambda name: read_float_tensor(files, name).astype(target, copy=False),
            str(directory),
        )
