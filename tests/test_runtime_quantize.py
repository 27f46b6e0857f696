"""8-bit weights in the runtime's layout (`runtime.quantize`, `runtime.weights.Linear.scale`):
which layers are quantised, how scales travel through naming, dtype conversion and sharding, and
the NumPy reference running the codes times their scales."""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.runtime.quantize import (
    QUANTISED_PARTS,
    dequantize_weights,
    quantize_weights,
    weight_format,
)
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.reference import ReferenceModel
from ftbench.runtime.sharding import shard
from ftbench.runtime.weights import check_shapes, from_named
from tiny_models import GPTJ, LLAMA, spec_of

pytest.importorskip("ml_dtypes", reason="fp8 codes are ml_dtypes' float8_e4m3fn")

CONFIGS = {"gptj": GPTJ, "llama-gqa": LLAMA}
# The relative Frobenius error of a weight rounded per output channel: int8 keeps 1/254 of the
# row's absmax per step, E4M3 3 mantissa bits (2^-4 relative per element).
ROUNDING = {"int8": 0.02, "fp8": 0.04}


def model(name, dtype="fp16"):
    spec = spec_of(CONFIGS[name])
    return spec, random_weights(spec, dtype, seed=3)


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_layer_linear_is_quantised_per_output_channel_and_nothing_else(name, fmt):
    spec, weights = model(name)
    quantised = quantize_weights(weights, fmt)
    check_shapes(quantised, spec)
    assert weight_format(quantised) == fmt and weight_format(weights) is None
    code_dtype = "int8" if fmt == "int8" else "float8_e4m3fn"
    for before, after in zip(weights.layers, quantised.layers, strict=True):
        for part in QUANTISED_PARTS:
            old, new = getattr(before, part), getattr(after, part)
            assert str(new.weight.dtype) == code_dtype
            assert new.scale.dtype == np.float32 and new.scale.shape == (old.weight.shape[0],)
            exact = old.weight.astype(np.float64)
            error = np.linalg.norm(new.dequantized() - exact) / np.linalg.norm(exact)
            assert 0 < error < ROUNDING[fmt], part
            # absmax per row: every row's largest code is the format's largest
            largest = np.abs(new.weight.astype(np.float64)).max(axis=1)
            np.testing.assert_array_equal(largest, 127.0 if fmt == "int8" else 448.0)
        assert after.ln1 is before.ln1 and after.ln2 is before.ln2
    assert quantised.embed is weights.embed and quantised.lm_head is weights.lm_head
    assert quantised.dtype == np.float16


def test_scales_travel_through_naming_conversion_and_the_gpu_map():
    spec, weights = model("llama-gqa")
    quantised = quantize_weights(weights, "fp8")
    named = quantised.named_tensors()
    assert named["layers.1.ffn_down.scale"] is quantised.layers[1].ffn_down.scale
    assert "layers.0.qkv.scale" not in quantised.named_tensors(quantised=False)
    again = from_named(named, spec.num_layers)
    np.testing.assert_array_equal(again.layers[0].qkv.scale, quantised.layers[0].qkv.scale)
    wide = quantised.astype(np.float32)
    assert wide.embed.dtype == np.float32
    assert str(wide.layers[0].qkv.weight.dtype) == "float8_e4m3fn"
    assert wide.layers[0].qkv.scale.dtype == np.float32
    copied = quantised.map(np.copy)
    np.testing.assert_array_equal(
        copied.layers[0].attn_out.scale, quantised.layers[0].attn_out.scale
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_sharding_a_quantised_model_splits_scales_with_rows_and_keeps_them_with_columns(name):
    spec, weights = model(name)
    quantised = quantize_weights(weights, "int8")
    plain = dequantize_weights(quantised)
    for rank in range(2):
        ours, expected = shard(quantised, spec, 2, rank), shard(plain, spec, 2, rank)
        check_shapes(ours, spec, tp=2)
        for mine, theirs in zip(ours.layers, expected.layers, strict=True):
            for part in QUANTISED_PARTS:
                np.testing.assert_array_equal(
                    getattr(mine, part).dequantized(), getattr(theirs, part).weight, err_msg=part
                )


@pytest.mark.parametrize("fmt", ["int8", "fp8"])
@pytest.mark.parametrize("name", CONFIGS)
def test_the_reference_runs_codes_times_scales_and_its_tensor_parallel_shards_agree(name, fmt):
    spec, weights = model(name)
    quantised = quantize_weights(weights, fmt)
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, (2, 5))
    logits = ReferenceModel(spec, quantised).prefill(tokens)
    np.testing.assert_array_equal(
        logits, ReferenceModel(spec, dequantize_weights(quantised)).prefill(tokens)
    )
    sharded = [shard(quantised, spec, 2, rank) for rank in range(2)]
    np.testing.assert_allclose(ReferenceModel(spec, sharded).prefill(tokens), logits, atol=1e-9)
    unquantised = ReferenceModel(spec, weights).prefill(tokens)
    error = np.linalg.norm(logits - unquantised) / np.linalg.norm(unquantised)
    assert 0 < error < 0.1  # the quantisation shows, a little


def test_bad_quantisation_requests_say_what_is_wrong():
    spec, weights = model("gptj")
    with pytest.raises(InvalidInputError, match="to fp8 or int8, not 'fp4'"):
        quantize_weights(weights, "fp4")
    with pytest.raises(InvalidInputError, match="already"):
        quantize_weights(quantize_weights(weights, "int8"), "fp8")
    with pytest.raises(InvalidInputError, match="fp16 or bf16 weights the runtime runs"):
        quantize_weights(weights.astype(np.float32), "int8")
    mixed = quantize_weights(weights, "int8")
    layers = (mixed.layers[0], quantize_weights(weights, "fp8").layers[1])
    with pytest.raises(InvalidInputError, match="mix weight formats"):
        weight_format(dataclasses.replace(mixed, layers=layers))


@pytest.mark.parametrize("scaling", ["token", "tensor"])
def test_fp8_activations_round_to_e4m3_under_an_absmax_scale(scaling):
    from ftbench.runtime.quantize import fp8_activations

    x = (
        np.random.default_rng(1).standard_normal((3, 5, 64))
        * np.array([1, 30, 0.01])[:, None, None]
    )
    x[1, 2] = 0.0  # a zero row stays zero
    got = fp8_activations(x, scaling)
    axis = -1 if scaling == "token" else None
    # absmax maps to E4M3's 448 exactly, so each scaled group keeps its largest magnitude
    np.testing.assert_allclose(np.abs(got).max(axis=axis), np.abs(x).max(axis=axis), rtol=1e-6)
    assert np.all(got[1, 2] == 0)
    # 3 mantissa bits: within 2^-4 of each element, or below the scale's subnormal step
    step = np.abs(x).max(axis=axis, keepdims=True) / 448 * 2.0**-9
    assert np.all(np.abs(got - x) <= np.abs(x) * 2.0**-4 + step)
    assert not np.array_equal(got, x)


@pytest.mark.parametrize("activations", ["fp8-token", "fp8-tensor"])
def test_the_reference_reads_fp8_activations_into_fp8_linears_only(activations):
    spec, weights = model("llama-gqa")
    quantised = quantize_weights(weights, "fp8")
    tokens = np.random.default_rng(0).integers(0, spec.vocab_size, (2, 5))
    weight_only = ReferenceModel(spec, quantised).prefill(tokens)
    fp8 = ReferenceModel(spec, quantised, activations=activations).prefill(tokens)
    error = np.linalg.norm(fp8 - weight_only) / np.linalg.norm(weight_only)
    assert 0 < error < 0.1


def test_fp8_activations_need_fp8_weights_and_a_known_scaling():
    spec, weights = model("gptj")
    with pytest.raises(InvalidInputError, match="fp8 activations need fp8 weights"):
        ReferenceModel(spec, quantize_weights(weights, "int8"), activations="fp8-token")
    with pytest.raises(InvalidInputError, match="fp8-token or fp8-tensor, got 'fp8-row'"):
        ReferenceModel(spec, quantize_weights(weights, "fp8"), activations="fp8-row")
