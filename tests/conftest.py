"""GPU tests are marked `gpu` and skip cleanly where no GPU (or no CuPy) is usable.

With FTBENCH_REQUIRE_GPU=1 (the `nox -s gpu` session sets it) a missing GPU fails the run
instead, so a GPU run that silently skipped everything cannot pass.
"""

import os

import pytest


def _gpu_unavailable_reason() -> str | None:
    try:
        import cupy
    except Exception as exc:
        return f"CuPy not importable: {exc}"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
    except Exception as exc:
        return f"no usable CUDA device: {exc}"
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("FTBENCH_REQUIRE_GPU") == "1":
        raise pytest.UsageError(f"FTBENCH_REQUIRE_GPU=1 but {reason}")
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=reason))
