"""A NumPy reference of the T5 encoder-decoder, driven only by `ModelSpec` and `T5Weights`.

The ground truth a CUDA T5 is tested against; it reads as the math, not for speed. `encode` a
right-padded batch of sources, then `prefill` decoder tokens and `decode` one token per
sequence at a time through the self-attention KV cache; `reorder` gathers sequences for beam
search (`runtime.beam`, run by `generate_beam`).

T5's math (both stacks pre-norm, every norm an RMS norm: x / sqrt(mean(x²) + eps) · w, no
mean subtracted and no bias; no linear has a bias):

- Attention is softmax(q k^T + position_bias) v, with no 1/sqrt(head_dim) scale (T5 folds it
  into its initialisation). The position bias is table[bucket(key - query)], one table per
  stack ([num_buckets, num_heads]), computed once and added in every layer (HF keeps the table
  in the first layer and passes the bias on). Buckets (`relative_position_buckets`): the
  encoder's are bidirectional (half the buckets for keys after the query), the decoder's
  causal; distances under half the buckets are exact, longer ones log-spaced up to
  max_distance, beyond it the last bucket.
- Encoder layer: x += attn(ln1(x)) over the source's real tokens, x += ffn(ln2(x)); then the
  final norm. Padded source positions are masked as keys, so they never reach real ones.
- Decoder layer: x += causal self-attention(ln1(x)) through the KV cache; x +=
  cross-attention(ln_cross(x)) whose keys and values come from the encoder output, projected
  once per source by `cross_kv` (no position bias); x += ffn(ln2(x)). Then the final norm and
  the LM head; tied (T5 v1.0) heads see the output rescaled by d_model ** -0.5 first.
- FFN: relu(ffn_up(x)) (v1.0), or act(gate) · up with gelu_new for "gated-gelu" (v1.1, Flan).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.beam import BeamResult, BeamSettings, beam_search, check_rows, log_softmax
from ftbench.runtime.encoder_reference import (
    attention,
    check_lengths,
    check_token_ids,
    checked_weights,
)
from ftbench.runtime.encoder_weights import T5Weights
from ftbench.runtime.reference import activation, linear, norm


def relative_position_buckets(
    relative: np.ndarray, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """T5's bucket of each relative position (key - query), as HF computes it.

    The log-spaced buckets are computed in float32, as HF does, so that the distances at a
    bucket edge land in the same bucket.
    """
    relative = np.asarray(relative, np.int64)
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0) * num_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    exact = num_buckets // 2
    ratio = np.maximum(distance, 1).astype(np.float32) / np.float32(exact)
    scaled = np.log(ratio) / np.float32(math.log(max_distance / exact))
    far = exact + (scaled * np.float32(num_buckets - exact)).astype(np.int64)
    return buckets + np.where(distance < exact, distance, np.minimum(far, num_buckets - 1))


class T5Reference:
    """T5 with a decoder KV cache (see the module docstring). `dtype` (float64 or float32) is
    the compute dtype; the weights are converted to it."""

    def __init__(self, spec: ModelSpec, weights: T5Weights, dtype: Any = np.float64) -> None:
        self.spec, self.weights = spec, checked_weights(spec, weights, "encoder-decoder", dtype)
        self.dtype = self.weights.dtype
        self.source_lengths: np.ndarray | None = None
        self.length = 0  # decoder tokens in the cache, the same for every sequence
        self._cross: list[tuple[np.ndarray, np.ndarray]] = []  # per decoder layer: K, V
        self._keys: list[np.ndarray] = []  # per decoder layer: [batch, length, heads, dim]
        self._values: list[np.ndarray] = []

    def encode(self, input_ids: Any, lengths: Any = None) -> np.ndarray:
        """Run sources input_ids [batch, seq], right-padded to `lengths`, through the encoder;
        keep each decoder layer's cross-attention keys and values and start an empty decoder
        cache. Returns the encoder output [batch, seq, hidden], NaN at padded positions."""
        spec, weights = self.spec, self.weights
        tokens = check_token_ids(input_ids, spec.vocab_size)
        batch, seq = tokens.shape
        lengths = check_lengths(lengths, batch, seq)
        visible = (np.arange(seq) < lengths[:, None])[:, None, None, :]  # [batch, 1, 1, keys]
        positions = np.arange(seq)
        bias = self._position_bias(weights.encoder.relative_bias, positions, positions, True)
        hidden = weights.embed[tokens]
        for layer in weights.encoder.layers:
            normed = self._norm(hidden, layer.ln1)
            hidden = hidden + self._self_attention(layer, normed, bias, visible)
            hidden = hidden + self._ffn(layer, self._norm(hidden, layer.ln2))
        output = self._norm(hidden, weights.encoder.final_norm)
        self._cross = []
        for layer in weights.decoder.layers:
            keys, values = np.split(linear(output, layer.cross_kv), 2, axis=-1)
            self._cross.append((self._heads(keys), self._heads(values)))
        self.source_lengths = lengths
        self.length = 0
        empty = np.zeros((batch, 0, spec.num_heads, spec.head_dim), self.dtype)
        self._keys = [empty] * spec.decoder_layers
        self._values = [empty] * spec.decoder_layers
        return np.where(visible[:, 0, 0, :, None], output, np.nan)

    def prefill(self, decoder_ids: Any) -> np.ndarray:
        """Append decoder tokens [batch, tokens] (from the decoder start token on); logits
        [batch, tokens, vocab]."""
        if self.source_lengths is None:
            raise InvalidInputError("the T5 decoder needs an encode() first")
        tokens = check_token_ids(decoder_ids, self.spec.vocab_size)
        if len(tokens) != len(self.source_lengths):
            raise InvalidInputError(
                f"the decoder takes one row per source ({len(self.source_lengths)}), got "
                f"{len(tokens)}"
            )
        return self._decoder(tokens)

    def decode(self, next_tokens: Any) -> np.ndarray:
        """Append one decoder token per sequence (next_tokens [batch]); logits [batch, vocab]."""
        return self.prefill(np.asarray(next_tokens)[:, None])[:, 0]

    def reorder(self, rows: Any) -> None:
        """Make sequence i the old sequence rows[i]: its cross-attention keys and values, its
        decoder cache and its source length (beam search's gather, `runtime.beam`)."""
        if self.source_lengths is None:
            raise InvalidInputError("reorder() needs an encode() first")
        rows = check_rows(rows, len(self.source_lengths))
        self._cross = [(keys[rows], values[rows]) for keys, values in self._cross]
        self._keys = [keys[rows] for keys in self._keys]
        self._values = [values[rows] for values in self._values]
        self.source_lengths = self.source_lengths[rows]

    def generate_beam(
        self,
        input_ids: Any,
        settings: BeamSettings,
        lengths: Any = None,
        decoder_start_token_id: int = 0,
    ) -> BeamResult:
        """Beam search (`runtime.beam`) from sources [batch, seq], right-padded to `lengths`;
        the decoder starts from `decoder_start_token_id` (T5's pad token, 0)."""
        self.encode(input_ids, lengths)
        start = np.full((len(self.source_lengths), 1), decoder_start_token_id)
        first = log_softmax(self.prefill(start)[:, -1])

        def step(tokens: np.ndarray) -> np.ndarray:
            return log_softmax(self.decode(tokens))

        return beam_search(settings, first, step, self.reorder)

    def _decoder(self, tokens: np.ndarray) -> np.ndarray:
        """The decoder over new tokens [batch, tokens] at positions length..; logits."""
        spec, weights = self.spec, self.weights
        queries = np.arange(self.length, self.length + tokens.shape[1])
        keys = np.arange(self.length + tokens.shape[1])
        bias = self._position_bias(weights.decoder.relative_bias, queries, keys, False)
        causal = keys <= queries[:, None]  # [tokens, keys]
        source = (np.arange(self._cross[0][0].shape[1]) < self.source_lengths[:, None])[
            :, None, None, :
        ]
        hidden = weights.embed[tokens]
        for index, layer in enumerate(weights.decoder.layers):
            normed = self._norm(hidden, layer.ln1)
            hidden = hidden + self._cached_attention(index, layer, normed, bias, causal)
            q = self._heads(linear(self._norm(hidden, layer.ln_cross), layer.cross_q))
            context = attention(q, *self._cross[index], scale=1.0, visible=source)
            hidden = hidden + linear(self._merge(context), layer.cross_out)
            hidden = hidden + self._ffn(layer, self._norm(hidden, layer.ln2))
        self.length += tokens.shape[1]
        output = self._norm(hidden, weights.decoder.final_norm)
        if spec.tie_word_embeddings:
            output = output * spec.hidden_size**-0.5
        return linear(output, weights.lm_head)

    def _cached_attention(
        self, index: int, layer: Any, normed: np.ndarray, bias: np.ndarray, causal: np.ndarray
    ) -> np.ndarray:
        """Decoder self-attention of the new tokens over the cache and themselves."""
        q, k, v = (self._heads(x) for x in np.split(linear(normed, layer.qkv), 3, axis=-1))
        self._keys[index] = np.concatenate([self._keys[index], k], axis=1)
        self._values[index] = np.concatenate([self._values[index], v], axis=1)
        context = attention(q, self._keys[index], self._values[index], 1.0, causal, bias)
        return linear(self._merge(context), layer.attn_out)

    def _self_attention(
        self, layer: Any, normed: np.ndarray, bias: np.ndarray, visible: np.ndarray
    ) -> np.ndarray:
        """Encoder self-attention over the source's real tokens."""
        q, k, v = (self._heads(x) for x in np.split(linear(normed, layer.qkv), 3, axis=-1))
        return linear(self._merge(attention(q, k, v, 1.0, visible, bias)), layer.attn_out)

    def _position_bias(
        self, table: np.ndarray, queries: np.ndarray, keys: np.ndarray, bidirectional: bool
    ) -> np.ndarray:
        """table[bucket(key - query)] as [heads, queries, keys]."""
        spec = self.spec
        buckets = relative_position_buckets(
            keys[None, :] - queries[:, None],
            bidirectional,
            spec.relative_attention_num_buckets,
            spec.relative_attention_max_distance,
        )
        return table[buckets].transpose(2, 0, 1)

    def _ffn(self, layer: Any, normed: np.ndarray) -> np.ndarray:
        up = linear(normed, layer.ffn_up)
        if self.spec.gated_ffn:
            gate, up = np.split(up, 2, axis=-1)
            return linear(activation(gate, self.spec.activation) * up, layer.ffn_down)
        return linear(activation(up, self.spec.activation), layer.ffn_down)

    def _norm(self, x: np.ndarray, weights: Any) -> np.ndarray:
        return norm(x, weights, "rmsnorm", self.spec.norm_eps)

    def _heads(self, x: np.ndarray) -> np.ndarray:
        """[batch, tokens, heads * head_dim] -> [batch, tokens, heads, head_dim]."""
        return x.reshape(*x.shape[:2], self.spec.num_heads, self.spec.head_dim)

    def _merge(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(*x.shape[:2], -1)
