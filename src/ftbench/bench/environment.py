"""The environment record attached to every result: GPUs, driver, libraries, commit, command.

Nothing here needs a GPU: without one (or without CuPy) the record holds the software side and
says why no GPU was found.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import shlex
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from ftbench.bench import gpu_state
from ftbench.files import check_file_target, write_json_atomic

SCHEMA = 1
KIND = "environment"  # a record in a file of its own (`ftbench env --out`); result files embed it
NOT_INSTALLED = "not installed"


@dataclass(frozen=True)
class GpuInfo:
    """Static facts and the current state of one GPU."""

    index: int
    name: str
    uuid: str | None
    pci_bus_id: str | None
    compute_capability: str | None
    sm_count: int | None
    memory_total_mib: int | None
    l2_cache_bytes: int | None
    sm_clock_mhz: int | None
    sm_clock_max_mhz: int | None
    memory_clock_mhz: int | None
    memory_clock_max_mhz: int | None
    power_w: float | None
    power_limit_w: float | None
    temperature_c: int | None
    throttle_reasons: list[str]
    other_processes: list[dict[str, Any]]


@dataclass(frozen=True)
class EnvironmentRecord:
    """Where and with what a result was produced."""

    ftbench_version: str
    git_commit: str
    git_dirty: bool | None
    command_line: str
    utc_time: str
    host: str
    python: str
    platform: str
    driver_version: str | None
    software: dict[str, str]
    gpus: list[GpuInfo] = field(default_factory=list)
    no_gpu_reason: str | None = None
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def device_label(self, kind: str = "") -> str:
        """The machine for acceptance summaries: "KIND (GPU name)", or the GPU name alone."""
        gpu = self.gpus[0].name if self.gpus else "no GPU"
        return f"{kind} ({gpu})" if kind else gpu

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvironmentRecord:
        """A record as `to_dict` gives it, or as `write_environment` writes it (with its kind)."""
        fields = {key: value for key, value in data.items() if key != "kind"}
        fields["gpus"] = [GpuInfo(**gpu) for gpu in fields.get("gpus", [])]
        return cls(**fields)


def write_environment(
    path: str | os.PathLike[str], record: EnvironmentRecord, force: bool = False
) -> Path:
    """Write `record` as a file of its own, atomically. It replaces an environment record; any
    other file only with `force` (a record is cheap to take again, what it would replace may
    not be)."""
    check_file_target(path, "an environment record", force, kind=KIND)
    return write_json_atomic(path, {"kind": KIND, **record.to_dict()})


def _version_from_int(value: int, *, patch_digits: int = 2) -> str:
    """130100 -> '13.1.0' (cuBLAS, NCCL, CUDA style: MMmmpp)."""
    scale = 10**patch_digits
    major, rest = divmod(value, 100 * scale)
    minor, patch = divmod(rest, scale)
    return f"{major}.{minor}.{patch}"


def _cuda_version(value: int) -> str:
    """13000 -> '13.0' (CUDA runtime/driver style: 1000*major + 10*minor)."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _package_version(*names: str) -> str:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return NOT_INSTALLED


def _cupy():
    """The cupy module, or None if it is not installed or cannot load its CUDA libraries."""
    try:
        import cupy
    except Exception:
        return None
    return cupy


def _cuda_device_count(cupy) -> tuple[int, str | None]:
    try:
        return cupy.cuda.runtime.getDeviceCount(), None
    except Exception as exc:
        return 0, f"CUDA reports no usable GPU ({exc})"


def _cublaslt_version(cuda_major: int | None) -> str:
    try:
        from nvmath.bindings import cublasLt

        return _version_from_int(cublasLt.get_version())
    except Exception:
        pass
    if cuda_major is not None:
        try:
            library = ctypes.CDLL(f"libcublasLt.so.{cuda_major}")
            library.cublasLtGetVersion.restype = ctypes.c_size_t
            return _version_from_int(library.cublasLtGetVersion())
        except OSError:
            pass
    return _package_version("nvidia-cublas", "nvidia-cublas-cu12", "nvidia-cublas-cu13")


@functools.lru_cache(maxsize=1)
def software_versions() -> dict[str, str]:
    """Versions of the libraries ftbench uses; "not installed" for each one that is absent."""
    versions = {
        "python": platform.python_version(),
        "numpy": _package_version("numpy"),
        "cupy": NOT_INSTALLED,
        "cuda_runtime": NOT_INSTALLED,
        "cuda_driver": NOT_INSTALLED,
        "cublas": _package_version("nvidia-cublas", "nvidia-cublas-cu12", "nvidia-cublas-cu13"),
        "cublaslt": NOT_INSTALLED,
        "nccl": _package_version("nvidia-nccl-cu13", "nvidia-nccl-cu12"),
        "cutlass": _package_version("nvidia-cutlass"),
        "nvmath": _package_version("nvmath-python"),
        "nvml": _package_version("nvidia-ml-py"),
        "torch": _package_version("torch"),
        "transformers": _package_version("transformers"),
    }
    cupy = _cupy()
    cuda_major = None
    if cupy is not None:
        versions["cupy"] = cupy.__version__
        runtime = cupy.cuda.runtime
        try:
            runtime_version = runtime.runtimeGetVersion()
            cuda_major = runtime_version // 1000
            versions["cuda_runtime"] = _cuda_version(runtime_version)
            versions["cuda_driver"] = _cuda_version(runtime.driverGetVersion())
        except Exception as exc:
            versions["cuda_runtime"] = f"unavailable ({exc})"
        with contextlib.suppress(Exception):
            versions["nccl"] = _version_from_int(cupy.cuda.nccl.get_version())
        if _cuda_device_count(cupy)[0] > 0:
            try:
                from cupy_backends.cuda.libs import cublas

                handle = cupy.cuda.device.get_cublas_handle()
                versions["cublas"] = _version_from_int(cublas.getVersion(handle))
            except Exception:
                pass
    versions["cublaslt"] = _cublaslt_version(cuda_major)
    return versions


def _cuda_properties() -> tuple[dict[str, dict[str, Any]], str | None]:
    """CUDA device properties keyed by normalised PCI bus id, and why none were read."""
    cupy = _cupy()
    if cupy is None:
        return {}, "CuPy is not installed (install ftbench[cu12] or ftbench[cu13])"
    count, reason = _cuda_device_count(cupy)
    by_bus: dict[str, dict[str, Any]] = {}
    for index in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(index)
        bus_id = f"{props['pciDomainID']:04x}:{props['pciBusID']:02x}:{props['pciDeviceID']:02x}.0"
        by_bus[bus_id] = {"cuda_index": index, **props}
    return by_bus, reason


def _gpu_infos() -> tuple[list[GpuInfo], str | None, str | None]:
    """(GPUs, driver version, reason no GPU was found)."""
    try:
        pynvml = gpu_state.nvml()
    except RuntimeError as exc:
        return [], None, f"no GPU found: {exc}"
    text = gpu_state.as_text
    driver = text(pynvml.nvmlSystemGetDriverVersion())
    count = pynvml.nvmlDeviceGetCount()
    if count == 0:
        return [], driver, "no GPU found: NVML lists no devices"
    cuda_props, _ = _cuda_properties()
    gpus = []
    for nvml_index in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
        read = gpu_state.try_read
        bus_id = read(lambda h=handle: text(pynvml.nvmlDeviceGetPciInfo(h).busId))
        props = cuda_props.get(gpu_state.normalise_bus_id(bus_id), {}) if bus_id else {}
        capability = read(lambda h=handle: pynvml.nvmlDeviceGetCudaComputeCapability(h))
        memory = read(lambda h=handle: pynvml.nvmlDeviceGetMemoryInfo(h).total)
        limit_mw = read(lambda h=handle: pynvml.nvmlDeviceGetEnforcedPowerLimit(h))
        now = gpu_state.read_gpu(pynvml, handle)
        gpus.append(
            GpuInfo(
                index=props.get("cuda_index", nvml_index),
                name=text(pynvml.nvmlDeviceGetName(handle)),
                uuid=read(lambda h=handle: text(pynvml.nvmlDeviceGetUUID(h))),
                pci_bus_id=bus_id,
                compute_capability=None if capability is None else "{}.{}".format(*capability),
                sm_count=props.get("multiProcessorCount"),
                memory_total_mib=None if memory is None else memory // 2**20,
                l2_cache_bytes=props.get("l2CacheSize"),
                sm_clock_mhz=now.sm_clock_mhz,
                sm_clock_max_mhz=read(
                    lambda h=handle: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
                ),
                memory_clock_mhz=now.memory_clock_mhz,
                memory_clock_max_mhz=read(
                    lambda h=handle: pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM)
                ),
                power_w=now.power_w,
                power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
                temperature_c=now.temperature_c,
                throttle_reasons=list(now.throttle_reasons),
                other_processes=list(now.other_processes),
            )
        )
    return gpus, driver, None


def git_commit() -> tuple[str, bool | None]:
    """(commit, dirty) of the ftbench source tree; FTBENCH_GIT_COMMIT overrides (copied trees)."""
    override = os.environ.get("FTBENCH_GIT_COMMIT")
    if override:
        return override, None
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, bool(status.strip())


def capture_environment() -> EnvironmentRecord:
    """Read the environment now: software versions, GPUs with their state, commit, command."""
    from ftbench import __version__

    gpus, driver, no_gpu_reason = _gpu_infos()
    commit, dirty = git_commit()
    return EnvironmentRecord(
        ftbench_version=__version__,
        git_commit=commit,
        git_dirty=dirty,
        command_line=shlex.join(sys.argv),
        utc_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        host=socket.gethostname(),
        python=sys.version.split()[0],
        platform=platform.platform(),
        driver_version=driver,
        software=software_versions(),
        gpus=gpus,
        no_gpu_reason=no_gpu_reason,
    )
