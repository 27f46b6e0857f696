"""The runtime's generation loop on the GPU: graphs, stop tokens, sampling, memory refusals."""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.generate import Generator, Sampling
from ftbench.runtime.model import Decoder
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.rank import make_decoder

pytestmark = pytest.mark.gpu

TINY = dataclasses.replace(
    load_builtin("llama2-7b"), name="tiny-llama", num_layers=2, hidden_size=256, num_heads=4,
    num_kv_heads=2, head_dim=64, rotary_dim=64, ffn_hidden_size=512, vocab_size=512,
)  # fmt: skip


def _generator(use_graph=True, max_batch=4, max_seq_len=64, micro_batches=1):
    import cupy

    weights = random_weights(TINY, "fp16", seed=3, xp=cupy)
    decoder = make_decoder(
        TINY, weights, max_batch=max_batch, max_seq_len=max_seq_len, micro_batches=micro_batches
    )
    return Generator(decoder, use_graph=use_graph)


def _prompts(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, TINY.vocab_size, length) for length in (7, 12, 3)[:batch]]


def test_graph_replay_gives_the_eager_tokens():
    eager = _generator(use_graph=False).generate(_prompts(), 24)
    graphed = _generator().generate(_prompts(), 24)
    np.testing.assert_array_equal(eager.tokens, graphed.tokens)
    assert graphed.step_ms.shape == (23,) and graphed.ttft_ms > 0


def test_prefill_graphs_replay_with_new_tokens(monkeypatch):
    # Prompts of the same lengths with new tokens every call: the first prefill runs eagerly,
    # the second is captured, later ones replay; each gives an eager generator's logits. With
    # room for two prefill graphs, a third set of lengths drops the oldest.
    import ftbench.runtime.generate as generate

    monkeypatch.setattr(generate, "PREFILL_GRAPHS", 2)
    graphed, eager = _generator(), _generator(use_graph=False)
    rng = np.random.default_rng(5)
    for lengths in [(7, 12, 3)] * 4 + [(5,), (5,), (9, 9)] * 2 + [(7, 12, 3)] * 2:
        prompts = [rng.integers(0, TINY.vocab_size, length) for length in lengths]
        expected = eager.prefill(prompts).get()
        np.testing.assert_array_equal(graphed.prefill(prompts).get(), expected)
    kept = sorted(key[1] for key in graphed._graphs if key[0] == "prefill")
    assert kept == [(7, 12, 3), (9, 9)] and len(graphed._prefill_steps) == 2
    # generation after a replayed prefill continues from the replayed KV cache
    prompts = [rng.integers(0, TINY.vocab_size, 9) for _ in range(2)]
    np.testing.assert_array_equal(
        graphed.generate(prompts, 12).tokens, eager.generate(prompts, 12).tokens
    )


def test_a_stop_token_ends_its_sequence_only():
    generator = _generator()
    free = generator.generate(_prompts(), 16)
    stop = int(free.tokens[0, 3])
    stopped = generator.generate(_prompts(), 16, stop_tokens=[stop], pad_token=-1)
    for row in range(3):
        hits = np.flatnonzero(free.tokens[row] == stop)
        if hits.size == 0:
            np.testing.assert_array_equal(stopped.tokens[row], free.tokens[row])
            assert stopped.lengths[row] == 16
            continue
        end = hits[0] + 1
        np.testing.assert_array_equal(stopped.tokens[row, :end], free.tokens[row, :end])
        assert (stopped.tokens[row, end:] == -1).all() and stopped.lengths[row] == end


def test_sampling_is_seeded_and_draws_anew_every_step():
    generator = _generator()
    hot = Sampling("sample", temperature=5.0, seed=11)
    first = generator.generate(_prompts(), 32, sampling=hot).tokens
    again = generator.generate(_prompts(), 32, sampling=hot).tokens
    other = generator.generate(_prompts(), 32, sampling=dataclasses.replace(hot, seed=12)).tokens
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    # at temperature 5 over 512 tokens, a replayed graph reusing one draw would repeat tokens
    assert min(len(set(row.tolist())) for row in first) > 16


def test_teacher_forced_decode_matches_generation_logits():
    generator = _generator()
    generated = generator.generate(_prompts(), 8).tokens
    generator.prefill(_prompts())
    for step in range(7):
        logits = generator.decode(generated[:, step])
        np.testing.assert_array_equal(
            logits[:, : TINY.vocab_size].argmax(axis=1).get(), generated[:, step + 1]
        )


def test_requests_that_do_not_fit_fail_before_allocating():
    import cupy

    weights = random_weights(TINY, "fp16", xp=cupy)
    with pytest.raises(InvalidInputError, match="largest batch that fits at 1048576 tokens"):
        Decoder(TINY, weights, max_batch=4096, max_seq_len=1 << 20)


def test_prompts_past_the_cache_are_refused():
    generator = _generator(max_seq_len=16)
    with pytest.raises(InvalidInputError, match="exceed max_seq_len"):
        generator.generate(_prompts(), 8)
    with pytest.raises(InvalidInputError, match="token ids must be in"):
        generator.prefill([np.array([1, TINY.vocab_size])])


def _breakdown_of_a_step(generator):
    """`breakdown` of the decode step after a short generation: (parts, whole ms, the parts'
    operation names)."""
    from ftbench.runtime.breakdown import breakdown

    generator.generate(_prompts(), 4)
    state = generator.state
    state.lengths[...] = state.positions + 1
    parts, whole_ms = breakdown(generator.decoder, state.step, bandwidth=4e12, peak_flops=7e14)
    return parts, whole_ms, [part.name.split(" ", 2)[2] for part in parts]


def test_breakdown_times_each_operation_of_a_decode_step_in_its_graph():
    generator = _generator()
    ops = generator.decoder.ops
    parts, whole_ms, names = _breakdown_of_a_step(generator)
    # embedding and the first norm; one layer's period (QKV to the next layer's norm); LM head
    assert names == [
        "embed", "residual_norm", "gemm", "qkv_rotary", "decode_attention", "gemm",
        "residual_norm", "gemm", "bias_act", "gemm", "residual_norm", "gemm",
    ]  # fmt: skip
    assert [part.per_step for part in parts] == [1, 1] + [TINY.num_layers] * 9 + [1]
    assert all(part.step_ms > 0 and part.roofline_fraction > 0 for part in parts)
    assert sum(part.step_ms for part in parts) == pytest.approx(whole_ms)
    assert generator.decoder.ops is ops  # the decoder's own operations are put back
    # the generator still works after the recording
    assert generator.generate(_prompts(), 4).tokens.shape == (3, 4)


def test_breakdown_counts_every_micro_batch():
    parts, whole_ms, names = _breakdown_of_a_step(_generator(micro_batches=2))
    # Each micro-batch embeds, runs every layer and adds its last deltas to the residual (the
    # last layer's "next norm"); the final norm and the LM head run once, after both.
    assert names == [
        "embed", "residual_norm", "gemm", "qkv_rotary", "decode_attention", "gemm",
        "residual_norm", "gemm", "bias_act", "gemm", "residual_norm", "residual_norm", "gemm",
    ]  # fmt: skip
    assert [part.per_step for part in parts] == [2, 2] + [2 * TINY.num_layers] * 9 + [1, 1]
    assert sum(part.step_ms for part in parts) == pytest.approx(whole_ms)


@pytest.mark.parametrize("micro_batches", [2, 3])
def test_micro_batches_in_graphs_give_the_tokens_of_one(micro_batches):
    # Three ragged prompts split 2 + 1 or 1 + 1 + 1; decode steps captured with every
    # micro-batch inside the one graph, then replayed.
    whole = _generator().generate(_prompts(), 24)
    split = _generator(micro_batches=micro_batches)
    eager = _generator(use_graph=False, micro_batches=micro_batches).generate(_prompts(), 24)
    graphed = split.generate(_prompts(), 24)
    np.testing.assert_array_equal(graphed.tokens, eager.tokens)
    # GEMMs of other row counts may round differently, and one near tie changes the rest of
    # a greedy sequence: the first tokens must agree (the logits are compared in
    # test_parallel_gpu.py::test_micro_batches_inside_decode_graphs_match_tp1).
    np.testing.assert_array_equal(graphed.tokens[:, 0], whole.tokens[:, 0])
    assert any(key[0] == "generate" for key in split._graphs)
    with pytest.raises(InvalidInputError, match="need at least 3 sequences"):
        _generator(micro_batches=3).generate(_prompts(batch=2), 4)
