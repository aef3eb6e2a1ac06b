"""The dispatcher between polls: when the outbox is delivered, the backoff after a dispatch
that raised, and the outbox summary the status and metrics show.

Delivery runs right after a poll that found events, when the earliest pending row falls due,
and within ``OUTBOX_RECHECK`` seconds of another process making a row due (``outbox retry``).
Rows of channels that are not configured are never due."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Final

from notifier.daemon.schedule import DISPATCH_RETRY, dispatch_failure_delay
from notifier.daemon.status import dispatch_counts
from notifier.errors import NotifierError, error_line
from notifier.store.startup import is_outage
from notifier.store.status import next_attempt_at, outbox_summary

if TYPE_CHECKING:
    from notifier.daemon.loop import Daemon

logger = logging.getLogger("notifier.daemon")

#: Look for rows made due by others (`outbox retry`, `outbox reassign`) this often: one
#: indexed query (the earliest next attempt), so a retry takes effect within seconds.
OUTBOX_RECHECK: Final = 5.0
SUMMARY_MAX_AGE: Final = 30.0


def dispatch_soon(daemon: Daemon, when: float) -> None:
    """Dispatch at ``when`` or earlier as planned, but never inside a failure backoff."""
    daemon._dispatch_at = max(min(daemon._dispatch_at, when), daemon._dispatch_not_before)


def maybe_dispatch(daemon: Daemon) -> None:
    if daemon._dispatch_job is not None or daemon._components is None:
        return
    now = daemon._clock()
    if now >= daemon._recheck_at:
        recheck_outbox(daemon, now)
    if now < daemon._dispatch_at or now < daemon._dispatch_not_before:
        return
    components = daemon._components
    daemon._dispatch_at = math.inf  # set again when the dispatch reports (or fails)
    daemon._dispatch_job = daemon._submit(components.dispatcher.dispatch_due)


def recheck_outbox(daemon: Daemon, now: float) -> None:
    """Notice rows others made due (``outbox retry``): one cheap indexed query."""
    daemon._recheck_at = now + OUTBOX_RECHECK
    recheck_rests(daemon, now)
    try:
        earliest = next_attempt_at(daemon.engine, channel_names(daemon))
    except NotifierError as exc:
        logger.debug("cannot look at the outbox: %s", exc)
        return
    if earliest is not None:
        dispatch_soon(daemon, now + max(0.0, earliest / 1000 - daemon._wall()))


def dispatch_failed(daemon: Daemon, exc: BaseException) -> None:
    """Back off (DISPATCH_RETRY doubling up to DISPATCH_FAILURE_BACKOFF_MAX); log the
    traceback once per kind of failure, later ones of that kind as one debug line."""
    daemon._dispatch_failures += 1
    delay = dispatch_failure_delay(daemon._dispatch_failures)
    now = daemon._clock()
    daemon._dispatch_not_before = now + delay
    daemon._dispatch_at = daemon._dispatch_not_before
    kind = type(exc).__name__
    if kind not in daemon._dispatch_error_kinds:
        daemon._dispatch_error_kinds.add(kind)
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
            daemon._dispatch_failures,
            error_line(exc),
            delay,
        )


def dispatch_succeeded(daemon: Daemon) -> None:
    if daemon._dispatch_failures:
        logger.info(
            "dispatching deliveries works again after %d failed attempt(s)",
            daemon._dispatch_failures,
        )
    daemon._dispatch_failures = 0
    daemon._dispatch_error_kinds.clear()
    daemon._dispatch_not_before = -math.inf


def channel_names(daemon: Daemon) -> list[str]:
    return [channel.name for channel in daemon.config.channels]


def record_dispatch(daemon: Daemon, stats: Any) -> None:
    counts = dispatch_counts(stats)
    for result, count in counts.items():
        if count:
            daemon.metrics.inc("deliveries_total", count, result=result)
    # next run: when the earliest pending row is due (refreshed below); when this run
    # attempted nothing although rows were due, do not spin on them
    daemon._idle_dispatch = bool(counts) and not any(counts.values())
    refresh_summary(daemon, force=True)
    schedule_dispatch_from_summary(daemon)


def schedule_dispatch_from_summary(daemon: Daemon) -> None:
    summary = daemon._summary
    now = daemon._clock()
    if summary.due:
        delay = DISPATCH_RETRY if daemon._idle_dispatch else 0.0
        daemon._dispatch_at = max(now + delay, daemon._dispatch_not_before)
        return
    if summary.next_attempt_at is not None:
        delay = max(0.0, summary.next_attempt_at / 1000 - daemon._wall())
        dispatch_soon(daemon, now + delay)


def refresh_summary(daemon: Daemon, *, force: bool = False) -> None:
    now = daemon._clock()
    if not force and not daemon._summary_dirty and now - daemon._summary_at < SUMMARY_MAX_AGE:
        return
    try:
        daemon._summary = outbox_summary(
            daemon.engine, int(daemon._wall() * 1000), channel_names(daemon)
        )
    except NotifierError as exc:
        if not daemon._summary_failing:  # once per outage, not every cycle
            logger.warning("cannot read the outbox: %s", error_line(exc))
        daemon._summary_failing = True
        return
    daemon._summary_failing = False
    daemon._summary_at = now
    daemon._summary_dirty = False
    summary = daemon._summary
    daemon.metrics.set("outbox_depth", summary.pending)
    daemon.metrics.set("outbox_dead", summary.dead)
    age = summary.oldest_pending_age(int(daemon._wall() * 1000))
    daemon.metrics.set("outbox_oldest_pending_age_seconds", age or 0.0)
    if daemon._dispatch_job is None:
        schedule_dispatch_from_summary(daemon)


def recheck_rests(daemon: Daemon, now: float) -> None:
    """Poll a resting source at once when its stored rest was cleared (``source
    clear-rest``: the credentials were fixed) or ended."""
    resting = [s for s in daemon._schedules.values() if s.rest_until is not None]
    if not resting:
        return
    states = daemon._known_states()
    wall_ms = daemon._wall() * 1000
    for schedule in resting:
        stored = getattr(states.get(schedule.name), "rest_until", None)
        if isinstance(stored, int) and stored > wall_ms:
            continue
        logger.info("%s: the credential rest is over; polling it now", schedule.name)
        schedule.rest_until = schedule.rest_reason = None
        if schedule.job is None:
            schedule.next_at = min(schedule.next_at, now)
