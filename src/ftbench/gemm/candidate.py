"""`Candidate`: one way to run a GEMM problem, as data that can be listed, stored and replayed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ftbench.errors import InvalidInputError

BACKEND_NAMES = ("cublas", "cublaslt", "cutlass", "ftbench")


@dataclass(frozen=True)
class Candidate:
    """A backend and its full configuration (JSON-ready values only)."""

    backend: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKEND_NAMES:
            raise InvalidInputError(
                f"unknown backend {self.backend!r}; choose from {', '.join(BACKEND_NAMES)}"
            )

    def key(self) -> str:
        """Stable identity: the backend and its configuration, not the display name."""
        return f"{self.backend}:{json.dumps(self.config, sort_keys=True, separators=(',', ':'))}"

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "name": self.name, "config": dict(self.config)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        try:
            return cls(backend=data["backend"], name=data["name"], config=dict(data["config"]))
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"malformed candidate record {data!r}") from exc
