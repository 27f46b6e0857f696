"""Beam search (`runtime.beam`) over the NumPy decoder reference against Hugging Face `generate`.

Tiny random GPT-2 and LLaMA models (std 0.1, norm weights and biases perturbed) run in float64
on both sides. The EOS token is chosen from HF's own beam output (the third token it generates
for the first prompt), so hypotheses end inside the budget and the finished/running
bookkeeping, the length penalty and each early_stopping mode are all exercised.

Near-tie rule: HF ranks candidates by float32 scores, the reference by float64 ones, so two
hypotheses whose scores differ by less than float32 resolves may be ranked either way (tiny
models can even tie exactly). Where a prompt's tokens differ from HF's, the difference is
accepted only if HF's hypothesis, scored by the reference (teacher-forced, sum of log-probs /
length ** length_penalty), is within NEAR_TIE (relative) of the reference's own best score.
Where tokens agree, the scores must agree to SCORE_TOLERANCE (relative). On these models and
seeds every case agrees token for token; the rule is there so a reseeded run cannot fail on a
tie.
"""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.beam import BeamSettings, beam_search, log_softmax
from ftbench.runtime.hf_checkpoint import from_state_dict
from ftbench.runtime.reference import ReferenceModel
from tiny_models import perturb_norms_and_biases

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 100
PROMPT = 6
NEW_TOKENS = 8
# HF's float32 scores against the reference's float64 ones: measured up to 1.1e-7 relative
# (float32's epsilon, accumulated over <= 8 steps); SCORE_TOLERANCE has a margin of ~20x.
# NEAR_TIE is wider because a float32 misranking can happen at any earlier step, where the
# pruned beams' scores are smaller.
SCORE_TOLERANCE = 2e-6
NEAR_TIE = 1e-5

COMMON = {"initializer_range": 0.1, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
CONFIGS = {
    "gpt2": lambda: transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, **COMMON)
    ),
    "llama-gqa": lambda: transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **COMMON,
        )
    ),  # fmt: skip
}
# (width, length_penalty, early_stopping). Width 1 is HF's greedy search, which beam search
# with one beam equals unless "never" lets a longer hypothesis win.
CASES = [
    (1, 1.0, False),
    (2, 1.0, False),
    (2, 2.0, True),
    (4, 1.0, False),
    (4, 1.5, "never"),
    (4, 0.5, True),
    (4, -1.0, "never"),
]

_MODELS: dict = {}


def model(name: str):
    if name not in _MODELS:
        torch.manual_seed(sum(map(ord, name)))
        hf = perturb_norms_and_biases(CONFIGS[name]().double())
        spec = spec_from_hf_config(hf.config.to_dict(), name=name)
        _MODELS[name] = hf, spec, from_state_dict(hf.state_dict(), spec)
    return _MODELS[name]


def prompts() -> np.ndarray:
    return np.random.default_rng(7).integers(1, VOCAB, (2, PROMPT))


def hf_generate(hf, tokens, width, penalty, early, eos):
    with torch.no_grad():
        out = hf.generate(
            torch.from_numpy(tokens), attention_mask=torch.ones(tokens.shape, dtype=torch.long),
            num_beams=width, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=eos,
            pad_token_id=VOCAB - 1, length_penalty=penalty, early_stopping=early,
            return_dict_in_generate=True, output_scores=True,
        )  # fmt: skip
    scores = getattr(out, "sequences_scores", None)
    return out.sequences[:, PROMPT:].numpy(), None if scores is None else scores.double().numpy()


def eos_token(hf) -> int:
    """A token HF's 4-beam search generates third for the first prompt (none is EOS here)."""
    tokens, _ = hf_generate(hf, prompts(), 4, 1.0, False, eos=VOCAB)
    return int(tokens[0, 2])


def rescored(spec, weights, prompt, generated, penalty) -> float:
    """The reference's score of one hypothesis: sum of log-probs / length ** penalty."""
    sequence = np.concatenate([prompt, generated])[None]
    log_probs = log_softmax(ReferenceModel(spec, weights).prefill(sequence)[0])
    picked = log_probs[np.arange(PROMPT - 1, len(sequence[0]) - 1), generated]
    return float(picked.sum() / len(generated) ** penalty)


def hf_hypothesis(row: np.ndarray, eos: int) -> np.ndarray:
    """One HF output row up to its EOS (or all of it)."""
    ends = np.flatnonzero(row == eos)
    return row[: ends[0] + 1] if len(ends) else row


@pytest.mark.parametrize(("width", "penalty", "early"), CASES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_beam_search_matches_hf_generate(name, width, penalty, early):
    hf, spec, weights = model(name)
    eos = eos_token(hf)
    tokens = prompts()
    expected, expected_scores = hf_generate(hf, tokens, width, penalty, early, eos)
    settings = BeamSettings(width, NEW_TOKENS, eos, VOCAB - 1, penalty, early)
    result = ReferenceModel(spec, weights).generate_beam(tokens, settings)
    for row in range(len(tokens)):
        ours = result.tokens[row, : result.lengths[row]]
        theirs = hf_hypothesis(expected[row], eos)
        assert (result.tokens[row, result.lengths[row] :] == VOCAB - 1).all()
        if np.array_equal(ours, theirs):
            if expected_scores is not None:
                error = abs(result.scores[row] - expected_scores[row])
                assert error <= SCORE_TOLERANCE * abs(expected_scores[row])
            continue
        hf_score = rescored(spec, weights, tokens[row], theirs, penalty)
        assert abs(hf_score - result.scores[row]) <= NEAR_TIE * abs(hf_score), (ours, theirs)


def recorded_search(name: str, width: int, penalty: float, early):
    """The reference's beam search with every `reorder` call's rows recorded."""
    hf, spec, weights = model(name)
    reference = ReferenceModel(spec, weights)
    gathers = []

    def reorder(rows):
        gathers.append(rows.copy())
        reference.reorder(rows)

    def step(next_tokens):
        return log_softmax(reference.decode(next_tokens))

    first = log_softmax(reference.prefill(prompts())[:, -1])
    settings = BeamSettings(width, NEW_TOKENS, eos_token(hf), VOCAB - 1, penalty, early)
    return beam_search(settings, first, step, reorder), gathers


def test_the_searches_compared_reorder_beams():
    """Beams are reordered (a row taken by another beam's child), not only kept in place; the
    first gather expands each prompt into its beams."""
    _, gathers = recorded_search("gpt2", 4, 1.0, False)
    np.testing.assert_array_equal(gathers[0], [0, 0, 0, 0, 1, 1, 1, 1])
    assert any(not np.array_equal(rows, np.arange(8)) for rows in gathers[1:])


def test_the_searches_compared_end_on_eos_before_the_budget():
    result, _ = recorded_search("gpt2", 4, 0.5, True)
    assert (result.lengths < NEW_TOKENS).all()
    eos = eos_token(model("gpt2")[0])
    assert (result.tokens[np.arange(2), result.lengths - 1] == eos).all()


def test_an_exact_tie_goes_to_the_lower_beam_and_token():
    """Two tokens with the same log-prob: the lower token id ranks first (a stable order)."""
    first = log_softmax(np.array([[0.0, 3.0, 3.0, 1.0, -1.0, -2.0]]))
    settings = BeamSettings(1, 1, eos_token_id=5)
    result = beam_search(settings, first, step=None, reorder=None)
    np.testing.assert_array_equal(result.tokens, [[1]])


def test_a_search_with_one_token_returns_the_best_token_per_prompt():
    first = log_softmax(np.random.default_rng(0).normal(size=(3, 10)))
    result = beam_search(BeamSettings(2, 1, eos_token_id=9), first, None, None)
    np.testing.assert_array_equal(result.tokens[:, 0], first.argmax(axis=1))
    np.testing.assert_allclose(result.scores, first.max(axis=1))


def test_bad_settings_are_errors():
    with pytest.raises(InvalidInputError, match="num_beams must be an integer 1..8"):
        BeamSettings(9, 4, 0)
    with pytest.raises(InvalidInputError, match="max_new_tokens must be an integer >= 1"):
        BeamSettings(2, 0, 0)
    with pytest.raises(InvalidInputError, match="early_stopping must be True, False or 'never'"):
        BeamSettings(2, 4, 0, early_stopping="always")
    with pytest.raises(InvalidInputError, match="needs a vocabulary of >= 8"):
        beam_search(BeamSettings(4, 2, 0), np.zeros((1, 5)), None, None)


def test_a_ragged_batch_searches_each_prompt_as_it_would_alone():
    _, spec, weights = model("llama-gqa")
    tokens, lengths = prompts(), np.array([PROMPT, 4])
    settings = BeamSettings(4, NEW_TOKENS, eos_token_id=3, pad_token_id=VOCAB - 1)
    batch = ReferenceModel(spec, weights).generate_beam(tokens, settings, lengths)
    for row, length in enumerate(lengths):
        alone = ReferenceModel(spec, weights).generate_beam(
            tokens[row : row + 1, :length], settings
        )
        np.testing.assert_array_equal(batch.tokens[row, : batch.lengths[row]], alone.tokens[0])
        np.testing.assert_allclose(batch.scores[row], alone.scores[0], rtol=1e-12)


def test_reorder_refuses_rows_it_does_not_have():
    _, spec, weights = model("gpt2")
    reference = ReferenceModel(spec, weights)
    with pytest.raises(InvalidInputError, match="needs a prefill"):
        reference.reorder(np.array([0]))
    reference.prefill(prompts())
    with pytest.raises(InvalidInputError, match="rows must be in 0..1, got 0 to 2"):
        reference.reorder(np.array([0, 2]))
    with pytest.raises(InvalidInputError, match="1-D integer array"):
        reference.reorder(np.array([[0]]))
