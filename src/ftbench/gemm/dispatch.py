"""The runtime's one GEMM dispatch: every linear layer goes through `GemmDispatch.linear`.

A linear layer computes out[m, n] = x[m, k] @ weight[n, k]^T (the `GemmProblem` "NT" layout).
The first call for a shape resolves it against the tuned-config cache written by `ftbench tune`:
a hit runs the tuned backend with its stored configuration, a miss runs the library default
(cublasGemmEx, CUBLAS_GEMM_DEFAULT). Each distinct problem is resolved once and its runner kept,
so later calls cost a dictionary lookup and can be captured in a CUDA graph. Misses are counted
per distinct problem and listed, so `ftbench run` can say how much of a model ran untuned.

A layer with 8-bit weights (int8 codes, or E4M3 bits in uint8, with one fp32 scale per output
channel: `runtime.weights.Linear`) is a weight-only problem while m <= `weight_only.MAX_M` (the
decode GEMMs, which read their weight and little else): the project's weight-only kernels, tuned
or default, multiply by the codes in registers. A GEMM of more rows (a prefill) is compute-bound:
its weight is dequantised into a scratch buffer (`weight_only.dequantize`, one per stream slot,
kept and grown as needed) and the fp16/bf16 problem of the same shape runs on it, tuned as the
unquantised layer's would be. With `activations="fp8"` (W8A8, fp8 weights) such a GEMM instead
quantises x per token to E4M3 (`weight_only.quantize`, the weights' absmax rule, one fp32 scale a
row) into scratch and runs the FP8 problem with outer-vector scales (token scales x channel
scales, cuBLASLt) at twice the fp16 tensor-core rate; decode GEMMs stay weight-only, reading fp16
activations, since they are bound by the weight read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftbench.dtypes import array_dtype
from ftbench.errors import GpuError, InvalidInputError
from ftbench.gemm.backends import default_candidate, get_backend
from ftbench.gemm.backends.base import Runner
from ftbench.gemm.cache import TunedCache
from ftbench.gemm.problem import GemmProblem, linear_problem
from ftbench.kernels.cublas import check_linear_operands, check_linear_shapes
from ftbench.kernels.streams import scratch_slot


@dataclass
class DispatchStats:
    """Distinct problems resolved from the cache (hits) or run untuned (misses)."""

    hits: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    backends: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hits": len(self.hits),
            "misses": len(self.misses),
            "missed_problems": list(self.misses),
            "backends": dict(self.backends),
        }


ACTIVATIONS = (None, "fp8")  # what an 8-bit layer's GEMMs of more than 16 rows read: see above


class GemmDispatch:
    """Runs linear layers with the tuned backend for their shape, or the default on a miss."""

    def __init__(self, cache: TunedCache | None = None, activations: str | None = None) -> None:
        if activations not in ACTIVATIONS:
            raise InvalidInputError(
                f"activations must be one of {[a for a in ACTIVATIONS if a]} or None (the "
                f"layer's dtype), not {activations!r}"
            )
        self.cache = cache
        self.activations = activations
        self.stats = DispatchStats()
        # Runners by `linear_problem`'s arguments: a call after the first builds no GemmProblem.
        self._runners: dict[tuple, Runner] = {}
        # Scratch by (stream slot, use): dequantised weights, E4M3 activations and their scales.
        self._scratches: dict[tuple[int, str], Any] = {}
        # Outgrown buffers stay alive: a captured prefill graph may still point at one.
        self._outgrown: list[Any] = []

    def linear(self, x: Any, weight: Any, out: Any, scale: Any = None) -> None:
        """out = x @ weight^T on CuPy's current stream (x [m, k], weight [n, k], out [m, n]);
        with `scale` [n], weight holds 8-bit codes and the layer's weight is
        weight * scale[:, None] (see the module docstring)."""
        if scale is not None:
            self._linear_8bit(x, weight, out, scale)
            return
        m, n, k = check_linear_operands(x, weight, out)
        self._runner(m, n, k, array_dtype(x))(x, weight, out)

    def _runner(
        self, m: int, n: int, k: int, dtype: str, weights: str | None = None,
        out_dtype: str | None = None, scaling: str | None = None,
    ) -> Runner:  # fmt: skip
        """The runner of `linear_problem` with these arguments, resolved on its first call."""
        shape = (m, n, k, dtype, weights, out_dtype, scaling)
        runner = self._runners.get(shape)
        if runner is None:
            problem = linear_problem(
                m, n, k, dtype, weights=weights, out_dtype=out_dtype, scaling=scaling
            )
            runner = self._runners[shape] = self._resolve(problem)
        return runner

    def _linear_8bit(self, x: Any, codes: Any, out: Any, scale: Any) -> None:
        from ftbench.kernels import weight_only

        m, n, k = check_linear_shapes(x, codes, out)
        dtype = array_dtype(x)
        if array_dtype(out) != dtype or dtype not in ("fp16", "bf16"):
            raise InvalidInputError(
                f"an 8-bit linear layer takes fp16 or bf16 x and out of one dtype, got "
                f"{array_dtype(x)} and {array_dtype(out)}"
            )
        weights = weight_only.code_format(codes, "an 8-bit linear layer")
        if m <= weight_only.MAX_M:
            self._runner(m, n, k, dtype, weights=weights)(x, codes, out, scale)
            return
        if self.activations == "fp8":
            if weights != "fp8":
                raise InvalidInputError(
                    f"fp8 activations multiply fp8 weights, not {weights} ones: quantise the "
                    "weights to fp8, or keep the activations in the layer's dtype"
                )
            x_codes = self._scratch(x, m * k, "fp8 activations", np.uint8)[: m * k]
            x_scales = self._scratch(x, m, "fp8 activation scales", np.float32)[:m]
            x_codes = x_codes.reshape(m, k)
            weight_only.quantize(x, "fp8", out=(x_codes, x_scales))
            fp8 = self._runner(m, n, k, "fp8", out_dtype=dtype, scaling="outer")
            fp8(x_codes, codes, out, x_scales, scale)
            return
        plain = self._scratch(x, n * k, "dequantised weight", x.dtype)[: n * k].reshape(n, k)
        weight_only.dequantize(codes, scale, plain)
        self._runner(m, n, k, dtype)(x, plain, out)

    def _scratch(self, like: Any, size: int, use: str, dtype: Any) -> Any:
        """This stream slot's buffer for `use`: at least `size` elements of `dtype`, in the
        array module of `like` (CuPy; NumPy in the host tests)."""
        key = (scratch_slot(), use)
        buffer = self._scratches.get(key)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            if buffer is not None:
                self._outgrown.append(buffer)
            buffer = self._scratches[key] = _empty_like_module(like, size, dtype)
        return buffer

    def _resolve(self, problem: GemmProblem) -> Runner:
        entry = self.cache.lookup(problem) if self.cache is not None else None
        key = problem.key()
        if entry is None:
            self.stats.misses.append(key)
            backend, candidate = default_candidate(problem)
        else:
            self.stats.hits.append(key)
            candidate = entry.winner
            backend = get_backend(candidate.backend)
        try:
            runner = backend.prepare(candidate, problem)
        except Exception as exc:
            raise GpuError(
                f"tuned GEMM {candidate.backend}:{candidate.name} for {key} cannot run here "
                f"({exc}); re-tune or prune the cache"
            ) from exc
        self.stats.backends[candidate.backend] = self.stats.backends.get(candidate.backend, 0) + 1
        return runner


def _empty_like_module(like: Any, size: int, dtype: Any) -> Any:
    """An uninitialised vector of `size` elements of `dtype`, in `like`'s array module."""
    if isinstance(like, np.ndarray):
        return np.empty(size, dtype)
    import cupy

    return cupy.empty(size, dtype)
