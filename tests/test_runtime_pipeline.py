"""Pipeline parallelism on the CPU: the stage plan, micro-batches, stage weights, and the NumPy
reference run as stages (and as tensor-parallel shards of stages, and in micro-batches) against
the whole model."""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.profiles.problems import rank_shapes, stage_layers
from ftbench.runtime.memory import footprint
from ftbench.runtime.model import StepInputs
from ftbench.runtime.pipeline import (
    MicroBatch,
    Stage,
    micro_batches,
    pipeline_group,
    rank_place,
    split_sequences,
    stage_plan,
    tensor_group,
)
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.rank import micro_batch_inputs, step_micro_batches
from ftbench.runtime.reference import ReferenceModel
from ftbench.runtime.sharding import shard, stage_weights
from ftbench.runtime.weights import check_shapes

LLAMA = {
    "model_type": "llama", "vocab_size": 101, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 32, "rope_theta": 5000.0,
}  # fmt: skip
GPTJ = {
    "model_type": "gptj", "vocab_size": 101, "n_embd": 64, "n_layer": 4, "n_head": 4,
    "rotary_dim": 6, "n_positions": 32,
}  # fmt: skip
GPT2 = {
    "model_type": "gpt2", "vocab_size": 101, "n_embd": 64, "n_layer": 3, "n_head": 4,
    "n_positions": 32, "tie_word_embeddings": True,
}  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "pp", "sizes"),
    [
        ("gptj-6b", 2, [14, 14]),
        ("gptj-6b", 4, [7, 7, 7, 7]),
        ("gptj-6b", 8, [4, 4, 4, 4, 3, 3, 3, 3]),
        ("llama2-70b", 2, [40, 40]),
        ("llama2-70b", 4, [20] * 4),
        ("llama2-70b", 8, [10] * 8),
        ("gpt2-124m", 2, [6, 6]),
        ("gpt2-124m", 4, [3, 3, 3, 3]),
        ("gpt2-124m", 8, [2, 2, 2, 2, 1, 1, 1, 1]),
    ],
)
def test_stages_are_contiguous_balanced_and_cover_every_layer(profile, pp, sizes):
    spec = load_builtin(profile)
    plan = stage_plan(spec, pp)
    assert [len(layers) for layers in plan] == sizes
    assert [index for layers in plan for index in layers] == list(range(spec.num_layers))
    # The GEMM counts of `ftbench profiles show --pp` are for the fullest stage.
    assert max(sizes) == rank_shapes(spec, 1, pp).layers_per_stage


def test_gptj_stage_boundaries_at_pp8():
    spec = load_builtin("gptj-6b")
    assert stage_layers(spec, 8, 0) == range(0, 4)
    assert stage_layers(spec, 8, 4) == range(16, 19)
    assert stage_layers(spec, 8, 7) == range(25, 28)


def test_more_stages_than_layers_is_an_error():
    spec = load_builtin("gpt2-124m")
    with pytest.raises(InvalidInputError, match="pp=13 pipeline stages but only 12 layers"):
        stage_plan(spec, 13)
    with pytest.raises(InvalidInputError, match="stage must be in 0..3"):
        stage_layers(spec, 4, 4)


@pytest.mark.parametrize(("tp", "pp"), [(1, 4), (2, 2), (8, 2), (4, 8)])
def test_rank_places_and_groups(tp, pp):
    places = [rank_place(rank, tp, pp) for rank in range(tp * pp)]
    assert places == [(stage, t) for stage in range(pp) for t in range(tp)]
    for stage in range(pp):
        assert [rank_place(r, tp, pp) for r in tensor_group(stage, tp)] == [
            (stage, t) for t in range(tp)
        ]
    for t in range(tp):
        assert [rank_place(r, tp, pp) for r in pipeline_group(t, tp, pp)] == [
            (stage, t) for stage in range(pp)
        ]
    with pytest.raises(InvalidInputError, match="not in a run"):
        rank_place(tp * pp, tp, pp)


@pytest.mark.parametrize(
    ("batch", "count", "sizes"),
    [(7, 3, [3, 2, 2]), (3, 2, [2, 1]), (4, 4, [1, 1, 1, 1]), (5, 1, [5]), (64, 8, [8] * 8)],
)
def test_micro_batches_are_contiguous_and_as_equal_as_can_be(batch, count, sizes):
    parts = split_sequences(batch, count)
    assert [len(part) for part in parts] == sizes
    assert [b for part in parts for b in part] == list(range(batch))


def test_more_micro_batches_than_sequences_is_an_error():
    with pytest.raises(InvalidInputError, match="3 micro-batches need at least 3 sequences"):
        split_sequences(2, 3)
    with pytest.raises(InvalidInputError, match="at least 1"):
        split_sequences(2, 0)
    with pytest.raises(InvalidInputError, match="not decrease"):
        micro_batches([0, 5, 4], 1)


def test_a_packed_prefill_splits_by_sequence():
    # Prompts of 5, 17 and 11 tokens; then a decode step of 3 sequences (token b is sequence b).
    assert micro_batches([0, 5, 22, 33], 2) == [
        MicroBatch(range(0, 2), range(0, 22), 17),
        MicroBatch(range(2, 3), range(22, 33), 11),
    ]
    assert micro_batches(range(4), 3) == [MicroBatch(range(b, b + 1), range(b, b + 1), 1)
                                          for b in range(3)]  # fmt: skip


def _prefill_step(lengths):
    """A prefill's StepInputs as `Generator.prefill_inputs` lays it out (host arrays)."""
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return StepInputs(
        tokens=np.arange(100, 100 + cu[-1], dtype=np.int32),
        seq_ids=np.repeat(np.arange(len(lengths), dtype=np.int32), lengths),
        positions=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        cu_seqlens=cu, past_lens=np.zeros(len(lengths), np.int32),
        lengths=np.asarray(lengths, np.int32), last_rows=cu[1:] - 1, decode=False,
        max_q_len=max(lengths), host_cu_seqlens=tuple(cu.tolist()),
    )  # fmt: skip


def test_a_micro_batch_sees_its_tokens_its_sequences_and_the_steps_token_rows():
    step = _prefill_step([5, 17, 11])
    first, second = step_micro_batches(step, 2)
    part = micro_batch_inputs(step, second)
    np.testing.assert_array_equal(part.tokens, np.arange(122, 133))
    np.testing.assert_array_equal(part.seq_ids, [2] * 11)  # rows of the whole KV cache
    np.testing.assert_array_equal(part.positions, np.arange(11))
    # Attention reads q rows cu_seqlens[b].. of the step and cache row b of rows 2..2.
    np.testing.assert_array_equal(part.cu_seqlens, [22, 33])
    np.testing.assert_array_equal(part.lengths, [11])
    assert part.max_q_len == 11 and micro_batch_inputs(step, first).max_q_len == 17
    # The views share the step's memory: nothing is copied, so a captured graph stays valid.
    assert np.shares_memory(part.tokens, step.tokens)
    assert step_micro_batches(step, 1) == [MicroBatch(range(3), range(33), 17)]
    with pytest.raises(InvalidInputError, match="host_cu_seqlens"):
        step_micro_batches(dataclasses.replace(step, host_cu_seqlens=None), 2)
    decode = dataclasses.replace(
        step, decode=True, tokens=step.tokens[:3], cu_seqlens=np.arange(4, dtype=np.int32)
    )
    assert [p.sequences for p in step_micro_batches(decode, 2)] == [range(2), range(2, 3)]
    with pytest.raises(InvalidInputError, match="4 micro-batches need at least 4 sequences"):
        step_micro_batches(step, 4)


def test_stage_weights_hold_only_their_stage():
    spec = spec_from_hf_config(GPT2)
    weights = random_weights(spec, np.float32, seed=3)
    first, middle, last = (stage_weights(weights, spec, layers) for layers in stage_plan(spec, 3))
    assert first.embed is weights.embed and first.positions is weights.positions
    assert first.lm_head is None and first.final_norm is None
    assert middle.embed is None and middle.lm_head is None and len(middle.layers) == 1
    assert middle.layers[0] is weights.layers[1]
    # The tied LM head stays the embedding array on the last stage, which has no embed slot.
    assert last.embed is None and last.lm_head.weight is weights.embed
    for stage, layers in zip((first, middle, last), stage_plan(spec, 3), strict=True):
        check_shapes(stage, spec, 1, layers)
    with pytest.raises(InvalidInputError, match="layers 1..1"):
        check_shapes(first, spec, 1, range(1, 2))


def test_random_stage_weights_have_the_stage_shapes():
    spec = spec_from_hf_config(LLAMA)
    for layers in stage_plan(spec, 2):
        check_shapes(random_weights(spec, np.float16, tp=2, layers=layers), spec, 2, layers)


def test_a_stage_footprint_counts_its_layers_only():
    spec = load_builtin("llama2-70b")
    whole = footprint(spec, 8, 4096, "fp16", tp=8)
    stages = [footprint(spec, 8, 4096, "fp16", 8, layers=r) for r in stage_plan(spec, 4)]
    assert sum(stage.kv_cache for stage in stages) == whole.kv_cache
    assert sum(stage.weights for stage in stages) == whole.weights
    assert stages[0].weights > stages[1].weights  # the embedding
    assert stages[3].weights > stages[1].weights  # the final norm and LM head


def _pipeline(stages, first_input, method):
    values = first_input
    for model in stages:
        values = getattr(model, method)(values)
    return values


@pytest.mark.parametrize("micro", [1, 2, 3], ids=lambda m: f"mb{m}")
@pytest.mark.parametrize(
    ("config", "tp", "pp"),
    [(LLAMA, 1, 2), (LLAMA, 1, 5), (LLAMA, 2, 3), (GPTJ, 1, 4), (GPTJ, 2, 2), (GPT2, 4, 3)],
    ids=["llama-pp2", "llama-pp5", "llama-tp2-pp3", "gptj-pp4", "gptj-tp2-pp2", "gpt2-tp4-pp3"],
)
def test_reference_run_as_stages_equals_the_whole_model(config, tp, pp, micro):
    # Three sequences: two micro-batches split them 2 + 1, three 1 + 1 + 1, each stage running
    # them one after another on its own KV-cache rows.
    spec = spec_from_hf_config(config)
    weights = random_weights(spec, np.float64, seed=1)
    stages = [
        ReferenceModel(
            spec,
            [stage_weights(shard(weights, spec, tp, rank), spec, layers) for rank in range(tp)],
            layers=layers,
            micro_batches=micro,
        )
        for layers in stage_plan(spec, pp)
    ]
    whole = ReferenceModel(spec, weights)
    prompts = np.random.default_rng(2).integers(0, spec.vocab_size, (3, 9))
    np.testing.assert_allclose(
        _pipeline(stages, prompts, "prefill"), whole.prefill(prompts), rtol=1e-10, atol=1e-12
    )
    for token in (5, 77, 100):
        step = np.array([token, 3, 42])
        np.testing.assert_allclose(
            _pipeline(stages, step, "decode"), whole.decode(step), rtol=1e-10, atol=1e-12
        )


def test_a_later_stage_refuses_token_ids():
    spec = spec_from_hf_config(LLAMA)
    layers = stage_layers(spec, 2, 1)
    model = ReferenceModel(spec, stage_weights(random_weights(spec, np.float64), spec, layers),
                           layers=layers)  # fmt: skip
    with pytest.raises(InvalidInputError, match="takes hidden states"):
        model.prefill(np.zeros((1, 4), np.int64))


def test_a_stage_needs_a_pipeline_communicator_of_its_size():
    with pytest.raises(InvalidInputError, match="needs a pipeline communicator of 2 ranks"):
        Stage(1, 2, range(3, 6))
    with pytest.raises(InvalidInputError, match="stage must be in 0..1"):
        Stage(2, 2, range(0, 1))
