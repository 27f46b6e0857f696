"""The per-operation breakdown's bookkeeping on the CPU (`tests/runtime_fakes.py`): the
operations it records through the decoder's `ops` and the places of the layer pattern it sums
them into, for one GPU, micro-batches and a tensor-parallel rank. (Its timing is GPU-only:
tests/gpu/test_runtime_gpu.py.)"""

import dataclasses

import numpy as np
import pytest

from ftbench.profiles.catalog import load_builtin
from ftbench.runtime import breakdown
from ftbench.runtime.model import Decoder
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.rank import RankDecoder
from ftbench.runtime.sharding import shard
from runtime_fakes import FakeCommunicator, decode_step, installed, silent

TINY = dataclasses.replace(
    load_builtin("llama2-7b"), name="tiny-llama", num_layers=2, hidden_size=256, num_heads=4,
    num_kv_heads=2, head_dim=64, rotary_dim=64, ffn_hidden_size=512, vocab_size=512,
)  # fmt: skip
BUFFERS = {"max_batch": 4, "max_seq_len": 64}
# One layer's period, from its QKV GEMM to the add and norm that open the next layer.
LAYER = [
    "gemm", "qkv_rotary", "decode_attention", "gemm", "residual_norm", "gemm", "bias_act", "gemm",
    "residual_norm",
]  # fmt: skip


@pytest.fixture
def fake_cupy(monkeypatch):
    monkeypatch.setattr(breakdown, "_record_node", lambda event: None)
    with installed() as fake:
        yield fake


def _places(decoder, step):
    """`breakdown`'s places for one step of `decoder`, every operation taking 1 ms."""
    decoder.ops = silent(decoder.ops)
    ops = decoder.ops
    lengths = [int(length) for length in step.lengths]
    with breakdown._timed_operations(decoder, step, lengths) as operations:
        decoder.forward(step)
    assert decoder.ops is ops and decoder.overlap_branches  # the decoder's own, put back
    times = np.ones(len(operations))
    return breakdown._by_place(decoder, operations, times, bandwidth=4e12, peak_flops=7e14)


def test_a_step_is_its_start_one_layer_period_per_layer_and_the_lm_head(fake_cupy):
    decoder = Decoder(TINY, random_weights(TINY, "fp16", seed=3), **BUFFERS)
    places = _places(decoder, decode_step([7, 12, 3]))
    assert [place.name for place in places] == [
        "start 00 embed", "start 01 residual_norm",
        *[f"layer {position:02d} {name}" for position, name in enumerate(LAYER)],
        "head 09 gemm",
    ]  # fmt: skip
    assert [place.per_step for place in places] == [1, 1] + [TINY.num_layers] * 9 + [1]
    # decode attention reads each sequence's cached K and V once: 2 x tokens x kv heads x dim
    attention = places[4]
    assert attention.bytes == 2 * (8 + 13 + 4) * 2 * 64 * 2


def test_micro_batches_count_every_layer_once_per_micro_batch(fake_cupy):
    decoder = RankDecoder(TINY, random_weights(TINY, "fp16", seed=3), **BUFFERS, micro_batches=2)
    places = _places(decoder, decode_step([7, 12, 3]))
    assert [place.name.split(" ", 2)[2] for place in places] == [
        "embed", "residual_norm", *LAYER, "residual_norm", "gemm"
    ]  # fmt: skip
    assert [place.per_step for place in places] == [2, 2] + [2 * TINY.num_layers] * 9 + [1, 1]


def test_a_tensor_rank_times_its_communicator_calls(fake_cupy):
    weights = shard(random_weights(TINY, "fp16", seed=3), TINY, 2, 0)
    decoder = RankDecoder(TINY, weights, **BUFFERS, tp=2, comm=FakeCommunicator(0, 2))
    calls = breakdown.communication_calls(_places(decoder, decode_step([7, 12, 3])))
    # the embedding's all-reduce, two per layer, and the logits' gather
    assert calls == {
        "all_reduce": {"calls": 1 + 2 * TINY.num_layers, "ms": 5.0},
        "all_gather": {"calls": 1, "ms": 1.0},
    }
