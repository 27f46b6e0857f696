"""Shape, dtype and layout checks of the cuBLAS linear launcher (checked on NumPy arrays)."""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels.cublas import check_linear_operands


def arrays(m, n, k, dtype=np.float16):
    return np.ones((m, k), dtype), np.ones((n, k), dtype), np.ones((m, n), dtype)


def test_valid_operands_give_m_n_k():
    assert check_linear_operands(*arrays(3, 5, 7)) == (3, 5, 7)


def test_mismatched_k_says_what_was_expected():
    x, _, y = arrays(3, 5, 7)
    with pytest.raises(InvalidInputError, match=r"expected x\[m, k\], w\[n, k\], y\[m, n\]"):
        check_linear_operands(x, np.ones((5, 8), np.float16), y)


def test_wrong_output_shape_is_refused():
    x, w, _ = arrays(3, 5, 7)
    with pytest.raises(InvalidInputError, match="y"):
        check_linear_operands(x, w, np.ones((5, 3), np.float16))


def test_float32_is_refused():
    with pytest.raises(InvalidInputError, match="float16 or all bfloat16"):
        check_linear_operands(*arrays(3, 5, 7, np.float32))


def test_non_contiguous_weight_is_refused():
    x, _, y = arrays(3, 5, 7)
    with pytest.raises(InvalidInputError, match="w must be C-contiguous"):
        check_linear_operands(x, np.ones((7, 5), np.float16).T, y)


def test_3d_input_is_refused():
    with pytest.raises(InvalidInputError, match="x must be 2-D"):
        check_linear_operands(np.ones((2, 3, 7), np.float16), *arrays(3, 5, 7)[1:])
