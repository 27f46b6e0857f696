"""cuBLASLt FP8 matmuls through the binding (`kernels.cublaslt`) on the GPU: every algorithm the
heuristic ranks first (its top 8) and algorithms enumerated by id compute the linear layer
Y = (a_scale * X) @ (b_scale * W)^T of E4M3 operands like a float64 reference of the same E4M3
values times the same fp32 scales, for per-tensor and outer-vector scales, fp16 and bf16 outputs,
fast accumulation off and on; rebuild byte for byte from their stored config; and a captured
CUDA graph keeps its scale pointers, reading the scales' current values at each replay.

The tolerances, and why fast accumulation gets a looser one: see `fp8_linear`.
"""

import functools

import numpy as np
import pytest
from fp8_linear import Linear, error_of, output

from ftbench.dtypes import DTYPES
from ftbench.errors import GpuError
from ftbench.gemm.operands import tolerance
from ftbench.kernels import cublaslt
from ftbench.kernels.cublas import CUBLAS_COMPUTE_32F
from ftbench.kernels.cublaslt import Fp8Settings

pytestmark = pytest.mark.gpu

HEURISTIC_TOP = 8
SHAPES = [(m, n, k) for m in (1, 16, 128, 333) for n, k in ((4096, 4096 + 16), (4096 + 16, 1024))]
SHAPE_IDS = [f"{m}x{n}x{k}" for m, n, k in SHAPES]


@pytest.fixture(scope="module")
def device():
    """(device id, cuBLASLt handle, library version); skips without nvmath or FP8 tensor cores."""
    reason = cublaslt.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    import cupy

    current = cupy.cuda.Device()
    if int(current.compute_capability) < 89:
        pytest.skip(f"FP8 tensor cores need compute capability 8.9, this GPU has {current}")
    return current.id, cublaslt.device_handle(current.id), cublaslt.library_version()


@pytest.fixture(scope="module")
def linear_of():
    """The `Linear` of a shape, made once (its float64 product is the slow part)."""
    return functools.cache(lambda shape: Linear(*shape))


def plan_for(device, linear, out, scaling, fast_accum):
    _, _, version = device
    if scaling == "outer" and version < cublaslt.OUTER_SCALES_SINCE:
        pytest.skip(f"outer-vector scales need cuBLASLt 12.9; this one reports {version}")
    return cublaslt.matmul_plan(
        "T", "N", linear.layouts(), tuple(DTYPES[d].cuda_data_type for d in ("fp8", "fp8", out)),
        1, CUBLAS_COMPUTE_32F, fp8=Fp8Settings(scaling, fast_accum),
    )  # fmt: skip


def runner_for(device, plan, config):
    device_id, handle, _ = device
    algo = cublaslt.build_algo(handle, plan, config)
    workspace = cublaslt.check_algo(handle, plan, algo)
    assert workspace is not None, f"AlgoCheck refuses {config.describe()}"
    return cublaslt.ScaledMatmul(device_id, plan, config, algo, workspace)


def run(runner, linear, out, a_scale, b_scale):
    """Y of one call, into a fresh NaN output, with the host scales copied to the device."""
    import cupy

    c = output(linear, out)
    runner(linear.x, linear.w, c, cupy.asarray(a_scale), cupy.asarray(b_scale))
    return c


@pytest.mark.parametrize("fast_accum", [False, True], ids=["fp32-accum", "fast-accum"])
@pytest.mark.parametrize("scaling", ["tensor", "outer"])
@pytest.mark.parametrize("out", ["fp16", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_heuristic_top_algorithms_match_the_dequantised_reference(
    device, linear_of, shape, out, scaling, fast_accum
):
    linear = linear_of(shape)
    plan = plan_for(device, linear, out, scaling, fast_accum)
    results = cublaslt.heuristic_algos(device[1], plan, HEURISTIC_TOP)
    assert results, "the heuristic found no FP8 algorithm"
    a_scale, b_scale = linear.scales(scaling)
    expected = linear.reference(a_scale, b_scale)
    errors = {
        config.describe(): error_of(
            run(runner_for(device, plan, config), linear, out, a_scale, b_scale), out, expected
        )
        for config, _ in results
    }
    limit = tolerance(out, fast_accum)
    wrong = {name: error for name, error in errors.items() if not error < limit}
    assert not wrong, f"{len(wrong)} of {len(errors)} algorithms are off by more than {limit}"


@pytest.mark.parametrize("scaling", ["tensor", "outer"])
def test_fp8_heuristic_results_rebuild_from_their_config_byte_for_byte(device, linear_of, scaling):
    plan = plan_for(device, linear_of(SHAPES[2]), "fp16", scaling, fast_accum=False)
    results = cublaslt.heuristic_algos(device[1], plan, HEURISTIC_TOP)
    assert results
    for config, raw in results:
        assert cublaslt.build_algo(device[1], plan, config).tobytes() == raw, config.describe()


def test_algorithms_enumerated_by_id_for_fp8_types_match_the_reference(device, linear_of):
    """Every id AlgoGetIds lists for E4M3 x E4M3 -> fp16 that AlgoCheck accepts with one of its
    first (tile, stages) pairs and cluster shapes computes the product right."""
    linear = linear_of(SHAPES[2])
    plan = plan_for(device, linear, "fp16", "outer", fast_accum=False)
    handle = device[1]
    ids = cublaslt.algo_ids(handle, plan, 512)
    assert ids, "AlgoGetIds lists no FP8 algorithm"
    clusters = (0, *(cublaslt.cluster_shape_id(name) for name in ("SHAPE_1x1x1", "SHAPE_2x1x1")))
    a_scale, b_scale = linear.scales("outer")
    expected = linear.reference(a_scale, b_scale)
    errors = {}
    for algo_id in ids:
        caps = cublaslt.algo_caps(cublaslt.init_algo(handle, plan, algo_id))
        pairs = [(tile, stages) for tile in caps.tile_ids for stages in caps.stages_ids]
        for tile, stages, cluster in (
            (tile, stages, cluster) for tile, stages in pairs[:64] for cluster in clusters
        ):
            config = cublaslt.AlgoConfig(algo_id, tile, stages, cluster_shape_id=cluster)
            try:
                algo = cublaslt.build_algo(handle, plan, config)
            except GpuError:  # a cluster shape or tile this id refuses
                continue
            if cublaslt.check_algo(handle, plan, algo) is not None:
                c = run(runner_for(device, plan, config), linear, "fp16", a_scale, b_scale)
                errors[config.describe()] = error_of(c, "fp16", expected)
                break
    assert errors, f"AlgoCheck accepts no configuration of ids {ids}"
    limit = tolerance("fp16", fast_accum=False)
    wrong = {name: error for name, error in errors.items() if not error < limit}
    assert not wrong, f"wrong: {wrong}"


@pytest.mark.parametrize("scaling", ["tensor", "outer"])
def test_a_captured_graph_keeps_its_scale_pointers_and_reads_their_new_values(
    device, linear_of, scaling
):
    import cupy

    linear = linear_of(SHAPES[1])
    plan = plan_for(device, linear, "fp16", scaling, fast_accum=False)
    config, _ = cublaslt.heuristic_algos(device[1], plan, 1)[0]
    runner = runner_for(device, plan, config)
    a_scale, b_scale = linear.scales(scaling)
    scales = cupy.asarray(a_scale), cupy.asarray(b_scale)
    c, other = output(linear, "fp16"), output(linear, "fp16")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        runner(linear.x, linear.w, c, *scales)  # warm-up outside the graph, as the timer does
        stream.synchronize()
        stream.begin_capture()
        try:
            runner(linear.x, linear.w, c, *scales)
        finally:
            graph = stream.end_capture()
        scales[0][...] *= 2  # new values in the captured array
        # A call with other scale arrays in between sets other pointers on the shared descriptor.
        runner(linear.x, linear.w, other, cupy.full_like(scales[0], 100.0), scales[1])
        c.fill(cupy.nan)
        graph.launch(stream)
        stream.synchronize()
    expected = linear.reference(a_scale * np.float32(2), b_scale)
    assert error_of(c, "fp16", expected) < tolerance("fp16", fast_accum=False)
