"""The decoder kernels against float64 NumPy references on fresh random inputs.

Outputs start as NaN, so an element a kernel forgets to write fails as surely as a wrong one.
Norms, activations and rotary use the math of ftbench.runtime.reference, the decoder's ground
truth. Sampling is checked exactly where it is deterministic (greedy, top-k = 1, finished rows,
stop tokens, same seed and step) and by a chi-square test of many draws against the
renormalised probabilities where it is random; the same draws must fail against slightly wrong
distributions, so the test can tell.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from host_types import host_dtype

from ftbench.kernels import decoder
from ftbench.runtime import reference
from ftbench.runtime.weights import Norm

pytestmark = pytest.mark.gpu

DTYPES = ["float16", "bfloat16"]
TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-6}


def rounded(values, dtype):
    """`values` rounded to `dtype`, as float64 (what the device array will hold exactly)."""
    return np.asarray(values).astype(host_dtype(dtype)).astype(np.float64)


def device(values, dtype):
    import cupy

    return cupy.asarray(np.asarray(values).astype(host_dtype(dtype)))


def nan_array(shape, dtype):
    return device(np.full(shape, np.nan), dtype)


def host(array):
    import cupy

    return cupy.asnumpy(array).astype(np.float64)


@pytest.fixture(scope="module", autouse=True)
def compiled():
    """Every kernel of both dtypes, in two NVRTC runs instead of one per instance."""
    for dtype in DTYPES:
        decoder.prepare(dtype)


def assert_close(got, want, tolerance, what):
    """Every element within `tolerance` of want, relative to |want| plus want's RMS (so values
    near zero are held to the scale of the whole array)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{what}: {bad.sum()} elements not finite (unwritten?)"
    scale = math.sqrt(float(np.mean(want**2))) + 1e-30
    error = np.abs(got - want) / (np.abs(want) + scale)
    worst = np.unravel_index(int(np.argmax(error)), error.shape)
    assert error[worst] <= tolerance, (
        f"{what}: relative error {error[worst]:.3g} at {worst}: got {got[worst]!r}, "
        f"want {want[worst]!r}"
    )


# embed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [4096, 136, 75])
@pytest.mark.parametrize("count", [1, 37])
@pytest.mark.parametrize("learned", [False, True])
def test_embed(dtype, hidden, count, learned):
    import cupy

    rng = np.random.default_rng()
    table = rounded(rng.standard_normal((1000, hidden)), dtype)
    pos_table = rounded(rng.standard_normal((64, hidden)), dtype)
    tokens = rng.integers(0, 1000, count).astype(np.int32)
    positions = rng.integers(0, 64, count).astype(np.int32)
    residual = cupy.full((count, hidden), np.nan, dtype=cupy.float32)
    decoder.embed(
        cupy.asarray(tokens), cupy.asarray(positions), device(table, dtype),
        device(pos_table, dtype) if learned else None, residual,
    )  # fmt: skip
    want = table[tokens] + (pos_table[positions] if learned else 0)
    assert_close(host(residual), want, TOLERANCE["float32"], "residual")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [4096, 75])
@pytest.mark.parametrize("learned", [False, True])
def test_embed_of_a_vocabulary_slice_gives_zeros_outside_it(dtype, hidden, learned):
    """A rank's rows [300, 551) of a 1003-token vocabulary: tokens below, inside, at both
    edges and above; the tokens outside contribute nothing but their positions."""
    import cupy

    rng = np.random.default_rng()
    start, rows = 300, 251
    table = rounded(rng.standard_normal((rows, hidden)), dtype)
    pos_table = rounded(rng.standard_normal((64, hidden)), dtype)
    edges = [0, start - 1, start, start + rows - 1, start + rows, 1002]
    tokens = np.concatenate([edges, rng.integers(0, 1003, 58)]).astype(np.int32)
    positions = rng.integers(0, 64, len(tokens)).astype(np.int32)
    residual = cupy.full((len(tokens), hidden), np.nan, dtype=cupy.float32)
    decoder.embed(
        cupy.asarray(tokens), cupy.asarray(positions), device(table, dtype),
        device(pos_table, dtype) if learned else None, residual, vocab_start=start,
    )  # fmt: skip
    held = (tokens >= start) & (tokens < start + rows)
    want = np.where(held[:, None], table[np.where(held, tokens - start, 0)], 0.0)
    want = want + (pos_table[positions] if learned else 0)
    got = host(residual)
    if not learned:
        assert not got[~held].any() and got[held].any()
    assert_close(got, want, TOLERANCE["float32"], "residual")


# residual_norm -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("hidden", [8192, 200, 136, 75, 1001])
@pytest.mark.parametrize("count", [1, 37])
@pytest.mark.parametrize("deltas", [0, 1, 2])
@pytest.mark.parametrize("select_rows", [False, True])
def test_residual_norm(dtype, kind, hidden, count, deltas, select_rows):
    import cupy

    rng = np.random.default_rng()
    # An offset far from zero: one-pass variance (E[x^2] - E[x]^2) would lose digits here.
    start = (rng.standard_normal((count, hidden)) * 2 + 30).astype(np.float32)
    delta_values = [rounded(rng.standard_normal((count, hidden)), dtype) for _ in range(deltas)]
    # With two deltas, one bias present and one absent (GPT-J without attention-out bias).
    bias_values = [rounded(rng.standard_normal(hidden), dtype), None][:deltas]
    weight = rounded(1 + 0.2 * rng.standard_normal(hidden), dtype)
    bias = rounded(0.2 * rng.standard_normal(hidden), dtype) if kind == "layernorm" else None
    rows = rng.choice(count, size=min(count, 3), replace=False).astype(np.int32)
    if not select_rows:
        rows = np.arange(count, dtype=np.int32)
    eps = 1e-5

    residual = cupy.asarray(start)
    out = nan_array((len(rows), hidden), dtype)
    decoder.residual_norm(
        residual, out, device(weight, dtype), None if bias is None else device(bias, dtype), eps,
        kind, deltas=[device(d, dtype) for d in delta_values],
        delta_biases=[None if b is None else device(b, dtype) for b in bias_values],
        rows=cupy.asarray(rows) if select_rows else None,
    )  # fmt: skip

    updated = start.astype(np.float64) + sum(delta_values, np.zeros(hidden))
    updated = updated + sum((b for b in bias_values if b is not None), np.zeros(hidden))
    got_residual = host(residual)
    assert_close(got_residual[rows], updated[rows], 1e-6, "updated residual rows")
    others = np.setdiff1d(np.arange(count), rows)
    assert np.array_equal(got_residual[others], start[others]), "rows not asked for changed"
    want = reference.norm(updated[rows], Norm(weight, bias), kind, eps)
    assert_close(host(out), want, TOLERANCE[dtype], "normalised output")


# qkv_rotary ----------------------------------------------------------------------------------

ROTARY_CASES = {  # q heads, kv heads, head_dim, rotary_dim, base, interleaved
    "gptj-64-of-256": (16, 16, 256, 64, 10000.0, True),
    "llama-gqa-8-2": (8, 2, 128, 128, 500000.0, False),
    "neox-24-of-96": (4, 4, 96, 24, 10000.0, False),
    "halves-64-of-256": (2, 2, 256, 64, 10000.0, False),
    "interleaved-full-64": (2, 1, 64, 64, 10000.0, True),
    "halves-20-of-80": (3, 3, 80, 20, 10000.0, False),
    "gpt2-none": (4, 4, 64, 0, 10000.0, False),
}
# LLaMA 3.1's rope scaling with an original context of 64: of the frequencies of a base of 10^4
# or more, some are kept (wavelength < 16), some blended, the rest divided by 8 (> 64)
LLAMA3_SCALING = (
    '{"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0, '
    '"original_max_position_embeddings": 64, "rope_type": "llama3"}'
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(ROTARY_CASES))
@pytest.mark.parametrize("count", [1, 37])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("scaling", ["", LLAMA3_SCALING], ids=["plain", "llama3"])
def test_qkv_rotary(dtype, case, count, with_bias, scaling):
    import cupy

    q_heads, kv_heads, dim, rotary_dim, base, interleaved = ROTARY_CASES[case]
    if scaling and not rotary_dim:
        pytest.skip("no rotary dims to scale")
    spec = SimpleNamespace(
        name=case, rotary_dim=rotary_dim, rope_theta=base, rotary_interleaved=interleaved,
        rope_scaling=scaling,
    )  # fmt: skip
    inv_freqs = None
    if scaling:
        inv_freqs = cupy.asarray(reference.rope_inverse_frequencies(spec).astype(np.float32))
    batch, max_length = 3, 512
    heads = q_heads + 2 * kv_heads
    rng = np.random.default_rng()
    qkv = rounded(rng.standard_normal((count, heads * dim)), dtype)
    bias = rounded(0.5 * rng.standard_normal(heads * dim), dtype) if with_bias else None
    slots = rng.choice(batch * max_length, size=count, replace=False)
    seq_ids, positions = (
        (slots // max_length).astype(np.int32),
        (slots % max_length).astype(np.int32),
    )

    q_out = nan_array((count, q_heads, dim), dtype)
    k_cache = nan_array((batch, kv_heads, max_length, dim), dtype)
    v_cache = nan_array((batch, kv_heads, max_length, dim), dtype)
    decoder.qkv_rotary(
        device(qkv, dtype), None if bias is None else device(bias, dtype), q_out, k_cache,
        v_cache, cupy.asarray(seq_ids), cupy.asarray(positions), num_q_heads=q_heads,
        num_kv_heads=kv_heads, head_dim=dim, rotary_dim=rotary_dim, rotary_base=base,
        interleaved=interleaved, inv_freqs=inv_freqs,
    )  # fmt: skip

    x = qkv + (0 if bias is None else bias)
    q, k, v = np.split(x, [q_heads * dim, (q_heads + kv_heads) * dim], axis=1)
    q, k, v = (a.reshape(count, -1, dim) for a in (q, k, v))
    if rotary_dim:
        q = reference.rotary(q[None], positions[None], spec)[0]
        k = reference.rotary(k[None], positions[None], spec)[0]
    tolerance = TOLERANCE[dtype]
    assert_close(host(q_out), q, tolerance, "q_out")
    got_k, got_v = host(k_cache), host(v_cache)
    assert_close(got_k[seq_ids, :, positions], k, tolerance, "k_cache")
    assert_close(got_v[seq_ids, :, positions], v, tolerance, "v_cache")
    written = count * kv_heads * dim
    assert np.isfinite(got_k).sum() == written and np.isfinite(got_v).sum() == written


# bias_act ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", decoder.ACTIVATIONS)
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("ffn", [11008, 136, 75])
@pytest.mark.parametrize("count", [1, 37])
@pytest.mark.parametrize("with_bias", [False, True])
def test_bias_act(dtype, activation, gated, ffn, count, with_bias):
    rng = np.random.default_rng()
    width = 2 * ffn if gated else ffn
    x = rounded(3 * rng.standard_normal((count, width)), dtype)
    bias = rounded(rng.standard_normal(width), dtype) if with_bias else None
    out = nan_array((count, ffn), dtype)
    decoder.bias_act(
        device(x, dtype), None if bias is None else device(bias, dtype), out, activation, gated
    )
    y = x + (0 if bias is None else bias)
    want = reference.activation(y[:, :ffn], activation)
    if gated:
        want = want * y[:, ffn:]
    assert_close(host(out), want, TOLERANCE[dtype], activation)


@pytest.mark.parametrize("ffn", [4096, 75])
def test_bias_act_in_place(ffn):
    rng = np.random.default_rng()
    x = rounded(rng.standard_normal((5, ffn)), "bfloat16")
    bias = rounded(rng.standard_normal(ffn), "bfloat16")
    inout = device(x, "bfloat16")
    decoder.bias_act(inout, device(bias, "bfloat16"), inout, "gelu_new", gated=False)
    want = reference.activation(x + bias, "gelu_new")
    assert_close(host(inout), want, TOLERANCE["bfloat16"], "in place")


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
    decoder.sample(device(logits, dtype), tokens, **settings)
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
    decoder.sample(
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
        decoder.sample(
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
        decoder.sample(logits, tokens, vocab_size=50257, method="sample", top_k=1000,
                       top_p=0.95, seed=seed, step=step)  # fmt: skip
        return cupy.asnumpy(tokens)

    first = draw(7, 3)
    assert np.array_equal(first, draw(7, 3))
    assert np.array_equal(first, draw(7, cupy.asarray(np.array([3], np.int64))))
    assert np.mean(first != draw(7, 4)) > 0.9
    assert np.mean(first != draw(8, 3)) > 0.9
    assert len(np.unique(first)) > 100  # rows differ by b


# CUDA graphs ---------------------------------------------------------------------------------


def test_every_kernel_replays_in_a_cuda_graph_with_a_device_step():
    """Capture one decoder step's kernels, replay it, and get what eager launches give; the
    step counter lives on the device and advances inside the graph."""
    import cupy

    rng = np.random.default_rng()
    dtype, count, hidden, heads, dim, ffn, vocab = "float16", 4, 256, 4, 64, 512, 1000
    decoder.prepare(dtype)
    table = device(rng.standard_normal((vocab, hidden)), dtype)
    tokens = cupy.asarray(rng.integers(0, vocab, count).astype(np.int32))
    positions = cupy.asarray(np.arange(count, dtype=np.int32))
    residual = cupy.zeros((count, hidden), cupy.float32)
    normed = cupy.zeros((count, hidden), cupy.float16)
    weight, bias = device(np.ones(hidden), dtype), device(np.zeros(hidden), dtype)
    qkv = device(rng.standard_normal((count, 3 * heads * dim)), dtype)
    q_out = cupy.zeros((count, heads, dim), cupy.float16)
    k_cache = cupy.zeros((count, heads, 16, dim), cupy.float16)
    v_cache = cupy.zeros_like(k_cache)
    up = device(rng.standard_normal((count, 2 * ffn)), dtype)
    act = cupy.zeros((count, ffn), cupy.float16)
    logits = device(rng.standard_normal((count, vocab)), dtype)
    sampled = cupy.zeros(count, cupy.int32)
    step = cupy.zeros(1, cupy.int64)

    def decode_step():
        decoder.embed(tokens, positions, table, None, residual)
        decoder.residual_norm(residual, normed, weight, bias, 1e-5, "layernorm")
        decoder.qkv_rotary(qkv, None, q_out, k_cache, v_cache, positions, positions,
                           num_q_heads=heads, num_kv_heads=heads, head_dim=dim, rotary_dim=dim,
                           rotary_base=1e4, interleaved=False)  # fmt: skip
        decoder.bias_act(up, None, act, "silu", gated=True)
        decoder.sample(logits, sampled, vocab_size=vocab, method="sample", seed=1, step=step)
        cupy.add(step, 1, out=step)

    decode_step()  # also compiles CuPy's own kernel for the step increment before capture
    eager = [a.copy() for a in (residual, normed, q_out, k_cache, act)]
    eager_tokens = []
    for s in range(3):
        decoder.sample(logits, sampled, vocab_size=vocab, method="sample", seed=1, step=s)
        eager_tokens.append(cupy.asnumpy(sampled))
    for a in (residual, normed, q_out, k_cache, act):
        a.fill(0)
    step.fill(0)

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            decode_step()
        finally:
            graph = stream.end_capture()
        replayed = []
        for _ in range(3):
            graph.launch(stream)
            replayed.append(cupy.asnumpy(sampled))
        stream.synchronize()
    for got, want in zip((residual, normed, q_out, k_cache, act), eager, strict=True):
        assert cupy.array_equal(got, want)
    assert [t.tolist() for t in replayed] == [t.tolist() for t in eager_tokens]
    assert int(step[0]) == 3
