"""cuBLASLt through nvmath-python's binding: descriptors and layouts, algorithms, the matmul call.

A cuBLASLt algorithm is an `AlgoConfig`: the algorithm id and every configuration attribute of
`cublasLtMatmulAlgo_t` (the lowercased `CUBLASLT_ALGO_CONFIG_*` names, library enum values).
`cublasLtMatmulAlgoInit` plus those attributes rebuild the algorithm byte for byte, in another
process, without the heuristic (`build_algo`; `decode_algo` reads one back). `check_algo`
(AlgoCheck), `heuristic_algos` (AlgoGetHeuristic), `algo_ids` (AlgoGetIds) and `algo_caps`
(AlgoCapGetAttribute) are the library's questions about algorithms.

Arguments are cuBLASLt's own: column-major `MatrixSpec` layouts in its operand order and CUDA
data types (`matmul_plan`). `gemm.backends.cublaslt` turns a row-major `GemmProblem` into them
and decides which algorithms to try.

`Matmul` calls `cublasLtMatmul` through the binding (a thin Cython call that works during
CUDA-graph capture) on CuPy's current stream, with descriptors made once per problem, a 32 MiB
workspace per device and scratch slot, and host fp32 alpha/beta. It belongs to the device that
was current when it was made; operands must be aligned as CuPy allocates them (256 bytes).

FP8. A plan made with `Fp8Settings` multiplies E4M3 A and B (CUDA_R_8F_E4M3) in fp32 and writes
an fp16, bf16 or fp32 D, scaled by fp32 factors in device memory: D = scale_A * scale_B * (A @ B)
for "tensor" scales (one per operand, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, the library's
default mode) and D[i, j] = scale_A[i] * scale_B[j] * (A @ B)[i, j] for "outer" scales (a vector
along each operand's outer dimension, OUTER_VEC_32F on both A and B, as the library requires;
cuBLASLt 12.9 and later). `Fp8Settings.fast_accum` is CUBLASLT_MATMUL_DESC_FAST_ACCUM: partial
sums stay in the tensor cores' reduced-precision accumulator instead of being promoted to fp32
registers periodically, faster and less exact; it is part of the descriptor, so a search varies
it by making a plan for each value. cuBLASLt's FP8 rules, checked when the plan is made: only
the "TN" format (A transposed, B not; ftbench's row-major linear layer Y = X @ W^T, layout "NT",
is exactly that: cuBLASLt's A is W stored [n, k], read column-major as k x n and transposed),
each matrix's contiguous dimension and leading dimension a multiple of 16 bytes (so k % 16 == 0,
and n % 8 == 0 for a 2-byte output), compute type fp32, scale type fp32. The scales are passed
to each call of `ScaledMatmul` (see there), not to the plan.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ftbench.dtypes import DTYPES, numpy_name
from ftbench.errors import GpuError, InvalidInputError, NoGpuError
from ftbench.kernels.cublas import CUBLAS_COMPUTE_32F, CUBLAS_OP, WORKSPACE_BYTES
from ftbench.kernels.streams import scratch_slot

CUDA_R_32F = 0
CUDA_R_8F_E4M3 = DTYPES["fp8"].cuda_data_type
# Bytes of an element of each cudaDataType_t ftbench names (for cuBLASLt's 16-byte rules).
_ELEMENT_BYTES = {row.cuda_data_type: row.bytes for row in DTYPES.values()}
# The D (= C) types an FP8 plan writes: an 8-bit D would also need a D scale, not set here.
FP8_OUTPUT_TYPES = tuple(DTYPES[name].cuda_data_type for name in ("fp16", "bf16", "fp32"))
# cuBLASLt's vectors of fp32 scales along M and N (OUTER_VEC_32F) on Hopper came with cuBLAS 12.9
# (cublasLtGetVersion() is major * 10000 + minor * 100 + patch).
OUTER_SCALES_SINCE = 120900
# ftbench's FP8 scaling schemes and cuBLASLt's `cublasLtMatmulMatrixScale_t` of each; "tensor"
# is the library's default mode, so its plans set no mode and run on any FP8 cuBLASLt.
SCALE_MODES = {"tensor": "SCALAR_32F", "outer": "OUTER_VEC_32F"}

_ONE = np.array(1.0, dtype=np.float32)
_ZERO = np.array(0.0, dtype=np.float32)


@dataclass(frozen=True)
class AlgoConfig:
    """One cuBLASLt algorithm: its id and every `CUBLASLT_ALGO_CONFIG_*` attribute (enum values)."""

    id: int
    tile_id: int = 0
    stages_id: int = 0
    splitk_num: int = 1
    reduction_scheme: int = 0
    cta_swizzling: int = 0
    custom_option: int = 0
    inner_shape_id: int = 0
    cluster_shape_id: int = 0

    def to_config(self) -> dict[str, int]:
        """The JSON-ready candidate config."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AlgoConfig:
        """Inverse of `to_config`; a missing, unknown or non-integer field is an error."""
        names = [f.name for f in fields(cls)]
        missing = sorted(set(names) - config.keys())
        unknown = sorted(config.keys() - set(names))
        if missing or unknown:
            raise InvalidInputError(
                f"cublaslt config {config!r}: missing {missing or 'nothing'}, "
                f"unknown {unknown or 'nothing'}"
            )
        bad = [n for n in names if isinstance(config[n], bool) or not isinstance(config[n], int)]
        if bad:
            raise InvalidInputError(
                f"cublaslt config {config!r}: {', '.join(bad)} must be integers"
            )
        return cls(**{name: config[name] for name in names})

    def describe(self) -> str:
        """A short display name, e.g. "algo 66 tile 64x8 stages 64x6 split-k 4 (INPLACE)"."""
        parts = [
            f"algo {self.id}",
            f"tile {enum_label('MatmulTile', self.tile_id)}",
            f"stages {enum_label('MatmulStages', self.stages_id)}",
        ]
        if self.splitk_num != 1:
            scheme = enum_label("ReductionScheme", self.reduction_scheme)
            parts.append(f"split-k {self.splitk_num} ({scheme})")
        if self.cta_swizzling:
            parts.append(f"swizzle {self.cta_swizzling}")
        if self.custom_option:
            parts.append(f"custom {self.custom_option}")
        if self.inner_shape_id:
            parts.append(f"inner {enum_label('MatmulInnerShape', self.inner_shape_id)}")
        if self.cluster_shape_id:
            parts.append(f"cluster {enum_label('ClusterShape', self.cluster_shape_id)}")
        return " ".join(parts)


CONFIG_FIELDS = tuple(f.name for f in fields(AlgoConfig))


@dataclass(frozen=True)
class AlgoCaps:
    """What `cublasLtMatmulAlgoCapGetAttribute` says an algorithm id can be configured with."""

    tile_ids: tuple[int, ...]
    stages_ids: tuple[int, ...]
    splitk_support: bool
    reduction_scheme_mask: int
    cta_swizzling_support: bool
    custom_option_max: int
    strided_batch_support: bool


@dataclass(frozen=True)
class MatrixSpec:
    """One cuBLASLt matrix layout: column-major rows x cols, leading dimension, batch stride."""

    rows: int
    cols: int
    ld: int
    batch_stride: int


# --- names of the library's enum values (nvmath's enums; "#value" without nvmath) ---


@functools.cache
def _enum_labels(enum_name: str) -> dict[int, str]:
    try:
        from nvmath.bindings import cublasLt
    except Exception:
        return {}
    prefixes = ("TILE_", "STAGES_", "SHAPE_")
    labels = {}
    for member in getattr(cublasLt, enum_name):
        label = member.name
        for prefix in prefixes:
            label = label.removeprefix(prefix)
        labels[int(member)] = label
    return labels


def enum_label(enum_name: str, value: int) -> str:
    """The name of `value` in nvmath's cuBLASLt enum `enum_name` ("64x8" for a `MatmulTile`),
    without its TILE_/STAGES_/SHAPE_ prefix; "#value" when unknown or without nvmath."""
    return _enum_labels(enum_name).get(value, f"#{value}")


# --- the library (GPU side) ---


def _library():
    """nvmath's cuBLASLt binding, or NoGpuError saying what is missing."""
    try:
        from nvmath.bindings import cublasLt
    except Exception as exc:
        raise NoGpuError(
            f"the cublaslt backend needs nvmath-python (pip install nvmath-python): {exc}"
        ) from exc
    return cublasLt


def library_version() -> int:
    """`cublasLtGetVersion()` of the loaded library: major * 10000 + minor * 100 + patch."""
    return int(_library().get_version())


def unavailable_reason() -> str | None:
    """Why cuBLASLt cannot run here (nvmath-python, CuPy or a device missing), or None."""
    try:
        from nvmath.bindings import cublasLt
    except Exception as exc:
        return f"nvmath-python is not installed or does not load ({exc})"
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
        cublasLt.get_version()
    except Exception as exc:
        return f"cuBLASLt is not usable here: {exc}"
    return None


@functools.cache
def device_handle(device_id: int) -> int:
    """One cuBLASLt handle per device, made once."""
    import cupy

    with cupy.cuda.Device(device_id):
        return _library().create()


@functools.cache
def _workspace(device_id: int, slot: int) -> Any:
    """A 32 MiB workspace per device and scratch slot (`kernels.streams.scratch_slot`) for
    cuBLASLt alone (cuBLAS has its own)."""
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.empty(WORKSPACE_BYTES, dtype=cupy.uint8)


def _set(setter: Callable, dtype_of: Callable, target: int, attribute: Any, value: int) -> None:
    buffer = np.array(value, dtype=dtype_of(attribute))
    setter(target, attribute, buffer.ctypes.data, buffer.nbytes)


def _get(getter: Callable, dtype_of: Callable, target: int, attribute: Any) -> int:
    buffer = np.zeros(1, dtype=dtype_of(attribute))
    written = np.zeros(1, dtype=np.uint64)
    getter(target, attribute, buffer.ctypes.data, buffer.nbytes, written.ctypes.data)
    return int(buffer[0])


@dataclass(frozen=True)
class Fp8Settings:
    """What an FP8 plan's descriptor says beyond the types: the scaling scheme of A and B
    ("tensor" or "outer", see the module docstring) and fast accumulation on or off."""

    scaling: str
    fast_accum: bool

    def __post_init__(self) -> None:
        if self.scaling not in SCALE_MODES:
            raise InvalidInputError(
                f"FP8 scaling {self.scaling!r} is not one of {', '.join(SCALE_MODES)}"
            )
        if not isinstance(self.fast_accum, bool):
            raise InvalidInputError(f"fast_accum must be true or false, got {self.fast_accum!r}")


@dataclass(frozen=True)
class MatmulPlan:
    """The matmul descriptor and matrix layouts of one problem (host objects, made once).

    An FP8 plan has its `fp8` settings and `scale_lengths`: how many fp32 scales cuBLASLt reads
    for its A and for its B (1 and 1 for "tensor" scales, M and N for "outer" ones); an
    outer-scaled one holds the device vector its descriptor points at until a call.
    """

    desc: int
    a_layout: int
    b_layout: int
    c_layout: int
    types: tuple[int, int, int, int, int, int]  # compute, scale, A, B, C, D as cuBLASLt sees them
    fp8: Fp8Settings | None = None
    scale_lengths: tuple[int, int] | None = None
    scale_placeholder: Any = None  # the ones an outer-scaled plan points at (see matmul_plan)


def _version_text(version: int) -> str:
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


def fp8_refusal(
    transa: str,
    transb: str,
    layouts: tuple[MatrixSpec, MatrixSpec, MatrixSpec],
    data_types: tuple[int, int, int],
    batch_count: int,
    compute_type: int,
    settings: Fp8Settings,
    version: int,
) -> str | None:
    """Why cuBLASLt (version `version`, as `cublasLtGetVersion` gives it) cannot run this FP8
    matmul (arguments as `matmul_plan`'s), or None. The rules are the cuBLASLt documentation's
    (`cublasLtMatmul`, "8-bit floating point"): see the module docstring."""
    a_type, b_type, c_type = data_types
    if (a_type, b_type) != (CUDA_R_8F_E4M3, CUDA_R_8F_E4M3):
        return (
            f"A and B must both be E4M3 (CUDA_R_8F_E4M3 = {CUDA_R_8F_E4M3}), got {a_type}, {b_type}"
        )
    if c_type not in FP8_OUTPUT_TYPES:
        return (
            f"the output must be fp16, bf16 or fp32 (CUDA types {FP8_OUTPUT_TYPES}), got {c_type}"
        )
    if compute_type != CUBLAS_COMPUTE_32F:
        return f"the compute type must be fp32 (CUBLAS_COMPUTE_32F), got {compute_type}"
    if (transa, transb) != ("T", "N"):
        return (
            f"only the TN format is supported (A transposed, B not: a row-major NT problem "
            f"such as a linear layer), got {transa}{transb}"
        )
    for name, spec, dtype in zip("ABC", layouts, data_types, strict=True):
        size = _ELEMENT_BYTES[dtype]
        if spec.rows * size % 16 or spec.ld * size % 16:
            return (
                f"cuBLASLt's {name} must have rows ({spec.rows}) and a leading dimension "
                f"({spec.ld}) that are multiples of 16 bytes ({16 // size} elements)"
            )
    if settings.scaling == "outer" and batch_count > 1:
        return "outer-vector scales are defined for one matrix, not a strided batch"
    if settings.scaling == "outer" and version < OUTER_SCALES_SINCE:
        return (
            f"outer-vector scales (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) need cuBLASLt "
            f"{_version_text(OUTER_SCALES_SINCE)} or later; this one is {_version_text(version)}"
        )
    return None


def matmul_plan(
    transa: str,
    transb: str,
    layouts: tuple[MatrixSpec, MatrixSpec, MatrixSpec],
    data_types: tuple[int, int, int],
    batch_count: int,
    compute_type: int,
    fp8: Fp8Settings | None = None,
) -> MatmulPlan:
    """The descriptor of D = op(A) @ op(B) (D is C; "N"/"T" operations) with fp32 scaling, and
    the layouts of A, B and C: `layouts` and their CUDA `data_types`, in cuBLASLt's order,
    strided over `batch_count` matrices when it is above 1.

    E4M3 operands need `fp8` settings (and only they take them): the descriptor then has
    FAST_ACCUM, and for "outer" scales A_SCALE_MODE = B_SCALE_MODE = OUTER_VEC_32F. A problem
    cuBLASLt's FP8 rules refuse is an InvalidInputError saying which rule (`fp8_refusal`).
    """
    lt = _library()
    if (fp8 is not None) != (CUDA_R_8F_E4M3 in data_types[:2]):
        raise InvalidInputError(
            "a cuBLASLt plan takes FP8 settings exactly when A and B are E4M3, got types "
            f"{data_types[:2]} with settings {fp8}"
        )
    scale_lengths = None
    if fp8 is not None:
        reason = fp8_refusal(
            transa, transb, layouts, data_types, batch_count, compute_type, fp8, library_version()
        )
        if reason is not None:
            raise InvalidInputError(f"cuBLASLt cannot run this FP8 matmul: {reason}")
        # D is M x N (cuBLASLt's C layout): outer scales run along its rows (A) and columns (B).
        scale_lengths = (1, 1) if fp8.scaling == "tensor" else (layouts[2].rows, layouts[2].cols)
    desc = lt.matmul_desc_create(compute_type, CUDA_R_32F)
    set_desc = functools.partial(
        _set, lt.matmul_desc_set_attribute, lt.get_matmul_desc_attribute_dtype, desc
    )
    set_desc(lt.MatmulDescAttribute.TRANSA, CUBLAS_OP[transa])
    set_desc(lt.MatmulDescAttribute.TRANSB, CUBLAS_OP[transb])
    if fp8 is not None:
        set_desc(lt.MatmulDescAttribute.FAST_ACCUM, int(fp8.fast_accum))
        if fp8.scaling != "tensor":
            mode = lt.MatmulMatrixScale[SCALE_MODES[fp8.scaling]]
            set_desc(lt.MatmulDescAttribute.A_SCALE_MODE, mode)
            set_desc(lt.MatmulDescAttribute.B_SCALE_MODE, mode)
            # With null outer-vector scale pointers the heuristic offers no algorithm and
            # AlgoCheck accepts none (an H100, cuBLASLt 13.1): the plan points both at a vector
            # of ones of its own until a ScaledMatmul call points them at the real scales.
            placeholder = _placeholder_scales(max(scale_lengths))
            set_desc(lt.MatmulDescAttribute.A_SCALE_POINTER, placeholder.data.ptr)
            set_desc(lt.MatmulDescAttribute.B_SCALE_POINTER, placeholder.data.ptr)
    created = []
    for spec, dtype in zip(layouts, data_types, strict=True):
        layout = lt.matrix_layout_create(dtype, spec.rows, spec.cols, spec.ld)
        if batch_count > 1:
            set_layout = functools.partial(
                _set, lt.matrix_layout_set_attribute, lt.get_matrix_layout_attribute_dtype, layout
            )
            set_layout(lt.MatrixLayoutAttribute.BATCH_COUNT, batch_count)
            set_layout(lt.MatrixLayoutAttribute.STRIDED_BATCH_OFFSET, spec.batch_stride)
        created.append(layout)
    types = (compute_type, CUDA_R_32F, *data_types, data_types[2])
    return MatmulPlan(
        desc, *created, types=types, fp8=fp8, scale_lengths=scale_lengths,
        scale_placeholder=placeholder if fp8 is not None and fp8.scaling == "outer" else None,
    )  # fmt: skip


def _placeholder_scales(length: int) -> Any:
    """`length` fp32 ones on the current device: an outer-scaled plan's scales until its first
    call (see `matmul_plan`)."""
    import cupy

    return cupy.ones(length, dtype=cupy.float32)


def _algo_buffer() -> np.ndarray:
    return np.zeros(_library().matmul_algo_dtype.itemsize // 8, dtype=np.uint64)


def init_algo(handle: int, plan: MatmulPlan, algo_id: int) -> np.ndarray:
    """The `cublasLtMatmulAlgo_t` of algorithm `algo_id` with its default attributes."""
    algo = _algo_buffer()
    _library().matmul_algo_init(handle, *plan.types, algo_id, algo.ctypes.data)
    return algo


def build_algo(handle: int, plan: MatmulPlan, config: AlgoConfig) -> np.ndarray:
    """The `cublasLtMatmulAlgo_t` of `config`: AlgoInit, then every configuration attribute;
    GpuError when the library refuses one."""
    lt = _library()
    try:
        algo = init_algo(handle, plan, config.id)
        for name in CONFIG_FIELDS[1:]:
            attribute = lt.MatmulAlgoConfigAttribute[name.upper()]
            _set(
                lt.matmul_algo_config_set_attribute,
                lt.get_matmul_algo_config_attribute_dtype,
                algo.ctypes.data,
                attribute,
                getattr(config, name),
            )
    except lt.cuBLASLtError as exc:
        raise GpuError(f"cuBLASLt refused {config.describe()}: {exc}") from exc
    return algo


def decode_algo(algo: np.ndarray) -> AlgoConfig:
    """The `AlgoConfig` of a `cublasLtMatmulAlgo_t` (read back with ConfigGetAttribute)."""
    lt = _library()
    values = {
        name: _get(
            lt.matmul_algo_config_get_attribute,
            lt.get_matmul_algo_config_attribute_dtype,
            algo.ctypes.data,
            lt.MatmulAlgoConfigAttribute[name.upper()],
        )
        for name in CONFIG_FIELDS
    }
    return AlgoConfig(**values)


def check_algo(handle: int, plan: MatmulPlan, algo: np.ndarray) -> int | None:
    """Workspace bytes `algo` needs for the problem, or None if AlgoCheck refuses it or it needs
    more than the 32 MiB workspace."""
    lt = _library()
    result = np.zeros(1, dtype=lt.matmul_heuristic_result_dtype)
    try:
        lt.matmul_algo_check(
            handle, plan.desc, plan.a_layout, plan.b_layout, plan.c_layout, plan.c_layout,
            algo.ctypes.data, result.ctypes.data,
        )  # fmt: skip
    except lt.cuBLASLtError:
        return None
    workspace = int(result["workspace_size"][0])
    return workspace if workspace <= WORKSPACE_BYTES else None


def heuristic_algos(handle: int, plan: MatmulPlan, count: int) -> list[tuple[AlgoConfig, bytes]]:
    """The heuristic's ranked results with at most 32 MiB of workspace, up to `count`: (decoded
    config, the raw `cublasLtMatmulAlgo_t` bytes); none where the heuristic fails."""
    lt = _library()
    preference = lt.matmul_preference_create()
    results = np.zeros(count, dtype=lt.matmul_heuristic_result_dtype)
    returned = np.zeros(1, dtype=np.int32)
    try:
        _set(
            lt.matmul_preference_set_attribute,
            lt.get_matmul_preference_attribute_dtype,
            preference,
            lt.MatmulPreferenceAttribute.MAX_WORKSPACE_BYTES,
            WORKSPACE_BYTES,
        )
        lt.matmul_algo_get_heuristic(
            handle, plan.desc, plan.a_layout, plan.b_layout, plan.c_layout, plan.c_layout,
            preference, count, results.ctypes.data, returned.ctypes.data,
        )  # fmt: skip
    except lt.cuBLASLtError:
        return []
    finally:
        lt.matmul_preference_destroy(preference)
    out = []
    for result in results[: int(returned[0])]:
        if int(result["state"]) != 0:
            continue
        raw = result["algo"].tobytes()
        out.append((decode_algo(np.frombuffer(raw, dtype=np.uint64).copy()), raw))
    return out


def algo_ids(handle: int, plan: MatmulPlan, max_count: int) -> list[int]:
    """The algorithm ids the library lists for the plan's types (at most `max_count`)."""
    return _library().matmul_algo_get_ids(handle, *plan.types, max_count)


def cluster_shape_id(name: str) -> int:
    """The `cublasLtClusterShape_t` value of `name` ("SHAPE_2x1x1")."""
    return int(_library().ClusterShape[name])


def _cap(algo: np.ndarray, attribute: Any) -> int:
    lt = _library()
    return _get(
        lt.matmul_algo_cap_get_attribute,
        lt.get_matmul_algo_cap_attribute_dtype,
        algo.ctypes.data,
        attribute,
    )


def _cap_ids(algo: np.ndarray, attribute: Any) -> tuple[int, ...]:
    """A variable-length capability (tile or stages ids): ask its size, then read it."""
    lt = _library()
    dtype = np.dtype(lt.get_matmul_algo_cap_attribute_dtype(attribute))
    size = np.zeros(1, dtype=np.uint64)
    lt.matmul_algo_cap_get_attribute(algo.ctypes.data, attribute, 0, 0, size.ctypes.data)
    ids = np.zeros(int(size[0]) // dtype.itemsize, dtype=dtype)
    if ids.size:
        lt.matmul_algo_cap_get_attribute(
            algo.ctypes.data, attribute, ids.ctypes.data, ids.nbytes, size.ctypes.data
        )
    return tuple(int(value) for value in ids)


def algo_caps(algo: np.ndarray) -> AlgoCaps:
    """The capabilities of an initialised algorithm."""
    cap = _library().MatmulAlgoCapAttribute
    return AlgoCaps(
        tile_ids=_cap_ids(algo, cap.TILE_IDS) or (0,),
        stages_ids=_cap_ids(algo, cap.STAGES_IDS) or (0,),
        splitk_support=bool(_cap(algo, cap.SPLITK_SUPPORT)),
        reduction_scheme_mask=_cap(algo, cap.REDUCTION_SCHEME_MASK),
        cta_swizzling_support=bool(_cap(algo, cap.CTA_SWIZZLING_SUPPORT)),
        custom_option_max=_cap(algo, cap.CUSTOM_OPTION_MAX),
        strided_batch_support=bool(_cap(algo, cap.STRIDED_BATCH_SUPPORT)),
    )


class Matmul:
    """`matmul(a, b, c)`: C = op(A) @ op(B) through cublasLtMatmul with one fixed algorithm.

    `algo` is `config` built for `plan` (`build_algo`) and accepted by `check_algo`, which said
    it needs `workspace_bytes`; `a`, `b`, `c` are our row-major operands (`GemmProblem` terms).
    An FP8 plan's matmul is a `ScaledMatmul`.
    """

    __slots__ = ("config", "algo", "workspace_bytes", "_arguments", "_matmul", "_stream", "_device")

    def __init__(
        self,
        device_id: int,
        plan: MatmulPlan,
        config: AlgoConfig,
        algo: np.ndarray,
        workspace_bytes: int,
    ):
        import cupy

        if (plan.fp8 is not None) != isinstance(self, ScaledMatmul):
            raise InvalidInputError(
                "an FP8 plan runs as a ScaledMatmul (its scales are given to each call), any "
                "other plan as a Matmul"
            )
        self.config, self.algo, self.workspace_bytes = config, algo, workspace_bytes
        self._matmul = _library().matmul
        self._stream = cupy.cuda.get_current_stream
        self._device = device_id
        self._arguments = (
            device_handle(device_id), plan.desc, _ONE.ctypes.data, plan.a_layout, plan.b_layout,
            _ZERO.ctypes.data, plan.c_layout, algo.ctypes.data,
        )  # fmt: skip

    def __call__(self, a: Any, b: Any, c: Any) -> None:
        handle, desc, alpha, a_layout, b_layout, beta, c_layout, algo = self._arguments
        stream = self._stream().ptr
        workspace = _workspace(self._device, scratch_slot())
        # cuBLASLt's A is our B and its B our A (see GemmProblem.cublas_call); D is C.
        out = c.data.ptr
        self._matmul(
            handle, desc, alpha, b.data.ptr, a_layout, a.data.ptr, b_layout, beta, out, c_layout,
            out, c_layout, algo, workspace.data.ptr, workspace.nbytes, stream,
        )  # fmt: skip


class ScaledMatmul(Matmul):
    """`matmul(a, b, c, a_scale, b_scale)`: an FP8 plan's matmul, in our row-major terms
    C[i, j] = a_scale[i] * b_scale[j] * (A @ op(B))[i, j], the fp32 scales on the device.

    With "tensor" scales each is one value (for every i, j); with "outer" ones `a_scale` has one
    per row of A (m: per token) and `b_scale` one per row of B as stored [n, k] (n: per output
    channel of a linear layer). cuBLASLt's A is our B, so its A_SCALE_POINTER is `b_scale` and
    its B_SCALE_POINTER `a_scale`.

    The two pointers are written into the plan's descriptor (a host-side write, no stream
    work) right before each cublasLtMatmul, which reads them when it enqueues the kernel. So a
    call is safe inside CUDA-graph capture, and the graph keeps the scale pointers of its
    capture, as it keeps A, B and C: to replay with other scales, write them into the same
    arrays. Runners of one problem share its descriptor, which is why every call sets both.
    """

    __slots__ = ("_scale_pointers", "_scale_targets", "_set_attribute")

    def __init__(
        self,
        device_id: int,
        plan: MatmulPlan,
        config: AlgoConfig,
        algo: np.ndarray,
        workspace_bytes: int,
    ):
        super().__init__(device_id, plan, config, algo, workspace_bytes)
        lt = _library()
        attribute = lt.MatmulDescAttribute
        pointer_dtype = lt.get_matmul_desc_attribute_dtype(attribute.A_SCALE_POINTER)
        self._scale_pointers = np.zeros(2, dtype=pointer_dtype)  # cuBLASLt's A, then its B
        slot_bytes = self._scale_pointers.itemsize
        address = self._scale_pointers.ctypes.data
        lt_a_length, lt_b_length = plan.scale_lengths
        # (descriptor attribute, host address of its pointer, our operand, scales expected)
        self._scale_targets = (
            (attribute.A_SCALE_POINTER, address, "b_scale", lt_a_length),
            (attribute.B_SCALE_POINTER, address + slot_bytes, "a_scale", lt_b_length),
        )
        self._set_attribute = lt.matmul_desc_set_attribute

    def __call__(self, a: Any, b: Any, c: Any, a_scale: Any, b_scale: Any) -> None:
        self._point(0, b_scale)  # cuBLASLt's A scale is our B's
        self._point(1, a_scale)
        super().__call__(a, b, c)

    def _point(self, slot: int, scale: Any) -> None:
        """Set the descriptor's scale pointer of cuBLASLt's operand `slot` (0: A, 1: B)."""
        attribute, address, name, length = self._scale_targets[slot]
        if scale.size != length or numpy_name(scale) != "float32":
            raise InvalidInputError(
                f"{name} must be {length} float32 value(s) on the device, got shape "
                f"{scale.shape} of {numpy_name(scale)}"
            )
        if not scale.flags.c_contiguous:
            raise InvalidInputError(f"{name} must be contiguous")
        self._scale_pointers[slot] = scale.data.ptr
        self._set_attribute(self._arguments[1], attribute, address, self._scale_pointers.itemsize)
