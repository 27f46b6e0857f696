"""The NumPy BERT reference against Hugging Face transformers on tiny random models.

Fresh random weights with std 0.1 and every norm weight and bias moved away from 1 and 0, so a
mistake in any of them shows. Batches are ragged: right-padded, with HF given the matching
attention mask.
"""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.encoder_checkpoint import encoder_from_state_dict
from ftbench.runtime.encoder_reference import EncoderReference, remove_padding, restore_padding
from tiny_models import perturb_norms_and_biases

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 100
SEQ = 12
LENGTHS = np.array([SEQ, 7, 1])
# Max |ours - HF| / max |HF| per position (hidden states and pooler). float64: both sides compute
# in float64 and only the summation order differs (measured 1.4e-15); float32: the rounding of
# two float32 layers on both sides (measured 8.7e-7); each with a margin of about 10x.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}

CONFIGS = {
    "bert": {},
    # tanh-approximated GELU, 3 token types, another epsilon
    "bert-gelu-new": {"hidden_act": "gelu_new", "type_vocab_size": 3, "layer_norm_eps": 1e-5},
}


def bert_config(**overrides):
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=32,
        initializer_range=0.1,
        **overrides,
    )


_MODELS: dict = {}


def bert(name: str, dtype: str, pooler: bool = True):
    """A random HF BertModel (cached) and the spec and weights ftbench reads from it."""
    key = name, dtype, pooler
    if key not in _MODELS:
        torch.manual_seed(sum(map(ord, name)))
        model = transformers.BertModel(bert_config(**CONFIGS[name]), add_pooling_layer=pooler)
        model = perturb_norms_and_biases(model.to(getattr(torch, dtype)))
        spec = spec_from_hf_config(model.config.to_dict(), name=name)
        spec = dataclasses.replace(spec, pooler=pooler)
        _MODELS[key] = model, spec, encoder_from_state_dict(model.state_dict(), spec)
    return _MODELS[key]


def inputs(seed: int = 0, type_vocab: int = 2):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (len(LENGTHS), SEQ))
    types = rng.integers(0, type_vocab, tokens.shape)
    return tokens, types


def hf_outputs(model, tokens, types):
    mask = np.arange(SEQ) < LENGTHS[:, None]
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens),
            token_type_ids=torch.from_numpy(types),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )
    pooled = None if out.pooler_output is None else out.pooler_output.double().numpy()
    return out.last_hidden_state.double().numpy(), pooled


def relative_error(actual, expected):
    per_position = np.abs(actual - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    return float(per_position.max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ragged_batch_hidden_states_and_pooler_match_hf(name, dtype):
    model, spec, weights = bert(name, dtype)
    tokens, types = inputs(type_vocab=spec.type_vocab_size)
    expected, expected_pooled = hf_outputs(model, tokens, types)
    reference = EncoderReference(spec, weights, dtype)
    hidden = reference.encode(tokens, LENGTHS, types)
    assert hidden.shape == (3, SEQ, 64) and hidden.dtype == dtype
    real = np.arange(SEQ) < LENGTHS[:, None]
    assert np.isnan(hidden[~real]).all() and not np.isnan(hidden[real]).any()
    assert relative_error(hidden[real], expected[real]) < TOLERANCE[dtype]
    assert relative_error(reference.pool(hidden), expected_pooled) < TOLERANCE[dtype]


def test_padded_positions_never_reach_real_ones():
    _, spec, weights = bert("bert", "float64")
    tokens, types = inputs()
    other_tokens, other_types = inputs(seed=1)
    padding = np.arange(SEQ) >= LENGTHS[:, None]
    tokens2 = np.where(padding, other_tokens, tokens)
    types2 = np.where(padding, other_types, types)
    reference = EncoderReference(spec, weights)
    first = reference.encode(tokens, LENGTHS, types)
    np.testing.assert_array_equal(reference.encode(tokens2, LENGTHS, types2), first)


def test_each_sequence_of_a_batch_encodes_as_it_does_alone():
    _, spec, weights = bert("bert", "float64")
    tokens, types = inputs()
    reference = EncoderReference(spec, weights)
    batch = reference.encode(tokens, LENGTHS, types)
    for row, length in enumerate(LENGTHS):
        alone = reference.encode(
            tokens[row : row + 1, :length], None, types[row : row + 1, :length]
        )
        np.testing.assert_allclose(batch[row, :length], alone[0], rtol=0, atol=1e-13)


def test_no_pooler_spec_loads_a_checkpoint_without_one():
    model, spec, weights = bert("bert", "float64", pooler=False)
    assert weights.pooler is None and not spec.pooler
    tokens, types = inputs()
    expected, _ = hf_outputs(model, tokens, types)
    reference = EncoderReference(spec, weights)
    hidden = reference.encode(tokens, LENGTHS, types)
    real = np.arange(SEQ) < LENGTHS[:, None]
    assert relative_error(hidden[real], expected[real]) < TOLERANCE["float64"]
    with pytest.raises(InvalidInputError, match="has no pooler"):
        reference.pool(hidden)


def test_padding_removal_round_trips():
    padded = np.arange(3 * 4 * 2, dtype=np.float64).reshape(3, 4, 2)
    lengths = np.array([4, 1, 2])
    packed = remove_padding(padded, lengths)
    np.testing.assert_array_equal(packed, np.concatenate([padded[0], padded[1, :1], padded[2, :2]]))
    restored = restore_padding(packed, lengths, 4)
    mask = np.arange(4) < lengths[:, None]
    np.testing.assert_array_equal(restored[mask], padded[mask])
    assert np.isnan(restored[~mask]).all()


def test_bad_inputs_are_errors():
    _, spec, weights = bert("bert", "float64")
    reference = EncoderReference(spec, weights)
    with pytest.raises(InvalidInputError, match="token ids must be in 0..99"):
        reference.encode(np.array([[1, VOCAB]]))
    with pytest.raises(InvalidInputError, match="lengths must be 2 values in 1..3"):
        reference.encode(np.ones((2, 3), np.int64), lengths=[3, 0])
    with pytest.raises(InvalidInputError, match="token_type_ids must be"):
        reference.encode(np.ones((1, 3), np.int64), token_type_ids=np.full((1, 3), 2))
    with pytest.raises(InvalidInputError, match="32 learned positions"):
        reference.encode(np.ones((1, 33), np.int64))
    with pytest.raises(InvalidInputError, match="float32 or float64"):
        EncoderReference(spec, weights, np.float16)
