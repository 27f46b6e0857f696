"""A step's host inputs (`runtime.step_batch`): a scheduler's plan laid out as the packed arrays
a paged decoder step reads, checked element by element on a step that mixes a decode with a
prefill chunk."""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.runtime.paging import PAD_BLOCK, BlockAllocator
from ftbench.runtime.scheduler import Scheduler
from ftbench.runtime.step_batch import step_batch

STREAMS = {"a": [10, 11, 12, 13, 14, 15], "b": list(range(20, 30))}


def mixed_step():
    """Sequence a (5 prompt tokens) decodes its first sampled token while b (10) prefills its
    last 7 tokens: step 1 ran a's prompt and b's first 3 under a budget of 8."""
    scheduler = Scheduler(BlockAllocator(num_blocks=8, block_size=4), 8, 4)
    scheduler.add("a", prompt_len=5, output_len=4)
    scheduler.add("b", prompt_len=10, output_len=2)
    scheduler.commit(scheduler.schedule())
    plan = scheduler.schedule()
    return plan, step_batch(plan, scheduler.allocator, STREAMS)


def test_a_mixed_step_packs_the_decode_first_then_the_chunk():
    plan, batch = mixed_step()
    assert batch.steps == plan.steps and batch.num_decodes == 1
    assert batch.tokens.tolist() == [15, 23, 24, 25, 26, 27, 28, 29]
    assert batch.positions.tolist() == [5, 3, 4, 5, 6, 7, 8, 9]
    assert batch.cu_seqlens.tolist() == [0, 1, 8]
    assert batch.past_lens.tolist() == [5, 3] and batch.lengths.tolist() == [6, 10]
    assert (batch.max_q_len, batch.max_length, batch.num_tokens) == (7, 10, 8)


def test_tables_slots_and_sampled_rows_follow_the_blocks_reserved():
    _, batch = mixed_step()
    # a took blocks 0 and 1 for its 5 tokens, b block 2 for its first 3, then 3 and 4
    assert batch.block_tables.tolist() == [[0, 1, PAD_BLOCK], [2, 3, 4]]
    assert batch.slot_mapping.tolist() == [1 * 4 + 1, 2 * 4 + 3, 12, 13, 14, 15, 16, 17]
    assert batch.last_rows.tolist() == [0, 7] and batch.sampling == ("a", "b")
    for array in (batch.tokens, batch.positions, batch.slot_mapping, batch.cu_seqlens,
                  batch.past_lens, batch.lengths, batch.block_tables, batch.last_rows):  # fmt: skip
        assert array.dtype == np.int32


def test_a_chunk_that_does_not_sample_has_no_sampled_row():
    scheduler = Scheduler(BlockAllocator(num_blocks=8, block_size=4), 6, 4)
    scheduler.add("b", prompt_len=10, output_len=2)
    batch = step_batch(scheduler.schedule(), scheduler.allocator, STREAMS)
    assert batch.positions.tolist() == list(range(6)) and batch.last_rows.tolist() == []
    assert batch.sampling == ()


def test_a_stream_shorter_than_its_step_is_refused():
    scheduler = Scheduler(BlockAllocator(num_blocks=8, block_size=4), 8, 4)
    scheduler.add("b", prompt_len=10, output_len=2)
    with pytest.raises(InvalidInputError, match="up to 8, but its stream holds 3"):
        step_batch(scheduler.schedule(), scheduler.allocator, {"b": [1, 2, 3]})
