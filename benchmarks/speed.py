"""The runtime at the hardware limit: GPT-J 6B fp16 decode and prefill against their floors and
against peers, all measured in one run on one GPU.

1. Ceilings: the HBM read bandwidth and the fp16 dense GEMM peak, measured first.
2. ftbench (through --cache, the tuned-config cache) with random weights, 128 tokens in and 128
   out at batch 1 and 64, and a 1 x 2048 prefill (time to first token of a 2048-token prompt):
   the median decode step against its floor (weights plus the KV cache read once at the
   measured bandwidth) and the prefill against the GEMM peak (its FLOPs at that peak).
3. Peers at batch 1, 128/128, same method: HF transformers eager `generate()` and the
   gpt-fast-style compiled decoder (`modelbench.gptfast`), each with its own random weights.
4. Where the step's time goes: the per-operation breakdown (`runtime.breakdown`) of a decode
   step at batch 1 and 64 (at length 192, the middle of the 128 generated tokens) and of the
   1 x 2048 prefill, each operation against its own floor.

    python benchmarks/speed.py --cache FILE --out-dir benchmarks/results [--peers hf-eager,gpt-fast]
    python benchmarks/speed.py --cache FILE --out-dir DIR --breakdown-only   (4. alone)

Writes DIR/speed-<time>.json (every record and breakdown, the environment) and
DIR/acceptance/speed.json (not with --breakdown-only).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ftbench.bench.environment import capture_environment
from ftbench.bench.results import write_results
from ftbench.files import write_json_atomic
from ftbench.modelbench.ceilings import measure_ceilings
from ftbench.modelbench.engine import run_benchmark
from ftbench.modelbench.grid import RunConfig, RunPoint
from ftbench.profiles.catalog import load_builtin

MODEL = "gptj-6b"
DECODE = (RunPoint(1, 128, 128), RunPoint(64, 128, 128))
PREFILL = RunPoint(1, 2048, 2)  # time to first token; one decode step after it
PEER_POINT = RunPoint(1, 128, 128)


def breakdowns(spec, cache_path: str | None, ceilings) -> list[dict]:
    """Per-operation tables of decode steps at batch 1 and 64 and of the 1 x 2048 prefill."""
    import cupy
    import numpy as np

    from ftbench.gemm.cache import open_tuned_cache
    from ftbench.gemm.dispatch import GemmDispatch
    from ftbench.runtime.breakdown import breakdown
    from ftbench.runtime.generate import Generator
    from ftbench.runtime.model import Decoder, length_bound
    from ftbench.runtime.random_weights import random_weights

    cache = open_tuned_cache(cache_path, capture_environment()).cache if cache_path else None
    weights = random_weights(spec, "fp16", xp=cupy)
    rng = np.random.default_rng(0)
    bandwidth, peak = ceilings.hbm_read_bytes_per_s, ceilings.gemm_peak_flops
    tables = []
    for batch, input_len, generated in ((1, 128, 64), (64, 128, 64), (1, 2048, 0)):
        decoder = Decoder(
            spec, weights, max_batch=batch, max_seq_len=input_len + 128,
            max_tokens=batch * input_len, gemm=GemmDispatch(cache),
        )  # fmt: skip
        generator = Generator(decoder)
        prompts = list(rng.integers(0, spec.vocab_size, (batch, input_len)))
        if generated:
            generator.generate(prompts, generated)
            state = generator.state
            cupy.add(state.positions, 1, out=state.lengths)
            length = input_len + generated
            step = replace(state.step, max_length=length_bound(length, decoder.max_seq_len))
            case = f"decode batch {batch} at length {length}"
        else:
            step = generator.prefill_inputs(prompts)
            case = f"prefill {batch}x{input_len}"
        cupy.cuda.Device().synchronize()
        parts, whole_ms = breakdown(decoder, step, bandwidth, peak)
        floor_ms = sum(part.floor_ms for part in parts)
        print(f"\n{case}: {whole_ms:.3f} ms with events, floor {floor_ms:.3f} ms")
        print(f"{'operation':32} {'x':>3} {'ms/step':>8} {'share':>6} {'of floor':>8}")
        for part in parts:
            print(f"{part.name:32} {part.per_step:3d} {part.step_ms:8.3f} "
                  f"{part.step_ms / whole_ms:6.1%} {part.roofline_fraction:8.1%}")  # fmt: skip
        tables.append({
            "case": case, "whole_ms": whole_ms, "floor_ms": floor_ms,
            "operations": [part.to_dict() for part in parts],
            "gemm_dispatch": decoder.gemm.stats.to_dict(),
        })  # fmt: skip
        del generator, decoder
        cupy.get_default_memory_pool().free_all_blocks()
    return tables


def _median(record: dict | None, metric: str) -> float | None:
    if record is None or record.get("status", "ok") != "ok":
        return None
    return record[metric]["median_ms"]


def summary(records: list[dict], environment, kind: str) -> dict:
    def find(engine: str, point: RunPoint) -> dict | None:
        return next(
            (r for r in records if r["engine"] == engine and r["batch"] == point.batch
             and r["input_len"] == point.input_len and r["output_len"] == point.output_len),
            None,
        )  # fmt: skip

    b1, b64, prefill = (find("ftbench", point) for point in (*DECODE, PREFILL))
    b1_ms, floor_ms = _median(b1, "decode_step_ms"), b1 and b1["floor_decode_step_ms"]
    hf_ms = _median(find("hf-eager", PEER_POINT), "decode_step_ms")
    compile_ms = _median(find("gpt-fast", PEER_POINT), "decode_step_ms")
    b64_ms = _median(b64, "decode_step_ms")
    return {
        "device": environment.device_label(kind),
        "commit": environment.git_commit,
        "floor_ms": floor_ms,
        "decode_b1_ms": b1_ms,
        "decode_b1_over_floor": b1_ms / floor_ms if b1_ms and floor_ms else None,
        "hf_eager_b1_ms": hf_ms,
        "speedup_vs_hf_b1": hf_ms / b1_ms if hf_ms and b1_ms else None,
        "compile_peer_b1_ms": compile_ms,
        "speedup_vs_compile_peer_b1": compile_ms / b1_ms if compile_ms and b1_ms else None,
        "decode_b64_ms": b64_ms,
        "decode_b64_floor_ms": b64 and b64["floor_decode_step_ms"],
        "decode_b64_over_floor": b64_ms / b64["floor_decode_step_ms"] if b64_ms else None,
        "prefill_1x2048_ms": _median(prefill, "ttft_ms"),
        "prefill_peak_fraction": prefill and prefill["prefill_roofline_fraction"],
        "hbm_read_tb_per_s": b1 and b1["hbm_read_bytes_per_s"] / 1e12,
        "gemm_peak_tflops": b1 and b1["gemm_peak_flops"] / 1e12,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", help="tuned-config cache for ftbench's GEMMs")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--peers", default="hf-eager,gpt-fast", help="peers at batch 1, 128/128")
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per point")
    parser.add_argument(
        "--breakdown-only", action="store_true",
        help="only the ceilings and the per-operation breakdowns (no acceptance summary)",
    )  # fmt: skip
    parser.add_argument(
        "--device-kind", default=os.environ.get("FTBENCH_DEVICE_KIND", ""),
        help="the machine kind for the summary (default: $FTBENCH_DEVICE_KIND)",
    )  # fmt: skip
    args = parser.parse_args()
    spec = load_builtin(MODEL)
    environment = capture_environment()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out_dir / f"speed-{stamp}.json"
    records: list[dict] = []
    tables: list[dict] = []

    def keep(record: dict) -> None:
        records.append(record)
        write_results(out, "speed", records + tables, environment)
        step = _median(record, "decode_step_ms")
        print(f"{record['engine']:16} b{record['batch']} {record['input_len']}/"
              f"{record['output_len']}: step {step} ms, ttft {_median(record, 'ttft_ms')} ms "
              f"{record.get('reason', '')}", flush=True)  # fmt: skip

    if args.breakdown_only:
        ceilings = measure_ceilings("fp16")
    else:
        ours = RunConfig(
            spec, "fp16", (*DECODE, PREFILL), ("ftbench",), args.cache, repeats=args.repeats
        )
        ceilings = run_benchmark(ours, keep)
    print(f"HBM read {ceilings.hbm_read_bytes_per_s / 1e12:.2f} TB/s, "
          f"GEMM peak {ceilings.gemm_peak_flops / 1e12:.0f} TFLOP/s")  # fmt: skip
    tables.extend({"kind": "breakdown", **t} for t in breakdowns(spec, args.cache, ceilings))
    write_results(out, "speed", records + tables, environment)
    if args.breakdown_only:
        return
    peers = tuple(peer for peer in args.peers.split(",") if peer)
    if peers:
        config = RunConfig(spec, "fp16", (PEER_POINT,), peers, repeats=args.repeats)
        run_benchmark(config, keep, ceilings=ceilings)
    result = summary(records, environment, args.device_kind)
    result["source"] = str(out)
    write_json_atomic(args.out_dir / "acceptance" / "speed.json", result)
    print(result)


if __name__ == "__main__":
    main()
