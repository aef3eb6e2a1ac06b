"""A scripted stand-in for ``BcsClient`` and the API example body moved on, for the tests
that run the real pipeline without HTTP (also imported by a crash test's child process)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from notifier.errors import SourceError


@dataclass
class Fetched:
    body: Any
    request_id: str | None = "req-1"


@dataclass
class ScriptedClient:
    """Returns the next scripted body, or raises the next scripted error."""

    script: list[Any] = field(default_factory=list)
    closed: bool = False

    def fetch(self) -> Fetched:
        item = self.script.pop(0)
        if isinstance(item, SourceError):
            raise item
        return Fetched(copy.deepcopy(item))

    def close(self) -> None:
        self.closed = True


@dataclass
class FixedClient:
    """Returns a copy of ``body`` on every fetch; a test changes ``body`` between polls."""

    body: Any

    def fetch(self) -> Fetched:
        return Fetched(copy.deepcopy(self.body))

    def close(self) -> None:
        return


def storage_failed(body: dict[str, Any]) -> dict[str, Any]:
    """The example body a minute later: its network storage sub-step, the step and the
    operation have failed ("disk quota exceeded")."""
    body = copy.deepcopy(body)
    operation = body["operation_records"][0]
    operation["operation_status"] = "failed"
    operation["record_time"] += 60_000_000_000
    dependent = operation["operation_process"]["Create Other Dependent Resource"]
    dependent["status"] = "failed"
    dependent["sub_steps"]["Create network storage"].update(
        status="failed",
        detail="",
        message=["disk quota exceeded"],
        start_time=operation["record_time"] - 5_000_000_000,
        end_time=operation["record_time"],
    )
    return body


def with_new_operation(body: dict[str, Any], status: str = "waiting") -> dict[str, Any]:
    """The body with a second operation, type "01" (BCSSVC01-01-1618218600000000000), in
    ``status``."""
    body = copy.deepcopy(body)
    new = copy.deepcopy(body["operation_records"][0])
    new["operation_id"] = "BCSSVC01-01-1618218600000000000"
    new["operation_type"] = "01"
    new["operation_status"] = status
    body["operation_records"].append(new)
    body["count"] = len(body["operation_records"])
    return body
