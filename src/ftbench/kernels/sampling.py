"""Token selection on the GPU (kernels/cuda/sampling.cu) and its launcher: `sample` picks every
row's next token from its logits, greedily or by temperature, top-k and top-p sampling.

docs/kernels/decoder.md says what the kernels do and their limits. Arrays are CuPy and
C-contiguous; logits are "DT", the model dtype (float16 or bfloat16), or float32; the kernels
compute in fp32. The launcher checks shapes, dtypes and layout before it touches the GPU and
says what it expects; then it launches on CuPy's current stream, allocating nothing and never
synchronising, so a launch can be captured in a CUDA graph once its kernel is compiled (the
random stream can advance through a device counter between replays). Kernels compile on first
use (NVRTC, one template instance per logits dtype and vector width); `prepare(dtype)` compiles
every instance for a model dtype in one run, before timing or capture.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import c_types
from ftbench.errors import InvalidInputError
from ftbench.kernels import nvrtc
from ftbench.kernels.launch_args import (
    INT32_MAX,
    VECTOR_BYTES,
    check_array,
    check_ndim,
    checked_integer,
    dtype_name,
    full_vector_width,
    pointer,
    vector_width,
)

SOURCE_PATH = Path(__file__).parent / "cuda" / "sampling.cu"
C_TYPES = c_types("fp16", "bf16")
LOGIT_C_TYPES = c_types("fp16", "bf16", "fp32")
METHODS = ("greedy", "sample")
GREEDY_THREADS = 1024
SAMPLE_THREADS = 512
MAX_SAMPLE_VOCAB = 2**20  # the weight histograms' 32-bit halves cannot overflow below this


def _launch(name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
    nvrtc.launch(nvrtc.load(SOURCE_PATH, [name])[name], grid, block, args)


def sample_kernel(logits_dtype: str, vector: int, method: str) -> str:
    return f"ftb_{method}<{LOGIT_C_TYPES[logits_dtype]}, {vector}>"


def kernel_names(dtype: str) -> list[str]:
    """Every template instance `sample` can use for model dtype `dtype` (logits in `dtype` or
    float32)."""
    if dtype not in C_TYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}")
    return [
        sample_kernel(logits, v, method)
        for logits in (dtype, "float32")
        for v in (full_vector_width(logits), 1)
        for method in METHODS
    ]


def prepare(dtype: str) -> float:
    """Compile every kernel for model dtype `dtype` on the current device in one NVRTC run (do it
    before timing or CUDA-graph capture); returns the seconds it took (0 if already loaded)."""
    return nvrtc.compile_seconds(SOURCE_PATH, kernel_names(dtype))


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
    check_ndim(op, "logits", logits, 2)
    batch, padded_vocab = logits.shape
    logits_dtype = dtype_name(logits)
    check_array(op, "logits", logits, (batch, padded_vocab), list(LOGIT_C_TYPES))
    vocab = checked_integer(op, "vocab_size", vocab_size, 1, max(1, padded_vocab))
    check_array(op, "tokens", tokens, (batch,), ["int32"])
    if finished is not None:
        check_array(op, "finished", finished, (batch,), ["uint8", "bool"])
    stops = 0
    if stop_tokens is not None:
        if finished is None:
            raise InvalidInputError(f"{op}: stop_tokens need a finished array to mark rows in")
        check_ndim(op, "stop_tokens", stop_tokens, 1)
        stops = checked_integer(op, "number of stop tokens", stop_tokens.shape[0], 1, INT32_MAX)
        check_array(op, "stop_tokens", stop_tokens, (stops,), ["int32"])
    pad = checked_integer(op, "pad_token", pad_token, -(2**31), INT32_MAX)
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
        pointer(logits), np.int32(padded_vocab), np.int32(vocab), pointer(tokens),
        pointer(finished), pointer(stop_tokens), np.int32(stops), np.int32(pad), *settings,
    )  # fmt: skip
    threads = SAMPLE_THREADS if method == "sample" else GREEDY_THREADS
    full = full_vector_width(logits_dtype)
    vector = vector_width(padded_vocab, VECTOR_BYTES // full, [logits], (full,))
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
    k = checked_integer(op, "top_k", top_k, 0, INT32_MAX)
    if not (isinstance(top_p, (int, float, np.floating)) and 0 < top_p <= 1):
        raise InvalidInputError(f"{op}: top_p must be in (0, 1], got {top_p!r}")
    key = checked_integer(op, "seed", seed, 0, 2**64 - 1)
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        counter, step_array = checked_integer(op, "step", step, 0, 2**64 - 1), None
    else:
        if getattr(step, "shape", None) != (1,) or dtype_name(step) != "int64":
            raise InvalidInputError(
                f"{op}: step must be an int or a device int64 array of shape (1,), got {step!r}"
            )
        counter, step_array = 0, step
    return (
        np.float32(1.0 / temperature), np.int32(k), np.float64(top_p), np.uint64(key),
        np.uint64(counter), pointer(step_array),
    )  # fmt: skip
