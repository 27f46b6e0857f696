"""Encoder (BERT) and encoder-decoder (T5) weights in ftbench's own layout.

The conventions are the decoder's (`runtime.weights`): every linear weight is [out_features,
in_features], y = x @ weight.T + bias; `qkv` is one fused projection with rows [q heads | k
heads | v heads]; a gated FFN's `ffn_up` has rows [gate | up] and computes act(gate) * up.
The layers are the decoder's `LayerWeights`, read as each family's block reads them:

- BERT (`EncoderWeights`) is post-norm: `ln1` normalises the residual after attention
  (x = ln1(x + attn(x))), `ln2` after the FFN. The embeddings are word + learned position +
  token type, then `embed_norm`. `pooler` (tanh(pooler(x[:, 0]))) is present when the spec has
  one, and `classifier` [num_labels, h] (logits = classifier(pooled)) when it has num_labels.
- T5 (`T5Weights`) is pre-norm with RMS norms and no biases. Each stack (`T5StackWeights`) has
  one relative-position bias table [num_buckets, num_heads] (HF keeps it in the first layer
  and shares it with every layer) and a final norm. Decoder layers (`T5DecoderLayerWeights`)
  add cross-attention between self-attention and the FFN: `ln_cross`, `cross_q` [H·d, h] on
  the decoder's stream, `cross_kv` [2·H·d, h] with rows [k heads | v heads] on the encoder
  output (computed once per source), `cross_out`. A tied LM head is the shared embedding
  itself (`weights.lm_head.weight is weights.embed`); tied T5 rescales the decoder output by
  d_model ** -0.5 before it.

`encoder_weight_shapes(spec)` says what every array's shape is, by ftbench name
(`named_tensors()`); `check_encoder_shapes` holds weights to it with one error that names every
difference. Weights come from HF checkpoints (`runtime.encoder_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np

from ftbench.dtypes import numpy_dtype
from ftbench.errors import InvalidInputError
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.weights import (
    LayerWeights,
    Linear,
    Norm,
    add_shape,
    convert_once,
    listing,
    shape_differences,
)

_ENCODER_PARTS = ("ln1", "qkv", "attn_out", "ln2", "ffn_up", "ffn_down")
_DECODER_PARTS = ("ln1", "qkv", "attn_out", "ln_cross", "cross_q", "cross_kv", "cross_out",
                  "ln2", "ffn_up", "ffn_down")  # fmt: skip


@dataclass(frozen=True)
class T5DecoderLayerWeights:
    """One T5 decoder layer: self-attention, cross-attention, FFN, each after its RMS norm."""

    ln1: Norm
    qkv: Linear
    attn_out: Linear
    ln_cross: Norm
    cross_q: Linear
    cross_kv: Linear
    cross_out: Linear
    ln2: Norm
    ffn_up: Linear
    ffn_down: Linear


@dataclass(frozen=True)
class T5StackWeights:
    """One T5 stack: its relative-position bias table [num_buckets, num_heads], its layers and
    its final norm."""

    relative_bias: np.ndarray
    layers: tuple[Any, ...]
    final_norm: Norm


class _NamedArrays:
    """`named_tensors`, `astype` and `map` for a weights dataclass with a `from_named`."""

    def named_tensors(self) -> dict[str, np.ndarray]:
        """Every array by ftbench name ("embed", "layers.0.qkv.weight",
        "decoder.layers.1.cross_kv.weight", ...); a tied LM head appears as "lm_head.weight",
        the same array as "embed"."""
        return _flatten(self, "")

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every array."""
        return next(iter(self.named_tensors().values())).dtype

    def astype(self, dtype: Any) -> Any:
        """These weights converted to `dtype` (a tied LM head stays tied)."""
        target = numpy_dtype(dtype)
        return self.map(lambda array: array.astype(target, copy=False))

    def map(self, convert: Callable[[Any], Any]) -> Any:
        """These weights with `convert` applied to every array once (a tied LM head stays
        tied), e.g. `weights.map(cupy.asarray)` to move them to the GPU."""
        return type(self).from_named(convert_once(self.named_tensors(), convert))


@dataclass(frozen=True)
class EncoderWeights(_NamedArrays):
    """A BERT encoder's weights (see the module docstring)."""

    embed: np.ndarray
    positions: np.ndarray
    token_types: np.ndarray | None
    embed_norm: Norm
    layers: tuple[LayerWeights, ...]
    pooler: Linear | None
    classifier: Linear | None

    @classmethod
    def from_named(cls, named: Mapping[str, np.ndarray]) -> EncoderWeights:
        """`EncoderWeights` from arrays by ftbench name (the inverse of `named_tensors`)."""
        return cls(
            embed=named["embed"],
            positions=named["positions"],
            token_types=named.get("token_types"),
            embed_norm=_module(Norm, named, "embed_norm"),
            layers=_layers(LayerWeights, _ENCODER_PARTS, named, ""),
            pooler=_module(Linear, named, "pooler"),
            classifier=_module(Linear, named, "classifier"),
        )


@dataclass(frozen=True)
class T5Weights(_NamedArrays):
    """A T5 encoder-decoder's weights (see the module docstring)."""

    embed: np.ndarray
    encoder: T5StackWeights
    decoder: T5StackWeights
    lm_head: Linear

    @property
    def tied_lm_head(self) -> bool:
        """True when the LM head is the shared embedding itself (one array, not a copy)."""
        return self.lm_head.weight is self.embed

    @classmethod
    def from_named(cls, named: Mapping[str, np.ndarray]) -> T5Weights:
        """`T5Weights` from arrays by ftbench name (the inverse of `named_tensors`)."""

        def stack(name: str, layer: type, parts: tuple[str, ...]) -> T5StackWeights:
            return T5StackWeights(
                relative_bias=named[f"{name}.relative_bias"],
                layers=_layers(layer, parts, named, f"{name}."),
                final_norm=_module(Norm, named, f"{name}.final_norm"),
            )

        return cls(
            embed=named["embed"],
            encoder=stack("encoder", LayerWeights, _ENCODER_PARTS),
            decoder=stack("decoder", T5DecoderLayerWeights, _DECODER_PARTS),
            lm_head=_module(Linear, named, "lm_head"),
        )


def _flatten(weights: Any, prefix: str) -> dict[str, np.ndarray]:
    """The arrays of a weights dataclass by name: Linear and Norm as `.weight` / `.bias`,
    tuples of layers as `layers.N.`, nested stacks under their field's name."""
    named = {}
    for field in fields(weights):
        value, name = getattr(weights, field.name), f"{prefix}{field.name}"
        if value is None:
            continue
        if isinstance(value, Linear | Norm):
            named[f"{name}.weight"] = value.weight
            if value.bias is not None:
                named[f"{name}.bias"] = value.bias
        elif isinstance(value, tuple):
            for index, layer in enumerate(value):
                named |= _flatten(layer, f"{name}.{index}.")
        elif is_dataclass(value):
            named |= _flatten(value, f"{name}.")
        else:
            named[name] = value
    return named


def _module(kind: type[Linear] | type[Norm], named: Mapping[str, Any], prefix: str) -> Any:
    if f"{prefix}.weight" not in named:
        return None
    return kind(named[f"{prefix}.weight"], named.get(f"{prefix}.bias"))


def _layers(layer: type, parts: tuple[str, ...], named: Mapping[str, Any], prefix: str) -> tuple:
    """The layers `{prefix}layers.0.`, `.1.`, ... there are arrays for."""
    count = 0
    while any(name.startswith(f"{prefix}layers.{count}.") for name in named):
        count += 1
    return tuple(
        layer(
            **{
                part: _module(_kind(part), named, f"{prefix}layers.{index}.{part}")
                for part in parts
            }
        )  # fmt: skip
        for index in range(count)
    )


def _kind(part: str) -> type[Linear] | type[Norm]:
    return Norm if part.startswith("ln") else Linear


def check_encoder_model(spec: ModelSpec) -> None:
    """Refuse a spec that is not an encoder (BERT) or encoder-decoder (T5) model."""
    if spec.architecture == "decoder":
        raise InvalidInputError(
            f"{spec.name}: family {spec.family} is a decoder model; encoder weights are for "
            "bert and t5 (decoders: runtime.weights)"
        )


def encoder_weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The shape of every array of a BERT or T5 model, by ftbench name (a tied LM head listed
    too)."""
    check_encoder_model(spec)
    hidden, ffn, width = spec.hidden_size, spec.ffn_hidden_size, spec.q_width
    norm_bias = spec.norm == "layernorm"
    ffn_rows = 2 * ffn if spec.gated_ffn else ffn

    def layer(shapes: dict, prefix: str, cross_attention: bool) -> None:
        add_shape(shapes, f"{prefix}ln1", (hidden,), norm_bias)
        add_shape(shapes, f"{prefix}qkv", (width + 2 * spec.kv_width, hidden), spec.qkv_bias)
        add_shape(shapes, f"{prefix}attn_out", (hidden, width), spec.attn_out_bias)
        if cross_attention:
            add_shape(shapes, f"{prefix}ln_cross", (hidden,), norm_bias)
            add_shape(shapes, f"{prefix}cross_q", (width, hidden), spec.qkv_bias)
            add_shape(shapes, f"{prefix}cross_kv", (2 * spec.kv_width, hidden), spec.qkv_bias)
            add_shape(shapes, f"{prefix}cross_out", (hidden, width), spec.attn_out_bias)
        add_shape(shapes, f"{prefix}ln2", (hidden,), norm_bias)
        add_shape(shapes, f"{prefix}ffn_up", (ffn_rows, hidden), spec.ffn_bias)
        add_shape(shapes, f"{prefix}ffn_down", (hidden, ffn), spec.ffn_bias)

    shapes: dict[str, tuple[int, ...]] = {"embed": (spec.vocab_size, hidden)}
    if spec.architecture == "encoder":
        shapes["positions"] = (spec.max_positions, hidden)
        if spec.type_vocab_size:
            shapes["token_types"] = (spec.type_vocab_size, hidden)
        add_shape(shapes, "embed_norm", (hidden,), norm_bias)
        for index in range(spec.num_layers):
            layer(shapes, f"layers.{index}.", cross_attention=False)
        if spec.pooler:
            add_shape(shapes, "pooler", (hidden, hidden), True)
        if spec.num_labels:
            add_shape(shapes, "classifier", (spec.num_labels, hidden), True)
        return shapes
    bias_table = (spec.relative_attention_num_buckets, spec.num_heads)
    for stack, count in (("encoder", spec.num_layers), ("decoder", spec.decoder_layers)):
        shapes[f"{stack}.relative_bias"] = bias_table
        for index in range(count):
            layer(shapes, f"{stack}.layers.{index}.", cross_attention=stack == "decoder")
        add_shape(shapes, f"{stack}.final_norm", (hidden,), norm_bias)
    add_shape(shapes, "lm_head", (spec.vocab_size, hidden), spec.lm_head_bias)
    return shapes


def check_encoder_shapes(weights: EncoderWeights | T5Weights, spec: ModelSpec) -> None:
    """Raise `InvalidInputError` unless `weights` has exactly the arrays of `spec`."""
    kind = EncoderWeights if spec.architecture == "encoder" else T5Weights
    if not isinstance(weights, kind):
        raise InvalidInputError(
            f"{spec.name} ({spec.family}) needs {kind.__name__}, got {type(weights).__name__}"
        )
    expected = encoder_weight_shapes(spec)
    actual = {name: tuple(array.shape) for name, array in weights.named_tensors().items()}
    wrong = shape_differences(expected, actual)
    if not wrong:
        return
    raise InvalidInputError(f"weights do not match {spec.name}: {listing(wrong)}")
