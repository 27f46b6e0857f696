"""`ftbench run`'s host-side logic: the grid, floors, records, refusals, without a GPU."""

from dataclasses import replace

import numpy as np
import pytest

from ftbench.errors import InvalidInputError
from ftbench.modelbench.floors import decode_floor_ms, prefill_floor_ms
from ftbench.modelbench.grid import (
    RunConfig,
    RunPoint,
    max_batch,
    point_micro_batches,
    run_grid,
    throughput_batches,
)
from ftbench.modelbench.peers import hf_config
from ftbench.modelbench.records import Measured, failed_record, percentile_summary, point_record
from ftbench.modelbench.runs import check_run_record
from ftbench.profiles.catalog import load_builtin
from ftbench.runtime.memory import GIB, footprint

GPTJ = load_builtin("gptj-6b")


def test_grid_is_every_combination_batch_innermost():
    points = run_grid([1, 8], [128, 2048], [128])
    assert points == [
        RunPoint(1, 128, 128), RunPoint(8, 128, 128), RunPoint(1, 2048, 128),
        RunPoint(8, 2048, 128),
    ]  # fmt: skip
    with pytest.raises(InvalidInputError, match="positive"):
        run_grid([0], [128], [128])


def test_decode_floor_is_weights_plus_average_kv_cache_at_bandwidth():
    point = RunPoint(64, 128, 128)
    plan = footprint(GPTJ, 64, 256, "fp16", max_tokens=1)
    expected = (plan.weights + plan.kv_cache * 192 / 256) / 4e12 * 1e3
    assert decode_floor_ms(GPTJ, point, "fp16", 4e12) == pytest.approx(expected)
    # batch 1: essentially the 12.1 GB of weights
    assert decode_floor_ms(GPTJ, RunPoint(1, 128, 128), "fp16", 4e12) == pytest.approx(
        12.1e9 / 4e12 * 1e3, rel=0.01
    )


def test_an_8_bit_decode_floor_reads_the_8_bit_weights():
    point = RunPoint(1, 128, 128)
    plan = footprint(GPTJ, 1, 256, "fp16", max_tokens=1, weights="int8")
    expected = (plan.weights + plan.kv_cache * 192 / 256) / 4e12 * 1e3
    assert decode_floor_ms(GPTJ, point, "fp16", 4e12, weights="int8") == pytest.approx(expected)
    # GPT-J's layer linears are 5.2 of its 6.05 billion weights: the floor falls to about 0.53x
    ratio = expected / decode_floor_ms(GPTJ, point, "fp16", 4e12)
    assert 0.52 < ratio < 0.55


def test_prefill_floor_is_the_slower_of_flops_and_weight_reads():
    short, long = RunPoint(1, 128, 2), RunPoint(1, 2048, 2)
    # 1 x 128 tokens: about 2 x 6e9 x 128 FLOP = 1.5 TFLOP, 2 ms at 750 TFLOP/s, but the
    # 12.1 GB of weights take 3 ms at 4 TB/s: memory-bound.
    assert prefill_floor_ms(GPTJ, short, "fp16", 750e12, 4e12) == pytest.approx(3.02, rel=0.01)
    flops_ms = prefill_floor_ms(GPTJ, long, "fp16", 750e12, 1e18)
    assert flops_ms == pytest.approx(2 * 6.05e9 * 2048 / 750e12 * 1e3, rel=0.06)


def test_percentile_summary_has_the_run_schema_fields():
    samples = np.linspace(1.0, 2.0, 101)
    summary = percentile_summary(samples)
    assert summary["median_ms"] == pytest.approx(1.5)
    assert summary["p90_ms"] == pytest.approx(1.9)
    assert summary["p99_ms"] == pytest.approx(1.99)
    assert summary["mean_ms"] == pytest.approx(1.5)
    assert summary["ci_low_ms"] <= 1.5 <= summary["ci_high_ms"]


def test_point_record_derives_throughput_and_roofline():
    measured = Measured(
        ttft_ms=[10.0, 11.0, 12.0], end_to_end_ms=[500.0, 510.0, 520.0],
        step_ms=[3.9, 4.0, 4.1] * 10, peak_memory_bytes=13 * GIB,
        gemm={"hits": 3, "misses": 1, "missed_problems": ["x"], "backends": {}},
        conditions={}, flags=("power-capped",),
    )  # fmt: skip
    record = point_record(
        "ftbench", "gptj-6b", "fp16", 1, RunPoint(8, 128, 128), measured, 3.0, 5.5
    )
    check_run_record(record, "test")
    assert record["throughput_tok_s"] == pytest.approx(8 * 128 / 0.510)
    assert record["total_tok_s"] == pytest.approx(8 * 256 / 0.510)
    assert record["roofline_fraction"] == pytest.approx(3.0 / 4.0)
    assert record["prefill_roofline_fraction"] == pytest.approx(0.5)
    assert record["gemm_cache_misses"] == 1 and record["flags"] == ["power-capped"]
    assert record["compile_s"] is None


def test_a_peer_record_carries_its_compile_seconds():
    measured = Measured(
        ttft_ms=[10.0], end_to_end_ms=[500.0], step_ms=[3.9, 4.0], peak_memory_bytes=None,
        gemm=None, conditions={}, compile_s=51.5,
    )  # fmt: skip
    record = point_record("gpt-fast", "gptj-6b", "fp16", 1, RunPoint(1, 128, 3), measured, 3, 5)
    check_run_record(record, "test")
    assert record["compile_s"] == 51.5 and record["gemm_cache_misses"] is None
    RunConfig(GPTJ, "fp16", (RunPoint(1, 128, 128),), engines=("gpt-fast",))


def test_points_that_cannot_run_are_recorded_with_why():
    config = RunConfig(GPTJ, "fp16", (RunPoint(4096, 2048, 128),))
    record = failed_record("ftbench", config, config.points[0], InvalidInputError("x are free: y"))
    assert record["status"] == "does not fit" and "are free" in record["reason"]
    other = failed_record("hf-compile", config, config.points[0], RuntimeError("graph break\nmore"))
    assert other["status"] == "failed" and other["reason"] == "RuntimeError: graph break"


def test_run_config_refuses_unknown_engines_and_one_token_outputs():
    with pytest.raises(InvalidInputError, match="unknown engines"):
        RunConfig(GPTJ, "fp16", (RunPoint(1, 128, 128),), engines=("vllm",))
    with pytest.raises(InvalidInputError, match="at least 2"):
        RunConfig(GPTJ, "fp16", (RunPoint(1, 128, 1),))
    with pytest.raises(InvalidInputError, match="fp16 or bf16"):
        RunConfig(GPTJ, "fp32", (RunPoint(1, 128, 128),))


def test_8_bit_records_name_their_weights_and_floor_on_their_bytes():
    """A record of ftbench with --weights says so (a series of its own) and its floors count
    the 8-bit bytes; the prefill's FLOPs stay fp16's."""
    from ftbench.modelbench.ceilings import Ceilings
    from ftbench.modelbench.records import engine_record
    from ftbench.modelbench.runs import series_key

    point = RunPoint(1, 128, 128)
    measured = Measured(
        ttft_ms=[10.0], end_to_end_ms=[500.0], step_ms=[3.0, 3.1], peak_memory_bytes=None,
        gemm=None, conditions={},
    )  # fmt: skip
    ceilings = Ceilings(4e12, 750e12)
    plain = engine_record(RunConfig(GPTJ, "fp16", (point,)), "ftbench", point, measured, ceilings)
    config = RunConfig(GPTJ, "fp16", (point,), weights="int8")
    record = engine_record(config, "ftbench", point, measured, ceilings)
    assert "weights" not in plain and record["weights"] == "int8"
    assert series_key(record) == "gptj-6b fp16 w=int8 tp=1 pp=1 batch=1 in=128 out=128"
    assert record["floor_decode_step_ms"] == decode_floor_ms(GPTJ, point, "fp16", 4e12, 1, "int8")
    assert record["floor_prefill_ms"] < plain["floor_prefill_ms"]  # batch 1 x 128: weight reads
    with pytest.raises(InvalidInputError, match="--weights must be fp8 or int8, not 'fp16'"):
        RunConfig(GPTJ, "fp16", (point,), weights="fp16")
    w8a8 = RunConfig(GPTJ, "fp16", (point,), weights="fp8", activations="fp8")
    record = engine_record(w8a8, "ftbench", point, measured, ceilings)
    assert series_key(record) == "gptj-6b fp16 w=fp8 a=fp8 tp=1 pp=1 batch=1 in=128 out=128"
    with pytest.raises(InvalidInputError, match="fp8 activations need fp8 weights"):
        RunConfig(GPTJ, "fp16", (point,), weights="int8", activations="fp8")


def test_a_breakdown_is_taken_on_one_gpu_only():
    assert RunConfig(GPTJ, "fp16", (RunPoint(1, 128, 128),), breakdown=True).breakdown
    with pytest.raises(InvalidInputError, match="--breakdown takes steps apart on one GPU"):
        RunConfig(GPTJ, "fp16", (RunPoint(1, 128, 128),), tp=2, breakdown=True)


def test_a_measured_breakdown_goes_into_the_record_as_it_is():
    taken_apart = {"decode": {"length": 192, "whole_ms": 3.0, "floor_ms": 2.0, "operations": []}}
    measured = Measured(
        ttft_ms=[10.0], end_to_end_ms=[500.0], step_ms=[3.9, 4.0], peak_memory_bytes=None,
        gemm=None, conditions={}, breakdown=taken_apart,
    )  # fmt: skip
    record = point_record("ftbench", "gptj-6b", "fp16", 1, RunPoint(4, 8, 8), measured, 3, 5)
    check_run_record(record, "test")
    assert record["breakdown"] == taken_apart
    untaken = replace(measured, breakdown=None)
    assert "breakdown" not in point_record(
        "ftbench", "m", "fp16", 1, RunPoint(4, 8, 8), untaken, 3, 5
    )


def test_micro_batches_default_to_one_and_need_as_many_sequences():
    assert [point_micro_batches(None, 4, batch) for batch in (1, 3, 4, 64)] == [1, 1, 1, 1]
    assert point_micro_batches(None, 1, 8) == 1
    assert point_micro_batches(3, 2, 3) == 3
    with pytest.raises(InvalidInputError, match="batch 2 has fewer"):
        point_micro_batches(3, 2, 2)
    with pytest.raises(InvalidInputError, match="batch 1 has fewer"):
        RunConfig(GPTJ, "fp16", (RunPoint(4, 8, 8), RunPoint(1, 8, 8)), pp=2, micro_batches=2)
    measured = Measured(
        ttft_ms=[10.0], end_to_end_ms=[500.0], step_ms=[3.9, 4.0], peak_memory_bytes=None,
        gemm=None, conditions={}, micro_batches=2,
    )  # fmt: skip
    record = point_record("ftbench", "gptj-6b", "fp16", 1, RunPoint(4, 8, 8), measured, 3, 5, 2)
    check_run_record(record, "test")
    assert record["micro_batches"] == 2 and record["pp"] == 2


def test_max_batch_is_the_largest_that_fits():
    free = 80 * GIB
    batch = max_batch(GPTJ, 2048, 128, "fp16", free)
    fits = footprint(GPTJ, batch, 2176, "fp16", max_tokens=batch * 2048).total
    over = footprint(GPTJ, batch + 1, 2176, "fp16", max_tokens=(batch + 1) * 2048).total
    assert fits <= free < over
    assert throughput_batches(300) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert throughput_batches(1) == [1]


@pytest.mark.parametrize("name", ["gptj-6b", "llama2-7b", "gpt2-124m"])
def test_hf_peer_config_round_trips_through_the_importer(name):
    from ftbench.profiles.hf import spec_from_hf_config

    spec = load_builtin(name)
    again = spec_from_hf_config(hf_config(spec), name=spec.name)
    for field in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "ffn_hidden_size", "activation", "norm", "vocab_size", "rotary_dim",
                  "rope_theta", "parallel_attn_mlp", "tie_word_embeddings"):  # fmt: skip
        assert getattr(again, field) == getattr(spec, field), field


def _run_cli(monkeypatch, capsys, arguments):
    import sys

    from ftbench import cli

    monkeypatch.setattr(sys, "argv", ["ftbench", "run", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_run_without_a_gpu_is_a_one_line_error(monkeypatch, capsys):
    from ftbench.bench import environment

    def fail():
        raise RuntimeError("NVML could not start: driver not loaded")

    monkeypatch.setattr(environment.gpu_state, "nvml", fail)
    code, err = _run_cli(monkeypatch, capsys, ["--profile", "gptj-6b"])
    assert code == 2 and err.startswith("error: ftbench run needs a GPU")
    assert "\n" not in err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--profile", "gptj-6b", "--compare", "vllm"], "--compare: unknown"),
        (["--profile", "gpt2-124m", "--pp", "13"], "pp=13 pipeline stages but only 12 layers"),
        (["--profile", "gptj-6b", "--tp", "3"], "cannot be split evenly over tp=3"),
        (["--profile", "gptj-6b", "--pp", "0"], "Invalid value for '--pp'"),
        (["--profile", "gptj-6b", "--pp", "2", "--micro-batches", "0"], "must be at least 1"),
        (
            ["--profile", "gptj-6b", "--pp", "2", "--batch", "1,4", "--micro-batches", "2"],
            "--micro-batches 2 needs batches of at least 2 sequences; batch 1",
        ),
        (["--profile", "gptj-6b", "--tp", "2", "--compare", "hf"], "use it with --tp 1 --pp 1"),
        (["--profile", "gptj-6b", "--tp", "2", "--breakdown"], "--breakdown takes steps apart"),
        (["--profile", "gptj-6b", "--tp", "2", "--allreduce", "mpi"], "'mpi' is not one of"),
        (
            ["--profile", "gptj-6b", "--tp", "4", "--pp", "2"],
            "needs 8 GPUs, one per rank; this machine shows 1",
        ),
        (["--profile", "nope"], "nope"),
        ([], "exactly one of --profile"),
        (
            ["--profile", "gptj-6b", "--dtype", "fp4"],
            "'fp4' is not one of 'fp16', 'bf16', 'fp8'",
        ),
        (
            ["--profile", "gptj-6b", "--dtype", "fp8", "--weights", "int8"],
            "--dtype fp8 runs fp8 weights; --weights int8 is another format",
        ),
        (
            ["--profile", "gptj-6b", "--dtype", "fp8", "--compare", "gpt-fast"],
            "--weights fp8 quantises ftbench's weights; peers ['gpt-fast'] would run",
        ),
        (["--profile", "gptj-6b", "--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--profile", "gptj-6b", "--output-len", "1"], "output lengths must be at least 2"),
        (["--profile", "gptj-6b", "--max-throughput", "--output-len", "1"], "at least 2"),
        (["--profile", "gptj-6b", "--input-len", "0"], "--input-len takes comma-separated"),
        (["--profile", "gptj-6b", "--checkpoint", "/no/such/dir"], "--checkpoint /no/such/dir: no"),
        (["--profile", "gptj-6b", "--tuned", "/no/such.json"], "--tuned /no/such.json: no such"),
        (["--profile", "bert-base"], "bert-base: the runtime runs decoder models only"),
        (["--profile", "gptj-6b", "--weights", "int4"], "'int4' is not one of 'fp8', 'int8'"),
        (
            ["--profile", "gptj-6b", "--weights", "int8", "--compare", "hf"],
            "--weights int8 quantises ftbench's weights; peers ['hf-eager'] would run",
        ),
        (
            ["--profile", "gpt2-124m", "--input-len", "128,1000", "--output-len", "32"],
            "input length 1000 + output length 32: gpt2-124m has 1024 learned positions",
        ),
        (
            ["--config", "tests/data/hf_configs/mistral-7b-v0.1.json", "--input-len", "4090"],
            "sliding window of 4096 tokens",
        ),
    ],
)
def test_run_refuses_bad_options_before_touching_a_gpu(monkeypatch, capsys, arguments, message):
    from ftbench.runtime import launch

    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    monkeypatch.setattr(launch, "spawn", lambda *args: pytest.fail("spawned ranks"))
    for name in ("FTBENCH_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    code, err = _run_cli(monkeypatch, capsys, arguments)
    assert code == 2 and message in err


def test_run_with_two_ranks_spawns_two_processes_of_the_same_command(monkeypatch, capsys):
    import sys

    from ftbench import cli
    from ftbench.runtime import launch

    spawned = []
    monkeypatch.setattr(launch, "visible_gpus", lambda: 2)
    monkeypatch.setattr(launch, "spawn", lambda size, command: spawned.append((size, command)))
    monkeypatch.delenv("FTBENCH_RANK", raising=False)
    arguments = ["run", "--profile", "gptj-6b", "--pp", "2", "--batch", "2", "--micro-batches", "2"]
    monkeypatch.setattr(sys, "argv", ["ftbench", *arguments])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    assert spawned == [(2, [sys.executable, "-m", "ftbench", *arguments])]


def test_a_launcher_with_another_world_size_is_refused(monkeypatch, capsys):
    env = {"FTBENCH_RANK": "0", "FTBENCH_WORLD_SIZE": "3", "FTBENCH_LOCAL_RANK": "0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, err = _run_cli(monkeypatch, capsys, ["--profile", "gptj-6b", "--tp", "2"])
    assert code == 2 and "needs 2 ranks; the ftbench launcher started 3" in err
