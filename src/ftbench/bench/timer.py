"""The timing core: every time ftbench reports is measured by `time_launch`.

A *launch* is a Python callable that enqueues GPU work on CuPy's current stream; it takes the
index of the input set to use, so that cold-L2 timing can rotate among copies of its inputs.
Measurement policy, in named pieces with their defaults in `TimingPolicy`:

- warm-up: run the launch for at least `warmup_ms` (module loads, autotuning, clocks ramping),
  which also estimates the time of one launch;
- batching: a sample lasts about `sample_ms`; launches shorter than that are repeated inside a
  captured CUDA graph and timed together with CUDA events, so CPU launch gaps stay out of the
  kernel time (if the launch cannot be captured, the repeats are queued on the stream instead,
  and the result says so). The count comes from the warm-up, which includes host overhead, and
  is raised once the first graph samples show the device time;
- L2 mode (`l2`): "hot" reuses input set 0; "cold" rotates among input sets when they are together
  large enough to evict each other from L2 (`cold_input_sets` says how many), and otherwise
  flushes L2 (a memset over twice its size) before every single timed launch;
- stopping: sample until the bootstrap 95% confidence half-width of the median is under
  `target_rel_ci` of it, with at least `min_samples` samples over at least `min_time_s` (so
  clocks and power settle), or until `budget_s` or `max_samples` runs out;
- conditions: NVML clocks, throttle reasons, violation counters and other processes are read
  before, between chunks and after, and become flags on the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ftbench.bench.gpu_state import ConditionMonitor, Conditions
from ftbench.bench.stats import summarize
from ftbench.errors import InvalidInputError, MeasurementError, NoGpuError

# 2: the L2 mode is recorded as "l2" (schema 1 called it "cache", a name now kept for the tuned
# cache; readers of older result files accept both).
SCHEMA = 2
Launch = Callable[[int], Any]


@dataclass(frozen=True)
class TimingPolicy:
    """How a measurement is taken. The defaults suit kernels from microseconds to seconds."""

    warmup_ms: float = 50.0
    sample_ms: float = 1.0
    min_time_s: float = 0.1
    max_launches_per_sample: int = 1000
    target_rel_ci: float = 0.01
    min_samples: int = 20
    max_samples: int = 2000
    budget_s: float = 5.0
    use_graph: bool = True

    def __post_init__(self) -> None:
        if self.min_samples < 3 or self.max_samples < self.min_samples:
            raise InvalidInputError("need 3 <= min_samples <= max_samples")
        if not 0 < self.target_rel_ci < 1:
            raise InvalidInputError("target_rel_ci must lie between 0 and 1 (e.g. 0.01 for 1%)")
        if self.sample_ms <= 0 or self.budget_s <= 0 or self.warmup_ms < 0:
            raise InvalidInputError("sample_ms and budget_s must be positive, warmup_ms >= 0")
        if not 0 <= self.min_time_s <= self.budget_s:
            raise InvalidInputError("need 0 <= min_time_s <= budget_s")


@dataclass(frozen=True)
class Timing:
    """The time of one launch, with how it was measured and under which conditions."""

    name: str
    median_ms: float
    min_ms: float
    ci_low_ms: float
    ci_high_ms: float
    rel_ci_half_width: float
    rel_noise: float
    samples_ms: tuple[float, ...]
    launches_per_sample: int
    method: str
    l2: str
    input_sets: int
    converged: bool
    sampling_s: float
    conditions: Conditions
    flags: tuple[str, ...]
    capture_error: str = ""
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples_ms"] = list(self.samples_ms)
        return data


class TooSlow(MeasurementError):
    """The first timed samples exceeded the caller's `abandon_above_ms`; sampling stopped."""

    def __init__(self, name: str, launch_ms: float, limit_ms: float):
        super().__init__(f"{name}: {launch_ms:.4g} ms per launch, above {limit_ms:.4g}")
        self.launch_ms = launch_ms


def cold_input_sets(set_bytes: int, l2_bytes: int) -> int:
    """How many copies of a launch's inputs make a rotation that always misses L2.

    Between two uses of a set, the others touch (sets - 1) * set_bytes; twice the L2 size is
    enough to evict it under any replacement policy seen in practice.
    """
    if set_bytes <= 0:
        raise InvalidInputError("set_bytes must be positive to plan a cold-L2 rotation")
    return max(2, 1 + math.ceil(2 * l2_bytes / set_bytes))


# The L2 modes a timing may ask for (`choose_l2_mode` picks how "cold" is made cold).
L2_MODES = ("cold", "hot")


def choose_l2_mode(l2: str, input_sets: int, set_bytes: int, l2_bytes: int) -> str:
    """'hot', 'cold-rotate' (the sets evict each other) or 'cold-flush' (flush before each)."""
    if l2 == "hot":
        return "hot"
    if l2 not in L2_MODES:
        raise InvalidInputError(f"l2 must be 'hot' or 'cold', not {l2!r}")
    if input_sets >= 2 and (input_sets - 1) * set_bytes >= 2 * l2_bytes:
        return "cold-rotate"
    return "cold-flush"


def launches_per_sample(launch_ms: float, policy: TimingPolicy, input_sets: int) -> int:
    """Launches batched into one sample: enough to last `sample_ms`, a multiple of the sets.

    A multiple, so a rotation never reuses the set just used when one sample follows another.
    """
    wanted = math.ceil(policy.sample_ms / max(launch_ms, 1e-6))
    count = min(max(wanted, 1), policy.max_launches_per_sample)
    return input_sets * math.ceil(count / input_sets)


def sample_until_stable(
    take_samples: Callable[[int], list[float]],
    policy: TimingPolicy,
    after_chunk: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], bool, float]:
    """Take samples in growing chunks until the median is known to `target_rel_ci`.

    Returns (samples, converged, seconds spent). Chunks grow by half the count so far, which
    keeps the bootstrap cost small next to the sampling itself.
    """
    samples: list[float] = []
    start = clock()
    while True:
        want = max(policy.min_samples - len(samples), len(samples) // 2, 1)
        want = min(want, policy.max_samples - len(samples))
        samples.extend(take_samples(want))
        after_chunk()
        spent = clock() - start
        enough = len(samples) >= policy.min_samples and spent >= policy.min_time_s
        if enough and summarize(samples).rel_ci_half_width <= policy.target_rel_ci:
            return samples, True, spent
        if len(samples) >= policy.max_samples or spent >= policy.budget_s:
            return samples, False, spent


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise NoGpuError("timing needs CuPy: install ftbench[cu12] or ftbench[cu13]") from exc
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise NoGpuError("timing needs an NVIDIA GPU and CUDA reports none")
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise NoGpuError(f"timing needs an NVIDIA GPU: {exc}") from exc
    return cupy


def device_facts(cupy) -> tuple[int, str]:
    """(L2 size in bytes, PCI bus id) of the current CUDA device."""
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    bus_id = f"{props['pciDomainID']:04x}:{props['pciBusID']:02x}:{props['pciDeviceID']:02x}.0"
    return int(props["l2CacheSize"]), bus_id


class _Sampler:
    """Enqueues timed samples of a launch on one stream and reads them back in ms per launch."""

    def __init__(self, cupy, stream, launch: Launch, input_sets: int, l2_mode: str, l2_bytes: int):
        self.cupy, self.stream, self.launch = cupy, stream, launch
        self.l2_mode = l2_mode
        self.input_sets = input_sets if l2_mode == "cold-rotate" else 1
        self.flush_buffer = None
        if l2_mode == "cold-flush":
            self.flush_buffer = cupy.empty(2 * l2_bytes, dtype=cupy.uint8)
        self.launches = 1
        self.graph = None
        self.capture_error = ""
        self.next_set = 0

    def run_launches(self, count: int) -> None:
        for _ in range(count):
            self.launch(self.next_set)
            self.next_set = (self.next_set + 1) % self.input_sets

    def warm_up(self, policy: TimingPolicy) -> float:
        """Run for `warmup_ms`, doubling batch sizes; return the last batch's ms per launch."""
        Event = self.cupy.cuda.Event
        self.run_launches(1)
        self.stream.synchronize()
        batch, spent_ms = 1, 0.0
        while True:
            start, end = Event(), Event()
            start.record(self.stream)
            self.run_launches(batch)
            end.record(self.stream)
            end.synchronize()
            elapsed = self.cupy.cuda.get_elapsed_time(start, end)
            spent_ms += elapsed
            if spent_ms >= policy.warmup_ms or batch >= policy.max_launches_per_sample:
                return elapsed / batch
            batch *= 2

    def prepare(self, launches: int, allow_graph: bool) -> str:
        """Batch `launches` per sample: as one captured CUDA graph where possible ('graph'),
        else queued on the stream ('stream')."""
        self.launches = launches
        if launches == 1 or not allow_graph:
            return "stream"
        self.next_set = 0
        try:
            self.stream.begin_capture()
            try:
                self.run_launches(launches)
            finally:
                graph = self.stream.end_capture()
            graph.upload(self.stream)
        except Exception as exc:
            self.capture_error = f"{type(exc).__name__}: {exc}"
            self.stream.synchronize()
            return "stream"
        self.graph = graph
        return "graph"

    def take(self, count: int) -> list[float]:
        cupy = self.cupy
        events = [(cupy.cuda.Event(), cupy.cuda.Event()) for _ in range(count)]
        for index, (start, end) in enumerate(events):
            if self.flush_buffer is not None:
                cupy.cuda.runtime.memsetAsync(
                    self.flush_buffer.data.ptr,
                    index & 0xFF,
                    self.flush_buffer.nbytes,
                    self.stream.ptr,
                )
            start.record(self.stream)
            if self.graph is not None:
                self.graph.launch(self.stream)
            else:
                self.run_launches(self.launches)
            end.record(self.stream)
        events[-1][1].synchronize()
        return [cupy.cuda.get_elapsed_time(s, e) / self.launches for s, e in events]


def time_launch(
    launch: Launch,
    *,
    name: str,
    l2: str = "hot",
    input_sets: int = 1,
    set_bytes: int = 0,
    policy: TimingPolicy | None = None,
    abandon_above_ms: float | None = None,
) -> Timing:
    """Time one launch of `launch` on the current CUDA device (see the module docstring).

    For l2="cold", pass `input_sets` copies of the inputs of `set_bytes` bytes each (see
    `cold_input_sets`); with too few, L2 is flushed before every launch instead. With
    `abandon_above_ms`, a launch slower than that in its first three samples raises `TooSlow`
    (tuners use it to skip hopeless candidates).
    """
    policy = policy or TimingPolicy()
    cupy = _cupy()
    if input_sets < 1:
        raise InvalidInputError("input_sets must be at least 1")
    l2_bytes, bus_id = device_facts(cupy)
    l2_mode = choose_l2_mode(l2, input_sets, set_bytes, l2_bytes)
    stream = cupy.cuda.Stream(non_blocking=True)
    monitor = ConditionMonitor(bus_id)
    try:
        with stream:
            sampler = _Sampler(cupy, stream, launch, input_sets, l2_mode, l2_bytes)
            launch_ms = sampler.warm_up(policy)
            count = 1
            if l2_mode != "cold-flush":
                count = launches_per_sample(launch_ms, policy, sampler.input_sets)
            method = sampler.prepare(count, policy.use_graph)
            # The warm-up estimate includes host launch overhead; a graph's samples do not.
            first_ms = float(np.median(sampler.take(3)))
            if method == "graph":
                fitted = launches_per_sample(first_ms, policy, sampler.input_sets)
                if fitted > count:
                    count = fitted
                    method = sampler.prepare(count, policy.use_graph)
                    first_ms = float(np.median(sampler.take(3)))
            if abandon_above_ms is not None and first_ms > abandon_above_ms:
                raise TooSlow(name, first_ms, abandon_above_ms)
            monitor.poll()
            samples, converged, spent = sample_until_stable(sampler.take, policy, monitor.poll)
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise MeasurementError(f"{name}: CUDA error while timing: {exc}") from exc
    return _timing(
        name,
        samples,
        sampler,
        monitor,
        method=method,
        launches=count,
        converged=converged,
        sampling_s=spent,
    )


def _timing(
    name: str, samples: Any, sampler: _Sampler, monitor: Any, *, method: str, launches: int,
    converged: bool, sampling_s: float,
) -> Timing:  # fmt: skip
    """The `Timing` of `samples` (ms per launch) taken by `sampler`, with the GPU's conditions."""
    summary = summarize(samples)
    conditions = monitor.conditions()
    flags = list(conditions.flags)
    if not converged:
        flags.append("not-converged")
    if method == "stream" and launches > 1:
        flags.append("launch-gaps-included")
    return Timing(
        name=name,
        median_ms=summary.median,
        min_ms=summary.minimum,
        ci_low_ms=summary.ci_low,
        ci_high_ms=summary.ci_high,
        rel_ci_half_width=summary.rel_ci_half_width,
        rel_noise=summary.rel_noise,
        samples_ms=tuple(samples),
        launches_per_sample=launches,
        method=method,
        l2=sampler.l2_mode,
        input_sets=sampler.input_sets,
        converged=converged,
        sampling_s=sampling_s,
        conditions=conditions,
        flags=tuple(sorted(flags)),
        capture_error=sampler.capture_error,
    )


def time_fixed(
    launch: Launch,
    *,
    name: str,
    launches_per_sample: int,
    samples: int,
    warmup_launches: int = 10,
    use_graph: bool = True,
) -> Timing:
    """Time one launch with every count fixed in advance instead of adapted to what is measured.

    For collectives: each rank of a group runs this with the same counts, so every rank issues
    the same calls (an adaptive count could differ between ranks and leave one waiting for a
    call that never comes). Hot L2; batched in a CUDA graph where the launch can be
    captured; the samples are taken in one go, without a stopping criterion.
    """
    if launches_per_sample < 1 or samples < 3 or warmup_launches < 0:
        raise InvalidInputError("need launches_per_sample >= 1, samples >= 3, warmup_launches >= 0")
    cupy = _cupy()
    l2_bytes, bus_id = device_facts(cupy)
    stream = cupy.cuda.Stream(non_blocking=True)
    monitor = ConditionMonitor(bus_id)
    start = time.perf_counter()
    try:
        with stream:
            sampler = _Sampler(cupy, stream, launch, 1, "hot", l2_bytes)
            sampler.run_launches(warmup_launches)
            stream.synchronize()
            method = sampler.prepare(launches_per_sample, use_graph)
            monitor.poll()
            values = sampler.take(samples)
            monitor.poll()
    except cupy.cuda.runtime.CUDARuntimeError as exc:
        raise MeasurementError(f"{name}: CUDA error while timing: {exc}") from exc
    converged = summarize(values).rel_ci_half_width <= TimingPolicy().target_rel_ci
    return _timing(
        name,
        values,
        sampler,
        monitor,
        method=method,
        launches=launches_per_sample,
        converged=converged,
        sampling_s=time.perf_counter() - start,
    )
