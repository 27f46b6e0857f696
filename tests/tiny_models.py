"""Tiny Hugging Face configs of the families ftbench loads (GPT-2, GPT-J, LLaMA with grouped-query
attention), their specs, and a comparison of two `ModelWeights`, for the weight-layout tests; and
`perturb_norms_and_biases`, for the tests that hold a reference to an HF model."""

import numpy as np

from ftbench.profiles.hf import spec_from_hf_config
from ftbench.profiles.spec import ModelSpec

GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 101,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 32,
}
GPTJ = {
    "model_type": "gptj",
    "vocab_size": 101,
    "n_embd": 64,
    "n_layer": 2,
    "n_head": 4,
    "rotary_dim": 6,
    "n_positions": 32,
}
LLAMA = {
    "model_type": "llama",
    "vocab_size": 101,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
    "rope_theta": 5000.0,
}


def spec_of(config: dict, **overrides) -> ModelSpec:
    return spec_from_hf_config({**config, **overrides})


def assert_same_weights(actual, expected) -> None:
    actual_named, expected_named = actual.named_tensors(), expected.named_tensors()
    assert actual_named.keys() == expected_named.keys()
    for name, array in expected_named.items():
        np.testing.assert_array_equal(actual_named[name], array, err_msg=name)


def perturb_norms_and_biases(model, scale: float = 0.1):
    """`model` (an HF torch model) in eval mode with every 1-D parameter (norm weights, biases)
    moved by scale * N(0, 1), so a reference that drops or swaps one of them shows."""
    import torch

    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(scale * torch.randn_like(parameter))
    return model.eval()
