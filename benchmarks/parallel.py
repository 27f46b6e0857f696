"""Tensor and pipeline parallelism measured on two GPUs of one host.

Steps, each writing DIR/<step>.json; a step whose file exists is not run again, so a run that
was cut short (or spread over several device calls, DIR carried along) resumes where it stopped:

- `check-spawn`, `check-mpirun`: `python -m ftbench.validation.parallel_check` for GPT-J and
  LLaMA with grouped-query attention (small random models) at tp=2 and at pp=2, as 2 ranks
  started by the local spawner and by `mpirun -n 2`: every last-stage rank's logit digest, and
  the relative logit error against TP=1 on the same GPU. The two launchers must give the same
  digests.
- `tune`: `ftbench tune --backends cublas,ftbench` for each model's batch-1 decode and 128-token
  context GEMMs at tp 1 and 2 (one cache per model; the two models on the two GPUs at once).
- `runs-tp1` (both models at once, one per GPU), then per model `runs-<model>-tp2`,
  `-tp2-one-shot` (`--allreduce one-shot`), `-pp2` and `-pp2-mb2` (batch 64 in 2 micro-batches):
  `ftbench run` at 128/128, batches 1 and 64, with the model's cache; each file names the
  run's results file, which holds the decode-step times, throughput and, for 2 ranks, each
  rank's communication time per step and rank 0's calls by kind (`comm_calls`).
- `allreduce`: benchmarks/allreduce.py as 2 ranks: NCCL and the one-shot IPC kernel, 8 KiB to
  1 MiB.
- `kill-spawn`, `kill-mpirun`, `kill-alone`: `ftbench run --tp 2 --timeout 20` on a small model
  with long requests; once rank 0 has finished a point, rank 1 gets SIGKILL. Recorded: how long
  until every process had exited, exit codes and what they said. `alone`: the two ranks
  started by hand (a simulated Slurm step with a shared rendezvous directory), no launcher to
  stop rank 0, which must find out by itself (`launch.PeerWatch`, or at the latest its
  collective timeout).

`machine` records the device and commit first; every step file (kind "parallel-step") records
its commit too. Once every step has its file, `<out-dir>/acceptance/parallel.json` is written
from the files.

    python benchmarks/parallel.py --dir benchmarks/results/parallel-<time> [--out-dir DIR]
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _harness import parser, write_summary
from ftbench.bench.environment import capture_environment, git_commit
from ftbench.files import read_json, write_json_atomic
from ftbench.reports.kinds import PARALLEL_STEP

MODELS = ("gptj-6b", "llama2-13b")
CHECK_CASES = ("gptj", "llama-gqa")
CHECK_SIZES = ((2, 1), (1, 2))  # (tp, pp)
PARALLEL_CHECK = "ftbench.validation.parallel_check"  # the rank program of the checks
BATCHES = "1,64"
LENGTH = "128"
KILL_TIMEOUT_S = 20
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A small LLaMA for the kill test: quick to build, steps short enough for many of them.
KILL_CONFIG = {
    "model_type": "llama", "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
    "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 4,
    "max_position_embeddings": 4096,
}  # fmt: skip
LAUNCHER_PREFIXES = (
    "FTBENCH_RANK", "FTBENCH_WORLD", "FTBENCH_LOCAL", "FTBENCH_RENDEZVOUS", "FTBENCH_RUN_ID",
    "OMPI_", "PMI_", "PMIX_", "MPI_LOCALRANKID", "SLURM_",
)  # fmt: skip
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_plm_rsh_agent": "false"}  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any launcher's rank variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    return {**env, **extra}


def ranks_command(launcher: str, command: list[str]) -> tuple[list[str], dict[str, str]]:
    """`command` as 2 ranks under `launcher` (spawn or mpirun), and the environment."""
    if launcher == "spawn":
        return [sys.executable, "-m", "ftbench.runtime.launch", "spawn", "2", "--", *command], (
            clean_env()
        )
    return ["mpirun", "-n", "2", "--bind-to", "none", *command], clean_env(**MPI_ENV)


def run(command: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run `command`, echo its output, fail loudly on a non-zero exit; its stdout."""
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    sys.stdout.write(done.stdout[-4000:])
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        raise SystemExit(f"{command[:6]}... exited with {done.returncode}")
    return done.stdout


def check(launcher: str) -> dict[str, Any]:
    results = []
    for case in CHECK_CASES:
        for tp, pp in CHECK_SIZES:
            program = [sys.executable, "-m", PARALLEL_CHECK, case, str(tp), str(pp)]
            command, env = ranks_command(launcher, program)
            lines = run(command, env).splitlines()
            results += [json.loads(line) for line in lines if line.startswith("{")]
    return {"launcher": launcher, "results": results}


def tune(directory: Path) -> dict[str, Any]:
    """Both models' caches at once, one GPU each; each model's tp 1 then tp 2 shapes."""
    started = time.monotonic()
    lanes = []
    for gpu, model in enumerate(MODELS):
        commands = [
            [sys.executable, "-m", "ftbench", "tune", "--profile", model, "--tp", str(tp),
             "--batch", "1", "--input-len", LENGTH, "--output-len", LENGTH,
             "--backends", "cublas,ftbench", "--out", str(directory / f"tuned-{model}.json")]
            for tp in (1, 2)
        ]  # fmt: skip
        script = " && ".join(" ".join(command) for command in commands)
        env = clean_env(CUDA_VISIBLE_DEVICES=str(gpu))
        lanes.append(subprocess.Popen(["bash", "-c", script], env=env))
    codes = [lane.wait() for lane in lanes]
    if any(codes):
        raise SystemExit(f"ftbench tune exited with {codes}")
    return {"caches": {m: f"tuned-{m}.json" for m in MODELS}, "seconds": time.monotonic() - started}


# The runs per model: name -> (tp, pp, all-reduce method, micro-batches, batches). PP=2 in two
# micro-batches overlaps the stages, which only a batch of several sequences can do.
CONFIGS = {
    "tp1": (1, 1, "nccl", 1, (1, 64)),
    "tp2": (2, 1, "nccl", 1, (1, 64)),
    "tp2_one_shot": (2, 1, "one-shot", 1, (1, 64)),
    "pp2": (1, 2, "nccl", 1, (1, 64)),
    "pp2_mb2": (1, 2, "nccl", 2, (64,)),
}


def run_name(model: str, config: str) -> str:
    tp, pp, allreduce, micro, _ = CONFIGS[config]
    suffix = ("" if allreduce == "nccl" else f"-{allreduce}") + (f"-mb{micro}" if micro > 1 else "")
    return f"run-{model}-tp{tp}-pp{pp}{suffix}.json"


def run_command(directory: Path, model: str, config: str) -> list[str]:
    tp, pp, allreduce, micro, batches = CONFIGS[config]
    return [
        sys.executable, "-m", "ftbench", "run", "--profile", model, "--tp", str(tp), "--pp",
        str(pp), "--micro-batches", str(micro), "--batch", ",".join(map(str, batches)),
        "--input-len", LENGTH, "--output-len", LENGTH, "--repeats", "3",
        "--tuned", str(directory / f"tuned-{model}.json"), "--allreduce", allreduce,
        "--out", str(directory / run_name(model, config)),
    ]  # fmt: skip


def runs_tp1(directory: Path) -> dict[str, Any]:
    """Both models' TP=1 runs at once, one GPU each (each run alone on its GPU)."""
    lanes = [
        subprocess.Popen(
            run_command(directory, model, "tp1"), env=clean_env(CUDA_VISIBLE_DEVICES=str(gpu))
        )  # fmt: skip
        for gpu, model in enumerate(MODELS)
    ]
    codes = [lane.wait() for lane in lanes]
    if any(codes):
        raise SystemExit(f"ftbench run --tp 1 exited with {codes}")
    return {model: run_name(model, "tp1") for model in MODELS}


def runs_two_ranks(directory: Path, model: str, config: str) -> dict[str, Any]:
    run(run_command(directory, model, config))
    return {model: run_name(model, config)}


def allreduce(directory: Path) -> dict[str, Any]:
    bench = [sys.executable, "benchmarks/allreduce.py", "--out-dir", str(directory)]
    command, env = ranks_command("spawn", bench)
    before = set(directory.glob("allreduce-*.json"))
    run(command, env)
    (made,) = set(directory.glob("allreduce-*.json")) - before
    return {"results": made.name}


def _rank_pids(root: int, variable: str) -> dict[int, int]:
    """{rank: pid} of the processes under `root` whose environment sets `variable`."""
    import psutil

    found = {}
    for process in psutil.Process(root).children(recursive=True):
        try:
            value = process.environ().get(variable)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if value is not None and "ftbench" in " ".join(process.cmdline()):
            found[int(value)] = process.pid
    return found


def kill(directory: Path, launcher: str) -> dict[str, Any]:
    """Start `ftbench run --tp 2` under `launcher`, SIGKILL rank 1 once rank 0 has measured a
    point, and record how the run ended (see the module docstring)."""
    config = directory / "kill-config.json"
    config.write_text(json.dumps(KILL_CONFIG))
    command = [
        sys.executable, "-m", "ftbench", "run", "--config", str(config), "--tp", "2",
        "--batch", "1,2,4,8,16,32", "--input-len", "32", "--output-len", "2000",
        "--repeats", "40", "--timeout", str(KILL_TIMEOUT_S),
        "--out", str(Path(tempfile.mkdtemp(prefix="ftbench-kill-")) / "run.json"),
    ]  # fmt: skip
    if launcher == "alone":
        rendezvous = tempfile.mkdtemp(prefix="ftbench-rendezvous-")
        job = str(os.getpid())
        processes = [
            subprocess.Popen(
                command,
                env=clean_env(
                    SLURM_PROCID=str(rank),
                    SLURM_NTASKS="2",
                    SLURM_LOCALID=str(rank),
                    SLURM_STEP_ID="0",
                    SLURM_JOB_ID=job,
                    FTBENCH_RENDEZVOUS=rendezvous,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for rank in range(2)
        ]
        victim, watched = processes[1], processes[:1]
        output = [_Reader(process) for process in processes]
        victim_pid = victim.pid
    else:
        # `ftbench run --tp 2` spawns its ranks itself; or mpirun starts them.
        env = clean_env()
        if launcher == "mpirun":
            command, env = ranks_command(launcher, command)
        top = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
        processes, watched, output = [top], [top], [_Reader(top)]
        victim_pid = None
    variable = {"spawn": "FTBENCH_RANK", "mpirun": "OMPI_COMM_WORLD_RANK"}.get(launcher)
    deadline = time.monotonic() + 300
    while not any("measured 1 point" in reader.text() for reader in output):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for process in processes:
                process.kill()
            raise SystemExit(f"kill-{launcher}: no point measured; {output[0].text()[-3000:]}")
        time.sleep(0.1)
    if victim_pid is None:
        victim_pid = _rank_pids(processes[0].pid, variable)[1]
    os.kill(victim_pid, signal.SIGKILL)
    killed = time.monotonic()
    ends = {}
    for process in processes:
        try:
            process.wait(timeout=KILL_TIMEOUT_S + 120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        ends[process.pid] = time.monotonic() - killed
    for reader in output:
        reader.join()
    return {
        "launcher": launcher,
        "collective_timeout_s": KILL_TIMEOUT_S,
        "killed_pid": victim_pid,
        "seconds_until_all_exited": max(ends[p.pid] for p in watched),
        "exit_codes": [p.returncode for p in processes],
        "output_tails": [reader.text()[-2500:] for reader in output],
    }


class _Reader:
    """Collects a process's stdout and stderr in the background (echoing them)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._parts: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(stream,), daemon=True)
            for stream in (process.stdout, process.stderr)
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._parts.append(line)
            sys.stdout.write(line)

    def text(self) -> str:
        """What it said so far, terminal escape codes (colour, which mpirun's pseudo-terminal
        brings out) removed."""
        return ANSI_ESCAPE.sub("", "".join(self._parts))

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=10)


def step(directory: Path, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """fn()'s result, saved as DIR/<name>.json; an earlier run's file if there is one."""
    path = directory / f"{name}.json"
    if path.exists():
        print(f"{name}: done before ({path})", flush=True)
        return read_json(path)
    started = time.monotonic()
    result = {"kind": PARALLEL_STEP, "step": name, **fn()}
    result |= {"step_seconds": time.monotonic() - started, "commit": git_commit()[0]}
    write_json_atomic(path, result)
    print(f"{name}: {time.monotonic() - started:.0f} s", flush=True)
    return result


def _records(directory: Path, name: str) -> list[dict[str, Any]]:
    return read_json(directory / name)["records"]


def _at_batch(records: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    (record,) = [r for r in records if r["batch"] == batch and r["engine"] == "ftbench"]
    if record["status"] != "ok":
        raise SystemExit(f"batch {batch}: {record.get('reason')}")
    return record


def machine(device_kind: str) -> dict[str, Any]:
    environment = capture_environment()
    return {
        "device": environment.device_label(device_kind),
        "commit": environment.git_commit,
        "gpus": [gpu.name for gpu in environment.gpus],
        "utc_time": environment.utc_time,
    }


def summarize(directory: Path, done: dict[str, dict[str, Any]]) -> dict:
    environment = done["machine"]
    checks = {launcher: done[f"check-{launcher}"]["results"] for launcher in ("spawn", "mpirun")}
    worst = {
        (tp, pp): max(r["max_rel_err"] for r in checks["spawn"] + checks["mpirun"]
                      if (r["tp"], r["pp"]) == (tp, pp) and "max_rel_err" in r)
        for tp, pp in CHECK_SIZES
    }  # fmt: skip

    def digests(launcher: str) -> dict[str, str]:
        return {f"{r['model']} tp{r['tp']} pp{r['pp']} rank{r['rank']}": r["logits_sha256"]
                for r in checks[launcher]}  # fmt: skip

    models: dict[str, Any] = {}
    for model in MODELS:
        entry: dict[str, Any] = {}
        for name, (*_, batches) in CONFIGS.items():
            records = _records(directory, run_name(model, name))
            for batch in batches:
                record = _at_batch(records, batch)
                point = {
                    "decode_step_ms": record["decode_step_ms"]["median_ms"],
                    "ttft_ms": record["ttft_ms"]["median_ms"],
                    "throughput_tok_s": record["throughput_tok_s"],
                    "roofline_fraction": record["roofline_fraction"],
                    "gemm_cache_misses": record["gemm_cache_misses"],
                }
                if "comm_step_ms_per_rank" in record:
                    comm = record["comm_step_ms_per_rank"]
                    point["comm_step_ms_per_rank"] = comm
                    point["comm_share"] = sum(comm) / len(comm) / point["decode_step_ms"]
                    point["comm_calls_rank0"] = record.get("comm_calls")
                entry[f"{name}_b{batch}"] = point
        for name in ("tp2", "tp2_one_shot"):
            step_ms = entry[f"{name}_b1"]["decode_step_ms"]
            reduce = entry[f"{name}_b1"]["comm_calls_rank0"]["all_reduce"]
            entry[f"{name}_b1_speedup"] = entry["tp1_b1"]["decode_step_ms"] / step_ms
            entry[f"{name}_b1_allreduce_us_per_call"] = 1e3 * reduce["ms"] / reduce["calls"]
            entry[f"{name}_b1_allreduce_calls_per_step"] = reduce["calls"]
            entry[f"{name}_b1_allreduce_share"] = reduce["ms"] / step_ms
        models[model] = entry
    bench = read_json(directory / done["allreduce"]["results"])["records"]
    micro = {
        f"{r['method']}_{r['bytes'] // 1024}KiB_us": r["median_us"]
        for r in bench if r.get("kind") == "allreduce"
    }  # fmt: skip
    kills = {name: {k: done[f"kill-{name}"][k] for k in
                    ("seconds_until_all_exited", "exit_codes", "collective_timeout_s")}
             for name in ("spawn", "mpirun", "alone")}  # fmt: skip
    gptj, llama = models["gptj-6b"], models["llama2-13b"]
    # The headline: TP=2 with the all-reduce method that gave GPT-J the faster batch-1 step.
    best = max(("tp2", "tp2_one_shot"), key=lambda name: gptj[f"{name}_b1_speedup"])
    return {
        "tp2_allreduce_method": {"tp2": "nccl", "tp2_one_shot": "one-shot"}[best],
        "gptj_tp2_b1_speedup": gptj[f"{best}_b1_speedup"],
        "llama2_13b_tp2_b1_speedup": llama[f"{best}_b1_speedup"],
        # GPT-J's, the target model; LLaMA's beside it.
        "allreduce_share_b1": gptj[f"{best}_b1_allreduce_share"],
        "allreduce_us_per_call": gptj[f"{best}_b1_allreduce_us_per_call"],
        "llama2_13b_allreduce_share_b1": llama[f"{best}_b1_allreduce_share"],
        "llama2_13b_allreduce_us_per_call": llama[f"{best}_b1_allreduce_us_per_call"],
        "tp2_b1_by_allreduce_method": {
            model: {
                method: {
                    key: models[model][f"{name}_b1_{key}"]
                    for key in ("speedup", "allreduce_us_per_call", "allreduce_share")
                }
                for method, name in (("nccl", "tp2"), ("one-shot", "tp2_one_shot"))
            }
            for model in MODELS
        },  # fmt: skip
        "throughput_128_128_tok_s": {
            model: {
                f"{name}_b{batch}": models[model][f"{name}_b{batch}"]["throughput_tok_s"]
                for name, (*_, batches) in CONFIGS.items()
                for batch in batches
            }
            for model in MODELS
        },  # fmt: skip
        "allreduce_microbenchmark_us": micro,
        "tp2_logit_max_rel_err": worst[(2, 1)],
        "pp2_logit_max_rel_err": worst[(1, 2)],
        "mpirun_digests_equal_spawn": digests("spawn") == digests("mpirun"),
        "kill": kills,
        "models": models,
        "method": "decode step: median over 3 requests x 127 steps of `ftbench run` 128/128 "
        "(CUDA graphs, tuned caches of this run); all-reduce per call and share: rank 0's "
        "all-reduce time in a batch-1 step timed operation by operation (waits for the peer "
        "included) over its calls, and over the measured step; comm_share: every call kind, "
        "mean over ranks",
        # A run spread over several calls may span commits: each step's own.
        "step_commits": {
            name: result.get("commit", environment["commit"]) for name, result in done.items()
        },
        "directory": str(directory),
        "utc_time": environment["utc_time"],
    }


def main() -> None:
    arguments = parser(__doc__, summary=True)
    arguments.add_argument("--dir", type=Path, required=True, help="where each step's file goes")
    arguments.add_argument("--only", default="", help="comma-separated steps to run (default all)")
    args = arguments.parse_args()
    directory = args.dir
    directory.mkdir(parents=True, exist_ok=True)
    steps: dict[str, Callable[[], dict[str, Any]]] = {
        "machine": lambda: machine(args.device_kind),
        "check-spawn": lambda: check("spawn"),
        "check-mpirun": lambda: check("mpirun"),
        "tune": lambda: tune(directory),
        "runs-tp1": lambda: runs_tp1(directory),
        **{f"runs-{model}-{config.replace('_', '-')}":
           (lambda model=model, config=config: runs_two_ranks(directory, model, config))
           for config in CONFIGS if config != "tp1" for model in MODELS},
        "allreduce": lambda: allreduce(directory),
        **{f"kill-{name}": (lambda name=name: kill(directory, name))
           for name in ("spawn", "mpirun", "alone")},
    }  # fmt: skip
    only = [name for name in args.only.split(",") if name]
    unknown = [name for name in only if name not in steps]
    if unknown:
        raise SystemExit(f"--only: unknown steps {unknown}; steps: {', '.join(steps)}")
    done = {
        name: step(directory, name, fn) for name, fn in steps.items() if not only or name in only
    }
    if len(done) == len(steps):
        machine_step = done["machine"]
        summary = summarize(directory, done)
        write_summary(
            args.out_dir, "parallel", summary, machine_step["device"], machine_step["commit"]
        )


if __name__ == "__main__":
    main()
