"""The one-GPU decoder's step on the CPU (`tests/runtime_fakes.py`): what it launches, in which
order, reads as the math of `runtime.model`'s docstring, with the fused residual adds where the
math has the adds; `DecoderOps.recorded`, the hook the per-operation breakdown uses."""

import dataclasses

import numpy as np
import pytest

from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.model import Decoder, DecoderOps
from ftbench.runtime.random_weights import random_weights
from runtime_fakes import decode_step, installed, recorded_step, silent

SMALL = {"num_layers": 2, "hidden_size": 128, "num_heads": 2, "head_dim": 64, "vocab_size": 97}
LLAMA = dataclasses.replace(
    load_builtin("llama2-7b"), name="llama-small", num_kv_heads=1, rotary_dim=64,
    ffn_hidden_size=256, **SMALL,
)  # fmt: skip
GPTJ = dataclasses.replace(
    load_builtin("gptj-6b"), name="gptj-small", num_kv_heads=2, rotary_dim=32,
    ffn_hidden_size=512, **SMALL,
)  # fmt: skip
GPT2 = dataclasses.replace(
    load_builtin("gpt2-124m"), name="gpt2-small", num_kv_heads=2, ffn_hidden_size=512,
    max_positions=64, **SMALL,
)  # fmt: skip


@pytest.fixture
def fake_cupy():
    with installed() as fake:
        yield fake


def _decoder(spec):
    return Decoder(spec, random_weights(spec, "fp16", seed=1), max_batch=4, max_seq_len=64)


def sequential_layer(index, then):
    """Layer `index` of LLaMA: norm (done before) -> attention -> add -> ln2 -> MLP -> add, each
    add with the norm after it."""
    layer = f"layers.{index}"
    return [
        f"gemm {layer}.qkv", "qkv_rotary", "decode_attention", f"gemm {layer}.attn_out",
        f"add attention_out, norm {layer}.ln2 of residual into normed",
        f"gemm {layer}.ffn_up", "bias_act", f"gemm {layer}.ffn_down",
        f"add mlp_out, {then}",
    ]  # fmt: skip


def test_a_sequential_step_is_embed_then_each_layer_then_the_final_norm_and_lm_head(fake_cupy):
    launches, logits = recorded_step(_decoder(LLAMA), decode_step([3, 9, 1]))
    assert launches == [
        "embed into residual",
        "norm layers.0.ln1 of residual into normed",
        *sequential_layer(0, "norm layers.1.ln1 of residual into normed"),
        *sequential_layer(1, "norm final_norm of residual at last_rows into last_hidden"),
        "gemm lm_head",
    ]
    assert logits.shape == (3, 97) and logits.base is not None  # a view of the logits buffer


def test_the_biases_of_attention_out_and_ffn_down_ride_in_the_residual_adds(fake_cupy):
    # GPT-2: learned positions in the embedding, LayerNorm, biases, the LM head tied to it
    launches, _ = recorded_step(_decoder(GPT2), decode_step([3, 9]))
    assert launches[0] == "embed + positions into residual"
    assert launches[6] == (
        "add attention_out + layers.0.attn_out.bias, norm layers.0.ln2 of residual into normed"
    )
    assert launches[10] == (
        "add mlp_out + layers.0.ffn_down.bias, norm layers.1.ln1 of residual into normed"
    )
    assert launches[-1] == "gemm embed"


def test_the_step_runs_on_its_rows_of_the_buffers(fake_cupy):
    decoder = _decoder(LLAMA)
    step = decode_step([3, 9])
    norms = []

    def record(name, args, kwargs):
        if name == "residual_norm":
            norms.append((*args[:2], kwargs))

    decoder.ops = silent(decoder.ops).recorded(record)
    decoder.forward(step)
    first, *_, final = norms
    assert first[0].shape == (2, 128) and first[0].base is decoder.residual
    assert first[2] == {"rows": None}  # the first ln1 adds nothing
    # the final norm reads every row of the step and writes the last rows' into the LM head's
    assert final[0].shape == (2, 128) and final[1].shape == (2, 128)
    assert final[1].base is decoder.last_hidden and final[2]["rows"] is step.last_rows


def test_a_parallel_block_runs_its_mlp_on_the_branch_stream_beside_attention(fake_cupy):
    # GPT-J: x + attn(ln1(x)) + mlp(ln1(x)); the MLP's kernels on the branch stream between the
    # fork and the join, both outputs and both biases added in one kernel with the next norm.
    launches, _ = recorded_step(_decoder(GPTJ), decode_step([4, 2]))
    block = [
        "record", "branch: wait for main",
        "branch: gemm layers.0.ffn_up", "branch: bias_act", "branch: gemm layers.0.ffn_down",
        "gemm layers.0.qkv", "qkv_rotary", "decode_attention", "gemm layers.0.attn_out",
        "branch: record", "wait for branch",
        "add attention_out + mlp_out + layers.0.ffn_down.bias, "
        "norm layers.1.ln1 of residual into normed",
    ]  # fmt: skip
    assert launches[:2] == ["embed into residual", "norm layers.0.ln1 of residual into normed"]
    assert launches[2:14] == block
    assert launches[-3:] == [
        "add attention_out + mlp_out + layers.1.ffn_down.bias, "
        "norm final_norm of residual at last_rows into last_hidden",
        "gemm lm_head",
        "cupy.add logits + lm_head.bias into logits",
    ]


def test_without_overlap_a_parallel_block_runs_attention_then_the_mlp_on_one_stream(fake_cupy):
    decoder = _decoder(GPTJ)
    decoder.overlap_branches = False  # what the per-operation breakdown does
    launches, _ = recorded_step(decoder, decode_step([4, 2]))
    assert launches[2:10] == [
        "gemm layers.0.qkv", "qkv_rotary", "decode_attention", "gemm layers.0.attn_out",
        "gemm layers.0.ffn_up", "bias_act", "gemm layers.0.ffn_down",
        "add attention_out + mlp_out + layers.0.ffn_down.bias, "
        "norm layers.1.ln1 of residual into normed",
    ]  # fmt: skip


def test_a_prefill_attends_over_the_packed_tokens_with_context_attention(fake_cupy):
    decoder = _decoder(LLAMA)
    step = dataclasses.replace(
        decode_step([0, 0]), tokens=np.arange(5, dtype=np.int32),
        seq_ids=np.array([0, 0, 0, 1, 1], np.int32), positions=np.array([0, 1, 2, 0, 1], np.int32),
        cu_seqlens=np.array([0, 3, 5], np.int32), lengths=np.array([3, 2], np.int32),
        last_rows=np.array([2, 4], np.int32), decode=False, max_q_len=3,
    )  # fmt: skip
    launches, logits = recorded_step(decoder, step)
    assert launches.count("context_attention") == 2 and "decode_attention" not in launches
    assert logits.shape == (2, 97)


def test_recorded_ops_run_the_original_then_record_and_keep_missing_entries_missing():
    calls = []
    ops = DecoderOps(linear=lambda x, w, out: calls.append(("run", x)))
    recorded = ops.recorded(lambda name, args, kwargs: calls.append((name, args, kwargs)))
    recorded.linear(1, 2, out=3)
    assert calls == [("run", 1), ("linear", (1, 2), {"out": 3})]
    assert ops.linear is not recorded.linear and recorded.embed is not DecoderOps.embed
    assert dataclasses.replace(ops, embed=None).recorded(print).embed is None
