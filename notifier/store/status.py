"""Read-only summaries for ``status``, ``STATUS=``, ``/healthz`` and ``/metrics``.

Two cheap queries: the ``source_state`` rows, and the outbox counted by state (the
``ix_outbox_due`` index covers both). Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import StoreError
from notifier.store.repository import Repository, SourceState
from notifier.store.schema import outbox


@dataclass(frozen=True, slots=True)
class OutboxSummary:
    pending: int = 0
    due: int = 0
    oldest_pending_at: int | None = None
    next_attempt_at: int | None = None  # earliest next_attempt_at of a pending row
    dead: int = 0
    sent: int = 0
    #: pending rows per channel that is not configured (they wait, never due); included
    #: in ``pending``, not in ``due``
    unconfigured: dict[str, int] = field(default_factory=dict)

    def oldest_pending_age(self, now_ms: int) -> float | None:
        """Seconds since the oldest undelivered row was written, None when none waits."""
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (now_ms - self.oldest_pending_at) / 1000)


def source_statuses(engine: Engine) -> dict[str, SourceState]:
    """Every source's stored state, by source name."""
    return {state.source: state for state in Repository(engine).source_states()}


def outbox_summary(
    engine: Engine, now_ms: int, channels: Iterable[str] | None = None
) -> OutboxSummary:
    """Counts by state. With ``channels`` (the configured names), rows of other channels
    are not ``due`` (nothing would send them) and are counted in ``unconfigured``; the
    ``next_attempt_at`` is that of a configured channel's row."""
    names = None if channels is None else list(channels)
    by_state = select(
        outbox.c.state,
        func.count(),
        func.min(outbox.c.created_at),
    ).group_by(outbox.c.state)
    waiting = [outbox.c.state == "pending"]
    if names is not None:
        waiting.append(outbox.c.channel.in_(names))
    due = select(func.count()).where(*waiting, outbox.c.next_attempt_at <= now_ms)
    next_attempt_query = select(func.min(outbox.c.next_attempt_at)).where(*waiting)
    orphans = (
        select(outbox.c.channel, func.count())
        .where(outbox.c.state == "pending", outbox.c.channel.not_in(names or []))
        .group_by(outbox.c.channel)
    )
    try:
        with engine.connect() as connection:
            rows = connection.execute(by_state).all()
            due_count = connection.execute(due).scalar_one()
            next_attempt = connection.execute(next_attempt_query).scalar()
            unconfigured = (
                {str(name): int(count) for name, count in connection.execute(orphans)}
                if names is not None
                else {}
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the outbox: {exc}") from exc
    counts = {row[0]: (int(row[1]), row[2]) for row in rows}
    pending, oldest = counts.get("pending", (0, None))
    return OutboxSummary(
        pending=pending,
        due=int(due_count),
        oldest_pending_at=oldest,
        next_attempt_at=next_attempt,
        dead=counts.get("dead", (0, None))[0],
        sent=counts.get("sent", (0, None))[0],
        unconfigured=unconfigured,
    )


def next_attempt_at(engine: Engine, channels: Iterable[str]) -> int | None:
    """The earliest ``next_attempt_at`` of a pending row of a configured channel (one
    query on the ``ix_outbox_due`` index); None when nothing waits."""
    query = select(func.min(outbox.c.next_attempt_at)).where(
        outbox.c.state == "pending", outbox.c.channel.in_(list(channels))
    )
    try:
        with engine.connect() as connection:
            value = connection.execute(query).scalar()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the outbox: {exc}") from exc
    return None if value is None else int(value)
