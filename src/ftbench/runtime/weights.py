"""A decoder's weights in ftbench's own layout, whatever checkpoint they came from.

Layout (docs/runtime/reference.md shows it with shapes):

- Every linear weight is [out_features, in_features] (`torch.nn.functional.linear`'s layout),
  so a linear layer computes y = x @ weight.T + bias.
- `qkv` is one fused projection: rows [q heads | k heads | v heads], each block head by head,
  (num_heads + 2 * num_kv_heads) * head_dim rows in all.
- A gated FFN's `ffn_up` is one fused projection: rows [gate | up], 2 * ffn_hidden_size rows;
  the activation applies to the gate half: act(gate) * up.
- `ln2` is None for a parallel block (GPT-J), whose attention and MLP both read `ln1`'s output.
- A tied LM head is the token embedding itself (`weights.lm_head.weight is weights.embed`).
- Every array has one dtype, but for 8-bit linear layers (`runtime.quantize`): a `Linear` with a
  `scale` holds 8-bit codes (int8, or ml_dtypes' float8_e4m3fn) as its weight and one fp32
  scale per output channel, its weight being codes * scale[:, None]. The transformer layers'
  linears may be quantised; the embeddings, norms and LM head never are.

`weight_shapes` says what every array's shape is for a spec (one tensor-parallel rank's, one
pipeline stage's); `check_shapes` holds weights to it. Weights come from a Hugging Face
checkpoint (`runtime.hf_checkpoint`), from random draws (`runtime.random_weights`) or from a
pre-sharded checkpoint (`runtime.sharded`); `runtime.sharding` cuts them for tensor and
pipeline parallelism.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftbench.dtypes import numpy_dtype, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec

_LAYER_PARTS = ("ln1", "qkv", "attn_out", "ln2", "ffn_up", "ffn_down")

# Errors list at most this many names per kind, then say how many more there are.
_MAX_LISTED = 12


@dataclass(frozen=True)
class Linear:
    """A linear layer: y = x @ weight.T + bias, weight [out_features, in_features]; with a
    `scale` [out_features] (fp32), `weight` holds 8-bit codes and the layer's weight is
    weight * scale[:, None]."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    scale: np.ndarray | None = None

    def dequantized(self, dtype: Any = np.float64) -> np.ndarray:
        """The layer's weight in `dtype`: the weight, or the codes times their scales."""
        weight = self.weight.astype(dtype)
        return weight if self.scale is None else weight * self.scale.astype(dtype)[:, None]


@dataclass(frozen=True)
class Norm:
    """A LayerNorm (weight and bias) or an RMSNorm (weight only) over the hidden size."""

    weight: np.ndarray
    bias: np.ndarray | None = None


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer: pre-norm attention with fused QKV, then (pre-norm) MLP."""

    ln1: Norm
    qkv: Linear
    attn_out: Linear
    ln2: Norm | None
    ffn_up: Linear
    ffn_down: Linear


@dataclass(frozen=True)
class ModelWeights:
    """A decoder's weights: embeddings, layers, final norm and LM head (see the module doc)."""

    embed: np.ndarray | None
    positions: np.ndarray | None
    layers: tuple[LayerWeights, ...]
    final_norm: Norm | None
    lm_head: Linear | None

    @property
    def dtype(self) -> np.dtype:
        """The dtype of every array but 8-bit codes and their scales."""
        return next(iter(self.named_tensors(quantised=False).values())).dtype

    @property
    def tied_lm_head(self) -> bool:
        """True when the LM head is the token embedding itself (one array, not a copy)."""
        return self.lm_head is not None and self.lm_head.weight is self.embed

    def named_tensors(self, quantised: bool = True) -> dict[str, np.ndarray]:
        """Every array by ftbench name ("embed", "layers.0.qkv.weight", "lm_head.bias", ...),
        an 8-bit layer's scales as "layers.0.qkv.scale"; `quantised=False` leaves out 8-bit
        layers' codes and scales.

        A tied LM head appears as "lm_head.weight" too, as the same array as "embed".
        """
        named = {"embed": self.embed, "positions": self.positions}
        named = {name: array for name, array in named.items() if array is not None}
        modules: list[tuple[str, Linear | Norm | None]] = []
        for index, layer in enumerate(self.layers):
            modules += [(f"layers.{index}.{part}", getattr(layer, part)) for part in _LAYER_PARTS]
        modules += [("final_norm", self.final_norm), ("lm_head", self.lm_head)]
        for prefix, module in modules:
            if module is None:
                continue
            scale = getattr(module, "scale", None)
            if scale is None or quantised:
                named[f"{prefix}.weight"] = module.weight
            if scale is not None and quantised:
                named[f"{prefix}.scale"] = scale
            if module.bias is not None:
                named[f"{prefix}.bias"] = module.bias
        return named

    def astype(self, dtype: Any) -> ModelWeights:
        """These weights converted to `dtype` (a tied LM head stays tied); 8-bit codes and their
        scales stay as they are."""
        target = numpy_dtype(dtype)
        named = self.named_tensors()
        kept = {
            id(array)
            for name, array in named.items()
            if name.endswith(".scale")
            or (name.endswith(".weight") and f"{name.removesuffix('.weight')}.scale" in named)
        }
        return self.map(lambda a: a if id(a) in kept else a.astype(target, copy=False))

    def map(self, convert: Callable[[Any], Any]) -> ModelWeights:
        """These weights with `convert` applied to every array once (a tied LM head stays
        tied), e.g. `weights.map(cupy.asarray)` to move them to the GPU."""
        return from_named(convert_once(self.named_tensors(), convert), len(self.layers))


def to_device(array: np.ndarray) -> Any:
    """A host array on the current GPU (`weights.map(to_device)`); E4M3 codes go as their bits
    in uint8, since CuPy has no float8 type (the 8-bit kernels read them so)."""
    import cupy

    if numpy_name(array) == "float8_e4m3fn":
        array = array.view(np.uint8)
    return cupy.asarray(array)


def convert_once(named: Mapping[str, Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """`named` with `convert` applied to each distinct array once: names sharing an array (a
    tied LM head and the embedding) share its conversion."""
    converted: dict[int, Any] = {}
    result = {}
    for name, array in named.items():
        if id(array) not in converted:
            converted[id(array)] = convert(array)
        result[name] = converted[id(array)]
    return result


def check_decoder(spec: ModelSpec) -> None:
    """Refuse a spec that is not a decoder model (the runtime runs decoders only)."""
    if spec.architecture != "decoder":
        raise InvalidInputError(
            f"{spec.name}: the runtime runs decoder models (gpt2, megatron-gpt, gptj, llama); "
            f"family {spec.family} is an {spec.architecture} model"
        )


def add_shape(shapes: dict[str, tuple[int, ...]], prefix: str, shape: tuple[int, ...], bias: bool):
    """Record the weight `prefix`.weight of `shape` in `shapes`, and its bias when it has one."""
    shapes[f"{prefix}.weight"] = shape
    if bias:
        shapes[f"{prefix}.bias"] = shape[:1]


def weight_shapes(
    spec: ModelSpec, tp: int = 1, layers: range | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape of every array one rank holds under tensor parallelism `tp`, by ftbench name;
    with `layers`, only what the pipeline stage of those layers holds
    (`sharding.stage_weights`).

    With tp=1 these are the full weights (the LM head listed even when it is tied); with tp > 1
    the embedding and the LM head have the rank's vocabulary rows (`rank_shapes().lm_head_rows`).
    """
    check_decoder(spec)
    layers = range(spec.num_layers) if layers is None else layers
    rank = rank_shapes(spec, tp)
    hidden, ffn = spec.hidden_size, rank.ffn_hidden_size
    norm_bias = spec.norm == "layernorm"
    shapes: dict[str, tuple[int, ...]] = {}
    if layers.start == 0:
        shapes["embed"] = (rank.lm_head_rows, hidden)
        if spec.position_embedding == "learned":
            shapes["positions"] = (spec.max_positions, hidden)
    for index in range(len(layers)):
        layer = f"layers.{index}"
        add_shape(shapes, f"{layer}.ln1", (hidden,), norm_bias)
        add_shape(shapes, f"{layer}.qkv", (rank.qkv_width, hidden), spec.qkv_bias)
        add_shape(shapes, f"{layer}.attn_out", (hidden, rank.q_width), spec.attn_out_bias)
        if not spec.parallel_attn_mlp:
            add_shape(shapes, f"{layer}.ln2", (hidden,), norm_bias)
        add_shape(shapes, f"{layer}.ffn_up", (rank.ffn_up_rows, hidden), spec.ffn_bias)
        add_shape(shapes, f"{layer}.ffn_down", (hidden, ffn), spec.ffn_bias)
    if layers.stop == spec.num_layers:
        add_shape(shapes, "final_norm", (hidden,), norm_bias)
        add_shape(shapes, "lm_head", (rank.lm_head_rows, hidden), spec.lm_head_bias)
    return shapes


def from_named(named: Mapping[str, np.ndarray], num_layers: int) -> ModelWeights:
    """`ModelWeights` from arrays by ftbench name (the inverse of `named_tensors`)."""

    def module(kind: type[Linear] | type[Norm], prefix: str) -> Any:
        if f"{prefix}.weight" not in named:
            return None
        if kind is Linear:
            return Linear(named[f"{prefix}.weight"], named.get(f"{prefix}.bias"),
                          named.get(f"{prefix}.scale"))  # fmt: skip
        return kind(named[f"{prefix}.weight"], named.get(f"{prefix}.bias"))

    layers = tuple(
        LayerWeights(
            ln1=module(Norm, f"layers.{index}.ln1"),
            qkv=module(Linear, f"layers.{index}.qkv"),
            attn_out=module(Linear, f"layers.{index}.attn_out"),
            ln2=module(Norm, f"layers.{index}.ln2"),
            ffn_up=module(Linear, f"layers.{index}.ffn_up"),
            ffn_down=module(Linear, f"layers.{index}.ffn_down"),
        )
        for index in range(num_layers)
    )
    return ModelWeights(
        embed=named.get("embed"),
        positions=named.get("positions"),
        layers=layers,
        final_norm=module(Norm, "final_norm"),
        lm_head=module(Linear, "lm_head"),
    )


def check_shapes(
    weights: ModelWeights, spec: ModelSpec, tp: int = 1, layers: range | None = None
) -> None:
    """Raise `InvalidInputError` unless `weights` has exactly one rank's arrays for `spec`, `tp`
    (and the pipeline stage of `layers`)."""
    expected = weight_shapes(spec, tp, layers)
    named = weights.named_tensors()
    # An 8-bit layer's scales: one per output channel.
    expected |= {
        name: (named[f"{name[: -len('.scale')]}.weight"].shape[0],)
        for name in named
        if name.endswith(".scale") and f"{name[: -len('.scale')]}.weight" in named
    }
    actual = {name: array.shape for name, array in named.items()}
    wrong = shape_differences(expected, actual)
    if not wrong:
        return
    stage = "" if layers is None else f", layers {layers.start}..{layers.stop - 1}"
    raise InvalidInputError(
        f"weights do not match {spec.name} with tp={tp}{stage}: {listing(wrong)}"
    )


def shape_differences(
    expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """Every name whose shape differs between `expected` and `actual` (or that one lacks), with
    both shapes, sorted by name."""
    return [
        f"{name} (expected {list(expected[name]) if name in expected else 'none'}, got "
        f"{list(actual[name]) if name in actual else 'none'})"
        for name in sorted(expected.keys() | actual.keys())
        if (tuple(expected[name]) if name in expected else None)
        != (tuple(actual[name]) if name in actual else None)
    ]


def raise_mismatch(origin: str, spec: ModelSpec, problems: list[str]) -> None:
    """Raise the one error of a checkpoint that does not match `spec`, if there are `problems`."""
    if problems:
        raise InvalidInputError(
            f"{origin} does not match {spec.name} (family {spec.family}, {spec.num_layers} "
            f"layers): {'; '.join(problems)}"
        )


def mismatch_problems(missing: list[str], misshaped: list[str], unexpected: list[str]) -> list[str]:
    """The parts of a checkpoint-does-not-match error: each non-empty kind with its names."""
    return [
        f"{kind}: {listing(items)}"
        for kind, items in (
            ("missing tensors", missing),
            ("mis-shaped tensors", misshaped),
            ("unexpected tensors", unexpected),
        )
        if items
    ]


def listing(items: list[str]) -> str:
    """`items` joined by commas, at most `_MAX_LISTED` of them, then how many more there are."""
    listed = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{listed} and {more} more" if more > 0 else listed
