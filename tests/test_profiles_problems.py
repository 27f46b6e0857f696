"""GEMM problems derived from profiles, checked against shapes computed by hand.

Each expected table maps (phase, role) to (m, n, k, batch_count, calls_per_step) for one rank.
"""

import dataclasses

import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels.weight_only import MAX_M as WEIGHT_ONLY_MAX_M
from ftbench.profiles.catalog import load_builtin
from ftbench.profiles.problems import deduplicate, gemm_problems, rank_shapes, valid_tp_sizes
from ftbench.profiles.spec import Workload


def shape_table(name, fused=True, **workload):
    """(phase, role) -> (m, n, k, batch_count, calls) for a single-grid-point workload."""
    uses = gemm_problems(load_builtin(name), Workload(**workload), fused)
    table = {}
    for use in uses:
        key = (use.phase, use.role)
        assert key not in table, f"{key} appears twice for one grid point"
        p = use.problem
        table[key] = (p.m, p.n, p.k, p.batch_count, use.calls_per_step)
    return table


def test_gptj_6b_tp1():
    assert shape_table("gptj-6b", batch_sizes=(1,), input_lens=(128,)) == {
        ("context", "qkv"): (128, 12288, 4096, 1, 28),
        ("context", "attn_scores"): (128, 128, 256, 16, 28),
        ("context", "attn_context"): (128, 256, 128, 16, 28),
        ("context", "attn_out"): (128, 4096, 4096, 1, 28),
        ("context", "ffn_up"): (128, 16384, 4096, 1, 28),
        ("context", "ffn_down"): (128, 4096, 16384, 1, 28),
        ("context", "lm_head"): (1, 50400, 4096, 1, 1),
        ("generation", "qkv"): (1, 12288, 4096, 1, 28),
        ("generation", "attn_out"): (1, 4096, 4096, 1, 28),
        ("generation", "ffn_up"): (1, 16384, 4096, 1, 28),
        ("generation", "ffn_down"): (1, 4096, 16384, 1, 28),
        ("generation", "lm_head"): (1, 50400, 4096, 1, 1),
    }


def test_gptj_6b_tp2_batch_8():
    assert shape_table("gptj-6b", batch_sizes=(8,), input_lens=(128,), tp=2) == {
        ("context", "qkv"): (1024, 6144, 4096, 1, 28),
        ("context", "attn_scores"): (128, 128, 256, 64, 28),
        ("context", "attn_context"): (128, 256, 128, 64, 28),
        ("context", "attn_out"): (1024, 4096, 2048, 1, 28),
        ("context", "ffn_up"): (1024, 8192, 4096, 1, 28),
        ("context", "ffn_down"): (1024, 4096, 8192, 1, 28),
        ("context", "lm_head"): (8, 25200, 4096, 1, 1),
        ("generation", "qkv"): (8, 6144, 4096, 1, 28),
        ("generation", "attn_out"): (8, 4096, 2048, 1, 28),
        ("generation", "ffn_up"): (8, 8192, 4096, 1, 28),
        ("generation", "ffn_down"): (8, 4096, 8192, 1, 28),
        ("generation", "lm_head"): (8, 25200, 4096, 1, 1),
    }


def test_gptj_6b_tp2_generation_unfused_splits_q_k_v():
    table = shape_table("gptj-6b", fused=False, tp=2)
    assert table[("generation", "q")] == (1, 2048, 4096, 1, 28)
    assert table[("generation", "k")] == (1, 2048, 4096, 1, 28)
    assert table[("generation", "v")] == (1, 2048, 4096, 1, 28)
    assert ("generation", "qkv") not in table


def test_llama2_70b_tp8_gqa_both_variants():
    table = shape_table("llama2-70b", fused="both", tp=8)
    generation = {role: shape for (phase, role), shape in table.items() if phase == "generation"}
    assert generation == {
        "qkv": (1, 1280, 8192, 1, 80),
        "q": (1, 1024, 8192, 1, 80),
        "k": (1, 128, 8192, 1, 80),
        "v": (1, 128, 8192, 1, 80),
        "attn_out": (1, 8192, 1024, 1, 80),
        "ffn_gate_up": (1, 7168, 8192, 1, 80),
        "ffn_gate": (1, 3584, 8192, 1, 80),
        "ffn_up": (1, 3584, 8192, 1, 80),
        "ffn_down": (1, 8192, 3584, 1, 80),
        "lm_head": (1, 4000, 8192, 1, 1),
    }
    # 8 query heads per rank, so 8 score/context products per sequence.
    assert table[("context", "attn_scores")] == (128, 128, 128, 8, 80)
    assert table[("context", "qkv")] == (128, 1280, 8192, 1, 80)


def test_llama2_70b_tp8_rank_shapes():
    shapes = rank_shapes(load_builtin("llama2-70b"), tp=8)
    assert (shapes.q_heads, shapes.kv_heads, shapes.kv_replicas) == (8, 1, 1)
    assert (shapes.ffn_hidden_size, shapes.lm_head_rows, shapes.layers_per_stage) == (
        3584,
        4000,
        80,
    )


def test_gpt2_124m_with_beam_search():
    table = shape_table("gpt2-124m", batch_sizes=(4,), input_lens=(64,), beam_width=2)
    assert table == {
        ("context", "qkv"): (256, 2304, 768, 1, 12),
        ("context", "attn_scores"): (64, 64, 64, 48, 12),
        ("context", "attn_context"): (64, 64, 64, 48, 12),
        ("context", "attn_out"): (256, 768, 768, 1, 12),
        ("context", "ffn_up"): (256, 3072, 768, 1, 12),
        ("context", "ffn_down"): (256, 768, 3072, 1, 12),
        ("context", "lm_head"): (4, 50257, 768, 1, 1),
        ("generation", "qkv"): (8, 2304, 768, 1, 12),
        ("generation", "attn_out"): (8, 768, 768, 1, 12),
        ("generation", "ffn_up"): (8, 3072, 768, 1, 12),
        ("generation", "ffn_down"): (8, 768, 3072, 1, 12),
        ("generation", "lm_head"): (8, 50257, 768, 1, 1),
    }


def test_bert_base_is_encoder_only():
    table = shape_table("bert-base", batch_sizes=(2,), input_lens=(128,), beam_width=4)
    assert table == {
        ("context", "qkv"): (256, 2304, 768, 1, 12),
        ("context", "attn_scores"): (128, 128, 64, 24, 12),
        ("context", "attn_context"): (128, 64, 128, 24, 12),
        ("context", "attn_out"): (256, 768, 768, 1, 12),
        ("context", "ffn_up"): (256, 3072, 768, 1, 12),
        ("context", "ffn_down"): (256, 768, 3072, 1, 12),
    }


def test_t5_base_encoder_decoder_with_cross_attention():
    table = shape_table("t5-base", batch_sizes=(2,), input_lens=(64,))
    assert table == {
        ("context", "qkv"): (128, 2304, 768, 1, 12),
        ("context", "attn_scores"): (64, 64, 64, 24, 12),
        ("context", "attn_context"): (64, 64, 64, 24, 12),
        ("context", "attn_out"): (128, 768, 768, 1, 12),
        ("context", "ffn_up"): (128, 3072, 768, 1, 12),
        ("context", "ffn_down"): (128, 768, 3072, 1, 12),
        ("context", "cross_kv"): (128, 1536, 768, 1, 12),
        ("generation", "qkv"): (2, 2304, 768, 1, 12),
        ("generation", "attn_out"): (2, 768, 768, 1, 12),
        ("generation", "cross_q"): (2, 768, 768, 1, 12),
        ("generation", "cross_scores"): (1, 64, 64, 24, 12),
        ("generation", "cross_context"): (1, 64, 64, 24, 12),
        ("generation", "cross_out"): (2, 768, 768, 1, 12),
        ("generation", "ffn_up"): (2, 3072, 768, 1, 12),
        ("generation", "ffn_down"): (2, 768, 3072, 1, 12),
        ("generation", "lm_head"): (2, 32128, 768, 1, 1),
    }


def test_t5_base_tp2_splits_heads_ffn_and_vocabulary():
    table = shape_table("t5-base", tp=2, fused=False)
    assert table[("context", "cross_k")] == (128, 384, 768, 1, 12)
    assert table[("generation", "cross_q")] == (1, 384, 768, 1, 12)
    assert table[("generation", "cross_out")] == (1, 768, 384, 1, 12)
    assert table[("generation", "ffn_up")] == (1, 1536, 768, 1, 12)
    assert table[("generation", "lm_head")] == (1, 16064, 768, 1, 1)


def test_linear_layers_are_nt_and_attention_context_is_nn():
    uses = gemm_problems(load_builtin("gpt2-124m"), Workload(dtype="bf16"))
    layouts = {use.role: use.problem.layout for use in uses}
    assert layouts["qkv"] == layouts["lm_head"] == layouts["attn_scores"] == "NT"
    assert layouts["attn_context"] == "NN"
    assert {use.problem.a_dtype for use in uses} == {"bf16"}
    assert {use.problem.compute_dtype for use in uses} == {"fp32"}
    attention = {use.role for use in uses if use.fused_into_attention}
    assert attention == {"attn_scores", "attn_context"}


def test_gemm_weights_account_for_every_matrix_parameter():
    # At tp=1 the generation step touches every weight matrix once per layer, plus the LM head.
    spec = load_builtin("llama2-7b")
    uses = gemm_problems(spec, Workload(), fused=True)
    weights = sum(
        use.problem.n * use.problem.k * use.calls_per_step
        for use in uses
        if use.phase == "generation"
    )
    embedding = spec.vocab_size * spec.hidden_size
    norms = (2 * spec.num_layers + 1) * spec.hidden_size
    assert weights == spec.parameter_count() - embedding - norms


def test_kv_heads_fewer_than_ranks_are_replicated():
    spec = load_builtin("llama3-8b")
    shapes = rank_shapes(spec, tp=16)
    assert (shapes.q_heads, shapes.kv_heads, shapes.kv_replicas) == (2, 1, 2)
    table = shape_table("llama3-8b", tp=16)
    assert table[("generation", "qkv")] == (1, (2 + 2) * 128, 4096, 1, 32)


def test_heads_not_divisible_by_tp_is_an_error_listing_valid_sizes():
    with pytest.raises(InvalidInputError) as info:
        rank_shapes(load_builtin("llama2-70b"), tp=3)
    message = str(info.value)
    assert "64 attention heads cannot be split evenly over tp=3" in message
    assert "valid tp sizes: 1, 2, 4, 8, 16, 32, 64" in message


def test_kv_heads_that_cannot_be_split_or_replicated_are_errors():
    base = load_builtin("llama2-7b")
    split = dataclasses.replace(base, num_heads=48, num_kv_heads=6)
    with pytest.raises(InvalidInputError, match="6 KV heads cannot be split evenly over tp=4"):
        rank_shapes(split, tp=4)
    replicate = dataclasses.replace(base, num_heads=24, num_kv_heads=4, ffn_hidden_size=12288)
    with pytest.raises(InvalidInputError, match="4 KV heads cannot be replicated evenly over tp=6"):
        rank_shapes(replicate, tp=6)
    assert valid_tp_sizes(replicate) == [1, 2, 4, 8, 12, 24]


def test_lm_head_vocabulary_is_padded_to_a_multiple_of_tp():
    shapes = rank_shapes(load_builtin("gpt2-124m"), tp=4)
    assert (shapes.vocab_padded, shapes.lm_head_rows) == (50260, 12565)


def test_pipeline_stages_hold_ceil_layers_and_the_lm_head_runs_once():
    table = shape_table("llama2-70b", tp=8, pp=3)
    assert table[("generation", "qkv")][4] == 27  # ceil(80 / 3)
    assert table[("generation", "lm_head")][4] == 1
    with pytest.raises(InvalidInputError, match="pp=13 pipeline stages but only 12 layers"):
        rank_shapes(load_builtin("gpt2-124m"), pp=13)


def test_output_length_one_means_no_generation_step_for_decoders():
    decoder = shape_table("gptj-6b", output_lens=(1,))
    assert {phase for phase, _ in decoder} == {"context"}
    encoder_decoder = shape_table("t5-base", output_lens=(1,))
    assert ("generation", "lm_head") in encoder_decoder


def test_learned_positions_limit_the_sequence():
    spec = load_builtin("gpt2-124m")
    gemm_problems(spec, Workload(input_lens=(1000,), output_lens=(25,)))
    with pytest.raises(
        InvalidInputError, match="1024 learned positions.*1024 \\+ output length 128"
    ):
        gemm_problems(spec, Workload(input_lens=(1024,), output_lens=(128,)))
    with pytest.raises(InvalidInputError, match="512 learned positions"):
        gemm_problems(load_builtin("bert-base"), Workload(input_lens=(513,)))


def test_roberta_sequences_take_the_positions_after_its_offset():
    roberta = load_builtin("roberta-base")  # 514 rows, the first token's is row 2
    gemm_problems(roberta, Workload(input_lens=(512,)))
    with pytest.raises(InvalidInputError, match="roberta-base has 512 learned positions"):
        gemm_problems(roberta, Workload(input_lens=(513,)))


def test_deduplicate_sums_calls_over_roles_and_grid_points():
    spec = load_builtin("gptj-6b")
    uses = gemm_problems(spec, Workload(batch_sizes=(1, 8), input_lens=(128,), tp=2), fused=False)
    counted = {item.problem.key(): item for item in deduplicate(uses)}
    kv = counted["gemm:f16f16f16:f32:NT:m=1:n=2048:k=4096:b=1"]
    assert kv.count == 3 * 28
    assert kv.roles == ("generation:q", "generation:k", "generation:v")
    head = counted["gemm:f16f16f16:f32:NT:m=8:n=25200:k=4096:b=1"]
    assert (head.count, head.roles) == (2, ("context:lm_head", "generation:lm_head"))
    assert head.phases == ("context", "generation")
    assert sum(item.count for item in counted.values()) == sum(u.calls_per_step for u in uses)


def test_deduplicate_order_does_not_depend_on_input_order():
    uses = gemm_problems(load_builtin("t5-base"), Workload(batch_sizes=(1, 4)), fused="both")
    assert deduplicate(uses) == deduplicate(list(reversed(uses)))
    first = deduplicate(uses)[0]
    assert first.roles[0].startswith("context:")


def test_fused_must_be_true_false_or_both():
    with pytest.raises(InvalidInputError, match="fused must be"):
        gemm_problems(load_builtin("gpt2-124m"), Workload(), fused="yes")


# 8-bit workloads: the linear layers are quantised, attention products and the LM head are not.

UNQUANTISED_ROLES = ("attn_scores", "attn_context", "lm_head")


def counted_keys(name, **workload):
    uses = gemm_problems(load_builtin(name), Workload((1,), (128,), **workload))
    return [(item.problem.key(), item.count) for item in deduplicate(uses)]


def test_gptj_6b_fp8_problems():
    assert counted_keys("gptj-6b", dtype="fp8") == [
        ("gemm:f16f16f16:f32:NT:m=1:n=50400:k=4096:b=1", 2),
        ("gemm:e4m3e4m3f16:f32:NT:m=128:n=12288:k=4096:b=1:s=tensor", 28),
        ("gemm:f16f16f16:f32:NT:m=128:n=128:k=256:b=16", 28),
        ("gemm:f16f16f16:f32:NN:m=128:n=256:k=128:b=16", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=128:n=4096:k=4096:b=1:s=tensor", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=128:n=16384:k=4096:b=1:s=tensor", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=128:n=4096:k=16384:b=1:s=tensor", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=1:n=12288:k=4096:b=1:s=tensor", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=1:n=4096:k=4096:b=1:s=tensor", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=1:n=16384:k=4096:b=1:s=tensor", 28),
        ("gemm:e4m3e4m3f16:f32:NT:m=1:n=4096:k=16384:b=1:s=tensor", 28),
    ]


def test_llama3_8b_int8_weight_only_problems():
    """Weight-only up to the kernels' 16 rows; the prefill's m = 128 multiplies dequantised
    weights in bf16."""
    assert counted_keys("llama3-8b", dtype="bf16", weights="int8") == [
        ("gemm:bf16bf16bf16:f32:NT:m=1:n=128256:k=4096:b=1", 2),
        ("gemm:bf16bf16bf16:f32:NT:m=128:n=6144:k=4096:b=1", 32),  # dequantised
        ("gemm:bf16bf16bf16:f32:NT:m=128:n=128:k=128:b=32", 32),
        ("gemm:bf16bf16bf16:f32:NN:m=128:n=128:k=128:b=32", 32),
        ("gemm:bf16bf16bf16:f32:NT:m=128:n=4096:k=4096:b=1", 32),  # dequantised
        ("gemm:bf16bf16bf16:f32:NT:m=128:n=28672:k=4096:b=1", 32),  # dequantised
        ("gemm:bf16bf16bf16:f32:NT:m=128:n=4096:k=14336:b=1", 32),  # dequantised
        ("gemm:bf16s8bf16:f32:NT:m=1:n=6144:k=4096:b=1:s=channel", 32),
        ("gemm:bf16s8bf16:f32:NT:m=1:n=4096:k=4096:b=1:s=channel", 32),
        ("gemm:bf16s8bf16:f32:NT:m=1:n=28672:k=4096:b=1:s=channel", 32),
        ("gemm:bf16s8bf16:f32:NT:m=1:n=4096:k=14336:b=1:s=channel", 32),
    ]


@pytest.mark.parametrize("name", ["gptj-6b", "llama3-8b"])
@pytest.mark.parametrize(
    ("workload", "quantised", "unquantised"),
    [
        ({"dtype": "fp8"}, ("fp8", "fp8", "fp16", "tensor"), ("fp16", "fp16", "fp16", "none")),
        (
            {"dtype": "fp8", "out_dtype": "bf16", "scaling": "outer"},
            ("fp8", "fp8", "bf16", "outer"),
            ("bf16", "bf16", "bf16", "none"),
        ),
        (
            {"weights": "int8"},
            ("fp16", "int8", "fp16", "channel"),
            ("fp16", "fp16", "fp16", "none"),
        ),
        (
            {"dtype": "bf16", "weights": "fp8"},
            ("bf16", "fp8", "bf16", "channel"),
            ("bf16", "bf16", "bf16", "none"),
        ),
    ],
)
def test_8_bit_workloads_keep_the_shapes_and_quantise_only_the_linear_layers(
    name, workload, quantised, unquantised
):
    assert shape_table(name, **workload) == shape_table(name)
    uses = gemm_problems(load_builtin(name), Workload(**workload))
    weight_only = quantised[3] == "channel"
    for use in uses:
        p = use.problem
        dequantised = weight_only and p.m > WEIGHT_ONLY_MAX_M
        expected = unquantised if use.role in UNQUANTISED_ROLES or dequantised else quantised
        assert (p.a_dtype, p.b_dtype, p.c_dtype, p.scaling) == expected, use.role
    counted = deduplicate(uses)
    assert len(counted) == 11
    # The 4 linear layers of the context phase (m = 128) and of a generation step (m = 1).
    assert sum(item.problem.scaling != "none" for item in counted) == (4 if weight_only else 8)


def test_t5_cross_attention_projections_are_quantised_and_its_products_are_not():
    uses = gemm_problems(load_builtin("t5-base"), Workload(dtype="fp8"))
    scaling = {use.role: use.problem.scaling for use in uses}
    assert scaling["cross_q"] == scaling["cross_kv"] == scaling["cross_out"] == "tensor"
    assert scaling["cross_scores"] == scaling["cross_context"] == "none"
