"""Serving a request stream (`modelbench.requests`) through an engine: in-flight batching over a
paged KV cache, and the static-batch baseline, each timing every output token on the engine's
clock. Engine-agnostic: the engines are protocols (the GPU engines implement them; tests drive
fakes whose step times are exact).

Engines:
- `ServingEngine` runs one in-flight step: `step(batch)` computes a `runtime.step_batch.StepBatch`
  (prefill chunks and decodes, read and written through block tables into its pool of
  `kv_blocks` blocks of `block_size` tokens) and returns the token sampled for each of its
  `last_rows`, once they are on the host. It keeps nothing per sequence: all a sequence has is
  in the blocks its tables name, so a preempted sequence is simply not stepped again.
- `StaticBatchEngine` runs one static batch: `generate(prompts, output_len)` prefills the
  [batch, prompt_len] prompts at once and decodes until every row has `output_len` tokens,
  returning them with the time each step's tokens were ready.
- Both keep a clock (`Clock`): `now()` in seconds, monotonic, taken after the work enqueued so
  far has finished (`WallClock` for a GPU engine whose calls synchronise before they return),
  and `wait_until(time_s)`, which idles until `now() >= time_s` (a fake jumps).
An engine is ready when it is handed over (kernels compiled, graphs captured): serving times
from its first call.

Both loops take the same requests and prompts (`prompt_tokens`, seeded) and return a `Served`:
per request its `serving_metrics.RequestTiming`. Times count from the clock when serving starts;
request i arrives at its `arrival_s` (infinite rate: all at 0), is admitted between steps (a
step in flight finishes first), and each of its tokens is timed when the step that sampled it
returned; it finishes with its last token, so TTFT includes its time queued. A request generates
exactly its drawn `output_len` tokens, or with a `stop_token` up to them: it ends at the first
stop token it samples (which counts as an output token).

`serve_inflight`: a `runtime.scheduler.Scheduler` over a fresh block pool plans every step
(decodes first, then prefill chunks, then admissions, under `max_step_tokens` and at most
`max_concurrency` sequences; recompute preemption when blocks run out: a preempted sequence
prefills its prompt and the tokens it had generated again, and owes only the rest). Sequences
leave, their blocks freed, at the step that gives them their last token. Every request in the
stream must fit the pool alone, checked before any step runs.

`serve_static`: whenever the engine is free, the requests that have arrived (or, if none, the
next one, waited for) are taken in arrival order, at most `max_batch` of them, as one batch:
prompts left-padded with token 0 to the longest (static batching computes the padding; the
static runtime has no padding mask, so padded rows compute the work, not a real answer), run
until the longest drawn output is done. A request's tokens are its row's first `output_len`
(or up to its stop token); its slot stays busy until the batch ends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import numpy as np

from ftbench.errors import MeasurementError
from ftbench.modelbench.requests import Request
from ftbench.modelbench.serving_metrics import RequestTiming
from ftbench.runtime.paging import BlockAllocator
from ftbench.runtime.scheduler import Scheduler
from ftbench.runtime.step_batch import StepBatch, step_batch

PAD_TOKEN = 0  # what static batches pad prompts with (left, to the batch's longest)


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic, once the work enqueued so far has finished."""
        ...

    def wait_until(self, time_s: float) -> None:
        """Return once now() >= time_s."""
        ...


class ServingEngine(Clock, Protocol):
    """In-flight batching's engine (see the module docstring)."""

    kv_blocks: int
    block_size: int

    def step(self, batch: StepBatch) -> Sequence[int]:
        """Run `batch`; the token sampled at each of its last_rows, in order, on the host."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """The most device memory it has held (None where it cannot tell)."""
        ...


@dataclass(frozen=True, eq=False)  # holds an array: compared by identity
class StaticBatchResult:
    """One static batch's output: tokens [batch, output_len], and for each step on the
    engine's clock the time its tokens were ready (token_s[0]: the prefill's)."""

    tokens: np.ndarray
    token_s: tuple[float, ...]


class StaticBatchEngine(Clock, Protocol):
    """The static-batch baseline's engine (see the module docstring)."""

    def generate(self, prompts: np.ndarray, output_len: int) -> StaticBatchResult:
        """Prefill `prompts` (int32 [batch, prompt_len]) at once and generate `output_len`
        tokens for every row."""
        ...

    def peak_memory_bytes(self) -> int | None:
        """The most device memory it has held (None where it cannot tell)."""
        ...


class WallClock:
    """The host's monotonic clock, for an engine whose calls return once the GPU work they
    enqueued has finished (so reading it after a call is a synchronised time)."""

    def now(self) -> float:
        return time.perf_counter()

    def wait_until(self, time_s: float) -> None:
        while (left := time_s - time.perf_counter()) > 0:
            time.sleep(left)


@dataclass(frozen=True)
class Served:
    """What serving a stream gave: each request's timing (in the order of the requests given)
    and how many preemptions it took (static batching has none)."""

    timings: tuple[RequestTiming, ...]
    preemptions: int = 0


def prompt_tokens(requests: Sequence[Request], vocab_size: int, seed: int) -> dict[int, np.ndarray]:
    """Random prompt token ids (int32, 0..vocab_size-1) for every request, by id; the same
    seed and lengths give the same prompts."""
    rng = np.random.default_rng(seed)
    return {
        request.id: rng.integers(0, vocab_size, request.prompt_len, dtype=np.int32)
        for request in requests
    }


def _arrival_order(requests: Sequence[Request]) -> deque[Request]:
    return deque(sorted(requests, key=lambda request: (request.arrival_s, request.id)))


def serve_inflight(
    engine: ServingEngine,
    requests: Sequence[Request],
    prompts: Mapping[int, np.ndarray],
    max_concurrency: int,
    max_step_tokens: int,
    stop_token: int | None = None,
) -> Served:
    """Serve `requests` by in-flight batching through `engine` (see the module docstring)."""
    scheduler = Scheduler(
        BlockAllocator(engine.kv_blocks, engine.block_size), max_step_tokens, max_concurrency
    )
    for request in requests:  # a request the pool cannot hold: said before any step
        scheduler.check_fits(request.id, request.prompt_len, request.output_len)
    arriving = _arrival_order(requests)
    streams = {request.id: prompts[request.id].tolist() for request in requests}
    token_s: dict[int, list[float]] = {request.id: [] for request in requests}
    finish_s: dict[int, float] = {}
    start = engine.now()
    while arriving or scheduler.has_work():
        # arrivals are compared on the engine's clock itself: (start + a) - start may round
        # below a, and a request waited for would never be due
        now = engine.now()
        while arriving and start + arriving[0].arrival_s <= now:
            request = arriving.popleft()
            scheduler.add(request.id, request.prompt_len, request.output_len)
        if not scheduler.has_work():
            engine.wait_until(start + arriving[0].arrival_s)
            continue
        plan = scheduler.schedule()
        batch = step_batch(plan, scheduler.allocator, streams)
        sampled = engine.step(batch)
        clock = engine.now() - start
        if len(sampled) != len(batch.last_rows):
            raise MeasurementError(
                f"the engine returned {len(sampled)} tokens for a step that samples "
                f"{len(batch.last_rows)}"
            )
        stopped = []
        for seq_id, token in zip(batch.sampling, sampled, strict=True):
            streams[seq_id].append(int(token))
            token_s[seq_id].append(clock)
            if token == stop_token:
                stopped.append(seq_id)
        for seq_id in scheduler.commit(plan, stopped):
            finish_s[seq_id] = clock
    timings = tuple(
        RequestTiming(request.arrival_s, tuple(token_s[request.id]), finish_s[request.id])
        for request in requests
    )
    return Served(timings, scheduler.preemptions)


def serve_static(
    engine: StaticBatchEngine,
    requests: Sequence[Request],
    prompts: Mapping[int, np.ndarray],
    max_batch: int,
    stop_token: int | None = None,
) -> Served:
    """Serve `requests` in static batches of at most `max_batch` through `engine` (see the
    module docstring)."""
    arriving = _arrival_order(requests)
    timings: dict[int, RequestTiming] = {}
    start = engine.now()
    while arriving:
        engine.wait_until(start + arriving[0].arrival_s)
        now = engine.now()
        batch = []
        while arriving and len(batch) < max_batch and start + arriving[0].arrival_s <= now:
            batch.append(arriving.popleft())
        prompt_len = max(request.prompt_len for request in batch)
        output_len = max(request.output_len for request in batch)
        padded = np.full((len(batch), prompt_len), PAD_TOKEN, dtype=np.int32)
        for row, request in enumerate(batch):
            padded[row, prompt_len - request.prompt_len :] = prompts[request.id]
        result = engine.generate(padded, output_len)
        _check_static_result(result, len(batch), output_len)
        for row, request in enumerate(batch):
            produced = _output_tokens(result.tokens[row, : request.output_len], stop_token)
            times = tuple(t - start for t in result.token_s[:produced])
            timings[request.id] = RequestTiming(request.arrival_s, times, times[-1])
    return Served(tuple(timings[request.id] for request in requests))


def _output_tokens(tokens: np.ndarray, stop_token: int | None) -> int:
    """How many of `tokens` a request keeps: all, or up to and with its first stop token."""
    stops = np.flatnonzero(tokens == stop_token) if stop_token is not None else ()
    return int(stops[0]) + 1 if len(stops) else len(tokens)


def _check_static_result(result: StaticBatchResult, batch: int, output_len: int) -> None:
    if result.tokens.shape != (batch, output_len) or len(result.token_s) != output_len:
        raise MeasurementError(
            f"a static batch of {batch} x {output_len} tokens returned tokens of shape "
            f"{result.tokens.shape} and {len(result.token_s)} step times"
        )
    if any(later < earlier for earlier, later in pairwise(result.token_s)):
        raise MeasurementError("a static batch's step times go backwards")
