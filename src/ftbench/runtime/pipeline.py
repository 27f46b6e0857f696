"""Pipeline parallelism: the decoder's layers cut into stages, one stage per group of ranks.

A run of tp x pp ranks puts global rank r on stage r // tp as tensor-parallel rank r % tp
(`rank_place`): the tp ranks of a stage share its layers' Megatron shards and all-reduce among
themselves (the stage's tensor communicator), and the pp ranks with one tensor-parallel rank,
one per stage, form its pipeline communicator (its rank = the stage index), through which the
stages pass, with `send` and `recv`:

- activations, stage s to s + 1, once per step: the fp32 residual rows [T, hidden] with every
  pending delta of the stage's last layer already added (`Decoder.forward` folds them in with
  one `residual_norm`), so nothing else has to travel;
- the sampled tokens [B] int32, from the last stage (which runs the final norm, the LM head and
  the sampler) back to the first (which embeds them in the next step), once per step
  (`Stage.share_tokens`, called by `runtime.generate`). Stages in between never see tokens.

Stage s holds `profiles.problems.stage_layers` (contiguous, balanced), their weights
(`weights.stage_weights`: the embeddings only on the first stage, the final norm and LM head
only on the last) and a KV cache for those layers alone.

One micro-batch: a step runs the whole batch through stage after stage, so at any moment one
stage works and the others wait on their `recv` (the bubble is (pp - 1) / pp of the time).
Pipeline parallelism here buys memory (a model larger than one GPU), not decode speed.
"""

from __future__ import annotations

from dataclasses import dataclass
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

    def receive_activations(self, residual: Any) -> None:
        """The previous stage's residual rows, into `residual`."""
        self.comm.recv(residual, self.index - 1)

    def send_activations(self, residual: Any) -> None:
        """This stage's residual rows, to the next stage."""
        self.comm.send(residual, self.index + 1)

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
