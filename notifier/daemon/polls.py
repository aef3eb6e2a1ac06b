"""What the run loop makes of a finished poll: metrics, logs, the source's next poll time,
its failure count and credential rest."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from notifier.clock import seconds_from_ms
from notifier.daemon.delivery import dispatch_soon
from notifier.errors import (
    AuthError,
    LeaseLost,
    NotifierError,
    SignatureRejected,
    SourceError,
    StoreError,
    error_line,
)
from notifier.model import Event, describe
from notifier.text import one_line

if TYPE_CHECKING:
    from notifier.daemon.loop import Daemon
    from notifier.daemon.seams import PollOutcome, SourceSchedule

logger = logging.getLogger("notifier.daemon")


def record_poll(daemon: Daemon, schedule: SourceSchedule, outcome: PollOutcome) -> None:
    name = schedule.name
    if name not in daemon.schedules or daemon.schedules[name] is not schedule:
        return  # the source was removed by a reload while it was polled
    if isinstance(outcome.error, LeaseLost):
        if daemon.leases is not None:
            daemon.leases.drop(name)
        daemon.recheck_leases()
        return  # nothing was written; whoever leads the source now polls it
    result = outcome.result
    duration = result.duration if result is not None else outcome.duration
    error: BaseException | None = outcome.error
    if result is not None and result.error is not None:
        error = result.error
    now_ms = daemon.clock.wall_ms()
    schedule.last_poll_at = now_ms
    daemon.metrics.inc("polls_total", source=name)
    daemon.metrics.observe("poll_duration_seconds", duration, source=name)
    events = list(result.events) if result is not None else []
    for event in events:
        daemon.metrics.inc("events_total", type=str(event.type))
        _log_event(event)
    if events:
        daemon.dispatching.summary_dirty = True
        dispatch_soon(daemon, daemon.clock.monotonic())
    if error is None and result is not None:
        if schedule.logged_failure is not None:
            logger.warning(
                "source %s: polling works again after %d failed poll(s)",
                name,
                schedule.failures,
            )
        elif schedule.failures:
            logger.info("source %s works again after %d failed poll(s)", name, schedule.failures)
        schedule.logged_failure = None
        schedule.failures = 0
        schedule.last_error = None
        schedule.last_error_kind = None
        schedule.rest_until = schedule.rest_reason = None
        schedule.last_success_at = now_ms
        schedule.active = bool(result.active)
        daemon.metrics.set("source_up", 1, source=name)
        daemon.metrics.set(
            "source_last_success_timestamp_seconds", seconds_from_ms(now_ms), source=name
        )
        interval = daemon.interval(schedule.config, active=schedule.active)
        logger.debug(
            "polled %s: %d record(s), %d event(s), %s, next in %.1fs",
            name,
            result.records,
            len(events),
            "active" if schedule.active else "idle",
            interval,
        )
    else:
        if error is None:  # pragma: no cover - a result without an error is handled above
            error = NotifierError("poll returned no result")
        schedule.failures += 1
        kind = error.kind if isinstance(error, SourceError) else "internal"
        if not isinstance(error, SourceError):
            log_unexpected(daemon, schedule, error)
        text = error.one_line() if isinstance(error, SourceError) else error_line(error)
        daemon.metrics.inc("poll_errors_total", source=name, kind=kind)
        daemon.metrics.set("source_up", 0, source=name)
        interval = daemon.failure_interval(schedule.config, schedule.failures, error)
        # the pipeline logs every failed fetch; here only what the scheduler decides
        if isinstance(error, SignatureRejected):
            logger.warning(
                "%s: the AK/SK signature was refused; not polling it for %.0fs "
                "(repeated refusals lock the key)",
                name,
                interval,
            )
        else:
            logger.debug(
                "%s: %d failed poll(s) in a row (%s); next try in %.0fs",
                name,
                schedule.failures,
                kind,
                interval,
            )
        schedule.last_error = text
        schedule.last_error_kind = kind
        if isinstance(error, AuthError):
            note_rest(daemon, schedule)
    daemon.metrics.set("source_consecutive_failures", schedule.failures, source=name)
    schedule.next_at = daemon.clock.monotonic() + interval


def log_unexpected(daemon: Daemon, schedule: SourceSchedule, error: BaseException) -> None:
    """A poll that failed outside the source (full disk, read-only database, a bug):
    logged in full once per kind, then one debug line per poll until one works."""
    kind = failure_kind(error)
    if kind == schedule.logged_failure:
        logger.debug(
            "polling source %s failed again (%d in a row): %s",
            schedule.name,
            schedule.failures + 1,
            error_line(error),
        )
        return
    schedule.logged_failure = kind
    logger.error(
        "polling source %s failed: %s (logged once until it works again or fails differently)",
        schedule.name,
        error_line(error),
        exc_info=None if isinstance(error, StoreError) else error,
    )


def note_rest(daemon: Daemon, schedule: SourceSchedule) -> None:
    """After a refused login or signature: the rest the poll stored, if any."""
    state = daemon.known_states().get(schedule.name)
    rest_ms = getattr(state, "rest_until", None)
    if isinstance(rest_ms, int) and rest_ms > daemon.clock.wall_ms():
        schedule.rest_until = rest_ms
        schedule.rest_reason = getattr(state, "last_error", None) or schedule.last_error
    else:
        schedule.rest_until = schedule.rest_reason = None


def _log_event(event: Event) -> None:
    if str(event.type).startswith("source."):
        return  # the pipeline logs health changes when it records them
    logger.info("%s", describe(event))


def failure_kind(error: BaseException) -> str:
    """What makes two failures "the same kind": the error type and the database's own
    message (``database or disk is full``, ``attempt to write a readonly database``)."""
    cause: BaseException | None = error
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    original = getattr(cause, "orig", None) or cause
    detail = one_line(original)[:80]
    return f"{type(error).__name__}/{type(original).__name__}: {detail}"
