"""`ftbench convert`: an HF checkpoint sharded once for tensor-parallel ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftbench.cli.options import StoredDType, force_option
from ftbench.cli.output import console


def convert_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="A local HF safetensors checkpoint directory (with config.json).")
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Directory for the pre-sharded checkpoint (created): new, empty or an earlier "
            "conversion's, which is renewed; a folder holding anything else only with --force; "
            "never the checkpoint or a folder inside it."
        ),
    ],
    tp: Annotated[int, typer.Option("--tp", min=1, help="Tensor-parallel size to shard for.")] = 1,
    dtype: Annotated[StoredDType, typer.Option("--dtype", help="Stored dtype.")] = StoredDType.fp16,
    force: Annotated[bool, force_option("Let OUT be a folder that holds other files.")] = False,
) -> None:
    """Shard an HF checkpoint once for --tp ranks: each rank then reads only its own file.

    Needs the whole checkpoint in host memory once; see docs/runtime/parallel.md.
    """
    from ftbench.profiles.hf import spec_from_hf_config
    from ftbench.runtime.hf_checkpoint import load_hf_weights
    from ftbench.runtime.sharded import check_output, save_sharded

    spec = spec_from_hf_config(checkpoint / "config.json")
    check_output(checkpoint, out, spec, tp, force)
    weights = load_hf_weights(checkpoint, spec, dtype.value)
    manifest = save_sharded(weights, spec, tp, out)
    console.print(f"{spec.name}: {tp} rank file(s) and {manifest.name} in {out}")
