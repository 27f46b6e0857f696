"""A gpt-fast-style peer: a plain PyTorch decoder with a static KV cache whose decode step is one
CUDA graph, `torch.compile(mode="reduce-overhead", fullgraph=True)`.

`StaticCacheDecoder` is built from a `ModelSpec` and ftbench's own `ModelWeights` (on the GPU the
very arrays the runtime runs, shared with torch through DLPack, not copied) and mirrors
`runtime.reference`: learned or rotary positions (GPT-J's interleaved pairs or rotate-half, over
the first `rotary_dim` dims), LayerNorm or RMSNorm, grouped-query attention, plain or gated FFN,
sequential or parallel (GPT-J) blocks.

The KV cache is preallocated per layer: keys and values [batch, kv_heads, max_seq_len, head_dim].
A forward pass writes its tokens' keys and values at `input_pos` with `index_copy_` and attends
over the whole cache under a causal mask, so every decode step has the same shapes and replays
the same graph. The prefill runs uncompiled (gpt-fast's default). The decode step runs with the
math attention backend, as gpt-fast's does, so Inductor generates the attention itself.

`GptFastPeer.prepare` sizes the cache for a batch and length and compiles and captures the
decode step once, timing it (the record's compile seconds); the timed `generate` then runs with
recompiles turned into errors, so no compile can hide inside a step's time. Its timeline is
`HfPeer`'s: CUDA events on torch's current stream before the prefill and after every token.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch
import torch.nn.functional as F

from ftbench.errors import GpuError, InvalidInputError
from ftbench.modelbench.peers import PeerGeneration
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.reference import rope_inverse_frequencies
from ftbench.runtime.weights import LayerWeights, Linear, ModelWeights, Norm, check_shapes

# Dtypes the model computes in: half types on the GPU, fp32 and fp64 for the CPU tests.
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

ACTIVATIONS = {
    "gelu_new": functools.partial(F.gelu, approximate="tanh"),
    "gelu": F.gelu,
    "silu": F.silu,
    "relu": F.relu,
}


def _frozen(tensor: torch.Tensor | None) -> torch.nn.Parameter | None:
    # Parameters, not plain attributes: CUDA graph trees treat parameters as static inputs, so
    # a replay reads the weights in place instead of copying them in.
    return None if tensor is None else torch.nn.Parameter(tensor, requires_grad=False)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least fp32, where norms and rotations are computed."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _Linear(torch.nn.Module):
    def __init__(self, weights: Linear) -> None:
        super().__init__()
        self.weight = _frozen(weights.weight)
        self.bias = _frozen(weights.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _Norm(torch.nn.Module):
    def __init__(self, spec: ModelSpec, weights: Norm) -> None:
        super().__init__()
        self.kind, self.eps = spec.norm, spec.norm_eps
        self.weight = _frozen(weights.weight)
        self.bias = _frozen(weights.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        wide = _wide(x)
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool):
    """Rotate the first 2 * pairs dims of every head of x [batch, tokens, heads, head_dim] by
    the angles whose cos and sin are [tokens, pairs] (`reference.rotary`'s pairing)."""
    rotary_dim = 2 * cos.shape[-1]
    rotated, passed = _wide(x[..., :rotary_dim]), x[..., rotary_dim:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    if interleaved:
        even, odd = rotated[..., 0::2], rotated[..., 1::2]
        rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], -1).flatten(-2)
    else:
        first, second = rotated.chunk(2, dim=-1)
        rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], -1)
    return torch.cat([rotated.type_as(x), passed], -1)


class _Block(torch.nn.Module):
    """One pre-norm block with its static KV cache (set by `StaticCacheDecoder.setup_caches`)."""

    def __init__(self, spec: ModelSpec, weights: LayerWeights) -> None:
        super().__init__()
        self.spec = spec
        self.ln1 = _Norm(spec, weights.ln1)
        self.qkv = _Linear(weights.qkv)
        self.attn_out = _Linear(weights.attn_out)
        self.ln2 = None if weights.ln2 is None else _Norm(spec, weights.ln2)
        self.ffn_up = _Linear(weights.ffn_up)
        self.ffn_down = _Linear(weights.ffn_down)
        self.activation = ACTIVATIONS[spec.activation]
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x, input_pos, cos, sin, mask) -> torch.Tensor:
        """x + attn(ln1(x)), then x + mlp(ln2(x)); or, parallel (GPT-J), x + attn(ln1(x)) +
        mlp(ln1(x))."""
        normed = self.ln1(x)
        attention = self.attn_out(self.attention(normed, input_pos, cos, sin, mask))
        if self.ln2 is None:
            return x + attention + self.mlp(normed)
        x = x + attention
        return x + self.mlp(self.ln2(x))

    def attention(self, x, input_pos, cos, sin, mask) -> torch.Tensor:
        spec = self.spec
        batch, tokens, _ = x.shape
        q_width, kv_width = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        q, k, v = self.qkv(x).split([q_width, kv_width, kv_width], dim=-1)
        q = q.view(batch, tokens, spec.num_heads, spec.head_dim)
        k = k.view(batch, tokens, spec.num_kv_heads, spec.head_dim)
        v = v.view(batch, tokens, spec.num_kv_heads, spec.head_dim)
        if cos is not None:
            q = rotary(q, cos, sin, spec.rotary_interleaved)
            k = rotary(k, cos, sin, spec.rotary_interleaved)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        self.k_cache.index_copy_(2, input_pos, k)
        self.v_cache.index_copy_(2, input_pos, v)
        keys, values = self.k_cache, self.v_cache
        group = spec.num_heads // spec.num_kv_heads
        if group > 1:  # query head h reads KV head h // group
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        context = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return context.transpose(1, 2).reshape(batch, tokens, q_width)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        up = self.ffn_up(x)
        if self.spec.gated_ffn:
            gate, up = up.chunk(2, dim=-1)
            return self.ffn_down(self.activation(gate) * up)
        return self.ffn_down(self.activation(up))


class StaticCacheDecoder(torch.nn.Module):
    """A decoder of `spec` over `weights` (torch tensors, see `torch_weights`); call
    `setup_caches` before running it."""

    def __init__(self, spec: ModelSpec, weights: ModelWeights) -> None:
        super().__init__()
        if spec.architecture != "decoder":
            raise InvalidInputError(
                f"{spec.name}: the gpt-fast peer runs decoders; {spec.family} is an "
                f"{spec.architecture} model"
            )
        check_shapes(weights, spec)
        if spec.position_embedding == "rotary":
            rope_inverse_frequencies(spec)  # a rope scaling it does not implement: an error
        if weights.embed.dtype not in DTYPES:
            raise InvalidInputError(f"the gpt-fast peer computes in {DTYPES}, not {weights.dtype}")
        self.spec = spec
        self.embed = _frozen(weights.embed)
        self.positions = _frozen(weights.positions)
        self.layers = torch.nn.ModuleList(_Block(spec, layer) for layer in weights.layers)
        self.final_norm = _Norm(spec, weights.final_norm)
        self.lm_head = _Linear(weights.lm_head)
        for name in ("causal_mask", "cos", "sin"):
            self.register_buffer(name, None, persistent=False)
        self.max_batch = self.max_seq_len = 0

    def setup_caches(self, max_batch: int, max_seq_len: int) -> None:
        """Allocate zeroed KV caches for `max_batch` sequences of up to `max_seq_len` tokens,
        the causal mask and the rotary angles of every position."""
        spec = self.spec
        if spec.position_embedding == "learned" and max_seq_len > spec.max_positions:
            raise InvalidInputError(
                f"{spec.name} has {spec.max_positions} learned positions, fewer than {max_seq_len}"
            )
        if spec.sliding_window and max_seq_len > spec.sliding_window:
            raise InvalidInputError(
                f"{spec.name} attends over a sliding window of {spec.sliding_window} tokens, "
                "which is not implemented"
            )
        dtype, device = self.embed.dtype, self.embed.device
        shape = (max_batch, spec.num_kv_heads, max_seq_len, spec.head_dim)
        for layer in self.layers:
            layer.k_cache = torch.zeros(shape, dtype=dtype, device=device)
            layer.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.causal_mask = torch.ones(max_seq_len, max_seq_len, device=device).tril().bool()
        if spec.position_embedding == "rotary":
            angles = torch.outer(
                torch.arange(max_seq_len, dtype=torch.float64),
                torch.from_numpy(rope_inverse_frequencies(spec)),
            )
            wide = torch.promote_types(dtype, torch.float32)
            self.cos = angles.cos().to(device=device, dtype=wide)
            self.sin = angles.sin().to(device=device, dtype=wide)
        self.max_batch, self.max_seq_len = max_batch, max_seq_len

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Logits [batch, tokens, vocab] of tokens [batch, tokens] at positions input_pos
        [tokens], whose keys and values go into the cache."""
        return self.logits(self.hidden(tokens, input_pos))

    def hidden(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """The final norm's output [batch, tokens, hidden]."""
        x = F.embedding(tokens, self.embed)
        if self.positions is not None:
            x = x + self.positions[input_pos]
        cos = sin = None
        if self.cos is not None:
            cos, sin = self.cos[input_pos], self.sin[input_pos]
        mask = self.causal_mask[None, None, input_pos]
        for layer in self.layers:
            x = layer(x, input_pos, cos, sin, mask)
        return self.final_norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)[..., : self.spec.vocab_size]


def torch_weights(weights: ModelWeights) -> ModelWeights:
    """`weights` as torch tensors on the arrays' own device, sharing their memory (DLPack)."""
    return weights.map(torch.from_dlpack)


def prefill(model: StaticCacheDecoder, tokens: torch.Tensor, input_pos: torch.Tensor):
    """Run prompts tokens [batch, tokens] at input_pos [tokens] into the cache; the greedy next
    tokens [batch, 1] (the LM head runs on the last position only)."""
    return model.logits(model.hidden(tokens, input_pos)[:, -1:]).argmax(-1)


def decode_one_token(model: StaticCacheDecoder, token: torch.Tensor, input_pos: torch.Tensor):
    """One decode step of token [batch, 1] at input_pos [1]: (greedy next tokens [batch, 1],
    logits [batch, 1, vocab])."""
    logits = model(token, input_pos)
    return logits.argmax(-1), logits


class GptFastPeer:
    """The gpt-fast way on the current CUDA device: `weights` (CuPy arrays, the runtime's) in a
    `StaticCacheDecoder`, its decode step compiled into one CUDA graph."""

    def __init__(self, spec: ModelSpec, weights: ModelWeights) -> None:
        self.torch = torch
        self.model = StaticCacheDecoder(spec, torch_weights(weights))
        if self.model.embed.device.type != "cuda":
            raise InvalidInputError("the gpt-fast peer runs on a CUDA device (weights there)")
        self.weight_bytes = sum(
            {id(array): array.nbytes for array in weights.named_tensors().values()}.values()
        )
        self.compiled_decode = torch.compile(
            decode_one_token, mode="reduce-overhead", fullgraph=True
        )
        self.compile_s = 0.0

    def prepare(self, batch: int, max_seq_len: int) -> float:
        """Size the static cache for `batch` sequences of up to `max_seq_len` tokens, then
        compile and capture the decode step for it; the seconds that took (wall clock: the
        first compiled call, CUDA graph warm-up and capture). A new size starts from a clean
        compiler state, so each size is compiled once."""
        if (batch, max_seq_len) == (self.model.max_batch, self.model.max_seq_len):
            return self.compile_s
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        self.model.setup_caches(batch, max_seq_len)
        skips = counters["inductor"]["cudagraph_skips"]
        token = torch.zeros((batch, 1), dtype=torch.long, device="cuda")
        input_pos = torch.zeros(1, dtype=torch.long, device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad(), torch._inductor.config.patch(coordinate_descent_tuning=True):
            for _ in range(3):  # compile and run eagerly, then capture, then replay
                self.decode_step(token, input_pos)
        torch.cuda.synchronize()
        self.compile_s = time.perf_counter() - start
        if counters["inductor"]["cudagraph_skips"] > skips:
            raise GpuError(
                "Inductor did not capture the decode step as a CUDA graph (TORCH_LOGS=perf_hints "
                "says why)"
            )
        return self.compile_s

    def generate(self, prompts: np.ndarray, output_len: int) -> PeerGeneration:
        """Greedy generation of exactly `output_len` tokens for prompts [batch, input_len], in
        the prepared cache (`prepare(batch, >= input_len + output_len)`)."""
        tokens = torch.as_tensor(np.asarray(prompts, dtype=np.int64), device="cuda")
        batch, input_len = tokens.shape
        if batch != self.model.max_batch or input_len + output_len > self.model.max_seq_len:
            raise InvalidInputError(
                f"{batch} prompts of {input_len} + {output_len} tokens do not fit the prepared "
                f"cache ({self.model.max_batch} x {self.model.max_seq_len}); prepare() first"
            )
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(output_len + 1)]
        generated = []
        with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
            marks[0].record()
            token = prefill(self.model, tokens, torch.arange(input_len, device="cuda"))
            marks[1].record()
            generated.append(token)
            input_pos = torch.tensor([input_len], device="cuda")
            for mark in marks[2:]:
                # A copy in standard strides: the graph's output is overwritten by the next
                # replay, and other strides would be another graph (a recompile).
                token = self.decode_step(token, input_pos)[0].clone(
                    memory_format=torch.contiguous_format
                )
                input_pos += 1
                mark.record()
                generated.append(token)
        torch.cuda.synchronize()
        times = [a.elapsed_time(b) for a, b in zip(marks, marks[1:], strict=False)]
        return PeerGeneration(
            ttft_ms=times[0],
            step_ms=np.array(times[1:]),
            tokens=torch.cat(generated, 1).cpu().numpy(),
        )

    def decode_step(self, token: torch.Tensor, input_pos: torch.Tensor):
        """One compiled decode step (a CUDA graph replay once prepared); its outputs are
        overwritten by the next step."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        torch.compiler.cudagraph_mark_step_begin()
        with sdpa_kernel(SDPBackend.MATH):
            return self.compiled_decode(self.model, token, input_pos)

    def peak_memory_bytes(self) -> int:
        """torch's peak allocation plus the weights, which live in CuPy's memory pool."""
        return int(torch.cuda.max_memory_allocated()) + self.weight_bytes
