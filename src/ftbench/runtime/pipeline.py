"""Pipeline parallelism: the decoder's layers cut into stages, one stage per group of ranks.

A run of tp x pp ranks puts global rank r on stage r // tp as tensor-parallel rank r % tp
(`rank_place`): the tp ranks of a stage share its layers' Megatron shards and all-reduce among
themselves (the stage's tensor communicator), and the pp ranks with one tensor-parallel rank,
one per stage, form its pipeline communicator (its rank = the stage index), through which the
stages pass, with `send` and `recv`:

- activations, stage s to s + 1, once per micro-batch: the fp32 residual rows [tokens, hidden]
  of its sequences, the stage's last layer's outputs already added (`rank.RankDecoder`), so
  nothing else has to travel;
- the sampled tokens [B] int32, from the last stage (which runs the final norm, the LM head and
  the sampler) back to the first (which embeds them in the next step), once per step
  (`Stage.share_tokens`, called by `runtime.generate`). Stages in between never see tokens.

Stage s holds `profiles.problems.stage_layers` (contiguous, balanced), their weights
(`sharding.stage_weights`: the embeddings only on the first stage, the final norm and LM head
only on the last) and a KV cache for those layers alone.

Micro-batches (GPipe): a step's B sequences are cut into m contiguous ranges
(`micro_batches`, as equal as can be, the first B % m one longer; m = 1 is the whole step, m > B
an error). Every stage runs micro-batch 0, sends it, runs micro-batch 1, sends it, ... on its
one stream, so with one process per stage stage s works on micro-batch j while stage s + 1
works on j - 1. A step is still one pass through the pipeline (the next step's tokens come from
this one's last stage), so every step fills and drains it: of the m + pp - 1 micro-batch slots
a step takes, each stage is idle in pp - 1, a bubble of (pp - 1) / (m + pp - 1) (m = 1: the
whole pipeline waits on one stage at a time). m = pp is the natural choice: the bubble falls
from (pp - 1) / pp to (pp - 1) / (2 pp - 1) (1/2 to 1/3 at pp = 2) while a micro-batch stays
large enough to keep the GEMMs efficient. The bubble counts equal slots, which holds where a
stage's time grows with its rows (prefill, large batches). A small-batch decode step is bound
by reading the stage's weights, once per micro-batch whatever its size, so there m
micro-batches make a step m + pp - 1 weight reads long instead of pp: slower, not faster (see
docs/runtime/parallel.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ftbench.errors import InvalidInputError
from ftbench.profiles.problems import stage_layers
from ftbench.profiles.spec import ModelSpec


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as one of its ranks sees it: its index of `count`, its layers, and
    the pipeline communicator (rank = stage index; None for a single stage)."""

    index: int
    count: int
    layers: range
    comm: Any = None

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise InvalidInputError(f"stage must be in 0..{self.count - 1}, got {self.index}")
        size = 1 if self.comm is None else self.comm.world_size
        if self.count > 1 and (size != self.count or self.comm.rank != self.index):
            raise InvalidInputError(
                f"stage {self.index} of {self.count} needs a pipeline communicator of "
                f"{self.count} ranks in which it is rank {self.index}"
            )

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1

    def share_tokens(self, tokens: Any) -> None:
        """The last stage sends the tokens it sampled to the first, which receives them into
        `tokens`; other stages (and a single stage) do nothing."""
        if self.count == 1:
            return
        if self.last:
            self.comm.send(tokens, 0)
        elif self.first:
            self.comm.recv(tokens, self.count - 1)


def whole_model(spec: ModelSpec) -> Stage:
    """The single stage of a run without pipeline parallelism: every layer."""
    return Stage(0, 1, range(spec.num_layers))


def stage_plan(spec: ModelSpec, pp: int) -> list[range]:
    """Every stage's layers (`profiles.problems.stage_layers`), in stage order."""
    return [stage_layers(spec, pp, stage) for stage in range(pp)]


def rank_place(rank: int, tp: int, pp: int) -> tuple[int, int]:
    """(stage, tensor-parallel rank) of global rank `rank` in a run of tp x pp ranks."""
    if tp < 1 or pp < 1 or not 0 <= rank < tp * pp:
        raise InvalidInputError(f"rank {rank} is not in a run of tp={tp} x pp={pp} ranks")
    return divmod(rank, tp)


def tensor_group(stage: int, tp: int) -> list[int]:
    """The global ranks of stage `stage`'s tensor communicator."""
    return [stage * tp + tp_rank for tp_rank in range(tp)]


def pipeline_group(tp_rank: int, tp: int, pp: int) -> list[int]:
    """The global ranks of tensor-parallel rank `tp_rank`'s pipeline communicator, by stage."""
    return [stage * tp + tp_rank for stage in range(pp)]


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of a step: its sequences (and KV-cache rows), its packed tokens (rows
    of the step's activations) and its longest sequence's token count."""

    sequences: range
    tokens: range
    longest: int


def split_sequences(batch: int, count: int) -> list[range]:
    """`count` contiguous ranges of a batch's sequences, in order, as equal as can be (the
    first batch % count one longer)."""
    if count < 1:
        raise InvalidInputError(f"micro-batches must be at least 1, got {count}")
    if count > batch:
        raise InvalidInputError(
            f"{count} micro-batches need at least {count} sequences; the step has {batch}"
        )
    size, longer = divmod(batch, count)
    bounds = [0]
    for index in range(count):
        bounds.append(bounds[-1] + size + (index < longer))
    return [range(start, stop) for start, stop in zip(bounds, bounds[1:], strict=False)]


def micro_batches(cu_seqlens: Sequence[int], count: int) -> list[MicroBatch]:
    """A step of packed sequences (sequence b's tokens are rows cu_seqlens[b] ..
    cu_seqlens[b + 1] - 1, host values) cut into `count` micro-batches (`split_sequences`)."""
    bounds = [int(value) for value in cu_seqlens]
    if len(bounds) < 2 or bounds[0] != 0 or any(b < a for a, b in pairwise(bounds)):
        raise InvalidInputError(
            f"cu_seqlens must start at 0 and not decrease, with one entry more than the "
            f"sequences; got {bounds}"
        )
    return [
        MicroBatch(
            part,
            range(bounds[part.start], bounds[part.stop]),
            max(bounds[b + 1] - bounds[b] for b in part),
        )
        for part in split_sequences(len(bounds) - 1, count)
    ]
