"""GEMM backends behind one interface (see `base.Backend`), looked up by name."""

from __future__ import annotations

import importlib

from ftbench.autotune.backends.base import Backend
from ftbench.autotune.candidate import BACKEND_NAMES
from ftbench.errors import InvalidInputError

_MODULES = {
    "cublas": "ftbench.autotune.backends.cublas",
    "cublaslt": "ftbench.autotune.backends.cublaslt",
    "cutlass": "ftbench.autotune.backends.cutlass",
    "ftbench": "ftbench.autotune.backends.own",
}


def get_backend(name: str) -> Backend:
    """The backend called `name` (its module is imported on first use)."""
    if name not in _MODULES:
        raise InvalidInputError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")
    return importlib.import_module(_MODULES[name]).BACKEND


__all__ = ["Backend", "get_backend"]
