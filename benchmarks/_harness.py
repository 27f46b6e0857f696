"""What every benchmark script shares: the basics of its command line, the names of its files,
and how it writes its results and its acceptance summary.

    from _harness import parser, result_path, write, write_summary

A script runs as `python benchmarks/NAME.py` from the repository root (its folder is then on
`sys.path`). Result files are `bench.results` files of a kind `reports.kinds.KINDS` lists (its
schema and how `ftbench report` shows it), so `write` refuses any other; an acceptance summary
is `<out-dir>/acceptance/<name>.json`, stamped with the device and the commit it came from.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftbench.bench.environment import EnvironmentRecord
from ftbench.bench.results import write_acceptance, write_results
from ftbench.reports.kinds import KINDS

RESULTS = Path("benchmarks/results")


def parser(doc: str, summary: bool = False) -> argparse.ArgumentParser:
    """The script's parser, described by the first line of its docstring `doc`, with --out-dir
    and, for a script that writes an acceptance summary, --device-kind."""
    arguments = argparse.ArgumentParser(description=doc.splitlines()[0])
    arguments.add_argument(
        "--out-dir", type=Path, default=RESULTS,
        help=f"folder for the result files and acceptance/ (default: {RESULTS})",
    )  # fmt: skip
    if summary:
        arguments.add_argument(
            "--device-kind", default=os.environ.get("FTBENCH_DEVICE_KIND", ""),
            help="the machine kind the acceptance summary names (default: $FTBENCH_DEVICE_KIND)",
        )  # fmt: skip
    return arguments


def stamp() -> str:
    """The time now, for file names: 20261124T165702Z."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def result_path(out_dir: Path, name: str) -> Path:
    """`out_dir`/`name`-<stamp>.json."""
    return out_dir / f"{name}-{stamp()}.json"


def write(
    path: Path, kind: str, records: list[dict[str, Any]], environment: EnvironmentRecord
) -> Path:
    """Write a result file of `kind`, a kind `reports.kinds.KINDS` lists."""
    if kind not in KINDS:
        raise SystemExit(f"result kind {kind!r} has no schema in ftbench.reports.kinds")
    return write_results(path, kind, records, environment)


def write_summary(
    out_dir: Path, name: str, summary: dict[str, Any], device: str, commit: str
) -> Path:
    """Write `out_dir`/acceptance/`name`.json (`bench.results.write_acceptance`) and print it.
    `device`: `EnvironmentRecord.device_label(--device-kind)`."""
    path = write_acceptance(out_dir / "acceptance" / f"{name}.json", name, summary, device, commit)
    print(json.dumps({"device": device, "commit": commit, **summary}, indent=2), flush=True)
    print(f"wrote {path}")
    return path
