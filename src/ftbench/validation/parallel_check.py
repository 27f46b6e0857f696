"""Check tensor and pipeline parallelism on one GPU: emulated ranks against the TP=1 runtime.

`compare_emulated(case, tp, pp=1, micro_batches=1)` draws random weights for a small model of
`case` (GPT-J's parallel block with partial interleaved rotary and an LM-head bias; LLaMA with
grouped-query attention, whose 4 KV heads are replicated at tp=8; GPT-2's learned positions and
LM head tied to the vocabulary-split embedding; 4 layers each), runs them through the CUDA
runtime unsharded (TP=1) and as tp x pp emulated ranks in one process
(`validation.emulated_group.EmulatedGroup`: each rank its own `Decoder` with its stage's layers
of its `sharding.shard`, the all-reduce a sum of its stage's ranks' buffers, the LM head's
vocabulary slices gathered, activations and sampled tokens passed between stages by emulated
send and recv, every rank running the same `Generator` calls, each step in `micro_batches`
micro-batches), and measures per position the relative logit error (of the last stage's ranks)
‖tp − tp1‖ / ‖tp1‖ over every prompt token of a ragged prefill and `STEPS` teacher-forced decode
steps. Both runs are also compared with the float64 NumPy reference (`runtime.reference`) of the
unsharded weights, which says how large fp16 rounding is here.

On several GPUs, `check_rank` runs the same check with real ranks (one process per GPU, NCCL,
CUDA graphs): `python -m ftbench.runtime.launch spawn 2 -- python -m
ftbench.validation.parallel_check gptj 2 1` (or under mpirun) prints each last-stage rank's
logit digest and errors.

Used by the GPU tests, `benchmarks/parallel_emulated.py` and `benchmarks/parallel.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ftbench.errors import InvalidInputError
from ftbench.profiles.catalog import load_builtin
from ftbench.profiles.spec import ModelSpec
from ftbench.runtime.agreement import (
    SEED,
    decoder_args,
    logits_of,
    relative_errors,
    run_logits,
    teacher_forced_inputs,
)
from ftbench.runtime.generate import Generator
from ftbench.runtime.pipeline import Stage, pipeline_group, rank_place, stage_plan, tensor_group
from ftbench.runtime.random_weights import random_weights
from ftbench.runtime.rank import RankDecoder
from ftbench.runtime.reference import ReferenceModel
from ftbench.runtime.sharding import shard, stage_weights
from ftbench.runtime.weights import ModelWeights
from ftbench.validation.emulated_group import EmulatedGroup

TP_SIZES = (2, 4, 8)
# (tp, pp) pairs of the pipeline check.
PIPELINE_SIZES = ((1, 2), (1, 4), (2, 2))
# (tp, pp, micro-batches) of the micro-batch check: the 3 prompts split 2 + 1 and 1 + 1 + 1.
MICRO_BATCH_SIZES = ((1, 2, 2), (1, 2, 3), (2, 2, 2), (2, 2, 3))
# Vocabularies not divisible by every tp, so the padding rows of the vocabulary-split embedding
# and LM head are exercised.
CASES = {
    "gptj": dataclasses.replace(
        load_builtin("gptj-6b"), name="gptj-small", num_layers=4, hidden_size=1024,
        num_heads=16, num_kv_heads=16, head_dim=64, rotary_dim=32, ffn_hidden_size=4096,
        vocab_size=1003, max_positions=256,
    ),
    "llama-gqa": dataclasses.replace(
        load_builtin("llama2-70b"), name="llama-gqa-small", num_layers=4, hidden_size=1024,
        num_heads=16, num_kv_heads=4, head_dim=64, rotary_dim=64, ffn_hidden_size=2816,
        vocab_size=1001, max_positions=256,
    ),
    "gpt2": dataclasses.replace(
        load_builtin("gpt2-124m"), name="gpt2-small", num_layers=4, hidden_size=512,
        num_heads=8, num_kv_heads=8, head_dim=64, ffn_hidden_size=2048, vocab_size=1003,
        max_positions=256,
    ),
}  # fmt: skip
# Real-rank checks only (`check_rank`): LLaMA-2 70B's layer shapes (64 query heads, 8 KV heads,
# hidden 8192, FFN 28672, vocabulary 32000) with 2 layers, for tp up to 8 (each rank then holds
# one KV head). Too large for the many emulated runs of the one-GPU tests.
LARGE_CASES = {
    "llama2-70b-2l": dataclasses.replace(
        load_builtin("llama2-70b"), name="llama2-70b-2-layers", num_layers=2, max_positions=256,
    ),
}  # fmt: skip


def case_spec(case: str) -> ModelSpec:
    """The model of a check case (`CASES` or `LARGE_CASES`)."""
    if case in CASES:
        return CASES[case]
    if case in LARGE_CASES:
        return LARGE_CASES[case]
    raise InvalidInputError(f"unknown check case {case!r}; use one of {[*CASES, *LARGE_CASES]}")


@dataclass(frozen=True)
class EmulatedResult:
    """One model at one tp: the worst relative logit errors, and how the tokens agree."""

    model: str
    dtype: str
    tp: int
    pp: int
    micro_batches: int
    kv_replicas: int
    ranks_identical: bool
    max_rel_err: float
    prefill_max_rel_err: float
    decode_max_rel_err: float
    argmax_agreement: float
    tp1_vs_reference_max_rel_err: float
    tp_vs_reference_max_rel_err: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rank_decoder(
    spec: ModelSpec, weights: ModelWeights, tp: int, pp: int, rank: int, tensor: Any, pipe: Any,
    micro_batches: int = 1,
) -> RankDecoder:  # fmt: skip
    """Global rank `rank`'s decoder of a tp x pp run: its stage's layers of its shard of
    `weights`, with its tensor and pipeline communicators (either may be None)."""
    index, tp_rank = rank_place(rank, tp, pp)
    layers = stage_plan(spec, pp)[index]
    return RankDecoder(
        spec, stage_weights(shard(weights, spec, tp, tp_rank), spec, layers), tp=tp, comm=tensor,
        stage=Stage(index, pp, layers, pipe), micro_batches=micro_batches, **decoder_args(),
    )  # fmt: skip


def run_emulated(
    spec: ModelSpec,
    weights: ModelWeights,
    tp: int,
    prompts,
    continuations,
    pp: int = 1,
    micro_batches: int = 1,
) -> list[list[np.ndarray]]:
    """The logits of every emulated rank of the last stage (each gathers the whole
    vocabulary), in tensor-parallel rank order."""
    group = EmulatedGroup(tp * pp)
    generators = []
    for rank in range(tp * pp):
        index, tp_rank = rank_place(rank, tp, pp)
        pipe = group.communicator(rank, pipeline_group(tp_rank, tp, pp)) if pp > 1 else None
        tensor = group.communicator(rank, tensor_group(index, tp))
        decoder = rank_decoder(spec, weights, tp, pp, rank, tensor, pipe, micro_batches)
        generators.append(Generator(decoder, use_graph=False, stream=group.stream))
    ranks = group.run(lambda rank: logits_of(generators[rank], prompts, continuations))
    return ranks[(pp - 1) * tp :]


def reference_logits(
    spec: ModelSpec, weights: ModelWeights, prompts, continuations, activations: str | None = None
):
    """The float64 NumPy reference's logits, laid out as `run_logits` returns them
    (`activations`: `ReferenceModel`'s, e.g. "fp8-token")."""
    outputs = []
    for prompt, continuation in zip(prompts, continuations, strict=True):
        model = ReferenceModel(spec, weights, activations=activations)
        outputs.append(model.prefill(np.concatenate([prompt, continuation])[None])[0])
    prefill = np.concatenate(
        [logits[: len(prompt)] for logits, prompt in zip(outputs, prompts, strict=True)]
    )
    steps = [
        np.stack([logits[len(p) + step] for logits, p in zip(outputs, prompts, strict=True)])
        for step in range(continuations.shape[1])
    ]
    return [prefill, *steps]


def compare_emulated(
    case: str,
    tp: int,
    dtype: str = "fp16",
    tp1: list[np.ndarray] | None = None,
    pp: int = 1,
    micro_batches: int = 1,
) -> EmulatedResult:
    """Emulated tp x pp ranks of `case`, each step in `micro_batches` micro-batches, against
    TP=1 (see the module docstring). `tp1` may pass the TP=1 logits of an earlier call
    (`run_logits` on the same case and dtype)."""
    spec = case_spec(case)
    weights = random_weights(spec, dtype, seed=SEED)
    prompts, continuations = teacher_forced_inputs(spec)
    tp1 = tp1 if tp1 is not None else run_logits(spec, weights, prompts, continuations)
    ranks = run_emulated(spec, weights, tp, prompts, continuations, pp, micro_batches)
    ours = ranks[0]
    return EmulatedResult(
        model=case,
        dtype=dtype,
        tp=tp,
        pp=pp,
        micro_batches=micro_batches,
        kv_replicas=max(tp // spec.num_kv_heads, 1),
        ranks_identical=all(
            all(np.array_equal(a, b) for a, b in zip(rank, ours, strict=True)) for rank in ranks
        ),
        **_agreement(spec, weights, prompts, continuations, ours, tp1),
    )


def _agreement(
    spec: ModelSpec, weights: ModelWeights, prompts, continuations, ours: list, tp1: list
) -> dict[str, float]:
    """`EmulatedResult`'s error fields: `ours` against the TP=1 logits and both against the
    float64 reference (of `prompts` and `continuations`)."""
    errors = [relative_errors(a, b) for a, b in zip(ours, tp1, strict=True)]
    agree = np.concatenate([a.argmax(-1) == b.argmax(-1) for a, b in zip(ours, tp1, strict=True)])
    reference = reference_logits(spec, weights, prompts, continuations)
    return {
        "max_rel_err": float(max(e.max() for e in errors)),
        "prefill_max_rel_err": float(errors[0].max()),
        "decode_max_rel_err": float(max(e.max() for e in errors[1:])),
        "argmax_agreement": float(agree.mean()),
        "tp1_vs_reference_max_rel_err": _worst(tp1, reference),
        "tp_vs_reference_max_rel_err": _worst(ours, reference),
    }


def check_rank(info: Any, world: Any, case: str, tp: int, pp: int) -> dict[str, Any] | None:
    """One rank (one process, one GPU, NCCL) of a real tp x pp run of `case`, decode steps in
    CUDA graphs as `ftbench run` runs them. On a last-stage rank: the SHA-256 of its logits
    (every last-stage rank, and the same run under another launcher, must have the same) and,
    on the stage's first rank, `_agreement` with TP=1 run on that rank's GPU; None elsewhere.
    `launch.run_rank` calls it (see `main`)."""
    import hashlib

    from ftbench.runtime.launch import connect_groups

    tensor, pipe = connect_groups(info, world, tp, pp, world.timeout_s)
    spec = case_spec(case)
    weights = random_weights(spec, "fp16", seed=SEED)
    prompts, continuations = teacher_forced_inputs(spec)
    decoder = rank_decoder(spec, weights, tp, pp, info.rank, tensor, pipe)
    ours = logits_of(Generator(decoder), prompts, continuations)  # its graphs are gone on return
    for comm in (tensor, pipe):
        if comm is not None and comm is not world:
            comm.close()
    if ours is None:
        return None
    digest = hashlib.sha256(b"".join(logits.tobytes() for logits in ours)).hexdigest()
    result = {**info.to_dict(), "model": case, "tp": tp, "pp": pp, "logits_sha256": digest}
    if rank_place(info.rank, tp, pp)[1] == 0:
        tp1 = run_logits(spec, weights, prompts, continuations)
        result.update(_agreement(spec, weights, prompts, continuations, ours, tp1))
    return result


def tp1_logits(case: str, dtype: str = "fp16") -> list[np.ndarray]:
    """`run_logits` for `case` with the weights and inputs `compare_emulated` uses."""
    spec = case_spec(case)
    prompts, continuations = teacher_forced_inputs(spec)
    return run_logits(spec, random_weights(spec, dtype, seed=SEED), prompts, continuations)


def _worst(ours: list[np.ndarray], expected: list[np.ndarray]) -> float:
    return float(max(relative_errors(a, b).max() for a, b in zip(ours, expected, strict=True)))


def main(argv: list[str] | None = None) -> int:
    """`python -m ftbench.validation.parallel_check CASE TP PP`: a rank program (any launcher,
    tp x pp ranks) running `check_rank`; each last-stage rank prints its result as one JSON
    line."""
    import json
    import sys

    from ftbench.runtime.launch import run_rank

    args = sys.argv[1:] if argv is None else argv
    cases = [*CASES, *LARGE_CASES]
    if len(args) != 3 or args[0] not in cases:
        print(f"usage: python -m ftbench.validation.parallel_check {{{','.join(cases)}}} TP PP",
              file=sys.stderr)  # fmt: skip
        return 2
    case, tp, pp = args[0], int(args[1]), int(args[2])
    result = run_rank(lambda info, world: check_rank(info, world, case, tp, pp))
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
