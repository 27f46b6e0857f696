"""Check the CUDA runtime against Hugging Face transformers on small random models.

`compare_with_hf(case, dtype, directory)` builds a random HF model (GPT-J with partial rotary,
GPT-2, LLaMA with grouped-query attention), rounds its weights to `dtype` and saves it as
safetensors in `directory`; ftbench loads that checkpoint like a user's and runs it on the GPU.
The reference is the same HF model in float64 on the CPU (from the rounded weights), so the
comparison measures the runtime's arithmetic, not the weights' rounding. Measured:

- the relative logit error ‖ours − HF‖ / ‖HF‖ of every position: every prompt token of a ragged
  batch given left-padded (prefill) and 32 teacher-forced decode steps; the largest is reported;
- how often the argmax agrees over those positions (teacher-forced agreement);
- 32 greedily generated tokens per sequence against HF's greedy tokens (position by position;
  once a token differs the two continue from different text, so the margin by which HF preferred
  its token at the first difference is reported too: a near-tie within the logit error is
  rounding, a clear preference would be a bug).

Needs torch and transformers (the `test` extra) besides CuPy. Used by the GPU tests and by
`benchmarks/runtime_acceptance.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftbench.dtypes import RUNTIME_DTYPES, torch_dtype
from ftbench.profiles.hf import spec_from_hf_config
from ftbench.runtime.agreement import relative_errors
from ftbench.runtime.generate import Generator, unpad
from ftbench.runtime.hf_checkpoint import load_hf_weights
from ftbench.runtime.model import Decoder

DTYPES = RUNTIME_DTYPES
VOCAB = 1000
PROMPT_LENGTHS = (5, 17, 11)
STEPS = 32
SEED = 1234


def _common() -> dict[str, Any]:
    # Weights with std 0.1 make attention and the logits far from uniform, so a wrong
    # detail shows and greedy choices are not coin flips.
    return {"initializer_range": 0.1, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


CASES = {
    "gptj": lambda tf: tf.GPTJForCausalLM(
        tf.GPTJConfig(
            vocab_size=VOCAB, n_embd=256, n_layer=2, n_head=4, rotary_dim=16,
            n_positions=256, **_common(),
        )
    ),
    "gpt2": lambda tf: tf.GPT2LMHeadModel(
        tf.GPT2Config(
            vocab_size=VOCAB, n_embd=320, n_layer=2, n_head=5, n_positions=256, **_common()
        )
    ),
    "llama-gqa": lambda tf: tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
            rms_norm_eps=1e-5, max_position_embeddings=256, **_common(),
        )
    ),
    "qwen2": lambda tf: tf.Qwen2ForCausalLM(
        tf.Qwen2Config(
            vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
            rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=True,
            **_common(),
        )
    ),
    # Phi-3's fused qkv_proj and gate_up_proj tensors, with half of each head turned
    "phi3": lambda tf: tf.Phi3ForCausalLM(
        tf.Phi3Config(
            vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
            },
            max_position_embeddings=256, original_max_position_embeddings=256, **_common(),
        )
    ),
    # LLaMA 3.1's rope scaling with an original context of 16, so that the prompts and steps
    # (up to 48 positions) turn through all three bands of frequencies
    "llama3-rope": lambda tf: tf.LlamaForCausalLM(
        tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=512, intermediate_size=1376, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
            },
            rms_norm_eps=1e-5, max_position_embeddings=256, **_common(),
        )
    ),
}  # fmt: skip


@dataclass(frozen=True)
class CaseResult:
    """One model and dtype against HF: worst relative logit error and token agreements."""

    model: str
    dtype: str
    max_rel_logit_err: float
    prefill_max_rel_logit_err: float
    decode_max_rel_logit_err: float
    teacher_forced_agreement: float
    greedy_token_agreement: float
    greedy_divergence_margin: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_checkpoint(case: str, dtype: str, directory: Path) -> Any:
    """Save a random HF model of `case`, weights rounded to `dtype`, as safetensors in
    `directory`; return that model in float64 on the CPU (the reference)."""
    import torch
    import transformers

    torch.manual_seed(SEED + sum(map(ord, case)))
    model = CASES[case](transformers).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:  # move norm weights and biases away from 1 and 0
                parameter.add_(0.1 * torch.randn_like(parameter))
    model = model.to(torch_dtype(dtype))
    model.save_pretrained(directory, safe_serialization=True)
    return model.double()


def _hf_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(tokens[None].astype(np.int64))).logits[0].numpy()


def _hf_greedy(model: Any, prompt: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """HF's greedy tokens [steps] and the logits [steps, vocab] each was chosen from."""
    tokens, chosen_from = prompt, []
    for _ in range(steps):
        chosen_from.append(_hf_logits(model, tokens)[-1])
        tokens = np.append(tokens, chosen_from[-1].argmax())
    return tokens[len(prompt) :], np.stack(chosen_from)


def _divergence_margin(ours: np.ndarray, expected: np.ndarray, logits: np.ndarray) -> float:
    """Where our greedy tokens first differ from HF's: how far HF ranked its token above ours,
    as a fraction of the norm of its logits (comparable with the relative logit error; a
    margin below it is a near-tie that rounding may flip). 0 when they never differ."""
    differ = np.flatnonzero(ours != expected)
    if differ.size == 0:
        return 0.0
    step = differ[0]
    row = logits[step]
    return float((row[expected[step]] - row[ours[step]]) / np.linalg.norm(row))


def _left_padded(prompts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(prompt) for prompt in prompts)
    ids = np.zeros((len(prompts), width), np.int64)
    mask = np.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def compare_with_hf(case: str, dtype: str, directory: str | Path) -> CaseResult:
    """Run `case` in `dtype` through ftbench and HF and compare (see the module docstring)."""
    import cupy

    directory = Path(directory)
    reference = build_checkpoint(case, dtype, directory)
    spec = spec_from_hf_config(directory / "config.json", name=case)
    weights = load_hf_weights(directory, spec, dtype)
    rng = np.random.default_rng(SEED)
    prompts = [rng.integers(1, VOCAB, length) for length in PROMPT_LENGTHS]
    continuations = rng.integers(1, VOCAB, (len(prompts), STEPS))
    expected = [
        _hf_logits(reference, np.concatenate([prompt, continuation]))
        for prompt, continuation in zip(prompts, continuations, strict=True)
    ]
    decoder = Decoder(spec, weights, max_batch=64, max_seq_len=max(PROMPT_LENGTHS) + STEPS + 1)
    generator = Generator(decoder)

    def ours(logits: Any) -> np.ndarray:
        return cupy.asnumpy(logits.astype(cupy.float64))[:, :VOCAB]

    ids, mask = _left_padded(prompts)
    prefill = ours(generator.prefill(unpad(ids, mask), all_logits=True))
    prefill_expected = np.concatenate(
        [logits[: len(prompt)] for logits, prompt in zip(expected, prompts, strict=True)]
    )
    decoded, decode_expected = [], []
    for step in range(STEPS):
        decoded.append(ours(generator.decode(continuations[:, step])))
        decode_expected.append(
            np.stack([logits[len(p) + step] for logits, p in zip(expected, prompts, strict=True)])
        )
    decoded, decode_expected = np.concatenate(decoded), np.concatenate(decode_expected)
    prefill_err = float(relative_errors(prefill, prefill_expected).max())
    decode_err = float(relative_errors(decoded, decode_expected).max())
    agree = np.concatenate(
        [
            prefill.argmax(-1) == prefill_expected.argmax(-1),
            decoded.argmax(-1) == decode_expected.argmax(-1),
        ]
    )
    generated = generator.generate(prompts, STEPS).tokens
    greedy_runs = [_hf_greedy(reference, prompt, STEPS) for prompt in prompts]
    greedy = np.stack([tokens for tokens, _ in greedy_runs])
    margins = [
        _divergence_margin(ours_tokens, tokens, logits)
        for ours_tokens, (tokens, logits) in zip(generated, greedy_runs, strict=True)
    ]
    return CaseResult(
        model=case,
        dtype=dtype,
        max_rel_logit_err=max(prefill_err, decode_err),
        prefill_max_rel_logit_err=prefill_err,
        decode_max_rel_logit_err=decode_err,
        teacher_forced_agreement=float(agree.mean()),
        greedy_token_agreement=float((generated == greedy).mean()),
        greedy_divergence_margin=max(margins),
    )
