"""`GemmProblem`: keys, FLOPs, bytes, records, the cuBLAS call, the scaling of 8-bit problems."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import DATASHEET_PEAKS, GemmProblem, datasheet_peaks, linear_problem

RESULTS = Path(__file__).parent / "data" / "results"


def test_problem_key_flops_and_bytes():
    problem = GemmProblem(m=1, n=12288, k=4096)
    assert problem.key() == "gemm:f16f16f16:f32:NT:m=1:n=12288:k=4096:b=1"
    assert problem.flops() == 2 * 12288 * 4096
    assert problem.bytes() == 2 * (4096 + 12288 * 4096 + 12288)
    batched = GemmProblem(128, 64, 128, "bf16", "bf16", "fp32", transb=False, batch_count=24)
    assert batched.key() == "gemm:bf16bf16f32:f32:NN:m=128:n=64:k=128:b=24"
    assert batched.bytes() == 24 * (128 * 128 * 2 + 128 * 64 * 2 + 128 * 64 * 4)


def test_roofline_classification_on_h100():
    h100 = DATASHEET_PEAKS["h100"]
    assert GemmProblem(1, 4096, 4096).bound_on(
        h100.dense_fp16_flops_per_s, h100.hbm_bytes_per_s
    ) == ("memory")
    assert h100.bound(GemmProblem(4096, 4096, 4096)) == "compute"  # intensity 4096/3 > ~295
    assert GemmProblem(4096, 4096, 4096).arithmetic_intensity() == pytest.approx(4096 / 3)


def test_unknown_gpu_peaks_list_the_known_ones():
    with pytest.raises(InvalidInputError, match="choose one of a100, h100, h200"):
        datasheet_peaks("v100")


def test_problem_round_trips_through_its_dict():
    problem = GemmProblem(7, 9, 11, "bf16", "bf16", "bf16", batch_count=3)
    data = problem.to_dict()
    assert data == {
        "schema": 1, "a_dtype": "bf16", "b_dtype": "bf16", "c_dtype": "bf16",
        "compute_dtype": "fp32", "transa": False, "transb": True, "m": 7, "n": 9, "k": 11,
        "batch_count": 3, "scaling": "none",
    }  # fmt: skip
    assert GemmProblem.from_dict(data) == problem


def test_problem_written_with_the_old_op_field_still_loads():
    # Records written before "op" was dropped carry "op": "gemm"; their key is unchanged.
    problem = GemmProblem.from_dict({**GemmProblem(1, 2, 3).to_dict(), "op": "gemm"})
    assert problem == GemmProblem(1, 2, 3)
    assert problem.key() == "gemm:f16f16f16:f32:NT:m=1:n=2:k=3:b=1"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schema": 2}, "schema 2 is not supported"),
        ({"schema": 1, "m": 1}, "missing field"),
        ({**GemmProblem(1, 2, 3).to_dict(), "alpha": 1}, "unknown field"),
        ({**GemmProblem(1, 2, 3).to_dict(), "m": 0}, "m must be a positive integer"),
        ({**GemmProblem(1, 2, 3).to_dict(), "a_dtype": "int8"}, "a_dtype must be one of"),
        ({**GemmProblem(1, 2, 3).to_dict(), "op": "conv"}, "op 'conv' is not supported"),
        ({**GemmProblem(1, 2, 3).to_dict(), "scaling": "block"}, "scaling must be one of"),
    ],
)
def test_problem_from_bad_dict_is_an_error(data, message):
    with pytest.raises(InvalidInputError, match=message):
        GemmProblem.from_dict(data)


def _column_major_gemm(transa, transb, m, n, k, a, lda, b, ldb, ldc):
    """What cuBLAS computes: C = op(A) @ op(B), every buffer read column-major."""

    def matrix(buffer, ld, rows, cols):
        return buffer[: ld * cols].reshape(cols, ld).T[:rows, :]

    op_a = matrix(a, lda, k, m).T if transa == "T" else matrix(a, lda, m, k)
    op_b = matrix(b, ldb, n, k).T if transb == "T" else matrix(b, ldb, k, n)
    result = np.zeros(ldc * n)
    matrix(result, ldc, m, n)[...] = op_a @ op_b
    return result


@pytest.mark.parametrize("transb", [True, False])
def test_cublas_call_computes_the_row_major_problem(transb):
    rng = np.random.default_rng(0)
    m, n, k = 5, 7, 3
    x = rng.standard_normal((m, k))
    weight = rng.standard_normal((n, k)) if transb else rng.standard_normal((k, n))
    expected = x @ (weight.T if transb else weight)
    call = GemmProblem(m, n, k, transb=transb).cublas_call()
    # cuBLAS's first operand is our B (the weight), its second our A (the activations).
    out = _column_major_gemm(
        call["transa"], call["transb"], call["m"], call["n"], call["k"],
        weight.ravel(), call["lda"], x.ravel(), call["ldb"], call["ldc"],
    )  # fmt: skip
    np.testing.assert_allclose(out.reshape(m, n), expected)


# 8-bit problems: FP8 x FP8 ("tensor", "outer") and weight-only ("channel").

FP8_TENSOR = linear_problem(16, 4096, 4096, "fp8")
FP8_OUTER = linear_problem(16, 4096, 4096, "fp8", scaling="outer")
INT8_WEIGHTS = linear_problem(16, 4096, 4096, "bf16", weights="int8")
FP8_WEIGHTS = linear_problem(16, 4096, 4096, "fp16", weights="fp8")


def _stored_problems(name):
    """(stored key, problem record) of every problem in a results file of tests/data."""
    document = json.loads((RESULTS / name).read_text())
    if "entries" in document:
        return [(key, entry["problem"]) for key, entry in document["entries"].items()]
    return [(record["problem_key"], record["problem"]) for record in document["records"]]


@pytest.mark.parametrize("name", ["tune-cache.json", "tune-candidates.json"])
def test_keys_of_stored_unscaled_problems_are_unchanged(name):
    stored = _stored_problems(name)
    assert stored
    for key, record in stored:
        assert "scaling" not in record  # written before the field existed
        problem = GemmProblem.from_dict(record)
        assert problem.scaling == "none"
        assert problem.key() == key


def test_linear_problem_of_a_16_bit_dtype_is_the_unscaled_problem():
    assert linear_problem(1, 4096, 4096, "bf16") == GemmProblem(
        1, 4096, 4096, "bf16", "bf16", "bf16"
    )
    assert (
        linear_problem(1, 4096, 4096, "fp16").key() == "gemm:f16f16f16:f32:NT:m=1:n=4096:k=4096:b=1"
    )


def test_linear_problem_defaults_for_8_bit_formats():
    assert (FP8_TENSOR.a_dtype, FP8_TENSOR.b_dtype, FP8_TENSOR.c_dtype) == ("fp8", "fp8", "fp16")
    assert FP8_TENSOR.scaling == "tensor"
    assert (INT8_WEIGHTS.a_dtype, INT8_WEIGHTS.b_dtype, INT8_WEIGHTS.c_dtype) == (
        "bf16", "int8", "bf16",
    )  # fmt: skip
    assert INT8_WEIGHTS.scaling == "channel"
    assert linear_problem(16, 4096, 4096, "fp8", out_dtype="bf16").c_dtype == "bf16"


def test_scaled_keys_carry_the_scheme_and_differ_per_scheme():
    assert FP8_TENSOR.key() == "gemm:e4m3e4m3f16:f32:NT:m=16:n=4096:k=4096:b=1:s=tensor"
    assert FP8_OUTER.key() == "gemm:e4m3e4m3f16:f32:NT:m=16:n=4096:k=4096:b=1:s=outer"
    assert INT8_WEIGHTS.key() == "gemm:bf16s8bf16:f32:NT:m=16:n=4096:k=4096:b=1:s=channel"
    assert FP8_WEIGHTS.key() == "gemm:f16e4m3f16:f32:NT:m=16:n=4096:k=4096:b=1:s=channel"


def test_scale_lengths_follow_the_scheme():
    assert GemmProblem(16, 4096, 4096).scale_lengths() == (0, 0)
    assert FP8_TENSOR.scale_lengths() == (1, 1)
    assert FP8_OUTER.scale_lengths() == (16, 4096)
    assert INT8_WEIGHTS.scale_lengths() == (0, 4096)


def test_bytes_count_8_bit_operands_one_byte_and_fp32_scales():
    m, n, k = 16, 4096, 4096
    fp16_out = m * n * 2
    assert FP8_TENSOR.bytes() == m * k + k * n + fp16_out + 2 * 4
    assert FP8_OUTER.bytes() == m * k + k * n + fp16_out + (m + n) * 4
    assert INT8_WEIGHTS.bytes() == m * k * 2 + k * n + fp16_out + n * 4
    assert FP8_TENSOR.flops() == GemmProblem(m, n, k).flops()


@pytest.mark.parametrize(
    "problem", [FP8_TENSOR, FP8_OUTER, INT8_WEIGHTS, FP8_WEIGHTS], ids=lambda p: p.key()
)
def test_scaled_problem_round_trips_through_its_dict(problem):
    data = problem.to_dict()
    assert data["scaling"] == problem.scaling
    assert GemmProblem.from_dict(data) == problem


@pytest.mark.parametrize(
    ("a_dtype", "b_dtype", "scaling", "message"),
    [
        ("fp8", "int8", "tensor", "fp8 activations (A) need fp8 weights (B), got int8"),
        ("fp8", "fp16", "tensor", "fp8 activations (A) need fp8 weights (B), got fp16"),
        ("fp8", "fp8", "none", "fp8 x fp8 GEMMs take scaling tensor or outer, got 'none'"),
        ("fp8", "fp8", "channel", "fp8 x fp8 GEMMs take scaling tensor or outer, got 'channel'"),
        (
            "fp16",
            "int8",
            "none",
            "weight-only (fp16 x int8) GEMMs take scaling channel, got 'none'",
        ),
        ("bf16", "fp8", "tensor", "weight-only (bf16 x fp8) GEMMs take scaling channel"),
        ("fp32", "int8", "channel", "int8 weights (B) need fp16 or bf16 activations (A), got fp32"),
        ("fp16", "fp16", "tensor", "fp16 x fp16 GEMMs take scaling none, got 'tensor'"),
        ("fp16", "fp16", "block", "scaling must be one of none, tensor, outer, channel"),
        ("int8", "int8", "channel", "a_dtype must be one of ['bf16', 'fp16', 'fp32', 'fp8']"),
    ],
)
def test_bad_8_bit_combinations_are_refused_in_one_line(a_dtype, b_dtype, scaling, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)) as error:
        GemmProblem(16, 4096, 4096, a_dtype, b_dtype, scaling=scaling)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"c_dtype": "fp8"}, "c_dtype must be one of ['bf16', 'fp16', 'fp32'], got 'fp8'"),
        ({"compute_dtype": "fp16"}, "8-bit GEMMs accumulate in fp32, got compute_dtype fp16"),
        ({"batch_count": 4}, "8-bit GEMMs are single GEMMs (batch_count 1), got 4"),
    ],
)
def test_8_bit_problems_write_16_or_32_bits_accumulate_in_fp32_and_are_not_batched(fields, message):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        GemmProblem(16, 4096, 4096, "fp8", "fp8", scaling="tensor", **fields)


def test_linear_problem_refuses_fp8_activations_with_int8_weights():
    with pytest.raises(InvalidInputError, match=re.escape("fp8 activations (A) need fp8 weights")):
        linear_problem(16, 4096, 4096, "fp8", weights="int8")


def test_fp8_problems_sit_under_the_fp8_tensor_core_peak_and_weight_only_under_fp16s():
    h100, a100 = datasheet_peaks("h100"), datasheet_peaks("a100")
    fp8 = linear_problem(4096, 4096, 4096, "fp8")
    weight_only = linear_problem(4096, 4096, 4096, "fp16", weights="int8")
    assert h100.flops_per_s(fp8) == 2 * h100.dense_fp16_flops_per_s
    assert h100.flops_per_s(weight_only) == h100.dense_fp16_flops_per_s
    assert h100.floor_s(fp8) == fp8.flops() / 1979e12
    with pytest.raises(InvalidInputError, match="no FP8 peak for NVIDIA A100"):
        a100.bound(fp8)
    assert a100.bound(weight_only) == "compute"
