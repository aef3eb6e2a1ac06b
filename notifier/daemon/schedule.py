"""The run loop's timetable: plain values in, seconds out; no clock, no I/O, no randomness.

Per source: ``active_poll_interval`` after a poll that saw a watched operation waiting or
processing, ``poll_interval`` otherwise, each spread by ``poll_jitter``; in incremental mode
neither is longer than ``full_poll_interval`` (the complete listing is due by then). After a
failure the delay backs off from the active interval, doubling, up to the idle one; a server's
``Retry-After`` is a floor, and a refused AK/SK signature waits at least its rest (300 s:
five refusals lock the key). A dispatch that raised is retried after ``DISPATCH_RETRY``
doubling up to ``DISPATCH_FAILURE_BACKOFF_MAX``. A poll running past :func:`stuck_after` hangs.

The jitter ``spread`` is a draw in [-1, 1] the caller supplies (the daemon's seeded RNG).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from notifier.backoff import compute_backoff

if TYPE_CHECKING:
    from notifier.config import SourceConfig

SIGNATURE_BACKOFF: Final = 300.0  # five refused signatures lock an AK for five minutes
DISPATCH_RETRY: Final = 5.0  # due rows the dispatcher did not attempt: look again after this
#: A dispatch that raised (the store is locked or gone, a bug) is retried after
#: DISPATCH_RETRY, doubling per failure in a row up to this, never in a tight loop.
DISPATCH_FAILURE_BACKOFF_MAX: Final = 300.0
#: The loop never sleeps longer than this, whatever the timetable says.
MAX_SLEEP: Final = 3600.0
#: A hung poll is one running longer than this many worst-case fetches (and 300 s at least).
STUCK_FACTOR: Final = 4
STUCK_MIN: Final = 300.0


def jittered(seconds: float, jitter: float, spread: float) -> float:
    """``seconds`` moved by up to ``jitter`` (a fraction of it) times ``spread`` in [-1, 1]."""
    if jitter <= 0:
        return seconds
    return seconds * (1 + jitter * spread)


def poll_interval(
    *,
    active: bool,
    active_interval: float,
    idle_interval: float,
    full_interval: float | None = None,
    jitter: float = 0.0,
    spread: float = 0.0,
) -> float:
    """The delay to a source's next poll after one that worked; ``full_interval`` (the
    incremental mode's complete listing) bounds it when given."""
    base = active_interval if active else idle_interval
    if full_interval is not None:
        base = min(base, full_interval)
    return jittered(base, jitter, spread)


def failure_interval(
    failures: int,
    *,
    active_interval: float,
    idle_interval: float,
    jitter: float = 0.0,
    spread: float = 0.0,
    retry_after: float | None = None,
    signature_rest: float | None = None,
) -> float:
    """The delay after ``failures`` failed polls in a row (1 for the first).

    ``retry_after``: what the server asked for (a floor when positive). ``signature_rest``:
    set when the AK/SK signature was refused, the least wait (a longer ``retry_after`` wins).
    """
    backoff = compute_backoff(failures, base=active_interval, cap=idle_interval, max_exponent=20)
    delay = jittered(backoff, jitter, spread)
    if signature_rest is not None:
        floor = signature_rest
        if retry_after is not None and retry_after > floor:
            floor = retry_after
        return max(delay, float(floor))
    if retry_after is not None and retry_after > 0:
        return max(delay, float(retry_after))
    return delay


def dispatch_failure_delay(failures: int) -> float:
    """The wait after ``failures`` dispatches in a row raised (1 for the first)."""
    return compute_backoff(
        failures, base=DISPATCH_RETRY, cap=DISPATCH_FAILURE_BACKOFF_MAX, max_exponent=16
    )


def stuck_limit(timeout: float, max_retries: int) -> float:
    """Seconds after which a poll with this request timeout and retry count hangs."""
    worst_fetch = timeout * (max_retries + 1) * 2  # API + auth round trips
    return max(STUCK_MIN, worst_fetch * STUCK_FACTOR)


def stuck_after(source: SourceConfig) -> float:
    """A poll running longer than this is hung: the watchdog stops being fed."""
    return stuck_limit(source.timeout, source.max_retries)


def is_stuck(started: float | None, now: float, limit: float) -> bool:
    """Whether a job started at ``started`` (None: nothing runs) has run past ``limit``."""
    return started is not None and now - started > limit


def sleep_time(now: float, deadlines: Iterable[float], watchdog_interval: float | None) -> float:
    """How long the loop may sleep: until the earliest deadline, at most one watchdog
    interval and ``MAX_SLEEP``, never negative."""
    delay = min(deadlines, default=now + MAX_SLEEP) - now
    if watchdog_interval:
        delay = min(delay, watchdog_interval)
    return max(0.0, min(delay, MAX_SLEEP))
