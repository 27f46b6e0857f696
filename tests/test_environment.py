"""The environment record on a machine without a GPU."""

import json

import pytest

from ftbench.bench import environment
from ftbench.bench.environment import EnvironmentRecord, capture_environment


@pytest.fixture
def no_gpu(monkeypatch):
    """Pretend NVML cannot start, as on a machine with no NVIDIA driver."""

    def fail():
        raise RuntimeError("NVML could not start: driver not loaded")

    monkeypatch.setattr(environment.gpu_state, "nvml", fail)


def test_without_a_gpu_the_record_says_so_and_keeps_the_software(no_gpu):
    record = capture_environment()
    assert record.gpus == []
    assert record.no_gpu_reason.startswith("no GPU found")
    for name in ("cupy", "cuda_runtime", "cublas", "cublaslt", "nccl", "cutlass", "nvmath"):
        assert record.software[name]  # a version or "not installed", never missing
    assert record.software["python"]


def test_record_survives_a_json_round_trip(no_gpu):
    record = capture_environment()
    again = EnvironmentRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record


def test_record_carries_command_time_and_host(no_gpu):
    record = capture_environment()
    assert record.command_line
    assert record.utc_time.endswith("+00:00")
    assert record.host
    assert record.schema == 1


def test_commit_override_for_copied_trees(monkeypatch):
    monkeypatch.setenv("FTBENCH_GIT_COMMIT", "0123456789abcdef")
    assert environment.git_commit() == ("0123456789abcdef", None)


@pytest.mark.parametrize(
    ("value", "text"), [(130100, "13.1.0"), (22809, "2.28.9"), (120904, "12.9.4")]
)
def test_library_version_integers_are_decoded(value, text):
    assert environment._version_from_int(value) == text


def test_cuda_version_integers_are_decoded():
    assert environment._cuda_version(13000) == "13.0"
    assert environment._cuda_version(12080) == "12.8"


def test_device_label_names_the_machine_kind_and_gpu():
    from tune_fakes import fake_environment

    environment = fake_environment()
    assert environment.device_label("nvidia-h200") == "nvidia-h200 (NVIDIA H200)"
    assert environment.device_label() == "NVIDIA H200"
    environment.gpus.clear()
    assert environment.device_label("nvidia-h200") == "nvidia-h200 (no GPU)"
