"""The report's sections of the kinds with nothing to plot (`kinds.KINDS`, `plotted` false) and
of files of a kind ftbench does not read: their fields, as tables.

A field is one cell: nested objects become dotted names ("geomean_vs_default.generation"), a
timing summary its median ("timing median ms"), a short list of numbers or words its items, a
longer one its length. Records become rows (a table per value of their own "kind" field, where
they have one); a flat object becomes field/value rows, and each list of objects in it a table of
its own. No table shows more than `MAX_ROWS` rows (the summary says how many there were) or
`MAX_COLUMNS` columns.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ftbench.reports.html import Section, section
from ftbench.reports.kinds import ACCEPTANCE, KINDS, PARALLEL_STEP
from ftbench.reports.records import ResultSet

MAX_ROWS = 200
MAX_COLUMNS = 40  # the first fields of records that have more
MAX_LIST = 8  # a list of scalars up to this long is shown item by item
TITLES = {
    "parallel-emulated": "Tensor and pipeline ranks emulated on one GPU",
    "runtime-acceptance": "Runtime against Hugging Face, and GPT-J 6B speed",
    "comm-cost": "Communication's cost inside a decode step",
    "tune-8bit": "8-bit GEMMs tuned: FP8 and weight-only choices against their defaults",
    "quantised-check": "8-bit weights: the runtime's error against float64 beside fp16's",
}
_SCALARS = (str, int, float, bool, type(None))


def cells(value: Any, name: str = "") -> dict[str, Any]:
    """`value` as cells by field name (see the module docstring)."""
    if isinstance(value, dict):
        if name and "median_ms" in value:
            return {f"{name} median ms": _number(value["median_ms"])}
        found: dict[str, Any] = {}
        for key, item in value.items():
            found |= cells(item, f"{name}.{key}" if name else str(key))
        return found
    if isinstance(value, list):
        if not all(isinstance(item, _SCALARS) for item in value):
            return {name: f"{len(value)} entries"}
        if len(value) > MAX_LIST:
            return {name: f"{len(value)} values"}
        return {name: ", ".join(str(_number(item)) for item in value)}
    return {name: _number(value)}


def _number(value: Any) -> Any:
    """A float as text of 4 significant digits (1.5e+12, 0.0003): tables of mixed magnitudes
    stay readable; everything else as it is."""
    return f"{value:.4g}" if isinstance(value, float) else value


def _rows(records: list[Any], first: str) -> pd.DataFrame:
    """Up to MAX_ROWS records as a table; a column `first` numbers them from 1."""
    rows = [
        {first: index + 1, **cells(record, "" if isinstance(record, dict) else "value")}
        for index, record in enumerate(records[:MAX_ROWS])
    ]
    table = pd.DataFrame(rows, dtype=object)  # object: a column with gaps keeps its integers
    return table.iloc[:, :MAX_COLUMNS]


def _field_rows(document: dict[str, Any], skip: tuple[str, ...] = ()) -> pd.DataFrame:
    found = {name: value for name, value in cells(document).items() if name not in skip}
    items = list(found.items())[:MAX_ROWS]
    return pd.DataFrame({"field": [name for name, _ in items], "value": [v for _, v in items]})


def _lists_of_objects(document: dict[str, Any]) -> list[pd.DataFrame]:
    """A table per top-level field of `document` that holds a list of objects."""
    return [
        _rows(value, f"{name} #")
        for name, value in document.items()
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value)
    ]


def _counted(what: str, count: int) -> str:
    shown = f" (the first {MAX_ROWS} shown)" if count > MAX_ROWS else ""
    return f"{count} {what}{shown}"


def flat_section(result_set: ResultSet) -> Section:
    """An acceptance summary or a parallel step: its fields, and its lists of objects."""
    document = result_set.data
    if result_set.kind == ACCEPTANCE:
        title = f"Acceptance: {document['name']}"
        summary = f"{document['device']}, commit {document['commit']}"
        header = ("schema", "kind", "name", "device", "commit")
    else:
        title = f"Parallel step: {document['step']}"
        summary = f"commit {document['commit']}, {document['step_seconds']:.0f} s"
        header = ("kind", "step", "commit", "step_seconds")
    tables = [_field_rows(document, header), *_lists_of_objects(document)]
    return section(title, result_set.path, summary, [], tables)


def records_section(result_set: ResultSet) -> Section:
    """A result file of a kind with nothing to plot: a table of its records per record kind."""
    measured = result_set.data
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in measured.records:
        groups.setdefault(str(record.get("kind", result_set.kind)), []).append(record)
    tables = [_rows(records, f"{kind} #") for kind, records in groups.items()]
    counts = ", ".join(_counted(f"{kind} records", len(rows)) for kind, rows in groups.items())
    summary = f"{counts or 'no records'} on {result_set.gpu}"
    return section(TITLES[result_set.kind], result_set.path, summary, [], tables)


def unknown_section(result_set: ResultSet) -> Section:
    """A file of a kind ftbench does not read: what it holds, as it is, with the reason."""
    document, note = result_set.data.document, result_set.data.note
    title = "Not a kind ftbench reads"
    if isinstance(document, dict) and isinstance(document.get("records"), list):
        records = document["records"]
        tables = [_rows(records, "record #")] if records else []
        return section(title, result_set.path, _counted("records", len(records)), [], tables, note)
    if isinstance(document, list):
        tables = [_rows(document, "item #")] if document else []
        return section(title, result_set.path, _counted("items", len(document)), [], tables, note)
    if isinstance(document, dict):
        fields = _field_rows(document)
        summary = _counted("fields", len(cells(document)))
        return section(title, result_set.path, summary, [], [fields], note)
    return section(title, result_set.path, f"a single value: {document!r}"[:200], [], [], note)


def table_section(result_set: ResultSet) -> Section:
    """The section of any kind without one of its own (`sections.SECTIONS`)."""
    if result_set.kind in (ACCEPTANCE, PARALLEL_STEP):
        return flat_section(result_set)
    if result_set.kind in KINDS:
        return records_section(result_set)
    return unknown_section(result_set)
