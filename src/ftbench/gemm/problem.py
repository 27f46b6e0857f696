"""`GemmProblem`: one GEMM shape, the contract between the model profiles and the tuner.

Layout convention (one for the whole project). The runtime computes every linear layer like
`torch.nn.functional.linear`: Y[m, n] = X[m, k] @ W[n, k]^T, with activations X row-major and
weights stored [out_features, in_features]. A problem is described in those row-major terms:

- A is the left operand (activations), B the right operand, C the result, all row-major.
- `transa` is True when A is stored [k, m] instead of [m, k]; `transb` is True when B is
  stored [n, k] instead of [k, n]. A linear layer is therefore transa=False, transb=True, and
  its layout code in `key()` is "NT".
- Batched problems (`batch_count` > 1) are strided batches of the same shape, e.g. the attention
  scores Q @ K^T (layout "NT") and context P @ V (layout "NN") of every (sequence, head) pair.

`cublas_call()` translates a problem into the column-major cuBLAS arguments, so backends never
re-derive the row-major/column-major swap.

8-bit problems carry a `scaling` scheme: the fp32 scales their 8-bit operands are read with.
C[i, j] = scale_a[i] * scale_b[j] * sum_k op(A)[i, k] * op(B)[k, j], in the operands' stored
values, where a "tensor" scale stands for every row or column and an operand without scales
counts 1:

- "none": no scales, fp16/bf16/fp32 operands (the default: every unquantised GEMM).
- "tensor": FP8 x FP8 (E4M3 A and B), one fp32 scale per operand.
- "outer": FP8 x FP8 with one fp32 scale per row of op(A) (m of them, one per token) and one per
  column of op(B) (n, one per output channel): cuBLASLt's outer-vector scaling.
- "channel": weight-only, fp16/bf16 activations A (unscaled) and fp8 or int8 weights B with one
  fp32 scale per output channel (n of them).

C is never 8-bit and the accumulation is fp32. An 8-bit problem is one GEMM (batch_count 1): the
batched attention products stay in fp16/bf16. `key()` appends ":s=SCHEME" to the key of a
scaled problem only, e.g. "gemm:e4m3e4m3f16:f32:NT:m=16:n=4096:k=4096:b=1:s=tensor", so the keys
of "none" problems, in tuned caches on disk, are those of before. Records (`to_dict`) carry
"scaling"; a record written before it existed loads as "none".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ftbench.dtypes import DTYPES, EIGHT_BIT_DTYPES
from ftbench.errors import InvalidInputError

PROBLEM_SCHEMA = 1

# Formats of C, of the accumulation and of the operands of an unscaled problem (fp64 is the
# NumPy reference's, never a GPU GEMM's).
UNSCALED_DTYPES = ("fp16", "bf16", "fp32")
# Formats a GEMM problem's operands may name.
GEMM_DTYPES = (*UNSCALED_DTYPES, *EIGHT_BIT_DTYPES)
# What each field may hold: activations are never int8 (8-bit activations are E4M3).
_FIELD_DTYPES = {
    "a_dtype": (*UNSCALED_DTYPES, "fp8"),
    "b_dtype": GEMM_DTYPES,
    "c_dtype": UNSCALED_DTYPES,
    "compute_dtype": UNSCALED_DTYPES,
}
SCALINGS = ("none", "tensor", "outer", "channel")  # see the module docstring
SCALE_DTYPE = "fp32"
# Formats of weight-only problems' activations.
_WEIGHT_ONLY_ACTIVATIONS = ("fp16", "bf16")


def default_out_dtype(a_dtype: str) -> str:
    """The format C gets unless told: A's, fp16 when A is fp8 (C is never 8-bit)."""
    return "fp16" if a_dtype in EIGHT_BIT_DTYPES else a_dtype


def default_scaling(a_dtype: str, b_dtype: str) -> str:
    """The scheme a problem of these operand formats gets unless told: "tensor" for FP8 x FP8,
    "channel" for 8-bit weights with fp16/bf16 activations, else "none"."""
    if a_dtype == "fp8":
        return "tensor"
    return "channel" if b_dtype in EIGHT_BIT_DTYPES else "none"


def scaling_error(a_dtype: str, b_dtype: str, scaling: str) -> str | None:
    """Why operands (A, B) of these formats cannot take `scaling`, or None (the formats are
    ones the fields may hold)."""
    if scaling not in SCALINGS:
        return f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}"
    if a_dtype == "fp8":
        if b_dtype != "fp8":
            return f"fp8 activations (A) need fp8 weights (B), got {b_dtype}"
        allowed, kind = ("tensor", "outer"), "fp8 x fp8"
    elif b_dtype in EIGHT_BIT_DTYPES:
        if a_dtype not in _WEIGHT_ONLY_ACTIVATIONS:
            return f"{b_dtype} weights (B) need fp16 or bf16 activations (A), got {a_dtype}"
        allowed, kind = ("channel",), f"weight-only ({a_dtype} x {b_dtype})"
    else:
        allowed, kind = ("none",), f"{a_dtype} x {b_dtype}"
    if scaling not in allowed:
        return f"{kind} GEMMs take scaling {' or '.join(allowed)}, got {scaling!r}"
    return None


@dataclass(frozen=True)
class GemmProblem:
    """C[m, n] = op(A) @ op(B) in row-major terms, `batch_count` times (see module docstring)."""

    m: int
    n: int
    k: int
    a_dtype: str = "fp16"
    b_dtype: str = "fp16"
    c_dtype: str = "fp16"
    compute_dtype: str = "fp32"
    transa: bool = False
    transb: bool = True
    batch_count: int = 1
    scaling: str = "none"

    def __post_init__(self) -> None:
        for field_name in ("m", "n", "k", "batch_count"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(
                    f"GEMM problem {field_name} must be a positive integer, got {value!r}"
                )
        for field_name, allowed in _FIELD_DTYPES.items():
            value = getattr(self, field_name)
            if value not in allowed:
                raise InvalidInputError(
                    f"GEMM problem {field_name} must be one of {sorted(allowed)}, got {value!r}"
                )
        for field_name in ("transa", "transb"):
            if not isinstance(getattr(self, field_name), bool):
                raise InvalidInputError(f"GEMM problem {field_name} must be true or false")
        error = scaling_error(self.a_dtype, self.b_dtype, self.scaling)
        if error is None and self.scaling != "none":
            error = self._scaled_error()
        if error is not None:
            raise InvalidInputError(f"GEMM problem: {error}")

    def _scaled_error(self) -> str | None:
        if self.compute_dtype != "fp32":
            return f"8-bit GEMMs accumulate in fp32, got compute_dtype {self.compute_dtype}"
        if self.batch_count != 1:
            return (
                f"8-bit GEMMs are single GEMMs (batch_count 1), got {self.batch_count}: the "
                "batched attention products stay in fp16/bf16"
            )
        return None

    @property
    def layout(self) -> str:
        """Row-major layout code of A then B: "NT" for a linear layer."""
        return ("T" if self.transa else "N") + ("T" if self.transb else "N")

    def flops(self) -> int:
        """Multiply-adds counted as two operations: 2 * m * n * k * batch_count."""
        return 2 * self.m * self.n * self.k * self.batch_count

    def scale_lengths(self) -> tuple[int, int]:
        """How many fp32 scales A and B are read with: (0, 0) unscaled, (1, 1) "tensor",
        (m, n) "outer", (0, n) "channel"."""
        return {
            "none": (0, 0),
            "tensor": (1, 1),
            "outer": (self.m, self.n),
            "channel": (0, self.n),
        }[self.scaling]

    def bytes(self) -> int:
        """Bytes moved if A, B and their scales are read once and C written once, at their
        dtypes' sizes (8-bit operands one byte an element)."""
        per_batch = (
            self.m * self.k * DTYPES[self.a_dtype].bytes
            + self.k * self.n * DTYPES[self.b_dtype].bytes
            + self.m * self.n * DTYPES[self.c_dtype].bytes
        )
        scales = sum(self.scale_lengths()) * DTYPES[SCALE_DTYPE].bytes
        return per_batch * self.batch_count + scales

    def arithmetic_intensity(self) -> float:
        """FLOPs per byte of compulsory memory traffic."""
        return self.flops() / self.bytes()

    def bound_on(self, peak_flops: float, bandwidth_bytes_per_s: float) -> str:
        """ "memory" or "compute": which roofline this problem sits under on a GPU.

        A problem whose arithmetic intensity is below the GPU's ridge point
        (peak FLOP/s divided by memory bandwidth) cannot reach peak FLOP/s.
        """
        if peak_flops <= 0 or bandwidth_bytes_per_s <= 0:
            raise InvalidInputError(
                "peak FLOP/s and memory bandwidth must be positive to classify a problem, "
                f"got {peak_flops} and {bandwidth_bytes_per_s}"
            )
        ridge_flops_per_byte = peak_flops / bandwidth_bytes_per_s
        return "compute" if self.arithmetic_intensity() >= ridge_flops_per_byte else "memory"

    def key(self) -> str:
        """Stable cache key, e.g. "gemm:f16f16f16:f32:NT:m=1:n=12288:k=4096:b=1", with
        ":s=SCHEME" after it when scaled (see the module docstring)."""
        dtypes = "".join(DTYPES[d].code for d in (self.a_dtype, self.b_dtype, self.c_dtype))
        scaling = "" if self.scaling == "none" else f":s={self.scaling}"
        return (
            f"gemm:{dtypes}:{DTYPES[self.compute_dtype].code}:{self.layout}:"
            f"m={self.m}:n={self.n}:k={self.k}:b={self.batch_count}{scaling}"
        )

    def cublas_call(self) -> dict[str, Any]:
        """The arguments of the column-major cuBLAS call that computes this row-major problem.

        Row-major memory read column-major is the transpose, so cuBLAS computes
        C^T[n, m] = op(B^T) @ op(A^T): its first operand is B, its second is A, and m and n swap.
        The keys use cuBLAS's own names: `transa`/`lda` describe cuBLAS's first operand (our B),
        `transb`/`ldb` its second (our A). A linear layer ("NT") becomes
        cublasGemmEx(T, N, m=n, n=m, k, W, lda=k, X, ldb=k, Y, ldc=n).
        """
        return {
            "transa": "T" if self.transb else "N",
            "transb": "T" if self.transa else "N",
            "m": self.n,
            "n": self.m,
            "k": self.k,
            "lda": self.k if self.transb else self.n,
            "ldb": self.m if self.transa else self.k,
            "ldc": self.n,
            "batch_count": self.batch_count,
            # Elements between consecutive matrices of a batch, in cuBLAS's operand order.
            "stride_a": self.k * self.n,
            "stride_b": self.m * self.k,
            "stride_c": self.m * self.n,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record with a schema version."""
        return {
            "schema": PROBLEM_SCHEMA,
            "a_dtype": self.a_dtype,
            "b_dtype": self.b_dtype,
            "c_dtype": self.c_dtype,
            "compute_dtype": self.compute_dtype,
            "transa": self.transa,
            "transb": self.transb,
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "batch_count": self.batch_count,
            "scaling": self.scaling,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmProblem:
        """Inverse of `to_dict`; a wrong schema or a missing or unknown field is an error.

        Records written before the "op" field was dropped carry "op": "gemm" (it never had
        another value); they still load, and any other op is refused. Records written before
        "scaling" existed hold unscaled problems and load as scaling "none".
        """
        if not isinstance(data, dict):
            raise InvalidInputError(f"a GEMM problem must be a JSON object, got {data!r}")
        if data.get("schema") != PROBLEM_SCHEMA:
            raise InvalidInputError(
                f"GEMM problem schema {data.get('schema')!r} is not supported "
                f"(this ftbench reads schema {PROBLEM_SCHEMA})"
            )
        fields = {"scaling": "none"}
        fields.update((key, value) for key, value in data.items() if key not in ("schema", "op"))
        if data.get("op", "gemm") != "gemm":
            raise InvalidInputError(
                f"GEMM problem op {data['op']!r} is not supported (ftbench tunes only 'gemm')"
            )
        expected = set(cls.__dataclass_fields__)
        missing = sorted(expected - fields.keys())
        unknown = sorted(fields.keys() - expected)
        if missing:
            raise InvalidInputError(f"GEMM problem is missing field(s): {', '.join(missing)}")
        if unknown:
            raise InvalidInputError(f"GEMM problem has unknown field(s): {', '.join(unknown)}")
        return cls(**fields)


@functools.lru_cache(maxsize=4096)
def linear_problem(
    m: int,
    n: int,
    k: int,
    dtype: str,
    *,
    weights: str | None = None,
    out_dtype: str | None = None,
    scaling: str | None = None,
) -> GemmProblem:
    """The problem of a linear layer Y[m, n] = X[m, k] @ W[n, k]^T (the one constructor:
    profiles, the runtime's dispatch and the benchmarks all build it here).

    `dtype` is X's format, `weights` W's (default `dtype`), `out_dtype` Y's (default
    `default_out_dtype`: `dtype`, fp16 for fp8) and `scaling` the scheme (default
    `default_scaling`): a plain fp16 layer is `linear_problem(m, n, k, "fp16")`, an FP8 one
    `linear_problem(m, n, k, "fp8")`, an int8 weight-only one `linear_problem(m, n, k, "bf16",
    weights="int8")`.
    """
    weights = dtype if weights is None else weights
    out_dtype = default_out_dtype(dtype) if out_dtype is None else out_dtype
    scaling = default_scaling(dtype, weights) if scaling is None else scaling
    return GemmProblem(
        m=m, n=n, k=k, a_dtype=dtype, b_dtype=weights, c_dtype=out_dtype, scaling=scaling
    )


@dataclass(frozen=True)
class GpuPeaks:
    """The roofline numbers of a GPU and where they come from ("datasheet" or "measured"): the
    dense fp16 tensor-core peak, the HBM bandwidth and, where the GPU has FP8 tensor cores and
    the number is known, the dense FP8 peak."""

    name: str
    dense_fp16_flops_per_s: float
    hbm_bytes_per_s: float
    source: str
    dense_fp8_flops_per_s: float | None = None

    def flops_per_s(self, problem: GemmProblem) -> float:
        """The tensor-core peak `problem` runs at: FP8's for E4M3 x E4M3, else fp16's (a
        weight-only GEMM multiplies fp16/bf16 on the tensor cores)."""
        if problem.a_dtype != "fp8":
            return self.dense_fp16_flops_per_s
        if self.dense_fp8_flops_per_s is None:
            raise InvalidInputError(
                f"{problem.key()}: no FP8 peak for {self.name} ({self.source}): it has no FP8 "
                "tensor cores, or none was measured"
            )
        return self.dense_fp8_flops_per_s

    def bound(self, problem: GemmProblem) -> str:
        """Classify `problem` as "memory"- or "compute"-bound on this GPU."""
        return problem.bound_on(self.flops_per_s(problem), self.hbm_bytes_per_s)

    def floor_s(self, problem: GemmProblem) -> float:
        """The roofline floor of `problem`: the longer of its FLOPs at its peak and its bytes at
        full bandwidth (a measured time over it is the fraction of the roofline reached)."""
        return max(
            problem.flops() / self.flops_per_s(problem), problem.bytes() / self.hbm_bytes_per_s
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {
            "name": self.name,
            "dense_fp16_flops_per_s": self.dense_fp16_flops_per_s,
            "dense_fp8_flops_per_s": self.dense_fp8_flops_per_s,
            "hbm_bytes_per_s": self.hbm_bytes_per_s,
            "source": self.source,
        }


# Dense (non-sparse) tensor-core peaks from NVIDIA's datasheets; the A100 has no FP8.
DATASHEET_PEAKS = {
    "a100": GpuPeaks("NVIDIA A100 SXM4 80GB", 312e12, 2.039e12, "datasheet"),
    "h100": GpuPeaks("NVIDIA H100 SXM5 80GB", 989.5e12, 3.35e12, "datasheet", 1979e12),
    "h200": GpuPeaks("NVIDIA H200 SXM 141GB", 989.5e12, 4.8e12, "datasheet", 1979e12),
}


def datasheet_peaks(gpu: str) -> GpuPeaks:
    """The datasheet peaks for "a100", "h100" or "h200"; anything else is an error."""
    try:
        return DATASHEET_PEAKS[gpu.lower()]
    except KeyError:
        raise InvalidInputError(
            f"no datasheet peaks for GPU {gpu!r}; choose one of {', '.join(DATASHEET_PEAKS)}"
        ) from None
