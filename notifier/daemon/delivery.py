"""The dispatcher between polls: when the outbox is delivered, the backoff after a dispatch
that raised, and the outbox summary the status and metrics show.

Delivery runs right after a poll that found events, when the earliest pending row falls due,
and within ``OUTBOX_RECHECK`` seconds of another process making a row due (``outbox retry``).
Rows of channels that are not configured are never due."""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from notifier.daemon.schedule import DISPATCH_RETRY, dispatch_failure_delay
from notifier.daemon.status import dispatch_counts
from notifier.errors import NotifierError, error_line
from notifier.store.startup import is_outage
from notifier.store.status import OutboxSummary, next_attempt_at, outbox_summary

if TYPE_CHECKING:
    from notifier.daemon.loop import Daemon

logger = logging.getLogger("notifier.daemon")

#: Look for rows made due by others (`outbox retry`, `outbox reassign`) this often: one
#: indexed query (the earliest next attempt), so a retry takes effect within seconds.
OUTBOX_RECHECK: Final = 5.0
SUMMARY_MAX_AGE: Final = 30.0


@dataclass
class DispatchState:
    """The run loop's delivery state (``Daemon.dispatching``): times are monotonic seconds."""

    #: the running dispatch, if any (at most one at a time)
    job: Future[Any] | None = None
    #: dispatch at this time or later (``math.inf`` while one runs)
    at: float = 0.0
    #: the backoff after a dispatch that raised: no dispatch before this time
    not_before: float = -math.inf
    failures: int = 0
    #: the kinds of dispatch failure whose traceback was logged (once per kind)
    error_kinds: set[str] = field(default_factory=set)
    #: the next look for rows others made due (``outbox retry``)
    recheck_at: float = -math.inf
    #: the last dispatch attempted nothing although rows were due
    idle: bool = False
    summary: OutboxSummary = field(default_factory=OutboxSummary)
    summary_at: float = -math.inf
    summary_dirty: bool = True
    #: reading the summary failed (warned once per outage)
    summary_failing: bool = False


def dispatch_soon(daemon: Daemon, when: float) -> None:
    """Dispatch at ``when`` or earlier as planned, but never inside a failure backoff."""
    state = daemon.dispatching
    state.at = max(min(state.at, when), state.not_before)


def maybe_dispatch(daemon: Daemon) -> None:
    state = daemon.dispatching
    if state.job is not None or daemon.components is None:
        return
    now = daemon.clock.monotonic()
    if now >= state.recheck_at:
        recheck_outbox(daemon, now)
    if now < state.at or now < state.not_before:
        return
    components = daemon.components
    state.at = math.inf  # set again when the dispatch reports (or fails)
    state.job = daemon.submit(components.dispatcher.dispatch_due)


def recheck_outbox(daemon: Daemon, now: float) -> None:
    """Notice rows others made due (``outbox retry``): one cheap indexed query."""
    daemon.dispatching.recheck_at = now + OUTBOX_RECHECK
    recheck_rests(daemon, now)
    try:
        earliest = next_attempt_at(daemon.engine, channel_names(daemon))
    except NotifierError as exc:
        logger.debug("cannot look at the outbox: %s", exc)
        return
    if earliest is not None:
        dispatch_soon(daemon, now + max(0.0, (earliest - daemon.clock.wall_ms()) / 1000))


def dispatch_failed(daemon: Daemon, exc: BaseException) -> None:
    """Back off (DISPATCH_RETRY doubling up to DISPATCH_FAILURE_BACKOFF_MAX); log the
    traceback once per kind of failure, later ones of that kind as one debug line."""
    state = daemon.dispatching
    state.failures += 1
    delay = dispatch_failure_delay(state.failures)
    now = daemon.clock.monotonic()
    state.not_before = now + delay
    state.at = state.not_before
    kind = type(exc).__name__
    if kind not in state.error_kinds:
        state.error_kinds.add(kind)
        logger.error(
            "dispatching deliveries failed (%s); retrying in %.0fs, backing off while it "
            "keeps failing (logged once per kind of failure)",
            error_line(exc),
            delay,
            exc_info=None if is_outage(exc) else exc,
        )
    else:
        logger.debug(
            "dispatching deliveries failed again (%d in a row: %s); retrying in %.0fs",
            state.failures,
            error_line(exc),
            delay,
        )


def dispatch_succeeded(daemon: Daemon) -> None:
    state = daemon.dispatching
    if state.failures:
        logger.info(
            "dispatching deliveries works again after %d failed attempt(s)",
            state.failures,
        )
    state.failures = 0
    state.error_kinds.clear()
    state.not_before = -math.inf


def channel_names(daemon: Daemon) -> list[str]:
    return [channel.name for channel in daemon.config.channels]


def record_dispatch(daemon: Daemon, stats: Any) -> None:
    counts = dispatch_counts(stats)
    for result, count in counts.items():
        if count:
            daemon.metrics.inc("deliveries_total", count, result=result)
    # next run: when the earliest pending row is due (refreshed below); when this run
    # attempted nothing although rows were due, do not spin on them
    daemon.dispatching.idle = bool(counts) and not any(counts.values())
    refresh_summary(daemon, force=True)
    schedule_dispatch_from_summary(daemon)


def schedule_dispatch_from_summary(daemon: Daemon) -> None:
    state = daemon.dispatching
    summary = state.summary
    now = daemon.clock.monotonic()
    if summary.due:
        delay = DISPATCH_RETRY if state.idle else 0.0
        state.at = max(now + delay, state.not_before)
        return
    if summary.next_attempt_at is not None:
        delay = max(0.0, (summary.next_attempt_at - daemon.clock.wall_ms()) / 1000)
        dispatch_soon(daemon, now + delay)


def refresh_summary(daemon: Daemon, *, force: bool = False) -> None:
    state = daemon.dispatching
    now = daemon.clock.monotonic()
    if not force and not state.summary_dirty and now - state.summary_at < SUMMARY_MAX_AGE:
        return
    now_ms = daemon.clock.wall_ms()
    try:
        state.summary = outbox_summary(daemon.engine, now_ms, channel_names(daemon))
    except NotifierError as exc:
        if not state.summary_failing:  # once per outage, not every cycle
            logger.warning("cannot read the outbox: %s", error_line(exc))
        state.summary_failing = True
        return
    state.summary_failing = False
    state.summary_at = now
    state.summary_dirty = False
    summary = state.summary
    daemon.metrics.set("outbox_depth", summary.pending)
    daemon.metrics.set("outbox_dead", summary.dead)
    age = summary.oldest_pending_age(now_ms)
    daemon.metrics.set("outbox_oldest_pending_age_seconds", age or 0.0)
    if state.job is None:
        schedule_dispatch_from_summary(daemon)


def recheck_rests(daemon: Daemon, now: float) -> None:
    """Poll a resting source at once when its stored rest was cleared (``source
    clear-rest``: the credentials were fixed) or ended."""
    resting = [s for s in daemon.schedules.values() if s.rest_until is not None]
    if not resting:
        return
    states = daemon.known_states()
    wall_ms = daemon.clock.wall_ms()
    for schedule in resting:
        stored = getattr(states.get(schedule.name), "rest_until", None)
        if isinstance(stored, int) and stored > wall_ms:
            continue
        logger.info("%s: the credential rest is over; polling it now", schedule.name)
        schedule.rest_until = schedule.rest_reason = None
        if schedule.job is None:
            schedule.next_at = min(schedule.next_at, now)
