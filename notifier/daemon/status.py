"""What the run loop reports: the systemd status line, ``/healthz``, the watchdog pings
(withheld while a poll hangs or the database is lost), delivery counts for the metrics."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from notifier.clock import iso
from notifier.daemon.schedule import is_stuck, stuck_after
from notifier.errors import NotifierError
from notifier.health import HealthReport

if TYPE_CHECKING:
    from notifier.daemon.loop import Daemon

logger = logging.getLogger("notifier.daemon")


def hung_sources(daemon: Daemon) -> list[str]:
    now = daemon.clock.monotonic()
    hung = []
    for schedule in daemon.schedules.values():
        started = schedule.job_started
        if started is not None and is_stuck(started, now, stuck_after(schedule.config)):
            hung.append(schedule.name)
            if not schedule.stuck_reported:
                schedule.stuck_reported = True
                logger.error(
                    "polling %s has been running for %.0fs: it hangs; "
                    "no more watchdog pings so systemd restarts the service",
                    schedule.name,
                    now - started,
                )
    return hung


def feed_watchdog(daemon: Daemon) -> None:
    if not daemon.options.watchdog_interval:
        return
    if hung_sources(daemon) or daemon.database_lost is not None:
        return
    daemon.notifier.watchdog()


def status_line(daemon: Daemon) -> str:
    schedules = list(daemon.schedules.values())
    polled = [s.last_poll_at for s in schedules if s.last_poll_at is not None]
    parts = []
    if daemon.database_lost is not None:
        parts.append("DATABASE LOST, not polling")
    if polled:
        parts.append(f"last poll {iso(max(polled), 'space')}")
    else:
        parts.append("no poll yet")
    failing = [s.name for s in schedules if s.failures]
    if failing:
        parts.append(f"failing: {', '.join(sorted(failing))}")
    active = [s.name for s in schedules if s.active]
    if active:
        parts.append(f"active: {', '.join(sorted(active))}")
    summary = daemon.summary
    parts.append(f"outbox {summary.pending} pending, {summary.dead} dead")
    if daemon.leases is not None:
        led = daemon.leases.led()
        parts.append(f"leads {', '.join(led)}" if led else "standby")
    return "; ".join(parts)


def health(daemon: Daemon) -> HealthReport:
    """Fresh while the loop goes round and every source succeeded recently enough."""
    service = daemon.config.service
    http = service.http
    stale_after = http.stale_after if http is not None and http.stale_after > 0 else 0.0
    if not stale_after:
        stale_after = 3 * service.poll_interval + service.unreachable_after
    now_ms = daemon.clock.wall_ms()
    reasons: list[str] = []
    loop_age = (now_ms - daemon.last_cycle_at_ms) / 1000
    watchdog_bound = max(stale_after, 3 * (daemon.options.watchdog_interval or 0))
    if loop_age > watchdog_bound:
        reasons.append(f"the run loop last went round {loop_age:.0f}s ago")
    sources: dict[str, Any] = {}
    for schedule in daemon.schedules.values():
        # a restart gets a fresh window: downtime before it is not the loop's fault
        age = (now_ms - max(schedule.last_success_at or 0, daemon.started_at_ms)) / 1000
        sources[schedule.name] = {
            "last_success": _iso(schedule.last_success_at),
            "consecutive_failures": schedule.failures,
            "last_error": schedule.last_error,
            "resting_until": _iso(schedule.rest_until),
            "rest_reason": schedule.rest_reason,
        }
        if daemon.leases is not None:
            leads = daemon.leases.leads(schedule.name)
            sources[schedule.name]["leader"] = leads
            if not leads:
                continue  # another instance polls it: its freshness is not ours to judge
        if age > stale_after:
            reasons.append(f"source {schedule.name}: no successful poll for {age:.0f}s")
    if daemon.database_lost is not None:
        reasons.append(daemon.database_lost)
    if daemon.stopping:
        reasons.append("stopping")
    details = {
        "sources": sources,
        "outbox": {"pending": daemon.summary.pending, "dead": daemon.summary.dead},
        "stale_after": stale_after,
    }
    if daemon.leases is not None:
        details["instance"] = daemon.leases.holder
        details["cluster"] = cluster_view(daemon)
    return HealthReport(not reasons, tuple(reasons), details)


def cluster_view(daemon: Daemon) -> Any:
    """Every instance on the database and what it leads (for ``/healthz``)."""
    from notifier.store.lease import leadership

    try:
        view = leadership(daemon.engine)
    except NotifierError as exc:
        return {"error": str(exc)}
    return None if view is None else view.to_dict()


#: ``DispatchStats`` field -> ``deliveries_total{result=...}`` label
DELIVERY_RESULTS: Final = {
    "sent": "sent",
    "failed": "retry",
    "retried": "retry",
    "dead": "dead",
    "deferred": "deferred",
}


def dispatch_counts(stats: Any) -> dict[str, int]:
    """Delivery counts by result label from a ``DispatchStats`` (or a mapping of them)."""
    counts: dict[str, int] = {}
    if stats is None:
        return counts
    for field_name, label in DELIVERY_RESULTS.items():
        if isinstance(stats, Mapping):
            value = stats.get(field_name)
        else:
            value = getattr(stats, field_name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            counts[label] = counts.get(label, 0) + value
    return counts


def _iso(milliseconds: int | None) -> str | None:
    return None if milliseconds is None else iso(milliseconds)
