"""Where a step's time goes: every kernel of one decode step or prefill, timed where it runs.

`breakdown` captures `Decoder.forward` as one CUDA graph with a CUDA event recorded after every
operation (each kernel launcher and each GEMM), replays the graph a number of times and reads the
time between consecutive events: each operation's GPU time inside the real step, launch gaps
included, so the parts add up to the whole. Operations are grouped by their place in the layer
pattern (layer i's run from its QKV GEMM to the norm that opens layer i+1), summed over the
layers, and set against their floor: bytes at the HBM read bandwidth or FLOPs at the GEMM peak,
whichever is slower (GEMM: A, B and C once; decode attention: the K/V actually read; the rotary
kernel: QKV in, Q and the new K/V out; the embedding: its tokens' rows in, the residual out;
other kernels: their array arguments once).

The communicator's calls (tensor-parallel `all_reduce` and `all_gather`, a pipeline stage's
`send` and `recv`) are operations too, with no floor: `communication_ms` sums them, the time a
rank's step spends in communication, waiting for its peers included (for a pipeline stage,
mostly the wait for the stages before it).

With micro-batches (`Decoder(micro_batches=m)`) every layer runs m times a step: its places
count m x layers operations, each attention's floor counts its micro-batch's sequences, and a
micro-batch's receive (or embedding) opens a "start" place again.

A parallel block's attention and MLP, which a real step overlaps on two streams
(`Decoder._parallel_block`), run one after the other here: each operation's own time is what
the table shows, so the parts add up to more than the overlapped step.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import itertools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ftbench.errors import GpuError
from ftbench.runtime.model import Decoder, StepInputs

KERNELS = {
    "ftbench.kernels.decoder": ("embed", "residual_norm", "qkv_rotary", "bias_act"),
    "ftbench.kernels.attention": ("context_attention", "decode_attention"),
}
REPLAYS = 20
COMMUNICATION = ("all_reduce", "all_gather", "send", "recv")
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


@contextmanager
def _timed_operations(decoder: Decoder, lengths: list[int]):
    """Inside: every launcher and GEMM of `decoder.forward` runs, then records an event."""
    import cupy

    operations: list[_Operation] = []
    # Where the step is: micro-batch, layer, the micro-batch's sequences.
    layer: dict[str, Any] = {"micro_batch": -1, "index": None, "part": None}

    def timed(name: str, run: Callable, bytes_flops: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = run(*args, **kwargs)
            moved, flops = bytes_flops(args, kwargs)
            operation = _Operation(
                name, layer["micro_batch"], layer["index"], moved, flops, cupy.cuda.Event()
            )
            _record_node(operation.event)
            operations.append(operation)
            return result

        return wrapper

    saved = []
    for module_name, names in KERNELS.items():
        module = importlib.import_module(module_name)
        for name in names:
            original = getattr(module, name)
            saved.append((module, name, original))

            def sizes(args, kwargs, name=name):
                part = layer["part"]
                return _bytes_and_flops(
                    decoder, name, args, kwargs, [lengths[b] for b in part.sequences],
                    len(part.tokens),
                )  # fmt: skip

            setattr(module, name, timed(name, original, sizes))

    def gemm_sizes(args: tuple, kwargs: dict) -> tuple[int, int]:
        x, weight, out = args
        return int(x.nbytes + weight.nbytes + out.nbytes), 2 * x.shape[0] * weight.shape[
            0
        ] * x.shape[1]

    decoder.gemm.linear = timed("gemm", decoder.gemm.linear, gemm_sizes)
    communicators = [
        (comm, name)
        for comm, names in (
            (decoder.comm, COMMUNICATION[:2]),
            (decoder.stage.comm, COMMUNICATION[2:]),
        )
        if comm is not None
        for name in names
    ]
    for comm, name in communicators:
        setattr(comm, name, timed(name, getattr(comm, name), lambda args, kwargs: (0, 0)))
    attention = decoder._attention

    def attention_of_layer(index: int, *args: Any, **kwargs: Any) -> Any:
        layer["index"] = index
        return attention(index, *args, **kwargs)

    decoder._attention = attention_of_layer
    stage_pass = decoder._stage_pass

    def pass_of_micro_batch(step: Any, part: Any, fold: bool) -> Any:
        layer["micro_batch"] += 1
        layer["index"], layer["part"] = None, part
        return stage_pass(step, part, fold)

    decoder._stage_pass = pass_of_micro_batch
    decoder.overlap_branches = False  # one operation after another, or the events mean nothing
    try:
        yield operations
    finally:
        decoder.overlap_branches = True
        for module, name, original in saved:
            setattr(module, name, original)
        del decoder.gemm.linear
        del decoder._attention
        del decoder._stage_pass
        for comm, name in communicators:
            delattr(comm, name)


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
            with _timed_operations(decoder, lengths) as operations:
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
