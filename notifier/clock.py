"""The one clock of the service, and the one way it writes a time.

Two readings, one unit each:

- **wall time** (:meth:`Clock.wall_ms`): integer milliseconds since the epoch (UTC), for
  everything stored, compared with stored values or shown (``last_poll_at``, rests,
  ``next_attempt_at``, ``/healthz``). The API's nanoseconds stay at its edge (``bcs/``
  parsing, ``Record.record_time``); Prometheus metrics print seconds, converted where they
  are set.
- **durations** (:meth:`Clock.monotonic`): float seconds on a clock that never jumps, for
  intervals and deadlines inside one process (the next poll, a stop grace, pacing).

Every part of the service that needs the time takes a :class:`Clock` (``SYSTEM_CLOCK``
by default); tests pass a fake one that moves only when told to.

:func:`iso` writes a wall time for people: each place that shows one picks its style, so
the outputs stay what they were (``2024-01-15T08:30:00Z`` in ``/healthz`` and the CLI,
``2024-01-15 08:30:00Z`` in the systemd status line, ``2024-01-15T08:30:00+00:00`` in the
API's error messages, ``08:30:00 UTC`` for a login rest).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Final, Literal, Protocol, TypeAlias

MS_PER_SECOND: Final = 1000


class Clock(Protocol):
    """What the service reads the time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (only differences mean anything)."""
        ...

    def wall_ms(self) -> int:
        """Milliseconds since the epoch (UTC)."""
        ...


class SystemClock:
    """The host's clocks: ``time.monotonic`` and ``time.time_ns``."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def __repr__(self) -> str:
        return "SYSTEM_CLOCK"


SYSTEM_CLOCK: Final[Clock] = SystemClock()


def ms_from_seconds(seconds: float) -> int:
    """Epoch seconds (a float, as ``time.time`` or a ``Date`` header gives) as wall ms."""
    return int(seconds * MS_PER_SECOND)


def epoch_seconds(clock: Clock) -> float:
    """The clock's wall time in epoch seconds: for the API's edge (``bcs/``), where every
    time it is compared with (``Date``, ``Retry-After``, token expiry) is in seconds."""
    return clock.wall_ms() / MS_PER_SECOND


def seconds_from_ms(milliseconds: int) -> float:
    """Wall ms as epoch seconds: the metrics edge (Prometheus prints seconds)."""
    return milliseconds / MS_PER_SECOND


IsoStyle: TypeAlias = Literal["z", "space", "offset", "time"]

_FORMATS: Final[dict[str, str]] = {
    "z": "%Y-%m-%dT%H:%M:%SZ",
    "space": "%Y-%m-%d %H:%M:%SZ",
    "time": "%H:%M:%S UTC",
}


def iso(milliseconds: int, style: IsoStyle = "z") -> str:
    """A wall time (ms) in UTC to the second (the fraction is dropped, not rounded):

    ``"z"`` ``2024-01-15T08:30:00Z``, ``"space"`` ``2024-01-15 08:30:00Z``, ``"offset"``
    ``2024-01-15T08:30:00+00:00`` (``datetime.isoformat(timespec="seconds")``), ``"time"``
    ``08:30:00 UTC``."""
    moment = datetime.fromtimestamp(milliseconds // MS_PER_SECOND, tz=UTC)
    if style == "offset":
        return moment.isoformat(timespec="seconds")
    return moment.strftime(_FORMATS[style])
