"""Where a grid point's steps spend their time (`ftbench run --breakdown`): one decode step and
the prefill of the point, operation by operation (`runtime.breakdown`), kept in the run record.

The decode step is the one at the average length of the point's decode steps, input_len +
output_len / 2 (the length its floor counts, `floors.decode_floor_ms`): the generator first
generates output_len / 2 tokens of the point's prompts, then the next step is captured with an
event after every operation and replayed. The prefill is that of the point's prompts. Each
becomes

    {"length": L (decode) or "tokens": T (prefill), "whole_ms": ..., "floor_ms": ...,
     "operations": [runtime.breakdown.OperationTime.to_dict(), ...]}

`whole_ms` is the sum of the operations, which run one after another here (a parallel block's
attention and MLP are not overlapped; each operation's launch gap is its own), so it can exceed
the measured step; `floor_ms` is the sum of their floors (bytes at the HBM read bandwidth or
FLOPs at the GEMM peak, whichever is slower).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any


def point_breakdown(
    decoder: Any, generator: Any, prompts: list[Any], output_len: int, ceilings: Any
) -> dict[str, dict[str, Any]]:
    """{"decode": ..., "prefill": ...} of one point (see the module docstring), after its timed
    requests: `generator` drives `decoder`; `ceilings` (`ceilings.Ceilings`) set the floors. It
    overwrites the KV cache, so the decoder's timed requests must be done."""
    import cupy

    from ftbench.runtime.model import length_bound

    generated = max(1, output_len // 2)
    generator.generate(prompts, generated)
    state = generator.state
    cupy.add(state.positions, 1, out=state.lengths)  # the step that feeds the last token
    length = len(prompts[0]) + generated
    decode = replace(state.step, max_length=length_bound(length, decoder.max_seq_len))
    parts = {
        "decode": ({"length": length}, decode),
        "prefill": ({"tokens": sum(len(p) for p in prompts)}, generator.prefill_inputs(prompts)),
    }
    return {
        phase: _taken_apart(decoder, step, where, ceilings)
        for phase, (where, step) in parts.items()
    }


def _taken_apart(decoder: Any, step: Any, where: dict[str, int], ceilings: Any) -> dict[str, Any]:
    import cupy

    from ftbench.runtime.breakdown import breakdown

    cupy.cuda.Device().synchronize()
    operations, whole_ms = breakdown(
        decoder, step, ceilings.hbm_read_bytes_per_s, ceilings.gemm_peak_flops
    )
    return {
        **where,
        "whole_ms": whole_ms,
        "floor_ms": sum(operation.floor_ms for operation in operations),
        "operations": [operation.to_dict() for operation in operations],
    }
