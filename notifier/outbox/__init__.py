"""The transactional outbox's consumer (see :mod:`notifier.outbox.dispatcher`).

- ``dispatcher``: :class:`Dispatcher`, bundles, channels, the send loop;
- ``delivery``: the one switch between a message target and an event target;
- ``state``: a row's state machine after an attempt (pure);
- ``rows``: the dispatch's rows and its counts.

Every statement lives in :mod:`notifier.store.outbox_queries` (re-exported here for the CLI).
"""

from notifier.outbox.dispatcher import UNCONFIGURED_REMINDER, Dispatcher
from notifier.outbox.rows import ChannelStats, DispatchStats
from notifier.outbox.state import backoff_seconds
from notifier.store.outbox_queries import (
    DEAD,
    PENDING,
    SENT,
    STATES,
    OutboxEntry,
    Reassigned,
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
    "Reassigned",
    "backoff_seconds",
    "counts_by_state",
    "list_entries",
    "purge",
    "reassign",
    "retry",
    "unconfigured_counts",
]
