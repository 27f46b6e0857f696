"""Cut the real device results in benchmarks/results/ down to small test fixtures.

Only whole records are kept or dropped; nothing inside a record is changed. Run from the
repository root:  python tests/data/results/make_fixtures.py
"""

import json
from pathlib import Path

from ftbench.files import read_json

SOURCE = Path("benchmarks/results")
TARGET = Path(__file__).parent
TUNE_STAMP = "20261124T165020Z"
# Winners of every kind: ftbench (m=1), CUTLASS (m=16), cuBLASLt tuned twice in one file (m=128,
# both a decode and a 1x128 context problem), the default kept (m=64, m=2048), a context GEMM.
TUNE_PROBLEMS = [
    f"gemm:f16f16f16:f32:NT:m={m}:n={n}:k={k}:b=1"
    for m, n, k in [
        (1, 4096, 4096), (16, 50400, 4096), (128, 4096, 4096), (64, 4096, 4096),
        (2048, 4096, 16384), (4096, 16384, 4096),
    ]
]  # fmt: skip
FOUNDATION_STAMPS = ("20261124T154141Z", "20261124T163514Z", "20261124T165607Z")


def write(name: str, document: dict) -> None:
    (TARGET / name).write_text(json.dumps(document, separators=(",", ":")) + "\n")


def tune_records(records: list[dict]) -> list[dict]:
    """Per tuning pass of a chosen problem: the default, the sampled winner, one slow and one
    more timed candidate (a pass starts at the cuBLAS default's record)."""
    kept, extra = [], {}
    for record in records:
        if record["problem_key"] not in TUNE_PROBLEMS:
            continue
        candidate = record["candidate"]
        if candidate["backend"] == "cublas" and candidate["name"] == "default":
            extra = {"slow": 1, "ok": 1}
            kept.append(record)
        elif "samples_ms" in record.get("timing", {}):
            kept.append(record)
        elif extra.get(record["status"], 0) > 0:
            extra[record["status"]] -= 1
            kept.append(record)
    return kept


def main() -> None:
    candidates = read_json(SOURCE / f"tune-{TUNE_STAMP}-candidates.json.gz")
    candidates["records"] = tune_records(candidates["records"])
    write("tune-candidates.json", candidates)

    peers = read_json(SOURCE / f"tune-peers-{TUNE_STAMP}.json.gz")
    peers["records"] = [
        r for r in peers["records"] if "ceilings" in r or r["problem"] in TUNE_PROBLEMS
    ]
    write("tune-peers.json", peers)

    cache = read_json(SOURCE / f"tune-{TUNE_STAMP}-cache.json.gz")
    cache["entries"] = {k: v for k, v in cache["entries"].items() if k in TUNE_PROBLEMS}
    write("tune-cache.json", cache)

    for stamp in FOUNDATION_STAMPS:
        foundation = read_json(SOURCE / f"foundation-{stamp}.json.gz")
        foundation["records"] = [r for r in foundation["records"] if r.get("run", 0) == 0]
        write(f"foundation-{stamp}.json", foundation)


if __name__ == "__main__":
    main()
