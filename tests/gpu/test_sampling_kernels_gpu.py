"""Token selection on the GPU against NumPy on fresh random logits.

Sampling is checked exactly where it is deterministic (greedy, top-k = 1, finished rows, stop
tokens, same seed and step) and by a chi-square test of many draws against the renormalised
probabilities where it is random; the same draws must fail against slightly wrong
distributions, so the test can tell.
"""

import math

import numpy as np
import pytest
from host_types import device, rounded

from ftbench.kernels import sampling

pytestmark = pytest.mark.gpu

DTYPES = ["float16", "bfloat16"]


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Every kernel for both model dtypes, in two NVRTC runs instead of one per instance."""
    for dtype in DTYPES:
        sampling.prepare(dtype)


# sample: greedy and exact cases --------------------------------------------------------------

LOGIT_DTYPES = ["float16", "bfloat16", "float32"]


def padded_logits(rng, batch, vocab, padded, dtype, scale=3.0):
    """Random logits [batch, padded]; padding columns hold +inf or the dtype's largest value."""
    logits = scale * rng.standard_normal((batch, padded))
    biggest = float(np.finfo(np.float16).max) if dtype == "float16" else 1e30
    logits[:, vocab:] = np.where(np.arange(batch)[:, None] % 2, biggest, np.inf)
    return rounded(logits, dtype)


def run_sample(logits, dtype, **settings):
    import cupy

    tokens = cupy.full(len(logits), -7, dtype=cupy.int32)
    sampling.sample(device(logits, dtype), tokens, **settings)
    return cupy.asnumpy(tokens)


@pytest.mark.parametrize("dtype", LOGIT_DTYPES)
@pytest.mark.parametrize(
    ("batch", "vocab", "padded"), [(4, 50257, 50304), (3, 50257, 50257), (2, 128256, 128256)]
)
def test_greedy_is_the_exact_argmax(dtype, batch, vocab, padded):
    rng = np.random.default_rng()
    logits = padded_logits(rng, batch, vocab, padded, dtype)
    top = logits[0, :vocab].max()
    logits[0, [vocab - 1, 11, 4000]] = top + 8  # a tie: the lowest index wins
    logits[-1, rng.choice(vocab, 50)] = np.nan  # never chosen
    logits[-1, np.nanargmax(logits[-1, :vocab])] = np.nan
    got = run_sample(logits, dtype, vocab_size=vocab, method="greedy")
    want = np.nanargmax(logits[:, :vocab], axis=1)
    assert want[0] == 11
    assert got.tolist() == want.tolist()


def unique_maximum(rng, batch, vocab, padded, dtype):
    logits = padded_logits(rng, batch, vocab, padded, dtype)
    winners = rng.integers(0, vocab, batch)
    logits[np.arange(batch), winners] = logits[:, :vocab].max(axis=1) + 2
    return logits, winners


@pytest.mark.parametrize("dtype", LOGIT_DTYPES)
@pytest.mark.parametrize(("vocab", "padded"), [(50257, 50304), (1001, 1001)])
def test_top_k_one_and_tiny_top_p_equal_greedy(dtype, vocab, padded):
    rng = np.random.default_rng()
    logits, winners = unique_maximum(rng, 64, vocab, padded, dtype)
    greedy = run_sample(logits, dtype, vocab_size=vocab, method="greedy")
    top_k = run_sample(logits, dtype, vocab_size=vocab, method="sample", top_k=1, seed=5)
    top_p = run_sample(logits, dtype, vocab_size=vocab, method="sample", top_p=1e-6, step=3)
    assert greedy.tolist() == winners.tolist()
    assert top_k.tolist() == winners.tolist()
    assert top_p.tolist() == winners.tolist()


@pytest.mark.parametrize("method", ["greedy", "sample"])
@pytest.mark.parametrize("finished_dtype", ["uint8", "bool"])
def test_finished_rows_and_stop_tokens(method, finished_dtype):
    import cupy

    rng = np.random.default_rng()
    batch, vocab = 8, 1000
    logits = rounded(rng.standard_normal((batch, vocab)), "float16")
    logits[np.arange(batch), 3 * np.arange(batch)] = 20.0  # row b picks token 3b
    finished = cupy.asarray(np.isin(np.arange(batch), [1, 5]).astype(finished_dtype))
    tokens = cupy.full(batch, -7, dtype=cupy.int32)
    stop = cupy.asarray(np.array([6, 12, 3], np.int32))  # rows 2 and 4; row 1 is already done
    sampling.sample(
        device(logits, "float16"), tokens, vocab_size=vocab, method=method, top_k=1,
        finished=finished, stop_tokens=stop, pad_token=-1,
    )  # fmt: skip
    want = [-1 if b in (1, 5) else 3 * b for b in range(batch)]
    assert cupy.asnumpy(tokens).tolist() == want
    assert cupy.asnumpy(finished).astype(int).tolist() == [0, 1, 1, 0, 1, 1, 0, 0]


# sample: the distribution --------------------------------------------------------------------


def kept_probabilities(logits, temperature, top_k, top_p):
    """HF's order (temperature, top-k, top-p) in float64 with the kernels' tie rule: ties at the
    k-th largest logit are all kept; top-p keeps token t if the probability of the tokens with
    larger logits is below top_p."""
    keep = np.ones(len(logits), bool)
    if 0 < top_k < len(logits):
        keep = logits >= np.sort(logits)[-top_k]
    weights = np.where(keep, np.exp((logits - logits.max()) / temperature), 0.0)
    probabilities = weights / weights.sum()
    if top_p < 1:
        # Probability of the tokens with larger logits: an exclusive running sum in descending
        # order, taken at the first of each run of equal logits.
        order = np.argsort(-logits, kind="stable")
        descending = -logits[order]
        running = np.concatenate([[0.0], np.cumsum(probabilities[order])[:-1]])
        above = np.empty(len(logits))
        above[order] = running[np.searchsorted(descending, descending, side="left")]
        margin = np.abs(above[keep] - top_p).min()
        keep &= above < top_p
        probabilities = np.where(keep, probabilities, 0.0)
        probabilities /= probabilities.sum()
    else:
        margin = 1.0
    return probabilities, margin


def chi_square(counts, probabilities):
    """Pearson's statistic and degrees of freedom; tokens expected fewer than 5 times are pooled
    into one bin, and so are tokens drawn that have probability 0 (which makes it infinite)."""
    expected = probabilities * counts.sum()
    big = expected >= 5
    observed_bins = np.append(counts[big], counts[~big].sum())
    expected_bins = np.append(expected[big], expected[~big].sum())
    if expected_bins[-1] == 0:
        if observed_bins[-1]:
            return math.inf, len(observed_bins) - 1
        observed_bins, expected_bins = observed_bins[:-1], expected_bins[:-1]
    statistic = float(((observed_bins - expected_bins) ** 2 / expected_bins).sum())
    return statistic, len(observed_bins) - 1


def chi_square_bound(df, z=5.0):
    """Wilson-Hilferty upper quantile of chi-square(df) at a normal z (z = 5: p ~ 3e-7)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


SAMPLING_CASES = [  # logits dtype, vocab, padded vocab, temperature, top_k, top_p
    ("float16", 1000, 1024, 1.0, 0, 1.0),
    ("bfloat16", 1000, 1000, 0.7, 20, 1.0),
    ("float32", 999, 999, 1.3, 0, 0.8),
    ("float16", 1000, 1024, 1.0, 50, 0.9),
    ("bfloat16", 50257, 50304, 2.0, 8, 0.6),
    ("float32", 1000, 1024, 0.5, 40, 0.95),
    ("float32", 128256, 128256, 1.0, 200, 0.9),  # the draw's walk takes two rounds of 32 chunks
]


@pytest.mark.parametrize(("dtype", "vocab", "padded", "temperature", "top_k", "top_p"),
                         SAMPLING_CASES)  # fmt: skip
def test_sampled_frequencies_match_the_renormalised_probabilities(
    dtype, vocab, padded, temperature, top_k, top_p
):
    import cupy

    rng = np.random.default_rng()
    for _ in range(20):  # logits whose top-p cut is clear of rounding
        row = padded_logits(rng, 1, vocab, padded, dtype, scale=2.0)[0]
        probabilities, margin = kept_probabilities(row[:vocab], temperature, top_k, top_p)
        if margin > 1e-4:
            break
    rows, steps = 4096, 4
    logits = cupy.tile(device(row, dtype), (rows, 1))
    tokens = cupy.empty(rows, dtype=cupy.int32)
    seed = int(rng.integers(0, 2**63))
    drawn = []
    for step in range(steps):
        sampling.sample(
            logits, tokens, vocab_size=vocab, method="sample", temperature=temperature,
            top_k=top_k, top_p=top_p, seed=seed, step=step,
        )  # fmt: skip
        drawn.append(cupy.asnumpy(tokens))
    drawn = np.concatenate(drawn)
    assert drawn.min() >= 0 and drawn.max() < vocab
    outside = np.setdiff1d(drawn, np.flatnonzero(probabilities))
    assert outside.size == 0, f"drew tokens outside the kept set: {outside[:10]}"
    counts = np.bincount(drawn, minlength=vocab).astype(np.float64)
    statistic, df = chi_square(counts, probabilities)
    bound = chi_square_bound(df)
    assert statistic < bound, f"chi-square {statistic:.1f} over {df} df, bound {bound:.1f}"

    # The same draws must be told apart from near misses: no temperature, no top-k, no top-p.
    near_misses = {
        "temperature 1": (1.0, top_k, top_p),
        "no top-k": (temperature, 0, top_p),
        "no top-p": (temperature, top_k, 1.0),
    }
    for label, settings in near_misses.items():
        wrong, _ = kept_probabilities(row[:vocab], *settings)
        if 0.5 * np.abs(wrong - probabilities).sum() < 0.03:
            continue  # too close to the truth to matter at this sample size
        wrong_statistic, wrong_df = chi_square(counts, wrong)
        assert wrong_statistic > chi_square_bound(wrong_df), f"cannot tell {label} apart"


def test_draws_are_deterministic_per_seed_and_step_and_a_device_step_matches():
    import cupy

    rng = np.random.default_rng()
    row = padded_logits(rng, 1, 50257, 50304, "bfloat16", scale=1.0)[0]
    logits = cupy.tile(device(row, "bfloat16"), (256, 1))

    def draw(seed, step):
        tokens = cupy.empty(256, dtype=cupy.int32)
        sampling.sample(logits, tokens, vocab_size=50257, method="sample", top_k=1000,
                       top_p=0.95, seed=seed, step=step)  # fmt: skip
        return cupy.asnumpy(tokens)

    first = draw(7, 3)
    assert np.array_equal(first, draw(7, 3))
    assert np.array_equal(first, draw(7, cupy.asarray(np.array([3], np.int64))))
    assert np.mean(first != draw(7, 4)) > 0.9
    assert np.mean(first != draw(8, 3)) > 0.9
    assert len(np.unique(first)) > 100  # rows differ by b
