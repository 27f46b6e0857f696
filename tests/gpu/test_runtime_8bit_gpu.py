"""The runtime on 8-bit weights, on the GPU: the dequantiser, the decoder's logits against float64
on the dequantised weights, CUDA graphs, and `ftbench run --weights`."""

import json
import subprocess
import sys

import numpy as np
import pytest
from host_types import device, host_dtype

from ftbench.runtime.agreement import accuracy_cost, run_logits, teacher_forced_inputs
from ftbench.runtime.quantize import quantize_weights
from ftbench.runtime.random_weights import random_weights
from ftbench.validation.parallel_check import CASES, SEED
from ftbench.validation.quantised_check import kernel_error

pytestmark = pytest.mark.gpu

cupy = pytest.importorskip("cupy")


def _fp8_runs() -> bool:
    return int(cupy.cuda.Device().compute_capability) >= 89


FORMATS = ["int8", pytest.param("fp8", marks=pytest.mark.skipif("not _fp8_runs()"))]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(37, 4112), (512, 4096)])
def test_dequantize_is_codes_times_scales_rounded_once(fmt, dtype, shape):
    from ftbench.kernels.weight_only import dequantize, quantize_reference

    rng = np.random.default_rng(len(fmt) * 1000 + len(dtype) * 10 + shape[0])
    values = rng.standard_normal(shape) * rng.uniform(0.01, 1.0, (shape[0], 1))
    weight = values.astype(host_dtype(dtype))
    codes, scales = quantize_reference(weight, fmt)
    device_codes = cupy.asarray(codes.view(np.uint8) if fmt == "fp8" else codes)
    out = device(np.full(shape, 7.0), dtype)
    dequantize(device_codes, cupy.asarray(scales), out)
    expected = (codes.astype(np.float32) * scales[:, None]).astype(weight.dtype)
    np.testing.assert_array_equal(cupy.asnumpy(out).view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", ["gptj", "llama-gqa"])
def test_8_bit_kernels_add_no_error_beyond_the_quantisation(case, fmt):
    """Against float64 on the dequantised weights, the 8-bit runtime's largest relative logit
    error (prefill on dequantised fp16 weights, decode in the weight-only kernels) stays within
    twice the fp16 runtime's own against float64 on its weights: the fp16 rounding of the
    dequantised weights is the one rounding it adds."""
    spec = CASES[case]
    result = kernel_error(spec, random_weights(spec, "fp16", seed=SEED), fmt)
    print(json.dumps(result.to_dict()))
    assert result.quantised_vs_float64.top1_agreement >= 0.95
    assert result.ratio <= 2.0


def test_8_bit_decode_steps_replay_in_cuda_graphs():
    spec = CASES["llama-gqa"]
    weights = quantize_weights(random_weights(spec, "fp16", seed=SEED, xp=cupy), "int8")
    prompts, continuations = teacher_forced_inputs(spec)
    eager = run_logits(spec, weights, prompts, continuations)
    graphed = run_logits(spec, weights, prompts, continuations, use_graph=True)
    for a, b in zip(eager, graphed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_int8_costs_less_accuracy_than_fp8():
    """int8 keeps 8 significant bits of the largest weight of a row, E4M3 4: its logits lie
    closer to the unquantised runtime's."""
    if not _fp8_runs():
        pytest.skip("fp8 weights need compute capability 8.9")
    spec = CASES["gptj"]
    weights = random_weights(spec, "fp16", seed=SEED, xp=cupy)
    costs = {
        fmt: accuracy_cost(spec, weights, quantize_weights(weights, fmt)) for fmt in ("int8", "fp8")
    }
    print({fmt: cost.to_dict() for fmt, cost in costs.items()})
    assert costs["int8"].mean_rel_logit_err < costs["fp8"].mean_rel_logit_err
    assert 0 < costs["int8"].mean_rel_logit_err < 0.1


def _ftbench_run(tmp_path, hf_config: dict, *options: str) -> list[dict]:
    """The records of `ftbench run` on a small random model of `hf_config`: batches 1 and 20
    (prefills of 24 and 480 tokens, decode steps of 1 and 20: both sides of 16 rows)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(hf_config))
    out = tmp_path / "run.json"
    run = [sys.executable, "-m", "ftbench", "run", "--config", str(config), *options,
           "--batch", "1,20", "--input-len", "24", "--output-len", "6", "--repeats", "2",
           "--out", str(out)]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())["records"]


def test_ftbench_run_with_8_bit_weights_records_them_and_their_cost(tmp_path):
    records = _ftbench_run(tmp_path, {
        "model_type": "gptj", "vocab_size": 509, "n_embd": 256, "n_layer": 2, "n_head": 4,
        "rotary_dim": 32, "n_positions": 128,
    }, "--weights", "int8")  # fmt: skip
    assert [record["status"] for record in records] == ["ok", "ok"]
    for record in records:
        assert record["weights"] == "int8"
        assert set(record["accuracy"]) == {
            "positions", "mean_rel_logit_err", "max_rel_logit_err", "top1_agreement"
        }  # fmt: skip
        assert record["gemm_dispatch"]["backends"].get("ftbench", 0) > 0


@pytest.mark.skipif("not _fp8_runs()")
@pytest.mark.parametrize("case", ["gptj", "llama-gqa"])
def test_fp8_activations_add_little_beyond_their_rounding(case):
    """W8A8 prefill (E4M3 activations per token, cuBLASLt FP8 GEMMs) against float64 that rounds
    the activations the same way: the runtime's fp16 inputs put a few values on the other side
    of an E4M3 rounding boundary, one E4M3 step (1/16) each, so allow 4x fp16's own error."""
    spec = CASES[case]
    result = kernel_error(spec, random_weights(spec, "fp16", seed=SEED), "fp8", activations="fp8")
    print(json.dumps(result.to_dict()))
    assert result.quantised_vs_float64.top1_agreement >= 0.9
    assert result.ratio <= 4.0


@pytest.mark.skipif("not _fp8_runs()")
def test_ftbench_run_dtype_fp8_records_w8a8(tmp_path):
    records = _ftbench_run(tmp_path, {
        "model_type": "llama", "vocab_size": 509, "hidden_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512,
        "max_position_embeddings": 128,
    }, "--dtype", "fp8")  # fmt: skip
    assert [(r["status"], r["weights"], r["activations"]) for r in records] == [
        ("ok", "fp8", "fp8"), ("ok", "fp8", "fp8")
    ]  # fmt: skip
    assert records[1]["gemm_dispatch"]["backends"].get("cublaslt", 0) > 0
