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
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from ftbench.dtypes import DTYPES
from ftbench.errors import InvalidInputError

PROBLEM_SCHEMA = 1

# Formats a GEMM problem may name (fp64 is the NumPy reference's, never a GPU GEMM's).
GEMM_DTYPES = ("fp16", "bf16", "fp32")


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

    def __post_init__(self) -> None:
        for field_name in ("m", "n", "k", "batch_count"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(
                    f"GEMM problem {field_name} must be a positive integer, got {value!r}"
                )
        for field_name in ("a_dtype", "b_dtype", "c_dtype", "compute_dtype"):
            value = getattr(self, field_name)
            if value not in GEMM_DTYPES:
                raise InvalidInputError(
                    f"GEMM problem {field_name} must be one of {sorted(GEMM_DTYPES)}, got {value!r}"
                )
        for field_name in ("transa", "transb"):
            if not isinstance(getattr(self, field_name), bool):
                raise InvalidInputError(f"GEMM problem {field_name} must be true or false")

    @property
    def layout(self) -> str:
        """Row-major layout code of A then B: "NT" for a linear layer."""
        return ("T" if self.transa else "N") + ("T" if self.transb else "N")

    def flops(self) -> int:
        """Multiply-adds counted as two operations: 2 * m * n * k * batch_count."""
        return 2 * self.m * self.n * self.k * self.batch_count

    def bytes(self) -> int:
        """Bytes moved if A and B are read once and C written once, at their dtypes' sizes."""
        per_batch = (
            self.m * self.k * DTYPES[self.a_dtype].bytes
            + self.k * self.n * DTYPES[self.b_dtype].bytes
            + self.m * self.n * DTYPES[self.c_dtype].bytes
        )
        return per_batch * self.batch_count

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
        """Stable cache key, e.g. "gemm:f16f16f16:f32:NT:m=1:n=12288:k=4096:b=1"."""
        dtypes = "".join(DTYPES[d].code for d in (self.a_dtype, self.b_dtype, self.c_dtype))
        return (
            f"gemm:{dtypes}:{DTYPES[self.compute_dtype].code}:{self.layout}:"
            f"m={self.m}:n={self.n}:k={self.k}:b={self.batch_count}"
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GemmProblem:
        """Inverse of `to_dict`; a wrong schema or a missing or unknown field is an error.

        Records written before the "op" field was dropped carry "op": "gemm" (it never had
        another value); they still load, and any other op is refused.
        """
        if not isinstance(data, dict):
            raise InvalidInputError(f"a GEMM problem must be a JSON object, got {data!r}")
        if data.get("schema") != PROBLEM_SCHEMA:
            raise InvalidInputError(
                f"GEMM problem schema {data.get('schema')!r} is not supported "
                f"(this ftbench reads schema {PROBLEM_SCHEMA})"
            )
        fields = {key: value for key, value in data.items() if key not in ("schema", "op")}
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
def linear_problem(m: int, n: int, k: int, dtype: str) -> GemmProblem:
    """The problem of a linear layer Y[m, n] = X[m, k] @ W[n, k]^T in `dtype` (the one
    constructor: profiles, the runtime's dispatch and the benchmarks all build it here)."""
    return GemmProblem(m=m, n=n, k=k, a_dtype=dtype, b_dtype=dtype, c_dtype=dtype)


@dataclass(frozen=True)
class GpuPeaks:
    """The two roofline numbers of a GPU and where they come from ("datasheet" or "measured")."""

    name: str
    dense_fp16_flops_per_s: float
    hbm_bytes_per_s: float
    source: str

    def bound(self, problem: GemmProblem) -> str:
        """Classify `problem` as "memory"- or "compute"-bound on this GPU."""
        return problem.bound_on(self.dense_fp16_flops_per_s, self.hbm_bytes_per_s)

    def floor_s(self, problem: GemmProblem) -> float:
        """The roofline floor of `problem`: the longer of its FLOPs at peak and its bytes at
        full bandwidth (a measured time over it is the fraction of the roofline reached)."""
        return max(
            problem.flops() / self.dense_fp16_flops_per_s, problem.bytes() / self.hbm_bytes_per_s
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {
            "name": self.name,
            "dense_fp16_flops_per_s": self.dense_fp16_flops_per_s,
            "hbm_bytes_per_s": self.hbm_bytes_per_s,
            "source": self.source,
        }


# Dense (no sparsity) FP16/BF16 tensor-core peaks with FP32 accumulation and HBM bandwidth from
# NVIDIA's datasheets (SXM parts). Leads only: measured peaks from `bench` should replace them.
DATASHEET_PEAKS = {
    "a100": GpuPeaks("NVIDIA A100 SXM4 80GB", 312e12, 2.039e12, "datasheet"),
    "h100": GpuPeaks("NVIDIA H100 SXM5 80GB", 989.5e12, 3.35e12, "datasheet"),
    "h200": GpuPeaks("NVIDIA H200 SXM 141GB", 989.5e12, 4.8e12, "datasheet"),
}


def datasheet_peaks(gpu: str) -> GpuPeaks:
    """The datasheet peaks for "a100", "h100" or "h200"; anything else is an error."""
    try:
        return DATASHEET_PEAKS[gpu.lower()]
    except KeyError:
        raise InvalidInputError(
            f"no datasheet peaks for GPU {gpu!r}; choose one of {', '.join(DATASHEET_PEAKS)}"
        ) from None
