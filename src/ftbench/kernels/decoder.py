"""The decoder runtime's element-wise kernels (kernels/cuda/decoder.cu) and their launchers.

`embed`, `residual_norm`, `qkv_rotary`, `bias_act` and `sample` implement the contract the
runtime is written against (docs/kernels/decoder.md says what each does, the layouts and the
limits). All arrays are CuPy and C-contiguous; "DT" is the model dtype, float16 or bfloat16;
the kernels compute in fp32. Each launcher checks shapes, dtypes and layout before it touches
the GPU and says what it expects; then it launches on CuPy's current stream, allocating nothing
and never synchronising, so every launch can be captured in a CUDA graph once its kernel is
compiled. Kernels compile on first use (NVRTC, one template instance per dtype and vector width);
`prepare(dtype)` compiles every instance of a dtype in one run, before timing or capture.

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

SOURCE_PATH = Path(__file__).parent / "cuda" / "decoder.cu"
C_TYPES = c_types("fp16", "bf16")
LOGIT_C_TYPES = c_types("fp16", "bf16", "fp32")
ACTIVATIONS = ("gelu_new", "gelu", "silu", "relu")  # in the order of decoder.cu's enum
NORMS = ("layernorm", "rmsnorm")
METHODS = ("greedy", "sample")
VECTOR_BYTES = 16
BLOCK_THREADS = 256  # embed, qkv_rotary, bias_act
NORM_THREADS = 512  # most threads per row for residual_norm
NORM_ITEMS = (1, 2, 4, 8)  # vectors of the row each thread keeps in registers
ROTARY_VECTORS = (8, 4, 2, 1)
ROTARY_BLOCKS = (
    264  # qkv_rotary splits a token's heads over blocks until about this many (2 per SM)
)
GREEDY_THREADS = 1024
SAMPLE_THREADS = 512
MAX_DELTAS = 2
MAX_SAMPLE_VOCAB = 2**20  # the weight histograms' 32-bit halves cannot overflow below this
INT32_MAX = 2**31 - 1
_NULL = np.uint64(0)


def _dtype(array: Any) -> str:
    return str(array.dtype)


def _check(op: str, label: str, array: Any, shape: tuple[int, ...], dtypes: Sequence[str]) -> None:
    """Refuse `array` unless it has exactly `shape`, a dtype in `dtypes` and C order."""
    if array is None:
        raise InvalidInputError(f"{op}: {label} is required ({_expect(shape, dtypes)})")
    if tuple(array.shape) != tuple(shape):
        raise InvalidInputError(
            f"{op}: {label} must be {_expect(shape, dtypes)}, got shape {tuple(array.shape)}"
        )
    if _dtype(array) not in dtypes:
        raise InvalidInputError(
            f"{op}: {label} must be {_expect(shape, dtypes)}, got dtype {_dtype(array)}"
        )
    if not array.flags.c_contiguous:
        raise InvalidInputError(f"{op}: {label} must be C-contiguous")


def _expect(shape: tuple[int, ...], dtypes: Sequence[str]) -> str:
    return f"{' or '.join(dtypes)} {list(shape)}"


def _check_ndim(op: str, label: str, array: Any, ndim: int) -> None:
    if array is None or array.ndim != ndim:
        shape = None if array is None else tuple(array.shape)
        raise InvalidInputError(f"{op}: {label} must be a {ndim}-D array, got shape {shape}")


def _model_dtype(op: str, label: str, array: Any) -> str:
    dtype = _dtype(array)
    if dtype not in C_TYPES:
        raise InvalidInputError(f"{op}: {label} must be float16 or bfloat16, got {dtype}")
    return dtype


def _integer(op: str, label: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{op}: {label} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InvalidInputError(f"{op}: {label} must be in {low}..{high}, got {value}")
    return int(value)


def _pointer(array: Any) -> np.uint64:
    """A device pointer as a kernel argument (raw, so any dtype CuPy holds works)."""
    return _NULL if array is None else np.uint64(array.data.ptr)


def _vector(width: int, itemsize: int, arrays: Sequence[Any], widths: Sequence[int]) -> int:
    """The widest of `widths` (elements per access) that divides `width` and keeps every access
    to `arrays` aligned; 1 always works."""
    for vector in widths:
        aligned = all(
            array is None or array.data.ptr % min(VECTOR_BYTES, vector * array.itemsize) == 0
            for array in arrays
        )
        if width % vector == 0 and aligned and vector * itemsize <= VECTOR_BYTES:
            return vector
    return 1


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


def sample_kernel(logits_dtype: str, vector: int, method: str) -> str:
    return f"ftb_{method}<{LOGIT_C_TYPES[logits_dtype]}, {vector}>"


def _full_vector(dtype: str) -> int:
    return VECTOR_BYTES // np.dtype(np.float32 if dtype == "float32" else np.float16).itemsize


def kernel_names(dtype: str) -> list[str]:
    """Every template instance the launchers can use for model dtype `dtype` (sampling: logits
    in `dtype` or float32)."""
    if dtype not in C_TYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}")
    full = _full_vector(dtype)
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
    names += [
        sample_kernel(logits, v, method)
        for logits in (dtype, "float32")
        for v in (_full_vector(logits), 1)
        for method in METHODS
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
    _check_ndim(op, "table", table, 2)
    dtype = _model_dtype(op, "table", table)
    vocab, hidden = table.shape
    _check(op, "table", table, (vocab, hidden), [dtype])
    vocab_start = _integer(op, "vocab_start", vocab_start, 0, INT32_MAX - vocab)
    _check_ndim(op, "tokens", tokens, 1)
    count = tokens.shape[0]
    _check(op, "tokens", tokens, (count,), ["int32"])
    _check(op, "residual", residual, (count, hidden), ["float32"])
    if pos_table is not None:
        _check_ndim(op, "pos_table", pos_table, 2)
        _check(op, "pos_table", pos_table, (pos_table.shape[0], hidden), [dtype])
        _check(op, "positions", positions, (count,), ["int32"])
    if count == 0:
        return
    vector = _vector(hidden, 2, [table, pos_table, residual], (8,))
    name = embed_kernel(dtype, vector, pos_table is not None)
    threads = _threads(math.ceil(hidden / vector), BLOCK_THREADS)
    args = (
        _pointer(tokens), _pointer(positions if pos_table is not None else None),
        _pointer(table), _pointer(pos_table), _pointer(residual), np.int32(hidden),
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
    _check_ndim(op, "residual", residual, 2)
    count, hidden = residual.shape
    _check(op, "residual", residual, (count, hidden), ["float32"])
    _check_ndim(op, "weight", weight, 1)
    dtype = _model_dtype(op, "weight", weight)
    _check(op, "weight", weight, (hidden,), [dtype])
    if kind == "layernorm":
        _check(op, "bias", bias, (hidden,), [dtype])
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
        _check(op, f"deltas[{index}]", delta, (count, hidden), [dtype])
    for index, delta_bias in enumerate(delta_biases):
        if delta_bias is not None:
            _check(op, f"delta_biases[{index}]", delta_bias, (hidden,), [dtype])
    if rows is None:
        out_rows = count
    else:
        _check_ndim(op, "rows", rows, 1)
        out_rows = rows.shape[0]
        _check(op, "rows", rows, (out_rows,), ["int32"])
    _check(op, "out", out, (out_rows, hidden), [dtype])
    if out_rows == 0:
        return
    present_biases = [b for b in delta_biases if b is not None]
    arrays = [residual, out, weight, bias, *deltas, *present_biases]
    vector = _vector(hidden, 2, arrays, (8,))
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
        _pointer(residual), _pointer(out), _pointer(weight), _pointer(bias),
        *[_pointer(d) for d in padded], *[_pointer(b) for b in padded_biases],
        _pointer(rows), np.int32(hidden), np.float32(eps), np.int32(kind == "rmsnorm"),
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
    q_heads = _integer(op, "num_q_heads", num_q_heads, 1, INT32_MAX)
    kv_heads = _integer(op, "num_kv_heads", num_kv_heads, 1, INT32_MAX)
    dim = _integer(op, "head_dim", head_dim, 1, INT32_MAX)
    rotary = _integer(op, "rotary_dim", rotary_dim, 0, dim)
    if rotary % 2:
        raise InvalidInputError(f"{op}: rotary_dim must be even, got {rotary}")
    if rotary and not (
        isinstance(rotary_base, (int, float, np.floating))
        and math.isfinite(rotary_base)
        and rotary_base > 0
    ):
        raise InvalidInputError(f"{op}: rotary_base must be a positive number, got {rotary_base!r}")
    _check_ndim(op, "qkv", qkv, 2)
    dtype = _model_dtype(op, "qkv", qkv)
    count = qkv.shape[0]
    width = (q_heads + 2 * kv_heads) * dim
    _check(op, "qkv", qkv, (count, width), [dtype])
    if bias is not None:
        _check(op, "bias", bias, (width,), [dtype])
    _check(op, "q_out", q_out, (count, q_heads, dim), [dtype])
    _check_ndim(op, "k_cache", k_cache, 4)
    batch, _, max_length, _ = k_cache.shape
    cache_shape = (batch, kv_heads, max_length, dim)
    _check(op, "k_cache", k_cache, cache_shape, [dtype])
    _check(op, "v_cache", v_cache, cache_shape, [dtype])
    _check(op, "seq_ids", seq_ids, (count,), ["int32"])
    _check(op, "positions", positions, (count,), ["int32"])
    if inv_freqs is not None:
        _check(op, "inv_freqs", inv_freqs, (rotary // 2,), ["float32"])
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
    vector = _vector(dim, 2, [qkv, bias, q_out, k_cache, v_cache], usable)
    if vector not in usable:
        raise InvalidInputError(
            f"{op}: no vector width fits head_dim {dim}, rotary_dim {rotary} and the arrays' "
            f"alignment (interleaved pairs need 4-byte aligned arrays; head_dim / width <= "
            f"{BLOCK_THREADS})"
        )
    chunks = dim // vector
    slots = max(1, min(q_heads + 2 * kv_heads, BLOCK_THREADS // chunks))
    args = (
        _pointer(qkv), _pointer(bias), _pointer(q_out), _pointer(k_cache), _pointer(v_cache),
        _pointer(seq_ids), _pointer(positions), _pointer(inv_freqs if rotary else None),
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
    _check_ndim(op, "x", x, 2)
    dtype = _model_dtype(op, "x", x)
    count, width = x.shape
    if gated and width % 2:
        raise InvalidInputError(f"{op}: gated x must have an even width [T, 2F], got {width}")
    ffn = width // 2 if gated else width
    _check(op, "x", x, (count, width), [dtype])
    if bias is not None:
        _check(op, "bias", bias, (width,), [dtype])
    _check(op, "out", out, (count, ffn), [dtype])
    if count == 0 or ffn == 0:
        return
    same = out.data.ptr == x.data.ptr and not gated
    if not same and _overlaps(out, x):
        raise InvalidInputError(
            f"{op}: out must be x itself or not overlap it" + (" (gated: never x)" if gated else "")
        )
    vector = _vector(ffn, 2, [x, bias, out], (8,))
    threads = _threads(math.ceil(ffn / vector), BLOCK_THREADS)
    grid = (count, math.ceil(ffn / vector / threads))
    args = (_pointer(x), _pointer(bias), _pointer(out), np.int32(ffn))
    _launch(activation_kernel(dtype, vector, activation, bool(gated)), grid, (threads,), args)


def sample(
    logits: Any,
    tokens: Any,
    *,
    vocab_size: int,
    method: str,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    step: Any = 0,
    finished: Any = None,
    stop_tokens: Any = None,
    pad_token: int = 0,
) -> None:
    """Choose tokens[b] from logits[b, :vocab_size] for every row b, on the GPU.

    logits: DT or float32 [B, Vpad] (columns >= vocab_size are padding, never chosen); tokens:
    int32 [B]. method "greedy": the lowest index of the largest logit. method "sample": divide
    by temperature, keep the top_k largest (if top_k > 0; ties at the k-th value all kept), then
    the smallest top set with probability >= top_p (if top_p < 1; ties all kept), and draw from
    the renormalised probabilities with Philox keyed by (seed, step, b): the same inputs give
    the same tokens. step: an int, or a CuPy int64 array of shape (1,) read by the kernel (so a
    captured CUDA graph can advance it between replays). finished: uint8 or bool [B] or None;
    finished rows get pad_token and stay finished; with stop_tokens (int32 [S], needs finished)
    a row that emits a stop token becomes finished. NaN logits are never chosen.
    """
    op = "sample"
    if method not in METHODS:
        raise InvalidInputError(f"{op}: method must be one of {METHODS}, not {method!r}")
    _check_ndim(op, "logits", logits, 2)
    batch, padded_vocab = logits.shape
    logits_dtype = _dtype(logits)
    _check(op, "logits", logits, (batch, padded_vocab), list(LOGIT_C_TYPES))
    vocab = _integer(op, "vocab_size", vocab_size, 1, max(1, padded_vocab))
    _check(op, "tokens", tokens, (batch,), ["int32"])
    if finished is not None:
        _check(op, "finished", finished, (batch,), ["uint8", "bool"])
    stops = 0
    if stop_tokens is not None:
        if finished is None:
            raise InvalidInputError(f"{op}: stop_tokens need a finished array to mark rows in")
        _check_ndim(op, "stop_tokens", stop_tokens, 1)
        stops = _integer(op, "number of stop tokens", stop_tokens.shape[0], 1, INT32_MAX)
        _check(op, "stop_tokens", stop_tokens, (stops,), ["int32"])
    pad = _integer(op, "pad_token", pad_token, -(2**31), INT32_MAX)
    settings = ()
    if method == "sample":
        if vocab > MAX_SAMPLE_VOCAB:
            raise InvalidInputError(
                f"{op}: sampling takes vocab_size <= {MAX_SAMPLE_VOCAB}, got {vocab} (greedy "
                "takes any)"
            )
        settings = _sampling_args(op, temperature, top_k, top_p, seed, step)
    if batch == 0:
        return
    args = (
        _pointer(logits), np.int32(padded_vocab), np.int32(vocab), _pointer(tokens),
        _pointer(finished), _pointer(stop_tokens), np.int32(stops), np.int32(pad), *settings,
    )  # fmt: skip
    threads = SAMPLE_THREADS if method == "sample" else GREEDY_THREADS
    full = _full_vector(logits_dtype)
    vector = _vector(padded_vocab, VECTOR_BYTES // full, [logits], (full,))
    _launch(sample_kernel(logits_dtype, vector, method), (batch,), (threads,), args)


def _sampling_args(
    op: str, temperature: float, top_k: int, top_p: float, seed: int, step: Any
) -> tuple:
    if not (
        isinstance(temperature, (int, float, np.floating))
        and math.isfinite(temperature)
        and temperature > 0
    ):
        raise InvalidInputError(
            f"{op}: temperature must be a finite number > 0 (use method='greedy' for 0), "
            f"got {temperature!r}"
        )
    k = _integer(op, "top_k", top_k, 0, INT32_MAX)
    if not (isinstance(top_p, (int, float, np.floating)) and 0 < top_p <= 1):
        raise InvalidInputError(f"{op}: top_p must be in (0, 1], got {top_p!r}")
    key = _integer(op, "seed", seed, 0, 2**64 - 1)
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        counter, step_array = _integer(op, "step", step, 0, 2**64 - 1), None
    else:
        if getattr(step, "shape", None) != (1,) or _dtype(step) != "int64":
            raise InvalidInputError(
                f"{op}: step must be an int or a device int64 array of shape (1,), got {step!r}"
            )
        counter, step_array = 0, step
    return (
        np.float32(1.0 / temperature), np.int32(k), np.float64(top_p), np.uint64(key),
        np.uint64(counter), _pointer(step_array),
    )  # fmt: skip
