"""One in-flight step's inputs on the host: a `scheduler.StepPlan` laid out as the arrays a
paged decoder step reads (`kernels.paged_attention`'s layouts), ready for one host-to-device
copy each. Nothing here touches a GPU.

Rows are the plan's sequences, decodes first (`StepPlan.steps`); the step's tokens are packed,
sequence after sequence: sequence b owns tokens cu_seqlens[b]..cu_seqlens[b+1]-1, which are its
stream's tokens start..end-1 at positions start..end-1 (past_lens[b] = start: the cached prefix
it attends over; lengths[b] = end: what is cached after the step). Each token's K/V goes to
slot block_tables[b, p // block_size] * block_size + p % block_size of the pools
(`slot_mapping`, the form `append_kv` takes). last_rows are the tokens whose logits are sampled:
the last of every sequence whose step reaches the end of its stream (`SequenceStep.samples`),
in row order; the engine returns one token for each.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.runtime.paging import BlockAllocator
from ftbench.runtime.scheduler import SequenceStep, StepPlan


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class StepBatch:
    """A step's rows and their int32 host arrays (see the module docstring): tokens, positions
    and slot_mapping [T]; cu_seqlens [B + 1]; past_lens and lengths [B]; block_tables [B, W]
    padded with `paging.PAD_BLOCK`; last_rows [R]. The first `num_decodes` rows are decodes
    (one token each, token b is row b's); max_q_len and max_length bound any row's tokens and
    length, for grids sized on the host."""

    steps: tuple[SequenceStep, ...]
    num_decodes: int
    tokens: np.ndarray
    positions: np.ndarray
    slot_mapping: np.ndarray
    cu_seqlens: np.ndarray
    past_lens: np.ndarray
    lengths: np.ndarray
    block_tables: np.ndarray
    last_rows: np.ndarray
    max_q_len: int
    max_length: int

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)

    @property
    def sampling(self) -> tuple[Hashable, ...]:
        """The sequences that get a new token, in the order of `last_rows`."""
        return tuple(step.seq_id for step in self.steps if step.samples)


def step_batch(
    plan: StepPlan, allocator: BlockAllocator, streams: Mapping[Hashable, Sequence[int]]
) -> StepBatch:
    """The inputs of `plan`, planned over `allocator` (its blocks reserved), taking each
    sequence's token ids from `streams` (prompt, then generated tokens)."""
    steps = plan.steps
    for step in steps:
        if step.end > len(streams[step.seq_id]):
            raise InvalidInputError(
                f"sequence {step.seq_id!r} computes tokens up to {step.end}, but its stream "
                f"holds {len(streams[step.seq_id])}"
            )
    counts = np.array([step.tokens for step in steps], dtype=np.int64)
    cu_seqlens = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    past_lens = np.array([step.start for step in steps], dtype=np.int32)
    lengths = np.array([step.end for step in steps], dtype=np.int32)
    positions = np.concatenate(
        [np.arange(step.start, step.end) for step in steps] or [np.empty(0)]
    ).astype(np.int32)
    tokens = np.concatenate(
        [np.asarray(streams[step.seq_id][step.start : step.end]) for step in steps] or [np.empty(0)]
    ).astype(np.int32)
    block_tables = allocator.table_array([step.seq_id for step in steps])
    rows = np.repeat(np.arange(len(steps)), counts)
    size = allocator.block_size
    blocks = block_tables[rows, positions // size] if len(steps) else positions
    slot_mapping = (blocks * size + positions % size).astype(np.int32)
    samples = np.array([step.samples for step in steps], dtype=bool)
    last_rows = (cu_seqlens[1:][samples] - 1).astype(np.int32)
    return StepBatch(
        steps, len(plan.decodes), tokens, positions, slot_mapping, cu_seqlens, past_lens,
        lengths, block_tables, last_rows, int(counts.max(initial=0)),
        int(lengths.max(initial=0)),
    )  # fmt: skip
