"""Routing decided once, when the events are recorded: an outbox row carries the ids of the
events routed to its channel (``outbox.event_ids``), the dispatcher sends exactly those and
never routes again, rows older than revision 0007 (NULL) are routed at dispatch as before,
and ``outbox reassign`` routes once more, for the new channel. Real migrated SQLite and
PostgreSQL databases, real local HTTP receivers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from delivery_support import (
    NOW_MS,
    FakeClock,
    insert_group,
    make_config,
    record,
    status_event,
    substep_failed,
)
from net_support import Receiver, http_receiver
from sqlalchemy import Engine, select, update

from notifier import outbox as outbox_module
from notifier.config import ChannelConfig
from notifier.cycle import group
from notifier.model import Event
from notifier.outbox import Dispatcher, DispatchStats, list_entries
from notifier.routing import event_matches
from notifier.store.repository import CycleWrite, Repository, SourceState
from notifier.store.schema import outbox

REC = record(status="failed")
SUBSTEP = substep_failed(REC, "Network", "Create EIP")
FAILED = status_event(REC, "processing", "failed")


@pytest.fixture
def engine(store_engine: Engine) -> Engine:
    return store_engine


def _operation(number: int) -> tuple[Event, Event, Any]:
    """A substep failure and the operation's failure, of operation ``number``."""
    rec = record(operation_id=f"BCSSVC01-99-17000000000000008{number:02d}", status="failed")
    return (
        substep_failed(rec, "Network", "Create EIP"),
        status_event(rec, "processing", "failed"),
        rec,
    )


def _hook(receiver: Receiver, name: str = "hook", **filters: Any) -> ChannelConfig:
    return ChannelConfig(name=name, urls=(f"webhook://{receiver.base}/",), **filters)


def _dispatch(engine: Engine, channels: list[ChannelConfig]) -> DispatchStats:
    clock = FakeClock()
    config = make_config(channels)
    dispatcher = Dispatcher(config, engine, clock=clock, sleep=clock.sleep, rand=lambda: 0.5)
    return dispatcher.dispatch_due()


def _sent_ids(receiver: Receiver) -> list[str]:
    return [body["id"] for body in receiver.bodies()]


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(outbox).order_by(outbox.c.id)))


# -- the dispatcher sends what was routed ------------------------------------------------------


def test_the_dispatcher_sends_the_stored_events_even_when_the_filters_admit_more(
    engine: Engine,
) -> None:
    """The channel's filters admit both events, the stored decision names one: one is sent,
    and the row is complete with it (completion does not route again either)."""
    insert_group(engine, [SUBSTEP, FAILED], REC, ["hook"], routed={"hook": [FAILED.id]})
    with http_receiver() as receiver:
        channel = _hook(receiver)
        assert event_matches(channel, SUBSTEP)
        assert event_matches(channel, FAILED)
        stats = _dispatch(engine, [channel])
        sent = _sent_ids(receiver)
    assert sent == [FAILED.id]
    assert (stats.sent, stats.messages) == (1, 1)
    assert [row.state for row in _rows(engine)] == ["sent"]


def test_a_message_carries_only_the_stored_events(engine: Engine) -> None:
    """A chat target coalesces the rows of an operation into one message of the events each
    row carries: the substep routed to another channel is not in it."""
    insert_group(engine, [SUBSTEP, FAILED], REC, ["chat"], routed={"chat": [FAILED.id]})
    other, failed_other, rec_other = _operation(1)
    insert_group(engine, [other, failed_other], rec_other, ["chat"])  # before 0007: routed now
    with http_receiver() as receiver:
        channel = ChannelConfig(name="chat", urls=(f"json://{receiver.base}/",))
        stats = _dispatch(engine, [channel])
        bodies = receiver.bodies()
    assert stats.sent == 2
    by_operation = {
        operation: body["message"]
        for body in bodies
        for operation in (REC.operation_id, rec_other.operation_id)
        if operation in body["message"] or operation in body["title"]
    }
    assert len(bodies) == 2
    assert "Create EIP" not in by_operation[REC.operation_id]
    assert "Create EIP" in by_operation[rec_other.operation_id]


def test_a_reload_that_changes_the_filters_leaves_pending_rows_as_they_were_routed(
    engine: Engine,
) -> None:
    """Written through the real path (the planner's routes, the repository's write), then
    dispatched with the filters a reload changed: the decision made at write stands."""
    with http_receiver() as receiver:
        at_write = [_hook(receiver, events=("operation.*",)), _hook(receiver, name="all")]
        planned = group(at_write, "prod", REC.operation_id, [SUBSTEP, FAILED], None)
        assert planned.routes == {"hook": (FAILED.id,), "all": (SUBSTEP.id, FAILED.id)}
        Repository(engine).write_cycle(
            CycleWrite(state=SourceState("prod"), now_ms=NOW_MS, groups=[planned])
        )
        stored = {row.channel: json.loads(row.event_ids) for row in _rows(engine)}
        assert stored == {"hook": [FAILED.id], "all": [SUBSTEP.id, FAILED.id]}

        reloaded = [_hook(receiver, events=("substep.*",))]  # "all" removed, "hook" changed
        stats = _dispatch(engine, reloaded)
        sent = _sent_ids(receiver)
    assert sent == [FAILED.id]  # what "hook" admitted when the events were recorded
    assert stats.sent == 1
    assert {row.channel: row.state for row in _rows(engine)} == {"hook": "sent", "all": "pending"}


def test_rows_written_before_0007_are_routed_at_dispatch_as_before(engine: Engine) -> None:
    insert_group(engine, [SUBSTEP, FAILED], REC, ["hook"])  # event_ids NULL
    assert _rows(engine)[0].event_ids is None
    with http_receiver() as receiver:
        stats = _dispatch(engine, [_hook(receiver, events=("substep.*",))])
        sent = _sent_ids(receiver)
    assert sent == [SUBSTEP.id]  # the channel's filters as configured now
    assert stats.sent == 1
    [row] = _rows(engine)
    assert row.state == "sent"
    assert row.event_ids is None  # a legacy row stays one: routed at each dispatch


def test_a_row_routed_no_event_is_done_without_a_request(engine: Engine) -> None:
    insert_group(engine, [SUBSTEP, FAILED], REC, ["hook"], routed={"hook": []})
    with http_receiver() as receiver:
        stats = _dispatch(engine, [_hook(receiver)])
        requests = receiver.snapshot()
    assert (stats.sent, stats.messages, requests) == (1, 0, [])


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        ('{"not": "a list"}', "event_ids unreadable"),
        ("[1, 2]", "event_ids unreadable"),
        ("[", "event_ids unreadable"),
        ('["evt_never_recorded"]', "is not recorded in its group"),
    ],
    ids=["object", "not-strings", "not-json", "unknown-id"],
)
def test_stored_ids_that_cannot_be_used_make_that_row_dead_at_once(
    engine: Engine, stored: str, reason: str
) -> None:
    """The row can never be sent as stored; the other operation's row is sent."""
    insert_group(engine, [SUBSTEP, FAILED], REC, ["hook"], routed={"hook": [FAILED.id]})
    other, failed_other, rec_other = _operation(2)
    insert_group(engine, [other, failed_other], rec_other, ["hook"], routed={"hook": [other.id]})
    with engine.begin() as connection:
        connection.execute(update(outbox).where(outbox.c.id == 1).values(event_ids=stored))
    with http_receiver() as receiver:
        stats = _dispatch(engine, [_hook(receiver)])
        sent = _sent_ids(receiver)
    assert sent == [other.id]
    assert (stats.sent, stats.dead) == (1, 1)
    bad, good = _rows(engine)
    assert (bad.state, good.state) == ("dead", "sent")
    assert reason in bad.last_error


def test_outbox_list_counts_the_events_a_row_carries(engine: Engine) -> None:
    insert_group(engine, [SUBSTEP, FAILED], REC, ["a", "b"], routed={"a": [FAILED.id]})
    assert {entry.channel: entry.events for entry in list_entries(engine)} == {"a": 1, "b": 2}


# -- outbox reassign routes once more, for the new channel ----------------------------------


def test_reassign_keeps_what_the_new_channels_filters_admit_of_what_the_row_carried(
    engine: Engine,
) -> None:
    substep_1, failed_1, rec_1 = _operation(1)
    substep_2, failed_2, rec_2 = _operation(2)
    substep_3, failed_3, rec_3 = _operation(3)
    substep_4, failed_4, rec_4 = _operation(4)
    # carried both for "old": "new" (operation.*) keeps the failure
    insert_group(
        engine, [substep_1, failed_1], rec_1, ["old"], routed={"old": [substep_1.id, failed_1.id]}
    )
    # carried only the substep: "new" admits none of it (the failure was never "old"'s)
    insert_group(engine, [substep_2, failed_2], rec_2, ["old"], routed={"old": [substep_2.id]})
    # before 0007: "new"'s filters over the whole group
    insert_group(engine, [substep_3, failed_3], rec_3, ["old"])
    # "new" has this group already: the row stays with "old"
    insert_group(
        engine,
        [substep_4, failed_4],
        rec_4,
        ["old", "new"],
        routed={"old": [substep_4.id, failed_4.id], "new": [failed_4.id]},
    )
    with engine.begin() as connection:  # one dead row: reassigned due now, attempts reset
        connection.execute(update(outbox).where(outbox.c.id == 1).values(state="dead", attempts=5))
    with http_receiver() as receiver:
        new = _hook(receiver, name="new", events=("operation.*",))
        done = outbox_module.reassign(
            engine,
            old="old",
            new="new",
            now_ms=NOW_MS,
            admits=lambda event: event_matches(new, event),
        )
        assert (done.moved, done.empty, done.kept) == (3, 1, 1)
        rows = {(row.group_id, row.channel): row for row in _rows(engine)}
        moved = {key[0]: json.loads(row.event_ids) for key, row in rows.items() if key[1] == "new"}
        assert list(moved.values()) == [[failed_1.id], [], [failed_3.id], [failed_4.id]]
        [kept] = [row for (_, channel), row in rows.items() if channel == "old"]
        assert json.loads(kept.event_ids) == [substep_4.id, failed_4.id]
        first = next(iter(rows.values()))  # the dead row, handed over due now
        assert (first.channel, first.state, first.attempts, first.next_attempt_at) == (
            "new",
            "pending",
            0,
            NOW_MS,
        )

        stats = _dispatch(engine, [new])
        sent = sorted(_sent_ids(receiver))
    assert sent == sorted([failed_1.id, failed_3.id, failed_4.id])
    assert (stats.sent, stats.messages) == (4, 3)  # the empty one is done without a request


def test_reassign_moves_rows_whose_stored_data_cannot_be_read_as_they_are(
    engine: Engine,
) -> None:
    insert_group(engine, [SUBSTEP, FAILED], REC, ["old"], routed={"old": [FAILED.id]})
    with engine.begin() as connection:
        connection.execute(update(outbox).values(event_ids="not json"))
    done = outbox_module.reassign(
        engine, old="old", new="new", now_ms=NOW_MS, admits=lambda event: True
    )
    assert (done.moved, done.empty, done.kept) == (1, 0, 0)
    [row] = _rows(engine)
    assert (row.channel, row.event_ids) == ("new", "not json")
