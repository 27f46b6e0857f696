"""Random weights: the spec's shapes, one dtype, GPT-2's init scale, repeatable by seed."""

import numpy as np
import pytest

from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.weights import check_shapes, weight_shapes
from tiny_models import GPT2, GPTJ, LLAMA, assert_same_weights, spec_of


@pytest.mark.parametrize("config", [GPT2, GPTJ, LLAMA], ids=["gpt2", "gptj", "llama"])
def test_random_weights_have_the_spec_shapes_and_one_dtype(config):
    spec = spec_of(config)
    weights = random_weights(spec, "fp16", seed=3)
    named = weights.named_tensors()
    assert {name: array.shape for name, array in named.items()} == weight_shapes(spec)
    assert {array.dtype for array in named.values()} == {np.dtype(np.float16)}
    assert abs(float(np.std(named["layers.0.qkv.weight"])) - 0.02) < 0.002
    np.testing.assert_allclose(named["final_norm.weight"], 1.0, atol=0.1)
    assert weights.tied_lm_head == spec.tie_word_embeddings
    assert_same_weights(random_weights(spec, "fp16", seed=3), weights)
    assert not np.array_equal(random_weights(spec, "fp16", seed=4).embed, weights.embed)


@pytest.mark.parametrize("tp", [2, 4])
def test_random_weights_of_a_rank_keep_a_tied_lm_head_tied(tp):
    spec = spec_of(GPT2)
    part = random_weights(spec, np.float32, tp=tp)
    check_shapes(part, spec, tp)
    assert part.tied_lm_head
