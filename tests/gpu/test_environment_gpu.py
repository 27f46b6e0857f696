"""The environment record on a GPU machine."""

import pytest

from ftbench.bench.environment import capture_environment

pytestmark = pytest.mark.gpu


def test_gpu_facts_and_library_versions_are_read():
    record = capture_environment()
    assert record.no_gpu_reason is None
    gpu = record.gpus[0]
    assert gpu.name and gpu.compute_capability
    assert gpu.sm_count and gpu.sm_count > 0
    assert gpu.l2_cache_bytes and gpu.l2_cache_bytes > 2**20
    assert gpu.memory_total_mib > 1024
    assert record.driver_version
    for name in ("cupy", "cuda_runtime", "cublas", "nccl"):
        assert record.software[name][0].isdigit(), (name, record.software[name])
