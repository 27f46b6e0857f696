"""The `cublaslt` backend: which cuBLASLt matmul algorithms to try, from its heuristic and by
enumeration (the library calls themselves are `kernels.cublaslt`).

Candidates, in this order:
- the heuristic's top results (`cublasLtMatmulAlgoGetHeuristic`, 32 MiB workspace; cuBLASLt 13.1
  returns at most 8), named "heuristic #i: ..."; the first is `default`;
- then, up to `max_candidates` in all, configurations that `cublasLtMatmulAlgoCheck` accepts with
  at most 32 MiB of workspace, half of the room from each of two pools:
  - near: one-change variants (`variants`) of the heuristic's results: other stages, split-K
    1/2/3/4/8/16 with each allowed reduction scheme (while the grid is smaller than the GPU),
    CTA swizzling toggled, custom options, cluster shapes on Hopper;
  - far: every algorithm id the library lists for the problem's types, each with every
    (tile, stages) pair its capabilities list (most promising tiles first, at most
    `MAX_BASES_PER_ALGO`, given up after `MAX_REFUSED_BEFORE_ACCEPTED` refusals in a row at
    the start; each with the first cluster shape accepted, AUTO first), plus the one-change
    variants of its `VARIANT_TILES_PER_ALGO` most promising tiles;
  `select_diverse` picks from each pool so that algorithm ids, split-K counts, tiles and stages
  are all covered before any is repeated; duplicates of the heuristic's results are dropped.

A candidate's config is an `AlgoConfig` (`kernels.cublaslt`): the algorithm id and every
configuration attribute of `cublasLtMatmulAlgo_t`, enough to rebuild the algorithm byte for byte
in another process. Results are valid for the cuBLASLt version that made them; the tuned cache's
header records it.

The runner is a `kernels.cublaslt.Matmul` on the problem's descriptors, made once per problem;
it belongs to the device that was current when it was prepared.

FP8 problems (E4M3 A and B, `problem.scaling` "tensor" or "outer") are searched the same way
once for each fast-accumulation setting (`FAST_ACCUM_SETTINGS`, off first): each setting has its
own plan, so its own heuristic ranking (its top 8 among the candidates) and enumeration, and half
of `max_candidates`; the two lists are taken in turn, so a time budget cuts both alike. Their
configs also store `fast_accum`; `default` is the heuristic's first choice with it off (the
library's default). Their runner is a `kernels.cublaslt.ScaledMatmul`, called
`runner(a, b, c, a_scale, b_scale)`.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ftbench.dtypes import DTYPES, EIGHT_BIT_DTYPES
from ftbench.errors import GpuError, InvalidInputError
from ftbench.gemm.backends.base import CandidateUnsupported
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.operands import operand_shapes
from ftbench.gemm.problem import GemmProblem
from ftbench.kernels import cublaslt
from ftbench.kernels.cublas import CUBLAS_COMPUTE_32F, WORKSPACE_BYTES
from ftbench.kernels.cublaslt import CONFIG_FIELDS, AlgoCaps, AlgoConfig, Fp8Settings, MatrixSpec

BACKEND_NAME = "cublaslt"
HEURISTIC_COUNT = 16
MAX_CANDIDATES = 48
MAX_ALGO_IDS = 512
# (tile, stages) pairs checked per algorithm id, most promising tiles first.
MAX_BASES_PER_ALGO = 1024
# An algorithm id none of whose first this many (tile, stages) pairs is accepted is given up
# (on an H200, id 67 refuses all of its 3135 pairs for fp16 NT problems).
MAX_REFUSED_BEFORE_ACCEPTED = 64
# Tiles per algorithm id whose one-change variants are checked.
VARIANT_TILES_PER_ALGO = 4
SPLIT_K_VALUES = (2, 3, 4, 8, 16)
MAX_CUSTOM_OPTION = 8
# cublasLtReductionScheme_t bits: INPLACE, COMPUTE_TYPE, OUTPUT_TYPE.
REDUCTION_SCHEMES = (1, 2, 4)
# Explicit cluster shapes tried on compute capability 9.0 and later, besides AUTO (no capability
# lists them; AlgoCheck decides). The heuristic's own picks on an H200 include 2x1x1, 4x1x1,
# 1x2x1 and 2x4x1.
CLUSTER_SHAPE_NAMES = (
    "SHAPE_1x1x1", "SHAPE_2x1x1", "SHAPE_1x2x1", "SHAPE_4x1x1", "SHAPE_1x4x1", "SHAPE_2x2x1",
    "SHAPE_4x2x1", "SHAPE_2x4x1",
)  # fmt: skip
# Those tried, in this order after AUTO, to find a cluster shape a (tile, stages) pair accepts.
BASE_CLUSTER_SHAPE_COUNT = 3
COMPUTE_DTYPES = {"fp32": CUBLAS_COMPUTE_32F}
# Fast accumulation, the FP8 tuning dimension beside the algorithm: off (the library's default,
# partial sums promoted to fp32) first.
FAST_ACCUM_SETTINGS = (False, True)

# Attributes that `select_diverse` spreads after the algorithm id and the split-K count.
SECONDARY_FIELDS = tuple(name for name in CONFIG_FIELDS if name not in ("id", "splitk_num"))


def layout_specs(problem: GemmProblem) -> tuple[MatrixSpec, MatrixSpec, MatrixSpec]:
    """cuBLASLt's A, B and C (= D) layouts for `problem`.

    As in `GemmProblem.cublas_call`: cuBLASLt's A is our B, its B is our A, and m and n swap.
    A layout describes the matrix as stored, before its transpose operation.
    """
    call = problem.cublas_call()
    m, n, k = call["m"], call["n"], call["k"]
    a_stride, b_stride, c_stride = (math.prod(shape[-2:]) for shape in operand_shapes(problem))
    lt_a = (m, k) if call["transa"] == "N" else (k, m)
    lt_b = (k, n) if call["transb"] == "N" else (n, k)
    return (
        MatrixSpec(*lt_a, call["lda"], b_stride),
        MatrixSpec(*lt_b, call["ldb"], a_stride),
        MatrixSpec(m, n, call["ldc"], c_stride),
    )


def is_fp8(problem: GemmProblem) -> bool:
    """Whether `problem` is an FP8 matmul: E4M3 A and B (scaled as `problem.scaling` says)."""
    return (problem.a_dtype, problem.b_dtype) == ("fp8", "fp8")


def unsupported_reason(problem: GemmProblem) -> str | None:
    """Why this backend cannot run `problem` here, or None: a compute type other than fp32,
    8-bit operands other than E4M3 x E4M3, or an FP8 problem cuBLASLt's FP8 rules or version
    refuse (`kernels.cublaslt.fp8_refusal`; asks the library)."""
    if problem.compute_dtype not in COMPUTE_DTYPES:
        return f"the cuBLASLt backend computes in fp32 only, not {problem.compute_dtype}"
    if is_fp8(problem):
        try:
            _plan(problem, False)
        except InvalidInputError as exc:
            return str(exc)
        return None
    if problem.scaling == "channel":
        return "cuBLASLt has no fp16/bf16 x 8-bit weight-only GEMM"
    operands = (problem.a_dtype, problem.b_dtype)
    if not set(operands).isdisjoint(EIGHT_BIT_DTYPES):
        return (
            f"cuBLASLt multiplies 8-bit operands here only as fp8 x fp8, not {' x '.join(operands)}"
        )
    return None


def candidate_for(
    config: AlgoConfig, heuristic_rank: int | None = None, fast_accum: bool | None = None
) -> Candidate:
    """The `Candidate` of `config`; heuristic results are named "heuristic #rank: ...". An FP8
    problem's candidates (`fast_accum` true or false, None for others) store it beside the
    algorithm, and are named "... fast-accum" when it is on."""
    name = config.describe()
    if heuristic_rank is not None:
        name = f"heuristic #{heuristic_rank}: {name}"
    stored = config.to_config()
    if fast_accum is not None:
        stored["fast_accum"] = fast_accum
        name += " fast-accum" if fast_accum else ""
    return Candidate(BACKEND_NAME, name, stored)


def config_of(stored: dict[str, Any], fp8: bool) -> tuple[AlgoConfig, bool]:
    """(algorithm, fast accumulation) of a candidate's stored config: an FP8 problem's holds
    `fast_accum` (true or false) beside the `AlgoConfig` fields, any other's only those."""
    fields = dict(stored)
    fast_accum = fields.pop("fast_accum", None) if fp8 else False
    if not isinstance(fast_accum, bool):
        raise InvalidInputError(
            f"cublaslt config {stored!r} of an FP8 problem needs fast_accum true or false"
        )
    return AlgoConfig.from_config(fields), fast_accum


def in_turn(*lists: Sequence[Candidate]) -> list[Candidate]:
    """The items of `lists` taken in turn: the first of each, then the second of each, ..."""
    return [item for group in itertools.zip_longest(*lists) for item in group if item is not None]


def tile_dims(tile_id: int) -> tuple[int, int] | None:
    """(rows, cols) of a `cublasLtMatmulTile_t` tile of C, or None when unknown or undefined."""
    rows, _, cols = cublaslt.enum_label("MatmulTile", tile_id).partition("x")
    if rows.isdigit() and cols.isdigit():
        return int(rows), int(cols)
    return None


def promise(
    tile: tuple[int, int] | None, splitk_num: int, spec: MatrixSpec, batch: int, sm_count: int
) -> float:
    """How well a tile fits C: the fraction of the tiled area that is C, times the fraction of
    the last wave of CTAs that is busy. 0 for an unknown tile. Used only to order candidates."""
    if tile is None:
        return 0.0
    tiles_rows, tiles_cols = math.ceil(spec.rows / tile[0]), math.ceil(spec.cols / tile[1])
    padding = spec.rows * spec.cols / (tiles_rows * tile[0] * tiles_cols * tile[1])
    ctas = tiles_rows * tiles_cols * batch * splitk_num
    waves = ctas / (math.ceil(ctas / sm_count) * sm_count)
    return padding * waves


def grid_ctas(tile: tuple[int, int] | None, spec: MatrixSpec, batch: int) -> int | None:
    """CTAs launched without split-K, or None for an unknown tile."""
    if tile is None:
        return None
    return math.ceil(spec.rows / tile[0]) * math.ceil(spec.cols / tile[1]) * batch


def variants(
    base: AlgoConfig, caps: AlgoCaps, split_k: bool, cluster_shape_ids: Sequence[int]
) -> list[AlgoConfig]:
    """Configs that change one thing of `base`: its stages, its split-K count (only when
    `split_k`; a count above 1 with each reduction scheme the algorithm allows), CTA swizzling,
    its custom option, its cluster shape (AUTO or one of `cluster_shape_ids`, when given)."""
    out = [replace(base, stages_id=stages) for stages in caps.stages_ids]
    if split_k and caps.splitk_support:
        schemes = [s for s in REDUCTION_SCHEMES if caps.reduction_scheme_mask & s] or [0]
        out.append(replace(base, splitk_num=1, reduction_scheme=0))
        out += [
            replace(base, splitk_num=count, reduction_scheme=scheme)
            for count in SPLIT_K_VALUES
            for scheme in schemes
        ]
    if caps.cta_swizzling_support:
        out.append(replace(base, cta_swizzling=0 if base.cta_swizzling else 1))
    custom_options = range(min(caps.custom_option_max, MAX_CUSTOM_OPTION) + 1)
    out += [replace(base, custom_option=option) for option in custom_options]
    if cluster_shape_ids:
        out += [replace(base, cluster_shape_id=shape) for shape in (0, *cluster_shape_ids)]
    return [config for config in dict.fromkeys(out) if config != base]


def select_diverse(
    pool: Iterable[AlgoConfig],
    budget: int,
    taken: Sequence[AlgoConfig] = (),
    score: Callable[[AlgoConfig], float] = lambda config: 0.0,
) -> list[AlgoConfig]:
    """Up to `budget` configs of `pool` (not in `taken`), picked greedily for coverage.

    Each pick is the config with, in this order of importance: an algorithm id not yet seen,
    a split-K count not yet seen, the most other attribute values not yet seen (tile, stages,
    reduction, swizzle, custom option, inner and cluster shape), the highest `score`, the
    earliest place in `pool`. So every algorithm id comes first, then every split-K count, then
    a spread of tiles and stages, instead of the first N configs of one algorithm.
    """
    seen = {name: {getattr(config, name) for config in taken} for name in CONFIG_FIELDS}
    excluded = set(taken)
    remaining = [config for config in dict.fromkeys(pool) if config not in excluded]
    scores = {config: score(config) for config in remaining}

    def priority(index: int) -> tuple:
        config = remaining[index]
        return (
            config.id not in seen["id"],
            config.splitk_num not in seen["splitk_num"],
            sum(getattr(config, name) not in seen[name] for name in SECONDARY_FIELDS),
            scores[config],
            -index,
        )

    chosen: list[AlgoConfig] = []
    while remaining and len(chosen) < budget:
        config = remaining.pop(max(range(len(remaining)), key=priority))
        chosen.append(config)
        for name in CONFIG_FIELDS:
            seen[name].add(getattr(config, name))
    return chosen


def merge_candidates(
    heuristic: Sequence[AlgoConfig],
    enumerated: Sequence[AlgoConfig],
    max_candidates: int,
    fast_accum: bool | None = None,
) -> list[Candidate]:
    """Heuristic results first (ranked), then enumerated configs, each algorithm once (all with
    the FP8 `fast_accum` setting, see `candidate_for`)."""
    ranked = list(dict.fromkeys(heuristic))[:max_candidates]
    known = set(ranked)
    rest = [config for config in dict.fromkeys(enumerated) if config not in known]
    candidates = [candidate_for(config, rank, fast_accum) for rank, config in enumerate(ranked)]
    candidates += [
        candidate_for(config, fast_accum=fast_accum)
        for config in rest[: max_candidates - len(ranked)]
    ]
    return candidates


@functools.cache
def _plan(problem: GemmProblem, fast_accum: bool) -> cublaslt.MatmulPlan:
    """The descriptor and layouts of `problem` (FP8: with fast accumulation on or off), made
    once per problem and setting."""
    if fast_accum and not is_fp8(problem):
        raise InvalidInputError(f"fast accumulation is an FP8 setting, not one of {problem.key()}")
    call = problem.cublas_call()
    # cuBLASLt's A is our B and its B our A (see GemmProblem.cublas_call).
    dtypes = [DTYPES[d].cuda_data_type for d in (problem.b_dtype, problem.a_dtype, problem.c_dtype)]
    return cublaslt.matmul_plan(
        call["transa"],
        call["transb"],
        layout_specs(problem),
        tuple(dtypes),
        problem.batch_count,
        COMPUTE_DTYPES[problem.compute_dtype],
        fp8=Fp8Settings(problem.scaling, fast_accum) if is_fp8(problem) else None,
    )


def heuristic(
    problem: GemmProblem, count: int = HEURISTIC_COUNT, fast_accum: bool = False
) -> list[tuple[AlgoConfig, bytes]]:
    """The heuristic's ranked results: (decoded config, the raw `cublasLtMatmulAlgo_t` bytes)."""
    import cupy

    handle = cublaslt.device_handle(cupy.cuda.Device().id)
    return cublaslt.heuristic_algos(handle, _plan(problem, fast_accum), count)


@dataclass
class EnumerationStats:
    """What one enumeration did (for the docs and for tuning its limits)."""

    algo_ids: int = 0
    checked: int = 0
    near: int = 0
    far: int = 0
    far_by_algo: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def enumerate_configs(
    problem: GemmProblem,
    around: Sequence[AlgoConfig] = (),
    stats: EnumerationStats | None = None,
    fast_accum: bool = False,
) -> tuple[list[AlgoConfig], list[AlgoConfig], Callable[[AlgoConfig], float]]:
    """(near, far, score): the configs AlgoCheck accepts that change one thing of a config in
    `around` (the heuristic's results); those of the enumeration by algorithm id (see the module
    docstring); and their `promise`, for ordering. FP8: for the plan with `fast_accum`."""
    import cupy

    stats = stats if stats is not None else EnumerationStats()
    start = time.perf_counter()
    device = cupy.cuda.Device()
    handle, plan = cublaslt.device_handle(device.id), _plan(problem, fast_accum)
    sm_count = device.attributes["MultiProcessorCount"]
    cluster_shapes = ()
    if int(device.compute_capability) >= 90:
        cluster_shapes = tuple(cublaslt.cluster_shape_id(name) for name in CLUSTER_SHAPE_NAMES)
    c_spec, batch = layout_specs(problem)[2], problem.batch_count
    checked: dict[AlgoConfig, bool] = {}

    def score(config: AlgoConfig) -> float:
        return promise(tile_dims(config.tile_id), config.splitk_num, c_spec, batch, sm_count)

    def accepted(config: AlgoConfig) -> bool:
        if config not in checked:
            try:
                algo = cublaslt.build_algo(handle, plan, config)
                checked[config] = cublaslt.check_algo(handle, plan, algo) is not None
            except GpuError:
                checked[config] = False
        return checked[config]

    @functools.cache
    def caps_of(algo_id: int) -> AlgoCaps:
        return cublaslt.algo_caps(cublaslt.init_algo(handle, plan, algo_id))

    def neighbors(base: AlgoConfig) -> list[AlgoConfig]:
        ctas = grid_ctas(tile_dims(base.tile_id), c_spec, batch)
        split_k = ctas is None or ctas < sm_count
        found = variants(base, caps_of(base.id), split_k, cluster_shapes)
        return [config for config in found if accepted(config)]

    def with_cluster(config: AlgoConfig) -> AlgoConfig | None:
        """`config` with the first cluster shape AlgoCheck accepts (AUTO first): Hopper
        algorithms such as id 66 refuse AUTO."""
        for shape in (0, *cluster_shapes[:BASE_CLUSTER_SHAPE_COUNT]):
            if accepted(replace(config, cluster_shape_id=shape)):
                return replace(config, cluster_shape_id=shape)
        return None

    near = [config for base in around for config in neighbors(base)]
    far: list[AlgoConfig] = []
    ids = cublaslt.algo_ids(handle, plan, MAX_ALGO_IDS)
    for algo_id in ids:
        caps = caps_of(algo_id)
        if batch > 1 and not caps.strided_batch_support:
            continue
        tiles = sorted(caps.tile_ids, key=lambda tile: -score(AlgoConfig(algo_id, tile)))
        pairs = [AlgoConfig(algo_id, tile, stages) for tile in tiles for stages in caps.stages_ids]
        bases = []
        for index, pair in enumerate(pairs[:MAX_BASES_PER_ALGO]):
            if not bases and index == MAX_REFUSED_BEFORE_ACCEPTED:
                break
            base = with_cluster(pair)
            if base is not None:
                bases.append(base)
        first_per_tile: dict[int, AlgoConfig] = {}
        for base in bases:
            first_per_tile.setdefault(base.tile_id, base)
        varied = list(first_per_tile.values())[:VARIANT_TILES_PER_ALGO]
        found = list(dict.fromkeys(bases + [c for base in varied for c in neighbors(base)]))
        stats.far_by_algo[algo_id] = len(found)
        far += found
    stats.algo_ids, stats.checked = len(ids), len(checked)
    stats.near, stats.far = len(near), len(far)
    stats.seconds = time.perf_counter() - start
    return near, far, score


def prepare_runner(
    problem: GemmProblem, config: AlgoConfig, fast_accum: bool = False
) -> cublaslt.Matmul:
    """The runner of `config` for `problem` on the current device (FP8: a ScaledMatmul, with
    fast accumulation on or off); CandidateUnsupported when cuBLASLt refuses it or it needs
    more than the workspace."""
    import cupy

    device_id = cupy.cuda.Device().id
    handle, plan = cublaslt.device_handle(device_id), _plan(problem, fast_accum)
    try:
        algo = cublaslt.build_algo(handle, plan, config)
    except GpuError as exc:
        raise CandidateUnsupported(str(exc)) from exc
    workspace_bytes = cublaslt.check_algo(handle, plan, algo)
    if workspace_bytes is None:
        raise CandidateUnsupported(
            f"cublasLtMatmulAlgoCheck refuses {config.describe()} for {problem.key()} "
            f"(or it needs more than {WORKSPACE_BYTES} bytes of workspace)"
        )
    runner = cublaslt.ScaledMatmul if plan.fp8 is not None else cublaslt.Matmul
    return runner(device_id, plan, config, algo, workspace_bytes)


class CublasLtBackend:
    """cuBLASLt algorithms: the heuristic's, then enumerated ones (see the module docstring)."""

    name = BACKEND_NAME

    def __init__(
        self, max_candidates: int = MAX_CANDIDATES, heuristic_count: int = HEURISTIC_COUNT
    ):
        if max_candidates < 1 or heuristic_count < 1:
            raise InvalidInputError("max_candidates and heuristic_count must be at least 1")
        self.max_candidates = max_candidates
        self.heuristic_count = heuristic_count

    def unavailable_reason(self) -> str | None:
        return cublaslt.unavailable_reason()

    def unsupported_reason(self, problem: GemmProblem) -> str | None:
        return unsupported_reason(problem)

    def candidates(self, problem: GemmProblem) -> list[Candidate]:
        if unsupported_reason(problem) is not None:
            return []
        if not is_fp8(problem):
            return self._search(problem, self.max_candidates, None)
        # Half the room for each fast-accumulation setting (the first gets the odd one).
        rooms = ((self.max_candidates + 1) // 2, self.max_candidates // 2)
        return in_turn(
            *(
                self._search(problem, room, fast_accum)
                for room, fast_accum in zip(rooms, FAST_ACCUM_SETTINGS, strict=True)
                if room
            )
        )

    def _search(
        self, problem: GemmProblem, max_candidates: int, fast_accum: bool | None
    ) -> list[Candidate]:
        """The heuristic's results, then enumerated configs, up to `max_candidates`, for the
        plan with `fast_accum` (None: not an FP8 problem)."""
        setting = bool(fast_accum)
        ranked = [config for config, _ in heuristic(problem, self.heuristic_count, setting)]
        ranked = list(dict.fromkeys(ranked))[:max_candidates]
        near, far, score = enumerate_configs(problem, ranked, fast_accum=setting)
        # Half the room goes to the heuristic's neighbourhood, the rest to the wider enumeration.
        room = max_candidates - len(ranked)
        chosen = select_diverse(near, (room + 1) // 2, ranked, score)
        chosen += select_diverse(far, room - len(chosen), ranked + chosen, score)
        return merge_candidates(ranked, chosen, max_candidates, fast_accum)

    def default(self, problem: GemmProblem) -> Candidate | None:
        if unsupported_reason(problem) is not None:
            return None
        results = heuristic(problem, self.heuristic_count)
        fast_accum = False if is_fp8(problem) else None
        return candidate_for(results[0][0], 0, fast_accum) if results else None

    def prepare(self, candidate: Candidate, problem: GemmProblem) -> cublaslt.Matmul:
        reason = unsupported_reason(problem)
        if reason is not None:
            raise CandidateUnsupported(f"{problem.key()}: {reason}")
        config, fast_accum = config_of(candidate.config, is_fp8(problem))
        return prepare_runner(problem, config, fast_accum)


BACKEND = CublasLtBackend()
