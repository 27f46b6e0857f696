"""The `cutlass` backend without a GPU: the kernel set as data, the cache, code generation, nvcc.

Tests that emit or compile code need nvidia-cutlass and nvcc; CI installs only `.[test]`, so they
skip there and run where the CUDA stack is installed (`pip install nvidia-cutlass`).
"""

import ctypes
import importlib.util
import json
import os
from dataclasses import replace

import pytest

from ftbench.errors import InvalidInputError, NoGpuError
from ftbench.gemm.backends import cutlass as backend
from ftbench.gemm.backends.base import CandidateUnsupported
from ftbench.gemm.candidate import Candidate
from ftbench.gemm.problem import GemmProblem
from ftbench.kernels import cutlass_build
from ftbench.kernels.cutlass_build import KernelSpec

ALL_SPECS = cutlass_build.SM90_KERNELS + cutlass_build.SM80_KERNELS
SMALL_SM90 = KernelSpec(90, (64, 16, 128), "pingpong", "persistent", swap_operands=True)

needs_cutlass = pytest.mark.skipif(
    importlib.util.find_spec("cutlass_library") is None,
    reason="nvidia-cutlass is not installed (pip install nvidia-cutlass): code generation untested",
)
needs_nvcc = pytest.mark.skipif(
    cutlass_build.find_nvcc() is None, reason="nvcc not found: CUTLASS builds untested"
)


def test_kernel_names_are_unique():
    names = [spec.name for spec in ALL_SPECS]
    assert len(names) == len(set(names))


def test_kernel_names_spell_out_their_configuration():
    assert SMALL_SM90.name == "sm90_swap_64x16x128_c1x1_pingpong"
    stream_k = KernelSpec(90, (128, 256, 64), "cooperative", "stream_k", cluster=(2, 1, 1))
    assert stream_k.name == "sm90_128x256x64_c2x1_cooperative_streamk"
    ampere = KernelSpec(
        80, (128, 128, 32), "multistage", "data_parallel", stages=5, warps=(2, 2, 1)
    )
    assert ampere.name == "sm80_128x128x32_s5_w2x2"


def test_curated_sets_cover_small_and_large_m():
    sm90 = cutlass_build.kernels_for(90, ("fp16",))
    assert 12 <= len(sm90) <= 24
    assert {spec.schedule for spec in sm90} == {"pingpong", "cooperative"}
    assert any(spec.tile_scheduler == "stream_k" for spec in sm90)
    assert any(spec.swap_operands and spec.tile[1] == 16 for spec in sm90)
    assert any(spec.cluster != (1, 1, 1) for spec in sm90)
    assert all(spec.arch == 80 for spec in cutlass_build.kernels_for(80))


@pytest.mark.parametrize("arch", [90, 80])
def test_every_kernel_exists_in_every_element(arch):
    by_element = {e: cutlass_build.kernels_for(arch, (e,)) for e in cutlass_build.ELEMENTS}
    assert all(spec.element == e for e, specs in by_element.items() for spec in specs)
    fp16 = [replace(spec, element="bf16") for spec in by_element["fp16"]]
    assert fp16 == list(by_element["bf16"])
    assert set(cutlass_build.kernels_for(arch)) == {s for v in by_element.values() for s in v}


def test_bf16_kernels_are_named_after_their_element():
    bf16 = replace(SMALL_SM90, element="bf16")
    assert bf16.name == "sm90_bf16_swap_64x16x128_c1x1_pingpong"
    assert cutlass_build.spec_by_name(bf16.name) == bf16
    with pytest.raises(InvalidInputError, match="CUTLASS kernels take elements"):
        replace(SMALL_SM90, element="fp8")


def test_a_record_from_before_elements_is_an_fp16_kernel():
    config = SMALL_SM90.config()
    del config["element"]
    assert KernelSpec.from_config(config) == SMALL_SM90


def test_cooperative_tiles_are_whole_warpgroup_pairs():
    # The cooperative schedule splits a tile's M between two 64-row consumer warpgroups.
    for spec in cutlass_build.SM90_KERNELS:
        assert spec.tile[0] % (128 if spec.schedule == "cooperative" else 64) == 0, spec.name


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_config_round_trips_through_a_stored_candidate(spec):
    candidate = Candidate("cutlass", spec.name, spec.config())
    stored = json.loads(json.dumps(candidate.to_dict()))
    assert KernelSpec.from_config(Candidate.from_dict(stored).config) == spec
    assert stored["config"]["kernel"] == spec.name


def test_record_whose_name_disagrees_with_its_fields_is_rejected():
    config = SMALL_SM90.config() | {"tile": [64, 32, 128]}
    with pytest.raises(InvalidInputError, match="describes 'sm90_swap_64x32x128"):
        KernelSpec.from_config(config)


def test_schedules_must_exist_on_the_arch():
    with pytest.raises(InvalidInputError, match="sm80 CUTLASS kernels take schedules"):
        KernelSpec(80, (128, 128, 64), "pingpong", "persistent")
    with pytest.raises(InvalidInputError, match="SM80 kernels cannot swap operands"):
        KernelSpec(80, (64, 64, 64), "multistage", "data_parallel", swap_operands=True)


def test_unknown_kernel_name_is_an_error():
    with pytest.raises(InvalidInputError, match="unknown CUTLASS kernel"):
        cutlass_build.spec_by_name("sm90_nonexistent")


@pytest.mark.parametrize(
    ("capability", "arch"), [(90, 90), (80, 80), (86, 80), (89, 80), (75, None)]
)
def test_gpu_capability_picks_the_kernel_set(capability, arch):
    assert cutlass_build.build_arch(capability) == arch


@pytest.mark.parametrize(
    ("problem", "supported"),
    [
        (GemmProblem(m=1, n=4096, k=4096), True),
        (GemmProblem(m=1, n=4096, k=4096, transb=False), False),
        (GemmProblem(m=16, n=64, k=64, batch_count=8), False),
        (GemmProblem(m=1, n=64, k=64, a_dtype="bf16", b_dtype="bf16", c_dtype="bf16"), True),
        (GemmProblem(m=1, n=64, k=64, a_dtype="bf16", b_dtype="bf16", c_dtype="fp16"), False),
        (GemmProblem(m=1, n=64, k=64, a_dtype="fp32", b_dtype="fp32", c_dtype="fp32"), False),
    ],
)
def test_only_fp16_or_bf16_nt_single_batch_problems_are_covered(problem, supported):
    assert backend.supports(problem) is supported


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FTBENCH_CACHE_DIR", str(tmp_path / "ftb"))
    assert cutlass_build.cache_root() == tmp_path / "ftb" / "cutlass"
    monkeypatch.delenv("FTBENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cutlass_build.cache_root() == tmp_path / "xdg" / "ftbench" / "cutlass"


def _make_folders(root, *names):
    for age_s, name in enumerate(reversed(names)):
        (root / name).mkdir()
        os.utime(root / name, (1e9 - age_s, 1e9 - age_s))


def test_without_nvcc_the_newest_build_folder_is_used(monkeypatch, tmp_path):
    monkeypatch.setattr(cutlass_build, "find_nvcc", lambda: None)
    assert cutlass_build.kernel_dir(90, tmp_path) is None
    _make_folders(tmp_path, "sm90-aaaa", "sm90-bbbb", "sm80-cccc")
    assert cutlass_build.kernel_dir(90, tmp_path) == tmp_path / "sm90-bbbb"


def test_this_nvccs_folder_wins_when_it_exists(monkeypatch, tmp_path):
    monkeypatch.setattr(cutlass_build, "find_nvcc", lambda: "nvcc")
    monkeypatch.setattr(cutlass_build, "toolchain_key", lambda arch, nvcc: "mine")
    _make_folders(tmp_path, "sm90-aaaa", "sm90-bbbb")
    assert cutlass_build.kernel_dir(90, tmp_path) == tmp_path / "sm90-bbbb"
    _make_folders(tmp_path, "sm90-mine")
    os.utime(tmp_path / "sm90-mine", (1, 1))
    assert cutlass_build.kernel_dir(90, tmp_path) == tmp_path / "sm90-mine"


def test_a_library_counts_as_built_only_with_its_record(monkeypatch, tmp_path):
    monkeypatch.setattr(cutlass_build, "find_nvcc", lambda: None)
    folder = tmp_path / "sm90-aaaa"
    folder.mkdir()
    (folder / f"{SMALL_SM90.name}.so").write_bytes(b"")
    assert cutlass_build.built_library(SMALL_SM90, tmp_path) is None
    (folder / f"{SMALL_SM90.name}.json").write_text("{}")
    assert cutlass_build.built_library(SMALL_SM90, tmp_path) == folder / f"{SMALL_SM90.name}.so"


def _no_gpu():
    raise NoGpuError("no usable CUDA GPU through CuPy: none here")


def test_backend_without_a_gpu_says_so(monkeypatch):
    monkeypatch.setattr(backend, "gpu_build_arch", _no_gpu)
    assert "no usable CUDA GPU" in backend.BACKEND.unavailable_reason()


def test_backend_on_an_unsupported_gpu_says_so(monkeypatch):
    monkeypatch.setattr(backend, "gpu_build_arch", lambda: None)
    assert "no CUTLASS kernel set" in backend.BACKEND.unavailable_reason()


def test_backend_with_nothing_built_and_no_nvidia_cutlass_says_so(monkeypatch):
    monkeypatch.setattr(backend, "gpu_build_arch", lambda: 90)
    monkeypatch.setattr(cutlass_build, "built_library", lambda spec: None)
    monkeypatch.setattr(cutlass_build, "cutlass_version", lambda: None)
    reason = backend.BACKEND.unavailable_reason()
    assert "no CUTLASS kernels are built for sm90" in reason
    assert "nvidia-cutlass is not installed" in reason


def test_backend_with_built_kernels_needs_neither_nvcc_nor_nvidia_cutlass(monkeypatch, tmp_path):
    monkeypatch.setattr(backend, "gpu_build_arch", lambda: 90)
    monkeypatch.setattr(cutlass_build, "built_library", lambda spec: tmp_path / "x.so")
    monkeypatch.setattr(cutlass_build, "cutlass_version", lambda: None)
    monkeypatch.setattr(cutlass_build, "find_nvcc", lambda: None)
    assert backend.BACKEND.unavailable_reason() is None


def test_candidates_are_the_built_kernels_of_the_gpu_arch(monkeypatch, tmp_path):
    built = {spec.name for spec in cutlass_build.SM90_KERNELS[:3]}
    monkeypatch.setattr(backend, "gpu_build_arch", lambda: 90)
    monkeypatch.setattr(
        cutlass_build, "built_library", lambda spec: tmp_path if spec.name in built else None
    )
    candidates = backend.BACKEND.candidates(GemmProblem(m=1, n=4096, k=4096))
    assert [candidate.name for candidate in candidates] == [
        spec.name for spec in cutlass_build.SM90_KERNELS[:3]
    ]
    assert all(candidate.backend == "cutlass" for candidate in candidates)
    assert backend.BACKEND.candidates(GemmProblem(m=1, n=64, k=64, batch_count=2)) == []
    assert backend.BACKEND.default(GemmProblem(m=1, n=64, k=64)) is None


def test_preparing_an_unbuilt_kernel_is_unsupported_not_a_build(monkeypatch):
    monkeypatch.setattr(cutlass_build, "built_library", lambda spec: None)
    candidate = Candidate("cutlass", SMALL_SM90.name, SMALL_SM90.config())
    with pytest.raises(CandidateUnsupported, match="not built"):
        backend.BACKEND.prepare(candidate, GemmProblem(m=1, n=4096, k=4096))


@needs_cutlass
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda spec: spec.name)
def test_emitted_source_wraps_the_cutlass_kernel_in_the_entry_point(spec):
    source = cutlass_build.emit_source(spec)
    operation = cutlass_build.cutlass_operation(spec)
    assert f"GemmUniversalAdapter<{operation.procedural_name()}>" in source
    for entry in ("int ftb_run(", "size_t ftb_workspace(", "int ftb_can_implement("):
        assert entry in source
    if spec.arch == 90:
        assert f"kSwapOperands = {'true' if spec.swap_operands else 'false'}" in source
    assert "${" not in source


@needs_cutlass
def test_emitted_layouts_are_k_major_operands_of_a_linear_layer():
    # C = A[m, k] @ B[n, k]^T: A RowMajor and B ColumnMajor in CUTLASS's [M, K] x [K, N] terms,
    # the output RowMajor, or ColumnMajor when the kernel computes the transpose.
    direct = cutlass_build.cutlass_operation(
        cutlass_build.spec_by_name("sm90_128x128x64_c1x1_cooperative")
    )
    swapped = cutlass_build.cutlass_operation(SMALL_SM90)
    assert direct.layout_name_3x() == "tnt"
    assert swapped.layout_name_3x() == "tnn"


@needs_cutlass
@pytest.mark.parametrize("spec", cutlass_build.SM90_KERNELS, ids=lambda spec: spec.name)
def test_sm90_kernels_are_configurations_cutlass_itself_generates(spec):
    from cutlass_library import sm90_utils

    operation = cutlass_build.cutlass_operation(spec)
    data_types = {
        "a_type": operation.A.element, "b_type": operation.B.element,
        "c_type": operation.C.element, "d_type": operation.D.element,
        "acc_type": operation.accumulator_type(), "epi_type": operation.element_epilogue,
    }  # fmt: skip
    layout = [[operation.A.layout, 8], [operation.B.layout, 8], [operation.D.layout, 8]]
    schedules, stream_k = sm90_utils.get_valid_schedules(
        operation.tile_description, "13.0", True, data_types, layout, instantiation_level=9999
    )
    valid = stream_k if spec.tile_scheduler == "stream_k" else schedules
    assert [operation.kernel_schedule, operation.epilogue_schedule] in valid


@needs_cutlass
@needs_nvcc
def test_failing_compile_is_logged_and_skipped(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(cutlass_build, "NVCC_FLAGS", ("--no-such-nvcc-flag",))
    results = cutlass_build.build_kernels([SMALL_SM90.name], 90, jobs=1, root=tmp_path)
    result = results[SMALL_SM90.name]
    assert result.library is None
    assert "no-such-nvcc-flag" in result.error
    (log,) = tmp_path.glob(f"sm90-*/{SMALL_SM90.name}.log")
    assert "no-such-nvcc-flag" in log.read_text()
    assert not list(tmp_path.glob("sm90-*/*.so")) and not list(tmp_path.glob("sm90-*/*.json"))
    assert f"CUTLASS {SMALL_SM90.name} did not build" in caplog.text


@pytest.mark.slow
@needs_cutlass
@needs_nvcc
def test_small_sm90_kernel_compiles_and_exports_the_entry_point(tmp_path):
    results = cutlass_build.build_kernels([SMALL_SM90.name], 90, jobs=1, root=tmp_path)
    result = results[SMALL_SM90.name]
    assert result.error is None and result.library is not None and not result.cached
    assert result.library == cutlass_build.built_library(SMALL_SM90, tmp_path)
    record = json.loads(result.library.with_suffix(".json").read_text())
    assert record["config"] == SMALL_SM90.config()
    assert "-gencode=arch=compute_90a,code=sm_90a" in record["command"]
    library = ctypes.CDLL(str(result.library))
    for symbol in ("ftb_run", "ftb_workspace", "ftb_can_implement", "ftb_status_string"):
        assert hasattr(library, symbol)
    again = cutlass_build.build_kernels([SMALL_SM90.name], 90, jobs=1, root=tmp_path)
    assert again[SMALL_SM90.name].cached
