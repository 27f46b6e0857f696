"""In-flight batching: which sequences a step runs, and which tokens of each, over a paged KV
cache (`runtime.paging.BlockAllocator`). Engine-agnostic: it counts tokens and blocks, never
sees a token id, a time or a GPU.

A sequence's token stream is its prompt followed by the tokens it has generated; `computed` of
them have their keys and values in the cache. A step runs tokens `start..end-1` of a sequence
(`SequenceStep`, start = computed, its past length); when `end` reaches the end of the stream
the step's last row samples the sequence's next token. A decode is one such token of a sequence
whose whole stream but its last sampled token is cached; a prefill chunk is any other range, so
a prompt may be prefilled over several steps (chunked prefill) beside other sequences' decodes.

Each `schedule()` call plans one step under `max_step_tokens` tokens and `max_sequences`
running sequences:
1. decodes first, one token each, running sequences in admission order;
2. then prefill chunks of running sequences that are still prefilling, in admission order,
   each as many of its tokens as the token budget and the free blocks allow;
3. then waiting requests are admitted, in arrival order (first come, first served: admission
   stops at the first that gets no tokens), each with a first chunk; none are admitted in a
   step that preempted, so a sequence just evicted is not readmitted at once.
Blocks for a step's tokens are reserved when it is planned. A decode that finds no free block
preempts (recompute): the most recently admitted running sequence (itself, if that is it) is
evicted, its blocks freed, and it goes back to the front of the waiting queue. Its generated
tokens are kept: they become part of the stream it prefills again from scratch, and it then
generates only the tokens it still owes, so a preemption costs recomputation, never output.

Why every request finishes: a chunk cut short by the token budget or the free blocks leaves
neither for a later sequence, so a request is admitted only in a step where every earlier
prefill got all its remaining tokens, and at most one running sequence is part-way through
its prefill: the most recently admitted. Decodes evict it first, and the oldest running
sequence never: it could only evict itself when it runs alone, and alone it fits (`add`
refuses a request that does not fit the pool alone). So every step with sequences to run
runs at least one token, the oldest running sequence progresses, and nothing is lost but
recomputation.

After the step the caller reports it (`commit`): sequences that produced their last token, or
that the caller names as stopped, leave and free their blocks at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from ftbench.errors import InvalidInputError
from ftbench.runtime.paging import BlockAllocator, blocks_for


@dataclass(frozen=True)
class SequenceStep:
    """One sequence's part of a step: it computes tokens start..end-1 of its stream (start is
    its past length), and with `samples` its last row's logits give its next token."""

    seq_id: Hashable
    start: int
    end: int
    samples: bool

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class StepPlan:
    """One step: decodes (one token each) and prefill chunks, and the sequences evicted while
    planning it (their cache is gone; they are waiting again)."""

    decodes: tuple[SequenceStep, ...]
    prefills: tuple[SequenceStep, ...]
    preempted: tuple[Hashable, ...]

    @property
    def steps(self) -> tuple[SequenceStep, ...]:
        """Decodes first, then prefill chunks: the order of the step's rows."""
        return self.decodes + self.prefills

    @property
    def num_tokens(self) -> int:
        return sum(step.tokens for step in self.steps)


@dataclass(eq=False)  # compared by identity: one object per request
class _Sequence:
    seq_id: Hashable
    prompt_len: int
    output_len: int
    generated: int = 0
    computed: int = 0

    @property
    def stream_len(self) -> int:
        return self.prompt_len + self.generated

    @property
    def decoding(self) -> bool:
        return self.generated > 0 and self.computed == self.stream_len - 1


class Scheduler:
    """Plans the steps of an in-flight batch over `allocator`, which it uses alone (see the
    module docstring). `max_step_tokens` must cover a decode of every running sequence."""

    def __init__(self, allocator: BlockAllocator, max_step_tokens: int, max_sequences: int) -> None:
        if not 1 <= max_sequences <= max_step_tokens:
            raise InvalidInputError(
                "in-flight batching needs 1 <= max_sequences <= max_step_tokens (a decode of "
                f"every running sequence fits a step), got {max_sequences} and {max_step_tokens}"
            )
        self.allocator = allocator
        self.max_step_tokens = max_step_tokens
        self.max_sequences = max_sequences
        self.preemptions = 0
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []  # admission order, most recent last
        self._known: set[Hashable] = set()
        self._planned: StepPlan | None = None

    @property
    def waiting(self) -> tuple[Hashable, ...]:
        return tuple(seq.seq_id for seq in self._waiting)

    @property
    def running(self) -> tuple[Hashable, ...]:
        """Admitted sequences, in admission order."""
        return tuple(seq.seq_id for seq in self._running)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def add(self, seq_id: Hashable, prompt_len: int, output_len: int) -> None:
        """Queue a request that has arrived: `prompt_len` tokens, generating `output_len`."""
        if seq_id in self._known:
            raise InvalidInputError(f"request {seq_id!r} was already added")
        self.check_fits(seq_id, prompt_len, output_len)
        self._known.add(seq_id)
        self._waiting.append(_Sequence(seq_id, prompt_len, output_len))

    def check_fits(self, seq_id: Hashable, prompt_len: int, output_len: int) -> None:
        """Refuse a request that `add` would refuse for its lengths: empty, or caching more
        tokens than the whole pool holds (a caller can check a stream before serving it)."""
        if prompt_len < 1 or output_len < 1:
            raise InvalidInputError(
                f"request {seq_id!r} needs a prompt and an output of at least 1 token, got "
                f"{prompt_len} and {output_len}"
            )
        # Its last token is sampled, never cached.
        cached = prompt_len + output_len - 1
        pool = self.allocator
        if blocks_for(cached, pool.block_size) > pool.num_blocks:
            raise InvalidInputError(
                f"request {seq_id!r} caches up to {cached} tokens, more than the "
                f"{pool.num_blocks} blocks of {pool.block_size} tokens hold"
            )

    def schedule(self) -> StepPlan:
        """Plan the next step and reserve its blocks; `commit` it before planning another."""
        if self._planned is not None:
            raise InvalidInputError("the planned step was not committed")
        self._planned = self._plan()
        return self._planned

    def commit(self, plan: StepPlan, stopped: Iterable[Hashable] = ()) -> tuple[Hashable, ...]:
        """Record that `plan` ran: every sequence's tokens are cached and the sampling ones have
        a new token. Sequences with their whole output, and those of `stopped` (sampling ones
        the caller ended early, at a stop token), leave and free their blocks; they are
        returned in the plan's order."""
        if plan is not self._planned:
            raise InvalidInputError("commit takes the step plan that schedule returned last")
        stopped = set(stopped)
        sampling = {step.seq_id for step in plan.steps if step.samples}
        if not stopped <= sampling:
            raise InvalidInputError(
                f"only sequences that sampled this step can stop, not {list(stopped - sampling)}"
            )
        self._planned = None
        by_id = {seq.seq_id: seq for seq in self._running}
        finished = []
        for step in plan.steps:
            seq = by_id[step.seq_id]
            seq.computed = step.end
            seq.generated += step.samples
            if seq.generated == seq.output_len or seq.seq_id in stopped:
                finished.append(seq.seq_id)
        for seq_id in finished:
            self._running.remove(by_id[seq_id])
            self.allocator.free(seq_id)
        return tuple(finished)

    def _plan(self) -> StepPlan:
        preempted = []
        budget = self.max_step_tokens
        decodes = []
        for seq in [seq for seq in self._running if seq.decoding]:
            if seq not in self._running:  # evicted by an older sequence's decode
                continue
            while self.allocator.blocks_needed(seq.seq_id, seq.computed + 1) > (
                self.allocator.free_blocks
            ):
                preempted.append(self._preempt(self._running[-1]))
                if seq not in self._running:
                    break
            else:
                decodes.append(self._reserve(seq, 1))
                budget -= 1
        prefills = []
        for seq in [seq for seq in self._running if not seq.decoding]:
            chunk = self._chunk(seq, budget)
            if chunk == 0:
                break
            prefills.append(self._reserve(seq, chunk))
            budget -= chunk
        else:
            if not preempted:
                prefills += self._admit(budget)
        return StepPlan(tuple(decodes), tuple(prefills), tuple(preempted))

    def _admit(self, budget: int) -> list[SequenceStep]:
        admitted = []
        while self._waiting and len(self._running) < self.max_sequences:
            chunk = self._chunk(self._waiting[0], budget)
            if chunk == 0:
                break
            seq = self._waiting.popleft()
            self._running.append(seq)
            admitted.append(self._reserve(seq, chunk))
            budget -= chunk
        return admitted

    def _chunk(self, seq: _Sequence, budget: int) -> int:
        """The tokens `seq` can compute next within `budget` and the free blocks."""
        pool = self.allocator
        room = (len(pool.table(seq.seq_id)) + pool.free_blocks) * pool.block_size - seq.computed
        return max(0, min(seq.stream_len - seq.computed, budget, room))

    def _reserve(self, seq: _Sequence, tokens: int) -> SequenceStep:
        end = seq.computed + tokens
        self.allocator.reserve(seq.seq_id, end)
        return SequenceStep(seq.seq_id, seq.computed, end, samples=end == seq.stream_len)

    def _preempt(self, seq: _Sequence) -> Hashable:
        self._running.remove(seq)
        self.allocator.free(seq.seq_id)
        seq.computed = 0
        self._waiting.appendleft(seq)
        self.preemptions += 1
        return seq.seq_id
