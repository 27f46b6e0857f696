"""The one-shot all-reduce without a GPU: allreduce.cu builds for Ampere and Hopper without
spills, its workspace layout matches the launcher's, the size/dtype/alignment choice between the
one-shot kernel and NCCL, the peer records and the peer-access verdicts."""

import re

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels import allreduce
from ftbench.runtime.ipc import (
    NCCL,
    ONE_SHOT,
    RECORD_BYTES,
    PeerRecord,
    choose_path,
    peer_access_problem,
)
from nvcc import compile_object, needs_nvcc

SIGNATURE = "(const {t}*, {t}*, const unsigned long long*, int, long long, unsigned long long, "
SIGNATURE += "unsigned long long);"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_instance_compiles_without_spills(tmp_path, arch):
    names = [allreduce.kernel_name(d, w) for d in allreduce.C_TYPES for w in range(1, 9)]
    lines = [f'#include "{allreduce.SOURCE_PATH}"']
    for name in names:
        element = re.search(r"<(\w+),", name).group(1)
        lines.append(f"template __global__ void {name}" + SIGNATURE.format(t=element))
    source = tmp_path / "instances.cu"
    source.write_text("\n".join(lines) + "\n")
    report = compile_object(source, tmp_path, arch, "-Xptxas", "-v")
    reports = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores", report)
    assert len(reports) == len(names)
    assert all(frame == "0" and spills == "0" for frame, spills in reports), report


def test_the_workspace_layout_is_the_same_in_cuda_and_python():
    text = allreduce.SOURCE_PATH.read_text()
    constants = dict(re.findall(r"constexpr (?:int|unsigned long long) AR_(\w+) = (\d+);", text))
    assert {name: int(value) for name, value in constants.items()} == {
        "MAX_RANKS": allreduce.MAX_RANKS,
        "MAX_BLOCKS": allreduce.MAX_BLOCKS,
        "THREADS": allreduce.THREADS,
        "ARRIVALS_OFFSET": allreduce.ARRIVALS_OFFSET,
        "EPOCHS_OFFSET": allreduce.EPOCHS_OFFSET,
        "STATUS_OFFSET": allreduce.STATUS_OFFSET,
        "SIGNAL_BYTES": allreduce.SIGNAL_BYTES,
    }


def test_capacity_rounds_up_to_whole_vectors():
    assert allreduce.capacity_bytes(1) == 16
    assert allreduce.capacity_bytes(4096) == 4096
    assert allreduce.capacity_bytes(4097) == 4112
    assert allreduce.workspace_bytes(4096) == allreduce.SIGNAL_BYTES + 8192
    with pytest.raises(InvalidInputError, match="positive"):
        allreduce.capacity_bytes(0)


@pytest.mark.parametrize(
    ("dtype", "nbytes", "pointer", "path"),
    [
        ("float16", 2, 256, ONE_SHOT),
        ("bfloat16", 8192, 256, ONE_SHOT),
        ("float16", 65536, 256, ONE_SHOT),  # exactly the limit
        ("float16", 65538, 256, NCCL),  # above it
        ("float32", 4096, 256, ONE_SHOT),  # the decoder's fp32 residual
        ("float32", 65540, 256, NCCL),
        ("int32", 4096, 256, NCCL),  # NCCL sums integers
        ("float16", 4096, 258, NCCL),  # not 16-byte aligned
        ("float16", 0, 256, NCCL),  # empty
    ],
)
def test_small_aligned_floating_point_arrays_take_the_one_shot_path(dtype, nbytes, pointer, path):
    assert choose_path(dtype, nbytes, pointer, max_one_shot_bytes=65536) == path


def test_a_limit_that_is_not_a_multiple_of_16_is_still_the_limit():
    assert choose_path("float16", 1000, 0, max_one_shot_bytes=1000) == ONE_SHOT
    assert choose_path("float16", 1002, 0, max_one_shot_bytes=1000) == NCCL


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(rank=2), "rank must be in 0..1"),
        (dict(blocks=65), "blocks must be in 1..64"),
        (dict(capacity=100), "multiple of 16"),
        (dict(timeout_s=0.0), "timeout_s must be positive"),
    ],
)
def test_the_launcher_refuses_bad_arguments_before_using_the_gpu(arguments, message):
    class Array:  # the attributes of a CuPy array the launcher reads
        def __init__(self, values, pointer):
            self.values, self.size, self.nbytes = values, values.size, values.nbytes
            self.dtype, self.flags = values.dtype, values.flags
            self.data = type("Pointer", (), {"ptr": pointer})()

    call = dict(
        array=Array(np.zeros(64, np.float16), 256), workspaces=Array(np.zeros(2, np.uint64), 512),
        rank=0, capacity=4096, blocks=8, timeout_s=1.0,
    )  # fmt: skip
    with pytest.raises(InvalidInputError, match=message):
        allreduce.one_shot_all_reduce(**{**call, **arguments})


def test_the_launcher_names_what_the_kernel_cannot_take():
    assert "int32" in allreduce.one_shot_error("int32", 64, 0, 4096)
    assert "exceed" in allreduce.one_shot_error("float16", 8192, 0, 4096)
    assert "aligned" in allreduce.one_shot_error("float16", 64, 8, 4096)
    with pytest.raises(InvalidInputError, match="1 to 8 ranks"):
        allreduce.prepare(9)


def test_peer_records_round_trip_through_fixed_size_bytes():
    record = PeerRecord("node-07", "0000:1b:00.0", bytes(range(64)))
    data = record.encode()
    assert len(data) == RECORD_BYTES
    assert PeerRecord.decode(data) == record
    with pytest.raises(InvalidInputError):
        PeerRecord("node", "0000:1b:00.0", b"short").encode()


def _records(*placements):
    return [PeerRecord(host, bus, bytes(64)) for host, bus in placements]


def test_gpus_of_one_host_with_peer_access_can_use_ipc():
    records = _records(("a", "0000:1b:00.0"), ("a", "0000:2c:00.0"), ("a", "0000:1b:00.0"))
    assert peer_access_problem(records, 0, lambda bus: True) is None


@pytest.mark.parametrize(
    ("records", "can_access", "message"),
    [
        (_records(("a", "0000:1b:00.0"), ("b", "0000:1b:00.0")), lambda bus: True, "one host"),
        (_records(("a", "0000:1b:00.0"), ("a", "0000:2c:00.0")), lambda bus: None, "cannot see"),
        (_records(("a", "0000:1b:00.0"), ("a", "0000:2c:00.0")), lambda bus: False,
         "cudaDeviceCanAccessPeer"),
    ],
)  # fmt: skip
def test_peers_out_of_reach_are_named(records, can_access, message):
    problem = peer_access_problem(records, 0, can_access)
    assert message in problem and "rank 1" in problem
