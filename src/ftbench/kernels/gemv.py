"""The project's decode GEMMs: Y[m, n] = X[m, k] @ W[n, k]^T for m = 1..16 (kernels/cuda/gemv.cu).

Memory-bound: W (n x k, fp16 or bf16) is read once from HBM and everything else is small, so a
kernel is as fast as it keeps HBM busy. A `GemvConfig` is one point of the tuning space (which
kernel, rows per block, warps, loads in flight, split-K); `gemv_configs(m, n, k)` lists the
candidates worth timing for a shape, `supports` says whether a problem can run at all, and
`gemv(x, w, y, config)` launches on CuPy's current stream.

Kernels are compiled at run time by NVRTC for the running GPU, one template instance per
(kernel, dtype, m, rows, warps, row_bytes, unroll); split-K is a launch parameter. `prepare`
compiles the instances a list of configs needs in one NVRTC run and makes the per-device split-K
workspace: call it before timing or CUDA-graph capture (compiling and allocating cannot be
captured).

Split-K uses a workspace shared by the launches of one scratch slot (`streams.scratch_slot`: the
branch stream, or any other stream) of a device, like cuBLAS's.

Launches go through the driver's cuLaunchKernelEx, so that `gemv(..., pdl=True)` can ask for
programmatic dependent launch (Hopper and newer): the kernel then starts while the previous
kernel on the stream drains, prefetches its first piece of W into L2 and waits for that kernel
before it reads x or writes anything.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import c_types, numpy_name
from ftbench.errors import InvalidInputError
from ftbench.kernels import nvrtc
from ftbench.kernels.cublas import check_linear_operands
from ftbench.kernels.streams import scratch_slot

SOURCE_PATH = Path(__file__).parent / "cuda" / "gemv.cu"
KERNELS = ("mma", "fma")
MAX_M = 16
MAX_FMA_M = 4
MMA_ROWS = (16, 32, 64)
FMA_ROWS = (1, 2, 4, 8)
MMA_ROW_BYTES = (64, 128, 256, 512)
FMA_ROW_BYTES = 512
WARPS = (1, 2, 4, 8, 16)
UNROLLS = (1, 2, 4, 8)
MAX_W_LOADS = 16  # 16-byte loads of W per thread in flight: they live in registers
SHARED_BYTES = 48 * 1024  # static shared memory of one block
K_ALIGN = 64  # each split's K range starts on a 128-byte boundary (fp16/bf16)
PARTIAL_FLOATS = 8 * 2**20  # split-K partial sums: split_k * m * n fp32 values at most
COUNTERS = 2**16  # split-K arrival counters: one per block of rows
PLANNING_SM_COUNT = 132  # H100 / H200
TARGET_WARPS_PER_SM = 16  # split K until a launch has this many warps per SM (the data said so)
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
C_TYPES = c_types("fp16", "bf16")
W_BYTES = 2  # bytes of one element of W (fp16 or bf16)


@dataclass(frozen=True)
class GemvConfig:
    """One kernel configuration.

    kernel:    "mma" (tensor cores, any m) or "fma" (CUDA cores, m <= 4).
    rows:      rows of W (outputs) per block: 16, 32 or 64 for mma, 1..8 for fma.
    warps:     warps per block; they split the block's K range and add up in shared memory.
    unroll:    steps of K each warp loads at once (all its loads of a step are in flight
               together); a step is row_bytes of every row of the block (row_bytes / 2 elements
               of K for fp16/bf16 weights, row_bytes for the 8-bit ones of `weight_only`).
    row_bytes: contiguous bytes of one W row that one warp load instruction reads: 64, 128, 256
               or 512 for mma (wider pieces stream better but need a register transpose), 512
               for fma.
    split_k:   blocks along K; the last block of a row range to finish adds their partial sums.
    """

    kernel: str
    rows: int
    warps: int
    unroll: int
    row_bytes: int
    split_k: int = 1

    @property
    def name(self) -> str:
        return (
            f"{self.kernel}_r{self.rows}_w{self.warps}_u{self.unroll}_b{self.row_bytes}"
            f"_s{self.split_k}"
        )

    @property
    def threads(self) -> int:
        return 32 * self.warps

    def chunk_k(self, weight_bytes: int) -> int:
        """Elements of K one warp covers per loop iteration, for weights of `weight_bytes`."""
        return self.row_bytes // weight_bytes * self.unroll

    @property
    def w_loads(self) -> int:
        """16-byte loads of W each thread has in flight per loop iteration."""
        if self.kernel == "mma":
            return self.rows // 16 * self.row_bytes // 32 * self.unroll
        return self.rows * self.unroll

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemvConfig:
        """The inverse of `to_dict`; malformed data is an InvalidInputError."""
        fields = ("kernel", "rows", "warps", "unroll", "row_bytes", "split_k")
        if not isinstance(data, dict) or set(data) != set(fields):
            raise InvalidInputError(f"a GEMV config needs exactly the keys {fields}, got {data!r}")
        if not isinstance(data["kernel"], str) or not all(
            isinstance(data[f], int) and not isinstance(data[f], bool) for f in fields[1:]
        ):
            raise InvalidInputError(f"GEMV config {data!r}: kernel is a string, the rest integers")
        config = cls(**data)
        error = structure_error(config)
        if error:
            raise InvalidInputError(f"GEMV config {data!r}: {error}")
        return config


def structure_error(config: GemvConfig) -> str | None:
    """Why `config` is not a point of the tuning space, or None if it is."""
    if config.kernel not in KERNELS:
        return f"kernel must be one of {KERNELS}, not {config.kernel!r}"
    mma = config.kernel == "mma"
    allowed_rows = MMA_ROWS if mma else FMA_ROWS
    if config.rows not in allowed_rows:
        return f"rows for the {config.kernel} kernel must be one of {allowed_rows}"
    allowed_bytes = MMA_ROW_BYTES if mma else (FMA_ROW_BYTES,)
    if config.row_bytes not in allowed_bytes:
        return f"row_bytes for the {config.kernel} kernel must be one of {allowed_bytes}"
    if config.warps not in WARPS:
        return f"warps must be one of {WARPS}"
    if config.unroll not in UNROLLS:
        return f"unroll must be one of {UNROLLS}"
    if config.w_loads > MAX_W_LOADS:
        return f"{config.w_loads} W loads per thread per iteration; at most {MAX_W_LOADS}"
    if config.split_k < 1:
        return "split_k must be at least 1"
    return None


def supports(m: int, n: int, k: int, dtype: str) -> str | None:
    """None if these kernels can compute Y[m, n] = X[m, k] @ W[n, k]^T in `dtype`, else why not."""
    if dtype not in C_TYPES:
        return f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}"
    if not 1 <= m <= MAX_M:
        return f"m = {m}: these kernels take 1 to {MAX_M} rows of X (use the cuBLAS GEMM)"
    if n < 1 or k < 1:
        return f"n = {n} and k = {k} must be positive"
    if k % 8:
        return f"k = {k} must be a multiple of 8 (each thread loads 8 elements, 16 bytes, at once)"
    if n * k >= 2**31:
        return f"n * k = {n * k} must be below 2**31 (32-bit offsets inside a row range)"
    return None


def k_per_split(config: GemvConfig, k: int) -> int:
    """Elements of K each split-K block covers (the last may cover fewer, or none)."""
    return K_ALIGN * math.ceil(k / config.split_k / K_ALIGN)


def config_error(config: GemvConfig, m: int, n: int, k: int) -> str | None:
    """Why `config` cannot run Y[m, n] = X[m, k] @ W[n, k]^T, or None if it can."""
    error = structure_error(config)
    if error:
        return error
    if config.kernel == "fma" and m > MAX_FMA_M:
        return f"the fma kernel takes m <= {MAX_FMA_M}, got m = {m}"
    shared = 4 * config.warps * m * config.rows
    if shared > SHARED_BYTES:
        return f"needs {shared} bytes of shared memory for m = {m}; at most {SHARED_BYTES}"
    if config.split_k == 1:
        return None
    if config.split_k > math.ceil(k / K_ALIGN):
        return f"split_k = {config.split_k} is more than the {K_ALIGN}-element pieces of k = {k}"
    if config.split_k * m * n > PARTIAL_FLOATS:
        return (
            f"split_k * m * n = {config.split_k * m * n} partial sums exceed the workspace "
            f"({PARTIAL_FLOATS})"
        )
    if math.ceil(n / config.rows) > COUNTERS:
        return f"{math.ceil(n / config.rows)} row blocks exceed the {COUNTERS} split-K counters"
    return None


def _shapes(m: int) -> list[tuple[str, int, int, int, int]]:
    """(kernel, rows, warps, unroll, row_bytes) tuples worth timing for m tokens.

    Chosen from wider sweeps on an H200 (docs/results/gemv.md): each was the best or within a
    few per cent of it for some GPT-J decode shape and m.
    """
    mma = [
        ("mma", rows, warps, unroll, row_bytes)
        for rows, warps, unroll, row_bytes in (
            (16, 16, 1, 128),
            (16, 8, 1, 128),
            (16, 8, 4, 128),
            (16, 8, 2, 128),
            (16, 4, 2, 128),
            (32, 4, 2, 128),
            (32, 8, 2, 128),
            (32, 16, 1, 128),
            (16, 8, 1, 256),
            (16, 4, 1, 256),
            (16, 8, 2, 256),
            (32, 4, 1, 256),
            (16, 4, 2, 64),
        )
    ]
    if m <= 8:  # best at m = 8 on an H200 (with PDL); past m = 8 it spills at 128 registers
        mma.append(("mma", 32, 16, 2, 128))
    if m > MAX_FMA_M:
        return mma
    fma = [
        ("fma", rows, warps, unroll, FMA_ROW_BYTES)
        for rows, warps, unroll in ((1, 4, 4), (2, 8, 2), (2, 4, 4))
    ]
    return mma + fma


def _splits(
    base: GemvConfig, m: int, n: int, k: int, sm_count: int, weight_bytes: int
) -> tuple[list[int], int]:
    """(the split-K factors `base` can take, the index of the smallest that puts
    TARGET_WARPS_PER_SM warps on every SM, or of the largest if none does).

    A split must give every warp of a block at least one full chunk of K.
    """
    block_k = base.warps * base.chunk_k(weight_bytes)
    valid = [1] + [
        split
        for split in SPLITS[1:]
        if k_per_split(replace(base, split_k=split), k) >= block_k
        and config_error(replace(base, split_k=split), m, n, k) is None
    ]
    warps_per_split = math.ceil(n / base.rows) * base.warps
    target = TARGET_WARPS_PER_SM * sm_count
    filling = [i for i, split in enumerate(valid) if split * warps_per_split >= target]
    return valid, filling[0] if filling else len(valid) - 1


def filling_config(
    base: GemvConfig, m: int, n: int, k: int, sm_count: int, weight_bytes: int
) -> GemvConfig:
    """`base` with the smallest split-K that fills the GPU (see `_splits`): the untuned choice."""
    valid, best = _splits(base, m, n, k, sm_count, weight_bytes)
    return replace(base, split_k=valid[best])


def tuning_configs(
    shapes: list[tuple[str, int, int, int, int]],
    m: int,
    n: int,
    k: int,
    sm_count: int,
    weight_bytes: int,
) -> list[GemvConfig]:
    """Each of `shapes` ((kernel, rows, warps, unroll, row_bytes) tuples) that can run
    Y[m, n] = X[m, k] @ W[n, k]^T, with the split-K factors worth timing for it; W's elements
    are `weight_bytes` bytes, `sm_count` (multiprocessors of the target GPU) sets how far K is
    split to fill the GPU."""
    if m < 1 or n < 1 or k < 1:
        raise InvalidInputError(f"m, n, k must be positive, got {m}, {n}, {k}")
    configs = []
    for kernel, rows, warps, unroll, row_bytes in shapes:
        base = GemvConfig(kernel, rows, warps, unroll, row_bytes)
        if config_error(base, m, n, k) is None:
            valid, best = _splits(base, m, n, k, sm_count, weight_bytes)
            # Around the filling split: one less, it, one more.
            splits = valid[max(0, best - 1) : best + 2]
            configs.extend(replace(base, split_k=split) for split in splits)
    return configs


def gemv_configs(m: int, n: int, k: int, sm_count: int = PLANNING_SM_COUNT) -> list[GemvConfig]:
    """The configs worth timing for Y[m, n] = X[m, k] @ W[n, k]^T, all valid for the shape.

    `sm_count` (multiprocessors of the target GPU) sets how far K is split to fill the GPU.
    """
    return tuning_configs(_shapes(m), m, n, k, sm_count, W_BYTES)


def kernel_name(config: GemvConfig, m: int, dtype: str) -> str:
    """The C++ name of the template instance that runs `config` (an NVRTC name expression)."""
    if config.kernel == "mma":
        group = config.row_bytes // 64
        return (
            f"ftb_gemv_mma<{C_TYPES[dtype]}, {m}, {config.rows}, {config.warps}, {group}, "
            f"{config.unroll}>"
        )
    return f"ftb_gemv_fma<{C_TYPES[dtype]}, {m}, {config.rows}, {config.warps}, {config.unroll}>"


def _compile(names: list[str]) -> float:
    """Compile and load `names` on the current device in one NVRTC run; return the seconds."""
    return nvrtc.compile_seconds(SOURCE_PATH, names)


def _kernel(name: str) -> Any:
    """The raw CUfunction of kernel `name` on the current device (compiled on first use)."""
    return nvrtc.load(SOURCE_PATH, [name])[name].kernel


@functools.cache
def workspace(device_id: int, slot: int) -> tuple[Any, Any]:
    """(fp32 partial sums, zeroed uint32 counters) for split-K on one device and scratch slot
    (`streams.scratch_slot`), made once; shared with the weight-only GEMVs (`weight_only`),
    whose launches on a stream are ordered with these like any two launches."""
    import cupy

    with cupy.cuda.Device(device_id):
        partial = cupy.empty(PARTIAL_FLOATS, dtype=cupy.float32)
        counters = cupy.zeros(COUNTERS, dtype=cupy.uint32)
        cupy.cuda.Device(device_id).synchronize()
    return partial, counters


def prepare(configs: list[GemvConfig], m: int, dtype: str) -> float:
    """Compile what `configs` need for m rows of `dtype` on the current device, in one NVRTC
    run, and make the device's split-K workspace. Returns the compile seconds (0 if cached)."""
    import cupy

    if dtype not in C_TYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(C_TYPES)}, not {dtype!r}")
    workspace(cupy.cuda.Device().id, scratch_slot())
    return _compile([kernel_name(config, m, dtype) for config in configs])


@functools.lru_cache(maxsize=4096)
def _plan(config: GemvConfig, m: int, n: int, k: int, dtype: str) -> tuple[str, tuple, tuple, int]:
    """(kernel name, grid, block, k per split) of one launch; refuses what cannot run."""
    reason = supports(m, n, k, dtype) or config_error(config, m, n, k)
    if reason:
        raise InvalidInputError(f"gemv {config.name} for m={m}, n={n}, k={k} ({dtype}): {reason}")
    grid = (math.ceil(n / config.rows), config.split_k, 1)
    return kernel_name(config, m, dtype), grid, (config.threads, 1, 1), k_per_split(config, k)


def gemv(x: Any, w: Any, y: Any, config: GemvConfig, *, pdl: bool | None = None) -> None:
    """Y = X @ W^T (x: [m, k], w: [n, k], y: [m, n], CuPy, fp16 or bf16) on the current stream.

    Needs k % 8 == 0 and x, w 16-byte aligned. Allocates nothing and never synchronises once
    `prepare` (or an earlier call) has compiled the kernel, so it can be captured in a CUDA graph.
    pdl=True launches with programmatic dependent launch (compute capability 9.0 or newer): the
    kernel overlaps its start with the end of the previous kernel on the stream, whatever that
    kernel is, and is correct with any of them; None: as `nvrtc.launch` chooses (in graph
    capture on Hopper and newer).
    """
    m, n, k = check_linear_operands(x, w, y)
    dtype = numpy_name(x)
    name, grid, block, split_k_elements = _plan(config, m, n, k, dtype)
    import cupy

    if x.data.ptr % 16 or w.data.ptr % 16:
        raise InvalidInputError("gemv: x and w must start on 16-byte boundaries")
    device = cupy.cuda.Device().id
    kernel = _kernel(name)
    if pdl and nvrtc.compute_capability(device) < 90:
        raise InvalidInputError("gemv: pdl=True needs compute capability 9.0 or newer")
    partial, counters = workspace(device, scratch_slot())
    pointers = (x.data.ptr, w.data.ptr, y.data.ptr, partial.data.ptr, counters.data.ptr)
    arguments = [np.uint64(p) for p in pointers] + [
        np.int32(n),
        np.int32(k),
        np.int32(split_k_elements),
    ]
    nvrtc.launch(kernel, grid, block, arguments, pdl=pdl)


def read_probe(source: Any, sink: Any, blocks: int) -> None:
    """Read every byte of `source` once with the loads the GEMV kernels use for W.

    The read-bandwidth ceiling for these kernels. `source` is a CuPy array whose size is a
    multiple of 16 bytes; `sink` a uint32 array of at least blocks * 256 elements.
    """
    import cupy

    if source.nbytes % 16 or source.data.ptr % 16:
        raise InvalidInputError(
            "read_probe: source must be 16-byte aligned, a multiple of 16 bytes"
        )
    if sink.dtype != cupy.uint32 or sink.size < 256 * blocks:
        raise InvalidInputError(f"read_probe: sink must be uint32 with >= {256 * blocks} elements")
    arguments = [
        np.uint64(source.data.ptr), np.int64(source.nbytes // 16), np.uint64(sink.data.ptr),
    ]  # fmt: skip
    nvrtc.launch(_kernel("ftb_read_probe"), (blocks, 1, 1), (256, 1, 1), arguments, pdl=False)
