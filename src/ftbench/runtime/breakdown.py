"""Where a step's time goes: every kernel of one decode step or prefill, timed where it runs.

`breakdown` captures `Decoder.forward` as one CUDA graph with a CUDA event recorded after every
operation, replays the graph a number of times and reads the time between consecutive events:
each operation's GPU time inside the real step, launch gaps included, so the parts add up to the
whole. The operations are the entries of the decoder's `ops` (`model.DecoderOps`: every kernel
launcher, and the GEMM dispatch's `linear`, called "gemm" here): for the captured step the
decoder's `ops` is `ops.recorded(...)`, whose entries record the event after each call, and its
own `ops` is put back after. CuPy's element-wise calls are not entries: their time counts in
the next operation's (or in none after the last).

Operations are grouped by their place in the layer pattern (layer i's run from its QKV GEMM,
the GEMM with that layer's QKV weight, to the residual add and norm that open layer i+1),
summed over the layers, and set against their floor: bytes at the HBM read bandwidth or FLOPs
at the GEMM peak, whichever is slower (GEMM: A, B and C once; decode attention: the K/V
actually read; the rotary kernel: QKV in, Q and the new K/V out; the embedding: its tokens'
rows in, the residual out; other kernels: their array arguments once).

A `RankDecoder`'s communicator calls (tensor-parallel `all_reduce` and `all_gather`, a pipeline
stage's `send` and `recv`: `rank.RankOps` entries) are operations too, with no floor:
`communication_ms` sums them, the time a rank's step spends in communication, waiting for its
peers included (for a pipeline stage, mostly the wait for the stages before it).

With micro-batches (`RankDecoder(micro_batches=m)`) every layer runs m times a step: its places
count m x layers operations, each attention's floor counts its micro-batch's sequences
(`rank.step_micro_batches`), and a micro-batch's receive (or embedding) opens a "start" place
again.

A parallel block's attention and MLP, which a real step overlaps on two streams
(`Decoder._attention_beside_mlp`), run one after the other here (the decoder's
`overlap_branches` off): each operation's own time is what the table shows, so the parts add
up to more than the overlapped step.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ftbench.errors import GpuError
from ftbench.runtime.model import Decoder, StepInputs
from ftbench.runtime.pipeline import MicroBatch
from ftbench.runtime.rank import RankDecoder, step_micro_batches

REPLAYS = 20
COMMUNICATION = ("all_reduce", "all_gather", "send", "recv")
# The operations a micro-batch's pass opens with: on the first pipeline stage, else received.
MICRO_BATCH_OPENERS = ("embed", "recv")
CU_EVENT_RECORD_EXTERNAL = 1


@functools.cache
def _record_with_flags() -> Callable:
    library = ctypes.CDLL("libcuda.so.1")
    function = library.cuEventRecordWithFlags
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _record_node(event: Any) -> None:
    """Record `event` on the current stream as an event-record node of the graph being
    captured. A plain record during capture only orders streams; the graph would hold no node
    and the event no time."""
    import cupy

    status = _record_with_flags()(
        event.ptr, cupy.cuda.get_current_stream().ptr, CU_EVENT_RECORD_EXTERNAL
    )
    if status != 0:
        raise GpuError(f"cuEventRecordWithFlags failed with CUresult {status}")


@dataclass(frozen=True)
class OperationTime:
    """One place in the step's pattern: its kernel, how often a step runs it, its summed time
    per step (median over replays) and floor, and their ratio."""

    name: str
    per_step: int
    step_ms: float
    floor_ms: float
    roofline_fraction: float
    bytes: int
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Operation:
    name: str
    micro_batch: int
    layer: int | None
    bytes: int
    flops: int
    event: Any = None


def _array_bytes(values: Any) -> int:
    total = 0
    for value in values:
        if hasattr(value, "nbytes") and hasattr(value, "data"):
            total += int(value.nbytes)
        elif isinstance(value, (tuple, list)):
            total += _array_bytes(value)
    return total


def _bytes_and_flops(
    decoder: Decoder,
    name: str,
    args: tuple,
    kwargs: dict,
    lengths: list[int],
    token_count: int | None = None,
) -> tuple[int, int]:
    """Bytes moved and FLOPs of one operation; `lengths`: the cached tokens of each sequence
    of its micro-batch, `token_count`: the micro-batch's tokens in this step (None: every row
    of the attention's q)."""
    spec, rank = decoder.spec, decoder.rank
    if name == "embed":  # the rows of its tokens (and positions), not the whole table
        tokens, _, table, positions, residual = args[:5]
        rows = 1 if positions is None else 2
        return int(rows * tokens.size * table.shape[1] * table.itemsize + residual.nbytes), 0
    if name == "decode_attention":
        return 2 * sum(lengths) * rank.kv_heads * spec.head_dim * 2, 0
    if name == "qkv_rotary":
        qkv, _, q_out = args[:3]
        written = 2 * qkv.shape[0] * rank.kv_heads * spec.head_dim * 2
        return int(qkv.nbytes + q_out.nbytes + written), 0
    if name == "context_attention":
        pairs = sum(n * (n + 1) // 2 for n in lengths)
        kv = 2 * sum(lengths) * rank.kv_heads * spec.head_dim * 2
        # q and out hold the step's rows up to the micro-batch's last; it reads and writes
        # those of its own tokens.
        q = args[0]
        rows = q.shape[0] if token_count is None else token_count
        q_bytes = q.nbytes // max(q.shape[0], 1) * rows
        return int(2 * q_bytes + kv), 4 * pairs * rank.q_heads * spec.head_dim
    return _array_bytes(args) + _array_bytes(kwargs.values()), 0


def _micro_batches(decoder: Decoder, step: StepInputs) -> list[MicroBatch]:
    """The micro-batches `decoder` runs `step` in (a one-GPU `Decoder`: one, the whole step)."""
    count = decoder.micro_batches if isinstance(decoder, RankDecoder) else 1
    return step_micro_batches(step, count)


@contextmanager
def _timed_operations(decoder: Decoder, step: StepInputs, lengths: list[int]):
    """Inside: every entry of `decoder.ops` runs, then records an event (`_Operation`)."""
    import cupy

    operations: list[_Operation] = []
    parts = _micro_batches(decoder, step)
    qkv_weights = {id(layer.qkv.weight) for layer in decoder.weights.layers}
    # Where the step is: micro-batch and layer (None: before the micro-batch's first layer).
    where: dict[str, Any] = {"micro_batch": -1, "layer": None}

    def record(name: str, args: tuple, kwargs: dict) -> None:
        if name in MICRO_BATCH_OPENERS:
            where["micro_batch"], where["layer"] = where["micro_batch"] + 1, None
        if name == "linear" and id(args[1]) in qkv_weights:
            where["layer"] = 0 if where["layer"] is None else where["layer"] + 1
        part = parts[where["micro_batch"]]
        if name == "linear":
            name, (moved, flops) = "gemm", _gemm_sizes(*args)
        elif name in COMMUNICATION:
            moved, flops = 0, 0
        else:
            part_lengths = [lengths[b] for b in part.sequences]
            moved, flops = _bytes_and_flops(
                decoder, name, args, kwargs, part_lengths, len(part.tokens)
            )
        operation = _Operation(
            name, where["micro_batch"], where["layer"], moved, flops, cupy.cuda.Event()
        )
        _record_node(operation.event)
        operations.append(operation)

    ops = decoder.ops
    decoder.ops = ops.recorded(record)
    decoder.overlap_branches = False  # one operation after another, or the events mean nothing
    try:
        yield operations
    finally:
        decoder.ops = ops
        decoder.overlap_branches = True


def _gemm_sizes(x: Any, weight: Any, out: Any, scale: Any = None) -> tuple[int, int]:
    """Bytes (A, B, an 8-bit B's scales and C once) and FLOPs of out = x @ weight^T."""
    moved = x.nbytes + weight.nbytes + out.nbytes + (0 if scale is None else scale.nbytes)
    return int(moved), 2 * x.shape[0] * weight.shape[0] * x.shape[1]


def breakdown(
    decoder: Decoder, step: StepInputs, bandwidth: float, peak_flops: float,
    replays: int = REPLAYS,
) -> tuple[list[OperationTime], float]:  # fmt: skip
    """(the step's operations by place in the pattern, the whole step's median ms), measured
    by replaying one captured graph of the step (see the module docstring). The step runs once
    eagerly first (kernels compiled, GEMMs resolved); it may overwrite the KV-cache slots of its
    own tokens, nothing else."""
    import cupy

    decoder.wait("the step before its breakdown")
    lengths = step.lengths.get().tolist()  # before the capture: no host copies inside it
    stream = cupy.cuda.Stream(non_blocking=True)
    stream.wait_event(cupy.cuda.get_current_stream().record())
    with stream:
        decoder.forward(step)
        start = cupy.cuda.Event()
        stream.begin_capture()
        try:
            _record_node(start)
            with _timed_operations(decoder, step, lengths) as operations:
                decoder.forward(step)
        finally:
            graph = stream.end_capture()
        samples = []
        for _ in range(replays + 1):
            graph.launch(stream)
            decoder.wait("a replay of the step's breakdown")
            marks = [start] + [operation.event for operation in operations]
            samples.append([cupy.cuda.get_elapsed_time(a, b) for a, b in itertools.pairwise(marks)])
    per_operation = np.median(np.array(samples[1:]), axis=0)
    return _by_place(decoder, operations, per_operation, bandwidth, peak_flops), float(
        per_operation.sum()
    )


def _by_place(decoder, operations, times, bandwidth, peak_flops) -> list[OperationTime]:
    """Sum operations at the same place of the layer pattern over the layers (and the
    micro-batches)."""
    places: dict[str, list] = {}
    position_in_layer: dict[tuple[int, int | None], int] = {}
    last_layer = len(decoder.weights.layers) - 1
    for operation, time_ms in zip(operations, times, strict=True):
        where = (operation.micro_batch, operation.layer)
        position = position_in_layer.get(where, 0)
        position_in_layer[where] = position + 1
        if operation.layer is None:
            place = f"start {position:02d} {operation.name}"
        elif operation.layer == last_layer and position >= position_in_layer.get(
            (operation.micro_batch, 0), 0
        ):
            place = f"head {position:02d} {operation.name}"
        else:
            place = f"layer {position:02d} {operation.name}"
        entry = places.setdefault(place, [0, 0.0, 0.0, operation.bytes, operation.flops])
        floor_ms = max(operation.bytes / bandwidth, operation.flops / peak_flops) * 1e3
        entry[0] += 1
        entry[1] += float(time_ms)
        entry[2] += floor_ms
    return [
        OperationTime(name, count, step_ms, floor_ms, floor_ms / step_ms, moved, flops)
        for name, (count, step_ms, floor_ms, moved, flops) in places.items()
    ]


def communication_calls(operations: list[OperationTime]) -> dict[str, dict[str, float]]:
    """Per kind of communicator call (`COMMUNICATION`) made in the step: {"calls", "ms"}, from
    `breakdown`'s places."""
    calls: dict[str, dict[str, float]] = {}
    for op in operations:
        name = op.name.rsplit(" ", 1)[-1]
        if name in COMMUNICATION:
            entry = calls.setdefault(name, {"calls": 0, "ms": 0.0})
            entry["calls"] += op.per_step
            entry["ms"] += op.step_ms
    return calls


def communication_ms(operations: list[OperationTime]) -> float:
    """The step's time in communicator calls (`COMMUNICATION`), from `breakdown`'s places."""
    return sum(entry["ms"] for entry in communication_calls(operations).values())
