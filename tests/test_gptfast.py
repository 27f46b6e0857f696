"""The gpt-fast peer's torch decoder against the NumPy reference, eagerly on the CPU.

Weights are ftbench's random weights scaled to std 0.1 (norms moved away from 1 and 0 by the
same noise), so attention is far from uniform and a mistake in any part shows.
"""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.reference import ReferenceModel
from ftbench.runtime.weights import from_named

torch = pytest.importorskip("torch")
gptfast = pytest.importorskip("ftbench.modelbench.gptfast")

PROMPT = 10
DECODE_STEPS = 6
FP32_TOLERANCE = 1e-4

# GPT-J: parallel block, interleaved rotary over 6 of 16 dims, LM head bias. GPT-2: learned
# positions, LayerNorm, tied LM head. LLaMA: GQA (4 query heads on 2 KV heads), RMSNorm, SwiGLU,
# a rope base that is not 10000.
SPECS = {
    "gptj": dataclasses.replace(
        load_builtin("gptj-6b"), name="tiny-gptj", num_layers=2, hidden_size=64, num_heads=4,
        num_kv_heads=4, head_dim=16, rotary_dim=6, ffn_hidden_size=128, vocab_size=100,
    ),
    "gpt2": dataclasses.replace(
        load_builtin("gpt2-124m"), name="tiny-gpt2", num_layers=2, hidden_size=64, num_heads=4,
        num_kv_heads=4, head_dim=16, ffn_hidden_size=128, vocab_size=100, max_positions=64,
    ),
    "llama-gqa": dataclasses.replace(
        load_builtin("llama2-7b"), name="tiny-llama", num_layers=2, hidden_size=64, num_heads=4,
        num_kv_heads=2, head_dim=16, rotary_dim=16, ffn_hidden_size=96, vocab_size=100,
        rope_theta=5000.0,
    ),
    "llama3-rope": dataclasses.replace(
        load_builtin("llama3-8b"), name="tiny-llama3", num_layers=2, hidden_size=64, num_heads=4,
        num_kv_heads=2, head_dim=16, rotary_dim=16, ffn_hidden_size=96, vocab_size=100,
        rope_theta=5000.0, rope_scaling='{"factor": 4.0, "high_freq_factor": 4.0, '
        '"low_freq_factor": 1.0, "original_max_position_embeddings": 16, "rope_type": "llama3"}',
    ),
}  # fmt: skip


def _weights(spec, dtype="float64"):
    named = {}
    for name, array in random_weights(spec, "fp64", seed=len(spec.name)).named_tensors().items():
        is_norm_weight = name.endswith(".weight") and name.split(".")[-2] in (
            "ln1", "ln2", "final_norm",
        )  # fmt: skip
        named[name] = (1 + (array - 1) * 5 if is_norm_weight else array * 5).astype(dtype)
    if spec.tie_word_embeddings:
        named["lm_head.weight"] = named["embed"]
    return from_named(named, spec.num_layers)


def _model(spec, weights, batch=2, max_seq_len=PROMPT + DECODE_STEPS + 2):
    model = gptfast.StaticCacheDecoder(spec, gptfast.torch_weights(weights))
    model.setup_caches(batch, max_seq_len)
    return model


def _run(model, tokens, start):
    """Logits of tokens [batch, n] fed at positions start..start+n-1, as float64 NumPy."""
    positions = torch.arange(start, start + tokens.shape[1])
    with torch.no_grad():
        return model(torch.from_numpy(tokens), positions).double().numpy()


def _relative_error(actual, expected):
    per_position = np.abs(actual - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    return float(per_position.max())


def _tokens(spec, shape, seed=0):
    return np.random.default_rng(seed).integers(0, spec.vocab_size, shape)


@pytest.mark.parametrize("name", list(SPECS))
def test_prefill_and_decode_steps_match_the_reference_in_fp32(name):
    spec = SPECS[name]
    weights = _weights(spec)
    tokens = _tokens(spec, (2, PROMPT + DECODE_STEPS))
    reference = ReferenceModel(spec, weights)
    expected_prefill = reference.prefill(tokens[:, :PROMPT])
    expected_steps = np.stack([reference.decode(tokens[:, PROMPT + j]) for j in range(5)], 1)
    model = _model(spec, weights.astype(np.float32))
    assert _relative_error(_run(model, tokens[:, :PROMPT], 0), expected_prefill) < FP32_TOLERANCE
    steps = [_run(model, tokens[:, PROMPT + j : PROMPT + j + 1], PROMPT + j) for j in range(5)]
    assert _relative_error(np.concatenate(steps, 1), expected_steps) < FP32_TOLERANCE


@pytest.mark.parametrize("name", list(SPECS))
def test_cached_decode_steps_equal_a_full_recompute(name):
    spec = SPECS[name]
    weights = _weights(spec)
    tokens = _tokens(spec, (2, PROMPT + DECODE_STEPS), seed=1)
    cached = _model(spec, weights)
    _run(cached, tokens[:, :PROMPT], 0)
    for j in range(DECODE_STEPS):
        length = PROMPT + j + 1
        step = _run(cached, tokens[:, length - 1 : length], length - 1)[:, 0]
        full = _run(_model(spec, weights), tokens[:, :length], 0)[:, -1]
        np.testing.assert_allclose(step, full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SPECS))
def test_greedy_prefill_and_decode_give_the_reference_tokens(name):
    spec = SPECS[name]
    weights = _weights(spec)
    prompts = _tokens(spec, (2, PROMPT), seed=2)
    expected = ReferenceModel(spec, weights).generate_greedy(prompts, DECODE_STEPS)
    model = _model(spec, weights)
    with torch.no_grad():
        token = gptfast.prefill(model, torch.from_numpy(prompts), torch.arange(PROMPT))
        generated = [token]
        for j in range(DECODE_STEPS - 1):
            token, logits = gptfast.decode_one_token(model, token, torch.tensor([PROMPT + j]))
            assert logits.shape == (2, 1, spec.vocab_size)
            generated.append(token)
    np.testing.assert_array_equal(torch.cat(generated, 1).numpy(), expected)


def test_the_lm_head_shares_the_weights_memory():
    spec = SPECS["gptj"]
    weights = _weights(spec, "float32")
    model = _model(spec, weights)
    assert model.lm_head.weight.data_ptr() == weights.lm_head.weight.ctypes.data
    tied = _model(SPECS["gpt2"], _weights(SPECS["gpt2"], "float32"))
    assert tied.lm_head.weight.data_ptr() == tied.embed.data_ptr()


def test_what_the_peer_cannot_run_is_refused():
    gpt2 = SPECS["gpt2"]
    model = gptfast.StaticCacheDecoder(gpt2, gptfast.torch_weights(_weights(gpt2)))
    with pytest.raises(InvalidInputError, match="64 learned positions, fewer than 65"):
        model.setup_caches(1, 65)
    scaled = dataclasses.replace(SPECS["llama-gqa"], rope_scaling='{"type": "linear"}')
    with pytest.raises(InvalidInputError, match="rope_scaling"):
        gptfast.StaticCacheDecoder(scaled, gptfast.torch_weights(_weights(SPECS["llama-gqa"])))
    with pytest.raises(InvalidInputError, match="weights do not match"):
        gptfast.StaticCacheDecoder(SPECS["gptj"], gptfast.torch_weights(_weights(gpt2)))
    with pytest.raises(InvalidInputError, match="encoder"):
        gptfast.StaticCacheDecoder(load_builtin("bert-base"), None)
