"""The gpt-fast peer on the GPU: its compiled decode step (one CUDA graph) against the same
decoder run eagerly, and its generation's timeline."""

import dataclasses

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.random_weights import random_weights

pytestmark = pytest.mark.gpu

TINY = dataclasses.replace(
    load_builtin("gptj-6b"), name="tiny-gptj", num_layers=2, hidden_size=256, num_heads=4,
    num_kv_heads=4, head_dim=64, rotary_dim=32, ffn_hidden_size=1024, vocab_size=512,
)  # fmt: skip
BATCH, PROMPT, MAX_SEQ_LEN = 2, 16, 48


@pytest.fixture(scope="module")
def setup():
    import cupy

    from ftbench.modelbench.gptfast import GptFastPeer, StaticCacheDecoder, torch_weights

    weights = random_weights(TINY, "fp16", seed=0, xp=cupy)
    peer = GptFastPeer(TINY, weights)
    compile_s = peer.prepare(BATCH, MAX_SEQ_LEN)
    eager = StaticCacheDecoder(TINY, torch_weights(weights))
    eager.setup_caches(BATCH, MAX_SEQ_LEN)
    return peer, eager, compile_s


def _prompts(length, seed=0):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, (BATCH, length))


def test_compiled_decode_steps_match_eager(setup):
    import torch

    from ftbench.modelbench.gptfast import decode_one_token, prefill

    peer, eager, compile_s = setup
    assert compile_s > 0
    tokens = torch.as_tensor(_prompts(MAX_SEQ_LEN), device="cuda")
    prompt, positions = tokens[:, :PROMPT], torch.arange(PROMPT, device="cuda")
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        prefill(peer.model, prompt, positions)
        prefill(eager, prompt, positions)
        # Teacher forcing: every step feeds the next prompt token, up to the cache's end.
        for position in range(PROMPT, MAX_SEQ_LEN):
            token = tokens[:, position : position + 1].contiguous()  # as generate feeds it
            input_pos = torch.tensor([position], device="cuda")
            compiled = peer.decode_step(token, input_pos)[1].double()
            expected = decode_one_token(eager, token, input_pos)[1].double()
            error = (compiled - expected).abs().max() / expected.abs().max()
            assert error.item() < 1e-2, (position, error.item())


def test_generation_times_every_step_without_recompiling(setup):
    peer, _, compile_s = setup
    for seed in (1, 2):
        generation = peer.generate(_prompts(PROMPT, seed), MAX_SEQ_LEN - PROMPT)
        assert generation.tokens.shape == (BATCH, MAX_SEQ_LEN - PROMPT)
        assert generation.step_ms.shape == (MAX_SEQ_LEN - PROMPT - 1,)
        assert generation.ttft_ms > 0 and (generation.step_ms > 0).all()
    assert peer.prepare(BATCH, MAX_SEQ_LEN) == compile_s  # the same size compiles nothing new


def test_prompts_that_do_not_fit_the_prepared_cache_are_refused(setup):
    peer, _, _ = setup
    with pytest.raises(InvalidInputError, match="do not fit the prepared cache"):
        peer.generate(_prompts(PROMPT)[:1], 4)
    with pytest.raises(InvalidInputError, match="do not fit the prepared cache"):
        peer.generate(_prompts(PROMPT), MAX_SEQ_LEN)
