"""A NumPy reference of the decoder forward pass, driven only by `ModelSpec` and `ModelWeights`.

This is the ground truth the CUDA runtime is tested against, so it favours reading as the math
over speed. It covers the decoder families (gpt2, megatron-gpt, gptj, llama/mistral): learned or
rotary positions, LayerNorm or RMSNorm, grouped-query attention, gated or plain FFN, sequential
or parallel (GPT-J) blocks.

Given the per-rank shards of `sharding.shard()` instead of full weights, it runs every rank's part
of each layer and sums the partial outputs where the tensor-parallel runtime all-reduces (the
embedding: each rank's rows for the tokens in its vocabulary slice, zeros for the others, then
the learned positions once; after attention-out and after FFN-down, each followed by that
layer's bias) and concatenates the LM head's vocabulary slices where it all-gathers. That is how
the sharding is checked.

Given one pipeline stage's weights (`sharding.stage_weights`) and that stage's `layers`, it runs
those layers only: a first stage takes token ids, a later one the hidden states [batch, seq,
hidden] the stage before returned; a last stage returns logits, an earlier one hidden states.
Chaining the stages' `prefill` and `decode` calls is the pipeline's math. With `micro_batches`
m, each call runs the batch's sequences m contiguous groups at a time
(`pipeline.split_sequences`, as the runtime's stages do), each group on its own rows of the KV
cache.

`reorder` gathers sequences (KV-cache rows and lengths), which is what beam search
(`runtime.beam`) needs of an engine; `generate_beam` runs it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.files import is_positive_number
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.beam import BeamResult, BeamSettings, beam_search, check_rows, log_softmax
from ftbench.runtime.pipeline import split_sequences
from ftbench.runtime.quantize import (
    ACTIVATION_SCALINGS,
    dequantize_weights,
    fp8_activations,
    weight_format,
)
from ftbench.runtime.sharding import vocabulary_start
from ftbench.runtime.weights import Linear, ModelWeights, Norm, check_shapes

COMPUTE_DTYPES = ("float32", "float64")

_erf = np.vectorize(math.erf, otypes=[np.float64])


def linear(x: np.ndarray, layer: Linear) -> np.ndarray:
    """x @ weight.T + bias (weights are [out_features, in_features])."""
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def norm(x: np.ndarray, weights: Norm, kind: str, eps: float) -> np.ndarray:
    """LayerNorm or RMSNorm over the last axis."""
    if kind == "rmsnorm":
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weights.weight
    centered = x - np.mean(x, axis=-1, keepdims=True)
    variance = np.mean(centered * centered, axis=-1, keepdims=True)
    return centered / np.sqrt(variance + eps) * weights.weight + weights.bias


def activation(x: np.ndarray, name: str) -> np.ndarray:
    """gelu_new (tanh approximation), gelu (exact, erf), silu or relu."""
    if name == "gelu_new":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "gelu":
        return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    return np.maximum(x, 0)


def rope_inverse_frequencies(spec: ModelSpec) -> np.ndarray:
    """Pair i's angle per position, float64 [rotary_dim / 2]: rope_theta ** (-2i / rotary_dim),
    scaled as `spec.rope_scaling` says (HF's rope types "linear": all divided by the factor;
    "llama3": wavelengths past original_max_position_embeddings / low_freq_factor divided by the
    factor, those under original / high_freq_factor kept, the ones between blended). Other
    types are an InvalidInputError."""
    inverse = spec.rope_theta ** (-np.arange(0, spec.rotary_dim, 2) / spec.rotary_dim)
    if not spec.rope_scaling:
        return inverse
    scaling = json.loads(spec.rope_scaling)
    kind = scaling.get("rope_type", scaling.get("type"))

    def number(key: str) -> float:
        value = scaling.get(key)
        if not is_positive_number(value):
            raise InvalidInputError(
                f"{spec.name}: rope_scaling ({kind}) needs a positive {key}, got {value!r}"
            )
        return float(value)

    if kind == "linear":
        return inverse / number("factor")
    if kind == "llama3":
        factor, low, high = number("factor"), number("low_freq_factor"), number("high_freq_factor")
        original = number("original_max_position_embeddings")
        if not high > low:
            raise InvalidInputError(
                f"{spec.name}: rope_scaling (llama3) needs high_freq_factor > low_freq_factor"
            )
        wavelength = 2 * math.pi / inverse
        smooth = np.clip((original / wavelength - low) / (high - low), 0.0, 1.0)
        return (1 - smooth) * inverse / factor + smooth * inverse
    raise InvalidInputError(
        f"{spec.name}: rope_scaling {spec.rope_scaling} is not implemented (rope types: linear, "
        "llama3)"
    )


def rotary(x: np.ndarray, positions: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Rotate the first `rotary_dim` dims of every head of x [batch, tokens, heads, head_dim].

    Pair i (of rotary_dim / 2) turns by angle position * `rope_inverse_frequencies(spec)`[i].
    Interleaved (GPT-J) pairs are dims (2i, 2i + 1); otherwise (LLaMA, GPT-NeoX) the pairs are
    (i, i + rotary_dim / 2), the "rotate half" layout. Dims past rotary_dim pass through.
    """
    rotary_dim = spec.rotary_dim
    inverse_frequencies = rope_inverse_frequencies(spec)
    angles = positions[:, :, None, None] * inverse_frequencies  # [batch, tokens, 1, pairs]
    cos, sin = np.cos(angles).astype(x.dtype), np.sin(angles).astype(x.dtype)
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    if spec.rotary_interleaved:
        even, odd = rotated[..., 0::2], rotated[..., 1::2]
        pairs = np.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
        rotated = pairs.reshape(rotated.shape)
    else:
        first, second = np.split(rotated, 2, axis=-1)
        rotated = np.concatenate([first * cos - second * sin, second * cos + first * sin], -1)
    return np.concatenate([rotated, passed], axis=-1)


def causal_attention(
    q: np.ndarray, keys: np.ndarray, values: np.ndarray, positions: np.ndarray
) -> np.ndarray:
    """Softmax(q k^T / sqrt(head_dim)) v, each query seeing the keys at positions <= its own.

    q [batch, tokens, q_heads, head_dim] at `positions` [batch, tokens]; keys and values
    [batch, cached, kv_heads, head_dim] for positions 0..cached-1. Query head h reads KV head
    h // (q_heads / kv_heads) (grouped-query attention).
    """
    group = q.shape[2] // keys.shape[2]
    keys = np.repeat(keys, group, axis=2).transpose(0, 2, 3, 1)  # [batch, heads, dim, cached]
    values = np.repeat(values, group, axis=2).transpose(0, 2, 1, 3)  # [batch, heads, cached, dim]
    scores = (
        q.transpose(0, 2, 1, 3) @ keys / math.sqrt(q.shape[-1])
    )  # [batch, heads, tokens, cached]
    visible = np.arange(keys.shape[-1]) <= positions[:, None, :, None]
    scores = np.where(visible, scores, -np.inf)
    probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return (probabilities @ values).transpose(0, 2, 1, 3)


def embed(tokens: np.ndarray, table: np.ndarray, vocab_start: int) -> np.ndarray:
    """One rank's part of the vocabulary-parallel embedding: table[token - vocab_start] for the
    tokens in its rows [vocab_start, vocab_start + len(table)), zeros for the others."""
    local = tokens - vocab_start
    held = (local >= 0) & (local < len(table))
    return np.where(held[..., None], table[np.where(held, local, 0)], 0)


def all_reduce(partials: Iterable[np.ndarray]) -> np.ndarray:
    """What the tensor-parallel runtime's all-reduce does: sum the ranks' partial outputs."""
    return sum(partials)


def _add_bias(x: np.ndarray, layer: Linear) -> np.ndarray:
    return x if layer.bias is None else x + layer.bias


class _KVCache:
    """One layer's keys and values on one rank: [batch, capacity, kv_heads, head_dim] each.

    Sequence b's token at position p lives at [b, p]; the capacity grows as needed.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, dtype: np.dtype) -> None:
        self.keys = np.zeros((batch, 0, kv_heads, head_dim), dtype)
        self.values = np.zeros_like(self.keys)

    def update(
        self, positions: np.ndarray, keys: np.ndarray, values: np.ndarray, rows: slice
    ) -> tuple[np.ndarray, np.ndarray]:
        """Store the new tokens' keys and values of the sequences in cache rows `rows`; return
        those rows' every position up to the last one."""
        needed = int(positions.max()) + 1
        capacity = self.keys.shape[1]
        if needed > capacity:
            grow = ((0, 0), (0, max(needed, 2 * capacity) - capacity), (0, 0), (0, 0))
            self.keys, self.values = np.pad(self.keys, grow), np.pad(self.values, grow)
        indices = np.arange(rows.start, rows.stop)[:, None]
        self.keys[indices, positions] = keys
        self.values[indices, positions] = values
        return self.keys[rows, :needed], self.values[rows, :needed]


def _activation_scaling(activations: str | None, ranks: Sequence[ModelWeights]) -> str | None:
    """The activation scaling of `activations` ("fp8-token", "fp8-tensor"), or None; FP8
    activations need fp8 weights (FP8 tensor cores multiply E4M3 by E4M3)."""
    if activations is None:
        return None
    choices = [f"fp8-{scaling}" for scaling in ACTIVATION_SCALINGS]
    if activations not in choices:
        raise InvalidInputError(f"activations must be {' or '.join(choices)}, got {activations!r}")
    formats = {weight_format(rank) for rank in ranks}
    if formats != {"fp8"}:
        raise InvalidInputError(
            f"fp8 activations need fp8 weights (quantize_weights(weights, 'fp8')), got "
            f"{', '.join(str(f) for f in formats)}"
        )
    return activations.removeprefix("fp8-")


class ReferenceModel:
    """A decoder with a KV cache: `prefill` a batch of prompts, then `decode` token by token.

    `weights` is a `ModelWeights` or the list of per-rank shards from `shard()` (tp = its
    length), of the whole model or of the pipeline stage holding `layers` (see the module
    docstring). `dtype` (float64 or float32) is the compute dtype; weights are converted to it
    (8-bit linears: their codes times their scales, `runtime.quantize`). `activations`: None,
    or "fp8-token" / "fp8-tensor" with fp8 weights: every quantised linear then reads its input
    as E4M3 under a dynamic per-token or per-tensor scale (`quantize.fp8_activations`), an FP8
    deployment's math; under tensor parallelism each rank scales its own part of a row-parallel
    layer's input, as each rank's kernel would.
    `micro_batches`: how many groups of sequences each call runs (see the module docstring).
    """

    def __init__(
        self,
        spec: ModelSpec,
        weights: ModelWeights | Sequence[ModelWeights],
        dtype: Any = np.float64,
        layers: range | None = None,
        micro_batches: int = 1,
        activations: str | None = None,
    ) -> None:
        ranks = [weights] if isinstance(weights, ModelWeights) else list(weights)
        if not ranks:
            raise InvalidInputError("ReferenceModel needs weights (or at least one shard)")
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in COMPUTE_DTYPES:
            raise InvalidInputError(
                f"reference compute dtype must be float32 or float64, got {self.dtype}"
            )
        rope_inverse_frequencies(spec)  # a rope scaling it does not implement: an error
        self.spec = spec
        self.micro_batches = micro_batches
        self.layers = range(spec.num_layers) if layers is None else layers
        self.tp = len(ranks)
        self.rank_shapes = rank_shapes(spec, self.tp)
        for rank_weights in ranks:
            check_shapes(rank_weights, spec, self.tp, self.layers)
        self.activation_scaling = _activation_scaling(activations, ranks)
        # 8-bit linears run as their codes times their scales, exactly, in the compute dtype.
        self.ranks = [
            dequantize_weights(rank_weights, self.dtype).astype(self.dtype)
            for rank_weights in ranks
        ]
        self.lengths: np.ndarray | None = None
        self._caches: list[list[_KVCache]] = []

    def prefill(self, token_ids: Any, lengths: Any = None) -> np.ndarray:
        """Run prompts token_ids [batch, seq] into a new KV cache; logits [batch, seq, vocab]
        (a later pipeline stage: hidden states in and, before the last stage, out).

        `lengths` [batch] gives each prompt's length for right-padded batches (default: all
        `seq`); logits at padded positions are NaN.
        """
        tokens = self._check_inputs(token_ids, ndim=2)
        batch, seq = tokens.shape[:2]
        lengths = np.full(batch, seq) if lengths is None else np.asarray(lengths)
        if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > seq:
            raise InvalidInputError(
                f"lengths must be {batch} values in 1..{seq}, got {lengths.tolist()}"
            )
        positions = np.broadcast_to(np.arange(seq), (batch, seq))
        shapes, head_dim = self.rank_shapes, self.spec.head_dim
        self._caches = [
            [_KVCache(batch, shapes.kv_heads, head_dim, self.dtype) for _ in self.layers]
            for _ in self.ranks
        ]
        logits = self._forward(tokens, positions)
        if self.layers.stop == self.spec.num_layers:
            logits[positions >= lengths[:, None]] = np.nan
        self.lengths = lengths.astype(np.int64)
        return logits

    def decode(self, next_tokens: Any) -> np.ndarray:
        """Append one token per sequence (next_tokens [batch]); logits [batch, vocab] (a later
        pipeline stage: hidden states [batch, hidden] in and, before the last stage, out)."""
        if self.lengths is None:
            raise InvalidInputError("decode() needs a prefill() first")
        tokens = self._check_inputs(next_tokens, ndim=1)
        if tokens.shape[:1] != self.lengths.shape:
            raise InvalidInputError(
                f"decode() takes one token per sequence ({len(self.lengths)}), got {tokens.shape}"
            )
        logits = self._forward(tokens[:, None], self.lengths[:, None])[:, 0]
        self.lengths = self.lengths + 1
        return logits

    def generate_greedy(self, prompt_ids: Any, steps: int, lengths: Any = None) -> np.ndarray:
        """Greedy decoding: the `steps` most likely next tokens per prompt, [batch, steps]."""
        logits = self.prefill(prompt_ids, lengths)
        last = logits[np.arange(len(logits)), self.lengths - 1]
        generated = [last.argmax(axis=-1)]
        for _ in range(steps - 1):
            generated.append(self.decode(generated[-1]).argmax(axis=-1))
        return np.stack(generated, axis=1)

    def reorder(self, rows: Any) -> None:
        """Make sequence i the old sequence rows[i], its KV cache and length (beam search's
        gather: rows may repeat, and expand a batch of prompts into their beams)."""
        if self.lengths is None:
            raise InvalidInputError("reorder() needs a prefill() first")
        rows = check_rows(rows, len(self.lengths))
        for cache in (cache for rank in self._caches for cache in rank):
            cache.keys, cache.values = cache.keys[rows], cache.values[rows]
        self.lengths = self.lengths[rows]

    def generate_beam(
        self, prompt_ids: Any, settings: BeamSettings, lengths: Any = None
    ) -> BeamResult:
        """Beam search (`runtime.beam`) from prompts [batch, seq], right-padded to `lengths`."""
        logits = self.prefill(prompt_ids, lengths)
        last = logits[np.arange(len(logits)), self.lengths - 1]

        def step(tokens: np.ndarray) -> np.ndarray:
            return log_softmax(self.decode(tokens))

        return beam_search(settings, log_softmax(last), step, self.reorder)

    def _check_inputs(self, inputs: Any, ndim: int) -> np.ndarray:
        """Token ids (first stage) or the previous stage's hidden states (one more axis)."""
        if self.layers.start > 0:
            hidden = np.asarray(inputs, dtype=self.dtype)
            if hidden.ndim != ndim + 1 or hidden.shape[-1] != self.spec.hidden_size:
                raise InvalidInputError(
                    f"a stage after the first takes hidden states with {ndim + 1} axes, the "
                    f"last of {self.spec.hidden_size}; got {list(hidden.shape)}"
                )
            return hidden
        tokens = np.asarray(inputs)
        if tokens.ndim != ndim or not np.issubdtype(tokens.dtype, np.integer):
            raise InvalidInputError(f"token ids must be a {ndim}-D integer array")
        if tokens.min() < 0 or tokens.max() >= self.spec.vocab_size:
            raise InvalidInputError(
                f"token ids must be in 0..{self.spec.vocab_size - 1}, got {tokens.min()} to "
                f"{tokens.max()}"
            )
        return tokens

    def _forward(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Logits [batch, tokens, vocab] of tokens at positions [batch, tokens] (a pipeline
        stage: hidden states in after the first stage, out before the last), micro-batch by
        micro-batch."""
        parts = [
            slice(part.start, part.stop)
            for part in split_sequences(len(tokens), self.micro_batches)
        ]
        return np.concatenate([self._micro_batch(tokens[r], positions[r], r) for r in parts])

    def _micro_batch(self, tokens: np.ndarray, positions: np.ndarray, rows: slice) -> np.ndarray:
        """`_forward` of the sequences in cache rows `rows`."""
        spec, weights = self.spec, self.ranks[0]
        if spec.sliding_window and positions.max() >= spec.sliding_window:
            raise InvalidInputError(
                f"{spec.name} attends over a sliding window of {spec.sliding_window} tokens, "
                f"which is not implemented; position {positions.max()} is past it"
            )
        if self.layers.start > 0:
            return self._stage(tokens, positions, rows)
        hidden = all_reduce(
            embed(tokens, rank.embed, vocabulary_start(spec, self.tp, index))
            for index, rank in enumerate(self.ranks)
        )
        if weights.positions is not None:
            if positions.max() >= spec.max_positions:
                raise InvalidInputError(
                    f"{spec.name} has {spec.max_positions} learned positions; position "
                    f"{positions.max()} is past the end"
                )
            hidden = hidden + weights.positions[positions]
        return self._stage(hidden, positions, rows)

    def _stage(self, hidden: np.ndarray, positions: np.ndarray, rows: slice) -> np.ndarray:
        """This stage's layers, then (on the last stage) the final norm and the LM head."""
        spec, weights = self.spec, self.ranks[0]
        for index in range(len(self.layers)):
            hidden = self._layer(index, hidden, positions, rows)
        if self.layers.stop < spec.num_layers:
            return hidden
        hidden = norm(hidden, weights.final_norm, spec.norm, spec.norm_eps)
        # All-gather of the LM head's vocabulary slices, then drop the padding rows.
        logits = np.concatenate([linear(hidden, rank.lm_head) for rank in self.ranks], axis=-1)
        return logits[..., : spec.vocab_size]

    def _layer(
        self, index: int, hidden: np.ndarray, positions: np.ndarray, rows: slice
    ) -> np.ndarray:
        """One pre-norm block: x + attn(ln1(x)), then x + mlp(ln2(x)); or, parallel (GPT-J),
        x + attn(ln1(x)) + mlp(ln1(x))."""
        spec, layer = self.spec, self.ranks[0].layers[index]
        normed = norm(hidden, layer.ln1, spec.norm, spec.norm_eps)
        attention = all_reduce(
            self._attention(rank, index, normed, positions, rows) for rank in range(self.tp)
        )
        attention = _add_bias(attention, layer.attn_out)
        if spec.parallel_attn_mlp:
            mlp = all_reduce(self._mlp(rank, index, normed) for rank in range(self.tp))
            return hidden + attention + _add_bias(mlp, layer.ffn_down)
        hidden = hidden + attention
        normed = norm(hidden, layer.ln2, spec.norm, spec.norm_eps)
        mlp = all_reduce(self._mlp(rank, index, normed) for rank in range(self.tp))
        return hidden + _add_bias(mlp, layer.ffn_down)

    def _attention(
        self, rank: int, index: int, normed: np.ndarray, positions: np.ndarray, rows: slice
    ) -> np.ndarray:
        """One rank's attention output before the all-reduce (and without attn_out's bias)."""
        spec, layer = self.spec, self.ranks[rank].layers[index]
        batch, tokens, _ = normed.shape
        shapes, head_dim = self.rank_shapes, spec.head_dim
        q_heads, kv_heads = shapes.q_heads, shapes.kv_heads
        qkv = linear(self._input(normed), layer.qkv)
        q, k, v = np.split(qkv, [q_heads * head_dim, (q_heads + kv_heads) * head_dim], axis=-1)
        q = q.reshape(batch, tokens, q_heads, head_dim)
        k = k.reshape(batch, tokens, kv_heads, head_dim)
        v = v.reshape(batch, tokens, kv_heads, head_dim)
        if spec.position_embedding == "rotary":
            q, k = rotary(q, positions, spec), rotary(k, positions, spec)
        keys, values = self._caches[rank][index].update(positions, k, v, rows)
        context = causal_attention(q, keys, values, positions)
        context = context.reshape(batch, tokens, q_heads * head_dim)
        return self._input(context) @ layer.attn_out.weight.T

    def _mlp(self, rank: int, index: int, normed: np.ndarray) -> np.ndarray:
        """One rank's MLP output before the all-reduce (and without ffn_down's bias)."""
        spec, layer = self.spec, self.ranks[rank].layers[index]
        up = linear(self._input(normed), layer.ffn_up)
        if spec.gated_ffn:
            gate, up = np.split(up, 2, axis=-1)
            inner = activation(gate, spec.activation) * up
        else:
            inner = activation(up, spec.activation)
        return self._input(inner) @ layer.ffn_down.weight.T

    def _input(self, x: np.ndarray) -> np.ndarray:
        """What a transformer layer's linear reads of x: x, or its FP8 rounding."""
        if self.activation_scaling is None:
            return x
        return fp8_activations(x, self.activation_scaling).astype(self.dtype)
