"""Fault injection: the next N responses of the simulated API misbehave on purpose."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Final


class FaultKind(StrEnum):
    """What an injected fault does to one response."""

    SERVER_ERROR = "500"  # BCS.5000500 JSON body
    BAD_GATEWAY = "502"  # an HTML error page from the gateway
    THROTTLED = "429"  # APIGW.0308, optionally with Retry-After
    UNAUTHORIZED = "401"  # BCS.4010401 although the credentials are fine
    FORBIDDEN = "403"  # BCS.4030403
    SLOW = "slow"  # answer normally after ``delay`` real seconds
    DISCONNECT = "disconnect"  # close the connection without answering
    TRUNCATED = "truncated"  # a 200 whose JSON body is cut in half
    COUNT = "count"  # ``count`` larger than the records returned


#: faults decided before the request is handled; the others alter a successful body
REQUEST_FAULTS: Final = frozenset(
    {
        FaultKind.SERVER_ERROR,
        FaultKind.BAD_GATEWAY,
        FaultKind.THROTTLED,
        FaultKind.UNAUTHORIZED,
        FaultKind.FORBIDDEN,
        FaultKind.SLOW,
        FaultKind.DISCONNECT,
    }
)
BODY_FAULTS: Final = frozenset({FaultKind.TRUNCATED, FaultKind.COUNT})
TARGETS: Final = ("bcs", "iam", "any")


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    target: str = "bcs"
    delay: float = 5.0  # SLOW: real seconds before answering
    retry_after: int | None = None  # THROTTLED: Retry-After header value
    drop: int = 1  # COUNT: records left out of the list (count stays the true total)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"fault target must be one of {TARGETS}, not {self.target!r}")
        if self.delay < 0:
            raise ValueError("delay must not be negative")
        if self.drop < 1:
            raise ValueError("drop must be at least 1")
        if self.kind is FaultKind.COUNT and self.target == "iam":
            raise ValueError("a count fault only applies to the BCS API")

    def applies_to(self, target: str) -> bool:
        return self.target in ("any", target)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = str(self.kind)
        return data

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> tuple[Fault, int]:
        """A fault and its count from control-endpoint parameters (``ValueError`` if bad)."""
        kind = FaultKind(query.get("kind", ""))
        retry_after = query.get("retry_after")
        fault = cls(
            kind=kind,
            target=query.get("target", "bcs"),
            delay=float(query.get("delay", "5")),
            retry_after=int(retry_after) if retry_after not in (None, "") else None,
            drop=int(query.get("drop", "1")),
        )
        count = int(query.get("count", "1"))
        if count < 1:
            raise ValueError("count must be at least 1")
        return fault, count


class FaultQueue:
    """Pending faults, consumed first in, first out by the responses they apply to."""

    def __init__(self) -> None:
        self._pending: list[Fault] = []
        self._lock = threading.Lock()

    def inject(self, fault: Fault, count: int = 1) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._pending.extend([fault] * count)

    def take(self, target: str, kinds: frozenset[FaultKind]) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._pending):
                if fault.kind in kinds and fault.applies_to(target):
                    return self._pending.pop(index)
        return None

    def pending(self) -> list[Fault]:
        with self._lock:
            return list(self._pending)

    def clear(self) -> int:
        with self._lock:
            dropped = len(self._pending)
            self._pending.clear()
        return dropped
