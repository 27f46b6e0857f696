"""Token selection's source and launcher, without a GPU.

sampling.cu must build with nvcc for Ampere and Hopper, every template instance `sample` can ask
for, without spilling; `sample` must refuse what the kernels cannot do before touching the GPU,
and plan the launches it can (kernel instance, grid, block) from shapes and alignment. Arrays
here are NumPy arrays, or fakes that add the device pointer a CuPy array has.
"""

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.kernels import sampling
from ftbench.kernels.sampling import SOURCE_PATH, kernel_names, sample
from kernel_fakes import Fake, half, int32, launch_recorder
from nvcc import assert_compiles_without_spills, needs_nvcc

launches = launch_recorder(sampling)  # a fixture: the launches, recorded instead of run


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_every_instance_compiles_without_spills(tmp_path, arch):
    assert_compiles_without_spills(SOURCE_PATH, kernel_names, tmp_path, arch)


def test_instance_list_covers_the_model_dtype_and_float32_logits():
    names = kernel_names("bfloat16")
    assert len(names) == len(set(names)) == 8
    assert "ftb_sample<float, 4>" in names and "ftb_greedy<__nv_bfloat16, 1>" in names
    with pytest.raises(InvalidInputError, match="dtype"):
        kernel_names("float32")


# Launch plans --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "padded", "vector"),
    [("float16", 50304, 8), ("bfloat16", 50257, 1), ("float32", 128256, 4), ("float32", 50257, 1)],
)
@pytest.mark.parametrize("method", ["greedy", "sample"])
def test_sample_plan(launches, dtype, padded, vector, method):
    sample(Fake((4, padded), dtype), Fake((4,), "int32"), vocab_size=50257, method=method)
    (launch,) = launches
    assert launch.name == sampling.sample_kernel(dtype, vector, method)
    assert launch.grid == (4,)
    model_dtype = "float16" if dtype == "float32" else dtype
    assert launch.name in kernel_names(model_dtype)


def test_sample_passes_the_sampling_settings(launches):
    step = Fake((1,), "int64", ptr=4096)
    sample(Fake((2, 64), "float32"), Fake((2,), "int32"), vocab_size=60, method="sample",
           temperature=0.5, top_k=7, top_p=0.9, seed=2**64 - 1, step=step,
           finished=Fake((2,), "bool"), stop_tokens=Fake((3,), "int32"), pad_token=-1)  # fmt: skip
    args = launches[0].args
    assert args[1:3] == (64, 60) and args[6:8] == (3, -1)
    assert args[8:] == (2.0, 7, 0.9, 2**64 - 1, 0, 4096)
    assert launches[0].block == (sampling.SAMPLE_THREADS,)


def test_an_empty_batch_launches_nothing(launches):
    sample(Fake((0, 8), "float16"), Fake((0,), "int32"), vocab_size=8, method="greedy")
    assert launches == []


# Refusals ------------------------------------------------------------------------------------


def sample_call(**overrides):
    arguments = dict(logits=half(4, 16), tokens=int32(4), vocab_size=10, method="sample")
    arguments.update(overrides)
    return lambda: sample(**arguments)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (sample_call(method="beam"), "method must be one of"),
        (sample_call(logits=np.zeros((4, 16), np.float64)), "dtype float64"),
        (sample_call(vocab_size=17), "vocab_size must be in 1..16"),
        (sample_call(vocab_size=0), "vocab_size must be in 1..16"),
        (sample_call(tokens=np.zeros(4, np.int64)), "tokens must be int32"),
        (sample_call(tokens=int32(5)), r"tokens must be int32 \[4\]"),
        (sample_call(temperature=0.0), "use method='greedy'"),
        (sample_call(temperature=float("nan")), "temperature"),
        (sample_call(top_k=-1), "top_k must be in"),
        (sample_call(top_p=0.0), "top_p"),
        (sample_call(top_p=1.5), "top_p"),
        (sample_call(seed=-1), "seed must be in"),
        (sample_call(step=np.zeros(2, np.int64)), "step must be an int"),
        (sample_call(step=1.0), "step must be an int"),
        (sample_call(finished=np.zeros(4, np.int32)), "finished must be uint8 or bool"),
        (sample_call(stop_tokens=int32(2)), "need a finished array"),
        (sample_call(finished=np.zeros(4, bool), stop_tokens=int32(0)), "number of stop"),
        (sample_call(pad_token=2**31), "pad_token"),
        (
            sample_call(logits=half(1, 2**20 + 8), tokens=int32(1), vocab_size=2**20 + 1),
            "vocab_size <= 1048576",
        ),
    ],
)
def test_sample_refuses(call, message):
    with pytest.raises(InvalidInputError, match=message):
        call()
