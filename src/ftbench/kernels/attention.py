"""Fused attention for the decoder runtime (kernels/cuda/attention.cu).

- `context_attention`: causal flash attention over packed variable-length sequences, with
  `past_lens` for chunked prefill (the chunk's own K/V already in the cache).
- `decode_attention`: one new token per sequence, flash-decoding (the positions split into
  chunks across blocks, partial softmaxes combined by the last block of each sequence), every
  query head of a kv head in one block so K/V are read once. The grid is sized from a host bound
  `max_length`, so one CUDA graph serves every step; `decode_workspace` makes its workspace.

Layouts (CuPy, C-contiguous, fp16 or bf16, D = head_dim in `HEAD_DIMS`): q and out [tokens, Hq, D]
(context, packed: sequence b owns rows cu_seqlens[b]..cu_seqlens[b+1]-1) or [B, Hq, D] (decode);
k_cache and v_cache [cache rows, Hkv, cache_len, D], sequence b in cache row b. Query head h
reads kv head h // (Hq / Hkv).

Launches go on CuPy's current stream, allocate nothing and never synchronise once the kernels are
compiled (`prepare`, or a first call, outside capture), so they can be captured in a CUDA graph.
The launchers check everything they can see on the host; device contents are the caller's
promise: past_lens[b] + (tokens of b) <= cache_len, and lengths[b] <= max_length (larger
lengths are clamped to max_length; a length <= 0 gives zeros).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import c_types, numpy_name
from ftbench.errors import GpuError, InvalidInputError
from ftbench.kernels import nvrtc

SOURCE_PATH = Path(__file__).parent / "cuda" / "attention.cu"
HEAD_DIMS = (64, 80, 96, 128, 256)
C_TYPES = c_types("fp16", "bf16")
LOG2_E = 1.4426950408889634
GRID_LIMIT_YZ = 65535
PLANNING_SM_COUNT = 132  # H100 / H200; launches use the running device's count


@dataclass(frozen=True)
class ContextTiles:
    """Tile shape of the context kernel: 16 * m_tiles query rows per warp, `keys` per K/V tile."""

    m_tiles: int
    keys: int
    warps: int

    @property
    def rows(self) -> int:
        """Queries per block."""
        return 16 * self.m_tiles * self.warps

    def shared_bytes(self, head_dim: int) -> int:
        return (self.rows + 2 * self.keys) * (head_dim + 8) * 2


@dataclass(frozen=True)
class DecodeTiles:
    """Decode kernel: `warps` per block, each streaming 16-position steps `stages` deep."""

    warps: int
    stages: int

    @property
    def step_positions(self) -> int:
        """Positions one round of the block's warps covers; chunks are multiples of it."""
        return 16 * self.warps

    def shared_bytes(self, head_dim: int) -> int:
        return self.warps * self.stages * 2 * 16 * (head_dim + 8) * 2


# One tile shape per head dim, all free of register arrays in local memory (sm_80 and sm_90),
# chosen for D = 64, 128 and 256 by a sweep on an H200 (docs/results/attention.md).
CONTEXT_TILES = {
    64: ContextTiles(m_tiles=1, keys=128, warps=4),
    80: ContextTiles(m_tiles=1, keys=64, warps=4),
    96: ContextTiles(m_tiles=1, keys=64, warps=4),
    128: ContextTiles(m_tiles=1, keys=64, warps=4),
    256: ContextTiles(m_tiles=1, keys=64, warps=4),
}
DECODE_TILES = {
    64: DecodeTiles(warps=8, stages=2),
    80: DecodeTiles(warps=8, stages=2),
    96: DecodeTiles(warps=8, stages=2),
    128: DecodeTiles(warps=8, stages=2),
    256: DecodeTiles(warps=2, stages=3),
}
HEAD_TILES = (1, 2)  # a decode block serves 8 or 16 query heads of one kv head
TARGET_BLOCKS_PER_SM = 2  # split the positions until a launch has this many blocks per SM
MAX_CHUNK = 1024  # positions per decode block at most (bounds the tail of long sequences)


@dataclass(frozen=True)
class DecodePlan:
    """How decode_attention cuts the work: grid (splits, kv_heads * head_groups, batch)."""

    head_tiles: int
    head_groups: int
    chunk: int
    splits: int
    tiles: DecodeTiles

    def partial_floats(self, batch: int, num_q_heads: int, head_dim: int) -> int:
        """float32 partial results of one launch: per (sequence, query head) each chunk's max and
        sum (rounded up to 4) and its head_dim accumulators."""
        return batch * num_q_heads * (4 * math.ceil(2 * self.splits / 4) + self.splits * head_dim)


@dataclass(frozen=True)
class DecodeWorkspace:
    """decode_attention's scratch on one device, made once by `decode_workspace`.

    counters: uint32, one per (sequence, query head) at most, zero between launches (the block
    that combines a sequence resets its own), so they never share memory with the partials;
    partials: float32, the chunks' softmax partial results of the launch in flight.
    """

    counters: Any
    partials: Any


def decode_plan(
    batch: int,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    max_length: int,
    sm_count: int = PLANNING_SM_COUNT,
) -> DecodePlan:
    """The split of a decode launch. Depends only on host values, so a captured graph stays
    valid for any lengths <= max_length."""
    _check_heads(num_q_heads, num_kv_heads, head_dim, "decode_attention")
    if batch < 1 or max_length < 1 or sm_count < 1:
        raise InvalidInputError(
            f"decode_attention: batch ({batch}), max_length ({max_length}) and sm_count "
            f"({sm_count}) must be positive"
        )
    group = num_q_heads // num_kv_heads
    head_tiles = 1 if group <= 8 else 2
    head_groups = math.ceil(group / (8 * head_tiles))
    tiles = DECODE_TILES[head_dim]
    step = tiles.step_positions
    blocks_per_split = batch * num_kv_heads * head_groups
    wanted_splits = math.ceil(TARGET_BLOCKS_PER_SM * sm_count / blocks_per_split)
    chunk = step * math.ceil(math.ceil(max_length / wanted_splits) / step)
    chunk = min(chunk, MAX_CHUNK, step * math.ceil(max_length / step))
    # The combining block keeps 16 weights per chunk in the pipeline's shared memory.
    max_splits = tiles.shared_bytes(head_dim) // (4 * 16)
    chunk = max(chunk, step * math.ceil(math.ceil(max_length / max_splits) / step))
    return DecodePlan(head_tiles, head_groups, chunk, math.ceil(max_length / chunk), tiles)


def decode_workspace_floats(
    batch: int,
    num_q_heads: int,
    head_dim: int,
    max_length: int,
    *,
    num_kv_heads: int | None = None,
    sm_count: int = PLANNING_SM_COUNT,
) -> int:
    """4-byte elements of `decode_workspace(...)`: counters plus partials (memory planning)."""
    return batch * num_q_heads + _partial_capacity(
        batch, num_q_heads, head_dim, max_length, num_kv_heads, sm_count
    )


def decode_workspace(
    batch: int,
    num_q_heads: int,
    head_dim: int,
    max_length: int,
    *,
    num_kv_heads: int | None = None,
) -> DecodeWorkspace:
    """A workspace for decode_attention on the current device, for any batch up to `batch` with
    this many query heads, head dim and max_length (and any kv head count, unless given). Make
    it once, with the runtime's buffers; launches that share one must not run concurrently."""
    import cupy

    sm_count = _sm_count(cupy.cuda.Device().id)
    partials = _partial_capacity(batch, num_q_heads, head_dim, max_length, num_kv_heads, sm_count)
    return DecodeWorkspace(
        counters=cupy.zeros(batch * num_q_heads, dtype=cupy.uint32),
        partials=cupy.empty(partials, dtype=cupy.float32),
    )


def _partial_capacity(
    batch: int,
    num_q_heads: int,
    head_dim: int,
    max_length: int,
    num_kv_heads: int | None,
    sm_count: int,
) -> int:
    """The most partial floats a launch of up to `batch` sequences needs (fewer sequences take
    more chunks each)."""
    kv_choices = [num_kv_heads] if num_kv_heads else _divisors(num_q_heads)
    return max(
        decode_plan(b, num_q_heads, kv, head_dim, max_length, sm_count).partial_floats(
            b, num_q_heads, head_dim
        )
        for kv in kv_choices
        for b in range(1, batch + 1)
    )


def context_kernel_name(dtype: str, head_dim: int) -> str:
    tiles = CONTEXT_TILES[head_dim]
    return (
        f"ftb_context_attention<{C_TYPES[dtype]}, {head_dim}, {tiles.m_tiles}, {tiles.keys}, "
        f"{tiles.warps}>"
    )


def decode_kernel_name(dtype: str, head_dim: int, head_tiles: int) -> str:
    tiles = DECODE_TILES[head_dim]
    return (
        f"ftb_decode_attention<{C_TYPES[dtype]}, {head_dim}, {head_tiles}, {tiles.warps}, "
        f"{tiles.stages}>"
    )


def kernel_names(dtype: str, head_dim: int) -> list[str]:
    """Every template instance the launchers can use for `dtype` and `head_dim`."""
    return [context_kernel_name(dtype, head_dim)] + [
        decode_kernel_name(dtype, head_dim, head_tiles) for head_tiles in HEAD_TILES
    ]


def prepare(dtype: str, head_dim: int) -> float:
    """Compile (one NVRTC run) the kernels for `dtype` and `head_dim` on the current device, so
    that later launches can be captured. Returns the compile seconds (0 if already loaded)."""
    _check_dtype_and_dim(dtype, head_dim)
    return nvrtc.compile_seconds(SOURCE_PATH, kernel_names(dtype, head_dim))


def context_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    cu_seqlens: Any,
    past_lens: Any,
    out: Any,
    *,
    scale: float,
    max_q_len: int,
) -> None:
    """out = causal softmax(scale * q k^T) v for packed sequences (see the module docstring).

    q, out [T, Hq, D]; cu_seqlens int32 [S + 1]; past_lens int32 [S] with S <= cache rows;
    max_q_len (host) >= every sequence's token count sizes the grid.
    """
    where = "context_attention"
    dtype, num_q_heads, head_dim = _check_tokens(q, out, where)
    num_kv_heads, cache_len = _check_caches(k_cache, v_cache, dtype, head_dim, where)
    _check_heads(num_q_heads, num_kv_heads, head_dim, where)
    sequences = _check_int_vector(cu_seqlens, "cu_seqlens", where, minimum_size=2) - 1
    if _check_int_vector(past_lens, "past_lens", where) != sequences:
        raise InvalidInputError(
            f"{where}: past_lens must have one entry per sequence ({sequences}, from "
            f"cu_seqlens [S + 1]), got shape {tuple(past_lens.shape)}"
        )
    if sequences > k_cache.shape[0]:
        raise InvalidInputError(
            f"{where}: {sequences} sequences but only {k_cache.shape[0]} cache rows"
        )
    _check_positive_int(max_q_len, "max_q_len", where)
    scale_log2 = _scale_log2(scale, where)
    if num_q_heads > GRID_LIMIT_YZ or sequences > GRID_LIMIT_YZ:
        raise InvalidInputError(f"{where}: at most {GRID_LIMIT_YZ} heads and sequences")
    if q.shape[0] == 0:
        return
    tiles = CONTEXT_TILES[head_dim]
    name = context_kernel_name(dtype, head_dim)
    kernel = _kernel(dtype, head_dim, name, tiles.shared_bytes(head_dim), where)
    _check_alignment((q, k_cache, v_cache, out), where)
    grid = (math.ceil(max_q_len / tiles.rows), num_q_heads, sequences)
    nvrtc.launch(
        kernel, grid, (32 * tiles.warps, 1, 1),
        (q, k_cache, v_cache, cu_seqlens, past_lens, out, np.int32(num_q_heads),
         np.int32(num_kv_heads), np.int32(cache_len), np.float32(scale_log2)),
        shared_mem=tiles.shared_bytes(head_dim),
    )  # fmt: skip


def decode_attention(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    lengths: Any,
    out: Any,
    *,
    scale: float,
    max_length: int,
    workspace: Any = None,
) -> None:
    """out[b] = softmax(scale * q[b] k[b, :lengths[b]]^T) v[b, :lengths[b]] for every head.

    q, out [B, Hq, D]; lengths int32 [B] (valid cache positions, the current token included);
    max_length (host) >= every length and <= cache_len sizes the grid. workspace: from
    `decode_workspace` (made once); None uses one kept per device and shape, made on first use
    outside graph capture.
    """
    where = "decode_attention"
    dtype, num_q_heads, head_dim = _check_tokens(q, out, where)
    num_kv_heads, cache_len = _check_caches(k_cache, v_cache, dtype, head_dim, where)
    _check_heads(num_q_heads, num_kv_heads, head_dim, where)
    batch = q.shape[0]
    if _check_int_vector(lengths, "lengths", where) != batch:
        raise InvalidInputError(
            f"{where}: lengths must be int32 [B] with B = q.shape[0] = {batch}, got shape "
            f"{tuple(lengths.shape)}"
        )
    if batch > k_cache.shape[0]:
        raise InvalidInputError(
            f"{where}: {batch} sequences but only {k_cache.shape[0]} cache rows"
        )
    _check_positive_int(max_length, "max_length", where)
    if max_length > cache_len:
        raise InvalidInputError(
            f"{where}: max_length = {max_length} exceeds the cache length {cache_len}"
        )
    scale_log2 = _scale_log2(scale, where)
    if batch > GRID_LIMIT_YZ:
        raise InvalidInputError(f"{where}: at most {GRID_LIMIT_YZ} sequences")
    if batch == 0:
        return
    import cupy

    device = cupy.cuda.Device().id
    plan = decode_plan(batch, num_q_heads, num_kv_heads, head_dim, max_length, _sm_count(device))
    needed = plan.partial_floats(batch, num_q_heads, head_dim)
    if workspace is None:
        workspace = _default_workspace(device, batch * num_q_heads, needed)
    elif (
        not isinstance(workspace, DecodeWorkspace)
        or workspace.counters.size < batch * num_q_heads
        or workspace.partials.size < needed
    ):
        raise InvalidInputError(
            f"{where}: workspace must be a DecodeWorkspace with at least {batch * num_q_heads} "
            f"counters and {needed} partial floats (decode_workspace({batch}, {num_q_heads}, "
            f"{head_dim}, {max_length}) makes one)"
        )
    name = decode_kernel_name(dtype, head_dim, plan.head_tiles)
    shared = plan.tiles.shared_bytes(head_dim)
    kernel = _kernel(dtype, head_dim, name, shared, where)
    _check_alignment((q, k_cache, v_cache, out), where)
    grid = (plan.splits, num_kv_heads * plan.head_groups, batch)
    nvrtc.launch(
        kernel, grid, (32 * plan.tiles.warps, 1, 1),
        (q, k_cache, v_cache, lengths, out, workspace.counters, workspace.partials,
         np.int32(num_q_heads), np.int32(num_kv_heads), np.int32(plan.head_groups),
         np.int32(cache_len), np.int32(max_length), np.int32(plan.chunk), np.int32(plan.splits),
         np.float32(scale_log2)),
        shared_mem=shared,
    )  # fmt: skip


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _check_dtype_and_dim(dtype: str, head_dim: int) -> None:
    if dtype not in C_TYPES:
        raise InvalidInputError(f"attention: dtype must be one of {sorted(C_TYPES)}, not {dtype!r}")
    if head_dim not in HEAD_DIMS:
        raise InvalidInputError(f"attention: head_dim must be one of {HEAD_DIMS}, not {head_dim}")


def _check_contiguous(array: Any, label: str, where: str) -> None:
    if not array.flags.c_contiguous:
        raise InvalidInputError(f"{where}: {label} must be C-contiguous")


def _check_tokens(q: Any, out: Any, where: str) -> tuple[str, int, int]:
    """(dtype, Hq, D) of q and out, both [rows, Hq, D] of one fp16/bf16 dtype."""
    if q.ndim != 3 or tuple(out.shape) != tuple(q.shape):
        raise InvalidInputError(
            f"{where}: expected q and out of one shape [rows, Hq, D], got q{tuple(q.shape)}, "
            f"out{tuple(out.shape)}"
        )
    dtype = numpy_name(q)
    if dtype not in C_TYPES or numpy_name(out) != dtype:
        raise InvalidInputError(
            f"{where}: q and out must both be float16 or both bfloat16, got {q.dtype} and "
            f"{out.dtype}"
        )
    _check_contiguous(q, "q", where)
    _check_contiguous(out, "out", where)
    head_dim = q.shape[2]
    if head_dim not in HEAD_DIMS:
        raise InvalidInputError(f"{where}: head dim must be one of {HEAD_DIMS}, got {head_dim}")
    return dtype, q.shape[1], head_dim


def _check_caches(k_cache: Any, v_cache: Any, dtype: str, head_dim: int, where: str) -> tuple:
    """(Hkv, cache_len) of k_cache and v_cache, both [rows, Hkv, cache_len, D] of q's dtype."""
    if k_cache.ndim != 4 or tuple(v_cache.shape) != tuple(k_cache.shape):
        raise InvalidInputError(
            f"{where}: expected k_cache and v_cache of one shape [B, Hkv, cache_len, D], got "
            f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.shape[3] != head_dim:
        raise InvalidInputError(
            f"{where}: the caches' head dim {k_cache.shape[3]} differs from q's {head_dim}"
        )
    if numpy_name(k_cache) != dtype or numpy_name(v_cache) != dtype:
        raise InvalidInputError(
            f"{where}: k_cache and v_cache must be {dtype} like q, got {k_cache.dtype} and "
            f"{v_cache.dtype}"
        )
    _check_contiguous(k_cache, "k_cache", where)
    _check_contiguous(v_cache, "v_cache", where)
    if k_cache.shape[2] < 1 or k_cache.shape[2] >= 2**31:
        raise InvalidInputError(f"{where}: cache_len must lie in 1 .. 2**31 - 1")
    return k_cache.shape[1], k_cache.shape[2]


def _check_heads(num_q_heads: int, num_kv_heads: int, head_dim: int, where: str) -> None:
    if head_dim not in HEAD_DIMS:
        raise InvalidInputError(f"{where}: head dim must be one of {HEAD_DIMS}, got {head_dim}")
    if num_q_heads < 1 or num_kv_heads < 1 or num_q_heads % num_kv_heads:
        raise InvalidInputError(
            f"{where}: query heads ({num_q_heads}) must be a positive multiple of kv heads "
            f"({num_kv_heads})"
        )


def _check_int_vector(array: Any, label: str, where: str, minimum_size: int = 0) -> int:
    if array.ndim != 1 or str(array.dtype) != "int32" or array.shape[0] < minimum_size:
        raise InvalidInputError(
            f"{where}: {label} must be a 1-D int32 array (at least {minimum_size} long), got "
            f"{array.dtype} {tuple(array.shape)}"
        )
    _check_contiguous(array, label, where)
    return array.shape[0]


def _check_positive_int(value: Any, label: str, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{where}: {label} must be a positive int, got {value!r}")
    if value >= 2**31:
        raise InvalidInputError(f"{where}: {label} must be below 2**31, got {value}")


def _scale_log2(scale: float, where: str) -> float:
    if not isinstance(scale, (int, float, np.floating)) or not 0 < scale < math.inf:
        raise InvalidInputError(f"{where}: scale must be a positive finite number, got {scale!r}")
    return float(scale) * LOG2_E


def _check_alignment(arrays: tuple, where: str) -> None:
    if any(array.data.ptr % 16 for array in arrays):
        raise InvalidInputError(f"{where}: q, out and the caches must start on 16-byte boundaries")


@functools.cache
def _sm_count(device_id: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device_id).attributes["MultiProcessorCount"])


@functools.cache
def _shared_limit(device_id: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device_id).attributes["MaxSharedMemoryPerBlockOptin"])


_raised_shared: set[tuple[int, str]] = set()
# Default decode workspaces per device; replaced ones stay alive (captured graphs may use them).
_workspaces: dict[int, list[DecodeWorkspace]] = {}


def _kernel(dtype: str, head_dim: int, name: str, shared_bytes: int, where: str) -> Any:
    """The compiled kernel `name` on the current device, allowed `shared_bytes` of dynamic shared
    memory; the first use compiles every instance for `dtype` and `head_dim` in one run."""
    import cupy

    device = cupy.cuda.Device().id
    if shared_bytes > _shared_limit(device):
        raise GpuError(
            f"{where}: {name} needs {shared_bytes} bytes of shared memory per block; this GPU "
            f"allows {_shared_limit(device)}"
        )
    kernel = nvrtc.load(SOURCE_PATH, kernel_names(dtype, head_dim))[name]
    if (device, name) not in _raised_shared:
        kernel.max_dynamic_shared_size_bytes = shared_bytes
        _raised_shared.add((device, name))
    return kernel


def _default_workspace(device: int, counters: int, partials: int) -> DecodeWorkspace:
    """A workspace with at least these sizes kept for this device (grown outside capture)."""
    import cupy

    held = _workspaces.get(device)
    if held and held[-1].counters.size >= counters and held[-1].partials.size >= partials:
        return held[-1]
    if cupy.cuda.get_current_stream().is_capturing():
        raise GpuError(
            "decode_attention: no workspace during CUDA-graph capture; pass one from "
            "decode_workspace, or call once before capturing"
        )
    if held:
        counters = max(counters, held[-1].counters.size)
        partials = max(partials, held[-1].partials.size)
    workspace = DecodeWorkspace(
        counters=cupy.zeros(counters, dtype=cupy.uint32),
        partials=cupy.empty(partials, dtype=cupy.float32),
    )
    cupy.cuda.Device(device).synchronize()
    _workspaces.setdefault(device, []).append(workspace)
    return workspace
