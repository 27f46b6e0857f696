"""Fakes for testing the tuner's bookkeeping without a GPU."""

from ftbench.autotune.sweep import ProblemOutcome
from ftbench.bench.environment import EnvironmentRecord, GpuInfo
from ftbench.gemm.cache import TimeSummary, TunedEntry
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem


def fake_environment(gpu_name="NVIDIA H200", cublas="13.1.0") -> EnvironmentRecord:
    gpu = GpuInfo(
        index=0, name=gpu_name, uuid=None, pci_bus_id=None, compute_capability="9.0",
        sm_count=132, memory_total_mib=143771, l2_cache_bytes=60 * 2**20, sm_clock_mhz=1980,
        sm_clock_max_mhz=1980, memory_clock_mhz=3201, memory_clock_max_mhz=3201, power_w=100.0,
        power_limit_w=700.0, temperature_c=40, throttle_reasons=[], other_processes=[],
    )  # fmt: skip
    software = {"cuda_runtime": "13.0", "cublas": cublas, "cublaslt": cublas,
                "cutlass": "4.2.0.0"}  # fmt: skip
    return EnvironmentRecord(
        ftbench_version="0.1.0", git_commit="abc", git_dirty=False, command_line="test",
        utc_time="2026-11-24T00:00:00+00:00", host="h", python="3.11", platform="linux",
        driver_version="580.159.04", software=software, gpus=[gpu],
    )  # fmt: skip


def timed(median_ms, spread=0.01):
    return TimeSummary(median_ms, median_ms * (1 - spread), median_ms * (1 + spread), spread)


def entry(problem: GemmProblem, winner_ms=0.9, default_ms=1.0, algo=5) -> TunedEntry:
    default = Candidate("cublas", "default", {"algo": -1})
    winner = Candidate("cublas", f"algo {algo}", {"algo": algo})
    return TunedEntry(
        problem=problem, winner=winner, winner_time=timed(winner_ms), default=default,
        default_time=timed(default_ms), runner_up=default, runner_up_time=timed(default_ms),
        candidates_timed=3, candidates_failed=1,
    )  # fmt: skip


def outcome(problem: GemmProblem) -> ProblemOutcome:
    tuned = entry(problem)
    records = [
        {"problem_key": problem.key(), "candidate": c.to_dict(), "status": "ok"}
        for c in (tuned.default, tuned.winner)
    ]
    return ProblemOutcome(tuned, records)
