"""Every command given what a user gets wrong ends in one line on stderr and exit code 2.

A table of bad command lines, one or more per kind of mistake and command: corrupt, truncated,
empty, foreign and future-schema files; folders where files go and files where folders go;
missing and unwritable paths; NaN, negative, zero, huge and wrong-type numbers; unknown names.
Each case runs `ftbench` in this process (through `cli.main`, as the console script does) in a
folder of such files, and must end with exit code 2 and exactly one line on stderr, an
"error: " line holding the expected words, with no traceback; every file that was there before
is byte-identical after.
"""

import hashlib
import json
import re
import shlex
import sqlite3
import sys
from pathlib import Path

import pytest
import typer

import ftbench
from ftbench import cli
from ftbench.reports.history import add_files

DATA = Path(__file__).parent / "data"
CONFIGS = DATA / "hf_configs"
RESULTS = DATA / "results"
TINY_LLAMA = {
    "model_type": "llama", "vocab_size": 101, "hidden_size": 64, "intermediate_size": 96,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 32,
}  # fmt: skip


def _config(tmp: Path, name: str, **changes) -> None:
    data = json.loads((CONFIGS / "mistral-7b-v0.1.json").read_text())
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    (tmp / name).write_text(json.dumps(data))


def _cache(tmp: Path, name: str, where: str, value) -> None:
    """The test cache with `value` at `where`: "schema", "header.FIELD" or "entry.FIELD[.SUB]"
    (of its first entry)."""
    data = json.loads((RESULTS / "tune-cache.json").read_text())
    *parents, last = where.split(".")
    target = data
    for key in parents:
        target = next(iter(data["entries"].values())) if key == "entry" else target[key]
    target[last] = value
    (tmp / name).write_text(json.dumps(data))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder of good and bad files; cases name them as {cache}, {corrupt}, ..."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    cache_text = (RESULTS / "tune-cache.json").read_text()
    run_text = (RESULTS / "run-llama2-7b-bf16.json").read_text()
    (tmp / "cache.json").write_text(cache_text)
    (tmp / "cache2.json").write_text(cache_text)
    (tmp / "run.json").write_text(run_text)
    (tmp / "corrupt.json").write_text("{not json")
    (tmp / "truncated.json").write_text(cache_text[: len(cache_text) // 2])
    (tmp / "empty.json").write_text("")
    (tmp / "foreign.json").write_text('{"my": "notes"}')
    (tmp / "list.json").write_text("[1, 2, 3]")
    (tmp / "binary.json").write_bytes(bytes(range(256)))
    (tmp / "bad.json.gz").write_bytes(b"not gzip at all")
    (tmp / "notes.txt").write_text("my notes")
    (tmp / "folder").mkdir()
    (tmp / "folder" / "mine.txt").write_text("keep me")
    future = json.loads(run_text) | {"schema": 99}
    (tmp / "future-run.json").write_text(json.dumps(future))
    (tmp / "unknown-kind.json").write_text(json.dumps(json.loads(run_text) | {"kind": "nope"}))
    (tmp / "bad-records.json").write_text(json.dumps(json.loads(run_text) | {"records": [{}]}))
    _cache(tmp, "future-cache.json", "schema", 99)
    _cache(tmp, "other-gpu-cache.json", "header.gpu_name", "NVIDIA A100")
    _cache(tmp, "bad-header-cache.json", "header.gpu_name", 1)
    _cache(tmp, "zero-time-cache.json", "entry.winner_time.median_ms", 0)
    _cache(tmp, "negative-time-cache.json", "entry.default_time.median_ms", -1.0)
    _cache(tmp, "string-time-cache.json", "entry.winner_time.median_ms", "fast")
    _cache(tmp, "nan-time-cache.json", "entry.winner_time.median_ms", float("nan"))  # JSON NaN
    _cache(tmp, "naive-time-cache.json", "entry.measured_utc", "2026-11-24T16:44:16")
    _config(tmp, "rope-string.json", rope_scaling="linear")
    _config(tmp, "rope-list.json", rope_scaling=["linear", 2.0])
    _config(tmp, "huge-head-dim.json", head_dim=1_000_000_000)
    _config(tmp, "huge-layers.json", num_hidden_layers=100_000)
    _config(tmp, "huge-vocab.json", vocab_size=10**12)
    _config(tmp, "zero-layers.json", num_hidden_layers=0)
    _config(tmp, "negative-hidden.json", hidden_size=-4096)
    _config(tmp, "float-layers.json", num_hidden_layers=31.5)
    _config(tmp, "string-heads.json", num_attention_heads="32")
    _config(tmp, "bool-heads.json", num_attention_heads=True)
    _config(tmp, "no-hidden.json", hidden_size=None)
    _config(tmp, "unknown-type.json", model_type="mamba")
    _config(tmp, "odd-heads.json", num_attention_heads=33)
    _config(tmp, "bad-activation.json", hidden_act="swiglu-2")
    (tmp / "nan-eps.json").write_text(
        (CONFIGS / "mistral-7b-v0.1.json")
        .read_text()
        .replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN')
    )
    (tmp / "bad.toml").write_text("name = \n")
    profile = (Path(ftbench.__file__).parent / "profiles" / "data" / "gpt2-124m.toml").read_text()
    (tmp / "unknown-field.toml").write_text(profile + "colour = 'blue'\n")
    (tmp / "future.toml").write_text(profile.replace("schema = 1", "schema = 99"))
    (tmp / "huge.toml").write_text(profile.replace("num_layers = 12", "num_layers = 100000"))
    for folder, config in (("ckpt", TINY_LLAMA), ("ckpt-rope", TINY_LLAMA | {"rope_scaling": 1}),
                           ("ckpt-empty", TINY_LLAMA)):  # fmt: skip
        (tmp / folder).mkdir()
        (tmp / folder / "config.json").write_text(json.dumps(config))
    (tmp / "ckpt" / "model.safetensors").write_bytes(b"\x08" + bytes(7) + b"{}")  # truncated
    add_files(tmp / "history.sqlite3", [next(RESULTS.glob("foundation-*.json"))])
    with sqlite3.connect(tmp / "future-history.sqlite3") as connection:
        connection.execute("PRAGMA user_version = 99")
        connection.execute("CREATE TABLE runs (id INTEGER)")
    with sqlite3.connect(tmp / "other-app.sqlite3") as connection:
        connection.execute("CREATE TABLE photos (id INTEGER)")
    return tmp


def _snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below `root`, with the sha256 of each file's bytes."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(root.rglob("*"))
    }


# (command line, words the error line must hold); {name} is the workspace path of name
CASES = [
    # env
    ("env --out {folder}", "it is a folder, not a file"),
    ("env --out {cache}", "refusing to replace"),
    ("env --out {run}", "kind 'run'"),
    ("env --out {notes}", "that ftbench did not write"),
    ("env --out {empty}", "an empty file"),
    ("env --out {notes}/env.json", "notes.txt is a file, not a folder"),
    ("env --out /proc/ftbench-env.json", "cannot write /proc/ftbench-env.json"),
    ("env --bogus", "No such option: --bogus"),
    ("env extra", "unexpected extra argument"),
    # the command itself
    ("nope", "No such command 'nope'"),
    ("--bogus", "No such option: --bogus"),
    ("cache nope", "No such command 'nope'"),
    ("profiles list extra", "unexpected extra argument"),
    # profiles show: files
    ("profiles show --profile nope", "no built-in profile 'nope'"),
    ("profiles show --config {corrupt}", "is not valid JSON"),
    ("profiles show --config {truncated}", "is not valid JSON"),
    ("profiles show --config {empty}", "is not valid JSON"),
    ("profiles show --config {foreign}", "missing field 'model_type'"),
    ("profiles show --config {list}", "must be a JSON object"),
    ("profiles show --config {binary}", "is not a text file"),
    ("profiles show --config {folder}", "folder/config.json"),
    ("profiles show --config {ws}/missing.json", "cannot read"),
    ("profiles show --config {cache}", "missing field 'model_type'"),
    ("profiles show --config {rope-string}", "field 'rope_scaling' must be null or an object"),
    ("profiles show --config {rope-list}", "field 'rope_scaling' must be null or an object"),
    ("profiles show --config {huge-head-dim}", "head_dim 1,000,000,000 is above 1,024"),
    ("profiles show --config {huge-layers}", "num_layers 100,000 is above 1,024"),
    ("profiles show --config {huge-vocab}", "vocab_size"),
    (
        "profiles show --config {zero-layers}",
        "'num_hidden_layers' must be a positive integer, got 0",
    ),
    (
        "profiles show --config {negative-hidden}",
        "'hidden_size' must be a positive integer, got -4096",
    ),
    ("profiles show --config {float-layers}", "must be a positive integer, got 31.5"),
    ("profiles show --config {string-heads}", "must be a positive integer, got '32'"),
    ("profiles show --config {bool-heads}", "must be a positive integer, got True"),
    ("profiles show --config {no-hidden}", "missing field 'hidden_size'"),
    ("profiles show --config {unknown-type}", "model_type 'mamba' is not supported"),
    ("profiles show --config {odd-heads}", "not divisible"),
    ("profiles show --config {bad-activation}", "'swiglu-2', which ftbench does not support"),
    ("profiles show --config {nan-eps}", "'rms_norm_eps' must be a positive number, got nan"),
    ("profiles show --config {bad.toml}", "is not valid TOML"),
    ("profiles show --config {unknown-field.toml}", "unknown field(s) colour"),
    ("profiles show --config {future.toml}", "schema 99 is not supported"),
    ("profiles show --config {huge.toml}", "num_layers 100,000 is above 1,024"),
    # profiles show: numbers and names
    ("profiles show --profile gpt2-124m --tp 0", "Invalid value for '--tp'"),
    ("profiles show --profile gpt2-124m --tp -1", "Invalid value for '--tp'"),
    ("profiles show --profile gpt2-124m --tp abc", "Invalid value for '--tp'"),
    ("profiles show --profile gpt2-124m --tp 1.5", "Invalid value for '--tp'"),
    ("profiles show --profile gpt2-124m --tp 5", "valid tp sizes"),
    ("profiles show --profile gpt2-124m --tp 99999999999", "tp 99999999999 is above"),
    ("profiles show --profile gpt2-124m --pp 0", "Invalid value for '--pp'"),
    ("profiles show --profile gpt2-124m --pp 13", "pp"),
    (
        "profiles show --profile gpt2-124m --batch 0",
        "--batch takes comma-separated positive integers",
    ),
    (
        "profiles show --profile gpt2-124m --batch -1",
        "--batch takes comma-separated positive integers",
    ),
    (
        "profiles show --profile gpt2-124m --batch abc",
        "--batch takes comma-separated positive integers",
    ),
    (
        "profiles show --profile gpt2-124m --batch 1,,8",
        "--batch takes comma-separated positive integers",
    ),
    (
        "profiles show --profile gpt2-124m --batch 1e9",
        "--batch takes comma-separated positive integers",
    ),
    ("profiles show --profile gpt2-124m --batch 8,8", "--batch lists 8 twice"),
    (
        "profiles show --profile gpt2-124m --batch 99999999999",
        "--batch: 99999999999 is above 2147483648",
    ),
    (
        "profiles show --profile gpt2-124m --input-len 0",
        "--input-len takes comma-separated positive",
    ),
    (
        "profiles show --profile gpt2-124m --input-len nan",
        "--input-len takes comma-separated positive",
    ),
    ("profiles show --profile gpt2-124m --input-len 2000", "1024 learned positions"),
    (
        "profiles show --profile gpt2-124m --output-len 0",
        "--output-len takes comma-separated positive",
    ),
    ("profiles show --profile gpt2-124m --beam 0", "Invalid value for '--beam'"),
    ("profiles show --profile gpt2-124m --beam -3", "Invalid value for '--beam'"),
    ("profiles show --profile gpt2-124m --dtype fp4", "'fp4' is not one of 'fp16', 'bf16', 'fp8'"),
    (
        "profiles show --profile gpt2-124m --dtype fp8 --weights int8",
        "--dtype fp8 --weights int8: dtype fp8 takes fp8 weights",
    ),
    (
        "tune --profile gpt2-124m --dtype fp8 --scaling channel --dry-run",
        "--dtype fp8 --scaling channel: fp8 x fp8 GEMMs take scaling tensor or outer",
    ),
    ("profiles show --profile gpt2-124m --dtype ''", "'' is not one of 'fp16', 'bf16'"),
    ("profiles show --profile gpt2-124m --gpu v100", "v100"),
    ("profiles show", "give exactly one of --profile NAME or --config PATH"),
    ("profiles show --profile gpt2-124m gptj-6b", "give the model once"),
    # tune
    ("tune", "give exactly one of --profile NAME or --config PATH"),
    ("tune --profile gpt2-124m --config {ckpt}", "give exactly one of --profile"),
    ("tune --profile my.toml", "use --config my.toml"),
    ("tune --profile {huge-layers}", "--profile takes a built-in profile name, not a file"),
    ("tune --profile nope", "no built-in profile 'nope'"),
    ("tune --config {ws}/missing.json", "cannot read config file"),
    ("tune --config gptj-6b", "built-in profiles are given with --profile NAME"),
    ("tune --config {corrupt}", "is not valid JSON"),
    ("tune --config {folder}", "folder/config.json"),
    ("tune --config {rope-string} --dry-run", "field 'rope_scaling'"),
    ("tune --config {huge-head-dim} --dry-run", "head_dim 1,000,000,000 is above 1,024"),
    ("tune --config {huge-layers} --dry-run", "num_layers 100,000 is above 1,024"),
    ("tune --profile gpt2-124m --budget 0", "--budget must be more than zero"),
    ("tune --profile gpt2-124m --budget -5m", "a duration is a number with s, m or h"),
    ("tune --profile gpt2-124m --budget nan", "a duration is a number with s, m or h"),
    ("tune --profile gpt2-124m --budget inf", "a duration is a number with s, m or h"),
    ("tune --profile gpt2-124m --budget soon", "a duration is a number with s, m or h"),
    ("tune --profile gpt2-124m --budget 1d", "a duration is a number with s, m or h"),
    ("tune --profile gpt2-124m --l2 warm", "'warm' is not one of 'cold', 'hot'"),
    ("tune --profile gpt2-124m --backends ''", "--backends: name at least one of"),
    ("tune --profile gpt2-124m --backends magic", "unknown backend 'magic'"),
    ("tune --profile gpt2-124m --backends cublas,cublas", "--backends lists cublas twice"),
    ("tune --profile gpt2-124m --tp 0 --dry-run", "Invalid value for '--tp'"),
    ("tune --profile gpt2-124m --batch 0 --dry-run", "--batch takes comma-separated positive"),
    ("tune --profile gpt2-124m --dtype fp32", "'fp32' is not one of 'fp16', 'bf16'"),
    ("tune --profile gpt2-124m --input-len 5000", "1024 learned positions"),
    ("tune --profile gpt2-124m --out {run}", "refusing to replace"),
    ("tune --profile gpt2-124m --out {notes}", "with a tuned cache"),
    ("tune --profile gpt2-124m --out {corrupt}", "that ftbench did not write"),
    ("tune --profile gpt2-124m --out {folder}", "it is a folder, not a file"),
    ("tune --profile gpt2-124m --out {notes}/t.json", "notes.txt is a file, not a folder"),
    ("tune --profile gpt2-124m --out {ws}/t.json --results {cache}", "with tune results"),
    ("tune --profile gpt2-124m --out {ws}/t.json --results {run}", "kind 'run'"),
    ("tune --profile gpt2-124m --out {ws}/t.json --results {ws}/t.json", "--results and --out"),
    ("tune --profile gpt2-124m --out {cache}", "tuning needs a GPU"),
    ("tune --profile gpt2-124m", "tuning needs a GPU"),
    # cache show and validate
    ("cache show {ws}/missing.json", "cannot read"),
    ("cache show {corrupt}", "is not valid JSON"),
    ("cache show {truncated}", "is not valid JSON"),
    ("cache show {empty}", "is not valid JSON"),
    ("cache show {foreign}", "is not an ftbench tuned-config cache"),
    ("cache show {list}", "is not an ftbench tuned-config cache"),
    ("cache show {run}", "is not an ftbench tuned-config cache"),
    ("cache show {future-cache}", "cache schema 99 is not supported"),
    ("cache show {folder}", "cannot read"),
    ("cache show {binary}", "is not a text file"),
    ("cache show {bad.json.gz}", "cannot read"),
    ("cache show {zero-time-cache}", "winner_time.median_ms must be a finite number > 0, got 0"),
    ("cache show {negative-time-cache}", "default_time.median_ms must be a finite number > 0"),
    ("cache show {string-time-cache}", "median_ms must be a finite number > 0, got 'fast'"),
    ("cache show {nan-time-cache}", "winner_time.median_ms must be a finite number > 0, got nan"),
    ("cache show {bad-header-cache}", "header.gpu_name must be a string, got 1"),
    ("cache show {naive-time-cache}", "measured_utc must be an ISO 8601 time with a time zone"),
    ("cache show", "Missing argument"),
    ("cache validate {ws}/missing.json", "cannot read"),
    ("cache validate {corrupt}", "is not valid JSON"),
    ("cache validate {future-cache}", "cache schema 99 is not supported"),
    ("cache validate {run}", "is not an ftbench tuned-config cache"),
    ("cache validate {folder}", "cannot read"),
    ("cache validate {zero-time-cache}", "winner_time.median_ms must be a finite number > 0"),
    # cache merge
    ("cache merge {ws}/m.json {corrupt}", "is not valid JSON"),
    ("cache merge {ws}/m.json {ws}/missing.json", "cannot read"),
    ("cache merge {ws}/m.json", "Missing argument"),
    ("cache merge {run} {cache}", "refusing to replace"),
    ("cache merge {cache2} {cache}", "kind 'ftbench-tuned-cache') with a merged cache"),
    ("cache merge {notes} {cache}", "that ftbench did not write"),
    ("cache merge {folder} {cache} --force", "it is a folder, not a file"),
    ("cache merge {notes}/m.json {cache}", "notes.txt is a file, not a folder"),
    ("cache merge /proc/m.json {cache}", "cannot write /proc/m.json"),
    ("cache merge {ws}/m.json {cache} {other-gpu-cache}", "cannot merge caches tuned apart"),
    ("cache merge {ws}/m.json {cache} {future-cache}", "cache schema 99 is not supported"),
    ("cache merge {ws}/m.json {cache} {run}", "is not an ftbench tuned-config cache"),
    # cache prune
    ("cache prune {cache} --min-speedup nan", "--min-speedup takes a ratio >= 0"),
    ("cache prune {cache} --min-speedup -1", "--min-speedup takes a ratio >= 0"),
    ("cache prune {cache} --min-speedup inf", "--min-speedup takes a ratio >= 0"),
    ("cache prune {cache} --min-speedup 100", "above every entry's speed-up (the largest is"),
    ("cache prune {cache} --min-speedup abc", "Invalid value for '--min-speedup'"),
    ("cache prune {cache} --min-speedup 5%", "Invalid value for '--min-speedup'"),
    ("cache prune {cache} --older-than-days -1", "--older-than-days takes a number of days"),
    ("cache prune {cache} --older-than-days nan", "--older-than-days takes a number of days"),
    ("cache prune {cache} --older-than-days 1e9", "--older-than-days takes a number of days"),
    ("cache prune {cache} --out {run}", "refusing to replace"),
    ("cache prune {cache} --out {cache2}", "with a pruned cache"),
    ("cache prune {cache} --out {folder}", "it is a folder, not a file"),
    ("cache prune {cache} --out {notes}/p.json", "notes.txt is a file, not a folder"),
    ("cache prune {corrupt}", "is not valid JSON"),
    ("cache prune {ws}/missing.json", "cannot read"),
    ("cache prune {run}", "is not an ftbench tuned-config cache"),
    ("cache prune {future-cache}", "cache schema 99 is not supported"),
    ("cache prune {negative-time-cache}", "default_time.median_ms must be a finite number > 0"),
    # run
    ("run", "give exactly one of --profile NAME or --config PATH"),
    ("run --profile my.toml", "use --config my.toml"),
    ("run --profile nope", "no built-in profile 'nope'"),
    ("run --config {corrupt}", "is not valid JSON"),
    ("run --config {rope-string}", "field 'rope_scaling'"),
    ("run --profile gpt2-124m --tp 0", "Invalid value for '--tp'"),
    ("run --profile gpt2-124m --pp -1", "Invalid value for '--pp'"),
    ("run --profile gpt2-124m --tp 5", "valid tp sizes"),
    ("run --profile gpt2-124m --repeats 0", "--repeats must be at least 1, got 0"),
    ("run --profile gpt2-124m --repeats -2", "--repeats must be at least 1, got -2"),
    ("run --profile gpt2-124m --micro-batches 0", "micro-batches"),
    ("run --profile gpt2-124m --micro-batches 4 --batch 2", "micro-batches"),
    ("run --profile gpt2-124m --timeout 0", "Invalid value for '--timeout'"),
    ("run --profile gpt2-124m --timeout nan", "--timeout"),
    ("run --profile gpt2-124m --timeout abc", "Invalid value for '--timeout'"),
    ("run --profile gpt2-124m --compare magic", "--compare: unknown ['magic']"),
    ("run --profile gpt2-124m --compare untuned --tp 2", "--compare runs peers on one GPU"),
    ("run --profile gpt2-124m --allreduce ring", "'ring' is not one of 'nccl', 'one-shot'"),
    ("run --profile gpt2-124m --dtype fp32", "'fp32' is not one of 'fp16', 'bf16'"),
    ("run --profile gpt2-124m --output-len 1", "output lengths must be at least 2"),
    ("run --profile gpt2-124m --input-len 5000", "1024 learned positions"),
    ("run --profile gpt2-124m --batch 0", "--batch takes comma-separated positive integers"),
    ("run --profile gpt2-124m --checkpoint {ws}/missing", "--checkpoint"),
    ("run --profile gpt2-124m --checkpoint {notes}", "no such folder"),
    ("run --profile gpt2-124m --tuned {ws}/missing.json", "--tuned"),
    ("run --profile gpt2-124m --tuned {folder}", "no such file"),
    ("run --profile gpt2-124m --tuned {corrupt}", "is not valid JSON"),
    ("run --profile gpt2-124m --tuned {run}", "is not an ftbench tuned-config cache"),
    ("run --profile gpt2-124m --out {cache}", "refusing to replace"),
    ("run --profile gpt2-124m --out {run}", "with run results"),
    ("run --profile gpt2-124m --out {folder}", "it is a folder, not a file"),
    ("run --profile gpt2-124m --out {ws}/r.csv", "give a name ending in .json"),
    ("run --profile gpt2-124m --out {notes}/r.json", "notes.txt is a file, not a folder"),
    ("run --profile gpt2-124m", "needs a GPU"),
    # serve-bench
    ("serve-bench", "give exactly one of --profile NAME or --config PATH"),
    ("serve-bench --profile nope", "no built-in profile 'nope'"),
    ("serve-bench --config {corrupt}", "is not valid JSON"),
    ("serve-bench --profile bert-base", "the runtime runs decoder models only"),
    ("serve-bench --profile gpt2-124m --dtype fp8", "'fp8' is not one of 'fp16', 'bf16'"),
    ("serve-bench --profile gpt2-124m --requests 0", "--requests must be between 1"),
    ("serve-bench --profile gpt2-124m --requests -5", "--requests must be between 1"),
    ("serve-bench --profile gpt2-124m --requests many", "Invalid value for '--requests'"),
    ("serve-bench --profile gpt2-124m --input-len gauss:1,2", "expected fixed:N, uniform:LOW"),
    ("serve-bench --profile gpt2-124m --input-len uniform:0,10", "1 <= low <= high"),
    ("serve-bench --profile gpt2-124m --input-len normal:nan,1", "a finite mean and std >= 0"),
    ("serve-bench --profile gpt2-124m --output-len 0", "fixed lengths need 1 <= low <= high"),
    ("serve-bench --profile gpt2-124m --output-len 1", "every request generates one token"),
    ("serve-bench --profile gpt2-124m --input-len 2000", "maximum 1024, gpt2-124m's max_pos"),
    ("serve-bench --profile gpt2-124m --input-len 1000 --output-len 100", "1024 learned positions"),
    ("serve-bench --profile gpt2-124m --input-len sharegpt:{notes}", "give a ShareGPT file with"),
    ("serve-bench --profile gpt2-124m --dataset {ws}/missing.json", "--dataset"),
    ("serve-bench --profile gpt2-124m --dataset {folder}", "no such file"),
    ("serve-bench --profile gpt2-124m --dataset {corrupt}", "is not valid JSON"),
    ("serve-bench --profile gpt2-124m --dataset {foreign}", "must hold a non-empty JSON list"),
    ("serve-bench --profile gpt2-124m --dataset {list}", "has no 'conversations' list"),
    ("serve-bench --profile gpt2-124m --dataset {run} --input-len 8", "leave --input-len out"),
    ("serve-bench --profile gpt2-124m --rate 0", "rate must be positive and finite"),
    ("serve-bench --profile gpt2-124m --rate -4", "rate must be positive and finite"),
    ("serve-bench --profile gpt2-124m --rate nan", "rate must be positive and finite"),
    ("serve-bench --profile gpt2-124m --rate fast", "--rate takes comma-separated request rates"),
    ("serve-bench --profile gpt2-124m --rate 4,,8", "--rate takes comma-separated request rates"),
    ("serve-bench --profile gpt2-124m --rate 4,4.0", "--rate lists 4 twice"),
    ("serve-bench --profile gpt2-124m --burstiness 0", "burstiness must be positive"),
    ("serve-bench --profile gpt2-124m --burstiness nan", "burstiness must be positive"),
    ("serve-bench --profile gpt2-124m --burstiness x", "Invalid value for '--burstiness'"),
    ("serve-bench --profile gpt2-124m --max-concurrency 0", "--max-concurrency must be between"),
    ("serve-bench --profile gpt2-124m --block-size 0", "--block-size must be between 1"),
    ("serve-bench --profile gpt2-124m --max-num-tokens 8", "--max-num-tokens 8 must be at least"),
    ("serve-bench --profile gpt2-124m --slo ttft:5", "latency targets 'ttft:5'"),
    ("serve-bench --profile gpt2-124m --slo ttft:-5ms", "must be a positive number"),
    ("serve-bench --profile gpt2-124m --slo speed:5ms", "expected metric:NUMBERms"),
    ("serve-bench --profile gpt2-124m --stop-token 50257", "is not a token of gpt2-124m's"),
    ("serve-bench --profile gpt2-124m --stop-token -1", "is not a token of gpt2-124m's"),
    ("serve-bench --profile gpt2-124m --out {cache}", "refusing to replace"),
    ("serve-bench --profile gpt2-124m --out {run}", "with run results"),
    ("serve-bench --profile gpt2-124m --out {folder}", "it is a folder, not a file"),
    ("serve-bench --profile gpt2-124m --out {ws}/s.csv", "give a name ending in .json"),
    ("serve-bench --profile gpt2-124m --out {notes}/s.json", "notes.txt is a file, not a folder"),
    ("serve-bench --profile gpt2-124m", "ftbench serve-bench needs a GPU"),
    # convert
    ("convert {ckpt} {ckpt} --tp 2", "is the checkpoint folder itself"),
    ("convert {ckpt} {ckpt}/tp2 --tp 2", "is inside the checkpoint folder"),
    ("convert {ckpt} {ws}/out --tp 0", "Invalid value for '--tp'"),
    ("convert {ckpt} {ws}/out --tp -1", "Invalid value for '--tp'"),
    ("convert {ckpt} {ws}/out --tp 3", "valid tp sizes"),
    ("convert {ckpt} {ws}/out", "ckpt/model.safetensors as safetensors: Error while deser"),
    ("convert {ckpt-empty} {ws}/out", "ckpt-empty: no *.safetensors files"),
    ("convert {ckpt} {ws}/out --tp two", "Invalid value for '--tp'"),
    ("convert {ckpt} {ws}/out --dtype fp8", "'fp8' is not one of 'fp16', 'bf16', 'fp32'"),
    ("convert {ws}/missing {ws}/out", "cannot read"),
    ("convert {folder} {ws}/out", "folder/config.json"),
    ("convert {ckpt-rope} {ws}/out", "field 'rope_scaling'"),
    ("convert {ckpt} {notes}", "notes.txt is a file, not a folder"),
    ("convert {ckpt} {notes}/out", "notes.txt is a file, not a folder"),
    ("convert {ckpt} {folder}", "refusing to write a pre-sharded checkpoint into"),
    ("convert {ckpt} /proc/ftbench-convert", "cannot write in /proc/ftbench-convert"),
    ("convert {ckpt}", "Missing argument"),
    # build-cutlass (valid ones compile: none here)
    ("build-cutlass --arch 70", "no CUTLASS kernel set for sm70; choose 90 or 80"),
    ("build-cutlass --arch 90 --dtype fp8", "no CUTLASS kernels of ['fp8']"),
    ("build-cutlass --arch ninety", "Invalid value for '--arch'"),
    ("build-cutlass --arch 90 --jobs 0", "Invalid value for '--jobs'"),
    ("build-cutlass --arch 90 --out {notes}", "notes.txt is a file, not a folder"),
    ("build-cutlass --arch 90 --out /proc/ftbench-cutlass", "cannot write in /proc/ftbench"),
    ("build-cutlass", "give --arch 90 or 80"),
    # report
    ("report {corrupt} --out {ws}/report", "is not valid JSON"),
    ("report {ws}/missing.json --out {ws}/report", "cannot read"),
    ("report {cache}", "Missing option '--out'"),
    ("report {cache} --out {notes}", "notes.txt is a file, not a folder"),
    ("report {cache} --out {folder}", "refusing to write the ftbench report into"),
    ("report {cache} --out {ckpt}", "refusing to write the ftbench report into"),
    ("report {future-run} --out {ws}/report", "result schema 99 is not supported"),
    ("report {empty} --out {ws}/report", "is not valid JSON"),
    ("report {bad-records} --out {ws}/report", "record 0: run record lacks engine"),
    ("report {folder} --out {ws}/report", "no result file to report"),
    ("report {future-cache} --out {ws}/report", "cache schema 99 is not supported"),
    # compare
    ("compare {run} {ws}/missing.json", "cannot read"),
    ("compare {corrupt} {run}", "is not valid JSON"),
    ("compare {future-run} {run}", "result schema 99 is not supported"),
    ("compare {empty} {run}", "is not valid JSON"),
    ("compare {unknown-kind} {run}", "result kind 'nope' is not known"),
    ("compare {foreign} {run}", "foreign.json: not an ftbench result file"),
    ("compare {run} {run} --threshold abc", "threshold"),
    ("compare {run} {run} --threshold -3%", "threshold"),
    ("compare {run} {run} --threshold nan", "threshold"),
    ("compare {run} {run} --format xml", "xml"),
    ("compare {run}", "Missing argument"),
    # history add
    ("history add {corrupt} --db {ws}/h.sqlite3", "is not valid JSON"),
    ("history add {ws}/missing.json --db {ws}/h.sqlite3", "cannot read"),
    ("history add {future-run} --db {ws}/h.sqlite3", "result schema 99 is not supported"),
    ("history add {unknown-kind} --db {ws}/h.sqlite3", "result kind 'nope' is not known"),
    ("history add {cache} --db {ws}/h.sqlite3", "a tuned cache keeps each winner's median"),
    ("history add {run} --db /proc/ftbench/h.sqlite3", "cannot create or open the history"),
    ("history add {run} --db {notes}", "not an ftbench history database"),
    ("history add {run} --db {cache}", "not an ftbench history database"),
    ("history add {run} --db {folder}", "cannot create or open the history database"),
    ("history add {run} --db {future-history.sqlite3}", "history schema 99 is not supported"),
    ("history add {run} --db {other-app.sqlite3}", "an SQLite file, but not an ftbench history"),
    ("history add --db {ws}/h.sqlite3", "Missing argument"),
    # history check
    ("history check --db {ws}/missing.sqlite3", "no such history database"),
    ("history check --db {corrupt}", "not an ftbench history database"),
    ("history check --db {future-history.sqlite3}", "history schema 99 is not supported"),
    ("history check --db {history.sqlite3} --threshold nan", "threshold"),
    ("history check --db {history.sqlite3} --window 0", "--window"),
    ("history check --db {history.sqlite3} --window -3", "--window"),
    ("history check --db {history.sqlite3} --window many", "Invalid value for '--window'"),
    ("dashboard --out {ws}/site --db {history.sqlite3} --window 0", "--window"),
    # dashboard
    ("dashboard --out {ws}/site --db {ws}/missing.sqlite3", "no such history database"),
    ("dashboard --out {folder} --db {history.sqlite3}", "refusing to write the ftbench dashboard"),
    ("dashboard --out {notes} --db {history.sqlite3}", "notes.txt is a file, not a folder"),
    ("dashboard --out {ws}/site --db {corrupt}", "not an ftbench history database"),
    ("dashboard --out {ws}/site --db {history.sqlite3} --threshold nan", "threshold"),
    ("dashboard --db {history.sqlite3}", "Missing option '--out'"),
]


def _argv(command: str, workspace: Path) -> list[str]:
    """The words of `command`, each {name} replaced by the workspace path of the file or folder
    of that name, or of that name less its extension."""
    paths = {"ws": str(workspace)}
    for path in workspace.iterdir():
        paths |= {path.stem: str(path), path.name: str(path)}
    return [re.sub(r"\{([^}]+)\}", lambda m: paths[m[1]], word) for word in shlex.split(command)]


@pytest.fixture(scope="module")
def click_app():
    """The click command typer makes of `cli.app`, made once: typer makes it anew on every call
    (a second or so on a loaded 2-core machine), which 200 cases cannot afford."""
    return typer.main.get_command(cli.app)


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[case[0] for case in CASES])
def test_a_bad_command_line_is_one_error_line_and_changes_no_file(
    workspace, click_app, monkeypatch, capsys, command, expected
):
    monkeypatch.setattr(cli, "app", click_app)
    monkeypatch.setenv("FTBENCH_CACHE_DIR", str(workspace / "ftbench-cache"))
    monkeypatch.chdir(workspace)
    before = _snapshot(workspace)
    monkeypatch.setattr(sys, "argv", ["ftbench", *_argv(command, workspace)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert _snapshot(workspace) == before


def test_the_table_covers_every_command_that_reads_or_writes():
    commands = {command.name for command in cli.app.registered_commands}
    for group in cli.app.registered_groups:
        sub = group.typer_instance
        commands |= {f"{sub.info.name} {c.name}" for c in sub.registered_commands}
    tried = {case[0] for case in CASES}
    untried = [c for c in commands if not any(t == c or t.startswith(f"{c} ") for t in tried)]
    assert untried == []
    assert len(CASES) >= 150
