"""`ftbench report`: one self-contained HTML page (plots first) and a Markdown summary.

Every input gets a section by its kind (`kinds.KINDS`): the kinds with something to plot their
own (`sections`), the others a table of their fields (`tables`), a file of a kind ftbench does
not read a table of what it holds and a note saying so. A folder given as input stands for
every JSON file under it (`*.json`, `*.json.gz`, subfolders included); another file there or
given by name (a log, a CSV) is listed at the end as not a result file. A file that says it is
of a kind ftbench reads but is malformed stops the report with an error naming it.
The environment of every input (GPU, clocks, driver, library versions, commit) closes the page.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from ftbench.errors import InvalidInputError
from ftbench.files import write_text_atomic
from ftbench.reports.html import check_site_folder, markdown_table, page, table_html
from ftbench.reports.records import ResultSet, load_result_set
from ftbench.reports.sections import SECTIONS
from ftbench.reports.tables import table_section

RESULT_SUFFIXES = (".json", ".json.gz")

TITLE = "ftbench report"


def is_result_name(path: Path) -> bool:
    """True for a name a result file can have (NAME.json, NAME.json.gz)."""
    return path.name.endswith(RESULT_SUFFIXES)


def report_inputs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """(the result files to read, the other files) of `paths`, folders expanded to every file
    under them, sorted; a path that does not exist is an InvalidInputError."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.exists():
            files.append(path)
        else:
            raise InvalidInputError(f"cannot read {path}: no such file or folder")
    readable = [path for path in files if is_result_name(path)]
    return readable, [path for path in files if not is_result_name(path)]


def environment_table(result_sets: Sequence[ResultSet]) -> pd.DataFrame:
    """One column per input that says where it was measured: GPU, clocks, driver, versions,
    commit, time, command (a tuned cache: its header; a flat file: its device and commit)."""
    columns = {}
    for result_set in result_sets:
        name = Path(result_set.path).name
        column = _environment_column(result_set)
        if column:
            columns[name] = column
    table = pd.DataFrame(columns)
    table.insert(0, "", table.index)
    return table.reset_index(drop=True)


def _environment_column(result_set: ResultSet) -> dict[str, object]:
    environment = result_set.environment
    if result_set.cache is not None:
        header = result_set.cache.header
        return {
            "GPU": f"{header.gpu_name} (sm {header.compute_capability})",
            "driver": header.driver,
            "cuda_runtime": header.cuda_runtime,
            "cublas": header.cublas,
            "cublaslt": header.cublaslt,
            "cutlass": header.cutlass,
            "ftbench": header.ftbench,
            "time (UTC)": header.created_utc,
        }
    if environment is None:
        document = result_set.data if isinstance(result_set.data, dict) else {}
        found = {"GPU": document.get("device"), "commit": document.get("commit")}
        return {name: value for name, value in found.items() if value is not None}
    first = environment.gpus[0] if environment.gpus else None
    column: dict[str, object] = {"GPU": result_set.gpu}
    if first is not None:
        column["GPU"] = (
            f"{result_set.gpu} (sm {first.compute_capability}, {first.sm_count} SMs, "
            f"{first.memory_total_mib} MiB)"
        )
        column["SM clock now / max MHz"] = f"{first.sm_clock_mhz} / {first.sm_clock_max_mhz}"
        column["memory clock now / max MHz"] = (
            f"{first.memory_clock_mhz} / {first.memory_clock_max_mhz}"
        )
        column["power limit W"] = first.power_limit_w
    return column | {
        "driver": environment.driver_version,
        **environment.software,
        "ftbench": environment.ftbench_version,
        "commit": environment.git_commit + (" (dirty)" if environment.git_dirty else ""),
        "time (UTC)": environment.utc_time,
        "host": environment.host,
        "command": environment.command_line,
    }


def build_report(result_sets: Sequence[ResultSet], others: Sequence[Path] = ()) -> tuple[str, str]:
    """(HTML page, Markdown summary) of `result_sets`; `others`: files listed as not read."""
    sections = [SECTIONS.get(rs.kind, table_section)(rs) for rs in result_sets]
    environment = environment_table(result_sets)
    title = TITLE
    html_sections = [section.html for section in sections]
    markdown = [f"# {title}\n", *(section.markdown for section in sections)]
    if others:
        listed = pd.DataFrame(
            {
                "file": [str(path) for path in others],
                "why": ["not a result file (.json, .json.gz)"] * len(others),
            }
        )
        html_sections.append(f"<h2>Not read</h2>{table_html(listed)}")
        markdown += ["## Not read\n", markdown_table(listed), ""]
    html_sections.append(f"<h2>Environment</h2>{table_html(environment)}")
    markdown += ["## Environment\n", markdown_table(environment), ""]
    return page(title, html_sections), "\n".join(markdown)


def write_report(
    paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], force: bool = False
) -> tuple[Path, Path]:
    """Read every input (errors name the file) and write OUT/report.html and OUT/report.md.

    OUT may be new, empty (but for the inputs and hidden entries) or an earlier report's
    folder; a folder that holds anything else is written into only with `force`."""
    check_site_folder(out_dir, "report.html", TITLE, force, inputs=paths)
    readable, others = report_inputs(paths)
    if not readable:
        raise InvalidInputError("no result file to report (files named *.json or *.json.gz)")
    result_sets = [load_result_set(path, unknown_ok=True) for path in readable]
    page_html, markdown = build_report(result_sets, others)
    out = Path(out_dir)
    return (
        write_text_atomic(out / "report.html", page_html),
        write_text_atomic(out / "report.md", markdown),
    )
