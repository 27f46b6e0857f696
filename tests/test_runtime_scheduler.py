"""In-flight batching's scheduler (`runtime.scheduler`) driven by a pure-Python fake engine: the
step plans it makes, preemption, and whole streams run to completion over a paged KV pool."""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.modelbench.requests import InfiniteRate, Uniform, request_stream
from ftbench.runtime.paging import BlockAllocator
from ftbench.runtime.scheduler import Scheduler, SequenceStep, StepPlan

VOCAB = 50_000


class FakeEngine:
    """Runs a scheduler's plans as an engine would, with token ids for keys and values: each
    step reads every sequence's cached tokens back through its block table (they must be its
    stream's, unchanged), writes the step's tokens, and appends a token for each sampling row."""

    def __init__(self, scheduler: Scheduler, rng: np.random.Generator) -> None:
        self.scheduler = scheduler
        pool = scheduler.allocator
        self.kv = np.full((pool.num_blocks, pool.block_size), -1, dtype=np.int64)
        self.rng = rng
        self.streams: dict[int, list[int]] = {}
        self.cached: dict[int, int] = {}
        self.wanted: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.peak_running = self.peak_used = self.steps = 0

    def add(self, seq_id: int, prompt_len: int, output_len: int) -> None:
        self.scheduler.add(seq_id, prompt_len, output_len)
        self.streams[seq_id] = self.rng.integers(0, VOCAB, prompt_len).tolist()
        self.wanted[seq_id] = prompt_len + output_len

    def step(self) -> StepPlan:
        plan = self.scheduler.schedule()
        assert plan.steps, "a step with work to do ran nothing"
        assert plan.num_tokens <= self.scheduler.max_step_tokens
        pool = self.scheduler.allocator
        for step in plan.steps:
            stream = self.streams[step.seq_id]
            assert step.end <= len(stream)
            table = np.array(pool.table(step.seq_id))
            positions = np.arange(step.end)
            blocks, slots = table[positions // pool.block_size], positions % pool.block_size
            assert (
                self.kv[blocks[: step.start], slots[: step.start]].tolist()
                == (stream[: step.start])
            )
            self.kv[blocks[step.start :], slots[step.start :]] = stream[step.start : step.end]
            if step.samples:
                stream.append(int(self.rng.integers(0, VOCAB)))
        held = [block for seq in self.scheduler.running for block in pool.table(seq)]
        assert len(held) == len(set(held)) == pool.used_blocks <= pool.num_blocks
        self.peak_running = max(self.peak_running, len(self.scheduler.running))
        self.peak_used = max(self.peak_used, pool.used_blocks)
        self.steps += 1
        self.cached.update({step.seq_id: step.end for step in plan.steps})
        self.cached.update(dict.fromkeys(plan.preempted, 0))
        for seq_id in self.scheduler.commit(plan):
            self.done[seq_id] = len(self.streams[seq_id])
        running = self.scheduler.running
        prefilling = [seq for seq in running if self.cached[seq] < len(self.streams[seq]) - 1]
        assert prefilling in ([], list(running[-1:])), "more than the newest sequence part-way"
        return plan

    def run(self, requests, arrival_step=lambda request: 0) -> None:
        """Add each request at its arrival step, and step until every one has finished."""
        pending = sorted(requests, key=arrival_step)
        while pending or self.scheduler.has_work():
            while pending and arrival_step(pending[0]) <= self.steps:
                request = pending.pop(0)
                self.add(request.id, request.prompt_len, request.output_len)
            if self.scheduler.has_work():
                self.step()
            else:
                self.steps += 1


def random_stream(rng, count, max_prompt, max_output):
    return request_stream(
        count, Uniform(1, max_prompt), Uniform(1, max_output), InfiniteRate(),
        int(rng.integers(2**32)), max_prompt, max_output,
    )  # fmt: skip


def test_every_request_finishes_with_exactly_its_output_and_frees_its_blocks():
    rng = np.random.default_rng()
    scheduler = Scheduler(BlockAllocator(128, 16), max_step_tokens=256, max_sequences=16)
    engine = FakeEngine(scheduler, rng)
    requests = random_stream(rng, 60, 300, 200)
    engine.run(requests, arrival_step=lambda request: request.id * 3)
    assert engine.done == engine.wanted
    assert scheduler.allocator.free_blocks == 128
    assert not scheduler.has_work()


def test_scarce_blocks_preempt_and_every_request_still_finishes():
    rng = np.random.default_rng()
    # 24 blocks of 8 tokens: room for about two of these requests at their longest.
    scheduler = Scheduler(BlockAllocator(24, 8), max_step_tokens=64, max_sequences=8)
    engine = FakeEngine(scheduler, rng)
    engine.run(random_stream(rng, 40, 100, 90))
    assert scheduler.preemptions > 0
    assert engine.done == engine.wanted
    assert engine.peak_used <= 24
    assert scheduler.allocator.free_blocks == 24


def test_a_mixed_stream_runs_more_sequences_at_once_than_static_padding_fits():
    # 64 blocks of 16 tokens = 1024 cached tokens. Prompts 8..120 and outputs 8..136 tokens:
    # a static batch pads every sequence to 120 + 136 = 256 tokens, so 1024 / 256 = 4 fit.
    scheduler = Scheduler(BlockAllocator(64, 16), max_step_tokens=512, max_sequences=64)
    engine = FakeEngine(scheduler, np.random.default_rng(25))
    requests = request_stream(200, Uniform(8, 120), Uniform(8, 136), InfiniteRate(), 25, 120, 136)
    static_sequences = 64 * 16 // (120 + 136)
    engine.run(requests)
    assert static_sequences == 4
    # This stream (seed 25) reaches 15 sequences at once; 12 leaves room for policy tuning.
    assert engine.peak_running >= 3 * static_sequences
    assert engine.done == engine.wanted


def test_decodes_come_first_then_prefill_chunks_fill_the_token_budget():
    scheduler = Scheduler(BlockAllocator(16, 4), max_step_tokens=6, max_sequences=4)
    scheduler.add("a", 3, 5)
    first = scheduler.schedule()
    assert first.steps == (SequenceStep("a", 0, 3, samples=True),)
    scheduler.commit(first)
    scheduler.add("b", 10, 2)
    second = scheduler.schedule()
    assert second.decodes == (SequenceStep("a", 3, 4, samples=True),)
    assert second.prefills == (SequenceStep("b", 0, 5, samples=False),)
    scheduler.commit(second)
    third = scheduler.schedule()
    assert third.decodes == (SequenceStep("a", 4, 5, samples=True),)
    assert third.prefills == (SequenceStep("b", 5, 10, samples=True),)


def test_a_chunk_cut_short_holds_later_requests_back():
    scheduler = Scheduler(BlockAllocator(16, 4), max_step_tokens=8, max_sequences=4)
    scheduler.add("a", 12, 1)
    scheduler.add("b", 2, 1)
    plan = scheduler.schedule()
    assert plan.prefills == (SequenceStep("a", 0, 8, samples=False),)
    assert scheduler.waiting == ("b",)


def test_admission_is_first_come_first_served_up_to_max_sequences():
    scheduler = Scheduler(BlockAllocator(16, 4), max_step_tokens=64, max_sequences=2)
    for name in "abc":
        scheduler.add(name, 2, 3)
    plan = scheduler.schedule()
    assert [step.seq_id for step in plan.prefills] == ["a", "b"]
    assert (scheduler.running, scheduler.waiting) == (("a", "b"), ("c",))


def test_admission_stops_at_the_first_request_without_free_blocks():
    scheduler = Scheduler(BlockAllocator(4, 4), max_step_tokens=64, max_sequences=4)
    scheduler.add("a", 16, 1)
    scheduler.add("b", 1, 1)
    plan = scheduler.schedule()
    assert [step.seq_id for step in plan.prefills] == ["a"]
    assert scheduler.waiting == ("b",)


def two_sequences_after(steps: int) -> Scheduler:
    """a then b, 4 prompt tokens and 9 to generate each, in a pool of 4 blocks of 4 tokens,
    after `steps` committed steps. After 5 each has tokens 0..7 cached and the pool is full."""
    scheduler = Scheduler(BlockAllocator(4, 4), max_step_tokens=16, max_sequences=4)
    scheduler.add("a", 4, 9)
    scheduler.add("b", 4, 9)
    for _ in range(steps):
        scheduler.commit(scheduler.schedule())
    return scheduler


def test_a_decode_without_a_block_evicts_the_most_recently_admitted():
    scheduler = two_sequences_after(5)
    assert scheduler.allocator.free_blocks == 0
    plan = scheduler.schedule()
    assert plan.preempted == ("b",)
    assert plan.steps == (SequenceStep("a", 8, 9, samples=True),)
    assert (scheduler.running, scheduler.waiting) == (("a",), ("b",))
    assert scheduler.preemptions == 1


def test_an_evicted_sequence_prefills_its_prompt_and_generated_tokens_again():
    scheduler = two_sequences_after(6)  # the sixth step evicts b, which had generated 5 tokens
    plan = scheduler.schedule()
    assert plan.decodes == (SequenceStep("a", 9, 10, samples=True),)
    # b's stream is its 4 prompt tokens and 5 generated; 1 free block holds 4 of them.
    assert plan.prefills == (SequenceStep("b", 0, 4, samples=False),)


def test_a_sequence_evicted_in_a_step_is_not_readmitted_in_it():
    scheduler = two_sequences_after(5)
    plan = scheduler.schedule()
    assert plan.preempted == ("b",) and plan.prefills == ()
    assert scheduler.allocator.free_blocks == 1


def test_a_stopped_sequence_leaves_and_frees_its_blocks_at_once():
    scheduler = Scheduler(BlockAllocator(8, 4), max_step_tokens=16, max_sequences=4)
    scheduler.add("a", 6, 10)
    scheduler.add("b", 6, 10)
    plan = scheduler.schedule()
    assert scheduler.commit(plan, stopped=["b"]) == ("b",)
    assert scheduler.running == ("a",)
    assert scheduler.allocator.free_blocks == 6


def test_only_a_sequence_that_sampled_can_stop():
    scheduler = Scheduler(BlockAllocator(8, 4), max_step_tokens=4, max_sequences=4)
    scheduler.add("a", 6, 3)
    plan = scheduler.schedule()
    with pytest.raises(InvalidInputError, match="only sequences that sampled this step"):
        scheduler.commit(plan, stopped=["a"])


def test_a_sequence_leaves_when_it_has_its_whole_output():
    scheduler = Scheduler(BlockAllocator(8, 4), max_step_tokens=16, max_sequences=4)
    scheduler.add("a", 5, 2)
    assert scheduler.commit(scheduler.schedule()) == ()
    assert scheduler.commit(scheduler.schedule()) == ("a",)
    assert not scheduler.has_work() and scheduler.allocator.free_blocks == 8


def test_a_request_that_cannot_fit_the_pool_alone_is_refused():
    scheduler = Scheduler(BlockAllocator(4, 4), max_step_tokens=16, max_sequences=4)
    scheduler.add("fits", 10, 7)  # caches 16 tokens: its last one is sampled, never cached
    with pytest.raises(InvalidInputError, match="caches up to 17 tokens, more than the 4 blocks"):
        scheduler.add("too long", 10, 8)


def test_bad_requests_and_budgets_are_refused():
    with pytest.raises(InvalidInputError, match="max_sequences <= max_step_tokens"):
        Scheduler(BlockAllocator(4, 4), max_step_tokens=4, max_sequences=8)
    scheduler = Scheduler(BlockAllocator(4, 4), max_step_tokens=16, max_sequences=4)
    with pytest.raises(InvalidInputError, match="at least 1 token, got 0 and 3"):
        scheduler.add("a", 0, 3)
    scheduler.add("a", 1, 3)
    with pytest.raises(InvalidInputError, match="'a' was already added"):
        scheduler.add("a", 1, 3)


def test_a_step_is_committed_before_the_next_is_planned():
    scheduler = Scheduler(BlockAllocator(4, 4), max_step_tokens=16, max_sequences=4)
    scheduler.add("a", 3, 3)
    plan = scheduler.schedule()
    with pytest.raises(InvalidInputError, match="was not committed"):
        scheduler.schedule()
    scheduler.commit(plan)
    with pytest.raises(InvalidInputError, match="the step plan that schedule returned last"):
        scheduler.commit(plan)
