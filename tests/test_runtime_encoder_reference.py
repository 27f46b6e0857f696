"""The NumPy BERT and RoBERTa reference against Hugging Face transformers on tiny random models.

Fresh random weights with std 0.1 and every norm weight and bias moved away from 1 and 0, so a
mistake in any of them shows; each model is saved as safetensors and read back the way a user's
checkpoint is. Batches are ragged (odd lengths): right-padded, with HF given the matching
attention mask. RoBERTa's batches hold its padding token inside a sequence too, where HF's
position ids skip it.
"""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.encoder_checkpoint import load_hf_encoder_weights
from ftbench.runtime.encoder_reference import (
    EncoderReference,
    position_ids,
    remove_padding,
    restore_padding,
)
from tiny_models import perturb_norms_and_biases

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 100
SEQ = 12
LENGTHS = np.array([SEQ, 7, 1])
ROBERTA_PAD = 1
# Max |ours - HF| / max |HF| per position (hidden states and pooler). float64: both sides compute
# in float64 and only the summation order differs (measured 1.4e-15); float32: the rounding of
# two float32 layers on both sides (measured 8.7e-7); each with a margin of about 10x.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}

# name: (HF model class, config class, config fields)
CONFIGS = {
    "bert": ("BertModel", "BertConfig", {}),
    # tanh-approximated GELU, 3 token types, another epsilon
    "bert-gelu-new": (
        "BertModel",
        "BertConfig",
        {"hidden_act": "gelu_new", "type_vocab_size": 3, "layer_norm_eps": 1e-5},
    ),
    # roberta-base's settings: positions from padding_idx + 1, one token type, epsilon 1e-5
    "roberta": (
        "RobertaModel",
        "RobertaConfig",
        {"pad_token_id": ROBERTA_PAD, "type_vocab_size": 1, "layer_norm_eps": 1e-5},
    ),
}


def encoder_config(config_class: str, **overrides):
    return getattr(transformers, config_class)(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=32,
        initializer_range=0.1,
        **overrides,
    )


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """name, dtype, pooler -> a random HF model (cached), and the spec and weights ftbench reads
    from the safetensors checkpoint it saves."""
    models = {}

    def build(name: str, dtype: str = "float64", pooler: bool = True):
        key = name, dtype, pooler
        if key not in models:
            model_class, config_class, overrides = CONFIGS[name]
            torch.manual_seed(sum(map(ord, name)))
            model = getattr(transformers, model_class)(
                encoder_config(config_class, **overrides), add_pooling_layer=pooler
            )
            model = perturb_norms_and_biases(model.to(getattr(torch, dtype)))
            directory = tmp_path_factory.mktemp(f"{name}-{dtype}")
            model.save_pretrained(directory)
            spec = spec_from_hf_config(directory / "config.json", name=name)
            spec = dataclasses.replace(spec, pooler=pooler)
            models[key] = model, spec, load_hf_encoder_weights(directory, spec, dtype)
        return models[key]

    return build


def inputs(spec, seed: int = 0):
    """Token ids and token types [3, SEQ]; a RoBERTa batch is padded with its padding token
    and holds it once inside its first sequence."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (len(LENGTHS), SEQ))
    types = rng.integers(0, spec.type_vocab_size, tokens.shape)
    if spec.position_offset:
        tokens[np.arange(SEQ) >= LENGTHS[:, None]] = spec.position_offset - 1
        tokens[0, 3] = spec.position_offset - 1
    return tokens, types


def hf_forward(model, tokens, types):
    """The HF model's output on a batch right-padded to LENGTHS."""
    mask = np.arange(SEQ) < LENGTHS[:, None]
    with torch.no_grad():
        return model(
            input_ids=torch.from_numpy(tokens),
            token_type_ids=torch.from_numpy(types),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
        )


def hf_outputs(model, tokens, types):
    out = hf_forward(model, tokens, types)
    pooled = None if out.pooler_output is None else out.pooler_output.double().numpy()
    return out.last_hidden_state.double().numpy(), pooled


def relative_error(actual, expected):
    per_position = np.abs(actual - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    return float(per_position.max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ragged_batch_hidden_states_and_pooler_match_hf(encoder, name, dtype):
    model, spec, weights = encoder(name, dtype)
    tokens, types = inputs(spec)
    expected, expected_pooled = hf_outputs(model, tokens, types)
    reference = EncoderReference(spec, weights, dtype)
    hidden = reference.encode(tokens, LENGTHS, types)
    assert hidden.shape == (3, SEQ, 64) and hidden.dtype == dtype
    real = np.arange(SEQ) < LENGTHS[:, None]
    assert np.isnan(hidden[~real]).all() and not np.isnan(hidden[real]).any()
    assert relative_error(hidden[real], expected[real]) < TOLERANCE[dtype]
    assert relative_error(reference.pool(hidden), expected_pooled) < TOLERANCE[dtype]


@pytest.mark.parametrize(
    ("name", "model_class"),
    [("bert", "BertForSequenceClassification"), ("roberta", "RobertaForSequenceClassification")],
)
def test_sequence_classification_logits_match_hf(tmp_path, name, model_class):
    _, config_class, overrides = CONFIGS[name]
    torch.manual_seed(sum(map(ord, model_class)))
    config = encoder_config(config_class, num_labels=3, **overrides)
    model = perturb_norms_and_biases(getattr(transformers, model_class)(config).double())
    model.save_pretrained(tmp_path)
    spec = spec_from_hf_config(tmp_path / "config.json")
    reference = EncoderReference(spec, load_hf_encoder_weights(tmp_path, spec, "fp64"))
    tokens, types = inputs(spec)
    logits = reference.classify(reference.encode(tokens, LENGTHS, types))
    expected = hf_forward(model, tokens, types).logits.numpy()
    assert logits.shape == (3, 3)
    assert relative_error(logits, expected) < TOLERANCE["float64"]


def test_roberta_positions_count_from_padding_idx_plus_one_and_skip_padding_tokens():
    pad = ROBERTA_PAD
    tokens = np.array([[5, 7, pad, 9, pad, pad], [pad, 4, 4, 4, 4, 4]])
    expected = np.array([[2, 3, 1, 4, 1, 1], [1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(position_ids(tokens, pad + 1), expected)
    hf = transformers.models.roberta.modeling_roberta.RobertaEmbeddings
    hf_ids = hf.create_position_ids_from_input_ids(torch.from_numpy(tokens), pad)
    np.testing.assert_array_equal(hf_ids.numpy(), expected)


def test_bert_positions_count_every_token_from_0():
    tokens = np.array([[0, 0, 5], [1, 2, 3]])
    np.testing.assert_array_equal(position_ids(tokens, 0), [[0, 1, 2], [0, 1, 2]])


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_padded_positions_never_reach_real_ones(encoder, name):
    _, spec, weights = encoder(name)
    tokens, types = inputs(spec)
    other_tokens = np.random.default_rng(1).integers(0, VOCAB, tokens.shape)
    other_types = np.random.default_rng(2).integers(0, spec.type_vocab_size, tokens.shape)
    padding = np.arange(SEQ) >= LENGTHS[:, None]
    tokens2 = np.where(padding, other_tokens, tokens)
    types2 = np.where(padding, other_types, types)
    assert (tokens2 != tokens).any()
    reference = EncoderReference(spec, weights)
    first = reference.encode(tokens, LENGTHS, types)
    np.testing.assert_array_equal(reference.encode(tokens2, LENGTHS, types2), first)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_each_sequence_of_a_batch_encodes_as_it_does_alone(encoder, name):
    _, spec, weights = encoder(name)
    tokens, types = inputs(spec)
    reference = EncoderReference(spec, weights)
    batch = reference.encode(tokens, LENGTHS, types)
    for row, length in enumerate(LENGTHS):
        alone = reference.encode(
            tokens[row : row + 1, :length], None, types[row : row + 1, :length]
        )
        np.testing.assert_allclose(batch[row, :length], alone[0], rtol=0, atol=1e-13)


def test_no_pooler_spec_loads_a_checkpoint_without_one(encoder):
    model, spec, weights = encoder("bert", pooler=False)
    assert weights.pooler is None and not spec.pooler
    tokens, types = inputs(spec)
    expected, _ = hf_outputs(model, tokens, types)
    reference = EncoderReference(spec, weights)
    hidden = reference.encode(tokens, LENGTHS, types)
    real = np.arange(SEQ) < LENGTHS[:, None]
    assert relative_error(hidden[real], expected[real]) < TOLERANCE["float64"]
    with pytest.raises(InvalidInputError, match="has no pooler"):
        reference.pool(hidden)
    with pytest.raises(InvalidInputError, match="has no classification head"):
        reference.classify(hidden)


def test_padding_removal_round_trips():
    padded = np.arange(3 * 4 * 2, dtype=np.float64).reshape(3, 4, 2)
    lengths = np.array([4, 1, 2])
    packed = remove_padding(padded, lengths)
    np.testing.assert_array_equal(packed, np.concatenate([padded[0], padded[1, :1], padded[2, :2]]))
    restored = restore_padding(packed, lengths, 4)
    mask = np.arange(4) < lengths[:, None]
    np.testing.assert_array_equal(restored[mask], padded[mask])
    assert np.isnan(restored[~mask]).all()


def test_bad_inputs_are_errors(encoder):
    _, spec, weights = encoder("bert")
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


def test_roberta_sequences_fit_the_positions_after_the_offset(encoder):
    _, spec, weights = encoder("roberta")
    reference = EncoderReference(spec, weights)
    assert reference.encode(np.full((1, 30), 5)).shape == (1, 30, 64)
    with pytest.raises(InvalidInputError, match="30 learned positions; 31 tokens do not fit"):
        reference.encode(np.full((1, 31), 5))
    with pytest.raises(InvalidInputError, match=r"token_type_ids must be \[1, 3\] values in 0..0"):
        reference.encode(np.full((1, 3), 5), token_type_ids=np.ones((1, 3), np.int64))
