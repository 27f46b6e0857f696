"""Weights cut for parallelism: one tensor-parallel rank's shard, one pipeline stage's layers.

`shard()` cuts weights (`runtime.weights`) the Megatron way for tensor parallelism: QKV by heads
and FFN-up by columns (output rows), attention-out and FFN-down by rows (input columns), the
token embedding and the LM head by vocabulary rows (padded with zero rows up to a multiple of
tp; rank r holds the same rows of both, and a tied LM head is its embedding slice). Norms,
learned positions and the biases of the row-split layers are replicated; a row-split layer's
bias is added once, after the all-reduce of the partial outputs. Each rank embeds only the
tokens in its vocabulary rows (zeros for the others) and the ranks' rows are all-reduced;
learned positions are added by one rank only.

`stage_weights()` keeps what one pipeline stage holds: its layers (renumbered from 0), the
embeddings only on the first stage, the final norm and LM head only on the last (absent arrays
are None).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.profiles.problems import rank_shapes
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.weights import LayerWeights, Linear, ModelWeights, check_shapes


def _rows(linear: Linear, rows: Iterable[slice]) -> Linear:
    """The layer restricted to some output rows (a column-parallel split)."""
    rows = list(rows)
    weight = np.concatenate([linear.weight[part] for part in rows])
    bias = None if linear.bias is None else np.concatenate([linear.bias[part] for part in rows])
    scale = None if linear.scale is None else np.concatenate([linear.scale[p] for p in rows])
    return Linear(weight, bias, scale)


def _columns(linear: Linear, columns: slice) -> Linear:
    """The layer restricted to some input columns (a row-parallel split); the bias and the
    per-output-channel scales are kept."""
    return Linear(np.ascontiguousarray(linear.weight[:, columns]), linear.bias, linear.scale)


def shard(weights: ModelWeights, spec: ModelSpec, tp: int, rank: int) -> ModelWeights:
    """The part of `weights` that tensor-parallel rank `rank` of `tp` holds (Megatron split).

    Rank r holds query heads [r * q, (r + 1) * q) with q = num_heads / tp, and the KV heads
    those queries use: num_kv_heads / tp of them, or, with fewer KV heads than ranks, the one
    KV head r // (tp / num_kv_heads), replicated on tp / num_kv_heads ranks
    (`profiles.problems.rank_shapes`). Its QKV rows stay grouped [its q | its k | its v]; its
    gate/up rows [its gate | its up]. The token embedding and the LM head are padded with zero
    rows to a multiple of tp and split by rows: rank r holds vocabulary rows [r * n, (r + 1) * n)
    of both, n = `lm_head_rows` (a tied LM head is the rank's embedding slice itself). Learned
    positions, norms and row-split biases are replicated (not copied).
    """
    shapes = rank_shapes(spec, tp)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < tp:
        raise InvalidInputError(f"rank must be an integer in 0..{tp - 1}, got {rank!r}")
    check_shapes(weights, spec)
    rank_q_width, rank_kv_width = shapes.q_width, shapes.kv_width
    kv_start = (rank // shapes.kv_replicas) * rank_kv_width
    q = slice(rank * rank_q_width, (rank + 1) * rank_q_width)
    k_start = spec.q_width + kv_start
    v_start = spec.q_width + spec.kv_width + kv_start
    qkv_rows = [q, slice(k_start, k_start + rank_kv_width), slice(v_start, v_start + rank_kv_width)]
    ffn, rank_ffn = spec.ffn_hidden_size, shapes.ffn_hidden_size
    ffn_part = slice(rank * rank_ffn, (rank + 1) * rank_ffn)
    up_rows = [ffn_part]
    if spec.gated_ffn:
        up_rows.append(slice(ffn + rank * rank_ffn, ffn + (rank + 1) * rank_ffn))
    layers = tuple(
        LayerWeights(
            ln1=layer.ln1,
            qkv=_rows(layer.qkv, qkv_rows),
            attn_out=_columns(layer.attn_out, q),
            ln2=layer.ln2,
            ffn_up=_rows(layer.ffn_up, up_rows),
            ffn_down=_columns(layer.ffn_down, ffn_part),
        )
        for layer in weights.layers
    )
    embed = _vocabulary_rows(weights.embed, spec, tp, rank)
    lm_head = weights.lm_head
    lm_weight = embed if weights.tied_lm_head else _vocabulary_rows(lm_head.weight, spec, tp, rank)
    lm_bias = None if lm_head.bias is None else _vocabulary_rows(lm_head.bias, spec, tp, rank)
    return ModelWeights(
        embed=embed,
        positions=weights.positions,
        layers=layers,
        final_norm=weights.final_norm,
        lm_head=Linear(lm_weight, lm_bias),
    )


def vocabulary_start(spec: ModelSpec, tp: int, rank: int) -> int:
    """The first token id of tensor-parallel rank `rank`'s vocabulary rows (`shard`)."""
    return rank * rank_shapes(spec, tp).lm_head_rows


def _vocabulary_rows(array: np.ndarray, spec: ModelSpec, tp: int, rank: int) -> np.ndarray:
    """Rank `rank`'s rows of a [vocab_size, ...] array, zero rows past the vocabulary (the
    padding up to a multiple of tp); the rows themselves are not copied unless padded."""
    rows = rank_shapes(spec, tp).lm_head_rows
    start = vocabulary_start(spec, tp, rank)
    stop = min(start + rows, spec.vocab_size)
    held = array[min(start, stop) : stop]
    padding = ((0, rows - len(held)),) + ((0, 0),) * (array.ndim - 1)
    return np.pad(held, padding) if padding[0][1] else held


def stage_weights(weights: ModelWeights, spec: ModelSpec, layers: range) -> ModelWeights:
    """The part of `weights` (whole or one tensor-parallel shard) that the pipeline stage of
    `layers` holds (`profiles.problems.stage_layers`): those layers, renumbered from 0; the
    embeddings only on the first stage; the final norm and the LM head only on the last (a
    tied LM head stays the embedding array, a shard's vocabulary rows under tensor
    parallelism). Nothing is copied."""
    if not 0 <= layers.start < layers.stop <= len(weights.layers) or layers.step != 1:
        raise InvalidInputError(
            f"layers {layers} are not a stage of a model with {len(weights.layers)} layers"
        )
    first, last = layers.start == 0, layers.stop == spec.num_layers
    return ModelWeights(
        embed=weights.embed if first else None,
        positions=weights.positions if first else None,
        layers=weights.layers[layers.start : layers.stop],
        final_norm=weights.final_norm if last else None,
        lm_head=weights.lm_head if last else None,
    )
