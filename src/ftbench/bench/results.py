"""Result files: records of one kind of measurement with the environment they came from, and
acceptance summaries: a benchmark's headline numbers with the device and commit they came from.

Both are JSON, written atomically, read back gzip-compressed as well (`files.read_json`: a large
file is kept as NAME.json.gz). Every kind, its records and how `ftbench report` shows them:
`reports.kinds`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftbench.bench.environment import EnvironmentRecord
from ftbench.errors import InvalidInputError
from ftbench.files import read_json, write_json_atomic

SCHEMA = 1
ACCEPTANCE = "acceptance"  # the kind of an acceptance summary


def write_results(
    path: str | os.PathLike[str],
    kind: str,
    records: list[dict[str, Any]],
    environment: EnvironmentRecord,
) -> Path:
    """Write a result file atomically: {schema, kind, environment, records}."""
    document = {
        "schema": SCHEMA,
        "kind": kind,
        "environment": environment.to_dict(),
        "records": records,
    }
    return write_json_atomic(path, document)


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a result file; a wrong schema or shape names the file and the problem."""
    return parse_results(read_json(path), str(path))


def parse_results(document: Any, path: str) -> dict[str, Any]:
    """Check a parsed result file (see `read_results`); errors name `path`."""
    if not isinstance(document, dict):
        raise InvalidInputError(f"{path}: not an ftbench result file (top level is not an object)")
    missing = [key for key in ("schema", "kind", "environment", "records") if key not in document]
    if missing:
        fields = ", ".join(missing)
        raise InvalidInputError(f"{path}: not an ftbench result file (missing {fields})")
    if document["schema"] != SCHEMA:
        raise InvalidInputError(
            f"{path}: result schema {document['schema']} is not supported (this ftbench reads "
            f"schema {SCHEMA})"
        )
    if not isinstance(document["kind"], str):
        raise InvalidInputError(f"{path}: 'kind' must be a string, got {document['kind']!r}")
    if not isinstance(document["records"], list):
        raise InvalidInputError(f"{path}: 'records' must be a list")
    try:
        document["environment"] = EnvironmentRecord.from_dict(document["environment"])
    except (TypeError, AttributeError, ValueError) as exc:
        raise InvalidInputError(f"{path}: malformed environment record ({exc})") from exc
    return document


def write_acceptance(
    path: str | os.PathLike[str], name: str, summary: dict[str, Any], device: str, commit: str
) -> Path:
    """Write an acceptance summary atomically: {schema, kind: "acceptance", name, device,
    commit, ...summary}; `name` says which benchmark (e.g. "tune"), `device` the machine (e.g.
    "nvidia-h200 (NVIDIA H200)", `EnvironmentRecord.device_label`)."""
    header = {"schema": SCHEMA, "kind": ACCEPTANCE, "name": name, "device": device}
    return write_json_atomic(path, {**header, "commit": commit, **summary})
