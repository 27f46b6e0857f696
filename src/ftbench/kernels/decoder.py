"""The decoder runtime's element-wise kernels (kernels/cuda/decoder.cu) and their launchers.

`embed`, `residual_norm`, `qkv_rotary` and `bias_act` implement the contract the runtime is
written against (docs/kernels/decoder.md says what each does, the layouts and the limits);
token selection is `kernels.sampling`. All arrays are CuPy and C-contiguous; "DT" is the model
dtype, float16 or bfloat16; the kernels compute in fp32. Each launcher checks shapes, dtypes and
layout before it touches the GPU and says what it expects; then it launches on CuPy's current
stream, allocating nothing and never synchronising, so every launch can be captured in a CUDA
graph once its kernel is compiled. Kernels compile on first use (NVRTC, one template instance
per dtype and vector width); `prepare(dtype)` compiles every instance of a dtype in one run,
before timing or capture.

Inputs the launchers cannot check, because they live on the device: learned positions must be
< P, cache rows < B and positions < Lmax, `rows` < T. Nothing is clamped. (Token ids outside the
embedding table's rows give zero rows: a tensor-parallel rank holds a slice of the vocabulary;
the runtime checks the ids on the host.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import c_types
from ftbench.errors import InvalidInputError
from ftbench.kernels import nvrtc
from ftbench.kernels.launch_args import (
    INT32_MAX,
    check_array,
    check_ndim,
    checked_integer,
    dtype_name,
    full_vector_width,
    pointer,
    vector_width,
)

SOURCE_PATH = Path(__file__).parent / "cuda" / "decoder.cu"
C_TYPES = c_types("fp16", "bf16")
ACTIVATIONS = ("gelu_new", "gelu", "silu", "relu")  # in the order of decoder.cu's enum
NORMS = ("layernorm", "rmsnorm")
BLOCK_THREADS = 256  # embed, qkv_rotary, bias_act
NORM_THREADS = 512  # most threads per row for residual_norm
NORM_ITEMS = (1, 2, 4, 8)  # vectors of the row each thread keeps in registers
ROTARY_VECTORS = (8, 4, 2, 1)
ROTARY_BLOCKS = (
    264  # qkv_rotary splits a token's heads over blocks until about this many (2 per SM)
)
MAX_DELTAS = 2


def _model_dtype(op: str, label: str, array: Any) -> str:
    dtype = dtype_name(array)
    if dtype not in C_TYPES:
        raise InvalidInputError(f"{op}: {label} must be float16 or bfloat16, got {dtype}")
    return dtype


def _threads(units: int, limit: int) -> int:
    """Threads for `units` pieces of work: a multiple of 32, at most `limit`."""
    return min(limit, 32 * math.ceil(units / 32))


def _overlaps(a: Any, b: Any) -> bool:
    a0, b0 = a.data.ptr, b.data.ptr
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def _launch(name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
    nvrtc.launch(nvrtc.load(SOURCE_PATH, [name])[name], grid, block, args)


# Template instances --------------------------------------------------------------------------


def _bool(value: bool) -> str:
    return "true" if value else "false"


def embed_kernel(dtype: str, vector: int, positions: bool) -> str:
    return f"ftb_embed<{C_TYPES[dtype]}, {vector}, {_bool(positions)}>"


def norm_kernel(dtype: str, vector: int, items: int) -> str:
    return f"ftb_residual_norm<{C_TYPES[dtype]}, {vector}, {items}>"


def rotary_kernel(dtype: str, vector: int, interleaved: bool) -> str:
    return f"ftb_qkv_rotary<{C_TYPES[dtype]}, {vector}, {_bool(interleaved)}>"


def activation_kernel(dtype: str, vector: int, activation: str, gated: bool) -> str:
    act = ACTIVATIONS.index(activation)
    return f"ftb_bias_act<{C_TYPES[dtype]}, {vector}, {act}, {_bool(gated)}>"


def kernel_names(dtype: str) -> list[str]:
    """Every template instance the launchers can use for model dtype `dtype`."""
    if dtype not in C_TYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}")
    full = full_vector_width(dtype)
    names = [embed_kernel(dtype, v, p) for v in (full, 1) for p in (False, True)]
    names += [norm_kernel(dtype, v, items) for v in (full, 1) for items in NORM_ITEMS]
    names += [rotary_kernel(dtype, v, False) for v in ROTARY_VECTORS]
    names += [rotary_kernel(dtype, v, True) for v in ROTARY_VECTORS if v > 1]
    names += [
        activation_kernel(dtype, v, act, gated)
        for v in (full, 1)
        for act in ACTIVATIONS
        for gated in (False, True)
    ]
    return names


def prepare(dtype: str) -> float:
    """Compile every kernel for model dtype `dtype` on the current device in one NVRTC run (do it
    before timing or CUDA-graph capture); returns the seconds it took (0 if already loaded)."""
    return nvrtc.compile_seconds(SOURCE_PATH, kernel_names(dtype))


# Launchers -------------------------------------------------------------------------------------


def embed(
    tokens: Any, positions: Any, table: Any, pos_table: Any, residual: Any, vocab_start: int = 0
) -> None:
    """residual[t] = table[tokens[t] - vocab_start] (+ pos_table[positions[t]]), in fp32.

    tokens, positions: int32 [T] (positions only read with pos_table); table: DT [V, H], the
    vocabulary rows [vocab_start, vocab_start + V) (a tensor-parallel rank's slice,
    `sharding.shard`; the whole vocabulary with vocab_start 0): a token outside them gives a
    row of zeros (+ its position), so the ranks' rows sum to the embedding. pos_table: DT
    [P, H] (learned positions, GPT-2) or None; residual: float32 [T, H]. Positions must be
    < P: the kernel clamps nothing.
    """
    op = "embed"
    check_ndim(op, "table", table, 2)
    dtype = _model_dtype(op, "table", table)
    vocab, hidden = table.shape
    check_array(op, "table", table, (vocab, hidden), [dtype])
    vocab_start = checked_integer(op, "vocab_start", vocab_start, 0, INT32_MAX - vocab)
    check_ndim(op, "tokens", tokens, 1)
    count = tokens.shape[0]
    check_array(op, "tokens", tokens, (count,), ["int32"])
    check_array(op, "residual", residual, (count, hidden), ["float32"])
    if pos_table is not None:
        check_ndim(op, "pos_table", pos_table, 2)
        check_array(op, "pos_table", pos_table, (pos_table.shape[0], hidden), [dtype])
        check_array(op, "positions", positions, (count,), ["int32"])
    if count == 0:
        return
    vector = vector_width(hidden, 2, [table, pos_table, residual], (8,))
    name = embed_kernel(dtype, vector, pos_table is not None)
    threads = _threads(math.ceil(hidden / vector), BLOCK_THREADS)
    args = (
        pointer(tokens), pointer(positions if pos_table is not None else None),
        pointer(table), pointer(pos_table), pointer(residual), np.int32(hidden),
        np.int32(vocab_start), np.int32(vocab),
    )  # fmt: skip
    _launch(name, (count,), (threads,), args)


def residual_norm(
    residual: Any,
    out: Any,
    weight: Any,
    bias: Any,
    eps: float,
    kind: str,
    deltas: Sequence[Any] = (),
    delta_biases: Sequence[Any] = (),
    rows: Any = None,
) -> None:
    """residual[r] += sum(deltas[r]) + sum(delta_biases), then out[i] = norm(residual[r]).

    residual: float32 [T, H], updated in place (only when there is something to add).
    kind: "layernorm" (weight and bias, DT [H]) or "rmsnorm" (weight only; bias must be None).
    deltas: 0 to 2 arrays DT [T, H]; delta_biases: 0 to 2 entries, each DT [H] or None.
    rows: None (every row; out DT [T, H]) or int32 [R] (rows r = rows[i] only; out DT [R, H]).
    LayerNorm: (x - mean) / sqrt(var + eps) * weight + bias; RMSNorm: x / sqrt(mean(x^2) + eps)
    * weight; fp32 statistics, two-pass.
    """
    op = "residual_norm"
    if kind not in NORMS:
        raise InvalidInputError(f"{op}: kind must be one of {NORMS}, not {kind!r}")
    check_ndim(op, "residual", residual, 2)
    count, hidden = residual.shape
    check_array(op, "residual", residual, (count, hidden), ["float32"])
    check_ndim(op, "weight", weight, 1)
    dtype = _model_dtype(op, "weight", weight)
    check_array(op, "weight", weight, (hidden,), [dtype])
    if kind == "layernorm":
        check_array(op, "bias", bias, (hidden,), [dtype])
    elif bias is not None:
        raise InvalidInputError(f"{op}: rmsnorm takes no bias, got one")
    if not (isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps >= 0):
        raise InvalidInputError(f"{op}: eps must be a finite number >= 0, got {eps!r}")
    deltas, delta_biases = tuple(deltas), tuple(delta_biases)
    if len(deltas) > MAX_DELTAS or len(delta_biases) > MAX_DELTAS:
        raise InvalidInputError(
            f"{op}: at most {MAX_DELTAS} deltas and {MAX_DELTAS} delta biases, got "
            f"{len(deltas)} and {len(delta_biases)}"
        )
    for index, delta in enumerate(deltas):
        check_array(op, f"deltas[{index}]", delta, (count, hidden), [dtype])
    for index, delta_bias in enumerate(delta_biases):
        if delta_bias is not None:
            check_array(op, f"delta_biases[{index}]", delta_bias, (hidden,), [dtype])
    if rows is None:
        out_rows = count
    else:
        check_ndim(op, "rows", rows, 1)
        out_rows = rows.shape[0]
        check_array(op, "rows", rows, (out_rows,), ["int32"])
    check_array(op, "out", out, (out_rows, hidden), [dtype])
    if out_rows == 0:
        return
    present_biases = [b for b in delta_biases if b is not None]
    arrays = [residual, out, weight, bias, *deltas, *present_biases]
    vector = vector_width(hidden, 2, arrays, (8,))
    vectors = math.ceil(hidden / vector)
    items = next((i for i in NORM_ITEMS if math.ceil(vectors / i) <= NORM_THREADS), None)
    if items is None:
        limit = NORM_THREADS * NORM_ITEMS[-1] * vector
        raise InvalidInputError(
            f"{op}: hidden size {hidden} is too large; at most {limit} for these arrays (a "
            "hidden size that is a multiple of 8, with 16-byte aligned arrays, allows 8x more)"
        )
    threads = _threads(math.ceil(vectors / items), NORM_THREADS)
    padded = list(deltas) + [None] * (MAX_DELTAS - len(deltas))
    padded_biases = present_biases + [None] * (MAX_DELTAS - len(present_biases))
    args = (
        pointer(residual), pointer(out), pointer(weight), pointer(bias),
        *[pointer(d) for d in padded], *[pointer(b) for b in padded_biases],
        pointer(rows), np.int32(hidden), np.float32(eps), np.int32(kind == "rmsnorm"),
    )  # fmt: skip
    _launch(norm_kernel(dtype, vector, items), (out_rows,), (threads,), args)


def qkv_rotary(
    qkv: Any,
    bias: Any,
    q_out: Any,
    k_cache: Any,
    v_cache: Any,
    seq_ids: Any,
    positions: Any,
    *,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    rotary_dim: int,
    rotary_base: float,
    interleaved: bool,
    inv_freqs: Any = None,
) -> None:
    """Add the QKV bias, rotate q and k, write q to q_out and k, v into the KV cache.

    qkv: DT [T, (Hq + 2 Hkv) * D], each row q heads | k heads | v heads; bias: DT
    [(Hq + 2 Hkv) * D] or None; q_out: DT [T, Hq, D]; k_cache, v_cache: DT [B, Hkv, Lmax, D];
    seq_ids, positions: int32 [T] (cache row; rotary angle index and cache slot).
    The first rotary_dim dims of each q and k head turn (rotary_dim = 0: no rotary); pair i by
    position * rotary_base^(-2i / rotary_dim) in fp32, or by position * inv_freqs[i] when
    inv_freqs (float32 [rotary_dim / 2], a scaled rope's frequencies) is given.
    interleaved=True pairs (x[2i], x[2i+1]) (GPT-J), False pairs (x[i], x[i + rotary_dim / 2])
    (GPT-NeoX, LLaMA).
    """
    op = "qkv_rotary"
    q_heads = checked_integer(op, "num_q_heads", num_q_heads, 1, INT32_MAX)
    kv_heads = checked_integer(op, "num_kv_heads", num_kv_heads, 1, INT32_MAX)
    dim = checked_integer(op, "head_dim", head_dim, 1, INT32_MAX)
    rotary = checked_integer(op, "rotary_dim", rotary_dim, 0, dim)
    if rotary % 2:
        raise InvalidInputError(f"{op}: rotary_dim must be even, got {rotary}")
    if rotary and not (
        isinstance(rotary_base, (int, float, np.floating))
        and math.isfinite(rotary_base)
        and rotary_base > 0
    ):
        raise InvalidInputError(f"{op}: rotary_base must be a positive number, got {rotary_base!r}")
    check_ndim(op, "qkv", qkv, 2)
    dtype = _model_dtype(op, "qkv", qkv)
    count = qkv.shape[0]
    width = (q_heads + 2 * kv_heads) * dim
    check_array(op, "qkv", qkv, (count, width), [dtype])
    if bias is not None:
        check_array(op, "bias", bias, (width,), [dtype])
    check_array(op, "q_out", q_out, (count, q_heads, dim), [dtype])
    check_ndim(op, "k_cache", k_cache, 4)
    batch, _, max_length, _ = k_cache.shape
    cache_shape = (batch, kv_heads, max_length, dim)
    check_array(op, "k_cache", k_cache, cache_shape, [dtype])
    check_array(op, "v_cache", v_cache, cache_shape, [dtype])
    check_array(op, "seq_ids", seq_ids, (count,), ["int32"])
    check_array(op, "positions", positions, (count,), ["int32"])
    if inv_freqs is not None:
        check_array(op, "inv_freqs", inv_freqs, (rotary // 2,), ["float32"])
    if count == 0:
        return
    interleaved = bool(interleaved) and rotary > 0
    # A thread's VEC dims must hold whole pairs (interleaved) or line up with their partners
    # rotary_dim / 2 away (halves); a block holds one head's chunks.
    rotary_unit = rotary if interleaved else rotary // 2
    usable = [
        v
        for v in ROTARY_VECTORS
        if rotary_unit % v == 0 and (v > 1 or not interleaved) and dim // v <= BLOCK_THREADS
    ]
    vector = vector_width(dim, 2, [qkv, bias, q_out, k_cache, v_cache], usable)
    if vector not in usable:
        raise InvalidInputError(
            f"{op}: no vector width fits head_dim {dim}, rotary_dim {rotary} and the arrays' "
            f"alignment (interleaved pairs need 4-byte aligned arrays; head_dim / width <= "
            f"{BLOCK_THREADS})"
        )
    chunks = dim // vector
    slots = max(1, min(q_heads + 2 * kv_heads, BLOCK_THREADS // chunks))
    args = (
        pointer(qkv), pointer(bias), pointer(q_out), pointer(k_cache), pointer(v_cache),
        pointer(seq_ids), pointer(positions), pointer(inv_freqs if rotary else None),
        np.int32(q_heads), np.int32(kv_heads),
        np.int32(dim), np.int32(rotary), np.float32(rotary_base if rotary else 1.0),
        np.int32(max_length),
    )  # fmt: skip
    # Blocks of one token split its heads only while there are few tokens: each block computes
    # its angles once for all the heads it handles.
    groups = min(math.ceil((q_heads + 2 * kv_heads) / slots), math.ceil(ROTARY_BLOCKS / count))
    grid = (count, groups)
    _launch(rotary_kernel(dtype, vector, interleaved), grid, (chunks * slots,), args)


def bias_act(x: Any, bias: Any, out: Any, activation: str, gated: bool) -> None:
    """out = act(x + bias), or gated: act(gate + b_gate) * (up + b_up).

    activation: "gelu_new" (tanh approximation), "gelu" (erf), "silu" or "relu".
    Not gated: x DT [T, F], bias DT [F] or None, out DT [T, F] (may be x itself).
    Gated: x DT [T, 2F] = [gate | up] per row, bias DT [2F] or None, out DT [T, F] (must not
    overlap x).
    """
    op = "bias_act"
    if activation not in ACTIVATIONS:
        raise InvalidInputError(
            f"{op}: activation must be one of {ACTIVATIONS}, not {activation!r}"
        )
    check_ndim(op, "x", x, 2)
    dtype = _model_dtype(op, "x", x)
    count, width = x.shape
    if gated and width % 2:
        raise InvalidInputError(f"{op}: gated x must have an even width [T, 2F], got {width}")
    ffn = width // 2 if gated else width
    check_array(op, "x", x, (count, width), [dtype])
    if bias is not None:
        check_array(op, "bias", bias, (width,), [dtype])
    check_array(op, "out", out, (count, ffn), [dtype])
    if count == 0 or ffn == 0:
        return
    same = out.data.ptr == x.data.ptr and not gated
    if not same and _overlaps(out, x):
        raise InvalidInputError(
            f"{op}: out must be x itself or not overlap it" + (" (gated: never x)" if gated else "")
        )
    vector = vector_width(ffn, 2, [x, bias, out], (8,))
    threads = _threads(math.ceil(ffn / vector), BLOCK_THREADS)
    grid = (count, math.ceil(ffn / vector / threads))
    args = (pointer(x), pointer(bias), pointer(out), np.int32(ffn))
    _launch(activation_kernel(dtype, vector, activation, bool(gated)), grid, (threads,), args)
