"""The GPU-free part of the cuBLASLt binding: an algorithm's config read back from stored data."""

import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels.cublaslt import AlgoConfig

FULL = AlgoConfig(
    id=66, tile_id=18, stages_id=21, splitk_num=4, reduction_scheme=2, cta_swizzling=1,
    custom_option=3, inner_shape_id=0, cluster_shape_id=5,
)  # fmt: skip


def test_config_with_a_missing_field_is_refused():
    config = FULL.to_config()
    del config["stages_id"]
    with pytest.raises(InvalidInputError, match="missing \\['stages_id'\\]"):
        AlgoConfig.from_config(config)


def test_config_with_an_unknown_field_is_refused():
    with pytest.raises(InvalidInputError, match="unknown \\['tile'\\]"):
        AlgoConfig.from_config({**FULL.to_config(), "tile": 3})


def test_config_with_a_non_integer_value_is_refused():
    with pytest.raises(InvalidInputError, match="splitk_num must be integers"):
        AlgoConfig.from_config({**FULL.to_config(), "splitk_num": "4"})
