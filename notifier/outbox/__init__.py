"""The transactional outbox's consumer (see :mod:`notifier.outbox.dispatcher`)."""

from notifier.outbox.dispatcher import (
    DEAD,
    PENDING,
    SENT,
    STATES,
    UNCONFIGURED_REMINDER,
    ChannelStats,
    Dispatcher,
    DispatchStats,
    OutboxEntry,
    backoff_seconds,
    counts_by_state,
    list_entries,
    purge,
    reassign,
    retry,
    unconfigured_counts,
)

__all__ = [
    "DEAD",
    "PENDING",
    "SENT",
    "STATES",
    "UNCONFIGURED_REMINDER",
    "ChannelStats",
    "DispatchStats",
    "Dispatcher",
    "OutboxEntry",
    "backoff_seconds",
    "counts_by_state",
    "list_entries",
    "purge",
    "reassign",
    "retry",
    "unconfigured_counts",
]
