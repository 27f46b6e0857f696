"""The project's streaming tensor-core GEMM for small and medium m on Hopper (cuda/tma_gemm.cu).

Y[m, n] = X[m, k] @ W[n, k]^T, fp16 or bf16, fp32 accumulation. Up to a few hundred tokens the
problem is bound by reading W (n x k) from HBM; the kernel streams W and X through a ring of
shared-memory stages with TMA and multiplies them with wgmma, splitting K over the blocks of a
thread-block cluster that add their partial tiles through distributed shared memory. A
`TmaConfig` is one point of its tuning space; `tma_configs(m, n, k)` lists the candidates worth
timing; `tma_gemm(x, w, y, config)` launches on CuPy's current stream.

Compute capability 9.0 only (wgmma and TMA need sm_90a). Kernels are compiled by NVRTC for
sm_90a (`nvrtc.load(..., arch_specific=True)`), one template instance per (dtype, rows, tokens,
stages, boxes); split-K and the L2 prefetch depth are launch parameters. `prepare` compiles what
a list of configs needs; call it before timing or CUDA-graph capture. The TMA descriptors
(CUtensorMap, made by the driver's cuTensorMapEncodeTiled) are kept per operand address, so a
call after the first for the same arrays costs a dictionary lookup.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.errors import GpuError, InvalidInputError
from ftbench.kernels import nvrtc
from ftbench.kernels.cublas import check_linear_operands

SOURCE_PATH = Path(__file__).parent / "cuda" / "tma_gemm.cu"
ROWS = (64, 128, 256)  # rows of W per block: 64 per consumer warpgroup
TOKENS = (16, 32, 64, 128, 256)  # tokens per block: the wgmma N
BOXES = (1, 2, 4)  # 64-element TMA boxes of K per stage
SPLITS = (1, 2, 3, 4, 5, 6, 7, 8)  # blocks of a cluster along K (8: the portable cluster limit)
BOX_K = 64
MAX_SHARED_BYTES = 227 * 1024  # a Hopper block's shared-memory limit
SHARED_PER_SM = 228 * 1024
MAX_TOKENS = 256  # the candidates go no further: past this the problem is compute-bound
PLANNING_SM_COUNT = 132  # H100 / H200
PREFETCH_STAGES = 8  # stages of W a block asks L2 for before waiting for the previous grid
C_TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}
_BARRIER_BYTES, _STAGE_PAD = 1024, 4  # as in tma_gemm.cu


@dataclass(frozen=True)
class TmaConfig:
    """One kernel configuration.

    rows:     rows of W (outputs) per block, 64 per consumer warpgroup: 64, 128 or 256.
    tokens:   tokens (rows of X) per block, the wgmma N: 16, 32, 64, 128 or 256.
    stages:   shared-memory stages in the ring (loads in flight).
    boxes:    64-element boxes of K per stage: 1, 2 or 4.
    split_k:  blocks of a cluster along K, 1 to 8; they add their partial tiles on chip.
    prefetch: stages of W each block asks L2 for before waiting for the previous kernel.
    """

    rows: int
    tokens: int
    stages: int
    boxes: int
    split_k: int = 1
    prefetch: int = PREFETCH_STAGES

    @property
    def kernel(self) -> str:
        return "tma"

    @property
    def name(self) -> str:
        return (
            f"tma_r{self.rows}_t{self.tokens}_st{self.stages}_b{self.boxes}_s{self.split_k}"
            f"_p{self.prefetch}"
        )

    @property
    def threads(self) -> int:
        return 2 * self.rows + 32

    @property
    def stage_k(self) -> int:
        return BOX_K * self.boxes

    @property
    def shared_bytes(self) -> int:
        """Dynamic shared memory of one block (tma_gemm.cu's TileLayout)."""
        ring = self.stages * self.boxes * (self.rows + self.tokens) * 2 * BOX_K
        staged = self.tokens * (self.rows + _STAGE_PAD) * 4
        return _BARRIER_BYTES + 1024 + max(ring, staged)

    def to_dict(self) -> dict[str, Any]:
        return {"kernel": self.kernel, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TmaConfig:
        """The inverse of `to_dict`; malformed data is an InvalidInputError."""
        fields = ("rows", "tokens", "stages", "boxes", "split_k", "prefetch")
        if not isinstance(data, dict) or set(data) != {"kernel", *fields}:
            raise InvalidInputError(f"a TMA GEMM config needs exactly the keys kernel, {fields}")
        if data["kernel"] != "tma" or not all(
            isinstance(data[f], int) and not isinstance(data[f], bool) for f in fields
        ):
            raise InvalidInputError(f"TMA GEMM config {data!r}: kernel 'tma', the rest integers")
        config = cls(**{f: data[f] for f in fields})
        error = structure_error(config)
        if error:
            raise InvalidInputError(f"TMA GEMM config {data!r}: {error}")
        return config


def structure_error(config: TmaConfig) -> str | None:
    """Why `config` is not a point of the tuning space, or None if it is."""
    if config.rows not in ROWS:
        return f"rows must be one of {ROWS}"
    if config.tokens not in TOKENS:
        return f"tokens must be one of {TOKENS}"
    if config.rows * config.tokens > 128 * 256:
        return "rows x tokens must be at most 128 x 256 (the accumulators must fit in registers)"
    if config.boxes not in BOXES:
        return f"boxes must be one of {BOXES}"
    if not 2 <= config.stages <= 32:
        return "stages must be 2 to 32"
    if config.split_k not in SPLITS:
        return f"split_k must be one of {SPLITS}"
    if not 0 <= config.prefetch <= 64:
        return "prefetch must be 0 to 64 stages"
    if config.shared_bytes > MAX_SHARED_BYTES:
        return f"needs {config.shared_bytes} bytes of shared memory; at most {MAX_SHARED_BYTES}"
    return None


def supports(m: int, n: int, k: int, dtype: str) -> str | None:
    """None if this kernel can compute Y[m, n] = X[m, k] @ W[n, k]^T in `dtype`, else why not."""
    if dtype not in C_TYPES:
        return f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}"
    if m < 1 or n < 1 or k < 1:
        return f"m = {m}, n = {n} and k = {k} must be positive"
    if k % 8:
        return f"k = {k} must be a multiple of 8 (TMA needs 16-byte row strides)"
    if max(m, n) >= 2**31 or k >= 2**31:
        return "dimensions must be below 2**31"
    return None


def k_per_split(config: TmaConfig, k: int) -> int:
    """Elements of K each block of a cluster covers (the last may cover fewer, or none)."""
    return config.stage_k * math.ceil(k / config.split_k / config.stage_k)


def config_error(config: TmaConfig, m: int, n: int, k: int) -> str | None:
    """Why `config` cannot run Y[m, n] = X[m, k] @ W[n, k]^T, or None if it can."""
    error = structure_error(config)
    if error:
        return error
    if config.split_k > 1 and (config.split_k - 1) * k_per_split(config, k) >= k:
        return f"split_k = {config.split_k} leaves a block of the cluster without K"
    return None


def _blocks(config: TmaConfig, m: int, n: int) -> int:
    return math.ceil(n / config.rows) * math.ceil(m / config.tokens) * config.split_k


def tma_configs(m: int, n: int, k: int, sm_count: int = PLANNING_SM_COUNT) -> list[TmaConfig]:
    """The configs worth timing for Y[m, n] = X[m, k] @ W[n, k]^T (m <= 256), all valid.

    Tokens: the smallest tile that holds m. Rows 64 to 256; for each, the split factors whose
    block count comes nearest to filling the GPU's SMs once or twice, and stage rings sized
    for two blocks per SM (about 100 KiB) or one (about 200 KiB).
    """
    if m < 1 or n < 1 or k < 1:
        raise InvalidInputError(f"m, n, k must be positive, got {m}, {n}, {k}")
    if m > MAX_TOKENS:
        return []
    tokens = next(t for t in TOKENS if t >= m)
    configs = []
    for rows in ROWS:
        for boxes in (1, 2):
            stage_bytes = boxes * (rows + tokens) * 2 * BOX_K
            rings = sorted(
                {max(2, min(32, budget // stage_bytes)) for budget in (100_000, 200_000)}
            )
            splits = _fill_splits(rows, tokens, boxes, m, n, k, sm_count)
            for stages in sorted(rings):
                for split in splits:
                    config = TmaConfig(rows, tokens, stages, boxes, split)
                    if config_error(config, m, n, k) is None:
                        configs.append(config)
    return configs


def _fill_splits(rows, tokens, boxes, m, n, k, sm_count) -> list[int]:
    """Split factors whose block count is closest to one or two blocks per SM."""
    tiles = math.ceil(n / rows) * math.ceil(m / tokens)
    chosen = set()
    for target in (sm_count, 2 * sm_count):
        usable = [s for s in SPLITS if s == 1 or k >= s * boxes * BOX_K * 2]
        chosen.add(min(usable, key=lambda s: (abs(tiles * s - target), s)))
    return sorted(chosen)


def kernel_name(config: TmaConfig, dtype: str) -> str:
    """The C++ name of the template instance that runs `config` (an NVRTC name expression)."""
    return (
        f"ftb_tma_gemm<{C_TYPES[dtype]}, {config.rows}, {config.tokens}, {config.stages}, "
        f"{config.boxes}>"
    )


def _check_gpu() -> None:
    import cupy

    capability = nvrtc.compute_capability(cupy.cuda.Device().id)
    if capability != 90:
        raise InvalidInputError(
            f"the TMA GEMM needs compute capability 9.0 (wgmma, sm_90a), not {capability / 10}"
        )


def prepare(configs: list[TmaConfig], dtype: str) -> float:
    """Compile what `configs` need for `dtype` on the current device in one NVRTC run and
    allow their shared memory. Returns the compile seconds (0 if all were loaded)."""
    if dtype not in C_TYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}")
    _check_gpu()
    names = list(dict.fromkeys(kernel_name(config, dtype) for config in configs))
    seconds = nvrtc.compile_seconds(SOURCE_PATH, names, arch_specific=True)
    kernels = nvrtc.load(SOURCE_PATH, names, arch_specific=True)
    for config in configs:
        nvrtc.set_max_dynamic_shared(kernels[kernel_name(config, dtype)], config.shared_bytes)
    return seconds


# CUtensorMap enums of the driver API.
_DATA_TYPES = {"float16": 6, "bfloat16": 9}
_SWIZZLE_128B, _L2_PROMOTION_256B = 3, 3


class TensorMap(ctypes.Structure):
    """CUtensorMap: 128 opaque bytes, passed to the kernel by value."""

    _fields_ = [("words", ctypes.c_uint64 * 16)]


@functools.cache
def _encoder() -> Any:
    function = nvrtc.driver().cuTensorMapEncodeTiled
    u32p, u64p = ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint64)
    function.argtypes = [
        ctypes.POINTER(TensorMap), ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p,
        u32p, u32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    function.restype = ctypes.c_int
    return function


_maps: dict[tuple[int, int, int, int, str], TensorMap] = {}
_MAX_MAPS = 4096


def tensor_map(pointer: int, rows: int, k: int, box_rows: int, dtype: str) -> TensorMap:
    """The TMA descriptor of a row-major [rows, k] matrix at `pointer`, read in boxes of
    box_rows x 64 with the 128-byte swizzle; kept per (pointer, shape, box, dtype)."""
    key = (pointer, rows, k, box_rows, dtype)
    found = _maps.get(key)
    if found is not None:
        return found
    descriptor = TensorMap()
    dims = (ctypes.c_uint64 * 2)(k, rows)
    strides = (ctypes.c_uint64 * 1)(2 * k)
    box = (ctypes.c_uint32 * 2)(BOX_K, box_rows)
    steps = (ctypes.c_uint32 * 2)(1, 1)
    status = _encoder()(
        ctypes.byref(descriptor), _DATA_TYPES[dtype], 2, ctypes.c_void_p(pointer), dims,
        strides, box, steps, 0, _SWIZZLE_128B, _L2_PROMOTION_256B, 0,
    )  # fmt: skip
    if status != 0:
        raise GpuError(f"cuTensorMapEncodeTiled failed with CUresult {status} for [{rows}, {k}]")
    if len(_maps) >= _MAX_MAPS:
        _maps.clear()
    _maps[key] = descriptor
    return descriptor


@functools.lru_cache(maxsize=4096)
def _plan(config: TmaConfig, m: int, n: int, k: int, dtype: str) -> tuple[str, tuple, int]:
    """(kernel name, grid, k per split) of one launch; refuses what cannot run."""
    reason = supports(m, n, k, dtype) or config_error(config, m, n, k)
    if reason:
        raise InvalidInputError(
            f"tma_gemm {config.name} for m={m}, n={n}, k={k} ({dtype}): {reason}"
        )
    grid = (math.ceil(n / config.rows), math.ceil(m / config.tokens), config.split_k)
    return kernel_name(config, dtype), grid, k_per_split(config, k)


def tma_gemm(x: Any, w: Any, y: Any, config: TmaConfig, *, pdl: bool | None = None) -> None:
    """Y = X @ W^T (x: [m, k], w: [n, k], y: [m, n], CuPy, fp16 or bf16) on the current stream.

    Needs compute capability 9.0, k % 8 == 0 and 16-byte aligned x, w and y. Allocates nothing
    once `prepare` (or an earlier call) has compiled the kernel, so it can be captured in a
    CUDA graph. pdl: as in `nvrtc.launch` (None: programmatic dependent launch in graph capture).
    """
    m, n, k = check_linear_operands(x, w, y)
    dtype = "float16" if str(x.dtype) == "float16" else "bfloat16"
    name, grid, split_elements = _plan(config, m, n, k, dtype)
    if x.data.ptr % 16 or w.data.ptr % 16 or y.data.ptr % 16:
        raise InvalidInputError("tma_gemm: x, w and y must start on 16-byte boundaries")
    kernel = nvrtc.load(SOURCE_PATH, [name], arch_specific=True)[name]
    nvrtc.set_max_dynamic_shared(kernel, config.shared_bytes)
    arguments = [
        tensor_map(w.data.ptr, n, k, config.rows, dtype),
        tensor_map(x.data.ptr, m, k, config.tokens, dtype),
        y, np.int32(m), np.int32(n), np.int32(k), np.int32(split_elements),
        np.int32(config.prefetch),
    ]  # fmt: skip
    nvrtc.launch(
        kernel, grid, (config.threads, 1, 1), arguments, shared_mem=config.shared_bytes,
        pdl=pdl, cluster=(1, 1, config.split_k),
    )  # fmt: skip
