"""One rank's decoder in a tensor- and pipeline-parallel run: `RankDecoder`, the one-GPU
`Decoder` (`runtime.model`) with the parallel parts added where they belong, as gpt-fast keeps
`tp.py` apart from `model.py`.

- Tensor parallelism (Megatron's split, `sharding.shard`). A rank's attention-out and FFN-down
  give partial sums over its heads and FFN columns; they are summed over the ranks (the tensor
  communicator's `all_reduce`, `runtime.parallel`) where they join the residual stream, right
  before the fused residual add, whose biases so count once: one all-reduce per add, and GPT-J's
  two branches are added together first, so its parallel block all-reduces once per layer. The
  embedding is split by vocabulary like the LM head: each rank embeds the tokens in its rows
  (zeros for the others), rank 0 alone adds the learned positions, and the fp32 rows are
  summed. The LM head's vocabulary slices are gathered, so that sampling sees the whole
  vocabulary. A communicator of one rank may be given with tp=1: it then runs its collectives
  (all but the embedding's), which change nothing.
- Pipeline stages (`runtime.pipeline`). The decoder holds its stage's layers: the first stage
  embeds, the others receive the residual from the stage before; every stage but the last sends
  its residual on, and only the last computes logits.
- Micro-batches (`RankDecoder(micro_batches=m)`). The step's sequences go through the layers m
  contiguous groups at a time (`step_micro_batches`), each on its own rows of the activations and
  of the KV cache (`micro_batch_inputs`), received and sent one by one, so that stages work on
  different micro-batches at once; the last stage computes the logits once, after the last
  micro-batch.

The last layer's residual add: with one micro-batch on the last stage it runs with the final
norm, as on one GPU. Otherwise each micro-batch's last add is wanted for the residual alone,
which goes to the next stage or waits for the other micro-batches before the final norm runs
once; the fused kernel norms anyway (`_residual_only`).

The communicators' calls are entries of the decoder's `ops` (`RankOps`), like its kernels, so
the per-operation breakdown (`runtime.breakdown`) times them too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ftbench.dtypes import dtype_info
from ftbench.errors import InvalidInputError
from ftbench.gemm.dispatch import GemmDispatch
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.model import Decoder, DecoderOps, NextNorm, Rows, StepInputs
from ftbench.runtime.parallel import Communicator
from ftbench.runtime.pipeline import MicroBatch, Stage, micro_batches, whole_model
from ftbench.runtime.sharding import vocabulary_start
from ftbench.runtime.weights import ModelWeights


@dataclass(frozen=True)
class RankOps(DecoderOps):
    """`DecoderOps` and a rank's communicator calls: the tensor communicator's `all_reduce`
    and `all_gather`, the pipeline communicator's `send` and `recv` (None without that
    communicator)."""

    all_reduce: Callable[..., None] | None = None
    all_gather: Callable[..., None] | None = None
    send: Callable[..., None] | None = None
    recv: Callable[..., None] | None = None


class RankDecoder(Decoder):
    """One rank's decoder (see the module docstring).

    `weights` are this rank's shard (`sharding.shard`) of its stage's layers
    (`sharding.stage_weights`); `comm`: the tensor communicator of `tp` ranks (None: tp=1);
    `stage`: the pipeline stage (None: the whole model); `micro_batches` m, at most max_batch:
    every step runs as m micro-batches (a step of fewer than m sequences is an error).
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: ModelWeights,
        *,
        max_batch: int,
        max_seq_len: int,
        max_tokens: int | None = None,
        gemm: GemmDispatch | None = None,
        tp: int = 1,
        comm: Communicator | None = None,
        stage: Stage | None = None,
        micro_batches: int = 1,
    ) -> None:
        if not 1 <= micro_batches <= max_batch:
            raise InvalidInputError(
                f"micro_batches must be in 1..max_batch ({max_batch}), got {micro_batches}"
            )
        if (comm.world_size if comm is not None else 1) != tp:
            raise InvalidInputError(
                f"tp={tp} needs a communicator of {tp} ranks, got "
                f"{'none' if comm is None else comm.world_size}"
            )
        self.comm, self.stage, self.micro_batches = comm, stage or whole_model(spec), micro_batches
        tp_rank = comm.rank if comm is not None else 0
        self.vocab_start = vocabulary_start(spec, tp, tp_rank)
        # Learned positions are added on one rank, before the embedding's all-reduce.
        self.adds_positions = tp_rank == 0
        self._set_up(spec, weights, max_batch, max_seq_len, max_tokens, gemm, tp)
        pipe = self.stage.comm
        self.ops = RankOps(
            linear=self.gemm.linear,
            all_reduce=None if comm is None else comm.all_reduce,
            all_gather=None if comm is None else comm.all_gather,
            send=None if pipe is None else pipe.send,
            recv=None if pipe is None else pipe.recv,
        )

    def _allocate(self, cupy: Any) -> None:
        super()._allocate(cupy)
        if self.comm is not None:
            dt, width = dtype_info(self.dtype).numpy_name, self.rank.lm_head_rows
            self.gathered = cupy.empty(self.tp * self.max_batch * width, dt)
            self.all_logits = cupy.empty((self.max_batch, self.rank.vocab_padded), dt)

    def wait(self, what: str) -> None:
        """Wait for the current stream. With partner ranks the wait is the communicator's,
        bounded by its timeout: a rank whose peer died raises instead of hanging."""
        comm = self.comm if self.comm is not None else self.stage.comm
        if comm is None:
            super().wait(what)
        else:
            comm.synchronize(what)

    def forward(self, step: StepInputs) -> Any:
        """Run one step; the logits [R, vocab_padded] of `step.last_rows` (a view of a buffer
        the next step overwrites; with a communicator gathered from every rank's vocabulary
        slice), or None on a pipeline stage before the last."""
        whole = self._whole_step(step)
        parts = step_micro_batches(step, self.micro_batches)
        fused = len(parts) == 1 and self.stage.last
        for part in parts:
            rows = Rows(
                slice(part.tokens.start, part.tokens.stop),
                slice(part.sequences.start, part.sequences.stop),
            )
            then = self._final_norm(step) if fused else self._residual_only(rows)
            self._pass(micro_batch_inputs(step, part), rows, then)
        if not self.stage.last:
            return None
        if not fused:
            self._norm(self.residual[whole.tokens], self._final_norm(step))
        return self._logits(step)

    def _pass(self, step: StepInputs, rows: Rows, then: NextNorm) -> None:
        """One micro-batch (`step`: its part of the step, `micro_batch_inputs`) through this
        stage's layers on its `rows`: embedded (first stage) or received, the layers run, the
        last residual add with `then`, the residual sent on (unless this is the last stage).

        Micro-batches use different rows of every buffer, and everything runs on one stream
        (the parallel block's branch joins it before the block ends), so a micro-batch's send,
        which NCCL reads asynchronously on that stream, is done before any later kernel, the
        next step's included, runs."""
        x = self.residual[rows.tokens]
        if self.stage.first:
            self._embed(step, rows)
        else:
            self.ops.recv(x, self.stage.index - 1)
        self._layers(step, rows, then)
        if not self.stage.last:
            self.ops.send(x, self.stage.index + 1)

    def _residual_only(self, rows: Rows) -> NextNorm:
        """What the last residual add of a micro-batch runs with when only the residual is
        wanted: the fused kernel always norms, here into the normed buffer with the last
        layer's ln1, and nothing reads that."""
        return NextNorm(self.weights.layers[-1].ln1, self.normed[rows.tokens])

    def _embed(self, step: StepInputs, rows: Rows) -> None:
        """x = this rank's vocabulary rows of the embedding (+ learned positions, on
        tensor-parallel rank 0), summed over the ranks."""
        x, weights = self.residual[rows.tokens], self.weights
        positions = weights.positions if self.adds_positions else None
        self.ops.embed(step.tokens, step.positions, weights.embed, positions, x, self.vocab_start)
        if self.tp > 1:
            self.ops.all_reduce(x)

    def _add_residual_and_norm(
        self, x: Any, deltas: tuple[Any, ...], biases: tuple[Any, ...], then: NextNorm
    ) -> None:
        """The residual add of this rank's partial `deltas`, summed over the ranks first."""
        super()._add_residual_and_norm(x, self._sum_over_ranks(deltas), biases, then)

    def _sum_over_ranks(self, partials: tuple[Any, ...]) -> tuple[Any, ...]:
        """Megatron's all-reduce: this rank's partial outputs summed over the ranks, as the
        residual add takes them. Without a communicator they are returned as they are (the
        add sums them); with one they are added together first, into the last, so GPT-J's
        parallel block all-reduces once per layer."""
        if self.comm is None:
            return partials
        import cupy

        total = partials[-1]
        for partial in partials[:-1]:
            cupy.add(partial, total, out=total)
        self.ops.all_reduce(total)
        return (total,)

    def _logits(self, step: StepInputs) -> Any:
        logits = super()._logits(step)
        return logits if self.comm is None else self._gather(logits)

    def _gather(self, logits: Any) -> Any:
        """Every rank's vocabulary slice of `logits`, side by side: [R, vocab_padded]."""
        rows, width = logits.shape
        gathered = self.gathered[: self.tp * rows * width].reshape(self.tp, rows, width)
        self.ops.all_gather(logits, gathered)
        full = self.all_logits[:rows]
        full.reshape(rows, self.tp, width)[...] = gathered.transpose(1, 0, 2)
        return full


def make_decoder(
    spec: ModelSpec,
    weights: ModelWeights,
    *,
    tp: int = 1,
    comm: Communicator | None = None,
    stage: Stage | None = None,
    micro_batches: int = 1,
    **buffers: Any,
) -> Decoder:
    """The one-GPU `Decoder` where there is nothing parallel to do (no communicator, the whole
    model, one micro-batch), else a `RankDecoder`; `buffers`: max_batch, max_seq_len and the
    optional max_tokens and gemm of both."""
    if comm is None and stage is None and micro_batches == 1 and tp == 1:
        return Decoder(spec, weights, **buffers)
    return RankDecoder(
        spec, weights, tp=tp, comm=comm, stage=stage, micro_batches=micro_batches, **buffers
    )


def step_micro_batches(step: StepInputs, count: int) -> list[MicroBatch]:
    """`step`'s sequences in `count` micro-batches (`pipeline.micro_batches`), from host values
    only: nothing is read from the device."""
    batch = int(step.cu_seqlens.shape[0]) - 1
    if count == 1:
        return [MicroBatch(range(batch), range(int(step.tokens.shape[0])), step.max_q_len)]
    if step.decode:
        return micro_batches(range(batch + 1), count)
    if step.host_cu_seqlens is None:
        raise InvalidInputError(
            "a prefill split into micro-batches needs StepInputs.host_cu_seqlens "
            "(Generator.prefill_inputs fills it in)"
        )
    return micro_batches(step.host_cu_seqlens, count)


def micro_batch_inputs(step: StepInputs, part: MicroBatch) -> StepInputs:
    """Micro-batch `part` of `step`, as views: its tokens' rows of tokens, seq_ids (cache rows,
    still of the whole cache) and positions; its sequences' past_lens and lengths; cu_seqlens
    [its sequences + 1] (token rows still counted from the step's first); its longest
    sequence as max_q_len. last_rows stay the step's (the last stage uses them after every
    micro-batch)."""
    tokens = slice(part.tokens.start, part.tokens.stop)
    sequences = slice(part.sequences.start, part.sequences.stop)
    return dataclasses.replace(
        step,
        tokens=step.tokens[tokens],
        seq_ids=step.seq_ids[tokens],
        positions=step.positions[tokens],
        cu_seqlens=step.cu_seqlens[part.sequences.start : part.sequences.stop + 1],
        past_lens=step.past_lens[sequences],
        lengths=step.lengths[sequences],
        max_q_len=part.longest,
    )
