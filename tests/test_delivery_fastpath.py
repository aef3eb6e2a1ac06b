"""The delivery fast path: webhooks over httpx with our User-Agent, results committed in
batches by the writer thread (also while the next send hangs), and the dispatcher's stop:
no row taken after it, a send cut short by it is not an attempt. The store tests run on
SQLite and on the suite's real PostgreSQL (conftest's ``store_engine``)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from delivery_support import insert_group, make_config, record, status_event
from net_support import http_receiver
from sqlalchemy import Engine, create_engine, event, select, update

from notifier import __version__
from notifier.config import ChannelConfig
from notifier.errors import StoreError
from notifier.outbox import Dispatcher
from notifier.store import db
from notifier.store.outbox_writes import ResultWriter
from notifier.store.schema import outbox

WAIT = 30.0


@pytest.fixture
def store(store_engine: Engine) -> Engine:
    """A migrated store: a SQLite file or a fresh database of the session's PostgreSQL
    (conftest's ``store_engine``)."""
    return store_engine


def _rows(engine: Engine) -> list[tuple[str, int, list[str]]]:
    with engine.connect() as connection:
        return [
            (row.state, row.attempts, json.loads(row.done_targets))
            for row in connection.execute(select(outbox).order_by(outbox.c.id))
        ]


def _fill(engine: Engine, count: int, channel: str = "hook") -> None:
    now_ms = int(time.time() * 1000)
    for number in range(count):
        rec = record(operation_id=f"BCSSVC01-99-17000000000000003{number:02d}", status="failed")
        insert_group(
            engine, [status_event(rec, "processing", "failed")], rec, [channel], now_ms=now_ms
        )


def _hook(base: str) -> ChannelConfig:
    return ChannelConfig(name="hook", urls=(f"webhook://{base}/hook",))


def test_webhooks_identify_as_bcs_notifier(engine: Engine) -> None:
    _fill(engine, 2)
    with http_receiver() as receiver:
        stats = Dispatcher(make_config([_hook(receiver.base)]), engine).dispatch_due()
        requests = receiver.accepted
    assert stats.sent == 2
    assert {request.headers["user-agent"] for request in requests} == {
        f"bcs-notifier/{__version__}"
    }
    assert all("apprise" not in str(request.headers).lower() for request in requests)


def test_a_success_is_committed_while_the_next_send_hangs(store: Engine) -> None:
    _fill(store, 3)
    with http_receiver() as receiver:
        receiver.hold_next(skip=1)
        dispatcher = Dispatcher(make_config([_hook(receiver.base)]), store)
        worker = threading.Thread(target=dispatcher.dispatch_due, daemon=True)
        worker.start()
        assert receiver.wait_held(WAIT)
        deadline = time.monotonic() + WAIT
        while not _rows(store)[0][2]:  # the first row's success, recorded mid-dispatch
            assert time.monotonic() < deadline, "the first success was not committed"
            time.sleep(0.02)
        assert [state for state, _, _ in _rows(store)] == ["sent", "pending", "pending"]
        receiver.release()
        worker.join(WAIT)
    assert not worker.is_alive()
    assert [state for state, _, _ in _rows(store)] == ["sent"] * 3


def test_the_writer_commits_in_batches(store: Engine) -> None:
    _fill(store, 120)
    with store.connect() as connection:
        ids = list(connection.execute(select(outbox.c.id)).scalars())
    writer = ResultWriter(store)
    try:
        for row_id in ids:
            writer.write(row_id, {"done_targets": json.dumps([f"k{row_id}"])})
        writer.flush()
    finally:
        writer.close()
    assert writer.commits < len(ids) / 2  # batches, not one transaction per result
    assert [done for _, _, done in _rows(store)] == [[f"k{row_id}"] for row_id in ids]


def test_the_writer_records_only_rows_its_claim_still_holds(store: Engine) -> None:
    """With a claim token every write matches it: a row claimed by another token (taken
    over) keeps its values and is reported as lost; the others are written."""
    _fill(store, 3)
    with store.connect() as connection:
        ids = list(connection.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars())
    expires = int(time.time() * 1000) + 60_000
    with store.begin() as connection:
        for row_id, token in zip(ids, ["mine", "mine", "theirs"], strict=True):
            connection.execute(
                update(outbox)
                .where(outbox.c.id == row_id)
                .values(claim_token=token, claim_expires_at=expires)
            )
    writer = ResultWriter(store, token="mine")
    try:
        for row_id in ids:
            writer.write(row_id, {"done_targets": json.dumps(["k"])})
        writer.flush()
    finally:
        writer.close()
    assert writer.lost == {ids[2]}
    assert [done for _, _, done in _rows(store)] == [["k"], ["k"], []]


def test_a_batch_whose_connection_the_server_dropped_is_committed_again(postgres: Any) -> None:
    """``pg_terminate_backend`` of the writer's session just before its batch: the batch is
    committed again on a fresh connection instead of failing the dispatch (which would send
    its rows a second time)."""
    pg = db.make_engine(postgres.create_database())
    try:
        db.upgrade(pg)
        _fill(pg, 3)
        dropped: list[int] = []

        @event.listens_for(pg, "before_cursor_execute")
        def drop(connection: Any, cursor: Any, statement: str, *_: Any) -> None:
            if not dropped and statement.lstrip().startswith("UPDATE outbox"):
                pid = connection.connection.dbapi_connection.info.backend_pid
                postgres.admin("SELECT pg_terminate_backend(:pid)", pid=pid)
                dropped.append(pid)

        with pg.connect() as connection:
            ids = list(connection.execute(select(outbox.c.id).order_by(outbox.c.id)).scalars())
        writer = ResultWriter(pg)
        try:
            for row_id in ids:
                writer.write(row_id, {"done_targets": json.dumps(["k"])})
            writer.flush()
        finally:
            writer.close()
        assert len(dropped) == 1
        assert [done for _, _, done in _rows(pg)] == [["k"]] * 3
    finally:
        pg.dispose()


def test_a_failed_commit_is_a_store_error(tmp_path: Path) -> None:
    unmigrated = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    writer = ResultWriter(unmigrated)
    try:
        writer.write(1, {"done_targets": "[]"})
        with pytest.raises(StoreError, match="cannot record a delivery"):
            writer.flush()
        with pytest.raises(StoreError):
            writer.write(2, {"done_targets": "[]"})  # nothing more is accepted
    finally:
        writer.close()
        unmigrated.dispose()


def test_a_stopped_dispatcher_takes_no_row(store: Engine) -> None:
    _fill(store, 3)
    with http_receiver() as receiver:
        dispatcher = Dispatcher(make_config([_hook(receiver.base)]), store)
        dispatcher.stop_within(0)
        stats = dispatcher.dispatch_due()
        assert receiver.snapshot() == []
    assert stats.handled == 0
    assert _rows(store) == [("pending", 0, [])] * 3


def test_a_send_cut_short_by_the_stop_is_not_an_attempt(store: Engine) -> None:
    _fill(store, 2)
    with http_receiver(delay=10) as receiver:  # answers far later than the stop allows
        dispatcher = Dispatcher(make_config([_hook(receiver.base)], timeout=30), store)
        dispatcher.stop_within(1.0)
        stats = dispatcher.dispatch_due()
        receiver.release()
    assert (stats.failed, stats.dead, stats.sent) == (0, 0, 0)
    assert _rows(store) == [("pending", 0, [])] * 2  # due as before, for the next start
