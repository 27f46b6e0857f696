"""The NumPy T5 reference against Hugging Face T5ForConditionalGeneration on tiny random models.

Fresh random weights (HF's T5 init scaled by initializer_factor, large enough that each source
steers its own output; norm weights moved away from 1), ragged right-padded sources
with HF given the attention mask, a decoder prefill and teacher-forced decode steps through the
KV cache, and beam search against HF `generate`.
"""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.beam import BeamSettings
from ftbench.runtime.encoder_checkpoint import encoder_from_state_dict
from ftbench.runtime.t5_reference import T5Reference, relative_position_buckets
from tiny_models import perturb_norms_and_biases

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
T5Attention = pytest.importorskip("transformers.models.t5.modeling_t5").T5Attention

VOCAB = 100
SOURCE = 12
SOURCE_LENGTHS = np.array([SOURCE, 5])
PREFILL = 4
STEPS = 6
# Max |ours - HF| / max |HF| per position (encoder output, prefill and decode logits). HF's T5
# computes its RMS-norm variance and its attention softmax in float32 even in a float64 model,
# so float64 sits on a float32 floor too. Measured: v1.0 1.1e-7 (float64) and 4.5e-7 (float32);
# v1.1, whose larger weights sharpen the attention, 3.7e-6 and 5.0e-6. One tolerance of 10x the
# worst.
TOLERANCE = {"float64": 5e-5, "float32": 5e-5}

CONFIGS = {
    # T5 v1.0: ReLU FFN, tied head with the d_model ** -0.5 rescale; few buckets and a short
    # max_distance, so that short sequences reach the log-spaced buckets and the last one.
    "t5-v1.0": {
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 10,
        "initializer_factor": 1.0,
    },  # fmt: skip
    # T5 v1.1 / Flan: gated-GELU FFN, untied head, more decoder than encoder layers, the
    # default 32 buckets up to 128.
    "t5-v1.1": {
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "num_decoder_layers": 3,
        "initializer_factor": 1.5,
    },  # fmt: skip
}

_MODELS: dict = {}


def t5(name: str, dtype: str):
    """A random HF T5 (cached) and the spec and weights ftbench reads from it."""
    if (name, dtype) not in _MODELS:
        torch.manual_seed(sum(map(ord, name)))
        config = transformers.T5Config(
            vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            decoder_start_token_id=0, **CONFIGS[name],
        )  # fmt: skip
        model = transformers.T5ForConditionalGeneration(config).to(getattr(torch, dtype))
        model = perturb_norms_and_biases(model)
        spec = spec_from_hf_config(model.config.to_dict(), name=name)
        _MODELS[name, dtype] = model, spec, encoder_from_state_dict(model.state_dict(), spec)
    return _MODELS[name, dtype]


def sources(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(2, VOCAB, (len(SOURCE_LENGTHS), SOURCE))


def source_mask() -> np.ndarray:
    return (np.arange(SOURCE) < SOURCE_LENGTHS[:, None]).astype(np.int64)


def relative_error(actual, expected):
    per_position = np.abs(actual - expected).max(axis=-1) / np.abs(expected).max(axis=-1)
    return float(per_position.max())


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 10), (6, 20), (64, 256)])
def test_buckets_are_hfs_at_every_distance(bidirectional, num_buckets, max_distance):
    relative = np.arange(-600, 601)
    expected = T5Attention._relative_position_bucket(
        torch.from_numpy(relative), bidirectional, num_buckets, max_distance
    ).numpy()
    ours = relative_position_buckets(relative, bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_and_decode_steps_match_hf(name, dtype):
    model, spec, weights = t5(name, dtype)
    source = sources()
    decoder = np.random.default_rng(1).integers(0, VOCAB, (2, PREFILL + STEPS))
    decoder[:, 0] = 0  # the decoder start token
    with torch.no_grad():
        expected = model(
            input_ids=torch.from_numpy(source),
            attention_mask=torch.from_numpy(source_mask()),
            decoder_input_ids=torch.from_numpy(decoder),
        )
    reference = T5Reference(spec, weights, dtype)
    encoded = reference.encode(source, SOURCE_LENGTHS)
    real = source_mask().astype(bool)
    hf_encoded = expected.encoder_last_hidden_state.double().numpy()
    assert np.isnan(encoded[~real]).all()
    assert relative_error(encoded[real], hf_encoded[real]) < TOLERANCE[dtype]
    hf_logits = expected.logits.double().numpy()
    prefill = reference.prefill(decoder[:, :PREFILL])
    assert prefill.shape == (2, PREFILL, VOCAB) and prefill.dtype == dtype
    assert relative_error(prefill, hf_logits[:, :PREFILL]) < TOLERANCE[dtype]
    steps = np.stack([reference.decode(decoder[:, PREFILL + j]) for j in range(STEPS)], axis=1)
    assert relative_error(steps, hf_logits[:, PREFILL:]) < TOLERANCE[dtype]


def test_padded_source_positions_never_reach_real_ones():
    _, spec, weights = t5("t5-v1.0", "float64")
    source = sources()
    other = np.where(source_mask().astype(bool), source, sources(seed=5))
    logits = []
    for tokens in (source, other):
        reference = T5Reference(spec, weights)
        reference.encode(tokens, SOURCE_LENGTHS)
        logits.append(reference.prefill(np.zeros((2, 3), np.int64)))
    np.testing.assert_array_equal(logits[0], logits[1])


# (width, length_penalty, early_stopping), as for the decoders (tests/test_runtime_beam.py,
# whose near-tie rule and tolerances these follow).
BEAM_CASES = [(1, 1.0, False), (2, 1.0, False), (4, 1.0, False), (4, 0.5, True),
              (4, 1.5, "never")]  # fmt: skip
NEW_TOKENS = 7
SCORE_TOLERANCE = 2e-6


def hf_beam(model, width, penalty, early, eos):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.from_numpy(sources()), attention_mask=torch.from_numpy(source_mask()),
            num_beams=width, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
            pad_token_id=VOCAB - 1, decoder_start_token_id=0, length_penalty=penalty,
            early_stopping=early, return_dict_in_generate=True, output_scores=True,
            use_cache=False,  # HF's cache has num_layers layers, too few for num_decoder_layers 3
        )  # fmt: skip
    scores = getattr(out, "sequences_scores", None)
    return out.sequences[:, 1:].numpy(), None if scores is None else scores.double().numpy()


@pytest.mark.parametrize(("width", "penalty", "early"), BEAM_CASES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_beam_search_matches_hf_generate(name, width, penalty, early):
    model, spec, weights = t5(name, "float64")
    # EOS: the third token HF's 4-beam search generates for the first source (none is EOS).
    eos = int(hf_beam(model, 4, 1.0, False, eos=VOCAB)[0][0, 2])
    expected, expected_scores = hf_beam(model, width, penalty, early, eos)
    settings = BeamSettings(width, NEW_TOKENS, eos, VOCAB - 1, penalty, early)
    result = T5Reference(spec, weights).generate_beam(sources(), settings, SOURCE_LENGTHS)
    for row in range(2):
        ends = np.flatnonzero(expected[row] == eos)
        theirs = expected[row, : ends[0] + 1] if len(ends) else expected[row]
        # These seeds give no near-ties: the tokens must agree (see test_runtime_beam.py).
        np.testing.assert_array_equal(result.tokens[row, : result.lengths[row]], theirs)
        if expected_scores is not None:
            error = abs(result.scores[row] - expected_scores[row])
            assert error <= SCORE_TOLERANCE * abs(expected_scores[row])


def test_bad_inputs_are_errors():
    _, spec, weights = t5("t5-v1.0", "float64")
    reference = T5Reference(spec, weights)
    with pytest.raises(InvalidInputError, match="needs an encode"):
        reference.decode(np.array([0]))
    reference.encode(sources(), SOURCE_LENGTHS)
    with pytest.raises(InvalidInputError, match="one row per source"):
        reference.decode(np.array([0, 0, 0]))
    with pytest.raises(InvalidInputError, match="token ids must be in 0..99"):
        reference.decode(np.array([0, VOCAB]))
    with pytest.raises(InvalidInputError, match="rows must be in 0..1"):
        reference.reorder(np.array([2]))


def test_beam_search_expands_sources_into_beams_and_reorders_them():
    _, spec, weights = t5("t5-v1.1", "float64")
    reference = T5Reference(spec, weights)
    gathers = []
    reorder = reference.reorder
    reference.reorder = lambda rows: (gathers.append(rows.copy()), reorder(rows))
    reference.generate_beam(sources(), BeamSettings(4, NEW_TOKENS, 1, VOCAB - 1), SOURCE_LENGTHS)
    np.testing.assert_array_equal(gathers[0], [0, 0, 0, 0, 1, 1, 1, 1])
    assert any(not np.array_equal(rows, np.arange(8)) for rows in gathers[1:])
    assert reference.source_lengths.tolist() == [SOURCE] * 4 + [5] * 4
