"""A stand-in for nvmath-python's cuBLASLt binding (`nvmath.bindings.cublasLt`), to check on the
CPU what `kernels.cublaslt` asks the library for: the attributes a plan's descriptor gets, with
the values the library reads from the buffers it is handed, and what each matmul call sees.

The enum values are nvmath-python 1.0.0's (cuBLASLt's own header values), and so are the
attribute buffer types (`get_matmul_desc_attribute_dtype`): FAST_ACCUM is an int8, the scale
pointers int64, the scale modes int32.
"""

from __future__ import annotations

import ctypes
import itertools
from enum import IntEnum
from typing import Any

import numpy as np

MatmulDescAttribute = IntEnum(
    "MatmulDescAttribute",
    {"TRANSA": 3, "TRANSB": 4, "A_SCALE_POINTER": 17, "B_SCALE_POINTER": 18, "FAST_ACCUM": 25,
     "A_SCALE_MODE": 31, "B_SCALE_MODE": 32},
)  # fmt: skip
MatrixLayoutAttribute = IntEnum(
    "MatrixLayoutAttribute", {"BATCH_COUNT": 5, "STRIDED_BATCH_OFFSET": 6}
)
MatmulMatrixScale = IntEnum("MatmulMatrixScale", {"SCALAR_32F": 0, "OUTER_VEC_32F": 3})
DESC_DTYPES = {
    "TRANSA": np.int32, "TRANSB": np.int32, "A_SCALE_POINTER": np.int64,
    "B_SCALE_POINTER": np.int64, "FAST_ACCUM": np.int8, "A_SCALE_MODE": np.int32,
    "B_SCALE_MODE": np.int32,
}  # fmt: skip
LAYOUT_DTYPES = {"BATCH_COUNT": np.int32, "STRIDED_BATCH_OFFSET": np.int64}
CUBLASLT_13_1 = 130100


class cuBLASLtError(Exception):  # noqa: N801 (the binding's name)
    pass


def _read(buffer: int, size: int, dtype: Any) -> int:
    """The value the library reads from `size` bytes at host address `buffer`."""
    assert size == np.dtype(dtype).itemsize, f"{size} bytes given for a {np.dtype(dtype)}"
    return int(np.frombuffer(ctypes.string_at(buffer, size), dtype)[0])


class FakeCublasLt:
    """The binding calls a plan and a matmul make, recorded: `descriptors[desc]` holds the
    compute and scale types and every attribute set (by name), `layouts[layout]` the layout's
    type, rows, cols, ld and attributes, `matmuls` each call's arguments with the attributes its
    descriptor had at that moment."""

    MatmulDescAttribute = MatmulDescAttribute
    MatrixLayoutAttribute = MatrixLayoutAttribute
    MatmulMatrixScale = MatmulMatrixScale
    cuBLASLtError = cuBLASLtError

    def __init__(self, version: int = CUBLASLT_13_1) -> None:
        self.version = version
        self.descriptors: dict[int, dict[str, int]] = {}
        self.layouts: dict[int, dict[str, int]] = {}
        self.matmuls: list[tuple[tuple, dict[str, int]]] = []
        self._handles = itertools.count(1000)

    def get_version(self) -> int:
        return self.version

    def create(self) -> int:
        return next(self._handles)

    def matmul_desc_create(self, compute_type: int, scale_type: int) -> int:
        desc = next(self._handles)
        self.descriptors[desc] = {"compute_type": compute_type, "scale_type": scale_type}
        return desc

    def get_matmul_desc_attribute_dtype(self, attribute: MatmulDescAttribute) -> Any:
        return DESC_DTYPES[attribute.name]

    def matmul_desc_set_attribute(
        self, desc: int, attribute: MatmulDescAttribute, buffer: int, size: int
    ) -> None:
        self.descriptors[desc][attribute.name] = _read(buffer, size, DESC_DTYPES[attribute.name])

    def matrix_layout_create(self, dtype: int, rows: int, cols: int, ld: int) -> int:
        layout = next(self._handles)
        self.layouts[layout] = {"type": dtype, "rows": rows, "cols": cols, "ld": ld}
        return layout

    def get_matrix_layout_attribute_dtype(self, attribute: MatrixLayoutAttribute) -> Any:
        return LAYOUT_DTYPES[attribute.name]

    def matrix_layout_set_attribute(
        self, layout: int, attribute: MatrixLayoutAttribute, buffer: int, size: int
    ) -> None:
        self.layouts[layout][attribute.name] = _read(buffer, size, LAYOUT_DTYPES[attribute.name])

    def matmul(self, *arguments: Any) -> None:
        self.matmuls.append((arguments, dict(self.descriptors[arguments[1]])))
