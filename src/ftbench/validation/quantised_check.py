"""Whether the runtime's 8-bit kernels add error beyond the quantisation.

Over the logits of every prompt token of a ragged prefill and of `STEPS` teacher-forced decode
steps (`runtime.agreement`: 3 prompts of 5, 17 and 11 tokens, so the prefill's GEMMs take the
dequantising path and the decode steps' the weight-only kernels), `kernel_error(spec, weights,
fmt)` says whether the kernels add error beyond the quantisation. The
  8-bit runtime against the float64 NumPy reference (`runtime.reference`) of the dequantised
  weights (codes * scales, exactly), beside the fp16/bf16 runtime against the float64 reference of
  its own weights: the rounding any fp16 runtime has. The first should not exceed the second by
  more than fp16 rounding of the dequantised weights in the prefill adds.

What the 8 bits cost against the runtime on the unquantised weights is
`runtime.agreement.accuracy_cost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.agreement import (
    STEPS,
    LogitAgreement,
    agreement,
    run_logits,
    teacher_forced_inputs,
)
from ftbench.runtime.quantize import quantize_weights
from ftbench.runtime.weights import ModelWeights
from ftbench.validation.parallel_check import reference_logits


@dataclass(frozen=True)
class KernelError:
    """The 8-bit runtime and the plain one, each against float64 on its own weights."""

    fmt: str
    steps: int
    quantised_vs_float64: LogitAgreement
    plain_vs_float64: LogitAgreement

    @property
    def ratio(self) -> float:
        """The 8-bit runtime's largest relative error over the plain runtime's."""
        return self.quantised_vs_float64.max_rel_logit_err / self.plain_vs_float64.max_rel_logit_err

    def to_dict(self) -> dict[str, Any]:
        return {
            "fmt": self.fmt, "steps": self.steps, "ratio": self.ratio,
            "quantised_vs_float64": self.quantised_vs_float64.to_dict(),
            "plain_vs_float64": self.plain_vs_float64.to_dict(),
        }  # fmt: skip


def kernel_error(
    spec: ModelSpec, weights: ModelWeights, fmt: str, activations: str | None = None
) -> KernelError:
    """See the module docstring; `weights` are host fp16/bf16 weights (the reference runs in
    NumPy). With `activations` "fp8" (fp8 weights, W8A8) the prefill alone is compared: its
    GEMMs read E4M3 activations under per-token scales, which the reference applies with the
    same rounding ("fp8-token"), while decode steps stay weight-only on fp16 activations."""
    prompts, continuations = teacher_forced_inputs(spec)
    quantised = quantize_weights(weights, fmt)
    plain_reference = reference_logits(spec, weights, prompts, continuations)
    # The reference multiplies by codes * scales in float64 (`ReferenceModel` dequantises).
    scaling = None if activations is None else f"{activations}-token"
    quantised_reference = reference_logits(
        spec, quantised, prompts, continuations, activations=scaling
    )
    ours = run_logits(spec, quantised, prompts, continuations, activations=activations)
    plain = run_logits(spec, weights, prompts, continuations)
    kept = slice(None) if activations is None else slice(0, 1)  # the prefill's logits only
    return KernelError(
        fmt=fmt if activations is None else f"{fmt} weights, {activations} activations",
        steps=STEPS if activations is None else 0,
        quantised_vs_float64=agreement(ours[kept], quantised_reference[kept]),
        plain_vs_float64=agreement(plain[kept], plain_reference[kept]),
    )
