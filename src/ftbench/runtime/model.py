"""The decoder on the GPU: one implementation for every decoder family, driven by `ModelSpec`.

A step runs T tokens of up to B sequences at once, packed without padding (sequence b's tokens
are rows cu_seqlens[b]..cu_seqlens[b+1]-1 of every activation), and returns the logits of the
rows named in `last_rows`:

    residual = all_reduce(embed(tokens)) (+ learned positions)  fp32 [T, H]
    per layer:  h = norm1(residual (+ the previous layer's outputs and their biases))
                q, k, v = rotary(h @ Wqkv^T + b)   k, v written into the KV cache in place
                a = all_reduce(attention(q, cache) @ Wo^T)
                sequential (GPT-2, LLaMA): h = norm2(residual += a + bo); m = all_reduce(mlp(h))
                parallel (GPT-J):          m = mlp(h)   (both a and m go into the next norm;
                                           with tp > 1 a + m is all-reduced once)
    logits = all_gather(final_norm(residual at last_rows) @ Wlm^T (+ b))

The all-reduces and the all-gather exist only under tensor parallelism (`runtime.parallel`);
each rank holds its Megatron shard of the weights (`weights.shard`): the embedding is split by
vocabulary like the LM head, so each rank embeds the tokens in its rows (zeros for the others),
rank 0 alone adds the learned positions, and the fp32 rows are summed. Under pipeline
parallelism (`runtime.pipeline`) a decoder runs one stage's layers: the first stage embeds, the
others receive the residual from the stage before; every stage but the last adds its pending
deltas to the residual and sends it on, and only the last computes logits. With m micro-batches
(`Decoder(micro_batches=m)`) the step's sequences go through the layers m contiguous groups at
a time, each on its own rows of the activations and of the KV cache, received and sent one by
one, so that stages work on different micro-batches at once; the last stage computes the logits
once, after the last micro-batch.

Residual additions are fused into the next norm (`residual_norm`), biases of QKV into the
rotary kernel and of FFN-up into the activation. A parallel block runs its MLP on a second
stream beside attention (`Decoder._parallel_block`). Every GEMM goes through one `GemmDispatch`.
Buffers (KV cache, activations) are allocated once, sized by `runtime.memory`, and reused by
every layer and step; a step allocates nothing and never synchronises, so a decode step can be
captured in a CUDA graph (see `runtime.generate`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftbench.dtypes import DTYPE_OF_NUMPY, RUNTIME_DTYPES, dtype_info, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.gemm.dispatch import GemmDispatch
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.memory import Footprint, check_fits
from ftbench.runtime.parallel import Communicator
from ftbench.runtime.pipeline import MicroBatch, Stage, micro_batches, whole_model
from ftbench.runtime.reference import rope_inverse_frequencies
from ftbench.runtime.weights import ModelWeights, check_shapes, vocabulary_start

MIN_LENGTH_BOUND = 128


def length_bound(length: int, max_seq_len: int) -> int:
    """The host bound on cache lengths that a decode step of sequences of up to `length` tokens
    sizes its attention grid with: the next power of two, at least MIN_LENGTH_BOUND, at most
    max_seq_len. Few distinct bounds mean few CUDA graphs per batch size, and a short sequence
    does not launch blocks for the whole cache."""
    return min(max_seq_len, max(MIN_LENGTH_BOUND, 1 << (max(length, 1) - 1).bit_length()))


def check_runnable(spec: ModelSpec, max_seq_len: int) -> None:
    """Refuse what the runtime does not implement for `spec` with sequences of up to
    `max_seq_len` tokens (needs no GPU, so callers can check before looking for one)."""
    if spec.architecture != "decoder":
        raise InvalidInputError(f"{spec.name}: the runtime runs decoder models only")
    if spec.position_embedding == "rotary":
        rope_inverse_frequencies(spec)  # a rope scaling it does not implement: an error
    if spec.position_embedding == "learned" and max_seq_len > spec.max_positions:
        raise InvalidInputError(
            f"{spec.name} has {spec.max_positions} learned positions; max_seq_len "
            f"{max_seq_len} is longer"
        )
    if spec.sliding_window and max_seq_len > spec.sliding_window:
        raise InvalidInputError(
            f"{spec.name} attends over a sliding window of {spec.sliding_window} tokens, "
            f"which is not implemented; use max_seq_len <= {spec.sliding_window}"
        )


@dataclass(frozen=True)
class StepInputs:
    """One step's token layout, as int32 device arrays (see the module docstring).

    tokens, seq_ids, positions: [T]; cu_seqlens: [B+1]; past_lens: [B] (tokens each sequence
    had in the cache before this step); lengths: [B] (tokens in the cache after it);
    last_rows: [R], the rows whose logits are wanted. `decode` steps have exactly one token
    per sequence (T = B, token b is sequence b's); `max_q_len` bounds any sequence's tokens.
    max_length: a host bound on `lengths` that decode attention sizes its grid with (None: the
    decoder's max_seq_len; see `length_bound`). host_cu_seqlens: cu_seqlens on the host, which
    a prefill split into micro-batches needs (decode steps do not: token b is sequence b).
    """

    tokens: Any
    seq_ids: Any
    positions: Any
    cu_seqlens: Any
    past_lens: Any
    lengths: Any
    last_rows: Any
    decode: bool
    max_q_len: int
    max_length: int | None = None
    host_cu_seqlens: tuple[int, ...] | None = None


class Decoder:
    """One rank's decoder: weights, KV cache and activation buffers on the current GPU.

    With tensor parallelism `tp` > 1, `weights` are this rank's shard (`weights.shard`) and
    `comm` (`runtime.parallel`) sums the partial outputs of attention-out and FFN-down (once per
    layer for a parallel block) and gathers the LM head's vocabulary slices. A communicator of
    one rank may be given with tp=1 (it then runs its collectives, which change nothing).
    With a pipeline `stage`, `weights` are that stage's (`weights.stage_weights`) and the KV
    cache holds its layers only. `micro_batches` (m, at most max_batch): every step runs as m
    micro-batches (`pipeline.micro_batches`; a step of fewer than m sequences is an error).
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
        import cupy

        check_runnable(spec, max_seq_len)
        dtype = DTYPE_OF_NUMPY.get(numpy_name(weights.dtype))
        if dtype not in RUNTIME_DTYPES:
            raise InvalidInputError(f"the runtime runs fp16 or bf16 weights, not {weights.dtype}")
        stage = stage or whole_model(spec)
        if not 1 <= micro_batches <= max_batch:
            raise InvalidInputError(
                f"micro_batches must be in 1..max_batch ({max_batch}), got {micro_batches}"
            )
        check_shapes(weights, spec, tp, stage.layers)
        if (comm.world_size if comm is not None else 1) != tp:
            raise InvalidInputError(
                f"tp={tp} needs a communicator of {tp} ranks, got "
                f"{'none' if comm is None else comm.world_size}"
            )
        self.spec, self.dtype, self.tp, self.comm, self.stage = spec, dtype, tp, comm, stage
        self.micro_batches = micro_batches
        # Parallel blocks run attention and MLP on two streams (see `_parallel_block`).
        self.overlap_branches = True
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.max_tokens = max_batch * max_seq_len if max_tokens is None else max_tokens
        self.rank = rank_shapes(spec, tp)
        tp_rank = comm.rank if comm is not None else 0
        self.vocab_start = vocabulary_start(spec, tp, tp_rank)
        # Learned positions are added on one rank, before the embedding's all-reduce.
        self.adds_positions = tp_rank == 0
        self.gemm = gemm or GemmDispatch()
        free_bytes, _ = cupy.cuda.runtime.memGetInfo()
        on_device = isinstance(weights.layers[0].qkv.weight, cupy.ndarray)
        resident = 0 if not on_device else _weights_bytes(weights)
        self.footprint: Footprint = check_fits(
            spec, max_batch, max_seq_len, dtype, free_bytes + resident, tp, self.max_tokens,
            stage.layers,
        )  # fmt: skip
        self.weights = weights if on_device else weights.map(cupy.asarray)
        self._allocate(cupy)
        # The weights may still be in flight on the caller's stream (host copies, random
        # draws), and steps run on other, non-blocking streams that do not wait for it.
        cupy.cuda.Device().synchronize()

    def _allocate(self, cupy: Any) -> None:
        from ftbench.kernels.attention import decode_workspace, decode_workspace_floats

        spec, rank, dt = self.spec, self.rank, dtype_info(self.dtype).numpy_name
        tokens, batch = self.max_tokens, self.max_batch
        hidden, head_dim = spec.hidden_size, spec.head_dim
        ffn = rank.ffn_hidden_size
        self.kv_cache = cupy.empty(
            (len(self.stage.layers), 2, batch, rank.kv_heads, self.max_seq_len, head_dim), dt
        )
        self.residual = cupy.empty((tokens, hidden), cupy.float32)
        self.normed = cupy.empty((tokens, hidden), dt)
        self.qkv = cupy.empty((tokens, rank.qkv_width), dt)
        self.queries = cupy.empty((tokens, rank.q_heads, head_dim), dt)
        self.context = cupy.empty((tokens, rank.q_heads, head_dim), dt)
        self.attention_out = cupy.empty((tokens, hidden), dt)
        self.ffn_up = cupy.empty((tokens, rank.ffn_up_rows), dt)
        self.ffn_inner = cupy.empty((tokens, ffn), dt) if spec.gated_ffn else self.ffn_up
        self.mlp_out = cupy.empty((tokens, hidden), dt)
        self.last_hidden = cupy.empty((batch, hidden), dt)
        self.logits = cupy.empty((batch, rank.lm_head_rows), dt)
        if self.comm is not None:
            self.gathered = cupy.empty(self.tp * batch * rank.lm_head_rows, dt)
            self.all_logits = cupy.empty((batch, rank.vocab_padded), dt)
        # Rotary angles per position of a scaled rope (None: the kernel computes the plain ones).
        self.inv_freqs = None
        if spec.position_embedding == "rotary" and spec.rope_scaling:
            self.inv_freqs = cupy.asarray(rope_inverse_frequencies(spec).astype(np.float32))
        # The workspace of the length bound that needs the most.
        bounds = {
            length_bound(1 << i, self.max_seq_len) for i in range(self.max_seq_len.bit_length() + 1)
        }
        bound = max(
            bounds,
            key=lambda b: decode_workspace_floats(
                batch, rank.q_heads, head_dim, b, num_kv_heads=rank.kv_heads
            ),
        )
        self.decode_workspace = decode_workspace(
            batch, rank.q_heads, head_dim, bound, num_kv_heads=rank.kv_heads
        )

    def wait(self, what: str) -> None:
        """Wait for the current stream. With partner ranks the wait is the communicator's,
        bounded by its timeout: a rank whose peer died raises instead of hanging."""
        import cupy

        comm = self.comm if self.comm is not None else self.stage.comm
        if comm is None:
            cupy.cuda.get_current_stream().synchronize()
        else:
            comm.synchronize(what)

    def forward(self, step: StepInputs) -> Any:
        """Run one step; the logits [R, vocab_padded] of `step.last_rows` (a view of a buffer
        the next step overwrites; with tp > 1 gathered from every rank's vocabulary slice), or
        None on a pipeline stage before the last."""
        from ftbench.kernels.decoder import residual_norm

        spec, weights = self.spec, self.weights
        count = int(step.tokens.shape[0])
        rows = int(step.last_rows.shape[0])
        if count > self.max_tokens or rows > self.max_batch:
            raise InvalidInputError(
                f"a step of {count} tokens and {rows} sequences exceeds this decoder's buffers "
                f"({self.max_tokens} tokens, batch {self.max_batch})"
            )
        parts = self._plan(step, count)
        # With one micro-batch the last stage's pending deltas go into the final norm; with
        # more, each micro-batch adds its own to its residual rows before the next runs.
        fold = len(parts) > 1 or not self.stage.last
        for part in parts:
            pending = self._stage_pass(_part_of(step, part), part, fold)
        if not self.stage.last:
            return None
        last = self.last_hidden[:rows]
        final = weights.final_norm
        residual_norm(
            self.residual[:count], last, final.weight, final.bias, spec.norm_eps, spec.norm,
            deltas=pending[0], delta_biases=pending[1], rows=step.last_rows,
        )  # fmt: skip
        logits = self.logits[:rows]
        self.gemm.linear(last, weights.lm_head.weight, logits)
        if weights.lm_head.bias is not None:
            import cupy

            cupy.add(logits, weights.lm_head.bias, out=logits)
        return logits if self.comm is None else self._gather(logits)

    def _plan(self, step: StepInputs, count: int) -> list[MicroBatch]:
        """The step's micro-batches (host values only: nothing is read from the device)."""
        batch = int(step.cu_seqlens.shape[0]) - 1
        if self.micro_batches == 1:
            return [MicroBatch(range(batch), range(count), step.max_q_len)]
        if step.decode:
            return micro_batches(range(batch + 1), self.micro_batches)
        if step.host_cu_seqlens is None:
            raise InvalidInputError(
                "a prefill split into micro-batches needs StepInputs.host_cu_seqlens "
                "(Generator.prefill_inputs fills it in)"
            )
        return micro_batches(step.host_cu_seqlens, self.micro_batches)

    def _stage_pass(self, step: StepInputs, part: MicroBatch, fold: bool) -> tuple:
        """One micro-batch (`step`: its part of the step, `_part_of`) through this stage's
        layers, on its rows of the activations: embedded (first stage) or received, the layers
        run, then, with `fold`, the last layer's pending deltas added to the residual, which
        goes to the next stage (unless this is the last). Returns what is still pending.

        Micro-batches use different rows of every buffer, and everything runs on one stream
        (the parallel block's branch joins it before the block ends), so a micro-batch's send,
        which NCCL reads asynchronously on that stream, is done before any later kernel, the
        next step's included, runs."""
        from ftbench.kernels.decoder import embed

        spec, weights = self.spec, self.weights
        tokens = slice(part.tokens.start, part.tokens.stop)
        residual = self.residual[tokens]
        if self.stage.first:
            positions = weights.positions if self.adds_positions else None
            embed(step.tokens, step.positions, weights.embed, positions, residual, self.vocab_start)
            if self.tp > 1:
                self.comm.all_reduce(residual)
        else:
            self.stage.receive_activations(residual)
        pending: tuple[tuple[Any, ...], tuple[Any, ...]] = ((), ())
        for index, layer in enumerate(weights.layers):
            normed = self.normed[tokens]
            self._norm(residual, normed, layer.ln1, pending)
            if spec.parallel_attn_mlp:
                attention, mlp = self._parallel_block(index, layer, normed, step, part)
                pending = (self._reduce(attention, mlp), (layer.attn_out.bias, layer.ffn_down.bias))
                continue
            attention = self._attention(index, normed, step, part)
            attention_sum = self._reduce(attention)
            self._norm(residual, normed, layer.ln2, (attention_sum, (layer.attn_out.bias,)))
            pending = (self._reduce(self._mlp(layer, normed, tokens)), (layer.ffn_down.bias,))
        if fold:
            # Add the pending deltas to the residual (the norm's output is not used), so the
            # residual alone goes to the next stage or into the final norm.
            self._norm(residual, self.normed[tokens], weights.layers[-1].ln1, pending)
            pending = ((), ())
        if not self.stage.last:
            self.stage.send_activations(residual)
        return pending

    def _parallel_block(
        self, index: int, layer: Any, normed: Any, step: StepInputs, part: MicroBatch
    ) -> tuple[Any, Any]:
        """Attention and MLP of a parallel block, side by side: the MLP on the device's branch
        stream (`kernels.streams`), attention on the current one, which then waits for the
        MLP. Attention's small kernels so run while the MLP reads its weights. With
        `overlap_branches` False (the per-operation breakdown), one after the other."""
        if not self.overlap_branches:
            rows = slice(part.tokens.start, part.tokens.stop)
            return self._attention(index, normed, step, part), self._mlp(layer, normed, rows)
        import cupy

        from ftbench.kernels.streams import branch_stream

        main = cupy.cuda.get_current_stream()
        branch = branch_stream(cupy.cuda.Device().id)
        branch.wait_event(main.record())
        with branch:
            mlp = self._mlp(layer, normed, slice(part.tokens.start, part.tokens.stop))
        attention = self._attention(index, normed, step, part)
        main.wait_event(branch.record())
        return attention, mlp

    def _reduce(self, *partials: Any) -> tuple[Any, ...]:
        """The all-reduce of the Megatron split: this rank's partial outputs summed over ranks.

        Without a communicator the partials are returned as they are (the norm adds them); with
        one they are added first, so GPT-J's parallel block all-reduces once per layer.
        """
        if self.comm is None:
            return partials
        import cupy

        total = partials[-1]
        for partial in partials[:-1]:
            cupy.add(partial, total, out=total)
        self.comm.all_reduce(total)
        return (total,)

    def _gather(self, logits: Any) -> Any:
        """Every rank's vocabulary slice of `logits`, side by side: [R, vocab_padded]."""
        rows, width = logits.shape
        gathered = self.gathered[: self.tp * rows * width].reshape(self.tp, rows, width)
        self.comm.all_gather(logits, gathered)
        full = self.all_logits[:rows]
        full.reshape(rows, self.tp, width)[...] = gathered.transpose(1, 0, 2)
        return full

    def _norm(self, residual: Any, out: Any, norm: Any, pending: tuple) -> None:
        from ftbench.kernels.decoder import residual_norm

        residual_norm(
            residual, out, norm.weight, norm.bias, self.spec.norm_eps, self.spec.norm,
            deltas=pending[0], delta_biases=pending[1],
        )  # fmt: skip

    def _attention(self, index: int, normed: Any, step: StepInputs, part: MicroBatch) -> Any:
        """Attention of layer `index` for micro-batch `part` (`step`: its part of the step),
        before attn_out's bias and any all-reduce."""
        from ftbench.kernels.attention import context_attention, decode_attention
        from ftbench.kernels.decoder import qkv_rotary

        spec, rank, layer = self.spec, self.rank, self.weights.layers[index]
        rows, count = slice(part.tokens.start, part.tokens.stop), len(part.tokens)
        qkv, queries, context = self.qkv[rows], self.queries[rows], self.context[rows]
        keys, values = self.kv_cache[index, 0], self.kv_cache[index, 1]
        self.gemm.linear(normed, layer.qkv.weight, qkv)
        rotary_dim = spec.rotary_dim if spec.position_embedding == "rotary" else 0
        # seq_ids are cache rows of the whole cache.
        qkv_rotary(
            qkv, layer.qkv.bias, queries, keys, values, step.seq_ids, step.positions,
            num_q_heads=rank.q_heads, num_kv_heads=rank.kv_heads, head_dim=spec.head_dim,
            rotary_dim=rotary_dim, rotary_base=spec.rope_theta,
            interleaved=spec.rotary_interleaved, inv_freqs=self.inv_freqs,
        )  # fmt: skip
        # The attention kernels read sequence b of the launch from cache row b: the
        # micro-batch's cache rows, a contiguous slice of the batch axis.
        sequences = slice(part.sequences.start, part.sequences.stop)
        keys, values = keys[sequences], values[sequences]
        scale = 1.0 / math.sqrt(spec.head_dim)
        if step.decode:
            # Token b is sequence b: the micro-batch's query rows are its sequences.
            decode_attention(
                queries, keys, values, step.lengths, context, scale=scale,
                max_length=step.max_length or self.max_seq_len,
                workspace=self.decode_workspace,
            )  # fmt: skip
        else:
            # cu_seqlens count rows from the step's first token: q and out start there too.
            end = part.tokens.stop
            context_attention(
                self.queries[:end], keys, values, step.cu_seqlens, step.past_lens,
                self.context[:end], scale=scale, max_q_len=step.max_q_len,
            )  # fmt: skip
        out = self.attention_out[rows]
        self.gemm.linear(context.reshape(count, -1), layer.attn_out.weight, out)
        return out

    def _mlp(self, layer: Any, normed: Any, rows: slice) -> Any:
        """The MLP of one layer on activation rows `rows` (before ffn_down's bias and any
        all-reduce)."""
        from ftbench.kernels.decoder import bias_act

        up, inner = self.ffn_up[rows], self.ffn_inner[rows]
        self.gemm.linear(normed, layer.ffn_up.weight, up)
        bias_act(up, layer.ffn_up.bias, inner, self.spec.activation, self.spec.gated_ffn)
        out = self.mlp_out[rows]
        self.gemm.linear(inner, layer.ffn_down.weight, out)
        return out


def _part_of(step: StepInputs, part: MicroBatch) -> StepInputs:
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


def _weights_bytes(weights: ModelWeights) -> int:
    return sum({id(a): a.nbytes for a in weights.named_tensors().values()}.values())
