"""Following a decoder step on the CPU: which kernel, GEMM and collective it launches, in which
order, on which rows and stream, without a GPU.

`FakeCupy` stands in for CuPy: arrays are NumPy arrays; streams and events are plain objects
whose `record` and `wait_event` calls are logged with the stream they ran on (`FakeCupy.log`),
as are `cupy.add` calls. Inside `installed()` it is `sys.modules["cupy"]`, so every deferred
`import cupy` of the package gets it. `recorded_step` runs one step of a decoder built there
with its `ops` doing nothing but being recorded (`DecoderOps.recorded`, the hook the
per-operation breakdown uses) and returns what it launched as readable lines (`describe`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from ftbench.kernels import attention
from ftbench.kernels.streams import branch_stream
from ftbench.runtime.model import DecoderOps, StepInputs

FREE_BYTES = 1 << 50


class FakeEvent:
    def __init__(self, stream: FakeStream | None = None) -> None:
        self.stream = stream


class FakeStream:
    """A stream that names itself; `with stream:` makes it the current one."""

    def __init__(self, fake: FakeCupy, name: str) -> None:
        self.fake, self.name, self.ptr = fake, name, id(self)

    def record(self) -> FakeEvent:
        self.fake.log.append(("record", self.name))
        return FakeEvent(self)

    def wait_event(self, event: FakeEvent) -> None:
        self.fake.log.append(("wait_event", self.name, event.stream.name))

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> FakeStream:
        self.fake.current.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fake.current.pop()


class FakeDevice:
    attributes = {"MultiProcessorCount": 132, "MaxSharedMemoryPerBlockOptin": 232448}

    def __init__(self, device_id: int = 0) -> None:
        self.id = device_id

    def synchronize(self) -> None:
        pass

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class FakeCupy(types.ModuleType):
    """The parts of CuPy the runtime's host code uses, on NumPy."""

    ndarray = np.ndarray
    float16, float32, int32, int64, uint8, uint32 = (
        np.float16, np.float32, np.int32, np.int64, np.uint8, np.uint32,
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__("cupy")
        self.log: list[tuple] = []
        self.current = [FakeStream(self, "main")]
        fake = self
        stream_count = [0]

        def new_stream(non_blocking: bool = False) -> FakeStream:
            stream_count[0] += 1
            return FakeStream(fake, f"stream{stream_count[0]}")

        self.cuda = types.SimpleNamespace(
            Device=FakeDevice,
            Stream=new_stream,
            Event=FakeEvent,
            get_current_stream=lambda: fake.current[-1],
            runtime=types.SimpleNamespace(memGetInfo=lambda: (FREE_BYTES, FREE_BYTES)),
        )

    @staticmethod
    def asarray(array: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(array, dtype)

    @staticmethod
    def asnumpy(array: Any) -> np.ndarray:
        return np.asarray(array)

    @staticmethod
    def empty(shape: Any, dtype: Any = np.float32) -> np.ndarray:
        return np.zeros(shape, dtype)

    @staticmethod
    def zeros(shape: Any, dtype: Any = np.float32) -> np.ndarray:
        return np.zeros(shape, dtype)

    def add(self, a: Any, b: Any, out: Any = None) -> np.ndarray:
        self.log.append(("add", self.current[-1].name, a, b, out))
        return np.add(a, b, out=out)


@contextlib.contextmanager
def installed() -> Iterator[FakeCupy]:
    """Inside, `import cupy` gives a fresh FakeCupy; the device facts CuPy gives and the kernel
    modules keep (the branch stream, the SM count) are made from it. CuPy and those are put back
    on exit, so a GPU run of the suite goes on with the real ones."""
    fake, saved = FakeCupy(), sys.modules.get("cupy")
    sys.modules["cupy"] = fake
    _forget_devices()
    try:
        yield fake
    finally:
        _forget_devices()
        if saved is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved


def _forget_devices() -> None:
    branch_stream.cache_clear()
    attention._sm_count.cache_clear()


class FakeCommunicator:
    """A communicator of `world_size` ranks whose calls do nothing (the decoder's `ops` record
    them)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def all_reduce(self, array: Any) -> None:
        pass

    def all_gather(self, send: Any, recv: Any) -> None:
        pass

    def send(self, array: Any, peer: int) -> None:
        pass

    def recv(self, array: Any, peer: int) -> None:
        pass


def decode_step(lengths: list[int]) -> StepInputs:
    """A decode step of one token per sequence, sequence b with lengths[b] tokens cached."""
    batch, past = len(lengths), np.asarray(lengths, np.int32)
    rows = np.arange(batch, dtype=np.int32)
    return StepInputs(
        tokens=rows + 7, seq_ids=rows, positions=past,
        cu_seqlens=np.arange(batch + 1, dtype=np.int32), past_lens=past.copy(),
        lengths=past + 1, last_rows=rows.copy(), decode=True, max_q_len=1,
    )  # fmt: skip


def recorded_step(decoder: Any, step: StepInputs) -> tuple[list[str], Any]:
    """(what `decoder.forward(step)` launched, as `describe` lines in launch order, with the
    branch stream's fork and join and CuPy's own calls among them; what forward returned).
    The decoder must have been built inside `installed()`."""
    fake = sys.modules["cupy"]
    ops = decoder.ops

    def record(name: str, args: tuple, kwargs: dict) -> None:
        fake.log.append((name, fake.current[-1].name, args, kwargs))

    decoder.ops = silent(ops).recorded(record)
    fake.log.clear()
    try:
        result = decoder.forward(step)
    finally:
        decoder.ops = ops
    return [describe(decoder, step, entry) for entry in fake.log], result


def silent(ops: Any) -> Any:
    """`ops` whose kernels and GEMMs do nothing (communicator calls stay: the fakes' do nothing)."""
    kernels = {field.name for field in dataclasses.fields(DecoderOps)}
    return dataclasses.replace(ops, **{name: lambda *args, **kwargs: None for name in kernels})


def describe(decoder: Any, step: StepInputs, entry: tuple) -> str:
    """One logged launch as a line: "gemm layers.0.qkv", "add mlp_out + layers.0.ffn_down.bias,
    norm layers.1.ln1 of residual into normed", "all_reduce attention_out", ...; "branch: " in
    front of what ran on another stream than the main one (the branch stream)."""
    name, stream, *rest = entry
    where = "" if stream == "main" else "branch: "
    if name == "record":
        return where + "record"
    if name == "wait_event":
        return where + f"wait for {'main' if rest[0] == 'main' else 'branch'}"
    if name == "add":
        a, b, out = (_name(decoder, step, array) for array in rest)
        return f"{where}cupy.add {a} + {b} into {out}"
    args, kwargs = rest
    return where + _describe_call(decoder, step, name, args, kwargs)


def _describe_call(decoder: Any, step: StepInputs, name: str, args: tuple, kwargs: dict) -> str:
    label = lambda array: _name(decoder, step, array)  # noqa: E731
    if name == "linear":
        return f"gemm {label(args[1]).removesuffix('.weight')}"
    if name == "embed":
        positions = " + positions" if args[3] is not None else ""
        start = f" from token {args[5]}" if len(args) > 5 and args[5] else ""
        return f"embed{start}{positions} into {label(args[4])}"
    if name == "residual_norm":
        norm = label(args[2]).removesuffix(".weight")
        rows = "" if kwargs.get("rows") is None else f" at {label(kwargs['rows'])}"
        normed = f"norm {norm} of {label(args[0])}{rows} into {label(args[1])}"
        added = [label(a) for a in kwargs.get("deltas", ())]
        added += [label(b) for b in kwargs.get("delta_biases", ()) if b is not None]
        return f"add {' + '.join(added)}, {normed}" if added else normed
    if name == "all_reduce":
        return f"all_reduce {label(args[0])}"
    if name in ("send", "recv"):
        return f"{name} {label(args[0])} {'to' if name == 'send' else 'from'} stage {args[1]}"
    return name


def _name(decoder: Any, step: StepInputs, array: Any) -> str:
    """The decoder buffer, weight or step input `array` is (or is a view of)."""
    owner = array if array.base is None else array.base
    named = [*vars(decoder).items(), *decoder.weights.named_tensors().items()]
    named += [(field.name, getattr(step, field.name)) for field in dataclasses.fields(step)]
    return next(key for key, value in named if value is array or value is owner)
