"""`ftbench report` and `ftbench dashboard`: pages with embedded plots, checked in a browser.

GEMM, foundation and GEMV sections use real device results; model-run sections use SYNTHETIC
run records made here (no real `ftbench run` results exist yet), labelled as such.
"""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftbench.bench.environment import EnvironmentRecord
from ftbench.bench.results import write_results
from ftbench.modelbench.runs import run_record
from ftbench.reports.history import add_files
from ftbench.reports.records import load_result_set
from ftbench.reports.report import write_report
from ftbench.reports.sections import foundation_section

RESULTS = Path(__file__).parent / "data" / "results"
FOUNDATIONS = sorted(RESULTS.glob("foundation-*.json"))
GEMV = sorted((Path(__file__).parents[1] / "benchmarks" / "results").glob("gemv-*.json.gz"))
IMAGE = re.compile(r'<img class="plot" alt="([^"]*)" src="data:image/png;base64,([^"]+)">')
SYNTHETIC_SPEED = {"ftbench": 1.0, "ftbench-untuned": 1.08, "hf-eager": 2.5, "hf-compile": 1.4}


def synthetic_run_file(path: Path) -> Path:
    """SYNTHETIC model-run results (made up, not measured) in the `modelbench.runs` schema."""
    rng = np.random.default_rng(0)

    def timing(median):
        samples = median * rng.lognormal(0.0, 0.01, size=30)
        return {"median_ms": float(np.median(samples)), "ci_low_ms": float(samples.min()),
                "ci_high_ms": float(samples.max()), "samples_ms": samples.tolist()}  # fmt: skip

    records = []
    for engine, factor in SYNTHETIC_SPEED.items():
        for batch, input_len in [(b, 128) for b in (1, 2, 4, 8, 16)] + [(1, 512), (1, 2048)]:
            step = factor * (7.0 + 0.05 * batch)
            ttft = factor * (10.0 + 0.02 * batch * input_len)
            records.append(run_record(
                engine=engine, model="synthetic-gptj", dtype="fp16", tp=1, pp=1, batch=batch,
                input_len=input_len, output_len=128, ttft=timing(ttft),
                decode_step=timing(step), end_to_end=timing(ttft + 128 * step),
                peak_memory_bytes=13 * 2**30, gemm_cache_misses=0 if engine == "ftbench" else None,
                floor_decode_step_ms=6.0 if engine.startswith("ftbench") else None,
            ))  # fmt: skip
    records.append({"engine": "hf-eager", "model": "synthetic-gptj", "dtype": "fp16", "tp": 1,
                    "pp": 1, "batch": 256, "input_len": 2048, "output_len": 128,
                    "status": "does not fit", "reason": "needs 150 GiB"})  # fmt: skip
    environment = json.loads(FOUNDATIONS[0].read_text())["environment"]
    environment["command_line"] = "SYNTHETIC run records for tests (not measured)"
    return write_results(path, "run", records, EnvironmentRecord.from_dict(environment))


def embedded_images(page: str) -> dict[str, Image.Image]:
    images = {}
    for alt, data in IMAGE.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images[alt] = image.convert("RGB")
    return images


def non_white_fraction(image: Image.Image) -> float:
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float((pixels.min(axis=2) < 235).mean())


def geomean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def test_report_of_real_results_leads_with_plots(tmp_path):
    inputs = [RESULTS / "tune-candidates.json", RESULTS / "tune-peers.json",
              RESULTS / "tune-cache.json", FOUNDATIONS[0], *GEMV]  # fmt: skip
    page_path, markdown_path = write_report(inputs, tmp_path / "out")
    page = page_path.read_text()
    images = embedded_images(page)
    expected = {"speed-up per problem", "winning backend counts", "roofline", "peer speed-ups",
                "probe samples per run"}  # fmt: skip
    if GEMV:
        expected.add("fraction of HBM bandwidth")
    assert set(images) == expected
    for alt, image in images.items():
        assert image.width > 300 and image.height > 200, alt
        assert 0.02 < non_white_fraction(image) < 0.9, alt
    assert "http://" not in page and "https://" not in page  # nothing to fetch

    # the tune summary, from the raw records: default median over winner median per problem
    records = json.loads((RESULTS / "tune-candidates.json").read_text())["records"]
    speedups = {}
    for record in records:
        if record["candidate"]["name"] == "default":
            default = record["timing"]["median_ms"]
            speedups[record["problem_key"]] = 1.0
        elif "samples_ms" in record.get("timing", {}):
            speedups[record["problem_key"]] = default / record["timing"]["median_ms"]
    overall = geomean(list(speedups.values()))
    summary = f"geometric-mean speed-up over the cuBLAS default {overall:.3f}x"
    markdown = markdown_path.read_text()
    assert markdown.count(summary) == 2  # from the sweep's records and from the cache
    assert "winners: cublas 2, cublaslt 2, ftbench 1, cutlass 1" in markdown
    assert "| 1x4096x4096 | 13.46 | 9.92 | 1.356 | ftbench: mma_r16_w16_u1_b128_s1 |" in markdown
    assert "HBM read 4.40 TB/s, GEMM peak 765 TFLOP/s" in markdown
    for fact in ("NVIDIA H200", "580.159.04", "b197fa7b85bae221668d493c47bbbe430a39856c",
                 "1980 / 1980", "13.1.0"):  # fmt: skip
        assert fact in markdown and fact in page


def renamed_l2_key(source: Path, target: Path) -> Path:
    """`source` as this ftbench writes it: each timing's L2 mode under "l2", not "cache"."""
    document = json.loads(source.read_text())
    for record in document["records"]:
        for timing in record.get("timings", {}).values():  # the Nsight Compute record has none
            timing["l2"], timing["schema"] = timing.pop("cache"), 2
    target.write_text(json.dumps(document))
    return target


def test_foundation_table_shows_the_l2_mode_of_files_old_and_new(tmp_path):
    # FOUNDATIONS were written with the timing schema 1, which called the L2 mode "cache".
    for path in (FOUNDATIONS[0], renamed_l2_key(FOUNDATIONS[0], tmp_path / "foundation.json")):
        markdown = foundation_section(load_result_set(path)).markdown
        for method in ("graph, hot", "graph, cold-rotate", "stream, cold-flush"):
            assert method in markdown, (path, method)


def test_run_report_of_synthetic_records(tmp_path):
    run = synthetic_run_file(tmp_path / "run.json")
    page_path, markdown_path = write_report([run], tmp_path / "report")
    images = embedded_images(page_path.read_text())
    assert set(images) == {"latency vs batch", "throughput vs batch", "ttft vs input length",
                           "tuned vs peers"}  # fmt: skip
    assert all(non_white_fraction(image) > 0.02 for image in images.values())
    markdown = markdown_path.read_text()
    assert "28 measured configurations" in markdown
    assert "not run: hf-eager synthetic-gptj fp16 tp=1 pp=1 batch=256 in=2048 out=128" in markdown
    assert "SYNTHETIC run records" in markdown


def test_report_of_a_bad_file_names_it(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": 1, "kind": "tune", "environment": ')
    result = subprocess.run(
        [sys.executable, "-m", "ftbench", "report", str(RESULTS / "tune-cache.json"), str(bad),
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{bad} is not valid JSON" in result.stderr
    assert not (tmp_path / "out").exists()


def browser() -> str | None:
    return next(
        (path for name in ("chromium", "chromium-browser", "google-chrome")
         if (path := shutil.which(name))), None,
    )  # fmt: skip


def screenshot(page: Path, out: Path, height: int) -> Image.Image:
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size=1280,{height}", f"--screenshot={out}", page.as_uri()]  # fmt: skip
    subprocess.run(command, capture_output=True, timeout=120, check=True)
    return Image.open(out).convert("RGB")


def blank_like(match: re.Match) -> str:
    """The same <img> holding a white PNG of the plot's size: the page keeps its layout."""
    plot = Image.open(io.BytesIO(base64.b64decode(match.group(2))))
    buffer = io.BytesIO()
    Image.new("RGB", plot.size, "white").save(buffer, format="PNG")
    blank = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{match.group(1)}" src="data:image/png;base64,{blank}">'


def assert_plots_rendered(page: Path, tmp_path: Path, height: int) -> Image.Image:
    """The browser draws the page's plots: against the same page with every plot replaced by a
    white image of its size (same layout), the screenshot differs on a good part of its area.
    Returns the screenshot."""
    shot = screenshot(page, tmp_path / f"{page.stem}.png", height)
    assert shot.size == (1280, height)
    assert non_white_fraction(shot) > 0.02
    bare = tmp_path / f"{page.stem}-bare.html"
    bare.write_text(IMAGE.sub(blank_like, page.read_text()))
    bare_shot = screenshot(bare, tmp_path / f"{page.stem}-bare.png", height)
    difference = np.abs(np.asarray(shot, np.int16) - np.asarray(bare_shot, np.int16)).max(axis=2)
    # measured: 4.5% of the report's first 2400 rows, 1.5% of the dashboard's (thin lines);
    # 0% when the image data is cut short and the plots fail to decode
    assert (difference > 40).mean() > 0.01
    return shot


@pytest.mark.skipif(browser() is None, reason="no headless Chromium (apt-get install chromium)")
def test_report_and_dashboard_render_in_chromium(tmp_path):
    report_page, _ = write_report(
        [RESULTS / "tune-candidates.json", RESULTS / "tune-peers.json"], tmp_path / "report"
    )
    assert_plots_rendered(report_page, tmp_path, 2400)

    # dashboard: three real foundation runs at three commits, then the last one 5% slower
    document = json.loads(FOUNDATIONS[-1].read_text())
    timing = document["records"][0]["timings"]["gemv_cold"]
    timing["samples_ms"] = [value * 1.05 for value in timing["samples_ms"]]
    document["environment"]["utc_time"] = "2026-11-25T09:00:00+00:00"
    document["environment"]["git_commit"] = "0123456789abcdef" * 2 + "01234567"
    slowed = tmp_path / "slowed.json"
    slowed.write_text(json.dumps(document))
    db = tmp_path / "history.sqlite3"
    add_files(db, [*FOUNDATIONS, slowed, RESULTS / "tune-candidates.json"])
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "ftbench", "dashboard", "--db", str(db), "--out", str(site)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = (site / "index.html").read_text()
    assert len(embedded_images(page)) == 9  # a series per foundation probe and tuned problem
    assert '<option value="NVIDIA H200">' in page
    regressions = page.split('class="slower">Regressions')[1]
    assert "gemv_cold" in regressions and "+5.00%" in regressions
    assert "gemm_hot" not in regressions
    assert_plots_rendered(site / "index.html", tmp_path, 1800)


def test_run_report_shows_n_a_for_optional_fields_a_record_lacks(tmp_path):
    path = synthetic_run_file(tmp_path / "run.json")
    document = json.loads(path.read_text())
    for record in document["records"]:
        record.pop("throughput_tok_s", None)
        record["flags"] = None
    path.write_text(json.dumps(document))
    page_path, markdown_path = write_report([path], tmp_path / "out")
    lines = markdown_path.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ftbench | synthetic-gptj")]
    assert rows and all("| n/a |" in row for row in rows)
    assert "latency vs batch" in embedded_images(page_path.read_text())


def test_a_run_with_breakdowns_shows_where_each_step_goes(tmp_path):
    path = synthetic_run_file(tmp_path / "run.json")
    document = json.loads(path.read_text())
    operations = [
        {"name": "layer 00 gemm", "per_step": 28, "step_ms": 5.0, "floor_ms": 4.5,
         "roofline_fraction": 0.9, "bytes": 10**9, "flops": 10**7},
        {"name": "layer 01 decode_attention", "per_step": 28, "step_ms": 2.0, "floor_ms": 1.0,
         "roofline_fraction": 0.5, "bytes": 10**8, "flops": 0},
    ]  # fmt: skip
    taken_apart = {
        "decode": {"length": 192, "whole_ms": 7.0, "floor_ms": 5.5, "operations": operations},
        "prefill": {"tokens": 128, "whole_ms": 7.0, "floor_ms": 5.5, "operations": operations},
    }
    for record in document["records"]:
        if record["engine"] == "ftbench" and record["input_len"] == 128:
            record["breakdown"] = taken_apart
    path.write_text(json.dumps(document))
    page_path, markdown_path = write_report([path], tmp_path / "out")
    image = embedded_images(page_path.read_text())["time per operation"]
    assert image.height > 200 and non_white_fraction(image) > 0.02
    markdown = markdown_path.read_text()
    step = "ftbench b=4 128/128: decode at length 192"
    assert f"| {step} | layer 00 gemm | 28 | 5.0 | 71.4% | 90.0% |" in markdown
    assert "| ftbench b=16 128/128: prefill 128 tokens | layer 01 decode_attention |" in markdown
