"""Reading and writing the store. Every write of a cycle happens in one transaction."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import StoreError
from notifier.model import Event, OperationRecord, json_text
from notifier.store.db import chunks
from notifier.store.durations import StallWrite, write_stalls
from notifier.store.lease import Fence
from notifier.store.records import (
    EventGroup,
    RawEntry,
    SnapshotWrite,
    SourceState,
    StoredSnapshot,
)
from notifier.store.schema import event_groups, events, outbox, snapshots, source_state

__all__ = [  # the plain values of notifier.store.records are re-exported from here too
    "CycleWrite",
    "EventGroup",
    "RawEntry",
    "Repository",
    "SnapshotWrite",
    "SourceState",
    "StoredEvent",
    "StoredSnapshot",
]


@dataclass(frozen=True, slots=True)
class CycleWrite:
    state: SourceState
    now_ms: int
    snapshots: Sequence[SnapshotWrite] = ()
    gone: Sequence[str] = ()
    returned: Sequence[str] = ()  # marked gone before, present again with unchanged content
    groups: Sequence[EventGroup] = ()
    #: learned durations and stall alert state (notifier.store.durations)
    stalls: StallWrite | None = None
    #: operation id -> new raw hash, for records whose stored content is unchanged
    raw_hashes: Mapping[str, str] = field(default_factory=dict)
    #: the poller's lease (several instances): checked as the transaction's last statement
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    group_id: str
    created_at: int
    event: Event = field(compare=False)


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- snapshots ------------------------------------------------------------------------

    def snapshot_index(
        self, source: str, operation_ids: Iterable[str] | None = None
    ) -> dict[str, StoredSnapshot]:
        """Stored content hash and gone flag per operation (of ``operation_ids`` only, if
        given)."""
        query = select(
            snapshots.c.operation_id, snapshots.c.content_hash, snapshots.c.gone_at
        ).where(snapshots.c.source == source)
        with self._connect() as connection:
            if operation_ids is None:
                rows = list(connection.execute(query))
            else:
                rows = [
                    row
                    for chunk in chunks(list(operation_ids))
                    for row in connection.execute(query.where(snapshots.c.operation_id.in_(chunk)))
                ]
            return {
                row.operation_id: StoredSnapshot(row.content_hash, row.gone_at is not None)
                for row in rows
            }

    def raw_index(self, source: str) -> dict[str, RawEntry]:
        """The raw-record index of ``source``: snapshots that have a raw hash."""
        query = select(
            snapshots.c.operation_id,
            snapshots.c.record_time,
            snapshots.c.status,
            snapshots.c.raw_hash,
            snapshots.c.content_hash,
        ).where(snapshots.c.source == source, snapshots.c.raw_hash.is_not(None))
        with self._connect() as connection:
            return {
                row.operation_id: RawEntry(
                    row.record_time, row.status, row.raw_hash, row.content_hash
                )
                for row in connection.execute(query)
            }

    def active_operation_ids(self, source: str) -> list[str]:
        """Stored, not-gone operations of ``source`` that are waiting or processing."""
        query = (
            select(snapshots.c.operation_id)
            .where(
                snapshots.c.source == source,
                snapshots.c.gone_at.is_(None),
                snapshots.c.status.in_(("waiting", "processing")),
            )
            .order_by(snapshots.c.operation_id)
        )
        with self._connect() as connection:
            return list(connection.scalars(query))

    def load_records(self, source: str, operation_ids: Iterable[str]) -> dict[str, OperationRecord]:
        found: dict[str, OperationRecord] = {}
        with self._connect() as connection:
            for chunk in chunks(list(operation_ids)):
                query = select(snapshots.c.operation_id, snapshots.c.data).where(
                    snapshots.c.source == source, snapshots.c.operation_id.in_(chunk)
                )
                for row in connection.execute(query):
                    found[row.operation_id] = OperationRecord.from_dict(json.loads(row.data))
        return found

    def event_count(self) -> int:
        """How many events are recorded, of every source."""
        with self._connect() as connection:
            return int(connection.execute(select(func.count()).select_from(events)).scalar_one())

    def active_operations(self, source: str) -> int:
        """How many stored, not-gone operations of ``source`` are waiting or processing."""
        query = (
            select(func.count())
            .select_from(snapshots)
            .where(
                snapshots.c.source == source,
                snapshots.c.gone_at.is_(None),
                snapshots.c.status.in_(("waiting", "processing")),
            )
        )
        with self._connect() as connection:
            return int(connection.execute(query).scalar_one())

    # -- source state ---------------------------------------------------------------------

    def source_state(self, source: str) -> SourceState:
        query = select(source_state).where(source_state.c.source == source)
        with self._connect() as connection:
            row = connection.execute(query).mappings().first()
        return SourceState(**row) if row is not None else SourceState(source=source)

    def source_states(self) -> list[SourceState]:
        with self._connect() as connection:
            rows = connection.execute(select(source_state).order_by(source_state.c.source))
            return [SourceState(**row) for row in rows.mappings()]

    def save_rest(self, source: str, rest_until: int) -> None:
        """Store only the credential rest (a dry run writes nothing else)."""
        state = replace(self.source_state(source), rest_until=rest_until)
        try:
            with self.engine.begin() as connection:
                self._write_state(connection, state)
        except SQLAlchemyError as exc:
            raise StoreError(f"could not store the rest of {source}: {exc}") from exc

    def clear_rest(self, source: str) -> SourceState:
        """End the credential rest of ``source`` (its credentials were fixed); returns its
        state as it was. The running service notices and polls it again."""
        before = self.source_state(source)
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    update(source_state)
                    .where(source_state.c.source == source)
                    .values(rest_until=None)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"could not clear the rest of {source}: {exc}") from exc
        return before

    # -- the cycle ------------------------------------------------------------------------

    def write_cycle(self, write: CycleWrite) -> list[EventGroup]:
        """Snapshots, source state, event groups, events and outbox rows: one transaction.

        Returns the groups actually written (a group whose events were all recorded
        before, e.g. replayed after a crash, is skipped).
        """
        try:
            with self.engine.begin() as connection:
                self._write_snapshots(connection, write)
                self._write_state(connection, write.state)
                if write.stalls is not None:
                    write_stalls(connection, write.stalls)
                written = self._write_groups(connection, write.groups, write.now_ms)
                if write.fence is not None:  # last: a lost lease rolls all of it back
                    write.fence.check(connection)
                return written
        except SQLAlchemyError as exc:
            raise StoreError(f"could not store the cycle of {write.state.source}: {exc}") from exc

    def _write_snapshots(self, connection: Connection, write: CycleWrite) -> None:
        source, now = write.state.source, write.now_ms
        new = [item for item in write.snapshots if item.is_new]
        changed = [item for item in write.snapshots if not item.is_new]
        # in chunks: a packed baseline is unpacked 500 records at a time, not all at once
        for chunk in chunks(new):
            connection.execute(
                insert(snapshots),
                [
                    {
                        "source": source,
                        "operation_id": item.record.operation_id,
                        "content_hash": item.content_hash,
                        "data": json_text(item.data),
                        "status": item.record.status,
                        "record_time": item.record.record_time,
                        "first_seen": now,
                        "last_seen": now,
                        "gone_at": None,
                        "raw_hash": item.raw_hash,
                    }
                    for item in chunk
                ],
            )
        for chunk in chunks(changed):
            connection.execute(
                update(snapshots)
                .where(
                    snapshots.c.source == source,
                    snapshots.c.operation_id == bindparam("b_operation_id"),
                )
                .values(
                    content_hash=bindparam("b_hash"),
                    data=bindparam("b_data"),
                    status=bindparam("b_status"),
                    record_time=bindparam("b_record_time"),
                    raw_hash=bindparam("b_raw_hash"),
                    last_seen=now,
                    gone_at=None,
                ),
                [
                    {
                        "b_operation_id": item.record.operation_id,
                        "b_hash": item.content_hash,
                        "b_data": json_text(item.data),
                        "b_status": item.record.status,
                        "b_record_time": item.record.record_time,
                        "b_raw_hash": item.raw_hash,
                    }
                    for item in chunk
                ],
            )
        if write.raw_hashes:
            connection.execute(
                update(snapshots)
                .where(
                    snapshots.c.source == source,
                    snapshots.c.operation_id == bindparam("b_operation_id"),
                )
                .values(raw_hash=bindparam("b_raw_hash")),
                [
                    {"b_operation_id": operation_id, "b_raw_hash": raw_hash}
                    for operation_id, raw_hash in write.raw_hashes.items()
                ],
            )
        for ids, gone_at in ((write.gone, now), (write.returned, None)):
            for id_chunk in chunks(list(ids)):
                connection.execute(
                    update(snapshots)
                    .where(snapshots.c.source == source, snapshots.c.operation_id.in_(id_chunk))
                    .values(gone_at=gone_at, last_seen=now)
                )

    def _write_state(self, connection: Connection, state: SourceState) -> None:
        values = {
            "baseline_at": state.baseline_at,
            "last_poll_at": state.last_poll_at,
            "last_success_at": state.last_success_at,
            "consecutive_failures": state.consecutive_failures,
            "failing_since": state.failing_since,
            "last_error": state.last_error,
            "unreachable_reported": state.unreachable_reported,
            "rest_until": state.rest_until,
            "scope": state.scope,
            "last_full_at": state.last_full_at,
        }
        result = connection.execute(
            update(source_state).where(source_state.c.source == state.source).values(**values)
        )
        if result.rowcount == 0:
            connection.execute(insert(source_state).values(source=state.source, **values))

    def _write_groups(
        self, connection: Connection, groups: Sequence[EventGroup], now: int
    ) -> list[EventGroup]:
        if not groups:
            return []
        all_ids = [event.id for group in groups for event in group.events]
        known: set[str] = set()
        for chunk in chunks(all_ids):
            known.update(connection.scalars(select(events.c.id).where(events.c.id.in_(chunk))))
        written: list[EventGroup] = []
        group_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        for group in groups:
            fresh = tuple(event for event in group.events if event.id not in known)
            if not fresh:
                continue
            known.update(event.id for event in fresh)
            group_rows.append(
                {
                    "id": group.id,
                    "source": group.source,
                    "operation_id": group.operation_id,
                    "created_at": now,
                    "record": group.record,
                }
            )
            event_rows.extend(
                {
                    "id": event.id,
                    "group_id": group.id,
                    "source": event.source,
                    "operation_id": event.operation_id,
                    "type": str(event.type),
                    "record_time": event.record_time,
                    "created_at": now,
                    "payload": json.dumps(event.to_dict(), ensure_ascii=False),
                }
                for event in fresh
            )
            routes = _fresh_routes(group, {event.id for event in fresh})
            outbox_rows.extend(
                {
                    "group_id": group.id,
                    "channel": channel,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "updated_at": now,
                    "last_error": None,
                    "done_targets": "[]",
                    "event_ids": json.dumps(list(ids)),
                }
                for channel, ids in routes.items()
            )
            written.append(
                EventGroup(
                    group.id,
                    group.source,
                    group.operation_id,
                    fresh,
                    tuple(routes),
                    routes=routes,
                )
            )
        if group_rows:
            connection.execute(insert(event_groups), group_rows)
            connection.execute(insert(events), event_rows)
        if outbox_rows:
            connection.execute(insert(outbox), outbox_rows)
        return written

    # -- events ---------------------------------------------------------------------------

    def iter_events(
        self,
        *,
        operation_id: str | None = None,
        source: str | None = None,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> Iterator[StoredEvent]:
        """Recorded events, oldest first."""
        query = select(events.c.seq, events.c.group_id, events.c.created_at, events.c.payload)
        query = query.where(events.c.seq > after_seq).order_by(events.c.seq)
        if operation_id is not None:
            query = query.where(events.c.operation_id == operation_id)
        if source is not None:
            query = query.where(events.c.source == source)
        if limit is not None:
            query = query.limit(limit)
        with self._connect() as connection:
            for row in connection.execute(query):
                yield StoredEvent(
                    seq=row.seq,
                    group_id=row.group_id,
                    created_at=row.created_at,
                    event=Event.from_dict(json.loads(row.payload)),
                )

    def _connect(self) -> _Connection:
        return _Connection(self.engine)


class _Connection:
    """``engine.connect()`` with SQLAlchemy errors mapped to ``StoreError``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None

    def __enter__(self) -> Connection:
        try:
            self.connection = self.engine.connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database: {exc}") from exc
        return self.connection

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        assert self.connection is not None  # noqa: S101 - set in __enter__
        try:
            self.connection.close()  # rolls back: fails too when the server went away
        except SQLAlchemyError as failed:
            if exc is None:
                raise StoreError(f"database query failed: {failed}") from failed
        if isinstance(exc, SQLAlchemyError):
            raise StoreError(f"database query failed: {exc}") from exc


def _fresh_routes(group: EventGroup, fresh: set[str]) -> dict[str, tuple[str, ...]]:
    """Channel -> the ids routed to it (``EventGroup.routes``) that this write records: a
    channel whose routed events were all recorded before gets no outbox row."""
    routes: dict[str, tuple[str, ...]] = {}
    for channel in group.channels:
        ids = tuple(event_id for event_id in group.routed_ids(channel) if event_id in fresh)
        if ids:
            routes[channel] = ids
    return routes
