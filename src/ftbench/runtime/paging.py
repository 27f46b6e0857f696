"""A paged KV cache's host-side bookkeeping: a pool of fixed-size blocks, a free list, and each
sequence's block table.

The device holds the KV cache as `num_blocks` blocks of `block_size` tokens each; a sequence's
token t lives in block `table[t // block_size]` at slot `t % block_size`. The host decides which
blocks a sequence gets (`BlockAllocator`) and copies the tables to the device as one padded int32
array (`BlockAllocator.table_array`) before a step. A sequence holds exactly
`blocks_for(tokens, block_size)` blocks for the tokens it has reserved; it grows block by block as
its tokens do and gives every block back at once when it leaves (`free`). Nothing here touches a
GPU: the arrays are NumPy, ready for one host-to-device copy.

The free list is a stack: a sequence takes the lowest-numbered block of a fresh pool first, and
a freed sequence's blocks are pushed back so that the next allocation of the same size gets the
same blocks in the same order (recently written blocks are reused while they may still be in L2).

`plan_blocks` sizes the pool: how many blocks a byte budget holds, at the KV bytes per token that
`runtime.memory.kv_bytes_per_token` counts (the same count as the contiguous cache's footprint).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from ftbench.errors import FtbenchError, InvalidInputError
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.memory import kv_bytes_per_token

# Block-table entries past a sequence's last block. Kernels read only blocks_for(length)
# entries of a row; -1 makes a read past them an out-of-range index rather than another
# sequence's data.
PAD_BLOCK = -1


class OutOfBlocksError(FtbenchError):
    """The pool has fewer free blocks than a sequence's growth needs; nothing was allocated."""


def blocks_for(tokens: int, block_size: int) -> int:
    """The blocks that hold `tokens` tokens: ceil(tokens / block_size) (0 for 0 tokens)."""
    if tokens < 0 or block_size < 1:
        raise InvalidInputError(
            f"blocks_for needs tokens >= 0 and block_size >= 1, got {tokens} and {block_size}"
        )
    return -(-tokens // block_size)


def plan_blocks(
    spec: ModelSpec,
    dtype: str,
    block_size: int,
    budget_bytes: int,
    tp: int = 1,
    layers: range | None = None,
) -> int:
    """The number of whole blocks of `block_size` tokens that `budget_bytes` of KV cache holds on
    one rank of `spec` in `dtype` (under tensor parallelism `tp`, for the stage of `layers`).
    A budget that holds no block is an error that says how many bytes one block takes."""
    if block_size < 1:
        raise InvalidInputError(f"block size must be at least 1 token, got {block_size}")
    block_bytes = block_size * kv_bytes_per_token(spec, dtype, tp, layers)
    blocks = max(budget_bytes, 0) // block_bytes
    if blocks == 0:
        raise InvalidInputError(
            f"{spec.name} {dtype} tp={tp}: a KV block of {block_size} tokens takes {block_bytes} "
            f"bytes, more than the {budget_bytes} bytes budgeted for the cache"
        )
    return blocks


class BlockAllocator:
    """The free list of a pool of `num_blocks` blocks of `block_size` tokens, and the block
    table of every sequence that holds blocks (sequences are named by any hashable id).

    `reserve(seq, tokens)` makes a sequence hold enough blocks for `tokens` tokens in all (a new
    sequence starts with none); it never shrinks a table, and when the pool cannot supply the
    blocks it raises `OutOfBlocksError` and changes nothing. `free(seq)` returns all of a
    sequence's blocks at once."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise InvalidInputError(
                f"a block pool needs at least 1 block of at least 1 token, got {num_blocks} "
                f"blocks of {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: block 0 on top
        self._tables: dict[Hashable, list[int]] = {}
        self._tokens: dict[Hashable, int] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    def __contains__(self, seq: Hashable) -> bool:
        return seq in self._tables

    def tokens(self, seq: Hashable) -> int:
        """The tokens `seq` has reserved room for (0 for a sequence that holds no blocks)."""
        return self._tokens.get(seq, 0)

    def table(self, seq: Hashable) -> tuple[int, ...]:
        """`seq`'s block table: the block of its tokens 0..block_size-1 first."""
        return tuple(self._tables.get(seq, ()))

    def blocks_needed(self, seq: Hashable, tokens: int) -> int:
        """The blocks `seq` would take from the free list to hold `tokens` tokens in all."""
        return max(0, blocks_for(tokens, self.block_size) - len(self._tables.get(seq, ())))

    def reserve(self, seq: Hashable, tokens: int) -> tuple[int, ...]:
        """Make `seq` hold room for `tokens` tokens in all; the blocks it took, in table order."""
        needed = self.blocks_needed(seq, tokens)
        if needed > len(self._free):
            raise OutOfBlocksError(
                f"sequence {seq!r} needs {needed} more blocks of {self.block_size} tokens for "
                f"{tokens} tokens, but {len(self._free)} of {self.num_blocks} are free"
            )
        taken = tuple(self._free.pop() for _ in range(needed))
        self._tables.setdefault(seq, []).extend(taken)
        self._tokens[seq] = max(self._tokens.get(seq, 0), tokens)
        return taken

    def free(self, seq: Hashable) -> int:
        """Give back every block of `seq` (it then holds none); how many there were."""
        table = self._tables.pop(seq, [])
        self._tokens.pop(seq, None)
        self._free.extend(reversed(table))  # its first block back on top
        return len(table)

    def table_array(self, seqs: Sequence[Hashable], width: int | None = None) -> np.ndarray:
        """The block tables of `seqs`, one row each, as int32 [len(seqs), width], padded with
        PAD_BLOCK; `width` defaults to the longest table (a captured step fixes it instead)."""
        tables = [self._tables.get(seq, []) for seq in seqs]
        longest = max((len(table) for table in tables), default=0)
        width = longest if width is None else width
        if longest > width:
            raise InvalidInputError(
                f"a block table of {longest} blocks does not fit a table array {width} wide"
            )
        array = np.full((len(tables), width), PAD_BLOCK, dtype=np.int32)
        for row, table in enumerate(tables):
            array[row, : len(table)] = table
        return array
