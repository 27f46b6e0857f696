"""Logits of one runtime against another's: teacher-forced inputs, the logits of every position,
and how far two sets of them agree.

`teacher_forced_inputs(spec)` draws 3 prompts of `PROMPT_LENGTHS` tokens and `STEPS` continuation
tokens each; `run_logits` runs them through the CUDA runtime (a ragged prefill returning every
prompt token's logits, then `STEPS` teacher-forced decode steps) and returns the logits of every
position; `agreement` compares two such lists: the relative logit error ‖ours − theirs‖ / ‖theirs‖
per position (mean and max) and how often the top-1 token agrees.

The checks of tensor parallelism (`validation.parallel_check`) and of 8-bit weights
(`accuracy_cost`, which `ftbench run --weights` records; `validation.quantised_check`) use them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ftbench.gemm.dispatch import GemmDispatch
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.generate import Generator
from ftbench.runtime.rank import make_decoder
from ftbench.runtime.weights import ModelWeights

PROMPT_LENGTHS = (5, 17, 11)
STEPS = 16
SEED = 4321


def teacher_forced_inputs(spec: ModelSpec) -> tuple[list[np.ndarray], np.ndarray]:
    """The prompts (`PROMPT_LENGTHS` tokens) and the teacher-forced continuations [3, STEPS]."""
    rng = np.random.default_rng(SEED)
    prompts = [rng.integers(0, spec.vocab_size, length) for length in PROMPT_LENGTHS]
    return prompts, rng.integers(0, spec.vocab_size, (len(prompts), STEPS))


def logits_of(generator: Generator, prompts: list, continuations: np.ndarray) -> list | None:
    """Logits (float64, padding columns dropped) of every prompt token, then of each step;
    None on a pipeline stage before the last (it has no logits)."""
    import cupy

    vocab = generator.decoder.spec.vocab_size

    def kept(logits: Any) -> Any:
        # A copy now: the logits are a view of a buffer the next step overwrites.
        return None if logits is None else cupy.asnumpy(logits.astype(cupy.float64))[:, :vocab]

    outputs = [kept(generator.prefill(prompts, all_logits=True))]
    for step in range(continuations.shape[1]):
        outputs.append(kept(generator.decode(continuations[:, step])))
    return None if outputs[0] is None else outputs


def decoder_args() -> dict[str, Any]:
    """The buffers a decoder of these inputs needs: an all-logits prefill returns one row per
    prompt token, so max_batch holds them all."""
    return {"max_batch": sum(PROMPT_LENGTHS), "max_seq_len": max(PROMPT_LENGTHS) + STEPS + 1}


def run_logits(
    spec: ModelSpec,
    weights: ModelWeights,
    prompts,
    continuations,
    micro_batches: int = 1,
    use_graph: bool = False,
    activations: str | None = None,
) -> list[np.ndarray]:
    """The one-GPU runtime's logits for `prompts` and teacher-forced `continuations` (by default
    one micro-batch, no CUDA graphs; `activations` "fp8": `GemmDispatch`'s W8A8 GEMMs)."""
    gemm = GemmDispatch(activations=activations)
    decoder = make_decoder(spec, weights, micro_batches=micro_batches, gemm=gemm, **decoder_args())
    return logits_of(Generator(decoder, use_graph=use_graph), prompts, continuations)


def relative_errors(ours: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """‖ours − expected‖ / ‖expected‖ per row."""
    return np.linalg.norm(ours - expected, axis=-1) / np.linalg.norm(expected, axis=-1)


@dataclass(frozen=True)
class LogitAgreement:
    """Logits of one runtime against another's over the same positions."""

    positions: int
    mean_rel_logit_err: float
    max_rel_logit_err: float
    top1_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(ours: list[np.ndarray], expected: list[np.ndarray]) -> LogitAgreement:
    """`ours` against `expected`, both as `run_logits` returns them."""
    mine, theirs = np.concatenate(ours), np.concatenate(expected)
    errors = relative_errors(mine, theirs)
    same = np.argmax(mine, axis=-1) == np.argmax(theirs, axis=-1)
    return LogitAgreement(
        positions=int(mine.shape[0]),
        mean_rel_logit_err=float(errors.mean()),
        max_rel_logit_err=float(errors.max()),
        top1_agreement=float(same.mean()),
    )


def accuracy_cost(
    spec: ModelSpec, weights: ModelWeights, quantised: ModelWeights, activations: str | None = None
) -> LogitAgreement:
    """The runtime on `quantised` (`weights` quantised to 8 bits, `runtime.quantize`; with
    `activations` "fp8", W8A8) against the runtime on `weights` themselves (fp16/bf16, on the
    host or the GPU): what the 8 bits cost."""
    prompts, continuations = teacher_forced_inputs(spec)
    plain = run_logits(spec, weights, prompts, continuations)
    ours = run_logits(spec, quantised, prompts, continuations, activations=activations)
    return agreement(ours, plain)
