"""The attention kernels' source, launch plans and argument checks, without a GPU.

attention.cu must build with nvcc for Ampere and Hopper, every template instance the launchers
can use, with no register array in local memory; the decode plan must cover every position
with chunks the kernel can run; and the launchers must refuse what the kernels cannot do before
touching a GPU.
"""

import math
import re

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels.attention import (
    CONTEXT_TILES,
    DECODE_TILES,
    HEAD_DIMS,
    MAX_CHUNK,
    SOURCE_PATH,
    context_attention,
    context_kernel_name,
    decode_attention,
    decode_kernel_name,
    decode_plan,
    decode_workspace_floats,
    kernel_names,
)
from nvcc import compile_object, needs_nvcc

CONTEXT_PARAMETERS = (
    "(const {t}*, const {t}*, const {t}*, const int*, const int*, {t}*, int, int, int, float)"
)
DECODE_PARAMETERS = (
    "(const {t}*, const {t}*, const {t}*, const int*, {t}*, unsigned*, float*, int, int, int, int, "
    "int, int, int, float)"
)
# ptxas keeps a few bytes of stack for some instances (a spilled register or two outside the
# inner loops); a register array demoted to local memory would take hundreds.
MAX_STACK_BYTES = 16


def explicit_instantiations(names):
    lines = [f'#include "{SOURCE_PATH}"']
    for name in names:
        element = re.search(r"<(\w+),", name).group(1)
        template = CONTEXT_PARAMETERS if name.startswith("ftb_context") else DECODE_PARAMETERS
        lines.append(f"template __global__ void {name}{template.format(t=element)};")
    return "\n".join(lines) + "\n"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_instance_compiles_without_local_arrays(tmp_path, arch):
    names = [name for dtype in ("float16", "bfloat16") for d in HEAD_DIMS
             for name in kernel_names(dtype, d)]  # fmt: skip
    source = tmp_path / "instances.cu"
    source.write_text(explicit_instantiations(names))
    report = compile_object(source, tmp_path, arch, "-Xptxas", "-v")
    frames = [int(frame) for frame in re.findall(r"(\d+) bytes stack frame", report)]
    assert len(frames) == len(names)
    assert max(frames) <= MAX_STACK_BYTES, report


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_tiles_fit_the_shared_memory_of_ampere_and_hopper(head_dim):
    ampere_optin = 163 * 1024
    assert CONTEXT_TILES[head_dim].shared_bytes(head_dim) <= ampere_optin
    assert DECODE_TILES[head_dim].shared_bytes(head_dim) <= ampere_optin


def test_kernel_names_are_the_template_instances():
    assert context_kernel_name("float16", 128) == "ftb_context_attention<__half, 128, 1, 64, 4>"
    assert (
        decode_kernel_name("bfloat16", 256, 2)
        == "ftb_decode_attention<__nv_bfloat16, 256, 2, 2, 3>"
    )
    assert len(kernel_names("float16", 80)) == 3


@pytest.mark.parametrize(
    ("batch", "q_heads", "kv_heads", "head_dim", "max_length"),
    [
        (1, 16, 16, 256, 256),
        (1, 16, 16, 256, 2048),
        (64, 16, 16, 256, 2048),
        (1, 8, 1, 128, 4096),
        (64, 8, 1, 128, 4096),
        (3, 8, 2, 80, 4097),
        (7, 32, 1, 64, 1),
        (2, 71, 1, 64, 100_000),
        (512, 4, 4, 96, 33),
    ],
)
def test_decode_plan_covers_max_length_with_runnable_chunks(
    batch, q_heads, kv_heads, head_dim, max_length
):
    plan = decode_plan(batch, q_heads, kv_heads, head_dim, max_length)
    step = plan.tiles.step_positions
    assert plan.chunk % step == 0 and step <= plan.chunk <= MAX_CHUNK
    assert (plan.splits - 1) * plan.chunk < max_length <= plan.splits * plan.chunk
    group = q_heads // kv_heads
    assert (
        plan.head_groups * 8 * plan.head_tiles
        >= group
        > (plan.head_groups - 1) * 8 * plan.head_tiles
    )


def test_decode_plan_splits_short_batches_to_fill_the_gpu():
    few = decode_plan(1, 8, 1, 128, 4096, sm_count=132)
    many = decode_plan(64, 16, 16, 256, 2048, sm_count=132)
    # One (sequence, kv head): the positions are cut as finely as the warps' step allows.
    assert few.chunk == few.tiles.step_positions
    assert many.splits <= 2


@pytest.mark.parametrize(
    ("q_heads", "tiles", "groups"), [(1, 1, 1), (8, 1, 1), (9, 2, 1), (16, 2, 1), (71, 2, 5)]
)
def test_query_heads_of_a_kv_head_share_blocks(q_heads, tiles, groups):
    plan = decode_plan(2, q_heads, 1, 64, 512)
    assert (plan.head_tiles, plan.head_groups) == (tiles, groups)


def test_workspace_size_suits_every_kv_head_count_and_smaller_batch():
    generic = decode_workspace_floats(5, 32, 128, 3000)
    for kv_heads in (1, 2, 4, 8, 16, 32):
        exact = decode_workspace_floats(5, 32, 128, 3000, num_kv_heads=kv_heads)
        assert exact <= generic
        for batch in range(1, 6):
            plan = decode_plan(batch, 32, kv_heads, 128, 3000)
            assert 5 * 32 + plan.partial_floats(batch, 32, 128) <= exact


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_very_long_contexts_get_longer_chunks_so_the_weights_fit_in_shared_memory(head_dim):
    max_splits = DECODE_TILES[head_dim].shared_bytes(head_dim) // (4 * 16)
    plan = decode_plan(1, 64, 1, head_dim, 2 * MAX_CHUNK * max_splits)
    assert plan.chunk > MAX_CHUNK
    assert 16 * plan.splits * 4 <= plan.tiles.shared_bytes(head_dim)


def host(shape, dtype=np.float16):
    return np.zeros(shape, dtype)


def context_arguments(**changes):
    arguments = dict(
        q=host((10, 8, 128)), k_cache=host((2, 2, 64, 128)), v_cache=host((2, 2, 64, 128)),
        cu_seqlens=np.array([0, 4, 10], np.int32), past_lens=np.array([0, 3], np.int32),
        out=host((10, 8, 128)), scale=128**-0.5, max_q_len=6,
    )  # fmt: skip
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(q=host((10, 8, 128), np.float32)), "float16 or both bfloat16"),
        (dict(out=host((10, 8, 64))), "one shape"),
        (dict(q=host((10, 8, 72)), out=host((10, 8, 72))), "head dim must be one of"),
        (dict(k_cache=host((2, 2, 64, 64)), v_cache=host((2, 2, 64, 64))), "differs from q"),
        (dict(v_cache=host((2, 2, 32, 128))), "one shape"),
        (dict(k_cache=host((2, 3, 64, 128)), v_cache=host((2, 3, 64, 128))), "multiple of kv"),
        (dict(k_cache=host((2, 2, 64, 128), np.float32)), "must be float16"),
        (dict(cu_seqlens=np.array([0, 4, 10], np.int64)), "cu_seqlens must be a 1-D int32"),
        (dict(past_lens=np.array([0], np.int32)), "one entry per sequence"),
        (dict(cu_seqlens=np.array([0, 1, 2, 10], np.int32), past_lens=np.zeros(3, np.int32)),
         "only 2 cache rows"),
        (dict(max_q_len=0), "max_q_len must be a positive int"),
        (dict(max_q_len=6.0), "max_q_len must be a positive int"),
        (dict(scale=0.0), "scale must be a positive"),
        (dict(scale=math.nan), "scale must be a positive"),
        (dict(q=host((8, 10, 128)).transpose(1, 0, 2)), "q must be C-contiguous"),
    ],
)  # fmt: skip
def test_context_launcher_refuses_bad_arguments_before_using_the_gpu(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        context_attention(**context_arguments(**changes))


def decode_arguments(**changes):
    arguments = dict(
        q=host((3, 8, 64)), k_cache=host((4, 1, 256, 64)), v_cache=host((4, 1, 256, 64)),
        lengths=np.array([1, 100, 256], np.int32), out=host((3, 8, 64)), scale=0.125,
        max_length=256,
    )  # fmt: skip
    arguments.update(changes)
    return arguments


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(lengths=np.array([1, 100], np.int32)), "lengths must be int32 \\[B\\]"),
        (dict(lengths=np.array([1, 100, 256], np.uint32)), "lengths must be a 1-D int32"),
        (dict(max_length=257), "exceeds the cache length 256"),
        (dict(max_length=-1), "max_length must be a positive int"),
        (dict(q=host((5, 8, 64)), out=host((5, 8, 64)), lengths=np.ones(5, np.int32)),
         "only 4 cache rows"),
        (dict(q=host((3, 8, 64), np.float32), out=host((3, 8, 64), np.float32)), "float16"),
        (dict(k_cache=host((4, 3, 256, 64)), v_cache=host((4, 3, 256, 64))), "multiple of kv"),
    ],
)  # fmt: skip
def test_decode_launcher_refuses_bad_arguments_before_using_the_gpu(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        decode_attention(**decode_arguments(**changes))


def test_bfloat16_queries_with_float16_caches_are_refused():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    arguments = decode_arguments(
        q=host((3, 8, 64), bf16), out=host((3, 8, 64), bf16), k_cache=host((4, 1, 256, 64), bf16),
        v_cache=host((4, 1, 256, 64), np.float16),
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match="must be bfloat16 like q"):
        decode_attention(**arguments)
