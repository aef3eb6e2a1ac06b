"""The repository over a real SQLite file migrated by Alembic: snapshots written and read,
gone and returned, source state and credential rests, event groups with their outbox rows
in one transaction, and the events listing."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from delivery_support import event_for, record, status_event, step, sub
from sqlalchemy import Engine, func, select

from notifier.errors import StoreError
from notifier.model import Event, EventType, OperationRecord, canonical_json
from notifier.store import db
from notifier.store.repository import (
    CycleWrite,
    EventGroup,
    Repository,
    SnapshotWrite,
    SourceState,
    StoredSnapshot,
)
from notifier.store.schema import event_groups, events, outbox, snapshots, source_state

NOW = 1_700_000_100_000  # ms
LATER = NOW + 60_000


def _op(number: int) -> str:
    return f"BCSSVC01-99-17000000000000{number:05d}"


def _record(number: int = 1, status: str = "processing", **changes: Any) -> OperationRecord:
    rec = record(
        operation_id=_op(number),
        status=status,
        steps=[step("Network", status, 1, [sub("Create EIP", status, 1, message=["é"])])],
    )
    return dataclasses.replace(rec, **changes)


def _write(rec: OperationRecord, *, is_new: bool = True) -> SnapshotWrite:
    data = canonical_json(rec.to_dict())
    return SnapshotWrite(rec, data, rec.content_hash(), is_new=is_new)


def _cycle(
    source: str = "prod",
    *,
    now: int = NOW,
    new: Sequence[OperationRecord] = (),
    changed: Sequence[OperationRecord] = (),
    state: SourceState | None = None,
    **write: Any,
) -> CycleWrite:
    return CycleWrite(
        state=state or SourceState(source=source, last_poll_at=now, last_success_at=now),
        now_ms=now,
        snapshots=[*(_write(rec) for rec in new), *(_write(rec, is_new=False) for rec in changed)],
        **write,
    )


def _group(
    group_id: str, group_events: Sequence[Event], channels: Sequence[str] = ("chat",)
) -> EventGroup:
    first = group_events[0]
    return EventGroup(
        id=group_id,
        source=first.source,
        operation_id=first.operation_id,
        events=tuple(group_events),
        channels=tuple(channels),
        record='{"operation_id": "x"}',
    )


def _snapshot_row(engine: Engine, operation_id: str, source: str = "prod") -> Any:
    query = select(snapshots).where(
        snapshots.c.source == source, snapshots.c.operation_id == operation_id
    )
    with engine.connect() as connection:
        return connection.execute(query).one()


def _count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def repository(engine: Engine) -> Repository:
    return Repository(engine)


# -- snapshots --------------------------------------------------------------------------------


def test_a_new_snapshot_is_indexed_and_reads_back_equal(
    repository: Repository, engine: Engine
) -> None:
    rec = _record()
    repository.write_cycle(_cycle(new=[rec]))
    assert repository.snapshot_index("prod") == {
        rec.operation_id: StoredSnapshot(rec.content_hash(), gone=False)
    }
    assert repository.load_records("prod", [rec.operation_id]) == {rec.operation_id: rec}
    row = _snapshot_row(engine, rec.operation_id)
    assert (row.status, row.record_time, row.first_seen, row.last_seen, row.gone_at) == (
        "processing",
        rec.record_time,
        NOW,
        NOW,
        None,
    )
    assert row.data == canonical_json(rec.to_dict())


def test_snapshots_are_kept_per_source(repository: Repository) -> None:
    prod, staging = _record(status="processing"), _record(status="failed")
    repository.write_cycle(_cycle("prod", new=[prod]))
    repository.write_cycle(_cycle("staging", new=[staging]))
    assert repository.load_records("prod", [prod.operation_id]) == {prod.operation_id: prod}
    assert repository.load_records("staging", [prod.operation_id]) == {prod.operation_id: staging}
    assert repository.snapshot_index("nowhere") == {}
    assert repository.load_records("nowhere", [prod.operation_id]) == {}


def test_a_changed_snapshot_replaces_the_stored_one(repository: Repository, engine: Engine) -> None:
    before = _record(status="processing")
    after = _record(status="finished", record_time=before.record_time + 5)
    repository.write_cycle(_cycle(new=[before]))
    repository.write_cycle(_cycle(now=LATER, changed=[after]))
    assert repository.snapshot_index("prod")[after.operation_id].content_hash == (
        after.content_hash()
    )
    assert repository.load_records("prod", [after.operation_id])[after.operation_id] == after
    row = _snapshot_row(engine, after.operation_id)
    assert (row.status, row.record_time, row.first_seen, row.last_seen) == (
        "finished",
        after.record_time,
        NOW,  # first seen stays
        LATER,
    )
    assert _count(engine, snapshots) == 1


def test_gone_then_returned(repository: Repository, engine: Engine) -> None:
    kept, lost = _record(1), _record(2)
    repository.write_cycle(_cycle(new=[kept, lost]))
    repository.write_cycle(_cycle(now=LATER, gone=[lost.operation_id]))
    index = repository.snapshot_index("prod")
    assert (index[kept.operation_id].gone, index[lost.operation_id].gone) == (False, True)
    assert _snapshot_row(engine, lost.operation_id).gone_at == LATER
    assert _snapshot_row(engine, kept.operation_id).last_seen == NOW  # not touched
    # a gone record still reads (the diff needs its last content when it comes back)
    assert repository.load_records("prod", [lost.operation_id]) == {lost.operation_id: lost}

    back = LATER + 60_000
    repository.write_cycle(_cycle(now=back, returned=[lost.operation_id]))
    assert repository.snapshot_index("prod")[lost.operation_id] == StoredSnapshot(
        lost.content_hash(), gone=False
    )
    row = _snapshot_row(engine, lost.operation_id)
    assert (row.gone_at, row.last_seen) == (None, back)


def test_a_changed_snapshot_is_no_longer_gone(repository: Repository) -> None:
    rec = _record()
    repository.write_cycle(_cycle(new=[rec]))
    repository.write_cycle(_cycle(now=LATER, gone=[rec.operation_id]))
    changed = _record(status="failed")
    repository.write_cycle(_cycle(now=LATER + 1, changed=[changed]))
    assert repository.snapshot_index("prod")[rec.operation_id].gone is False


def test_gone_marks_only_its_own_source(repository: Repository) -> None:
    rec = _record()
    repository.write_cycle(_cycle("prod", new=[rec]))
    repository.write_cycle(_cycle("staging", new=[rec]))
    repository.write_cycle(_cycle("staging", now=LATER, gone=[rec.operation_id]))
    assert repository.snapshot_index("prod")[rec.operation_id].gone is False
    assert repository.snapshot_index("staging")[rec.operation_id].gone is True


def test_many_snapshots_are_read_and_marked_in_chunks(repository: Repository) -> None:
    """More ids than one IN (...) chunk holds (500): every chunk is read and marked."""
    records = [_record(number) for number in range(1200)]
    repository.write_cycle(_cycle(new=records))
    ids = [rec.operation_id for rec in records]
    assert len(repository.load_records("prod", ids)) == 1200
    repository.write_cycle(_cycle(now=LATER, gone=ids))
    assert all(stored.gone for stored in repository.snapshot_index("prod").values())
    repository.write_cycle(_cycle(now=LATER + 1, returned=ids[:700]))
    gone = [op for op, stored in repository.snapshot_index("prod").items() if stored.gone]
    assert sorted(gone) == sorted(ids[700:])


def test_active_operations_counts_waiting_and_processing_that_are_not_gone(
    repository: Repository,
) -> None:
    statuses = ["waiting", "processing", "processing", "finished", "failed", "stop", ""]
    repository.write_cycle(
        _cycle(new=[_record(number, status) for number, status in enumerate(statuses)])
    )
    repository.write_cycle(_cycle("staging", new=[_record(99, "processing")]))
    assert repository.active_operations("prod") == 3
    repository.write_cycle(_cycle(now=LATER, gone=[_op(2)]))
    assert repository.active_operations("prod") == 2
    assert repository.active_operations("staging") == 1
    assert repository.active_operations("nowhere") == 0


# -- source state -----------------------------------------------------------------------------


def test_an_unknown_source_has_the_empty_state(repository: Repository) -> None:
    assert repository.source_state("prod") == SourceState(source="prod")
    assert repository.source_states() == []


def test_source_state_is_written_with_the_cycle_and_overwritten_by_the_next(
    repository: Repository, engine: Engine
) -> None:
    failing = SourceState(
        source="prod",
        baseline_at=NOW - 1000,
        last_poll_at=NOW,
        last_success_at=NOW - 1000,
        consecutive_failures=3,
        failing_since=NOW - 500,
        last_error="HTTP 502",
        unreachable_reported=True,
        rest_until=NOW + 900_000,
        scope="abc123",
    )
    repository.write_cycle(_cycle(state=failing))
    assert repository.source_state("prod") == failing
    healthy = SourceState(
        source="prod", baseline_at=NOW - 1000, last_poll_at=LATER, last_success_at=LATER
    )
    repository.write_cycle(_cycle(now=LATER, state=healthy))
    assert repository.source_state("prod") == healthy
    assert _count(engine, source_state) == 1


def test_source_states_are_listed_by_name(repository: Repository) -> None:
    for name in ("staging", "prod", "dev"):
        repository.write_cycle(_cycle(name))
    assert [state.source for state in repository.source_states()] == ["dev", "prod", "staging"]


def test_a_rest_is_saved_alone_and_cleared(repository: Repository) -> None:
    state = SourceState(source="prod", baseline_at=NOW, last_poll_at=NOW, consecutive_failures=2)
    repository.write_cycle(_cycle(state=state))
    repository.save_rest("prod", NOW + 900_000)
    assert repository.source_state("prod") == dataclasses.replace(state, rest_until=NOW + 900_000)

    before = repository.clear_rest("prod")
    assert before.rest_until == NOW + 900_000
    assert repository.source_state("prod") == state


def test_a_rest_of_a_source_never_polled_creates_its_state(repository: Repository) -> None:
    repository.save_rest("new", NOW)
    assert repository.source_state("new") == SourceState(source="new", rest_until=NOW)
    assert repository.clear_rest("nowhere") == SourceState(source="nowhere")
    assert [state.source for state in repository.source_states()] == ["new"]


# -- event groups and the outbox --------------------------------------------------------------


def _failed_events(number: int = 1, source: str = "prod") -> list[Event]:
    rec = _record(number, "failed")
    return [
        event_for(
            rec,
            EventType.SUBSTEP_STATUS_CHANGED,
            source=source,
            step_name="Network",
            substep="Create EIP",
            from_status="processing",
            to_status="failed",
            message=["é"],
        ),
        event_for(
            rec,
            EventType.OPERATION_STATUS_CHANGED,
            source=source,
            from_status="processing",
            to_status="failed",
        ),
    ]


def test_groups_write_their_events_and_one_outbox_row_per_channel(
    repository: Repository, engine: Engine
) -> None:
    group = _group("grp_1", _failed_events(), channels=["chat", "hooks"])
    written = repository.write_cycle(_cycle(groups=[group]))
    ids = tuple(event.id for event in group.events)  # no routes given: every event
    assert written == [dataclasses.replace(group, record=None, routes={"chat": ids, "hooks": ids})]
    with engine.connect() as connection:
        stored_group = connection.execute(select(event_groups)).one()
        rows = list(connection.execute(select(outbox).order_by(outbox.c.id)))
        payloads = list(connection.execute(select(events.c.payload).order_by(events.c.seq)))
    assert (stored_group.id, stored_group.record, stored_group.created_at) == (
        "grp_1",
        '{"operation_id": "x"}',
        NOW,
    )
    assert [
        (row.channel, row.state, row.attempts, row.next_attempt_at, row.done_targets)
        for row in rows
    ] == [("chat", "pending", 0, NOW, "[]"), ("hooks", "pending", 0, NOW, "[]")]
    assert [json.loads(row.event_ids) for row in rows] == [list(ids), list(ids)]
    assert [json.loads(payload) for (payload,) in payloads] == [
        event.to_dict() for event in group.events
    ]
    assert "é" in payloads[0][0]  # stored as text, not \u escapes


def test_each_outbox_row_stores_the_ids_routed_to_its_channel(
    repository: Repository, engine: Engine
) -> None:
    """The routing decision of the planner (``EventGroup.routes``) is stored with each row."""
    substep, failed = _failed_events()
    group = dataclasses.replace(
        _group("grp_1", [substep, failed], channels=["chat", "hooks"]),
        routes={"chat": (failed.id,), "hooks": (substep.id, failed.id)},
    )
    [written] = repository.write_cycle(_cycle(groups=[group]))
    assert written.routes == {"chat": (failed.id,), "hooks": (substep.id, failed.id)}
    assert written.routed_ids("chat") == (failed.id,)
    with engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.channel, outbox.c.event_ids).order_by(outbox.c.channel)
        ).all()
    assert [(row.channel, json.loads(row.event_ids)) for row in rows] == [
        ("chat", [failed.id]),
        ("hooks", [substep.id, failed.id]),
    ]


def test_a_channel_whose_routed_events_were_all_recorded_before_gets_no_row(
    repository: Repository, engine: Engine
) -> None:
    """A group replayed with one new event: a channel routed only the known one has nothing
    new to send, so no row; the other's row carries only the new event."""
    first, second = _failed_events()
    repository.write_cycle(_cycle(groups=[_group("grp_1", [first], channels=["chat"])]))
    replayed = dataclasses.replace(
        _group("grp_2", [first, second], channels=["chat", "hooks"]),
        routes={"chat": (first.id,), "hooks": (first.id, second.id)},
    )
    [written] = repository.write_cycle(_cycle(now=LATER, groups=[replayed]))
    assert (written.events, written.channels) == ((second,), ("hooks",))
    with engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.group_id, outbox.c.channel, outbox.c.event_ids).order_by(outbox.c.id)
        ).all()
    assert [(row.group_id, row.channel, json.loads(row.event_ids)) for row in rows] == [
        ("grp_1", "chat", [first.id]),
        ("grp_2", "hooks", [second.id]),
    ]


def test_a_group_without_channels_is_recorded_without_outbox_rows(
    repository: Repository, engine: Engine
) -> None:
    repository.write_cycle(_cycle(groups=[_group("grp_1", _failed_events(), channels=[])]))
    assert (_count(engine, events), _count(engine, outbox)) == (2, 0)


def test_a_replayed_group_is_skipped(repository: Repository, engine: Engine) -> None:
    """The same transitions seen again (a crash before the cycle ended): nothing new."""
    group_events = _failed_events()
    repository.write_cycle(_cycle(groups=[_group("grp_1", group_events)]))
    again = repository.write_cycle(_cycle(now=LATER, groups=[_group("grp_2", group_events)]))
    assert again == []
    assert (_count(engine, event_groups), _count(engine, events), _count(engine, outbox)) == (
        1,
        2,
        1,
    )


def test_a_group_with_some_known_events_writes_only_the_fresh_ones(
    repository: Repository, engine: Engine
) -> None:
    first, second = _failed_events()
    repository.write_cycle(_cycle(groups=[_group("grp_1", [first])]))
    [written] = repository.write_cycle(_cycle(now=LATER, groups=[_group("grp_2", [first, second])]))
    assert written.events == (second,)
    assert _count(engine, events) == 2
    assert _count(engine, outbox) == 2


def test_an_event_in_two_groups_of_one_cycle_is_written_once(
    repository: Repository, engine: Engine
) -> None:
    event = _failed_events()[1]
    written = repository.write_cycle(
        _cycle(groups=[_group("grp_1", [event]), _group("grp_2", [event])])
    )
    assert [group.id for group in written] == ["grp_1"]
    assert _count(engine, events) == 1


# -- one transaction --------------------------------------------------------------------------


def test_a_failing_cycle_writes_nothing_and_raises_a_store_error(
    repository: Repository, engine: Engine
) -> None:
    rec = _record()
    repository.write_cycle(_cycle(new=[rec]))
    state = SourceState(source="prod", last_poll_at=LATER, consecutive_failures=7)
    broken = _cycle(  # the record written as new again: the primary key refuses it
        now=LATER,
        state=state,
        new=[_record(2), rec],
        groups=[_group("grp_1", _failed_events())],
    )
    with pytest.raises(StoreError, match="could not store the cycle of prod"):
        repository.write_cycle(broken)
    assert list(repository.snapshot_index("prod")) == [rec.operation_id]
    assert repository.source_state("prod").consecutive_failures == 0
    assert (_count(engine, event_groups), _count(engine, events), _count(engine, outbox)) == (
        0,
        0,
        0,
    )


def test_reading_a_database_that_was_never_migrated_is_a_store_error(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        repository = Repository(engine)
        with pytest.raises(StoreError, match="database query failed"):
            repository.snapshot_index("prod")
        with pytest.raises(StoreError, match="database query failed"):
            list(repository.iter_events())
        with pytest.raises(StoreError, match="could not store the cycle of prod"):
            repository.write_cycle(_cycle(new=[_record()]))
    finally:
        engine.dispose()


# -- the events listing -----------------------------------------------------------------------


@pytest.fixture
def recorded(repository: Repository) -> list[Event]:
    """Three operations of prod and one of staging, recorded over three cycles."""
    everything: list[Event] = []
    for cycle, (number, source) in enumerate([(1, "prod"), (2, "prod"), (3, "staging")]):
        group_events = _failed_events(number, source)
        everything.extend(group_events)
        repository.write_cycle(
            _cycle(source, now=NOW + cycle, groups=[_group(f"grp_{cycle}", group_events)])
        )
    created = event_for(_record(1), EventType.OPERATION_CREATED, to_status="processing")
    repository.write_cycle(_cycle(now=NOW + 3, groups=[_group("grp_3", [created])]))
    return [*everything, created]


def test_events_are_listed_oldest_first_and_read_back_equal(
    repository: Repository, recorded: list[Event]
) -> None:
    listed = list(repository.iter_events())
    assert [item.event for item in listed] == recorded
    assert [item.seq for item in listed] == sorted(item.seq for item in listed)
    assert [item.group_id for item in listed] == [
        "grp_0",
        "grp_0",
        "grp_1",
        "grp_1",
        "grp_2",
        "grp_2",
        "grp_3",
    ]
    assert [item.created_at for item in listed] == [
        NOW,
        NOW,
        NOW + 1,
        NOW + 1,
        NOW + 2,
        NOW + 2,
        NOW + 3,
    ]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"operation_id": _op(1)}, [0, 1, 6]),
        ({"source": "staging"}, [4, 5]),
        ({"source": "prod", "operation_id": _op(3)}, []),
        ({"limit": 3}, [0, 1, 2]),
        ({"operation_id": "nothing"}, []),
    ],
    ids=["by-operation", "by-source", "both", "limit", "unknown-operation"],
)
def test_events_listing_filters(
    repository: Repository, recorded: list[Event], query: dict[str, Any], expected: list[int]
) -> None:
    assert [item.event for item in repository.iter_events(**query)] == [
        recorded[index] for index in expected
    ]


def test_events_listing_continues_after_a_sequence_number(
    repository: Repository, recorded: list[Event]
) -> None:
    seen = list(repository.iter_events(limit=2))
    rest = list(repository.iter_events(after_seq=seen[-1].seq))
    assert [item.event for item in [*seen, *rest]] == recorded
    assert list(repository.iter_events(after_seq=rest[-1].seq)) == []
    page = list(repository.iter_events(source="prod", after_seq=seen[-1].seq, limit=2))
    assert [item.event for item in page] == recorded[2:4]


def test_a_status_event_round_trips_through_the_events_table(repository: Repository) -> None:
    event = status_event(_record(status="failed"), "processing", "failed")
    repository.write_cycle(_cycle(groups=[_group("grp_1", [event])]))
    [stored] = repository.iter_events()
    assert stored.event == event
    assert stored.event.operation == event.operation
