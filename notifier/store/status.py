"""Read-only summaries for ``status``, ``STATUS=``, ``/healthz`` and ``/metrics``.

Two cheap queries: the ``source_state`` rows, and the outbox counted by state (the
``ix_outbox_due`` index covers both). Times are integer milliseconds since the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def oldest_pending_age(self, now_ms: int) -> float | None:
        """Seconds since the oldest undelivered row was written, None when none waits."""
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (now_ms - self.oldest_pending_at) / 1000)


def source_statuses(engine: Engine) -> dict[str, SourceState]:
    """Every source's stored state, by source name."""
    return {state.source: state for state in Repository(engine).source_states()}


def outbox_summary(engine: Engine, now_ms: int) -> OutboxSummary:
    by_state = select(
        outbox.c.state,
        func.count(),
        func.min(outbox.c.created_at),
        func.min(outbox.c.next_attempt_at),
    ).group_by(outbox.c.state)
    due = select(func.count()).where(
        outbox.c.state == "pending", outbox.c.next_attempt_at <= now_ms
    )
    try:
        with engine.connect() as connection:
            rows = connection.execute(by_state).all()
            due_count = connection.execute(due).scalar_one()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the outbox: {exc}") from exc
    counts = {row[0]: (int(row[1]), row[2], row[3]) for row in rows}
    pending, oldest, next_attempt = counts.get("pending", (0, None, None))
    return OutboxSummary(
        pending=pending,
        due=int(due_count),
        oldest_pending_at=oldest,
        next_attempt_at=next_attempt,
        dead=counts.get("dead", (0, None, None))[0],
        sent=counts.get("sent", (0, None, None))[0],
    )
