"""Fake serving engines (`modelbench.serving`'s protocols) with exact clocks: a step takes
STEP_S plus TOKEN_S per token it computes, both powers of two, so every time a test expects is
exact. The in-flight fake checks what it is given as a paged engine would rely on it: each
row's cached prefix reads back from its pool through the block tables as the tokens written
there, a recomputed token is the one computed before, and a generated token fed back is the one
it sampled."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ftbench.modelbench.serving import StaticBatchResult
from ftbench.runtime.step_batch import StepBatch

STEP_S = 2.0**-10  # a step's fixed cost (launches, weights read once)
TOKEN_S = 2.0**-16  # and its cost per token computed


def step_s(tokens: int) -> float:
    return STEP_S + TOKEN_S * tokens


def default_token(seq_id: int, position: int) -> int:
    """The token a sequence samples for `position`: deterministic, never 0."""
    return (seq_id * 7919 + position) % 1000 + 1


class FakeClock:
    def __init__(self) -> None:
        self.time = 0.0
        self.waits: list[float] = []
        self.step_scale = 1.0  # a slower engine: every step takes this many times as long

    def now(self) -> float:
        return self.time

    def wait_until(self, time_s: float) -> None:
        if time_s > self.time:  # `waits`: the times it idled until
            self.waits.append(time_s)
            self.time = time_s


class FakeServingEngine(FakeClock):
    """In-flight steps over a pool of `kv_blocks` blocks of `block_size` tokens."""

    def __init__(
        self,
        kv_blocks: int,
        block_size: int = 16,
        token: Callable[[int, int], int] = default_token,
    ) -> None:
        super().__init__()
        self.kv_blocks, self.block_size, self.token = kv_blocks, block_size, token
        self.pool = np.full(kv_blocks * block_size, -1, dtype=np.int64)
        self.written: dict[int, dict[int, int]] = {}  # per sequence: position -> token id
        self.sampled: dict[int, dict[int, int]] = {}
        self.batches: list[StepBatch] = []

    def step(self, batch: StepBatch) -> list[int]:
        for row, step in enumerate(batch.steps):
            seq = step.seq_id
            first, last = batch.cu_seqlens[row], batch.cu_seqlens[row + 1]
            written = self.written.setdefault(seq, {})
            prefix = np.arange(step.start)
            table = batch.block_tables[row]
            slots = table[prefix // self.block_size] * self.block_size + prefix % self.block_size
            assert self.pool[slots].tolist() == [written[p] for p in range(step.start)]
            for position, token in zip(
                batch.positions[first:last], batch.tokens[first:last], strict=True
            ):
                assert written.get(int(position), token) == token  # recomputed alike
                assert self.sampled.get(seq, {}).get(int(position), token) == token
                written[int(position)] = int(token)
            self.pool[batch.slot_mapping[first:last]] = batch.tokens[first:last]
        self.batches.append(batch)
        self.time += self.step_scale * step_s(batch.num_tokens)
        tokens = []
        for row in np.flatnonzero([step.samples for step in batch.steps]):
            seq, position = batch.steps[row].seq_id, int(batch.lengths[row])
            tokens.append(self.token(seq, position))
            self.sampled.setdefault(seq, {})[position] = tokens[-1]
        return tokens

    def peak_memory_bytes(self) -> int | None:
        return None


class FakeStaticEngine(FakeClock):
    """Static batches: a prefill of batch x prompt_len tokens, then a decode step of `batch`
    tokens for every further output token. `tokens(prompts, output_len)` gives the output."""

    def __init__(
        self, tokens: Callable[[np.ndarray, int], np.ndarray] | None = None, memory: int = 0
    ) -> None:
        super().__init__()
        self.tokens = tokens or (lambda prompts, n: np.ones((len(prompts), n), dtype=np.int64))
        self.calls: list[tuple[np.ndarray, int]] = []
        self.memory = memory

    def generate(self, prompts: np.ndarray, output_len: int) -> StaticBatchResult:
        self.calls.append((prompts.copy(), output_len))
        batch, prompt_len = prompts.shape
        times = []
        for step in range(output_len):
            self.time += self.step_scale * step_s(batch * prompt_len if step == 0 else batch)
            times.append(self.time)
        return StaticBatchResult(self.tokens(prompts, output_len), tuple(times))

    def peak_memory_bytes(self) -> int | None:
        return self.memory or None
