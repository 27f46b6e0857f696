"""Where a step's time goes: each kernel of one decode step or prefill, timed on its own.

`record_step` runs `Decoder.forward` once with the kernel launchers and the GEMM dispatch
replaced by recorders, so nothing is launched and every operation comes back as a closure with
its arguments. `breakdown` then times the operations of the embedding, of the first layer
(every layer runs the same kernels on the same shapes, so it stands for all of them: its times
are multiplied by the layer count) and of the head through `bench.timer.time_launch` (graph
batched; L2 flushed before each launch, as a step finds it: a layer's weights are read once per
step), and sets each against its own floor: bytes at the HBM read bandwidth or FLOPs at the GEMM
peak, whichever is slower. Bytes are those of the operation's array arguments (the K/V actually
read for decode attention); the sum of the parts against the whole step timed as one graph shows
what launch gaps cost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from ftbench.bench.timer import TimingPolicy, time_launch
from ftbench.runtime.model import Decoder, StepInputs

KERNELS = {
    "ftbench.kernels.decoder": ("embed", "residual_norm", "qkv_rotary", "bias_act"),
    "ftbench.kernels.attention": ("context_attention", "decode_attention"),
}
POLICY = TimingPolicy(warmup_ms=10.0, min_time_s=0.05, budget_s=1.0)


@dataclass(frozen=True)
class Operation:
    """One recorded kernel launch (or GEMM) of a step."""

    name: str
    layer: int | None
    launch: Callable[[], None]
    bytes: int
    flops: int


@dataclass(frozen=True)
class OperationTime:
    """An operation's time per step (times the layer count for a layer's operations) and its
    fraction of its floor."""

    name: str
    per_step: int
    median_ms: float
    step_ms: float
    floor_ms: float
    roofline_fraction: float
    bytes: int
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _nbytes(values: Any) -> int:
    total = 0
    for value in values:
        if hasattr(value, "nbytes") and hasattr(value, "data"):
            total += int(value.nbytes)
        elif isinstance(value, (tuple, list)):
            total += _nbytes(value)
    return total


@contextmanager
def record_step(decoder: Decoder):
    """Inside: `decoder.forward` records operations into the yielded list instead of running."""
    import importlib

    operations: list[Operation] = []
    layer = {"index": None}
    saved = []

    def recorder(module: Any, name: str) -> Callable:
        original = getattr(module, name)

        def record(*args: Any, **kwargs: Any) -> None:
            operations.append(
                Operation(
                    name, layer["index"], functools.partial(original, *args, **kwargs),
                    _nbytes(args) + _nbytes(kwargs.values()), 0,
                )
            )  # fmt: skip

        return record

    for module_name, names in KERNELS.items():
        module = importlib.import_module(module_name)
        for name in names:
            saved.append((module, name, getattr(module, name)))
            setattr(module, name, recorder(module, name))
    linear = decoder.gemm.linear

    def record_linear(x: Any, weight: Any, out: Any) -> None:
        m, k = x.shape
        n = weight.shape[0]
        operations.append(
            Operation(
                "gemm", layer["index"], functools.partial(linear, x, weight, out),
                int(x.nbytes + weight.nbytes + out.nbytes), 2 * m * n * k,
            )
        )  # fmt: skip

    decoder.gemm.linear = record_linear
    layer_attention = decoder._attention

    def attention_of_layer(index: int, *args: Any) -> Any:
        layer["index"] = index
        return layer_attention(index, *args)

    decoder._attention = attention_of_layer
    try:
        yield operations, layer
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
        del decoder.gemm.linear
        del decoder._attention


def _decode_attention_bytes(decoder: Decoder, lengths: Any) -> int:
    """K and V actually read by one decode step: every sequence's cached positions."""
    rank, spec = decoder.rank, decoder.spec
    element = 2
    return int(2 * int(lengths.sum()) * rank.kv_heads * spec.head_dim * element)


def _context_attention_flops(decoder: Decoder, lengths: Any) -> int:
    """QK^T and PV over the causal half of every sequence's square, all query heads."""
    causal_pairs = sum(n * (n + 1) // 2 for n in lengths.get().tolist())
    return 2 * 2 * causal_pairs * decoder.rank.q_heads * decoder.spec.head_dim


def breakdown(
    decoder: Decoder, step: StepInputs, bandwidth: float, peak_flops: float
) -> list[OperationTime]:
    """Time every distinct operation of `step` (see the module docstring).

    Operations are tagged with the layer whose attention came last before them, so layer 0's
    run from its QKV GEMM to the norm that opens layer 1: one period of the layer pattern,
    counted `num_layers` times. Before it: the embedding and the first norm; after the last
    layer's period: the head (LM-head GEMM), counted once.
    """
    with record_step(decoder) as (operations, _):
        decoder.forward(step)
    layers = decoder.spec.num_layers
    period = [op for op in operations if op.layer == 0]
    last = [op for op in operations if op.layer == layers - 1]
    chosen = [(op, 1) for op in operations if op.layer is None]
    chosen += [(op, layers) for op in period] + [(op, 1) for op in last[len(period) :]]
    times = []
    for position, (op, per_step) in enumerate(chosen):
        bytes_moved, flops = op.bytes, op.flops
        if op.name == "decode_attention":
            bytes_moved = _decode_attention_bytes(decoder, step.lengths)
        if op.name == "context_attention":
            flops = _context_attention_flops(decoder, step.lengths)
        timing = time_launch(lambda _, op=op: op.launch(), name=op.name, cache="cold",
                             policy=POLICY)  # fmt: skip
        floor_ms = max(bytes_moved / bandwidth, flops / peak_flops) * 1e3
        times.append(
            OperationTime(
                name=f"{position:02d} {op.name}", per_step=per_step,
                median_ms=timing.median_ms, step_ms=timing.median_ms * per_step,
                floor_ms=floor_ms * per_step, roofline_fraction=floor_ms / timing.median_ms,
                bytes=bytes_moved, flops=flops,
            )
        )  # fmt: skip
    return times
