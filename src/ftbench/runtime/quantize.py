"""8-bit weights for the runtime: a decoder's linear layers quantised per output channel.

`quantize_weights(weights, "int8" | "fp8")` turns every transformer-layer linear (fused QKV,
attention output, FFN up and down) into 8-bit codes with one fp32 scale per output channel, by
absmax (`kernels.weight_only.quantize_reference`: the same fp32 arithmetic, bit for bit, as the
device quantiser). The embeddings, norms and LM head stay as they are, as the common weight-only
and FP8 recipes keep them. Quantise the full weights, then shard: a row-parallel layer's ranks
then share one scale per output channel, and a column-parallel one's split them with its rows.

Host weights (NumPy) become int8 or ml_dtypes' float8_e4m3fn codes (`runtime.weights.Linear`);
weights already on the GPU (CuPy) are quantised there, by `kernels.weight_only.quantize`, into int8
or uint8 (E4M3 bits) device codes, what the runtime's kernels read. Either way the same bits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ftbench.dtypes import EIGHT_BIT_DTYPES, numpy_dtype, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.kernels.weight_only import CODE_ARRAYS, CODE_MAX, quantize, quantize_reference
from ftbench.runtime.weights import Linear, ModelWeights

QUANTISED_PARTS = ("qkv", "attn_out", "ffn_up", "ffn_down")


def quantisable(name: str) -> bool:
    """Whether the array called `name` (`ModelWeights.named_tensors`) is the weight of a linear
    that may be 8-bit: "layers.N.PART.weight" with PART one of QUANTISED_PARTS."""
    parts = name.split(".")
    return (
        len(parts) == 4
        and parts[0] == "layers"
        and parts[2] in QUANTISED_PARTS
        and (parts[3] == "weight")
    )


def _map_linears(weights: ModelWeights, convert: Callable[[Linear], Linear]) -> ModelWeights:
    """`weights` with `convert` applied to every transformer layer's quantisable linear."""
    layers = tuple(
        dataclasses.replace(
            layer, **{part: convert(getattr(layer, part)) for part in QUANTISED_PARTS}
        )
        for layer in weights.layers
    )
    return dataclasses.replace(weights, layers=layers)


def quantize_linear(layer: Linear, weights: str) -> Linear:
    """`layer` with its weight as `weights` codes and per-output-channel fp32 scales, on the
    host or the GPU as the weight is (module docstring); the bias stays. Refuses a layer
    already quantised."""
    if layer.scale is not None:
        raise InvalidInputError(f"this linear layer is already {layer.weight.dtype}-quantised")
    if numpy_name(layer.weight) not in ("float16", "bfloat16"):
        raise InvalidInputError(
            f"quantise the fp16 or bf16 weights the runtime runs, not {layer.weight.dtype} ones "
            "(the device quantiser reads those)"
        )
    if isinstance(layer.weight, np.ndarray):
        codes, scales = quantize_reference(np.ascontiguousarray(layer.weight), weights)
    else:
        codes, scales = quantize(layer.weight, weights)
    return Linear(codes, layer.bias, scales)


def quantize_weights(weights: ModelWeights, fmt: str) -> ModelWeights:
    """`weights` with the linears of every transformer layer quantised to `fmt` ("int8" or
    "fp8"), see the module docstring."""
    if fmt not in EIGHT_BIT_DTYPES:
        raise InvalidInputError(
            f"weights can be quantised to {' or '.join(EIGHT_BIT_DTYPES)}, not {fmt!r}"
        )
    return _map_linears(weights, lambda linear: quantize_linear(linear, fmt))


def weight_format(weights: ModelWeights) -> str | None:
    """The 8-bit format of the transformer layers' linears ("int8", "fp8"), or None when they
    are not quantised; refuses weights quantised only in part or in two formats."""
    formats = {
        None if linear.scale is None else CODE_ARRAYS[numpy_name(linear.weight)]
        for layer in weights.layers
        for linear in (getattr(layer, part) for part in QUANTISED_PARTS)
    }
    if len(formats) > 1:
        raise InvalidInputError(
            f"the linear layers mix weight formats ({', '.join(sorted(map(str, formats)))}): "
            "quantise all of them or none"
        )
    return next(iter(formats), None)


def dequantize_weights(weights: ModelWeights, dtype: object = np.float64) -> ModelWeights:
    """`weights` with every 8-bit linear's weight replaced by codes * scales in `dtype` (what
    the NumPy reference multiplies by); other arrays are left as they are."""

    def plain(linear: Linear) -> Linear:
        if linear.scale is None:
            return linear
        return Linear(linear.dequantized(dtype), linear.bias)

    return _map_linears(weights, plain)


ACTIVATION_SCALINGS = ("token", "tensor")


def fp8_activations(x: np.ndarray, scaling: str = "token") -> np.ndarray:
    """What an FP8 linear layer reads of its input x: x rounded to E4M3 under a dynamic scale,
    times that scale, as float64. The scale is absmax / 448 per token (over the last axis) or
    over the whole tensor; x / scale is computed in fp32 and rounded to nearest even, saturating
    at +-448 (cvt.rn.satfinite, as a device quantiser does); an all-zero row stays zero."""
    if scaling not in ACTIVATION_SCALINGS:
        raise InvalidInputError(
            f"activation scaling must be {' or '.join(ACTIVATION_SCALINGS)}, got {scaling!r}"
        )
    e4m3_max = np.float32(CODE_MAX["fp8"])
    values = np.asarray(x, dtype=np.float32)
    axis = -1 if scaling == "token" else None
    absmax = np.abs(values).max(axis=axis, keepdims=True)
    scale = absmax / e4m3_max
    ratio = values / np.where(scale > 0, scale, np.float32(1))
    codes = np.clip(ratio, -e4m3_max, e4m3_max).astype(numpy_dtype("fp8"))
    return codes.astype(np.float64) * scale.astype(np.float64)
