"""A serving benchmark's request stream (`modelbench.requests`): length distributions, ShareGPT
files, arrival processes, reproducibility and the command-line forms."""

import json
from pathlib import Path

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.modelbench.requests import (
    Arrivals,
    Fixed,
    FixedRate,
    Gamma,
    InfiniteRate,
    Normal,
    Request,
    ShareGpt,
    Uniform,
    arrivals_for,
    estimate_tokens,
    parse_arrivals,
    parse_lengths,
    poisson,
    request_stream,
    sharegpt_pairs,
)


def fresh_seed() -> int:
    return int(np.random.default_rng().integers(2**32))


AT_ONCE = InfiniteRate()


def stream(count, prompt, output, arrivals=AT_ONCE, seed=None, **limits):
    """`request_stream` with a fresh seed unless given, and maximums of 4096 unless given."""
    seed = fresh_seed() if seed is None else seed
    limits = {"max_prompt_len": 4096, "max_output_len": 4096, **limits}
    return request_stream(count, prompt, output, arrivals, seed, **limits)


def write_sharegpt(tmp_path, entries):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(entries))
    return path


def conversation(*turns):
    return {"conversations": [{"from": who, "value": text} for who, text in turns]}


def test_fixed_lengths_are_all_the_same():
    requests = stream(5, Fixed(128), Fixed(64))
    assert {(r.prompt_len, r.output_len) for r in requests} == {(128, 64)}
    assert [r.id for r in requests] == [0, 1, 2, 3, 4]


def test_uniform_lengths_cover_both_ends_and_nothing_outside():
    requests = stream(2000, Uniform(3, 6), Fixed(1))
    assert {r.prompt_len for r in requests} == {3, 4, 5, 6}


def test_normal_lengths_are_rounded_up_and_clipped_to_one_and_the_maximum():
    seed = fresh_seed()
    requests = stream(5000, Normal(100, 80), Fixed(1), seed=seed, max_prompt_len=200)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0])
    expected = np.clip(np.ceil(rng.normal(100, 80, 5000)), 1, 200)
    assert [r.prompt_len for r in requests] == expected.astype(int).tolist()
    assert min(r.prompt_len for r in requests) == 1
    assert max(r.prompt_len for r in requests) == 200


def test_normal_lengths_have_the_mean_and_spread_asked_for():
    lengths = np.array([r.prompt_len for r in stream(20000, Normal(512, 64), Fixed(1))])
    assert abs(lengths.mean() - 512.5) < 3  # ceil adds half a token on average
    assert abs(lengths.std() - 64) < 3


def test_the_same_seed_gives_the_same_stream():
    seed = fresh_seed()
    first = stream(50, Normal(300, 100), Uniform(1, 99), poisson(3.0), seed=seed)
    assert stream(50, Normal(300, 100), Uniform(1, 99), poisson(3.0), seed=seed) == first
    assert stream(50, Normal(300, 100), Uniform(1, 99), poisson(3.0), seed=seed + 1) != first


def test_changing_the_arrivals_keeps_the_lengths():
    seed = fresh_seed()
    at_once = stream(50, Normal(300, 100), Uniform(1, 99), InfiniteRate(), seed=seed)
    bursty = stream(50, Normal(300, 100), Uniform(1, 99), Gamma(2.0, 0.3), seed=seed)
    lengths = [(r.prompt_len, r.output_len) for r in at_once]
    assert [(r.prompt_len, r.output_len) for r in bursty] == lengths


def test_lengths_above_the_maximum_are_refused():
    with pytest.raises(
        InvalidInputError, match="fixed lengths reach 300 tokens, above the maximum 256"
    ):
        stream(3, Fixed(300), Fixed(1), max_prompt_len=256)
    with pytest.raises(InvalidInputError, match="uniform lengths reach 300 tokens"):
        stream(3, Fixed(1), Uniform(1, 300), max_output_len=256)
    with pytest.raises(InvalidInputError, match="normal lengths reach 300"):
        stream(3, Normal(300, 1), Fixed(1), max_prompt_len=256)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Fixed(0), "1 <= low <= high, got 0 and 0"),
        (lambda: Uniform(9, 3), "1 <= low <= high, got 9 and 3"),
        (lambda: Normal(100, -1), "std >= 0"),
        (lambda: Normal(0.5, 1), "mean of at least 1"),
        (lambda: FixedRate(-2), "rate must be positive and finite"),
        (lambda: Gamma(0, 1), "rate must be positive and finite"),
        (lambda: Gamma(4, 0), "burstiness must be positive"),
    ],
)
def test_bad_distributions_are_refused_when_made(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_infinite_rate_sends_every_request_at_zero():
    assert {r.arrival_s for r in stream(10, Fixed(1), Fixed(1), InfiniteRate())} == {0.0}


def test_a_fixed_rate_spaces_requests_evenly():
    times = [r.arrival_s for r in stream(5, Fixed(1), Fixed(1), FixedRate(4.0))]
    assert times == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_poisson_is_gamma_with_burstiness_one():
    assert poisson(3.5) == Gamma(3.5, 1.0)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gamma_gaps_have_mean_one_over_rate_and_variance_shrinking_with_burstiness(burstiness):
    times = np.array(
        [r.arrival_s for r in stream(40001, Fixed(1), Fixed(1), Gamma(5.0, burstiness))]
    )
    gaps = np.diff(times)
    assert times[0] == 0.0 and (gaps >= 0).all()
    assert abs(gaps.mean() - 0.2) < 0.01
    # A gamma of shape k has squared coefficient of variation 1 / k.
    assert abs(gaps.var() / gaps.mean() ** 2 - 1 / burstiness) < 0.1 / burstiness


def test_sharegpt_pairs_are_first_human_then_gpt_turns_counted_by_the_tokenizer(tmp_path):
    path = write_sharegpt(tmp_path, [
        conversation(("human", "a b c"), ("gpt", "d e"), ("human", "ignored turn")),
        conversation(("gpt", "starts with gpt"), ("human", "x")),
        conversation(("human", "only one turn")),
        conversation(("human", "one two three four"), ("gpt", "five")),
    ])  # fmt: skip
    pairs = sharegpt_pairs(path, lambda text: len(text.split()), 100, 100)
    assert pairs.tolist() == [[3, 2], [4, 1]]


def test_without_a_tokenizer_tokens_are_estimated_as_characters_over_four(tmp_path):
    assert [estimate_tokens(text) for text in ("", "abc", "abcd", "abcde")] == [0, 1, 1, 2]
    path = write_sharegpt(tmp_path, [conversation(("human", "x" * 40), ("gpt", "y" * 9))])
    (request,) = stream(1, ShareGpt(path), ShareGpt(path))
    assert (request.prompt_len, request.output_len) == (10, 3)


def test_sharegpt_drops_pairs_above_the_maximums_or_with_an_empty_side(tmp_path):
    path = write_sharegpt(tmp_path, [
        conversation(("human", "x" * 400), ("gpt", "short")),
        conversation(("human", "short"), ("gpt", "y" * 400)),
        conversation(("human", ""), ("gpt", "empty prompt")),
        conversation(("human", "kept"), ("gpt", "kept too")),
    ])  # fmt: skip
    assert sharegpt_pairs(path, estimate_tokens, 64, 64).tolist() == [[1, 2]]


def test_a_stream_draws_every_sharegpt_pair_once_before_repeating_any(tmp_path):
    entries = [conversation(("human", "p" * 4 * n), ("gpt", "o" * 4 * n)) for n in range(1, 8)]
    requests = stream(21, ShareGpt(path := write_sharegpt(tmp_path, entries)), ShareGpt(path))
    for start in (0, 7, 14):
        assert sorted(r.prompt_len for r in requests[start : start + 7]) == list(range(1, 8))
    assert all(r.prompt_len == r.output_len for r in requests)


def test_a_distribution_replaces_sharegpt_outputs_and_their_limit(tmp_path):
    path = write_sharegpt(tmp_path, [conversation(("human", "p" * 40), ("gpt", "o" * 4000))])
    requests = stream(4, ShareGpt(path), Fixed(128), max_output_len=128)
    assert [(r.prompt_len, r.output_len) for r in requests] == [(10, 128)] * 4


def test_sharegpt_outputs_without_sharegpt_prompts_are_refused(tmp_path):
    path = write_sharegpt(tmp_path, [conversation(("human", "p"), ("gpt", "o"))])
    with pytest.raises(InvalidInputError, match="need ShareGPT prompts"):
        stream(1, Fixed(8), ShareGpt(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "must hold a non-empty JSON list"),
        ('{"conversations": []}', "must hold a non-empty JSON list"),
        ("[{", "is not valid JSON"),
        ('[{"id": 1}]', "entry 0 has no 'conversations' list"),
        ('[{"conversations": [{"from": "human"}]}]', "entry 0 has a turn without string"),
        ('[{"conversations": [{"from": "gpt", "value": "x"}]}]', "no human-then-gpt conversation"),
    ],
)
def test_malformed_sharegpt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=message):
        stream(1, ShareGpt(path), ShareGpt(path))


def test_a_missing_sharegpt_file_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot read ShareGPT file .*missing.json"):
        stream(1, ShareGpt(tmp_path / "missing.json"), ShareGpt(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("text", "lengths"),
    [
        ("fixed:128", Fixed(128)),
        ("128", Fixed(128)),
        ("uniform:100,900", Uniform(100, 900)),
        ("normal:512,256", Normal(512.0, 256.0)),
        ("sharegpt:/data/sg.json", ShareGpt(Path("/data/sg.json"))),
    ],
)
def test_length_specs_parse(text, lengths):
    assert parse_lengths(text) == lengths


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gauss:1,2", "expected fixed:N, uniform:LOW,HIGH"),
        ("fixed:12.5", "expected 1 integers after the colon"),
        ("uniform:100", "expected 2 integers after the colon"),
        ("normal:a,b", "expected 2 numbers after the colon"),
        ("sharegpt:", "expected fixed:N"),
        ("uniform:0,10", "1 <= low <= high"),
    ],
)
def test_bad_length_specs_are_refused(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_lengths(text)


@pytest.mark.parametrize(
    ("text", "arrivals"),
    [
        ("inf", InfiniteRate()),
        ("4.5", FixedRate(4.5)),
        ("poisson:4", Gamma(4.0, 1.0)),
        ("gamma:4,0.5", Gamma(4.0, 0.5)),
    ],
)
def test_arrival_specs_parse(text, arrivals):
    assert parse_arrivals(text) == arrivals


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast", "expected inf, RATE, poisson:RATE"),
        ("-2", "rate must be positive and finite"),
        ("0", "rate must be positive and finite"),
        ("poisson:-1", "rate must be positive and finite"),
        ("gamma:4", "expected 2 numbers after the colon"),
        ("gamma:4,-1", "burstiness must be positive"),
    ],
)
def test_bad_arrival_specs_are_refused(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_arrivals(text)


@pytest.mark.parametrize(
    "text", ["fixed:128", "uniform:100,900", "normal:512,256", "normal:512.5,0.25"]
)
def test_a_distribution_is_named_in_the_form_that_parses_back_to_it(text):
    assert parse_lengths(text).name == text
    assert parse_lengths(parse_lengths(text).name) == parse_lengths(text)


def test_a_sharegpt_file_is_named_by_its_file_name_alone():
    assert ShareGpt(Path("/data/sets/sg.json")).name == "sharegpt:sg.json"


@pytest.mark.parametrize("text", ["inf", "4.5", "poisson:4", "gamma:4,0.5", "gamma:1234567.5,0.25"])
def test_arrivals_are_named_in_the_form_that_parses_back_to_them(text):
    assert parse_arrivals(text).name == text


@pytest.mark.parametrize(
    ("rate", "burstiness", "arrivals"),
    [
        (float("inf"), 1.0, InfiniteRate()),
        (float("inf"), 0.5, InfiniteRate()),
        (4.0, 1.0, Gamma(4.0, 1.0)),
        (4.0, 0.5, Gamma(4.0, 0.5)),
        (4.0, float("inf"), FixedRate(4.0)),
    ],
)
def test_rate_and_burstiness_choose_the_arrival_process(rate, burstiness, arrivals: Arrivals):
    assert arrivals_for(rate, burstiness) == arrivals


@pytest.mark.parametrize(
    ("rate", "burstiness", "message"),
    [
        (0.0, 1.0, "rate must be positive"),
        (float("nan"), 1.0, "rate must be positive"),
        (4.0, 0.0, "burstiness must be positive"),
        (4.0, float("nan"), "burstiness must be positive"),
    ],
)
def test_bad_rates_and_burstiness_are_refused(rate, burstiness, message):
    with pytest.raises(InvalidInputError, match=message):
        arrivals_for(rate, burstiness)


def test_a_stream_of_no_requests_is_refused():
    with pytest.raises(InvalidInputError, match="at least 1 request, got 0"):
        stream(0, Fixed(1), Fixed(1))


def test_a_request_is_its_id_lengths_and_arrival():
    assert stream(1, Fixed(7), Fixed(3), seed=1) == [Request(0, 7, 3, 0.0)]
