"""The attention kernels against a float64 NumPy reference on fresh random inputs.

Outputs are poisoned with NaN before every launch, and every cache slot a kernel must not read
(past a sequence's valid positions, and unused cache rows) holds NaN, so an unwritten output or
a stray read fails. Errors are checked per sequence, so a short sequence cannot hide in a long
one's norm.
"""

import numpy as np
import pytest
from host_types import host_dtype

from ftbench.errors import GpuError, InvalidInputError
from ftbench.kernels.attention import (
    HEAD_DIMS,
    context_attention,
    decode_attention,
    decode_workspace,
    prepare,
)

pytestmark = pytest.mark.gpu

TOLERANCE = {"float16": 4e-3, "bfloat16": 2e-2}
DTYPES = ["float16", "bfloat16"]
HEADS = [(2, 2), (8, 2), (8, 1)]  # (query heads, kv heads): plain, grouped, multi-query
SEQUENCE_LENGTHS = [1, 7, 33, 129, 1000]
PAST_LENGTHS = [0, 5, 0, 70, 300]  # chunked prefill: tokens already in the cache
DECODE_LENGTHS = [1, 2, 17, 64, 65, 1000, 4096, 333]
DECODE_MAX_LENGTH = 4100  # larger than every length
DECODE_CACHE_LEN = 4160  # larger still


def random(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(host_dtype(dtype))


def poison(out):
    """Fill a device array with NaN through a copy on the current stream (any dtype)."""
    out.set(np.full(out.shape, np.nan, np.float32).astype(out.dtype))


def softmax_attention(q, keys, values, scale, visible=None):
    """float64 softmax(scale q k^T) v for one sequence: q [Hq, n, D], keys/values [Hq, L, D]."""
    scores = q @ keys.transpose(0, 2, 1) * scale
    if visible is not None:
        scores = np.where(visible, scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ values


def per_head(cache, row, length, group):
    """[Hq, length, D] float64 of cache row `row`, each kv head repeated for its query heads."""
    return np.repeat(cache[row, :, :length].astype(np.float64), group, axis=0)


def context_reference(q, k, v, cu_seqlens, past_lens, scale):
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    for b in range(len(past_lens)):
        rows = slice(cu_seqlens[b], cu_seqlens[b + 1])
        tokens, past = cu_seqlens[b + 1] - cu_seqlens[b], past_lens[b]
        if tokens == 0:
            continue
        visible = np.arange(past + tokens)[None, :] <= past + np.arange(tokens)[:, None]
        queries = q[rows].astype(np.float64).transpose(1, 0, 2)
        keys, values = per_head(k, b, past + tokens, group), per_head(v, b, past + tokens, group)
        out[rows] = softmax_attention(queries, keys, values, scale, visible).transpose(1, 0, 2)
    return out


def decode_reference(q, k, v, lengths, scale):
    group = q.shape[1] // k.shape[1]
    out = np.zeros(q.shape)
    for b, length in enumerate(lengths):
        queries = q[b].astype(np.float64)[:, None, :]
        keys, values = per_head(k, b, length, group), per_head(v, b, length, group)
        out[b] = softmax_attention(queries, keys, values, scale)[:, 0, :]
    return out


def worst_relative_error(got, reference, row_ranges):
    """The largest ||got - ref|| / ||ref|| over the sequences' rows (inf if any is not finite)."""
    got = got.astype(np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return max(
        float(np.linalg.norm(got[rows] - reference[rows]) / np.linalg.norm(reference[rows]))
        for rows in row_ranges
    )


def context_case(rng, dtype, q_heads, kv_heads, head_dim, lengths, pasts, spare_rows=1):
    """Host q, caches (NaN past each sequence's keys, spare rows all NaN), cu_seqlens, past."""
    cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    cache_len = max(p + n for p, n in zip(pasts, lengths, strict=True)) + 37
    rows = len(lengths) + spare_rows
    q = random(rng, (cu_seqlens[-1], q_heads, head_dim), dtype, scale=2.0)
    k = random(rng, (rows, kv_heads, cache_len, head_dim), dtype)
    v = random(rng, (rows, kv_heads, cache_len, head_dim), dtype)
    for b in range(rows):
        valid = pasts[b] + lengths[b] if b < len(lengths) else 0
        k[b, :, valid:] = np.nan
        v[b, :, valid:] = np.nan
    return q, k, v, cu_seqlens, np.array(pasts, np.int32)


def run_context(q, k, v, cu_seqlens, past_lens, scale, max_q_len):
    import cupy

    device = [cupy.asarray(a) for a in (q, k, v, cu_seqlens, past_lens)]
    out = cupy.empty_like(device[0])
    poison(out)
    context_attention(*device, out, scale=scale, max_q_len=max_q_len)
    return cupy.asnumpy(out)


def check_context(q, k, v, cu_seqlens, past_lens, dtype, scale, max_q_len):
    got = run_context(q, k, v, cu_seqlens, past_lens, scale, max_q_len)
    reference = context_reference(q, k, v, cu_seqlens, past_lens, scale)
    sequences = [slice(cu_seqlens[b], cu_seqlens[b + 1]) for b in range(len(past_lens))]
    error = worst_relative_error(got, reference, [s for s in sequences if s.stop > s.start])
    assert error < TOLERANCE[dtype], f"worst per-sequence relative error {error:.3g}"


@pytest.mark.parametrize(("q_heads", "kv_heads"), HEADS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_context_attention_matches_float64(dtype, head_dim, q_heads, kv_heads):
    rng = np.random.default_rng()
    case = context_case(rng, dtype, q_heads, kv_heads, head_dim, SEQUENCE_LENGTHS, PAST_LENGTHS)
    check_context(*case, dtype, head_dim**-0.5, max(SEQUENCE_LENGTHS))


@pytest.mark.parametrize("dtype", DTYPES)
def test_context_plain_prefill_with_an_empty_sequence_and_a_loose_grid_bound(dtype):
    rng = np.random.default_rng()
    lengths, pasts = [129, 0, 64, 1, 300], [0, 0, 0, 0, 0]
    case = context_case(rng, dtype, 4, 4, 128, lengths, pasts, spare_rows=2)
    check_context(*case, dtype, 0.3, max_q_len=500)


def test_context_chunks_agree_with_one_pass():
    """A prompt prefilled in three chunks gives the rows of a single-pass prefill."""
    rng = np.random.default_rng()
    q, k, v, _, _ = context_case(rng, "float16", 8, 2, 128, [500], [0], spare_rows=0)
    scale = 128**-0.5
    whole = run_context(q, k, v, np.array([0, 500], np.int32), np.zeros(1, np.int32), scale, 500)
    for begin, end in ((0, 100), (100, 229), (229, 500)):
        chunk = run_context(
            q[begin:end], k, v, np.array([0, end - begin], np.int32),
            np.array([begin], np.int32), scale, end - begin,
        )  # fmt: skip
        np.testing.assert_allclose(
            chunk.astype(np.float32), whole[begin:end].astype(np.float32), atol=2e-3
        )


def decode_case(rng, dtype, q_heads, kv_heads, head_dim, lengths, cache_len, spare_rows=1):
    """Host q and caches with NaN past each length (spare cache rows all NaN)."""
    rows = len(lengths) + spare_rows
    q = random(rng, (len(lengths), q_heads, head_dim), dtype, scale=2.0)
    k = random(rng, (rows, kv_heads, cache_len, head_dim), dtype)
    v = random(rng, (rows, kv_heads, cache_len, head_dim), dtype)
    for b in range(rows):
        valid = lengths[b] if b < len(lengths) else 0
        k[b, :, valid:] = np.nan
        v[b, :, valid:] = np.nan
    return q, k, v


def check_decode(got, q, k, v, lengths, dtype, scale):
    reference = decode_reference(q, k, v, lengths, scale)
    error = worst_relative_error(got, reference, [slice(b, b + 1) for b in range(len(lengths))])
    assert error < TOLERANCE[dtype], f"worst per-sequence relative error {error:.3g}"


def run_decode(q, k, v, lengths, scale, max_length, workspace=None):
    import cupy

    device = [cupy.asarray(a) for a in (q, k, v, np.array(lengths, np.int32))]
    out = cupy.empty_like(device[0])
    poison(out)
    decode_attention(*device, out, scale=scale, max_length=max_length, workspace=workspace)
    return cupy.asnumpy(out)


@pytest.mark.parametrize(("q_heads", "kv_heads"), HEADS + [(16, 1), (32, 1)])
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_matches_float64(dtype, head_dim, q_heads, kv_heads):
    rng = np.random.default_rng()
    lengths = DECODE_LENGTHS
    q, k, v = decode_case(rng, dtype, q_heads, kv_heads, head_dim, lengths, DECODE_CACHE_LEN)
    workspace = decode_workspace(len(lengths), q_heads, head_dim, DECODE_MAX_LENGTH)
    got = run_decode(q, k, v, lengths, head_dim**-0.5, DECODE_MAX_LENGTH, workspace)
    check_decode(got, q, k, v, lengths, dtype, head_dim**-0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_with_one_chunk_per_sequence_writes_directly(dtype):
    rng = np.random.default_rng()
    lengths = [1, 5, 64, 33]
    q, k, v = decode_case(rng, dtype, 8, 8, 128, lengths, cache_len=80)
    got = run_decode(q, k, v, lengths, 0.1, max_length=64)
    check_decode(got, q, k, v, lengths, dtype, 0.1)


def test_decode_repeats_agree_bit_for_bit_and_reuse_the_workspace():
    """The arrival counters return to zero: later launches on one workspace stay right."""
    import cupy

    rng = np.random.default_rng()
    lengths = [4096, 3000, 1, 2048]
    q, k, v = decode_case(rng, "float16", 8, 1, 128, lengths, cache_len=4096)
    workspace = decode_workspace(len(lengths), 8, 128, 4096)
    first = run_decode(q, k, v, lengths, 0.09, 4096, workspace)
    for _ in range(3):
        np.testing.assert_array_equal(run_decode(q, k, v, lengths, 0.09, 4096, workspace), first)
    check_decode(first, q, k, v, lengths, "float16", 0.09)
    assert not cupy.asnumpy(workspace.counters).any()
    # A smaller batch (more chunks per sequence), then the full one again, on the same workspace.
    other = [7, 4000]
    q2, k2, v2 = decode_case(rng, "float16", 8, 1, 128, other, cache_len=4096)
    check_decode(run_decode(q2, k2, v2, other, 0.09, 4096, workspace), q2, k2, v2, other,
                 "float16", 0.09)  # fmt: skip
    np.testing.assert_array_equal(run_decode(q, k, v, lengths, 0.09, 4096, workspace), first)
    assert not cupy.asnumpy(workspace.counters).any()


def test_decode_length_zero_gives_zeros():
    rng = np.random.default_rng()
    q, k, v = decode_case(rng, "float16", 4, 2, 64, [0, 3], cache_len=128)
    got = run_decode(q, k, v, [0, 3], 0.125, 128)
    assert not got[0].astype(np.float32).any()
    check_decode(got[1:], q[1:], k[1:], v[1:], [3], "float16", 0.125)


def test_decode_refuses_a_small_workspace():
    import cupy

    q = cupy.zeros((2, 8, 128), cupy.float16)
    caches = [cupy.zeros((2, 1, 4096, 128), cupy.float16) for _ in range(2)]
    small = decode_workspace(2, 8, 128, 256)
    with pytest.raises(InvalidInputError, match="workspace must be a DecodeWorkspace"):
        decode_attention(q, *caches, cupy.ones(2, cupy.int32), cupy.empty_like(q), scale=0.1,
                         max_length=4096, workspace=small)  # fmt: skip


def test_decode_graph_captured_once_replays_with_new_lengths():
    """One capture at max_length serves every step: new q, caches and lengths each replay."""
    import cupy

    rng = np.random.default_rng()
    dtype, q_heads, kv_heads, head_dim, max_length, cache_len = "bfloat16", 8, 2, 128, 2048, 2100
    batch, scale = 4, 128**-0.5
    prepare(dtype, head_dim)
    workspace = decode_workspace(batch, q_heads, head_dim, max_length)
    q = cupy.asarray(random(rng, (batch, q_heads, head_dim), dtype))
    k = cupy.asarray(random(rng, (batch, kv_heads, cache_len, head_dim), dtype))
    v = cupy.empty_like(k)
    lengths = cupy.ones(batch, cupy.int32)
    out = cupy.empty_like(q)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        decode_attention(q, k, v, lengths, out, scale=scale, max_length=max_length,
                         workspace=workspace)  # fmt: skip
        graph = stream.end_capture()
        for step in ([1, 2, 3, 4], [2048, 1, 700, 65], [100, 1000, 2047, 5]):
            hq, hk, hv = decode_case(rng, dtype, q_heads, kv_heads, head_dim, step, cache_len, 0)
            for device, host in ((q, hq), (k, hk), (v, hv), (lengths, np.array(step, np.int32))):
                device.set(host)
            poison(out)
            graph.launch(stream)
            stream.synchronize()
            check_decode(cupy.asnumpy(out), hq, hk, hv, step, dtype, scale)


def test_context_graph_capture_replays_on_new_inputs():
    import cupy

    rng = np.random.default_rng()
    lengths, pasts = [17, 200, 1], [3, 0, 40]
    prepare("float16", 64)
    first = context_case(rng, "float16", 8, 1, 64, lengths, pasts)
    device = [cupy.asarray(a) for a in first]
    out = cupy.empty_like(device[0])
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        context_attention(*device, out, scale=0.125, max_q_len=200)
        graph = stream.end_capture()
        for _ in range(2):
            case = context_case(rng, "float16", 8, 1, 64, lengths, pasts)
            for target, host in zip(device, case, strict=True):
                target.set(host)
            poison(out)
            graph.launch(stream)
            stream.synchronize()
            got = cupy.asnumpy(out).astype(np.float64)
            reference = context_reference(*case, 0.125)
            assert np.isfinite(got).all()
            error = np.linalg.norm(got - reference) / np.linalg.norm(reference)
            assert error < TOLERANCE["float16"]


def test_default_workspace_cannot_be_made_during_capture(monkeypatch):
    import cupy

    from ftbench.kernels import attention

    monkeypatch.setattr(attention, "_workspaces", {})
    q = cupy.zeros((3, 4, 64), cupy.float16)
    caches = [cupy.zeros((3, 4, 64, 64), cupy.float16) for _ in range(2)]
    lengths = cupy.ones(3, cupy.int32)
    prepare("float16", 64)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            with pytest.raises(GpuError, match="no workspace during CUDA-graph capture"):
                decode_attention(q, *caches, lengths, cupy.empty_like(q), scale=0.1,
                                 max_length=64)  # fmt: skip
        finally:
            stream.end_capture()
