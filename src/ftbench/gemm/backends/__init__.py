"""GEMM backends behind one interface (see `base.Backend`), looked up by name."""

from __future__ import annotations

import importlib

from ftbench.errors import InvalidInputError
from ftbench.gemm.backends.base import Backend
from ftbench.gemm.candidate import BACKEND_NAMES

_MODULES = {
    "cublas": "ftbench.gemm.backends.cublas",
    "cublaslt": "ftbench.gemm.backends.cublaslt",
    "cutlass": "ftbench.gemm.backends.cutlass",
    "ftbench": "ftbench.gemm.backends.gemv",
}


def get_backend(name: str) -> Backend:
    """The backend called `name` (its module is imported on first use)."""
    if name not in _MODULES:
        raise InvalidInputError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    return importlib.import_module(_MODULES[name]).BACKEND


__all__ = ["Backend", "get_backend"]
