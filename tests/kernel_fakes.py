"""Stand-ins for CuPy arrays and kernel launches, for planning launches without a GPU."""

from dataclasses import dataclass
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest

DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


class Fake:
    """A host array with the device pointer of a CuPy array (`data.ptr`), for launch planning."""

    def __init__(self, shape, dtype, ptr=1 << 20):
        self.array = np.zeros(shape, dtype=DTYPES.get(dtype, dtype))
        self.shape, self.ndim, self.dtype = self.array.shape, self.array.ndim, self.array.dtype
        self.size = self.array.size
        self.flags, self.itemsize, self.nbytes = (
            self.array.flags,
            self.array.itemsize,
            self.array.nbytes,
        )
        self.data = SimpleNamespace(ptr=ptr)


@dataclass
class Launch:
    name: str
    grid: tuple
    block: tuple
    args: tuple


def launch_recorder(module):
    """A `launches` fixture: `module`'s launcher records its launches (in the list the fixture
    gives) instead of compiling and running them."""

    @pytest.fixture
    def launches(monkeypatch) -> list[Launch]:
        recorded = []
        monkeypatch.setattr(module, "_launch", lambda *call: recorded.append(Launch(*call)))
        return recorded

    return launches


def half(*shape):
    return np.zeros(shape, np.float16)


def int32(*shape):
    return np.zeros(shape, np.int32)
