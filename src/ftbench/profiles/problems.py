"""Every GEMM a transformer issues for a workload, per phase and per tensor-parallel rank.

Conventions (docs/profiles.md explains them with examples):

- Linear layers compute Y[m, n] = X[m, k] @ W[n, k]^T (`GemmProblem` layout "NT"); m counts
  tokens: batch x input length in the context phase, batch x beam width in a generation step.
- Tensor parallelism is Megatron's: QKV, FFN-up and FFN-gate are split by columns (n / tp),
  attention-out and FFN-down by rows (k / tp), the LM head by vocabulary rows (n = vocab / tp,
  the vocabulary padded up to a multiple of tp). Every rank runs the same shapes.
- KV heads: with num_kv_heads >= tp each rank holds num_kv_heads / tp of them (must divide);
  with num_kv_heads < tp, tp must be a multiple of num_kv_heads and each rank holds one KV head,
  replicated on tp / num_kv_heads ranks. num_heads and the FFN size must divide by tp.
- Pipeline parallelism: the layers are cut into pp contiguous stages as even as can be (the
  first layers % pp stages hold one layer more, `stage_layers`); counts are for the fullest
  stage, ceil(layers / pp) layers. The LM head runs once, on the last stage.
- The context phase computes logits for the last position only (m = batch), as
  FasterTransformer does; it is computed once per request and its KV cache shared by the beams.
- Attention score and context products of the context phase (and T5's cross-attention in
  generation) are batched GEMMs over batch x heads; they are listed with
  `fused_into_attention=True` because the runtime runs them inside a fused attention kernel.
  Decoder self-attention during generation reads a growing KV cache and has no fixed GEMM shape.
- T5: the encoder runs in the context phase, which also projects the encoder output to every
  decoder layer's cross-attention K and V (m = batch x input length, once per request).
- 8-bit workloads quantise the linear layers of every transformer layer (projections, attention
  output, MLP, T5's cross-attention projections): an fp8 workload's are FP8 x FP8 problems
  (scaling "tensor" or "outer", output in `out_dtype`), an fp8 or int8 `weights` workload's are
  weight-only problems (scaling "channel") up to `WEIGHT_ONLY_MAX_M` rows: past the weight-only
  kernels' rows, the runtime multiplies in the 16-bit format with weights dequantised into a
  scratch buffer (a GEMM of more rows is no longer a read of its weight), so those problems are
  fp16/bf16 ones. The attention products (batched GEMMs) and the LM
  head stay unquantised, in the 16-bit format (`Workload.out_dtype`), as the common FP8 and
  weight-only recipes keep them (TensorRT Model Optimizer leaves lm_head unquantised).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ftbench.errors import InvalidInputError
from ftbench.gemm.problem import GemmProblem, linear_problem
from ftbench.kernels.weight_only import MAX_M as WEIGHT_ONLY_MAX_M
from ftbench.profiles.spec import ModelSpec, Workload

PHASES = ("context", "generation")
ROLES = (
    "qkv",
    "q",
    "k",
    "v",
    "attn_scores",
    "attn_context",
    "attn_out",
    "cross_q",
    "cross_kv",
    "cross_k",
    "cross_v",
    "cross_scores",
    "cross_context",
    "cross_out",
    "ffn_gate_up",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
    "lm_head",
)

Fused = bool | Literal["both"]


@dataclass(frozen=True)
class RankShapes:
    """What one rank holds under tensor parallelism `tp` and pipeline parallelism `pp`.

    The runtime shards weights by these numbers, so the tuned shapes are the shapes run.
    """

    tp: int
    pp: int
    q_heads: int
    kv_heads: int
    kv_replicas: int
    ffn_hidden_size: int
    vocab_padded: int
    lm_head_rows: int
    layers_per_stage: int
    decoder_layers_per_stage: int
    head_dim: int
    gated_ffn: bool

    @property
    def q_width(self) -> int:
        """Width of this rank's query projection: q_heads * head_dim."""
        return self.q_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of each of this rank's key and value projections: kv_heads * head_dim."""
        return self.kv_heads * self.head_dim

    @property
    def qkv_width(self) -> int:
        """Rows of this rank's fused [q | k | v] projection."""
        return self.q_width + 2 * self.kv_width

    @property
    def ffn_up_rows(self) -> int:
        """Rows of this rank's first FFN projection: [gate | up] when gated, else up."""
        return 2 * self.ffn_hidden_size if self.gated_ffn else self.ffn_hidden_size

    def to_dict(self) -> dict[str, int]:
        """JSON-ready record."""
        return asdict(self)


def _tp_conflict(spec: ModelSpec, tp: int) -> str | None:
    heads, kv_heads = spec.num_heads, spec.num_kv_heads
    if heads % tp:
        return f"{heads} attention heads cannot be split evenly over tp={tp}"
    if kv_heads >= tp and kv_heads % tp:
        return f"{kv_heads} KV heads cannot be split evenly over tp={tp}"
    if kv_heads < tp and tp % kv_heads:
        return (
            f"{kv_heads} KV heads cannot be replicated evenly over tp={tp} "
            "(with fewer KV heads than ranks, tp must be a multiple of the KV head count)"
        )
    if spec.ffn_hidden_size % tp:
        return f"FFN size {spec.ffn_hidden_size} cannot be split evenly over tp={tp}"
    return None


def valid_tp_sizes(spec: ModelSpec) -> list[int]:
    """Every tensor-parallel size the sharding rules accept for `spec`."""
    return [tp for tp in range(1, spec.num_heads + 1) if _tp_conflict(spec, tp) is None]


def _layers_per_stage(spec: ModelSpec, layers: int, pp: int) -> int:
    _check_stages(spec, layers, pp)
    return math.ceil(layers / pp)


def _check_stages(spec: ModelSpec, layers: int, pp: int) -> None:
    if pp < 1 or pp > layers:
        raise InvalidInputError(
            f"{spec.name}: pp={pp} pipeline stages but only {layers} layers; use 1 <= pp <= "
            f"{layers}"
        )


def stage_layers(spec: ModelSpec, pp: int, stage: int) -> range:
    """The decoder layers pipeline stage `stage` of `pp` holds: contiguous, the stages as even
    as can be, the first num_layers % pp of them one layer longer (GPT-J's 28 layers at pp=8:
    4, 4, 4, 4, 3, 3, 3, 3)."""
    _check_stages(spec, spec.num_layers, pp)
    if not 0 <= stage < pp:
        raise InvalidInputError(f"stage must be in 0..{pp - 1}, got {stage}")
    base, longer = divmod(spec.num_layers, pp)
    start = stage * base + min(stage, longer)
    return range(start, start + base + (stage < longer))


def rank_shapes(spec: ModelSpec, tp: int = 1, pp: int = 1) -> RankShapes:
    """The per-rank head counts, FFN width, LM-head rows and layers; bad splits are errors."""
    conflict = _tp_conflict(spec, tp)
    if conflict:
        valid = ", ".join(str(size) for size in valid_tp_sizes(spec))
        raise InvalidInputError(f"{spec.name}: {conflict}; valid tp sizes: {valid}")
    vocab_padded = math.ceil(spec.vocab_size / tp) * tp
    return RankShapes(
        tp=tp,
        pp=pp,
        q_heads=spec.num_heads // tp,
        kv_heads=max(spec.num_kv_heads // tp, 1),
        kv_replicas=max(tp // spec.num_kv_heads, 1),
        ffn_hidden_size=spec.ffn_hidden_size // tp,
        vocab_padded=vocab_padded,
        lm_head_rows=vocab_padded // tp,
        layers_per_stage=_layers_per_stage(spec, spec.num_layers, pp),
        decoder_layers_per_stage=(
            _layers_per_stage(spec, spec.decoder_layers, pp) if spec.decoder_layers else 0
        ),
        head_dim=spec.head_dim,
        gated_ffn=spec.gated_ffn,
    )


@dataclass(frozen=True)
class ProblemUse:
    """One GEMM at one place in the model: its problem, phase, role and calls per step.

    `calls_per_step` is layers on the rank x occurrences per layer (1 for the LM head);
    `batch` and `input_len` name the workload grid point it belongs to.
    """

    problem: GemmProblem
    phase: str
    role: str
    calls_per_step: int
    batch: int
    input_len: int
    fused_into_attention: bool = False


@dataclass(frozen=True)
class CountedProblem:
    """A distinct problem with the summed calls per step of every use merged into it."""

    problem: GemmProblem
    count: int
    roles: tuple[str, ...]
    fused_into_attention: bool

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases this problem runs in, in phase order."""
        return tuple(
            phase for phase in PHASES if any(r.startswith(f"{phase}:") for r in self.roles)
        )


class _Emitter:
    """Collects the uses of a workload; `batch` and `input_len` name the current grid point."""

    def __init__(self, spec: ModelSpec, workload: Workload, shapes: RankShapes, fused: Fused):
        self.spec = spec
        self.shapes = shapes
        self.workload = workload
        self.fused = fused
        self.uses: list[ProblemUse] = []
        self.batch = 0
        self.input_len = 0

    def _quantised(self, m: int, n: int, k: int) -> GemmProblem:
        """A linear layer of a transformer layer, in the workload's formats and scaling."""
        w = self.workload
        if w.scaling == "channel" and m > WEIGHT_ONLY_MAX_M:
            return linear_problem(m, n, k, w.dtype)  # dequantised weights (module docstring)
        return linear_problem(
            m, n, k, w.dtype, weights=w.weights, out_dtype=w.out_dtype, scaling=w.scaling
        )

    def _unquantised(
        self, m: int, n: int, k: int, batch_count: int = 1, transb: bool = True
    ) -> GemmProblem:
        """The LM head and the attention products: in the 16-bit format, never 8-bit."""
        dtype = self.workload.out_dtype
        if batch_count == 1 and transb:
            return linear_problem(m, n, k, dtype)
        return GemmProblem(m, n, k, dtype, dtype, dtype, transb=transb, batch_count=batch_count)

    def add(
        self, phase: str, role: str, problem: GemmProblem, calls: int, attention: bool = False
    ) -> None:
        self.uses.append(
            ProblemUse(problem, phase, role, calls, self.batch, self.input_len, attention)
        )

    def linear(self, phase: str, role: str, m: int, n: int, k: int, calls: int) -> None:
        self.add(phase, role, self._quantised(m, n, k), calls)

    def self_attention_projections(self, phase: str, m: int, calls: int) -> None:
        hidden, q_width, kv_width = self.spec.hidden_size, self.shapes.q_width, self.shapes.kv_width
        if self.fused in (True, "both"):
            self.linear(phase, "qkv", m, self.shapes.qkv_width, hidden, calls)
        if self.fused in (False, "both"):
            self.linear(phase, "q", m, q_width, hidden, calls)
            self.linear(phase, "k", m, kv_width, hidden, calls)
            self.linear(phase, "v", m, kv_width, hidden, calls)

    def cross_kv_projections(self, phase: str, m: int, calls: int) -> None:
        hidden = self.spec.hidden_size
        kv_width = self.shapes.kv_width
        if self.fused in (True, "both"):
            self.linear(phase, "cross_kv", m, 2 * kv_width, hidden, calls)
        if self.fused in (False, "both"):
            self.linear(phase, "cross_k", m, kv_width, hidden, calls)
            self.linear(phase, "cross_v", m, kv_width, hidden, calls)

    def attention_products(
        self, phase: str, prefix: str, sequences: int, q_len: int, kv_len: int, calls: int
    ) -> None:
        head_dim = self.spec.head_dim
        batch_count = sequences * self.shapes.q_heads
        scores = self._unquantised(q_len, kv_len, head_dim, batch_count, transb=True)
        context = self._unquantised(q_len, head_dim, kv_len, batch_count, transb=False)
        self.add(phase, f"{prefix}_scores", scores, calls, attention=True)
        self.add(phase, f"{prefix}_context", context, calls, attention=True)

    def attention_out(self, phase: str, role: str, m: int, calls: int) -> None:
        self.linear(phase, role, m, self.spec.hidden_size, self.shapes.q_width, calls)

    def mlp(self, phase: str, m: int, calls: int) -> None:
        hidden, ffn = self.spec.hidden_size, self.shapes.ffn_hidden_size
        if not self.spec.gated_ffn:
            self.linear(phase, "ffn_up", m, ffn, hidden, calls)
        else:
            if self.fused in (True, "both"):
                self.linear(phase, "ffn_gate_up", m, self.shapes.ffn_up_rows, hidden, calls)
            if self.fused in (False, "both"):
                self.linear(phase, "ffn_gate", m, ffn, hidden, calls)
                self.linear(phase, "ffn_up", m, ffn, hidden, calls)
        self.linear(phase, "ffn_down", m, hidden, ffn, calls)

    def lm_head(self, phase: str, m: int) -> None:
        problem = self._unquantised(m, self.shapes.lm_head_rows, self.spec.hidden_size)
        self.add(phase, "lm_head", problem, 1)

    def self_attention_layer(
        self, phase: str, m: int, sequences: int, seq_len: int, calls: int
    ) -> None:
        """A full encoder/prefill layer: projections, attention products, output, MLP."""
        self.self_attention_projections(phase, m, calls)
        self.attention_products(phase, "attn", sequences, seq_len, seq_len, calls)
        self.attention_out(phase, "attn_out", m, calls)
        self.mlp(phase, m, calls)


def _positions_needed(
    spec: ModelSpec, input_lens: Sequence[int], output_lens: Sequence[int]
) -> tuple[int, str]:
    """The positions the longest sequence takes, and how they add up, for messages."""
    longest_input = max(input_lens)
    if spec.architecture == "encoder":
        return longest_input, f"input length {longest_input}"
    longest_output = max(output_lens)
    needed = longest_input + longest_output - 1
    return needed, f"input length {longest_input} + output length {longest_output} - 1 = {needed}"


def _check_positions(spec: ModelSpec, workload: Workload) -> None:
    """Learned position tables are a hard limit on the sequence length."""
    if spec.position_embedding != "learned":
        return
    needed, what = _positions_needed(spec, workload.input_lens, workload.output_lens)
    if needed > spec.token_positions:
        raise InvalidInputError(
            f"{spec.name} has {spec.token_positions} learned positions but {what} positions are "
            "needed; shorten the input or output length"
        )


def positions_warning(
    spec: ModelSpec, input_lens: Sequence[int], output_lens: Sequence[int]
) -> str | None:
    """What to tell a user whose lengths go past the positions a rotary model was trained for
    (its max_positions), or None. Rotary angles go on past them, so the shapes exist and can be
    timed, but a model's output there is not what it was trained to give: it may be meant (a
    long-context benchmark) or a typo, hence a warning, not an error. (Learned positions are a
    hard limit, refused where the problems are derived.)"""
    if spec.position_embedding != "rotary":
        return None
    needed, what = _positions_needed(spec, input_lens, output_lens)
    if needed <= spec.max_positions:
        return None
    return (
        f"{spec.name} was trained for {spec.max_positions:,} positions (max_positions) but "
        f"{what} are asked for: the shapes and timings hold, the model's output past them is "
        "untrained"
    )


def gemm_problems(spec: ModelSpec, workload: Workload, fused: Fused = True) -> list[ProblemUse]:
    """Every GEMM one rank issues per step, for every (batch, input length) of the workload.

    `fused=True` lists QKV and gate+up as single GEMMs, `False` as separate ones, "both" lists
    both variants (what a tuner should cover when the runtime may use either).
    """
    if fused not in (True, False, "both"):
        raise InvalidInputError(f"fused must be True, False or 'both', got {fused!r}")
    shapes = rank_shapes(spec, workload.tp, workload.pp)
    _check_positions(spec, workload)
    emitter = _Emitter(spec, workload, shapes, fused)
    generation_steps = max(workload.output_lens) > 1 or spec.architecture == "encoder-decoder"
    for batch in workload.batch_sizes:
        for input_len in workload.input_lens:
            emitter.batch, emitter.input_len = batch, input_len
            context_m = batch * input_len
            generation_m = batch * workload.beam_width
            layers = shapes.layers_per_stage
            emitter.self_attention_layer("context", context_m, batch, input_len, layers)
            if spec.architecture == "decoder":
                emitter.lm_head("context", batch)
                if generation_steps:
                    _decoder_generation(emitter, generation_m, layers)
            elif spec.architecture == "encoder-decoder":
                decoder_layers = shapes.decoder_layers_per_stage
                emitter.cross_kv_projections("context", context_m, decoder_layers)
                _t5_generation(emitter, generation_m, input_len, decoder_layers)
    return emitter.uses


def _decoder_generation(emitter: _Emitter, m: int, layers: int) -> None:
    emitter.self_attention_projections("generation", m, layers)
    emitter.attention_out("generation", "attn_out", m, layers)
    emitter.mlp("generation", m, layers)
    emitter.lm_head("generation", m)


def _t5_generation(emitter: _Emitter, m: int, input_len: int, layers: int) -> None:
    hidden = emitter.spec.hidden_size
    q_width = emitter.shapes.q_width
    emitter.self_attention_projections("generation", m, layers)
    emitter.attention_out("generation", "attn_out", m, layers)
    emitter.linear("generation", "cross_q", m, q_width, hidden, layers)
    emitter.attention_products("generation", "cross", m, 1, input_len, layers)
    emitter.attention_out("generation", "cross_out", m, layers)
    emitter.mlp("generation", m, layers)
    emitter.lm_head("generation", m)


def deduplicate(uses: Iterable[ProblemUse]) -> list[CountedProblem]:
    """Merge uses of the same problem, summing calls per step over roles and grid points.

    Sorted by first phase, then m, then first role in layer order, then n, k and batch count,
    so the order depends only on the problems, not on the order of `uses`.
    """
    groups: dict[GemmProblem, list[ProblemUse]] = {}
    for use in uses:
        groups.setdefault(use.problem, []).append(use)
    counted = []
    for problem, group in groups.items():
        roles = sorted(
            {(PHASES.index(use.phase), ROLES.index(use.role)) for use in group},
        )
        counted.append(
            CountedProblem(
                problem=problem,
                count=sum(use.calls_per_step for use in group),
                roles=tuple(f"{PHASES[phase]}:{ROLES[role]}" for phase, role in roles),
                fused_into_attention=all(use.fused_into_attention for use in group),
            )
        )

    def order(item: CountedProblem) -> tuple[Any, ...]:
        phase, role = item.roles[0].split(":")
        p = item.problem
        return (PHASES.index(phase), p.m, ROLES.index(role), p.n, p.k, p.batch_count, p.key())

    return sorted(counted, key=order)
