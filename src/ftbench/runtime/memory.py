"""How much GPU memory a decoder needs, computed before anything is allocated.

The runtime allocates three things once (FasterTransformer's memory plan): the weights, the KV
cache for `batch` sequences of up to `max_seq_len` tokens, and one set of activation buffers
sized for the largest step (`max_tokens` tokens at once, a whole prefill) and reused by every
layer. `Footprint` adds them up; `check_fits` refuses a request that cannot fit and names the
largest batch and the longest length that would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from ftbench.dtypes import EIGHT_BIT_DTYPES, RUNTIME_DTYPES, dtype_info
from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import SCALE_DTYPE
from ftbench.kernels.attention import decode_workspace_floats
from ftbench.kernels.gemv import MAX_M as WEIGHT_ONLY_MAX_M
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.quantize import quantisable
from ftbench.runtime.weights import weight_shapes

GIB = 1024**3
# cuBLAS/cuBLASLt/split-K workspaces, CUDA graphs and the allocator's rounding: kept free.
RESERVE_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class Footprint:
    """Bytes one rank allocates: weights, KV cache, activation buffers."""

    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + RESERVE_BYTES

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "reserve": RESERVE_BYTES, "total": self.total}

    def describe(self) -> str:
        return (
            f"{self.total / GIB:.2f} GiB (weights {self.weights / GIB:.2f}, KV cache "
            f"{self.kv_cache / GIB:.2f}, activations {self.activations / GIB:.2f}, reserve "
            f"{RESERVE_BYTES / GIB:.2f})"
        )


def footprint(
    spec: ModelSpec,
    batch: int,
    max_seq_len: int,
    dtype: str,
    tp: int = 1,
    max_tokens: int | None = None,
    layers: range | None = None,
    weights: str | None = None,
    activations: str | None = None,
) -> Footprint:
    """The bytes one rank of `spec` needs for `batch` sequences of up to `max_seq_len` tokens,
    with steps of up to `max_tokens` tokens (default batch * max_seq_len); with `layers`, one
    rank of the pipeline stage holding those layers. `weights` "int8" or "fp8": the transformer
    layers' linears hold one byte a weight and one fp32 scale per output row
    (`runtime.quantize`); everything else stays in `dtype`. `activations` "fp8" (W8A8): steps of
    more than 16 tokens quantise each linear's input into E4M3 scratch (`gemm.dispatch`)."""
    if dtype not in RUNTIME_DTYPES:
        raise InvalidInputError(f"the runtime runs fp16 or bf16, not {dtype!r}")
    if weights is not None and weights not in EIGHT_BIT_DTYPES:
        raise InvalidInputError(
            f"8-bit weights are {' or '.join(EIGHT_BIT_DTYPES)}, not {weights!r}"
        )
    if batch < 1 or max_seq_len < 1:
        raise InvalidInputError(f"batch and length must be positive, got {batch} x {max_seq_len}")
    element = dtype_info(dtype).bytes
    tokens = batch * max_seq_len if max_tokens is None else max_tokens
    rank = rank_shapes(spec, tp)
    shapes = weight_shapes(spec, tp, layers)
    if spec.tie_word_embeddings and "embed" in shapes and "lm_head.weight" in shapes:
        shapes.pop("lm_head.weight")
    weight_bytes = sum(
        _weight_bytes(name, shape, element, weights) for name, shape in shapes.items()
    )
    q_width, kv_width = rank.q_width, rank.kv_width
    kv_cache = batch * max_seq_len * kv_bytes_per_token(spec, dtype, tp, layers)
    ffn = rank.ffn_hidden_size
    up_width = rank.ffn_up_rows
    per_token = (
        4 * spec.hidden_size  # fp32 residual stream
        + element
        * (
            3 * spec.hidden_size  # normed input, attention output, MLP output
            + q_width + 2 * kv_width  # QKV projection
            + 2 * q_width  # rotated queries, attention context
            + up_width + (ffn if spec.gated_ffn else 0)  # FFN up (+ gated product)
        )
        + 3 * 4  # token ids, positions, sequence ids
    )  # fmt: skip
    per_sequence = (
        element * (spec.hidden_size + rank.lm_head_rows)  # last hidden state, logits
        + 8 * 4  # lengths, offsets, tokens, flags
    )
    decode_partials = 4 * decode_workspace_floats(
        batch, rank.q_heads, spec.head_dim, max_seq_len, num_kv_heads=rank.kv_heads
    )
    # A step of more tokens than the weight-only kernels take dequantises each 8-bit weight
    # into a scratch buffer before its GEMM (`gemm.dispatch`): one per stream slot, two slots.
    dequantised = 0
    if weights is not None and tokens > WEIGHT_ONLY_MAX_M:
        linears = [shape for name, shape in shapes.items() if quantisable(name)]
        if activations == "fp8":  # E4M3 codes of the widest input and a scale per token
            dequantised = 2 * tokens * (max(shape[1] for shape in linears) + 4)
        else:
            dequantised = 2 * max(_count(shape) for shape in linears) * element
    return Footprint(
        weight_bytes, kv_cache,
        tokens * per_token + batch * per_sequence + decode_partials + dequantised,
    )  # fmt: skip


def _weight_bytes(name: str, shape: tuple[int, ...], element: int, weights: str | None) -> int:
    """Bytes of the array `name`: 8-bit codes and fp32 row scales for a quantised linear's
    weight (`quantize.quantisable`), else `element` bytes a value."""
    if weights is None or not quantisable(name):
        return _count(shape) * element
    return _count(shape) * dtype_info(weights).bytes + shape[0] * dtype_info(SCALE_DTYPE).bytes


def kv_bytes_per_token(
    spec: ModelSpec, dtype: str, tp: int = 1, layers: range | None = None
) -> int:
    """The KV-cache bytes one token takes on one rank: a key and a value of the rank's kv_width
    per layer (of the stage holding `layers`, or all), in `dtype`."""
    stage_layers = spec.num_layers if layers is None else len(layers)
    return stage_layers * 2 * rank_shapes(spec, tp).kv_width * dtype_info(dtype).bytes


def check_fits(
    spec: ModelSpec,
    batch: int,
    max_seq_len: int,
    dtype: str,
    free_bytes: int,
    tp: int = 1,
    max_tokens: int | None = None,
    layers: range | None = None,
    weights: str | None = None,
    activations: str | None = None,
) -> Footprint:
    """The footprint, or an error naming the largest batch and length that fit in `free_bytes`."""
    need = footprint(spec, batch, max_seq_len, dtype, tp, max_tokens, layers, weights, activations)
    if need.total <= free_bytes:
        return need

    def fits(b: int, length: int) -> bool:
        tokens = None if max_tokens is None else min(max_tokens, b * length)
        plan = footprint(spec, b, length, dtype, tp, tokens, layers, weights, activations)
        return plan.total <= free_bytes

    best_batch = largest_fitting(lambda b: fits(b, max_seq_len), batch)
    best_length = largest_fitting(lambda length: fits(batch, length), max_seq_len)
    options = []
    if best_batch:
        options.append(f"the largest batch that fits at {max_seq_len} tokens is {best_batch}")
    if best_length:
        options.append(f"the longest length that fits at batch {batch} is {best_length} tokens")
    advice = "; ".join(options) or "the weights alone do not fit: use more GPUs (--tp, --pp)"
    formats = dtype if weights is None else f"{dtype} with {weights} weights"
    raise InvalidInputError(
        f"{spec.name} {formats} tp={tp}, batch {batch} x {max_seq_len} tokens needs "
        f"{need.describe()}, but {free_bytes / GIB:.2f} GiB are free: {advice}"
    )


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def largest_fitting(fits: Callable[[int], bool], upper: int) -> int:
    """The largest n in 1..upper-1 with fits(n) (fits is monotone), or 0 if none."""
    low, high = 0, upper - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low if low and fits(low) else 0
