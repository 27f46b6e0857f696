"""Tensor-parallel shards (the Megatron split, vocabulary rows) against the unsharded weights."""

import dataclasses
import math

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.profiles.problems import rank_shapes
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.reference import ReferenceModel, embed
from ftbench.runtime.sharding import shard, vocabulary_start
from ftbench.runtime.weights import check_shapes, weight_shapes
from tiny_models import GPT2, GPTJ, LLAMA, spec_of


@pytest.mark.parametrize("tp", [2, 4])
def test_shards_have_the_rank_shapes(tp):
    spec = spec_of(LLAMA)
    weights = random_weights(spec, np.float32)
    shapes = rank_shapes(spec, tp)
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        check_shapes(part, spec, tp)
        assert part.layers[0].qkv.weight.shape[0] == (shapes.q_heads + 2 * shapes.kv_heads) * 16
        assert part.lm_head.weight.shape == (shapes.lm_head_rows, 64)


def test_fewer_kv_heads_than_ranks_replicates_each_kv_head_on_its_query_group():
    """4 query heads, 2 KV heads, tp=4: ranks 0-1 hold KV head 0, ranks 2-3 KV head 1."""
    spec = spec_of(LLAMA)
    weights = random_weights(spec, np.float32)
    qkv = weights.layers[0].qkv.weight
    head_dim = 16
    k_head = [qkv[64 + head * head_dim : 64 + (head + 1) * head_dim] for head in range(2)]
    v_head = [qkv[96 + head * head_dim : 96 + (head + 1) * head_dim] for head in range(2)]
    for rank in range(4):
        part = shard(weights, spec, 4, rank).layers[0].qkv.weight
        q, k, v = np.split(part, 3)
        np.testing.assert_array_equal(q, qkv[rank * head_dim : (rank + 1) * head_dim])
        np.testing.assert_array_equal(k, k_head[rank // 2])
        np.testing.assert_array_equal(v, v_head[rank // 2])


def test_lm_head_is_padded_with_zero_rows():
    spec = spec_of(GPTJ)  # vocabulary 101 over 2 ranks: 51 rows each, one padding row
    weights = random_weights(spec, np.float32)
    last = shard(weights, spec, 2, 1).lm_head
    np.testing.assert_array_equal(last.weight[:50], weights.lm_head.weight[51:])
    assert not last.weight[50].any() and last.bias[50] == 0


@pytest.mark.parametrize(("tp", "rows"), [(1, 50400), (2, 25200), (4, 12600), (8, 6300)])
def test_gptj_6b_embedding_and_lm_head_rows_per_rank(tp, rows):
    spec = load_builtin("gptj-6b")  # 50400 divides by 8: no padding
    shapes = weight_shapes(spec, tp)
    assert shapes["embed"] == shapes["lm_head.weight"] == (rows, 4096)
    assert shapes["lm_head.bias"] == (rows,)
    assert [vocabulary_start(spec, tp, r) for r in range(tp)] == [r * rows for r in range(tp)]


@pytest.mark.parametrize("vocab", [50400, 1003])
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_embedding_is_split_by_the_lm_heads_vocabulary_rows(vocab, tp):
    spec = spec_of(GPTJ, vocab_size=vocab, n_head=8)
    weights = random_weights(spec, np.float32)
    rows = {50400: {2: 25200, 4: 12600, 8: 6300}, 1003: {2: 502, 4: 251, 8: 126}}[vocab][tp]
    padding = rows * tp - vocab  # 1003: 1, 1 and 5 zero rows on the last rank
    padded_embed = np.pad(weights.embed, ((0, padding), (0, 0)))
    padded_head = np.pad(weights.lm_head.weight, ((0, padding), (0, 0)))
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        check_shapes(part, spec, tp)
        held = slice(rank * rows, (rank + 1) * rows)
        assert vocabulary_start(spec, tp, rank) == held.start
        np.testing.assert_array_equal(part.embed, padded_embed[held])
        np.testing.assert_array_equal(part.lm_head.weight, padded_head[held])
    last = shard(weights, spec, tp, tp - 1)
    assert not last.embed[rows - padding :].any()


@pytest.mark.parametrize("tp", [2, 4])
def test_a_tied_lm_head_is_the_sharded_embedding(tp):
    spec = spec_of(GPT2)  # vocabulary 101: one padding row at tp=2, three at tp=4
    weights = random_weights(spec, np.float32)
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        assert part.tied_lm_head and part.lm_head.weight is part.embed
        assert part.positions is weights.positions  # learned positions stay replicated
        assert part.embed.shape == (rank_shapes(spec, tp).lm_head_rows, 64)


def test_the_reference_embeds_only_the_tokens_in_a_ranks_rows():
    table = np.arange(12.0).reshape(4, 3)  # token ids 10..13
    tokens = np.array([[9, 10, 13], [14, 12, 0]])
    got = embed(tokens, table, vocab_start=10)
    np.testing.assert_array_equal(got[0], [[0, 0, 0], [0, 1, 2], [9, 10, 11]])
    np.testing.assert_array_equal(got[1], [[0, 0, 0], [6, 7, 8], [0, 0, 0]])


def test_bad_tp_or_rank_is_refused():
    spec = spec_of(LLAMA)
    weights = random_weights(spec, np.float32)
    with pytest.raises(InvalidInputError, match="valid tp sizes"):
        shard(weights, spec, 3, 0)
    with pytest.raises(InvalidInputError, match="rank must be an integer in 0..1"):
        shard(weights, spec, 2, 2)
    with pytest.raises(InvalidInputError, match="weights do not match"):
        shard(shard(weights, spec, 2, 0), spec, 2, 0)


@pytest.mark.parametrize(
    ("config", "overrides", "tp"),
    [
        (LLAMA, {}, 2),
        (LLAMA, {}, 4),
        (LLAMA, {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True}, 4),
        (GPTJ, {}, 2),
        (GPT2, {}, 2),
        (GPT2, {}, 4),
    ],
    ids=[
        "llama-tp2", "llama-tp4-kv-replicated", "llama-mqa-bias-tp4", "gptj-tp2", "gpt2-tp2",
        "gpt2-tp4",
    ],
)  # fmt: skip
def test_sharded_forward_equals_unsharded(config, overrides, tp):
    spec = spec_of(config, **overrides)
    weights = random_weights(spec, np.float64, seed=1)
    shards = [shard(weights, spec, tp, rank) for rank in range(tp)]
    full, parallel = ReferenceModel(spec, weights), ReferenceModel(spec, shards)
    prompts = np.random.default_rng(2).integers(0, spec.vocab_size, (2, 9))
    # The first and last token id of every rank's vocabulary rows, up to the last id (100).
    rows = rank_shapes(spec, tp).lm_head_rows
    edges = sorted({*range(0, spec.vocab_size, rows), *range(rows - 1, spec.vocab_size, rows)})
    edges = [*edges, spec.vocab_size - 1]
    prompts[0, : len(edges)] = edges
    np.testing.assert_allclose(
        parallel.prefill(prompts), full.prefill(prompts), rtol=1e-10, atol=1e-12
    )
    for token in (5, 77, 100):
        step = np.array([token, 3])
        np.testing.assert_allclose(parallel.decode(step), full.decode(step), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("profile", "tp"),
    [(name, tp) for name in ("gptj-6b", "llama2-70b", "megatron-gpt-345m") for tp in (2, 4, 8)]
    + [("gpt2-124m", 2), ("gpt2-124m", 4)],
)  # fmt: skip
def test_sharding_plan_of_the_builtin_profiles(profile, tp):
    """The Megatron plan with each profile's real heads, KV heads, FFN split and vocabulary
    (head_dim, widths and layers shrunk so the arrays are small; GPT-2 124M's 12 heads do not
    split 8 ways, so Megatron-GPT 345M, the same architecture, stands for GPT-2 at TP 8), derived
    here per head: rank r holds the query heads h with h // (H / tp) == r, the KV heads those
    queries use (h // (H / KV)), the matching attention-out columns, FFN rows and columns
    [r F / tp, (r + 1) F / tp) (of gate and of up), and token ids [r n, (r + 1) n) with
    n = ceil(V / tp), zero rows past the vocabulary."""
    real = load_builtin(profile)
    head_dim = 2
    spec = dataclasses.replace(
        real, num_layers=1, head_dim=head_dim, hidden_size=real.num_heads * head_dim,
        ffn_hidden_size=2 * 8 * tp,
        rotary_dim=head_dim if real.rotary_dim else 0, max_positions=16,
    )  # fmt: skip
    weights = random_weights(spec, np.float64, seed=4)
    heads, kv_heads, ffn, vocab = (
        spec.num_heads,
        spec.num_kv_heads,
        spec.ffn_hidden_size,
        spec.vocab_size,
    )
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    layer = weights.layers[0]
    held_ids = []
    for rank in range(tp):
        part = shard(weights, spec, tp, rank)
        q_heads = [h for h in range(heads) if h // (heads // tp) == rank]
        kv = sorted({h // (heads // kv_heads) for h in q_heads})
        q_rows = [h * head_dim + d for h in q_heads for d in range(head_dim)]
        kv_rows = [g * head_dim + d for g in kv for d in range(head_dim)]
        qkv_rows = (
            q_rows + [q_width + i for i in kv_rows] + [q_width + kv_width + i for i in kv_rows]
        )
        np.testing.assert_array_equal(part.layers[0].qkv.weight, layer.qkv.weight[qkv_rows])
        np.testing.assert_array_equal(
            part.layers[0].attn_out.weight, layer.attn_out.weight[:, q_rows]
        )
        ffn_rows = list(range(rank * ffn // tp, (rank + 1) * ffn // tp))
        up_rows = ffn_rows + [ffn + i for i in ffn_rows] if spec.gated_ffn else ffn_rows
        np.testing.assert_array_equal(part.layers[0].ffn_up.weight, layer.ffn_up.weight[up_rows])
        np.testing.assert_array_equal(
            part.layers[0].ffn_down.weight, layer.ffn_down.weight[:, ffn_rows]
        )
        n = math.ceil(vocab / tp)
        ids = [i for i in range(rank * n, (rank + 1) * n) if i < vocab]
        held_ids += ids
        for got, full in (
            (part.embed, weights.embed),
            (part.lm_head.weight, weights.lm_head.weight),
        ):
            assert got.shape[0] == n
            np.testing.assert_array_equal(got[: len(ids)], full[ids])
            assert not got[len(ids) :].any()
    assert held_ids == list(range(vocab))
