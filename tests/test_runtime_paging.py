"""The paged KV cache's host bookkeeping (`runtime.paging`): block counts, the free list, block
tables and their device array, and how many blocks a memory budget holds."""

import numpy as np
import pytest

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.memory import footprint, kv_bytes_per_token
from ftbench.runtime.paging import (
    PAD_BLOCK,
    BlockAllocator,
    OutOfBlocksError,
    blocks_for,
    plan_blocks,
)

LLAMA3_8B = load_builtin("llama3-8b")
KIB = 1024


@pytest.mark.parametrize(
    ("tokens", "blocks"), [(0, 0), (1, 1), (15, 1), (16, 1), (17, 2), (32, 2), (33, 3)]
)
def test_blocks_for_rounds_tokens_up_to_whole_blocks(tokens, blocks):
    assert blocks_for(tokens, 16) == blocks


def test_blocks_for_refuses_a_negative_count_and_an_empty_block():
    with pytest.raises(InvalidInputError, match="tokens >= 0 and block_size >= 1"):
        blocks_for(-1, 16)
    with pytest.raises(InvalidInputError, match="tokens >= 0 and block_size >= 1"):
        blocks_for(4, 0)


def test_kv_bytes_per_token_counts_a_key_and_a_value_per_layer_and_kv_head():
    # LLaMA-3-8B: 32 layers x (K, V) x 8 KV heads x 128 dims x 2 bytes (fp16).
    assert kv_bytes_per_token(LLAMA3_8B, "fp16") == 32 * 2 * 8 * 128 * 2 == 128 * KIB
    assert kv_bytes_per_token(LLAMA3_8B, "fp16", tp=2) == 64 * KIB
    assert kv_bytes_per_token(LLAMA3_8B, "fp16", layers=range(16)) == 64 * KIB


def test_the_contiguous_footprint_counts_the_same_bytes_per_token():
    plan = footprint(LLAMA3_8B, batch=3, max_seq_len=100, dtype="bf16")
    assert plan.kv_cache == 3 * 100 * kv_bytes_per_token(LLAMA3_8B, "bf16")


def test_plan_blocks_is_the_whole_blocks_a_budget_holds():
    block_bytes = 16 * 128 * KIB  # 2 MiB per block of 16 LLaMA-3-8B fp16 tokens
    assert plan_blocks(LLAMA3_8B, "fp16", 16, 10 * block_bytes) == 10
    assert plan_blocks(LLAMA3_8B, "fp16", 16, 10 * block_bytes + block_bytes - 1) == 10
    assert plan_blocks(LLAMA3_8B, "fp16", 16, 10 * block_bytes, tp=2) == 20


def test_plan_blocks_refuses_a_budget_without_one_block():
    with pytest.raises(InvalidInputError, match="a KV block of 16 tokens takes 2097152 bytes"):
        plan_blocks(LLAMA3_8B, "fp16", 16, 2 * 1024 * KIB - 1)


def test_a_fresh_pool_hands_out_blocks_lowest_first():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    assert pool.reserve("a", 9) == (0, 1, 2)
    assert pool.reserve("b", 1) == (3,)
    assert pool.table("a") == (0, 1, 2)
    assert (pool.free_blocks, pool.used_blocks) == (4, 4)


def test_a_sequence_takes_a_new_block_only_when_a_token_crosses_into_it():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    taken = [pool.reserve("a", tokens) for tokens in range(1, 10)]
    assert taken == [(0,), (), (), (), (1,), (), (), (), (2,)]
    assert pool.tokens("a") == 9


def test_reserving_fewer_tokens_than_held_never_shrinks_a_table():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    pool.reserve("a", 12)
    assert pool.reserve("a", 2) == ()
    assert (pool.table("a"), pool.tokens("a")) == ((0, 1, 2), 12)


def test_free_returns_every_block_of_a_sequence_at_once():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    pool.reserve("a", 12)
    pool.reserve("b", 4)
    assert pool.free("a") == 3
    assert "a" not in pool and pool.table("a") == () and pool.tokens("a") == 0
    assert pool.free_blocks == 7


def test_freed_blocks_go_to_the_next_allocation_in_their_old_order():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    pool.reserve("a", 4)
    pool.reserve("b", 12)
    pool.free("b")
    assert pool.reserve("c", 16) == (1, 2, 3, 4)


def test_running_out_of_blocks_raises_and_allocates_nothing():
    pool = BlockAllocator(num_blocks=4, block_size=4)
    pool.reserve("a", 8)
    pool.reserve("b", 4)
    with pytest.raises(OutOfBlocksError, match="needs 2 more blocks .* but 1 of 4 are free"):
        pool.reserve("b", 12)
    assert (pool.table("b"), pool.tokens("b"), pool.free_blocks) == ((2,), 4, 1)
    assert issubclass(OutOfBlocksError, FtbenchError)


def test_blocks_never_belong_to_two_sequences_under_random_growth():
    rng = np.random.default_rng()
    pool = BlockAllocator(num_blocks=64, block_size=int(rng.integers(1, 17)))
    lengths: dict[int, int] = {}
    for _ in range(2000):
        seq = int(rng.integers(0, 12))
        if rng.random() < 0.1:
            pool.free(seq)
            lengths.pop(seq, None)
            continue
        grown = lengths.get(seq, 0) + int(rng.integers(1, 9))
        try:
            pool.reserve(seq, grown)
            lengths[seq] = grown
        except OutOfBlocksError:
            pass
        held = [block for s in lengths for block in pool.table(s)]
        assert len(held) == len(set(held)) == pool.used_blocks
        assert all(len(pool.table(s)) == blocks_for(n, pool.block_size) for s, n in lengths.items())


def test_table_array_pads_rows_with_pad_block_to_the_longest_table():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    pool.reserve("a", 9)
    pool.reserve("b", 2)
    array = pool.table_array(["b", "a", "none"])
    assert array.dtype == np.int32 and PAD_BLOCK == -1
    assert array.tolist() == [[3, -1, -1], [0, 1, 2], [-1, -1, -1]]


def test_table_array_takes_a_fixed_width_and_refuses_a_table_wider():
    pool = BlockAllocator(num_blocks=8, block_size=4)
    pool.reserve("a", 9)
    assert pool.table_array(["a"], width=5).tolist() == [[0, 1, 2, -1, -1]]
    with pytest.raises(InvalidInputError, match="3 blocks does not fit a table array 2 wide"):
        pool.table_array(["a"], width=2)


def test_an_empty_pool_is_refused():
    with pytest.raises(InvalidInputError, match="at least 1 block of at least 1 token"):
        BlockAllocator(num_blocks=0, block_size=16)
