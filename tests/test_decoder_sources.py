"""The decoder's element-wise kernels' source and launchers, without a GPU.

decoder.cu must build with nvcc for Ampere and Hopper, every template instance the launchers can
ask for, without spilling; the launchers must refuse what the kernels cannot do before touching
the GPU, and plan the launches they can (kernel instance, grid, block) from shapes and alignment.
Arrays here are NumPy arrays, or fakes that add the device pointer a CuPy array has.
"""

import ml_dtypes
import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels import decoder
from ftbench.kernels.decoder import (
    SOURCE_PATH,
    bias_act,
    embed,
    kernel_names,
    qkv_rotary,
    residual_norm,
)
from kernel_fakes import Fake, half, int32, launch_recorder
from nvcc import assert_compiles_without_spills, needs_nvcc

launches = launch_recorder(decoder)  # a fixture: the launches, recorded instead of run


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_instance_compiles_without_spills(tmp_path, arch):
    assert_compiles_without_spills(SOURCE_PATH, kernel_names, tmp_path, arch)


def test_instance_list_covers_both_dtypes():
    names = kernel_names("bfloat16")
    assert len(names) == len(set(names)) == 35
    assert "ftb_residual_norm<__nv_bfloat16, 8, 1>" in names
    with pytest.raises(InvalidInputError, match="dtype"):
        kernel_names("float32")


# Launch plans --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("hidden", "ptr", "vector", "threads"),
    [(4096, 1 << 20, 8, 256), (136, 1 << 20, 8, 32), (75, 1 << 20, 1, 96), (4096, 8, 1, 256)],
)
def test_embed_plan(launches, dtype, hidden, ptr, vector, threads):
    tokens, positions = Fake((37,), "int32"), Fake((37,), "int32")
    table, pos_table = Fake((1000, hidden), dtype, ptr), Fake((64, hidden), dtype)
    embed(tokens, positions, table, pos_table, Fake((37, hidden), "float32"))
    (launch,) = launches
    assert launch.name == decoder.embed_kernel(dtype, vector, True)
    assert launch.name in kernel_names(dtype)
    assert (launch.grid, launch.block) == ((37,), (threads,))
    assert launch.args[5:] == (hidden, 0, 1000)  # hidden, vocab_start, the table's rows


def test_embed_passes_the_ranks_vocabulary_rows(launches):
    table = Fake((251, 64), "float16")  # rank 3 of 4 of a 1003-token vocabulary
    embed(Fake((5,), "int32"), None, table, None, Fake((5, 64), "float32"), vocab_start=753)
    (launch,) = launches
    assert launch.name == decoder.embed_kernel("float16", 8, False)
    assert launch.args[1] == 0 and launch.args[3] == 0  # no positions on this rank
    assert launch.args[5:] == (64, 753, 251)


@pytest.mark.parametrize(
    ("hidden", "vector", "items", "threads"),
    [(4096, 8, 1, 512), (8192, 8, 2, 512), (16384, 8, 4, 512), (136, 8, 1, 32), (200, 8, 1, 32),
     (75, 1, 1, 96), (1001, 1, 2, 512)],
)  # fmt: skip
def test_residual_norm_keeps_the_row_in_registers(launches, hidden, vector, items, threads):
    residual_norm(
        Fake((5, hidden), "float32"), Fake((2, hidden), "bfloat16"), Fake((hidden,), "bfloat16"),
        None, 1e-6, "rmsnorm", deltas=[Fake((5, hidden), "bfloat16")] * 2,
        delta_biases=[None, Fake((hidden,), "bfloat16")], rows=Fake((2,), "int32"),
    )  # fmt: skip
    (launch,) = launches
    assert launch.name == decoder.norm_kernel("bfloat16", vector, items)
    assert (launch.grid, launch.block) == ((2,), (threads,))
    assert vector * items * threads >= hidden
    assert launch.args[4] != 0 and launch.args[5] != 0  # both deltas
    assert launch.args[6] != 0 and launch.args[7] == 0  # the one bias given comes first


def test_residual_norm_refuses_rows_too_long_for_registers():
    with pytest.raises(InvalidInputError, match="too large"):
        residual_norm(
            Fake((1, 65536), "float32"), Fake((1, 65536), "float16"), Fake((65536,), "float16"),
            None, 1e-6, "rmsnorm",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("heads", "dim", "rotary", "interleaved", "vector"),
    [((16, 16), 256, 64, True, 8), ((32, 8), 128, 128, False, 8), ((2, 1), 96, 24, False, 4),
     ((4, 4), 64, 0, True, 8), ((3, 3), 80, 20, False, 2), ((2, 2), 12, 2, False, 1),
     ((2, 2), 12, 6, True, 2)],
)  # fmt: skip
def test_qkv_rotary_picks_the_widest_vector_the_layout_allows(
    launches, heads, dim, rotary, interleaved, vector
):
    q_heads, kv_heads = heads
    width = (q_heads + 2 * kv_heads) * dim
    qkv_rotary(
        Fake((3, width), "float16"), Fake((width,), "float16"), Fake((3, q_heads, dim), "float16"),
        Fake((2, kv_heads, 16, dim), "float16"), Fake((2, kv_heads, 16, dim), "float16"),
        Fake((3,), "int32"), Fake((3,), "int32"), num_q_heads=q_heads, num_kv_heads=kv_heads,
        head_dim=dim, rotary_dim=rotary, rotary_base=10000.0, interleaved=interleaved,
    )  # fmt: skip
    (launch,) = launches
    assert launch.name == decoder.rotary_kernel("float16", vector, interleaved and rotary > 0)
    assert launch.name in kernel_names("float16")
    (threads,) = launch.block
    assert threads % (dim // vector) == 0 and threads <= 256
    # few tokens: one block per token and group of heads, together every head once
    heads_per_block = threads // (dim // vector)
    tokens, groups = launch.grid
    assert tokens == 3 and (groups - 1) * heads_per_block < q_heads + 2 * kv_heads
    assert groups * heads_per_block >= q_heads + 2 * kv_heads


def test_qkv_rotary_keeps_a_token_in_one_block_when_tokens_fill_the_gpu(launches):
    q_heads, kv_heads, dim, count = 16, 16, 256, 2048
    width = (q_heads + 2 * kv_heads) * dim
    qkv_rotary(
        Fake((count, width), "float16"), None, Fake((count, q_heads, dim), "float16"),
        Fake((2, kv_heads, 4096, dim), "float16"), Fake((2, kv_heads, 4096, dim), "float16"),
        Fake((count,), "int32"), Fake((count,), "int32"), num_q_heads=q_heads,
        num_kv_heads=kv_heads, head_dim=dim, rotary_dim=64, rotary_base=10000.0,
        interleaved=True,
    )  # fmt: skip
    (launch,) = launches
    assert launch.grid == (count, 1)


@pytest.mark.parametrize(("gated", "ffn", "vector"), [(False, 16384, 8), (True, 11008, 8),
                                                      (True, 75, 1), (False, 136, 8)])  # fmt: skip
def test_bias_act_plan(launches, gated, ffn, vector):
    x = Fake((37, 2 * ffn if gated else ffn), "float16")
    out = x if not gated else Fake((37, ffn), "float16", ptr=1 << 30)
    bias_act(x, None, out, "silu", gated)
    (launch,) = launches
    assert launch.name == decoder.activation_kernel("float16", vector, "silu", gated)
    threads = launch.block[0]
    assert launch.grid[0] == 37 and launch.grid[1] * threads * vector >= ffn


def test_empty_batches_launch_nothing(launches):
    embed(Fake((0,), "int32"), None, Fake((10, 8), "float16"), None, Fake((0, 8), "float32"))
    bias_act(Fake((0, 8), "float16"), None, Fake((0, 4), "float16"), "relu", True)
    assert launches == []


# Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: embed(int32(3), None, half(10, 8), None, np.zeros((3, 9), np.float32)),
         r"residual must be float32 \[3, 8\], got shape \(3, 9\)"),
        (lambda: embed(np.zeros(3, np.int64), None, half(10, 8), None,
                       np.zeros((3, 8), np.float32)), "tokens must be int32"),
        (lambda: embed(int32(3), None, np.zeros((10, 8), np.float32), None,
                       np.zeros((3, 8), np.float32)), "float16 or bfloat16"),
        (lambda: embed(int32(3), None, half(10, 8), half(4, 8), np.zeros((3, 8), np.float32)),
         "positions is required"),
        (lambda: embed(int32(3), None, half(8, 10).T, None, np.zeros((3, 8), np.float32)),
         "C-contiguous"),
        (lambda: embed(int32(3), None, half(10, 8), None, np.zeros((3, 8), np.float32), -1),
         r"vocab_start must be in 0..2147483637, got -1"),
        (lambda: embed(int32(3), None, half(10, 8), None, np.zeros((3, 8), np.float32),
                       2**31 - 10), "vocab_start must be in 0..2147483637"),
        (lambda: embed(int32(3), None, half(10, 8), None, np.zeros((3, 8), np.float32), 2.0),
         "vocab_start must be an integer"),
        (lambda: embed(int32(3), None, half(10, 8), None, np.zeros((3, 8), np.float32), True),
         "vocab_start must be an integer"),
    ],
)  # fmt: skip
def test_embed_refuses(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()


def norm_call(**overrides):
    arguments = dict(
        residual=np.zeros((4, 8), np.float32), out=half(4, 8), weight=half(8), bias=half(8),
        eps=1e-5, kind="layernorm",
    )  # fmt: skip
    arguments.update(overrides)
    return lambda: residual_norm(**arguments)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (norm_call(kind="batchnorm"), "kind must be one of"),
        (norm_call(bias=None), "bias is required"),
        (norm_call(kind="rmsnorm"), "rmsnorm takes no bias"),
        (norm_call(residual=half(4, 8)), "residual must be float32"),
        (norm_call(deltas=[half(4, 8)] * 3), "at most 2 deltas"),
        (norm_call(deltas=[half(3, 8)]), r"deltas\[0\] must be float16 \[4, 8\]"),
        (norm_call(deltas=[np.zeros((4, 8), ml_dtypes.bfloat16)]), r"deltas\[0\].*dtype bfloat16"),
        (norm_call(delta_biases=[None, half(9)]), r"delta_biases\[1\]"),
        (norm_call(rows=int32(2)), r"out must be float16 \[2, 8\]"),
        (norm_call(rows=np.zeros(4, np.int64)), "rows must be int32"),
        (norm_call(out=np.zeros((8, 4), np.float16).T), "C-contiguous"),
        (norm_call(eps=-1.0), "eps"),
    ],
)
def test_residual_norm_refuses(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()


def rotary_call(**overrides):
    arguments = dict(
        qkv=half(3, 6 * 16), bias=None, q_out=half(3, 2, 16), k_cache=half(2, 2, 8, 16),
        v_cache=half(2, 2, 8, 16), seq_ids=int32(3), positions=int32(3), num_q_heads=2,
        num_kv_heads=2, head_dim=16, rotary_dim=16, rotary_base=10000.0, interleaved=False,
    )  # fmt: skip
    arguments.update(overrides)
    return lambda: qkv_rotary(**arguments)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (rotary_call(qkv=half(3, 5 * 16)), r"qkv must be float16 \[3, 96\]"),
        (rotary_call(num_kv_heads=1), r"qkv must be float16 \[3, 64\]"),
        (rotary_call(rotary_dim=18), "rotary_dim must be in 0..16"),
        (rotary_call(rotary_dim=7), "rotary_dim must be even"),
        (rotary_call(rotary_base=0.0), "rotary_base"),
        (rotary_call(head_dim=16.0), "head_dim must be an integer"),
        (rotary_call(bias=half(95)), r"bias must be float16 \[96\]"),
        (rotary_call(q_out=half(3, 32)), r"q_out must be float16 \[3, 2, 16\]"),
        (rotary_call(v_cache=half(2, 2, 9, 16)), r"v_cache must be float16 \[2, 2, 8, 16\]"),
        (rotary_call(k_cache=half(2, 8, 16)), "k_cache must be a 4-D array"),
        (rotary_call(positions=np.zeros(3, np.int64)), "positions must be int32"),
        (rotary_call(seq_ids=int32(4)), r"seq_ids must be int32 \[3\]"),
    ],
)
def test_qkv_rotary_refuses(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()


def test_interleaved_rotary_refuses_arrays_it_cannot_read_in_pairs():
    q_heads = kv_heads = 2
    with pytest.raises(InvalidInputError, match="vector width"):
        qkv_rotary(
            Fake((3, 96), "float16", ptr=2), None, Fake((3, 2, 16), "float16"),
            Fake((2, 2, 8, 16), "float16"), Fake((2, 2, 8, 16), "float16"), Fake((3,), "int32"),
            Fake((3,), "int32"), num_q_heads=q_heads, num_kv_heads=kv_heads, head_dim=16,
            rotary_dim=16, rotary_base=1e4, interleaved=True,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bias_act(half(2, 8), None, half(2, 8), "swish", False), "activation must be"),
        (lambda: bias_act(half(2, 7), None, half(2, 3), "silu", True), "even width"),
        (lambda: bias_act(half(2, 8), None, half(2, 8), "silu", True),
         r"out must be float16 \[2, 4\]"),
        (lambda: bias_act(half(2, 8), half(4), half(2, 4), "silu", True),
         r"bias must be float16 \[8\]"),
        (lambda: bias_act(half(2, 8), None, np.zeros((2, 8), np.float32), "relu", False),
         "dtype float32"),
    ],
)  # fmt: skip
def test_bias_act_refuses(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()


@pytest.mark.parametrize("gated", [False, True])
def test_bias_act_refuses_an_output_overlapping_its_input(gated):
    x = Fake((4, 16), "float16", ptr=4096)
    out = Fake((4, 8 if gated else 16), "float16", ptr=4096 + (0 if gated else 32))
    with pytest.raises(InvalidInputError, match="overlap"):
        bias_act(x, None, out, "gelu", gated)
