"""Clocks of the simulator.

A simulator clock has two readings:

* ``now_ns()``: **simulated time**, which drives the scenario (operation lifecycles and the
  timestamps inside records);
* ``wall_ns()``: **gateway time**, which the simulated API gateway and IAM compare clients'
  clocks with (``X-Sdk-Date`` skew, token expiry, the ``Date`` header).

With the :class:`ManualClock` both readings are the same number and only move when told
(tests never sleep). With the :class:`ScaledClock` simulated time runs ``speed`` times faster
than real time while gateway time stays real time, so a real client keeps working for hours
against a fast-forwarded back end (its ``X-Sdk-Date`` would otherwise drift out of the
15-minute window). ``advance()`` moves both readings of either clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

NS_PER_SECOND = 1_000_000_000


class SimClock(Protocol):
    """What the simulator reads time from."""

    def now_ns(self) -> int:
        """Simulated time, nanoseconds since the epoch."""
        ...

    def wall_ns(self) -> int:
        """Gateway time, nanoseconds since the epoch."""
        ...

    def advance(self, seconds: float) -> None:
        """Move both readings forward by ``seconds`` of simulated time."""
        ...

    def time(self) -> float:
        """Gateway time as ``time.time()`` would return it (for clients under test)."""
        ...


def to_ns(moment: datetime | float | int) -> int:
    """An aware datetime or Unix seconds to nanoseconds since the epoch."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError("the simulator start time must be timezone-aware")
        delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
        return (delta.days * 86_400 + delta.seconds) * NS_PER_SECOND + delta.microseconds * 1000
    return round(moment * NS_PER_SECOND)


class ManualClock:
    """A clock that moves only through :meth:`advance` (or :meth:`set`)."""

    def __init__(self, start: datetime | float | int | None = None) -> None:
        if start is None:
            self._now = time.time_ns() // NS_PER_SECOND * NS_PER_SECOND
        else:
            self._now = to_ns(start)
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def wall_ns(self) -> int:
        return self.now_ns()

    def time(self) -> float:
        return self.wall_ns() / NS_PER_SECOND

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the simulator clock never goes backwards")
        with self._lock:
            self._now += round(seconds * NS_PER_SECOND)

    def set(self, moment: datetime | float | int) -> None:
        """Jump to ``moment`` (never backwards)."""
        target = to_ns(moment)
        with self._lock:
            if target < self._now:
                raise ValueError("the simulator clock never goes backwards")
            self._now = target

    def __repr__(self) -> str:
        return f"ManualClock(now_ns={self.now_ns()})"


class ScaledClock:
    """Simulated time runs ``speed`` times faster than real time; gateway time is real.

    ``start`` is the simulated time at construction (default: now, whole seconds).
    """

    def __init__(
        self,
        speed: float,
        start: datetime | float | int | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        real_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive (use ManualClock for a stopped clock)")
        self.speed = speed
        self._monotonic = monotonic
        self._origin_mono = monotonic()
        self._origin_wall = real_ns()
        if start is None:
            self._origin_sim = self._origin_wall // NS_PER_SECOND * NS_PER_SECOND
        else:
            self._origin_sim = to_ns(start)
        self._offset = 0
        self._lock = threading.Lock()

    def _elapsed(self) -> float:
        return self._monotonic() - self._origin_mono

    def now_ns(self) -> int:
        with self._lock:
            offset = self._offset
        return self._origin_sim + round(self._elapsed() * self.speed * NS_PER_SECOND) + offset

    def wall_ns(self) -> int:
        with self._lock:
            offset = self._offset
        return self._origin_wall + round(self._elapsed() * NS_PER_SECOND) + offset

    def time(self) -> float:
        return self.wall_ns() / NS_PER_SECOND

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the simulator clock never goes backwards")
        with self._lock:
            self._offset += round(seconds * NS_PER_SECOND)

    def __repr__(self) -> str:
        return f"ScaledClock(speed={self.speed}, now_ns={self.now_ns()})"
