"""Attention benchmark: decode attention against HBM read bandwidth, context attention in TFLOP/s.

Decode (`decode_attention`, one new token per sequence, fp16, max_length = L = every length):
the bytes are K and V of every valid position read once (2 * B * Hkv * L * D * 2) plus q and
out; timed cold (the timer rotates among copies of the caches that together exceed twice the
L2). Shapes: GPT-J-6B (Hq = Hkv = 16, D = 256) and LLaMA-70B on 8-way tensor parallelism
(Hq = 8, Hkv = 1, D = 128), B = 1 and 64, L = 256 and 2048 (and 8192 for LLaMA). The fraction
is bytes / time / the HBM read bandwidth measured by the read probe (`modelbench.ceilings`).

Context (`context_attention`, causal prefill of one sequence, past 0, fp16): causal FLOPs
= 4 * Hq * D * S (S + 1) / 2 (Q K^T and P V over the visible pairs); timed hot (the inputs are
a few MB and the kernel is bound by the tensor cores). Shapes: GPT-J-6B, LLaMA-70B-TP8 and
LLaMA-2-7B (Hq = Hkv = 32, D = 128), S = 128 and 2048.

Each case is checked against float64 NumPy first (first and last sequence, or first and last
head) on fresh random inputs with the output poisoned; a wrong case is not timed.

    python benchmarks/attention.py [--out-dir benchmarks/results]

Writes DIR/attention-<time>.json (kind "attention").
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from _harness import parser, result_path, write
from ftbench.bench.environment import capture_environment
from ftbench.bench.timer import TimingPolicy, cold_input_sets, device_facts, time_launch
from ftbench.modelbench.ceilings import read_bandwidth

MODELS = {  # name: (query heads, kv heads, head dim)
    "gptj-6b": (16, 16, 256),
    "llama-70b-tp8": (8, 1, 128),
    "llama-2-7b": (32, 32, 128),
}
DECODE_CASES = [  # (model, batch, length)
    *[("gptj-6b", b, n) for b in (1, 64) for n in (256, 2048)],
    *[("llama-70b-tp8", b, n) for b in (1, 64) for n in (256, 2048, 8192)],
]
CONTEXT_CASES = [(model, s) for model in MODELS for s in (128, 2048)]
POLICY = TimingPolicy(warmup_ms=20.0, min_time_s=0.05, budget_s=1.0, target_rel_ci=0.01)
TOLERANCE = 4e-3


def random_fp16(cupy, shape, scale=1.0):
    return (cupy.random.standard_normal(shape, dtype=cupy.float32) * scale).astype(cupy.float16)


def softmax_rows(q, keys, values, scale, visible=None):
    """float64 softmax(scale q k^T) v: q [n, D], keys and values [L, D]."""
    scores = q @ keys.T * scale
    if visible is not None:
        scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True) @ values


def relative_error(got, reference):
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))


def timing_record(timing, **fields):
    return {**fields, "timing": timing.to_dict() if timing else None}


def run_decode(cupy, model, batch, length, l2_bytes, read_bytes_per_s):
    from ftbench.kernels.attention import decode_attention, decode_workspace, prepare

    q_heads, kv_heads, head_dim = MODELS[model]
    scale = head_dim**-0.5
    cache_bytes = 2 * batch * kv_heads * length * head_dim * 2
    nbytes = cache_bytes + 2 * batch * q_heads * head_dim * 2
    sets = cold_input_sets(nbytes, l2_bytes)
    operands = []
    for _ in range(sets):
        q = random_fp16(cupy, (batch, q_heads, head_dim), 2.0)
        k, v = (random_fp16(cupy, (batch, kv_heads, length, head_dim)) for _ in range(2))
        lengths = cupy.full(batch, length, dtype=cupy.int32)
        operands.append((q, k, v, lengths, cupy.full_like(q, cupy.nan)))
    prepare("float16", head_dim)
    workspace = decode_workspace(batch, q_heads, head_dim, length, num_kv_heads=kv_heads)

    def launch(index):
        decode_attention(*operands[index], scale=scale, max_length=length, workspace=workspace)

    launch(0)
    group = q_heads // kv_heads
    errors = []
    for b in {0, batch - 1}:
        q, k, v, _, out = (cupy.asnumpy(a[b]).astype(np.float64) for a in operands[0])
        errors += [
            relative_error(out[h], softmax_rows(q[h][None], k[h // group], v[h // group], scale)[0])
            for h in range(q_heads)
        ]
    error = max(errors)
    timing = None
    if error < TOLERANCE:
        name = f"decode {model} B={batch} L={length}"
        timing = time_launch(
            launch, name=name, l2="cold", input_sets=sets, set_bytes=nbytes, policy=POLICY
        )
    seconds = timing.median_ms / 1e3 if timing else float("nan")
    return timing_record(
        timing, kind="decode", model=model, batch=batch, length=length, q_heads=q_heads,
        kv_heads=kv_heads, head_dim=head_dim, dtype="float16", bytes=nbytes, rel_err=error,
        tb_per_s=nbytes / seconds / 1e12, read_fraction=nbytes / seconds / read_bytes_per_s,
    )  # fmt: skip


def run_context(cupy, model, tokens):
    from ftbench.kernels.attention import context_attention, prepare

    q_heads, kv_heads, head_dim = MODELS[model]
    scale = head_dim**-0.5
    q = random_fp16(cupy, (tokens, q_heads, head_dim), 2.0)
    k, v = (random_fp16(cupy, (1, kv_heads, tokens, head_dim)) for _ in range(2))
    cu_seqlens = cupy.asarray([0, tokens], dtype=cupy.int32)
    past_lens = cupy.zeros(1, dtype=cupy.int32)
    out = cupy.full_like(q, cupy.nan)
    prepare("float16", head_dim)

    def launch(_):
        context_attention(q, k, v, cu_seqlens, past_lens, out, scale=scale, max_q_len=tokens)

    launch(0)
    host = [cupy.asnumpy(a).astype(np.float64) for a in (q, k, v, out)]
    visible = np.tril(np.ones((tokens, tokens), bool))
    group = q_heads // kv_heads
    error = max(
        relative_error(
            host[3][:, h],
            softmax_rows(
                host[0][:, h], host[1][0, h // group], host[2][0, h // group], scale, visible
            ),  # fmt: skip
        )
        for h in {0, q_heads - 1}
    )
    flops = 4 * q_heads * head_dim * tokens * (tokens + 1) // 2
    timing = None
    if error < TOLERANCE:
        timing = time_launch(launch, name=f"context {model} S={tokens}", policy=POLICY)
    seconds = timing.median_ms / 1e3 if timing else float("nan")
    return timing_record(
        timing, kind="context", model=model, batch=1, tokens=tokens, q_heads=q_heads,
        kv_heads=kv_heads, head_dim=head_dim, dtype="float16", flops=flops, rel_err=error,
        tflop_per_s=flops / seconds / 1e12,
    )  # fmt: skip


def print_decode(record):
    timing = record["timing"]
    us = timing["median_ms"] * 1e3 if timing else float("nan")
    print(
        f"decode  {record['model']:<14} B={record['batch']:<3} L={record['length']:<5} "
        f"{record['bytes'] / 1e6:>9.1f} MB {us:>9.2f} us {record['tb_per_s']:>6.3f} TB/s "
        f"{100 * record['read_fraction']:>5.1f}% of read   err {record['rel_err']:.1e}",
        flush=True,
    )


def print_context(record):
    timing = record["timing"]
    us = timing["median_ms"] * 1e3 if timing else float("nan")
    print(
        f"context {record['model']:<14} S={record['tokens']:<5} {record['flops'] / 1e9:>9.2f} "
        f"GFLOP {us:>9.2f} us {record['tflop_per_s']:>7.1f} TFLOP/s   err {record['rel_err']:.1e}",
        flush=True,
    )


def main() -> None:
    args = parser(__doc__).parse_args()

    import cupy

    cupy.random.seed(int.from_bytes(os.urandom(4), "little"))
    started = time.perf_counter()
    l2_bytes, _ = device_facts(cupy)
    read = read_bandwidth()
    read_bytes_per_s = read["bytes_per_s"]
    print(f"HBM read (read probe, 4 GiB): {read_bytes_per_s / 1e12:.3f} TB/s", flush=True)
    environment = capture_environment()
    path = result_path(args.out_dir, "attention")
    records = []
    for model, batch, length in DECODE_CASES:
        records.append(run_decode(cupy, model, batch, length, l2_bytes, read_bytes_per_s))
        print_decode(records[-1])
        cupy.get_default_memory_pool().free_all_blocks()
    for model, tokens in CONTEXT_CASES:
        records.append(run_context(cupy, model, tokens))
        print_context(records[-1])
    ceiling = {"read_tb_per_s": read_bytes_per_s / 1e12, "read_timing": read["timing"]}
    write(path, "attention", [{"ceilings": ceiling}, *records], environment)

    print(f"\nfp16, {time.perf_counter() - started:.0f} s; decode cold L2, context hot L2")
    for record in records:
        (print_decode if record["kind"] == "decode" else print_context)(record)
    print(f"wrote {path}")
    if any(record["timing"] is None for record in records):
        sys.exit("some cases gave wrong results (see err)")


if __name__ == "__main__":
    main()
