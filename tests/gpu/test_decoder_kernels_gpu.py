"""The decoder's element-wise kernels against float64 NumPy references on fresh random inputs.

Outputs start as NaN, so an element a kernel forgets to write fails as surely as a wrong one.
Norms, activations and rotary use the math of ftbench.runtime.reference, the decoder's ground
truth. A decode step's kernels, token selection included, must replay in a CUDA graph.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from host_types import device, rounded

from ftbench.kernels import decoder, sampling
from ftbench.runtime import reference
from ftbench.runtime.weights import Norm

pytestmark = pytest.mark.gpu

DTYPES = ["float16", "bfloat16"]
TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2, "float32": 1e-6}


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


# CUDA graphs ---------------------------------------------------------------------------------


def test_every_kernel_replays_in_a_cuda_graph_with_a_device_step():
    """Capture one decoder step's kernels, replay it, and get what eager launches give; the
    step counter lives on the device and advances inside the graph."""
    import cupy

    rng = np.random.default_rng()
    dtype, count, hidden, heads, dim, ffn, vocab = "float16", 4, 256, 4, 64, 512, 1000
    decoder.prepare(dtype)
    sampling.prepare(dtype)
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
        sampling.sample(logits, sampled, vocab_size=vocab, method="sample", seed=1, step=step)
        cupy.add(step, 1, out=step)

    decode_step()  # also compiles CuPy's own kernel for the step increment before capture
    eager = [a.copy() for a in (residual, normed, q_out, k_cache, act)]
    eager_tokens = []
    for s in range(3):
        sampling.sample(logits, sampled, vocab_size=vocab, method="sample", seed=1, step=s)
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
