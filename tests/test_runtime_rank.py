"""A rank's decoder on the CPU (`tests/runtime_fakes.py`): tensor parallelism adds its
all-reduces where partial outputs join the residual stream, pipeline stages receive and send the
residual, micro-batches run the layers on their own rows; with none of them a `RankDecoder`
launches exactly what the one-GPU `Decoder` does."""

import dataclasses

import pytest

from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.model import Decoder
from ftbench.runtime.pipeline import Stage, stage_plan
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.rank import RankDecoder
from ftbench.runtime.sharding import shard, stage_weights
from runtime_fakes import FakeCommunicator, decode_step, installed, recorded_step, silent

SMALL = {"hidden_size": 128, "num_heads": 2, "head_dim": 64, "vocab_size": 97}
LLAMA = dataclasses.replace(
    load_builtin("llama2-7b"), name="llama-small", num_layers=2, num_kv_heads=2, rotary_dim=64,
    ffn_hidden_size=256, **SMALL,
)  # fmt: skip
GPTJ = dataclasses.replace(
    load_builtin("gptj-6b"), name="gptj-small", num_layers=2, num_kv_heads=2, rotary_dim=32,
    ffn_hidden_size=512, **SMALL,
)  # fmt: skip
GPT2 = dataclasses.replace(
    load_builtin("gpt2-124m"), name="gpt2-small", num_layers=2, num_kv_heads=2,
    ffn_hidden_size=512, max_positions=64, **SMALL,
)  # fmt: skip
BUFFERS = {"max_batch": 4, "max_seq_len": 64}


@pytest.fixture
def fake_cupy():
    with installed() as fake:
        yield fake


def _tensor_rank(spec, rank):
    weights = shard(random_weights(spec, "fp16", seed=1), spec, 2, rank)
    return RankDecoder(spec, weights, **BUFFERS, tp=2, comm=FakeCommunicator(rank, 2))


def _stage(spec, pp, index, micro_batches):
    layers = stage_plan(spec, pp)[index]
    weights = stage_weights(random_weights(spec, "fp16", seed=1), spec, layers)
    stage = Stage(index, pp, layers, FakeCommunicator(index, pp))
    return RankDecoder(spec, weights, **BUFFERS, stage=stage, micro_batches=micro_batches)


@pytest.mark.parametrize("spec", [LLAMA, GPTJ], ids=lambda spec: spec.name)
def test_a_rank_of_one_runs_what_the_one_gpu_decoder_runs(fake_cupy, spec):
    weights = random_weights(spec, "fp16", seed=1)
    step = decode_step([3, 9, 1])
    plain, _ = recorded_step(Decoder(spec, weights, **BUFFERS), step)
    rank, _ = recorded_step(RankDecoder(spec, weights, **BUFFERS), step)
    assert rank == plain


def test_tensor_parallel_all_reduces_each_partial_output_before_its_residual_add(fake_cupy):
    launches, _ = recorded_step(_tensor_rank(LLAMA, 1), decode_step([3, 9]))
    assert launches[:3] == [
        "embed from token 49 into residual", "all_reduce residual",
        "norm layers.0.ln1 of residual into normed",
    ]  # fmt: skip
    assert launches[6:9] == [
        "gemm layers.0.attn_out", "all_reduce attention_out",
        "add attention_out, norm layers.0.ln2 of residual into normed",
    ]  # fmt: skip
    assert launches[11:14] == [
        "gemm layers.0.ffn_down", "all_reduce mlp_out",
        "add mlp_out, norm layers.1.ln1 of residual into normed",
    ]  # fmt: skip
    assert launches[-2:] == ["gemm lm_head", "all_gather"]
    assert launches.count("all_reduce attention_out") == launches.count("all_reduce mlp_out") == 2


def test_tensor_parallel_gptj_adds_its_branches_then_all_reduces_once_per_layer(fake_cupy):
    launches, logits = recorded_step(_tensor_rank(GPTJ, 0), decode_step([3, 9]))
    join = launches.index("wait for branch")
    assert launches[join + 1 : join + 4] == [
        "cupy.add attention_out + mlp_out into mlp_out", "all_reduce mlp_out",
        "add mlp_out + layers.0.ffn_down.bias, norm layers.1.ln1 of residual into normed",
    ]  # fmt: skip
    assert sum(line.startswith("all_reduce") for line in launches) == 1 + GPTJ.num_layers
    # the LM head's bias on this rank's slice, then every rank's slice gathered
    assert launches[-3:] == [
        "gemm lm_head", "cupy.add logits + lm_head.bias into logits", "all_gather"
    ]  # fmt: skip
    assert logits.shape == (2, 2 * 49)


@pytest.mark.parametrize(
    ("rank", "embedding"), [(0, "embed + positions"), (1, "embed from token 49")]
)
def test_only_the_first_tensor_rank_adds_the_learned_positions(fake_cupy, rank, embedding):
    launches, _ = recorded_step(_tensor_rank(GPT2, rank), decode_step([3, 9]))
    assert launches[0] == f"{embedding} into residual"


def test_a_middle_stage_receives_runs_its_layers_and_sends_each_micro_batch(fake_cupy):
    spec = dataclasses.replace(LLAMA, num_layers=3)
    decoder = _stage(spec, 3, 1, micro_batches=2)
    launches, logits = recorded_step(decoder, decode_step([3, 9, 1]))
    # Its one layer's last add is wanted for the residual alone (the kernel norms anyway).
    micro_batch = [
        "recv residual from stage 0",
        "norm layers.0.ln1 of residual into normed",
        "gemm layers.0.qkv", "qkv_rotary", "decode_attention", "gemm layers.0.attn_out",
        "add attention_out, norm layers.0.ln2 of residual into normed",
        "gemm layers.0.ffn_up", "bias_act", "gemm layers.0.ffn_down",
        "add mlp_out, norm layers.0.ln1 of residual into normed",
        "send residual to stage 2",
    ]  # fmt: skip
    assert launches == micro_batch * 2 and logits is None


def test_micro_batches_receive_and_send_their_own_residual_rows(fake_cupy):
    decoder = _stage(dataclasses.replace(LLAMA, num_layers=3), 3, 1, micro_batches=2)
    moved = []

    def record(name, args, kwargs):
        if name in ("recv", "send"):
            offset = args[0].__array_interface__["data"][0] - decoder.residual.ctypes.data
            moved.append((name, offset // (4 * LLAMA.hidden_size), len(args[0])))

    decoder.ops = silent(decoder.ops).recorded(record)
    decoder.forward(decode_step([3, 9, 1]))
    # sequences 0-1 (rows 0-1), then sequence 2 (row 2)
    assert moved == [("recv", 0, 2), ("send", 0, 2), ("recv", 2, 1), ("send", 2, 1)]


def test_the_last_stage_in_micro_batches_runs_the_final_norm_once_after_them(fake_cupy):
    launches, logits = recorded_step(_stage(LLAMA, 2, 1, micro_batches=2), decode_step([3, 9]))
    last_add = "add mlp_out, norm layers.0.ln1 of residual into normed"
    assert launches.count("recv residual from stage 0") == 2 and launches.count(last_add) == 2
    assert launches[-3:] == [
        last_add, "norm final_norm of residual at last_rows into last_hidden", "gemm lm_head"
    ]  # fmt: skip
    assert logits.shape == (2, 97)


def test_the_first_stage_embeds_and_sends(fake_cupy):
    launches, logits = recorded_step(_stage(LLAMA, 2, 0, micro_batches=1), decode_step([3, 9]))
    assert launches[0] == "embed into residual" and "recv" not in " ".join(launches)
    assert launches[-2:] == [
        "add mlp_out, norm layers.0.ln1 of residual into normed", "send residual to stage 1"
    ]  # fmt: skip
    assert logits is None


def test_micro_batches_and_tensor_ranks_it_cannot_run_are_refused(fake_cupy):
    from ftbench.errors import InvalidInputError

    decoder = RankDecoder(LLAMA, random_weights(LLAMA, "fp16"), **BUFFERS, micro_batches=3)
    with pytest.raises(InvalidInputError, match="3 micro-batches need at least 3 sequences"):
        recorded_step(decoder, decode_step([3, 9]))
    with pytest.raises(InvalidInputError, match="micro_batches must be in 1..max_batch"):
        RankDecoder(LLAMA, random_weights(LLAMA, "fp16"), **BUFFERS, micro_batches=5)
    with pytest.raises(InvalidInputError, match="tp=2 needs a communicator of 2 ranks"):
        RankDecoder(LLAMA, random_weights(LLAMA, "fp16"), **BUFFERS, tp=2)
