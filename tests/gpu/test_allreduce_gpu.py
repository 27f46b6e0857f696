"""The one-shot all-reduce on one GPU: the real IPC path with one rank, and 2, 4 and 8 ranks
emulated in one process (workspaces are plain allocations, each rank's kernel on its own stream)
against the float64 sum, eagerly and replayed from a CUDA graph; and a rank that never comes."""

import dataclasses
import time

import numpy as np
import pytest
from host_types import host_dtype

from ftbench.kernels import allreduce
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.generate import Generator
from ftbench.runtime.ipc import NCCL, ONE_SHOT, IpcCommunicator, local_group
from ftbench.runtime.model import Decoder
from ftbench.runtime.parallel import CollectiveTimeoutError
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.rank import RankDecoder

pytestmark = pytest.mark.gpu

SIZES = [1, 7, 8, 9, 1000, 4099, 65536 + 3, 2**19]  # elements; 2**19 fp32 = 2 MiB
MAX_BYTES = 2**21
# The emulated ranks' kernels must all be resident at once: world * blocks blocks of 512 threads.
EMULATED_BLOCKS = 8
# Largest |result - float64 sum| / |float64 sum| of a correctly rounded result, with margin.
RELATIVE = {"float16": 2.0**-10, "bfloat16": 2.0**-7}
SMALLEST = {"float16": 2.0**-24, "bfloat16": 2.0**-133}
DTYPES = ["float16", "bfloat16", "float32"]  # fp32: the decoder's residual all-reduce


def random_parts(world, count, dtype):
    rng = np.random.default_rng()
    return [rng.standard_normal(count, dtype=np.float32).astype(host_dtype(dtype)) for _ in
            range(world)]  # fmt: skip


def check_sums(outputs, parts, dtype):
    """Every rank holds the same bits: the fp32 sum in rank order, rounded once, which is
    within rounding of the float64 sum."""
    in_order = parts[0].astype(np.float32)
    for part in parts[1:]:
        in_order += part.astype(np.float32)
    exact = sum(part.astype(np.float64) for part in parts)
    bits = f"u{in_order.astype(host_dtype(dtype)).itemsize}"
    for got in outputs:
        np.testing.assert_array_equal(got.view(bits), in_order.astype(got.dtype).view(bits))
        error = np.abs(got.astype(np.float64) - exact)
        if dtype == "float32":  # not rounded again: the fp32 additions' own error
            magnitude = sum(np.abs(part.astype(np.float64)) for part in parts)
            assert (error <= len(parts) * 2.0**-24 * magnitude).all()
        else:
            assert (error <= np.maximum(np.abs(exact) * RELATIVE[dtype], SMALLEST[dtype])).all()


def wait(stream, limit_s=30.0):
    """Wait for `stream`, failing (not hanging) if it does not finish within `limit_s`."""
    import cupy

    event = cupy.cuda.Event()
    event.record(stream)
    deadline = time.monotonic() + limit_s
    while not event.done:
        assert time.monotonic() < deadline, "the one-shot kernels did not finish"
        time.sleep(0.001)


def epochs(rank):
    """The workspace's per-block call counters (see allreduce.cu)."""
    import cupy

    counters = np.zeros(allreduce.MAX_BLOCKS, np.uint32)
    cupy.cuda.runtime.memcpy(counters.ctypes.data, rank.workspace + allreduce.EPOCHS_OFFSET,
                             counters.nbytes, 2)  # fmt: skip
    return counters


def test_world_size_one_goes_through_the_ipc_path():
    import cupy

    from ftbench.runtime.launch import RankInfo, connect

    comm = IpcCommunicator(connect(RankInfo(0, 1, 0, "single"), timeout_s=30.0),
                           max_one_shot_bytes=2**16, spin_timeout_s=5.0)  # fmt: skip
    one_shot_calls = 0
    for dtype in DTYPES:
        for count in (1, 9, 4099, 2**14, 2**14 + 1, 2**15, 2**15 + 1):
            values = cupy.asarray(random_parts(1, count, dtype)[0])
            expected = cupy.asnumpy(values)
            assert comm.path(values) == (ONE_SHOT if values.nbytes <= 2**16 else NCCL)
            one_shot_calls += comm.path(values) == ONE_SHOT
            comm.all_reduce(values)
            comm.synchronize()
            np.testing.assert_array_equal(cupy.asnumpy(values), expected)
    calls = int(epochs(comm.one_shot)[0])
    assert calls == one_shot_calls == 6 + 6 + 4  # fp16, bf16 (2-byte) and fp32 sizes <= 64 KiB
    values = cupy.asarray(random_parts(1, 4099, "float16")[0])
    expected = cupy.asnumpy(values)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        comm.all_reduce(values)
        graph = stream.end_capture()
        for _ in range(5):
            graph.launch(stream)
        comm.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(values), expected)
    assert (epochs(comm.one_shot)[: comm.one_shot.blocks] == calls + 5).all()
    comm.close()


def test_world_size_one_one_shot_runs_inside_the_decode_graph():
    import cupy

    from ftbench.runtime.launch import RankInfo, connect

    tiny = dataclasses.replace(
        load_builtin("llama2-7b"), name="tiny-llama", num_layers=2, hidden_size=256,
        num_heads=4, num_kv_heads=2, head_dim=64, rotary_dim=64, ffn_hidden_size=512,
        vocab_size=509,
    )  # fmt: skip
    weights = random_weights(tiny, "fp16", seed=5, xp=cupy)
    prompts = [np.arange(1, 8), np.arange(3, 15)]
    plain = Generator(Decoder(tiny, weights, max_batch=4, max_seq_len=64)).generate(prompts, 20)
    comm = IpcCommunicator(connect(RankInfo(0, 1, 0, "single"), timeout_s=30.0))
    generator = Generator(RankDecoder(tiny, weights, max_batch=4, max_seq_len=64, comm=comm))
    with_comm = generator.generate(prompts, 20)
    np.testing.assert_array_equal(plain.tokens, with_comm.tokens)
    assert any(key[0] == "generate" for key in generator._graphs)
    assert epochs(comm.one_shot)[0] > 20
    comm.synchronize()
    comm.close()


def launch_all(ranks, streams, arrays):
    for rank, stream, array in zip(ranks, streams, arrays, strict=True):
        with stream:
            rank.all_reduce(array)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", [2, 4, 8])
def test_emulated_ranks_sum_exactly(world, dtype):
    import cupy

    ranks = local_group(world, MAX_BYTES, EMULATED_BLOCKS, timeout_s=10.0)
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in ranks]
    for count in SIZES:
        parts = random_parts(world, count, dtype)
        arrays = [cupy.asarray(part) for part in parts]
        cupy.cuda.Device().synchronize()
        launch_all(ranks, streams, arrays)
        for stream in streams:
            wait(stream)
        for rank in ranks:
            rank.check()
        check_sums([cupy.asnumpy(array) for array in arrays], parts, dtype)
    assert all((epochs(rank)[:EMULATED_BLOCKS] == len(SIZES)).all() for rank in ranks)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("world", [2, 4, 8])
def test_emulated_ranks_replayed_from_a_cuda_graph(world, dtype):
    """Several sizes per replay and several replays: the epochs advance on the device alone."""
    import cupy

    counts, replays = (9, 65536 + 3, 4099), 4
    ranks = local_group(world, MAX_BYTES, EMULATED_BLOCKS, timeout_s=10.0)
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in ranks]
    sources = [[cupy.empty(c, host_dtype(dtype)) for _ in ranks] for c in counts]
    works = [[cupy.empty(c, host_dtype(dtype)) for _ in ranks] for c in counts]
    origin = cupy.cuda.Stream(non_blocking=True)
    fork, joins = cupy.cuda.Event(), [cupy.cuda.Event() for _ in ranks]
    origin.begin_capture()
    fork.record(origin)
    for stream in streams:
        stream.wait_event(fork)
    for source, work in zip(sources, works, strict=True):
        for stream, s, w in zip(streams, source, work, strict=True):
            w.data.copy_from_device_async(s.data, s.nbytes, stream)
        launch_all(ranks, streams, work)
    for stream, join in zip(streams, joins, strict=True):
        join.record(stream)
        origin.wait_event(join)
    graph = origin.end_capture()
    for _ in range(replays):
        parts = [random_parts(world, c, dtype) for c in counts]
        for source, part in zip(sources, parts, strict=True):
            for s, p in zip(source, part, strict=True):
                s.set(p, stream=origin)
        graph.launch(origin)
        wait(origin)
        for rank in ranks:
            rank.check()
        for work, part in zip(works, parts, strict=True):
            check_sums([cupy.asnumpy(w) for w in work], part, dtype)
    assert all((epochs(r)[:EMULATED_BLOCKS] == replays * len(counts)).all() for r in ranks)


def test_a_rank_that_never_arrives_stops_the_others_with_a_flag():
    import cupy

    ranks = local_group(2, 4096, blocks=4, timeout_s=0.2)
    values = cupy.asarray(random_parts(1, 1000, "float16")[0])
    before = cupy.asnumpy(values)
    stream = cupy.cuda.Stream(non_blocking=True)
    start = time.monotonic()
    with stream:
        ranks[0].all_reduce(values)  # rank 1 is never launched
    wait(stream, limit_s=20.0)
    assert time.monotonic() - start >= 0.2
    assert ranks[0].failed_peer() == 1 and ranks[1].failed_peer() is None
    with pytest.raises(CollectiveTimeoutError, match="waited 0.2 s for rank 1"):
        ranks[0].check()
    np.testing.assert_array_equal(cupy.asnumpy(values), before)  # no half-summed output
    start = time.monotonic()
    with stream:
        ranks[0].all_reduce(values)  # a broken group returns at once
    wait(stream, limit_s=20.0)
    assert time.monotonic() - start < 0.15
    assert (epochs(ranks[0]) == 0).all()
