"""A NumPy reference of the BERT encoder (and RoBERTa), driven only by `ModelSpec` and
`EncoderWeights`.

The ground truth a CUDA encoder is tested against; it reads as the math, not for speed. It runs
as FasterTransformer's "effective transformer" does: a right-padded batch's padding is removed
before the first layer (`remove_padding`: the real tokens packed into [tokens, hidden] rows),
every layer runs on the packed rows, attention runs sequence by sequence over that sequence's
tokens only, and the padding is restored after the last layer (`restore_padding`, NaN at
padded positions). A padded position therefore never reaches a real one, by construction.

Per layer (post-norm, BERT): x = ln1(x + attn_out(attention(qkv(x)))), then
x = ln2(x + ffn_down(act(ffn_up(x)))); attention is softmax(q k^T / sqrt(head_dim)) v with
every key of the sequence visible. The embeddings are ln(word + position + token type). The
optional pooler is tanh(pooler(x[:, 0])), and an optional classification head's logits are
classifier(pooled). RoBERTa is this encoder with other position ids
(`position_ids`: counted from `spec.position_offset`, padding tokens skipped).

`attention` (any mask, any additive bias, any scale) is shared with the T5 reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.encoder_weights import EncoderWeights, T5Weights, check_encoder_shapes
from ftbench.runtime.reference import COMPUTE_DTYPES, activation, linear, norm


def attention(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    scale: float,
    visible: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """softmax(scale · q k^T + bias) v over the visible keys, [batch, tokens, heads, head_dim].

    q [batch, tokens, heads, head_dim]; keys, values [batch, keys, heads, head_dim]; `visible`
    broadcasts to [batch, 1, tokens, keys] (True: the query sees the key; None: all); `bias`
    broadcasts to [batch, heads, tokens, keys] (T5's relative positions). Every query must see
    at least one key.
    """
    scores = scale * (q.transpose(0, 2, 1, 3) @ keys.transpose(0, 2, 3, 1))  # [b, H, t, k]
    if bias is not None:
        scores = scores + bias
    if visible is not None:
        scores = np.where(visible, scores, -np.inf)
    probabilities = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probabilities /= probabilities.sum(axis=-1, keepdims=True)
    return (probabilities @ values.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)


def checked_weights(
    spec: ModelSpec, weights: EncoderWeights | T5Weights, architecture: str, dtype: Any
) -> Any:
    """`weights` in the compute `dtype` (float64 or float32), once they are checked against a
    `spec` of `architecture` ("encoder" or "encoder-decoder")."""
    compute = np.dtype(dtype)
    if compute.name not in COMPUTE_DTYPES:
        raise InvalidInputError(
            f"reference compute dtype must be float32 or float64, got {compute}"
        )
    if spec.architecture != architecture:
        raise InvalidInputError(
            f"{spec.name}: this reference runs {architecture} models; family {spec.family} is an "
            f"{spec.architecture} model"
        )
    check_encoder_shapes(weights, spec)
    return weights.astype(compute)


def check_lengths(lengths: Any, batch: int, seq: int) -> np.ndarray:
    """Each right-padded sequence's length, [batch] int64 in 1..seq (default: all `seq`)."""
    if lengths is None:
        return np.full(batch, seq, np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (batch,) or lengths.min() < 1 or lengths.max() > seq:
        raise InvalidInputError(
            f"lengths must be {batch} values in 1..{seq}, got {np.ravel(lengths).tolist()}"
        )
    return lengths.astype(np.int64)


def check_token_ids(token_ids: Any, vocab_size: int) -> np.ndarray:
    """Token ids [batch, seq], integers in 0..vocab_size-1."""
    tokens = np.asarray(token_ids)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise InvalidInputError("token ids must be a 2-D integer array")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise InvalidInputError(
            f"token ids must be in 0..{vocab_size - 1}, got {tokens.min()} to {tokens.max()}"
        )
    return tokens


def position_ids(tokens: np.ndarray, offset: int) -> np.ndarray:
    """The learned-position row of every token [batch, seq]: BERT's (offset 0) 0, 1, 2, ...;
    with an offset (RoBERTa: padding_idx + 1), HF's create_position_ids_from_input_ids: the
    tokens that are not padding (id offset - 1) count from offset, a padding token takes
    offset - 1."""
    if offset == 0:
        return np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    padding_idx = offset - 1
    real = tokens != padding_idx
    return np.where(real, padding_idx + np.cumsum(real, axis=1), padding_idx)


def remove_padding(padded: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The real tokens of a right-padded [batch, seq, ...] packed into [sum(lengths), ...],
    sequence after sequence."""
    return np.concatenate([row[:length] for row, length in zip(padded, lengths, strict=True)])


def restore_padding(packed: np.ndarray, lengths: np.ndarray, seq: int) -> np.ndarray:
    """`remove_padding` undone: [batch, seq, ...] with NaN at the padded positions."""
    padded = np.full((len(lengths), seq, *packed.shape[1:]), np.nan, packed.dtype)
    for row, rows in enumerate(np.split(packed, np.cumsum(lengths)[:-1])):
        padded[row, : len(rows)] = rows
    return padded


class EncoderReference:
    """A BERT or RoBERTa encoder: `encode` a right-padded batch into hidden states, `pool`
    them, `classify` them.

    `dtype` (float64 or float32) is the compute dtype; the weights are converted to it.
    """

    def __init__(self, spec: ModelSpec, weights: EncoderWeights, dtype: Any = np.float64) -> None:
        self.spec, self.weights = spec, checked_weights(spec, weights, "encoder", dtype)
        self.dtype = self.weights.dtype

    def encode(self, token_ids: Any, lengths: Any = None, token_type_ids: Any = None) -> np.ndarray:
        """The last layer's hidden states [batch, seq, hidden] of token_ids [batch, seq],
        right-padded to `lengths` [batch] (default: all seq); NaN at padded positions.
        `token_type_ids` [batch, seq] default to 0 (segment A)."""
        spec, weights = self.spec, self.weights
        tokens = check_token_ids(token_ids, spec.vocab_size)
        batch, seq = tokens.shape
        lengths = check_lengths(lengths, batch, seq)
        if seq > spec.token_positions:
            raise InvalidInputError(
                f"{spec.name} has {spec.token_positions} learned positions; {seq} tokens do not fit"
            )
        types = np.zeros_like(tokens) if token_type_ids is None else np.asarray(token_type_ids)
        if (
            types.shape != tokens.shape
            or types.min() < 0
            or types.max() >= max(spec.type_vocab_size, 1)
        ):
            raise InvalidInputError(
                f"token_type_ids must be {list(tokens.shape)} values in "
                f"0..{max(spec.type_vocab_size, 1) - 1}"
            )
        positions = position_ids(tokens, spec.position_offset)
        hidden = weights.embed[tokens] + weights.positions[positions]
        if weights.token_types is not None:
            hidden = hidden + weights.token_types[types]
        hidden = remove_padding(hidden, lengths)  # [tokens, hidden]
        hidden = norm(hidden, weights.embed_norm, spec.norm, spec.norm_eps)
        for index in range(spec.num_layers):
            hidden = self._layer(index, hidden, lengths)
        return restore_padding(hidden, lengths, seq)

    def pool(self, hidden: np.ndarray) -> np.ndarray:
        """BERT's pooler: tanh(pooler(hidden[:, 0])), [batch, hidden]."""
        if self.weights.pooler is None:
            raise InvalidInputError(f"{self.spec.name} has no pooler")
        return np.tanh(linear(hidden[:, 0], self.weights.pooler))

    def classify(self, hidden: np.ndarray) -> np.ndarray:
        """A sequence-classification head's logits: classifier(pool(hidden)), [batch,
        num_labels]."""
        if self.weights.classifier is None:
            raise InvalidInputError(f"{self.spec.name} has no classification head (num_labels)")
        return linear(self.pool(hidden), self.weights.classifier)

    def _layer(self, index: int, hidden: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One post-norm block over the packed rows: x = ln1(x + attn(x)), x = ln2(x + mlp(x))."""
        spec, layer = self.spec, self.weights.layers[index]
        heads, head_dim = spec.num_heads, spec.head_dim
        q, k, v = np.split(linear(hidden, layer.qkv), 3, axis=-1)
        context = []
        for rows in np.split(np.arange(len(hidden)), np.cumsum(lengths)[:-1]):
            one = [x[rows].reshape(1, len(rows), heads, head_dim) for x in (q, k, v)]
            context.append(attention(*one, scale=head_dim**-0.5)[0].reshape(len(rows), -1))
        attended = linear(np.concatenate(context), layer.attn_out)
        hidden = norm(hidden + attended, layer.ln1, spec.norm, spec.norm_eps)
        inner = activation(linear(hidden, layer.ffn_up), spec.activation)
        return norm(hidden + linear(inner, layer.ffn_down), layer.ln2, spec.norm, spec.norm_eps)
