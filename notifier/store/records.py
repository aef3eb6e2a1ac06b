"""The plain values the store reads and writes for one cycle (no SQLAlchemy: the pure
planner, ``notifier.cycle``, works with them; ``notifier.store.repository`` re-exports them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from notifier.model import Event, OperationRecord, PackedJSON


@dataclass(frozen=True, slots=True)
class StoredSnapshot:
    content_hash: str
    gone: bool


@dataclass(frozen=True, slots=True)
class RawEntry:
    """What a complete listing compares a raw record with before parsing it (the in-memory
    index of incremental polling, rebuilt from the ``snapshots`` rows)."""

    record_time: int
    status: str
    raw_hash: str
    content_hash: str


@dataclass(frozen=True, slots=True)
class SnapshotWrite:
    """A record to store: its canonical JSON (packed for a silent baseline) and the hash
    of that JSON, computed once."""

    record: OperationRecord
    data: str | PackedJSON
    content_hash: str
    is_new: bool
    raw_hash: str | None = None


@dataclass(frozen=True, slots=True)
class SourceState:
    source: str
    baseline_at: int | None = None
    last_poll_at: int | None = None
    last_success_at: int | None = None
    consecutive_failures: int = 0
    failing_since: int | None = None
    last_error: str | None = None
    unreachable_reported: bool = False
    rest_until: int | None = None
    scope: str | None = None
    last_full_at: int | None = None


@dataclass(frozen=True, slots=True)
class EventGroup:
    """Events delivered together (one operation in one cycle) and the channels they go to.

    ``routes`` is the one routing decision (``notifier.cycle.group``): channel -> ids of
    the group's events that channel's filters admit, in the group's order. The outbox row
    of each channel stores them, and the dispatcher sends exactly those events.
    """

    id: str
    source: str
    operation_id: str
    events: tuple[Event, ...]
    channels: tuple[str, ...]
    record: str | None = None  # the record's canonical JSON at that cycle
    routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def routed_ids(self, channel: str) -> tuple[str, ...]:
        """The ids of the events routed to ``channel`` (every event of the group for a
        channel the group names without a route of its own)."""
        routed = self.routes.get(channel)
        return routed if routed is not None else tuple(event.id for event in self.events)
