"""The decoder on the GPU: one implementation for every decoder family, driven by `ModelSpec`.

A step runs T tokens of up to B sequences at once, packed without padding (sequence b's tokens
are rows cu_seqlens[b]..cu_seqlens[b+1]-1 of every activation), and returns the logits of the
rows named in `last_rows`:

    x = embed(tokens) (+ learned positions)                  the residual stream, fp32 [T, H]
    per layer, sequential (GPT-2, LLaMA):   x = x + attn(ln1(x)) + b_o
                                            x = x + mlp(ln2(x)) + b_down
               parallel (GPT-J):            x = x + attn(ln1(x)) + b_o + mlp(ln1(x)) + b_down
    logits = final_norm(x at last_rows) @ Wlm^T (+ b_lm)

    attn(h) = attention(q, cached k, v) @ Wo^T, q, k, v = rotary(h @ Wqkv^T + b_qkv), this step's
              k and v written into the KV cache in place
    mlp(h)  = act(h @ Wup^T + b_up) @ Wdown^T (gated: act(gate) * up, both from one GEMM)

A layer's linears may hold 8-bit weights with per-channel scales (`runtime.quantize`): the
dispatch then multiplies by codes * scales (weight-only kernels while a step has at most 16 tokens,
dequantised weights beyond), so nothing here changes but the scale passed with each weight.

`Decoder._layer` is that block, in that order, as `runtime.reference`'s `_layer` is. Each
residual add is one kernel with the norm that follows it (`_add_residual_and_norm`: ln2, the
next layer's ln1, or, after the last layer, the final norm of the last rows), so x is read and
written once per add, in fp32, with the biases of attention-out and FFN-down riding along;
the QKV bias rides in the rotary kernel and FFN-up's in the activation. The first layer's ln1
runs alone, after the embedding. A parallel block runs its MLP on a second stream beside
attention (`_attention_beside_mlp`). Every GEMM goes through one `GemmDispatch`. Buffers (KV
cache, activations) are allocated once, sized by `runtime.memory`, and reused by every layer
and step; a step allocates nothing and never synchronises, so a decode step can be captured in
a CUDA graph (see `runtime.generate`).

Everything a step launches goes through the decoder's `ops` (`DecoderOps`: the launchers of
`kernels.decoder` and `kernels.attention`, and the GEMM dispatch's `linear`) and nothing else,
so another table sees every launch: the per-operation breakdown (`runtime.breakdown`) swaps in
a recording copy (`DecoderOps.recorded`) for the step it times.

This is one GPU's decoder of the whole model. Tensor parallelism, pipeline stages and
micro-batches wrap it (`runtime.rank.RankDecoder`: partial outputs summed over the ranks where
they join the residual stream, the residual passed between stages, a step run in parts);
nothing here depends on them. CuPy is imported where it is used, so that the module imports
on a machine without a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftbench.dtypes import DTYPE_OF_NUMPY, RUNTIME_DTYPES, dtype_info, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.gemm.dispatch import GemmDispatch
from ftbench.kernels.attention import (
    context_attention,
    decode_attention,
    decode_workspace,
    decode_workspace_floats,
)
from ftbench.kernels.decoder import bias_act, embed, qkv_rotary, residual_norm
from ftbench.kernels.streams import branch_stream
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.memory import Footprint, check_fits
from ftbench.runtime.pipeline import whole_model
from ftbench.runtime.quantize import weight_format
from ftbench.runtime.reference import rope_inverse_frequencies
from ftbench.runtime.weights import ModelWeights, Norm, check_shapes, to_device

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


@dataclass(frozen=True)
class DecoderOps:
    """Everything a decoder step launches on the GPU, by name (see the module docstring): the
    kernel launchers of `kernels.decoder` and `kernels.attention`, and `linear`, the GEMM
    dispatch's out = x @ weight^T. The decoder calls them as `self.ops.<name>(...)`, with the
    launchers' own arguments. CuPy's element-wise calls (the LM head's bias; a `RankDecoder`'s
    sum of GPT-J's two branches and its gathered logits' copy) are not entries."""

    linear: Callable[..., None]
    embed: Callable[..., None] = embed
    residual_norm: Callable[..., None] = residual_norm
    qkv_rotary: Callable[..., None] = qkv_rotary
    bias_act: Callable[..., None] = bias_act
    context_attention: Callable[..., None] = context_attention
    decode_attention: Callable[..., None] = decode_attention

    def recorded(self, record: Callable[[str, tuple, dict], None]) -> DecoderOps:
        """A copy whose every entry runs the original, then calls record(name, args, kwargs)
        (entries that are None stay None)."""

        def recording(name: str, run: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                result = run(*args, **kwargs)
                record(name, args, kwargs)
                return result

            return call

        entries = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        present = {name: run for name, run in entries.items() if run is not None}
        return dataclasses.replace(
            self, **{name: recording(name, run) for name, run in present.items()}
        )


@dataclass(frozen=True)
class Rows:
    """The rows of the decoder's buffers that one pass through the layers works on: `tokens`,
    rows of the activations (the step's packed tokens), and `sequences`, rows of the KV cache.
    A `Decoder` step is one pass over the whole step; a `RankDecoder` may run several."""

    tokens: slice
    sequences: slice


@dataclass(frozen=True)
class NextNorm:
    """The norm a residual add is fused with: `norm` of the residual rows (`rows`: None, every
    row of the pass; or int32 [R], those rows only) into `out`."""

    norm: Norm
    out: Any
    rows: Any = None


class Decoder:
    """One GPU's decoder of the whole model: weights, KV cache and activation buffers on the
    current GPU (see the module docstring).

    `stage` (the whole model, as one stage) and `comm` (None) are what the generator reads to
    tell a one-GPU decoder from a rank of a parallel run (`runtime.rank.RankDecoder`).
    """

    comm: Any = None

    def __init__(
        self,
        spec: ModelSpec,
        weights: ModelWeights,
        *,
        max_batch: int,
        max_seq_len: int,
        max_tokens: int | None = None,
        gemm: GemmDispatch | None = None,
    ) -> None:
        self.stage = whole_model(spec)
        self._set_up(spec, weights, max_batch, max_seq_len, max_tokens, gemm, tp=1)

    def _set_up(
        self,
        spec: ModelSpec,
        weights: ModelWeights,
        max_batch: int,
        max_seq_len: int,
        max_tokens: int | None,
        gemm: GemmDispatch | None,
        tp: int,
    ) -> None:
        """Check that `weights` (a `tp`-way shard of `self.stage`'s layers) run and fit, put
        them on the GPU and allocate every buffer."""
        import cupy

        check_runnable(spec, max_seq_len)
        dtype = DTYPE_OF_NUMPY.get(numpy_name(weights.dtype))
        if dtype not in RUNTIME_DTYPES:
            raise InvalidInputError(f"the runtime runs fp16 or bf16 weights, not {weights.dtype}")
        check_shapes(weights, spec, tp, self.stage.layers)
        self.spec, self.dtype, self.tp = spec, dtype, tp
        # None, or the 8-bit format of the layers' linears ("int8", "fp8": `runtime.quantize`)
        self.weight_format = weight_format(weights)
        # Parallel blocks run attention and MLP on two streams (see `_attention_beside_mlp`).
        self.overlap_branches = True
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.max_tokens = max_batch * max_seq_len if max_tokens is None else max_tokens
        self.rank = rank_shapes(spec, tp)
        self.gemm = gemm or GemmDispatch()
        if self.gemm.activations == "fp8" and self.weight_format != "fp8":
            raise InvalidInputError(
                f"fp8 activations multiply fp8 weights; these are {self.weight_format or dtype}: "
                "quantise them to fp8 (runtime.quantize)"
            )
        self.ops = DecoderOps(linear=self.gemm.linear)
        free_bytes, _ = cupy.cuda.runtime.memGetInfo()
        on_device = isinstance(weights.layers[0].qkv.weight, cupy.ndarray)
        resident = 0 if not on_device else _weights_bytes(weights)
        self.footprint: Footprint = check_fits(
            spec, max_batch, max_seq_len, dtype, free_bytes + resident, tp, self.max_tokens,
            self.stage.layers, self.weight_format, self.gemm.activations,
        )  # fmt: skip
        self.weights = weights if on_device else weights.map(to_device)
        self._allocate(cupy)
        # The weights may still be in flight on the caller's stream (host copies, random
        # draws), and steps run on other, non-blocking streams that do not wait for it.
        cupy.cuda.Device().synchronize()

    def _allocate(self, cupy: Any) -> None:
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
        """Wait for the current stream's work (`what` it is, for a `RankDecoder`'s message when
        a peer does not answer)."""
        import cupy

        cupy.cuda.get_current_stream().synchronize()

    def forward(self, step: StepInputs) -> Any:
        """Run one step; the logits [R, vocab_padded] of `step.last_rows` (a view of a buffer
        the next step overwrites)."""
        rows = self._whole_step(step)
        self._embed(step, rows)
        self._layers(step, rows, then=self._final_norm(step))
        return self._logits(step)

    def _whole_step(self, step: StepInputs) -> Rows:
        """Every row of `step`, once it is known to fit the buffers."""
        count = int(step.tokens.shape[0])
        rows = int(step.last_rows.shape[0])
        if count > self.max_tokens or rows > self.max_batch:
            raise InvalidInputError(
                f"a step of {count} tokens and {rows} sequences exceeds this decoder's buffers "
                f"({self.max_tokens} tokens, batch {self.max_batch})"
            )
        return Rows(slice(0, count), slice(0, int(step.cu_seqlens.shape[0]) - 1))

    def _embed(self, step: StepInputs, rows: Rows) -> None:
        """x = embed(tokens) (+ learned positions), in fp32."""
        weights = self.weights
        x = self.residual[rows.tokens]
        self.ops.embed(step.tokens, step.positions, weights.embed, weights.positions, x)

    def _layers(self, step: StepInputs, rows: Rows, then: NextNorm) -> None:
        """The layers on `rows` of x: the first layer's ln1 alone, then every layer, whose last
        residual add runs with the next layer's ln1 or, after the last layer, with `then`."""
        layers, normed = self.weights.layers, self.normed[rows.tokens]
        self._norm(self.residual[rows.tokens], NextNorm(layers[0].ln1, normed))
        for index in range(len(layers)):
            following = NextNorm(layers[index + 1].ln1, normed) if index + 1 < len(layers) else then
            self._layer(index, step, rows, following)

    def _layer(self, index: int, step: StepInputs, rows: Rows, then: NextNorm) -> None:
        """Layer `index` on `rows` of x (fp32, updated in place), entered with normed = ln1(x):

            sequential: x = x + attn(ln1(x)) + b_o;  x = x + mlp(ln2(x)) + b_down
            parallel:   x = x + attn(ln1(x)) + b_o + mlp(ln1(x)) + b_down

        Each residual add runs with the norm that follows it (ln2, then `then`), one kernel."""
        layer = self.weights.layers[index]
        x, normed = self.residual[rows.tokens], self.normed[rows.tokens]
        if self.spec.parallel_attn_mlp:
            attention, mlp = self._attention_beside_mlp(index, normed, step, rows)
            biases = (layer.attn_out.bias, layer.ffn_down.bias)
            self._add_residual_and_norm(x, (attention, mlp), biases, then)
            return
        attention = self._attention(index, normed, step, rows)
        ln2 = NextNorm(layer.ln2, normed)
        self._add_residual_and_norm(x, (attention,), (layer.attn_out.bias,), ln2)
        mlp = self._mlp(layer, normed, rows)
        self._add_residual_and_norm(x, (mlp,), (layer.ffn_down.bias,), then)

    def _norm(self, x: Any, then: NextNorm) -> None:
        """then.out = then.norm(x), x unchanged."""
        norm, spec = then.norm, self.spec
        self.ops.residual_norm(
            x, then.out, norm.weight, norm.bias, spec.norm_eps, spec.norm, rows=then.rows
        )

    def _add_residual_and_norm(
        self, x: Any, deltas: tuple[Any, ...], biases: tuple[Any, ...], then: NextNorm
    ) -> None:
        """x += sum(deltas) + sum(biases), then then.out = then.norm(x): one kernel, which
        reads and writes x once."""
        norm, spec = then.norm, self.spec
        self.ops.residual_norm(
            x, then.out, norm.weight, norm.bias, spec.norm_eps, spec.norm,
            deltas=deltas, delta_biases=biases, rows=then.rows,
        )  # fmt: skip

    def _final_norm(self, step: StepInputs) -> NextNorm:
        """The final norm, of each sequence's last row only (`step.last_rows`), into the LM
        head's input."""
        rows = int(step.last_rows.shape[0])
        return NextNorm(self.weights.final_norm, self.last_hidden[:rows], step.last_rows)

    def _attention(self, index: int, normed: Any, step: StepInputs, rows: Rows) -> Any:
        """attn(ln1(x)) of layer `index` on `rows`, before attn_out's bias."""
        spec, rank, layer = self.spec, self.rank, self.weights.layers[index]
        tokens, count = rows.tokens, rows.tokens.stop - rows.tokens.start
        qkv, queries, context = self.qkv[tokens], self.queries[tokens], self.context[tokens]
        keys, values = self.kv_cache[index, 0], self.kv_cache[index, 1]
        self.ops.linear(normed, layer.qkv.weight, qkv, layer.qkv.scale)
        rotary_dim = spec.rotary_dim if spec.position_embedding == "rotary" else 0
        # seq_ids are cache rows of the whole cache.
        self.ops.qkv_rotary(
            qkv, layer.qkv.bias, queries, keys, values, step.seq_ids, step.positions,
            num_q_heads=rank.q_heads, num_kv_heads=rank.kv_heads, head_dim=spec.head_dim,
            rotary_dim=rotary_dim, rotary_base=spec.rope_theta,
            interleaved=spec.rotary_interleaved, inv_freqs=self.inv_freqs,
        )  # fmt: skip
        # The attention kernels read sequence b of the launch from cache row b: the rows'
        # sequences, a contiguous slice of the batch axis.
        keys, values = keys[rows.sequences], values[rows.sequences]
        scale = 1.0 / math.sqrt(spec.head_dim)
        if step.decode:
            # Token b is sequence b: the query rows are the sequences.
            self.ops.decode_attention(
                queries, keys, values, step.lengths, context, scale=scale,
                max_length=step.max_length or self.max_seq_len,
                workspace=self.decode_workspace,
            )  # fmt: skip
        else:
            # cu_seqlens count rows from the step's first token: q and out start there too.
            end = tokens.stop
            self.ops.context_attention(
                self.queries[:end], keys, values, step.cu_seqlens, step.past_lens,
                self.context[:end], scale=scale, max_q_len=step.max_q_len,
            )  # fmt: skip
        out = self.attention_out[tokens]
        self.ops.linear(
            context.reshape(count, -1), layer.attn_out.weight, out, layer.attn_out.scale
        )
        return out

    def _mlp(self, layer: Any, normed: Any, rows: Rows) -> Any:
        """mlp(h) of one layer on `rows`, before ffn_down's bias."""
        up, inner = self.ffn_up[rows.tokens], self.ffn_inner[rows.tokens]
        self.ops.linear(normed, layer.ffn_up.weight, up, layer.ffn_up.scale)
        self.ops.bias_act(up, layer.ffn_up.bias, inner, self.spec.activation, self.spec.gated_ffn)
        out = self.mlp_out[rows.tokens]
        self.ops.linear(inner, layer.ffn_down.weight, out, layer.ffn_down.scale)
        return out

    def _attention_beside_mlp(
        self, index: int, normed: Any, step: StepInputs, rows: Rows
    ) -> tuple[Any, Any]:
        """attn(ln1(x)) and mlp(ln1(x)) of a parallel block, side by side: the MLP on the
        device's branch stream (`kernels.streams`), attention on the current one, which then
        waits for the MLP. Attention's small kernels so run while the MLP reads its weights.
        With `overlap_branches` False (the per-operation breakdown), one after the other."""
        layer = self.weights.layers[index]
        if not self.overlap_branches:
            return self._attention(index, normed, step, rows), self._mlp(layer, normed, rows)
        import cupy

        main = cupy.cuda.get_current_stream()
        branch = branch_stream(cupy.cuda.Device().id)
        branch.wait_event(main.record())
        with branch:
            mlp = self._mlp(layer, normed, rows)
        attention = self._attention(index, normed, step, rows)
        main.wait_event(branch.record())
        return attention, mlp

    def _logits(self, step: StepInputs) -> Any:
        """final_norm(x at last_rows) @ Wlm^T (+ b_lm), from the final norm's output."""
        rows = int(step.last_rows.shape[0])
        logits, lm_head = self.logits[:rows], self.weights.lm_head
        self.ops.linear(self.last_hidden[:rows], lm_head.weight, logits)
        if lm_head.bias is not None:
            import cupy

            cupy.add(logits, lm_head.bias, out=logits)
        return logits


def _weights_bytes(weights: ModelWeights) -> int:
    return sum({id(a): a.nbytes for a in weights.named_tensors().values()}.values())
