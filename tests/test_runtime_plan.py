"""The runtime's host-side logic without a GPU: memory plan, GEMM dispatch, prompt handling."""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.gemm import backends as backends_module
from ftbench.gemm import dispatch as gemm_module
from ftbench.gemm.cache import CacheHeader, TunedCache
from ftbench.gemm.dispatch import GemmDispatch
from ftbench.gemm.problem import GemmProblem
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.generate import Sampling, _generated_lengths, unpad
from ftbench.runtime.memory import GIB, RESERVE_BYTES, check_fits, footprint
from tune_fakes import entry, fake_environment

GPTJ = load_builtin("gptj-6b")


@pytest.mark.parametrize("weights", ["int8", "fp8"])
def test_8_bit_weights_count_a_byte_a_linear_weight_plus_a_scale_per_row(weights):
    """GPT-J's layer linears at one byte and an fp32 scale per output row; embedding, LM head,
    norms and biases stay fp16, and the KV cache does not change. Steps of at most 16 tokens need
    no more activation memory; longer ones two fp16 copies of the largest linear (FFN up or down,
    16384 x 4096), the dequantisation scratch of each stream slot."""
    plain = footprint(GPTJ, batch=1, max_seq_len=256, dtype="fp16")
    quantised = footprint(GPTJ, batch=1, max_seq_len=256, dtype="fp16", weights=weights)
    h, f, layers = GPTJ.hidden_size, GPTJ.ffn_hidden_size, GPTJ.num_layers
    linear_elements = layers * (3 * h * h + h * h + f * h + h * f)
    linear_rows = layers * (3 * h + h + f + h)
    assert plain.weights - quantised.weights == linear_elements * (2 - 1) - linear_rows * 4
    assert quantised.kv_cache == plain.kv_cache
    assert quantised.activations - plain.activations == 2 * f * h * 2
    decode = dict(batch=16, max_seq_len=256, dtype="fp16", max_tokens=16)
    assert (
        footprint(GPTJ, **decode, weights=weights).activations
        == footprint(GPTJ, **decode).activations
    )
    with pytest.raises(InvalidInputError, match="8-bit weights are fp8 or int8, not 'fp16'"):
        footprint(GPTJ, batch=1, max_seq_len=256, dtype="fp16", weights="fp16")


def test_gptj_footprint_counts_weights_and_kv_cache_exactly():
    plan = footprint(GPTJ, batch=64, max_seq_len=256, dtype="fp16")
    assert plan.weights == 6_050_882_784 * 2
    # 28 layers x (K, V) x 64 sequences x 256 positions x 4096 (16 heads x 256) x 2 bytes
    assert plan.kv_cache == 28 * 2 * 64 * 256 * 4096 * 2
    assert plan.total == plan.weights + plan.kv_cache + plan.activations + RESERVE_BYTES


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_rank_holds_its_share(tp):
    whole = footprint(GPTJ, batch=8, max_seq_len=256, dtype="fp16")
    rank = footprint(GPTJ, batch=8, max_seq_len=256, dtype="fp16", tp=tp)
    assert rank.kv_cache * tp == whole.kv_cache
    # Every rank holds the norms and FFN-down's bias (28 layers x 3 x 4096, final norm 2 x
    # 4096); everything else, the embedding and the LM head included, is split tp ways.
    replicated = 28 * 3 * 4096 + 2 * 4096
    assert rank.weights == ((6_050_882_784 - replicated) // tp + replicated) * 2


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_a_padded_vocabulary_counts_its_rows_per_rank(tp):
    spec = dataclasses.replace(GPTJ, vocab_size=1003)
    padded = footprint(spec, 1, 128, "fp16", tp).weights
    saved = footprint(GPTJ, 1, 128, "fp16", tp).weights - padded
    rows = {2: 502, 4: 251, 8: 126}[tp]  # 1003 rows padded to a multiple of tp, over tp ranks
    # the embedding and the LM head (weight [rows, 4096] and bias [rows]) each lose rows
    assert saved == (50400 // tp - rows) * (2 * 4096 + 1) * 2


def test_request_that_does_not_fit_names_what_would():
    free = 40 * GIB
    with pytest.raises(InvalidInputError) as error:
        check_fits(GPTJ, batch=512, max_seq_len=2048, dtype="fp16", free_bytes=free)
    message = str(error.value)
    batch = int(message.split("largest batch that fits at 2048 tokens is ")[1].split(";")[0])
    length = int(message.split("longest length that fits at batch 512 is ")[1].split(" ")[0])
    assert footprint(GPTJ, batch, 2048, "fp16").total <= free
    assert footprint(GPTJ, batch + 1, 2048, "fp16").total > free
    assert footprint(GPTJ, 512, length, "fp16").total <= free
    assert footprint(GPTJ, 512, length + 1, "fp16").total > free


def test_weights_that_cannot_fit_say_so():
    with pytest.raises(InvalidInputError, match="weights alone do not fit"):
        check_fits(GPTJ, batch=1, max_seq_len=128, dtype="fp16", free_bytes=8 * GIB)


def test_runtime_dtypes_are_fp16_and_bf16():
    with pytest.raises(InvalidInputError, match="fp16 or bf16"):
        footprint(GPTJ, 1, 128, "fp32")


class _NumpyBackend:
    """Computes the GEMM with NumPy and remembers which configurations were prepared."""

    def __init__(self, name):
        self.name = name
        self.prepared = []

    def unsupported_reason(self, problem):
        return None

    def default(self, problem):
        from ftbench.gemm.candidate import Candidate

        return Candidate(self.name, "default", {"algo": -1})

    def prepare(self, candidate, problem):
        self.prepared.append((candidate.config["algo"], problem.key()))

        def run(a, b, c):
            c[...] = (a.astype(np.float32) @ b.astype(np.float32).T).astype(c.dtype)

        return run


def test_dispatch_uses_tuned_entries_and_counts_misses(monkeypatch):
    backend = _NumpyBackend("cublas")
    monkeypatch.setattr(gemm_module, "get_backend", lambda name: backend)
    monkeypatch.setattr(backends_module, "get_backend", lambda name: backend)
    tuned = GemmProblem(4, 24, 16)
    cache = TunedCache(CacheHeader.from_environment(fake_environment()))
    cache.add(entry(tuned, algo=7))
    dispatch = GemmDispatch(cache)
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((4, 16)).astype(np.float16), rng.standard_normal((24, 16))
    out = np.empty((4, 24), np.float16)
    for _ in range(3):
        dispatch.linear(x, w.astype(np.float16), out)
    dispatch.linear(x[:2], w.astype(np.float16)[:8], np.empty((2, 8), np.float16))
    np.testing.assert_allclose(out, x.astype(np.float32) @ w.astype(np.float16).T, rtol=1e-2)
    assert backend.prepared == [(7, tuned.key()), (-1, GemmProblem(2, 8, 16).key())]
    assert dispatch.stats.to_dict() == {
        "hits": 1, "misses": 1, "missed_problems": [GemmProblem(2, 8, 16).key()],
        "backends": {"cublas": 2},
    }  # fmt: skip


def test_dispatch_without_cache_runs_defaults(monkeypatch):
    backend = _NumpyBackend("cublas")
    monkeypatch.setattr(gemm_module, "get_backend", lambda name: backend)
    monkeypatch.setattr(backends_module, "get_backend", lambda name: backend)
    dispatch = GemmDispatch()
    x = np.ones((3, 8), np.float16)
    dispatch.linear(x, np.ones((5, 8), np.float16), np.empty((3, 5), np.float16))
    assert dispatch.stats.misses == [GemmProblem(3, 5, 8).key()]
    with pytest.raises(InvalidInputError, match="expected x"):
        dispatch.linear(x, np.ones((5, 9), np.float16), np.empty((3, 5), np.float16))


def test_unpad_takes_left_or_right_padding():
    ids = np.array([[0, 0, 5, 6], [7, 8, 9, 0]])
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 0]])
    rows = unpad(ids, mask)
    assert [row.tolist() for row in rows] == [[5, 6], [7, 8, 9]]
    assert [row.tolist() for row in unpad(ids)] == ids.tolist()


@pytest.mark.parametrize("mask", [[[1, 0, 1]], [[0, 0, 0]]])
def test_unpad_refuses_holes_and_empty_rows(mask):
    with pytest.raises(InvalidInputError, match="contiguous run"):
        unpad(np.ones((1, 3), np.int64), mask)


def test_sampling_settings_are_checked():
    with pytest.raises(InvalidInputError, match="method"):
        Sampling(method="beam")
    with pytest.raises(InvalidInputError, match="top_p"):
        Sampling(method="sample", top_p=0.0)


def test_generated_length_ends_at_the_first_stop_token():
    tokens = np.array([[4, 2, 9, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert _generated_lengths(tokens, (2,)).tolist() == [2, 4, 1]
    assert _generated_lengths(tokens, ()).tolist() == [4, 4, 4]


@pytest.mark.parametrize(
    ("length", "max_seq_len", "bound"),
    [(1, 2048, 128), (128, 2048, 128), (129, 2048, 256), (192, 2048, 256), (1025, 2048, 2048),
     (1500, 1500, 1500), (200, 160, 160), (256, 256, 256)],
)  # fmt: skip
def test_decode_length_bounds_are_few_and_cover_the_lengths(length, max_seq_len, bound):
    from ftbench.runtime.model import length_bound

    assert length_bound(length, max_seq_len) == bound
    bounds = {length_bound(n, 2048) for n in range(1, 2049)}
    assert bounds == {128, 256, 512, 1024, 2048}
    assert all(length_bound(n, 2048) >= n for n in range(1, 2049))


def test_breakdown_counts_the_embedding_rows_read_not_the_table():
    from types import SimpleNamespace

    from ftbench.runtime.breakdown import _bytes_and_flops

    decoder = SimpleNamespace(spec=GPTJ, rank=None)
    tokens, table = np.zeros(3, np.int32), np.zeros((50400, 64), np.float16)
    residual = np.zeros((3, 64), np.float32)
    moved, flops = _bytes_and_flops(
        decoder, "embed", (tokens, tokens, table, None, residual), {}, []
    )
    assert (moved, flops) == (3 * 64 * 2 + 3 * 64 * 4, 0)
    learned = np.zeros((1024, 64), np.float16)  # GPT-2's positions: one more row per token
    moved, _ = _bytes_and_flops(
        decoder, "embed", (tokens, tokens, table, learned, residual), {}, []
    )
    assert moved == 2 * 3 * 64 * 2 + 3 * 64 * 4


def test_communication_calls_sum_each_kind_over_its_places():
    from ftbench.runtime.breakdown import OperationTime, communication_calls, communication_ms

    def op(name, per_step, ms):
        return OperationTime(name, per_step, ms, 0.0, 0.0, 0, 0)

    operations = [
        op("start 01 all_reduce", 1, 0.01),
        op("layer 05 all_reduce", 28, 0.28),
        op("layer 06 residual_norm", 28, 0.1),
        op("head 03 all_gather", 1, 0.02),
        op("start 00 recv", 1, 0.5),
    ]
    calls = communication_calls(operations)
    assert calls.keys() == {"all_reduce", "all_gather", "recv"}
    assert calls["all_reduce"]["calls"] == 29
    assert calls["all_reduce"]["ms"] == pytest.approx(0.29)
    assert calls["recv"] == {"calls": 1, "ms": 0.5}
    assert communication_ms(operations) == pytest.approx(0.81)


class _ScaledNumpyBackend(_NumpyBackend):
    """`_NumpyBackend` whose runners also take an 8-bit layer's per-row scales."""

    def prepare(self, candidate, problem):
        self.prepared.append((candidate.config["algo"], problem.key()))

        def run(a, b, c, *scales):
            weight = b.astype(np.float32) * (scales[0][:, None] if scales else 1)
            c[...] = (a.astype(np.float32) @ weight.T).astype(c.dtype)

        return run


def test_8_bit_linears_run_weight_only_up_to_16_rows_and_on_dequantised_weights_beyond(
    monkeypatch,
):
    """m <= 16: the weight-only problem, its runner given the codes and scales; m > 16: the codes
    dequantised into the stream slot's scratch, then the fp16 problem of the same shape."""
    from ftbench.gemm.problem import linear_problem
    from ftbench.kernels import weight_only

    backend = _ScaledNumpyBackend("ftbench")
    monkeypatch.setattr(gemm_module, "get_backend", lambda name: backend)
    monkeypatch.setattr(backends_module, "get_backend", lambda name: backend)
    monkeypatch.setattr(gemm_module, "scratch_slot", lambda: 0)
    dequantised = []

    def dequantize(codes, scales, out):
        dequantised.append(codes.shape)
        out[...] = (codes.astype(np.float32) * scales[:, None]).astype(out.dtype)

    monkeypatch.setattr(weight_only, "dequantize", dequantize)
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, (24, 32)).astype(np.int8)
    scales = rng.uniform(0.001, 0.01, 24).astype(np.float32)
    dispatch = GemmDispatch()
    for m in (16, 17):
        x = rng.standard_normal((m, 32)).astype(np.float16)
        out = np.empty((m, 24), np.float16)
        dispatch.linear(x, codes, out, scales)
        expected = x.astype(np.float64) @ (codes * scales.astype(np.float64)[:, None]).T
        np.testing.assert_allclose(out, expected, rtol=2e-2, atol=2e-2)
    assert dequantised == [(24, 32)]
    assert dispatch.stats.misses == [
        linear_problem(16, 24, 32, "fp16", weights="int8").key(),
        GemmProblem(17, 24, 32).key(),
    ]
    with pytest.raises(Exception, match="fp16 or bf16 x and out of one dtype"):
        dispatch.linear(x, codes, np.empty((17, 24), np.float32), scales)


class _Fp8NumpyBackend(_NumpyBackend):
    """Runs an FP8 problem with outer scales from E4M3 bits in uint8, as cuBLASLt's runner is
    called: runner(a, b, c, a_scale, b_scale)."""

    def prepare(self, candidate, problem):
        from ftbench.dtypes import numpy_dtype

        self.prepared.append((candidate.config["algo"], problem.key()))
        e4m3 = numpy_dtype("fp8")

        def run(a, b, c, a_scale, b_scale):
            x = a.view(e4m3).astype(np.float64) * a_scale[:, None]
            w = b.view(e4m3).astype(np.float64) * b_scale[:, None]
            c[...] = (x @ w.T).astype(c.dtype)

        return run


def test_fp8_activations_quantise_each_token_for_gemms_beyond_16_rows(monkeypatch):
    """W8A8: m > 16 quantises x per token into scratch and runs the FP8 outer-scaled problem;
    m <= 16 stays weight-only (fp16 x); int8 weights with fp8 activations are refused."""
    from ftbench.gemm.problem import linear_problem
    from ftbench.kernels import weight_only
    from ftbench.runtime.quantize import fp8_activations

    backend = _Fp8NumpyBackend("cublaslt")
    monkeypatch.setattr(gemm_module, "get_backend", lambda name: backend)
    monkeypatch.setattr(backends_module, "get_backend", lambda name: backend)
    monkeypatch.setattr(gemm_module, "scratch_slot", lambda: 0)

    def quantize(x, weights, out):
        codes, scales = weight_only.quantize_reference(x, weights)
        out[0][...], out[1][...] = codes.view(np.uint8), scales

    monkeypatch.setattr(weight_only, "quantize", quantize)
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((24, 32)).astype(np.float16)
    codes, scales = weight_only.quantize_reference(weight, "fp8")
    dispatch = GemmDispatch(activations="fp8")
    x = rng.standard_normal((20, 32)).astype(np.float16)
    out = np.empty((20, 24), np.float16)
    dispatch.linear(x, codes.view(np.uint8), out, scales)
    dequantised = codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    expected = fp8_activations(x, "token") @ dequantised.T
    np.testing.assert_allclose(out, expected, rtol=1e-3, atol=1e-3)
    fp8 = linear_problem(20, 24, 32, "fp8", out_dtype="fp16", scaling="outer")
    assert dispatch.stats.misses == [fp8.key()]
    int8_codes, int8_scales = weight_only.quantize_reference(weight, "int8")
    with pytest.raises(InvalidInputError, match="fp8 activations multiply fp8 weights, not int8"):
        dispatch.linear(x, int8_codes, out, int8_scales)
    with pytest.raises(InvalidInputError, match="activations must be one of"):
        GemmDispatch(activations="int8")


def test_fp8_activations_need_scratch_for_the_widest_input_of_each_token():
    """W8A8 steps of more than 16 tokens quantise each linear's input: per stream slot (two),
    E4M3 codes of the widest input (GPT-J's FFN down, 16384) and an fp32 scale per token, in
    place of dequantised weights."""
    plain = footprint(GPTJ, batch=4, max_seq_len=256, dtype="fp16", max_tokens=512)
    w8a8 = footprint(GPTJ, 4, 256, "fp16", max_tokens=512, weights="fp8", activations="fp8")
    assert w8a8.activations - plain.activations == 2 * 512 * (16384 + 4)
