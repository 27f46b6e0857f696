"""What the element-wise launchers (kernels/decoder.py, kernels/sampling.py) share: argument
checks that say what was expected, device pointers as kernel arguments, and vector widths.

Arrays are CuPy arrays (or anything with their `shape`, `dtype`, `flags`, `itemsize` and
`data.ptr`); every check raises `InvalidInputError` naming the operation and the argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ftbench.errors import InvalidInputError

VECTOR_BYTES = 16
INT32_MAX = 2**31 - 1
_NULL = np.uint64(0)


def dtype_name(array: Any) -> str:
    """The array's dtype name ("float16", "int32", ...)."""
    return str(array.dtype)


def check_array(
    op: str, label: str, array: Any, shape: tuple[int, ...], dtypes: Sequence[str]
) -> None:
    """Refuse `array` unless it has exactly `shape`, a dtype in `dtypes` and C order."""
    if array is None:
        raise InvalidInputError(f"{op}: {label} is required ({_expect(shape, dtypes)})")
    if tuple(array.shape) != tuple(shape):
        raise InvalidInputError(
            f"{op}: {label} must be {_expect(shape, dtypes)}, got shape {tuple(array.shape)}"
        )
    if dtype_name(array) not in dtypes:
        raise InvalidInputError(
            f"{op}: {label} must be {_expect(shape, dtypes)}, got dtype {dtype_name(array)}"
        )
    if not array.flags.c_contiguous:
        raise InvalidInputError(f"{op}: {label} must be C-contiguous")


def _expect(shape: tuple[int, ...], dtypes: Sequence[str]) -> str:
    return f"{' or '.join(dtypes)} {list(shape)}"


def check_ndim(op: str, label: str, array: Any, ndim: int) -> None:
    """Refuse `array` unless it is an array of `ndim` dimensions."""
    if array is None or array.ndim != ndim:
        shape = None if array is None else tuple(array.shape)
        raise InvalidInputError(f"{op}: {label} must be a {ndim}-D array, got shape {shape}")


def checked_integer(op: str, label: str, value: Any, low: int, high: int) -> int:
    """`value` as an int, refused unless it is an integer (not a bool) in low..high."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{op}: {label} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise InvalidInputError(f"{op}: {label} must be in {low}..{high}, got {value}")
    return int(value)


def pointer(array: Any) -> np.uint64:
    """A device pointer as a kernel argument (raw, so any dtype CuPy holds works)."""
    return _NULL if array is None else np.uint64(array.data.ptr)


def vector_width(width: int, itemsize: int, arrays: Sequence[Any], widths: Sequence[int]) -> int:
    """The widest of `widths` (elements per access) that divides `width` and keeps every access
    to `arrays` aligned; 1 always works."""
    for vector in widths:
        aligned = all(
            array is None or array.data.ptr % min(VECTOR_BYTES, vector * array.itemsize) == 0
            for array in arrays
        )
        if width % vector == 0 and aligned and vector * itemsize <= VECTOR_BYTES:
            return vector
    return 1


def full_vector_width(dtype: str) -> int:
    """Elements of `dtype` (float32, or a 16-bit type) in one 16-byte access."""
    return VECTOR_BYTES // np.dtype(np.float32 if dtype == "float32" else np.float16).itemsize
