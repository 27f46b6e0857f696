"""The NumPy reference decoder against Hugging Face transformers on tiny random models.

Each model gets fresh random weights with std 0.1 (so attention is far from uniform) and norm
weights and biases moved away from 1 and 0, so a mistake in any of them shows.
"""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.hf_checkpoint import from_state_dict
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.reference import ReferenceModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 100
PROMPT = 12
DECODE_STEPS = 8
TOLERANCE = {"float64": 1e-5, "float32": 1e-4}

# Tiny configs: GPT-2; GPT-J with partial rotary (6 of 16 dims); LLaMA with GQA and a rope base
# that is not 10000; LLaMA with one KV head, a head size that is not hidden / heads, biases and
# a tied LM head.
CONFIGS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64, **_common()
        )
    ),
    "gptj": lambda: transformers.GPTJForCausalLM(
        transformers.GPTJConfig(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            rotary_dim=6,
            n_positions=64,
            **_common(),
        )
    ),
    "llama-gqa": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=5000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=64,
            **_common(),
        )
    ),
    "llama-mqa-bias-tied": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=24,
            rope_theta=500000.0,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
            max_position_embeddings=64,
            **_common(),
        )
    ),
    # LLaMA 3.1's rope scaling, with an original context of 16 so that positions up to 20 see
    # all three bands (kept, blended, divided); and the older "linear" type.
    "llama3-rope": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=5000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            max_position_embeddings=64,
            **_common(),
        )
    ),
    # Qwen2: biases on q, k and v only, tied embeddings
    "qwen2-tied": lambda: transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            max_position_embeddings=64,
            **_common(),
        )
    ),
    # Phi-3: fused qkv_proj and gate_up_proj tensors; half of each head turned
    "phi3-partial-rotary": lambda: transformers.Phi3ForCausalLM(
        transformers.Phi3Config(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000.0,
                "partial_rotary_factor": 0.5,
            },
            max_position_embeddings=64,
            original_max_position_embeddings=64,
            **_common(),
        )
    ),
    "llama-linear-rope": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            rope_scaling={"rope_type": "linear", "factor": 2.5},
            max_position_embeddings=64,
            **_common(),
        )
    ),
}


def _common() -> dict:
    return {"initializer_range": 0.1, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


_MODELS: dict = {}


def _model(name: str, dtype: str):
    """A random HF model (cached per name and dtype) and the spec and weights ftbench reads."""
    if (name, dtype) not in _MODELS:
        torch.manual_seed(sum(map(ord, name)))
        model = CONFIGS[name]().to(getattr(torch, dtype)).eval()
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.ndim == 1:  # norm weights and biases
                    parameter.add_(0.1 * torch.randn_like(parameter))
        spec = spec_from_hf_config(model.config.to_dict(), name=name)
        weights = from_state_dict(model.state_dict(), spec)
        _MODELS[name, dtype] = model, spec, weights
    return _MODELS[name, dtype]


def _hf_logits(model, token_ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(token_ids)).logits.double().numpy()


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The worst position's max |actual - expected| / max |expected| over the vocabulary."""
    per_position = np.abs(actual - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    return float(per_position.max())


def _tokens(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, shape)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_and_decode_steps_match_hf(name, dtype):
    model, spec, weights = _model(name, dtype)
    tokens = _tokens((2, PROMPT + DECODE_STEPS))
    expected = _hf_logits(model, tokens)
    reference = ReferenceModel(spec, weights, dtype)
    prefill = reference.prefill(tokens[:, :PROMPT])
    assert prefill.shape == (2, PROMPT, VOCAB) and prefill.dtype == dtype
    assert _relative_error(prefill, expected[:, :PROMPT]) < TOLERANCE[dtype]
    # Teacher forcing: step j feeds token PROMPT + j and predicts what follows it.
    steps = [reference.decode(tokens[:, PROMPT + j]) for j in range(DECODE_STEPS - 1)]
    assert _relative_error(np.stack(steps, 1), expected[:, PROMPT:-1]) < TOLERANCE[dtype]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens_match_hf(name):
    model, spec, weights = _model(name, "float64")
    tokens = _tokens((2, PROMPT), seed=1)
    expected = tokens
    for _ in range(DECODE_STEPS):
        next_tokens = _hf_logits(model, expected)[:, -1].argmax(axis=-1)
        expected = np.concatenate([expected, next_tokens[:, None]], axis=1)
    generated = ReferenceModel(spec, weights).generate_greedy(tokens, DECODE_STEPS)
    np.testing.assert_array_equal(generated, expected[:, PROMPT:])


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa"])
def test_right_padded_batch_matches_each_sequence_alone(name):
    model, spec, weights = _model(name, "float64")
    lengths = np.array([PROMPT, 7])
    tokens = _tokens((2, PROMPT), seed=2)
    continuation = _tokens((2, 3), seed=3)
    reference = ReferenceModel(spec, weights)
    prefill = reference.prefill(tokens, lengths)
    steps = np.stack([reference.decode(continuation[:, j]) for j in range(3)], axis=1)
    assert np.isnan(prefill[1, 7:]).all() and not np.isnan(prefill[0]).any()
    for row, length in enumerate(lengths):
        sequence = np.concatenate([tokens[row, :length], continuation[row]])[None]
        expected = _hf_logits(model, sequence)[0]
        assert _relative_error(prefill[row, :length], expected[:length]) < 1e-5
        assert _relative_error(steps[row], expected[length:]) < 1e-5


def test_learned_positions_end_is_an_error():
    _, spec, weights = _model("gpt2", "float64")
    reference = ReferenceModel(spec, weights)
    reference.prefill(_tokens((1, spec.max_positions)))
    with pytest.raises(InvalidInputError, match="64 learned positions"):
        reference.decode(np.array([1]))


def test_bad_inputs_are_errors():
    _, spec, weights = _model("gpt2", "float64")
    reference = ReferenceModel(spec, weights)
    with pytest.raises(InvalidInputError, match="needs a prefill"):
        reference.decode(np.array([1]))
    with pytest.raises(InvalidInputError, match="token ids must be in 0..99"):
        reference.prefill(np.array([[1, VOCAB]]))
    with pytest.raises(InvalidInputError, match="lengths must be 2 values in 1..3"):
        reference.prefill(np.ones((2, 3), np.int64), lengths=[3, 4])
    reference.prefill(np.ones((2, 3), np.int64))
    with pytest.raises(InvalidInputError, match="one token per sequence"):
        reference.decode(np.array([1, 2, 3]))
    with pytest.raises(InvalidInputError, match="float32 or float64"):
        ReferenceModel(spec, weights, np.float16)


def test_weights_of_another_spec_are_refused():
    _, spec, _ = _model("gpt2", "float64")
    _, other_spec, _ = _model("gptj", "float64")
    with pytest.raises(InvalidInputError, match="weights do not match"):
        ReferenceModel(spec, random_weights(other_spec, np.float32))


def test_reference_refuses_what_it_does_not_implement():
    import dataclasses

    from ftbench.errors import InvalidInputError
    from ftbench.profiles.catalog import load_builtin
    from ftbench.runtime.random_weights import random_weights
    from ftbench.runtime.reference import ReferenceModel

    spec = dataclasses.replace(
        load_builtin("llama2-7b"), num_layers=1, hidden_size=64, num_heads=4, num_kv_heads=2,
        head_dim=16, rotary_dim=16, ffn_hidden_size=96, vocab_size=50,
    )  # fmt: skip
    weights = random_weights(spec, "fp32", seed=0)
    for scaling, message in [
        ('{"factor": 8.0, "rope_type": "llama3"}', r"rope_scaling \(llama3\) needs a positive"),
        ('{"factor": 2.0, "rope_type": "yarn"}', "is not implemented"),
        ('{"factor": 0, "type": "linear"}', "needs a positive factor, got 0"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            ReferenceModel(dataclasses.replace(spec, rope_scaling=scaling), weights)
    windowed = ReferenceModel(dataclasses.replace(spec, sliding_window=4), weights)
    windowed.prefill(np.zeros((1, 4), dtype=np.int64))
    with pytest.raises(InvalidInputError, match="sliding window of 4"):
        windowed.decode(np.zeros(1, dtype=np.int64))
