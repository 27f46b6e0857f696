"""ftbench's weight layout: the arrays of a spec, their shapes and dtype."""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.weights import weight_shapes
from tiny_models import GPT2, GPTJ, spec_of


def test_gptj_has_one_norm_per_layer_and_an_lm_head_bias():
    spec = spec_of(GPTJ)
    shapes = weight_shapes(spec)
    assert "layers.0.ln2.weight" not in shapes
    assert shapes["lm_head.bias"] == (101,)
    assert "layers.0.qkv.bias" not in shapes and "layers.0.ffn_up.bias" in shapes


def test_models_other_than_decoders_are_refused():
    bert = spec_from_hf_config(
        {
            "model_type": "bert",
            "vocab_size": 50,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
        }
    )
    with pytest.raises(InvalidInputError, match="decoder models"):
        weight_shapes(bert)


def test_astype_keeps_a_tied_lm_head_tied():
    weights = random_weights(spec_of(GPT2), np.float32).astype("fp64")
    assert weights.dtype == np.float64 and weights.tied_lm_head
