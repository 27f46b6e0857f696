"""`ftbench env`: the environment record of this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ftbench.cli.options import force_option, json_option
from ftbench.cli.output import console


def env_command(
    as_json: Annotated[bool, json_option("the full environment record")] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Also write the JSON record to this file. It replaces an earlier environment "
            "record; any other file only with --force.",
        ),
    ] = None,
    force: Annotated[bool, force_option("Let --out replace a file of another kind.")] = False,
) -> None:
    """Show the GPUs, driver, CUDA libraries, clocks, power and throttle state.

    Without a GPU it shows the software side and says that no GPU was found (exit code 0).
    """
    from ftbench.bench.environment import capture_environment, write_environment
    from ftbench.reports.console import print_environment

    record = capture_environment()
    if out is not None:
        write_environment(out, record, force)
    if as_json:
        console.print_json(json.dumps(record.to_dict()))
    else:
        print_environment(console, record)
