"""The GPU-free part of the cuBLASLt binding: an algorithm's config read back from stored data,
and what FP8 plans and scaled matmuls ask of the library (a stand-in binding records it)."""

import numpy as np
import pytest

from cublaslt_fakes import FakeCublasLt
from ftbench.dtypes import DTYPES
from ftbench.errors import InvalidInputError
from ftbench.kernels import cublaslt
from ftbench.kernels.cublas import CUBLAS_COMPUTE_32F
from ftbench.kernels.cublaslt import AlgoConfig, Fp8Settings, MatrixSpec
from kernel_fakes import Fake
from runtime_fakes import installed

FULL = AlgoConfig(
    id=66, tile_id=18, stages_id=21, splitk_num=4, reduction_scheme=2, cta_swizzling=1,
    custom_option=3, inner_shape_id=0, cluster_shape_id=5,
)  # fmt: skip


def test_config_with_a_missing_field_is_refused():
    config = FULL.to_config()
    del config["stages_id"]
    with pytest.raises(InvalidInputError, match="missing \\['stages_id'\\]"):
        AlgoConfig.from_config(config)


def test_config_with_an_unknown_field_is_refused():
    with pytest.raises(InvalidInputError, match="unknown \\['tile'\\]"):
        AlgoConfig.from_config({**FULL.to_config(), "tile": 3})


def test_config_with_a_non_integer_value_is_refused():
    with pytest.raises(InvalidInputError, match="splitk_num must be integers"):
        AlgoConfig.from_config({**FULL.to_config(), "splitk_num": "4"})


# --- FP8 plans and scaled matmuls, against a stand-in for nvmath's binding ---

FP16, BF16, FP8 = (DTYPES[name].cuda_data_type for name in ("fp16", "bf16", "fp8"))


def linear_layouts(m, n, k):
    """cuBLASLt's A, B, C of the linear layer Y[m, n] = X[m, k] @ W[n, k]^T: A is W read
    column-major as k x n (transposed: "T"), B is X read as k x m ("N"), C is Y as n x m."""
    return MatrixSpec(k, n, k, n * k), MatrixSpec(k, m, k, m * k), MatrixSpec(n, m, n, m * n)


@pytest.fixture
def lt(monkeypatch):
    fake = FakeCublasLt()
    monkeypatch.setattr(cublaslt, "_library", lambda: fake)
    monkeypatch.setattr(
        cublaslt, "_placeholder_scales", lambda length: Fake((length,), np.float32, ptr=0xF000)
    )
    return fake


def fp8_plan(m=3, n=32, k=16, scaling="tensor", fast_accum=False, out=FP16, trans="TN", batch=1):
    settings = Fp8Settings(scaling, fast_accum)
    return cublaslt.matmul_plan(
        trans[0], trans[1], linear_layouts(m, n, k), (FP8, FP8, out), batch,
        CUBLAS_COMPUTE_32F, fp8=settings,
    )  # fmt: skip


def test_fp8_plan_with_tensor_scales_sets_fast_accum_and_leaves_the_default_scale_mode(lt):
    plan = fp8_plan(scaling="tensor", fast_accum=False)
    assert lt.descriptors[plan.desc] == {
        "compute_type": CUBLAS_COMPUTE_32F, "scale_type": 0, "TRANSA": 1, "TRANSB": 0,
        "FAST_ACCUM": 0,
    }  # fmt: skip
    assert plan.types == (CUBLAS_COMPUTE_32F, 0, FP8, FP8, FP16, FP16)
    assert plan.scale_lengths == (1, 1)


def test_fp8_plan_with_outer_scales_sets_outer_vector_mode_on_a_and_b(lt):
    plan = fp8_plan(m=3, n=32, scaling="outer", fast_accum=True)
    descriptor = lt.descriptors[plan.desc]
    assert (descriptor["A_SCALE_MODE"], descriptor["B_SCALE_MODE"]) == (3, 3)  # OUTER_VEC_32F
    assert descriptor["FAST_ACCUM"] == 1
    # Until a call, both point at the plan's ones: never null (cuBLASLt then offers nothing).
    assert descriptor["A_SCALE_POINTER"] == descriptor["B_SCALE_POINTER"] == 0xF000
    assert plan.scale_placeholder.shape == (32,)
    # cuBLASLt's A scales run along its M (our n), its B scales along its N (our m).
    assert plan.scale_lengths == (32, 3)


def test_fast_accumulation_is_the_only_descriptor_difference_between_two_plans(lt):
    slow, fast = (fp8_plan(scaling="outer", fast_accum=value) for value in (False, True))
    differ = {
        name for name, value in lt.descriptors[slow.desc].items()
        if lt.descriptors[fast.desc][name] != value
    }  # fmt: skip
    assert differ == {"FAST_ACCUM"} and (slow.fp8.fast_accum, fast.fp8.fast_accum) == (False, True)


def test_fp8_layouts_are_e4m3_operands_and_a_16_bit_output(lt):
    plan = fp8_plan(m=3, n=32, k=16, out=BF16)
    layouts = [lt.layouts[layout] for layout in (plan.a_layout, plan.b_layout, plan.c_layout)]
    assert [(x["type"], x["rows"], x["cols"], x["ld"]) for x in layouts] == [
        (FP8, 16, 32, 16), (FP8, 16, 3, 16), (BF16, 32, 3, 32),
    ]  # fmt: skip


def test_outer_scales_are_refused_by_cublaslt_before_12_9(lt):
    lt.version = 120804
    with pytest.raises(
        InvalidInputError, match="need cuBLASLt 12.9.0 or later; this one is 12.8.4"
    ):
        fp8_plan(scaling="outer")


def test_tensor_scales_run_on_cublaslt_before_12_9(lt):
    lt.version = 120804
    assert "A_SCALE_MODE" not in lt.descriptors[fp8_plan(scaling="tensor").desc]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"trans": "NN"}, "only the TN format is supported .*got NN"),
        ({"k": 24}, "cuBLASLt's A must have rows \\(24\\) .* multiples of 16 bytes"),
        ({"n": 36}, "cuBLASLt's C must have rows \\(36\\) .* multiples of 16 bytes \\(8 elements"),
        ({"out": FP8}, "the output must be fp16, bf16 or fp32"),
        ({"scaling": "outer", "batch": 2}, "outer-vector scales .* not a strided batch"),
    ],
)
def test_fp8_plan_refuses_what_cublaslt_fp8_cannot_run(lt, change, reason):
    with pytest.raises(InvalidInputError, match="cuBLASLt cannot run this FP8 matmul: " + reason):
        fp8_plan(**change)
    assert lt.descriptors == {}


def test_fp8_operands_need_fp8_settings_and_only_they_take_them(lt):
    fp16_layouts = linear_layouts(3, 32, 16)
    with pytest.raises(InvalidInputError, match="exactly when A and B are E4M3"):
        cublaslt.matmul_plan("T", "N", fp16_layouts, (FP8, FP8, FP16), 1, CUBLAS_COMPUTE_32F)
    with pytest.raises(InvalidInputError, match="exactly when A and B are E4M3"):
        cublaslt.matmul_plan(
            "T", "N", fp16_layouts, (FP16, FP16, FP16), 1, CUBLAS_COMPUTE_32F,
            fp8=Fp8Settings("tensor", False),
        )  # fmt: skip


def test_fp8_settings_name_a_known_scaling():
    with pytest.raises(InvalidInputError, match="'channel' is not one of tensor, outer"):
        Fp8Settings("channel", False)


@pytest.fixture
def scaled_runner(lt, monkeypatch):
    """A ScaledMatmul of an outer-scaled 3x32x16 plan, on a stand-in CuPy."""
    with installed():
        monkeypatch.setattr(cublaslt, "_workspace", lambda device, slot: Fake((64,), np.uint8))
        plan = fp8_plan(m=3, n=32, k=16, scaling="outer")
        yield cublaslt.ScaledMatmul(0, plan, AlgoConfig(id=1), np.zeros(8, np.uint64), 0)
    cublaslt.device_handle.cache_clear()


def operands(m=3, n=32, k=16):
    return (
        Fake((m, k), np.uint8, ptr=0xA000),
        Fake((n, k), np.uint8, ptr=0xB000),
        Fake((m, n), np.float16, ptr=0xC000),
    )


def test_scaled_matmul_points_cublaslt_a_scale_at_our_b_scale_before_each_call(lt, scaled_runner):
    a, b, c = operands()
    for a_ptr, b_ptr in ((0x1000, 0x2000), (0x3000, 0x4000)):
        a_scale, b_scale = Fake((3,), np.float32, ptr=a_ptr), Fake((32,), np.float32, ptr=b_ptr)
        scaled_runner(a, b, c, a_scale, b_scale)
        arguments, descriptor = lt.matmuls[-1]
        # cuBLASLt's A is our B and its B our A, scales and operands alike.
        assert (descriptor["A_SCALE_POINTER"], descriptor["B_SCALE_POINTER"]) == (b_ptr, a_ptr)
        assert (arguments[3], arguments[5]) == (0xB000, 0xA000)


@pytest.mark.parametrize(
    ("a_scale", "b_scale", "reason"),
    [
        (Fake((1,), np.float32), Fake((32,), np.float32), "a_scale must be 3 float32 value"),
        (Fake((3,), np.float32), Fake((32,), np.float16), "b_scale must be 32 float32 value"),
        (Fake((3,), np.float32), np.zeros((32, 2), np.float32)[:, 0], "b_scale must be contig"),
    ],
)
def test_scaled_matmul_refuses_scales_of_the_wrong_length_type_or_layout(
    lt, scaled_runner, a_scale, b_scale, reason
):
    with pytest.raises(InvalidInputError, match=reason):
        scaled_runner(*operands(), a_scale, b_scale)
    assert lt.matmuls == []


def test_an_fp8_plan_runs_only_as_a_scaled_matmul(lt):
    with installed(), pytest.raises(InvalidInputError, match="ScaledMatmul"):
        cublaslt.Matmul(0, fp8_plan(), AlgoConfig(id=1), np.zeros(8, np.uint64), 0)
