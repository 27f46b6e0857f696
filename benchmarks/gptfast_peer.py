"""The gpt-fast-style peer next to ftbench on GPT-J 6B, in one run (issue 7).

fp16 random weights (the same arrays for both engines), 128 prompt tokens and 128 generated, at
the given batches: first the `gpt-fast` peer (plain torch decoder, static KV cache, decode step
compiled into one CUDA graph; its compile seconds recorded), then ftbench with library-default
GEMMs (`ftbench-untuned`), through `modelbench.engine` as `ftbench run --compare gpt-fast` does.

    python benchmarks/gptfast_peer.py --batch 1 --batch 64 --out-dir DIR

Writes DIR/run-gptfast-gptj-6b-<time>.json (kind "run") after every record.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from ftbench.bench.environment import capture_environment
from ftbench.bench.results import write_results
from ftbench.modelbench.engine import run_benchmark
from ftbench.modelbench.grid import RunConfig, RunPoint
from ftbench.profiles.catalog import load_builtin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gptj-6b")
    parser.add_argument("--batch", type=int, action="append", help="repeatable (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    spec = load_builtin(args.model)
    points = tuple(RunPoint(batch, 128, 128) for batch in args.batch or [1])
    environment = capture_environment()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out_dir / f"run-gptfast-{spec.name}-{stamp}.json"
    records: list[dict] = []

    def keep(record: dict) -> None:
        records.append(record)
        write_results(out, "run", records, environment)
        brief = {key: record.get(key) for key in ("engine", "batch", "status", "compile_s")}
        step = record.get("decode_step_ms", {})
        print(
            brief,
            step.get("median_ms"),
            step.get("p90_ms"),
            record.get("ttft_ms", {}).get("median_ms"),
            record.get("roofline_fraction"),
            record.get("reason", ""),
            flush=True,
        )

    peer = RunConfig(spec, "fp16", points, ("gpt-fast",), repeats=args.repeats)
    ceilings = run_benchmark(peer, keep)
    ours = RunConfig(spec, "fp16", points, ("ftbench-untuned",), repeats=args.repeats)
    run_benchmark(ours, keep, ceilings=ceilings)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
