"""The one fake :class:`notifier.clock.Clock` of the tests: both readings move together and
only when a test (or the code's injected ``sleep``/``wait``) moves them."""

from __future__ import annotations

from collections.abc import Callable


class SecondsClock:
    """A :class:`notifier.clock.Clock` read from a function giving epoch seconds (the
    simulator's clock): both readings follow it."""

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds

    def monotonic(self) -> float:
        return self._seconds()

    def wall_ms(self) -> int:
        return int(self._seconds() * 1000)


class FakeClock:
    """``now`` is the monotonic reading in seconds; the wall reading is ``wall_start_ms``
    plus the time that has passed since ``start``, in whole milliseconds.

    ``sleep``/``wait`` advance it and record the wait in ``sleeps``; ``at`` maps a
    monotonic time to an action run once a wait passes it."""

    def __init__(self, start: float = 0.0, *, wall_start_ms: int = 1_700_000_000_000) -> None:
        self.start = start
        self.now = start
        self.wall_start_ms = wall_start_ms
        self.sleeps: list[float] = []
        self.at: dict[float, Callable[[], None]] = {}

    @classmethod
    def at_wall(cls, seconds: float) -> FakeClock:
        """A clock whose monotonic reading equals the wall time in seconds (both start at
        ``seconds`` since the epoch): handy where a test speaks in epoch seconds."""
        return cls(seconds, wall_start_ms=round(seconds * 1000))

    # -- notifier.clock.Clock --

    def monotonic(self) -> float:
        return self.now

    def wall_ms(self) -> int:
        return self.wall_start_ms + round((self.now - self.start) * 1000)

    # -- moving it --

    def wall(self) -> float:
        """The wall time in epoch seconds (for tests that speak in seconds)."""
        return self.wall_ms() / 1000

    def advance(self, seconds: float) -> None:
        before, self.now = self.now, self.now + seconds
        for when, action in sorted(self.at.items()):
            if before < when <= self.now:
                del self.at[when]
                action()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def wait(self, seconds: float) -> None:
        """The run loop's ``wait`` (the daemon sleeps on its self-pipe)."""
        self.sleep(seconds)
