"""Peers measured beside ftbench: Hugging Face transformers on torch, same workload and method.

`hf_config(spec)` writes a `ModelSpec` back as an HF config (GPT-2, GPT-J, LLaMA families), so a
peer runs the same architecture from the same profile with random weights. `HfPeer.generate`
runs `model.generate` (greedy, exactly `output_len` new tokens) and times it with CUDA events on
torch's current stream: one event before the call, then one per generated token, recorded by a
stopping criterion that transformers calls after every token, so the peer's timeline has the
same shape as ftbench's (time to first token, then every decode step).

Modes: "eager" (plain `generate`), and "compile": a static KV cache with the forward pass under
`torch.compile(mode="reduce-overhead")`, which is how transformers documents a compiled
generation; where it fails its error is the peer's result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ftbench import dtypes
from ftbench.errors import InvalidInputError
from ftbench.profiles.spec import ModelSpec

MODES = ("eager", "compile")


def hf_config(spec: ModelSpec) -> dict[str, Any]:
    """The HF config.json contents of `spec` (gpt2, megatron-gpt as gpt2, gptj, llama)."""
    common = {"vocab_size": spec.vocab_size, "tie_word_embeddings": spec.tie_word_embeddings}
    if spec.family in ("gpt2", "megatron-gpt"):
        return {
            "model_type": "gpt2", "n_embd": spec.hidden_size, "n_layer": spec.num_layers,
            "n_head": spec.num_heads, "n_inner": spec.ffn_hidden_size,
            "n_positions": spec.max_positions, "activation_function": spec.activation,
            "layer_norm_epsilon": spec.norm_eps, **common,
        }  # fmt: skip
    if spec.family == "gptj":
        return {
            "model_type": "gptj", "n_embd": spec.hidden_size, "n_layer": spec.num_layers,
            "n_head": spec.num_heads, "n_inner": spec.ffn_hidden_size,
            "rotary_dim": spec.rotary_dim, "n_positions": spec.max_positions,
            "activation_function": spec.activation, "layer_norm_epsilon": spec.norm_eps,
            **common,
        }  # fmt: skip
    if spec.family in ("llama", "mistral"):
        # biases on q, k and v only: Qwen2's layout (LlamaConfig's attention_bias sets all four)
        qwen2 = spec.qkv_bias and not spec.attn_out_bias
        return {
            "model_type": "qwen2" if qwen2 else "llama", "hidden_size": spec.hidden_size,
            "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
            "intermediate_size": spec.ffn_hidden_size, "hidden_act": spec.activation,
            "rms_norm_eps": spec.norm_eps, "rope_theta": spec.rope_theta,
            "max_position_embeddings": spec.max_positions,
            "attention_bias": spec.qkv_bias, "mlp_bias": spec.ffn_bias,
            "rope_scaling": json.loads(spec.rope_scaling) if spec.rope_scaling else None,
            **common,
        }  # fmt: skip
    raise InvalidInputError(f"no HF peer for family {spec.family!r} (gpt2, gptj, llama)")


@dataclass(frozen=True)
class PeerGeneration:
    """The peer's timeline of one request, like `runtime.generate.Generation`'s, and the
    tokens it generated [batch, output_len]."""

    ttft_ms: float
    step_ms: np.ndarray
    tokens: np.ndarray


class HfPeer:
    """A random-weight HF model of `spec` on the current CUDA device, in fp16 or bf16."""

    def __init__(self, spec: ModelSpec, dtype: str, mode: str = "eager", seed: int = 0) -> None:
        import torch
        import transformers

        if mode not in MODES:
            raise InvalidInputError(f"HF peer mode must be one of {MODES}, not {mode!r}")
        config = hf_config(spec)
        config_class = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
        torch_dtype = dtypes.torch_dtype(dtype)
        torch.manual_seed(seed)
        with torch.device("cuda"):
            model = transformers.AutoModelForCausalLM.from_config(
                config_class, torch_dtype=torch_dtype
            )
        self.model = model.eval()
        self.mode = mode
        self.torch = torch
        if mode == "compile":
            self.model.generation_config.cache_implementation = "static"
            self.model.forward = torch.compile(
                self.model.forward, mode="reduce-overhead", fullgraph=True
            )

    def prepare(self, batch: int, max_seq_len: int) -> None:
        """Nothing to size ahead: "compile" compiles inside the first (warm-up) request, so its
        compile time is not measured apart (None)."""
        return None

    def generate(self, prompts: np.ndarray, output_len: int) -> PeerGeneration:
        """Greedy generation of exactly `output_len` tokens for prompts [batch, input_len]."""
        torch = self.torch
        input_ids = torch.from_numpy(np.asarray(prompts, dtype=np.int64)).cuda()
        marks = []

        class _Mark(transformers_stopping_criteria()):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
                marks.append(event)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        start = torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.inference_mode():
            output = self.model.generate(
                input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                max_new_tokens=output_len, min_new_tokens=output_len,
                stopping_criteria=[_Mark()], pad_token_id=0,
            )  # fmt: skip
        torch.cuda.synchronize()
        times = [start.elapsed_time(marks[0])]
        times += [a.elapsed_time(b) for a, b in zip(marks, marks[1:], strict=False)]
        tokens = output[:, input_ids.shape[1] :].cpu().numpy()
        return PeerGeneration(ttft_ms=times[0], step_ms=np.array(times[1:]), tokens=tokens)

    def peak_memory_bytes(self) -> int:
        return int(self.torch.cuda.max_memory_allocated())


def transformers_stopping_criteria() -> type:
    from transformers import StoppingCriteria

    return StoppingCriteria
