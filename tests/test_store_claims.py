"""Claimed deliveries (store/claims.py, used by the Dispatcher): two dispatchers on one
database never send the same row; a row is marked sent only by its claim's owner; an expired
claim is taken over. On a migrated SQLite file and on a real PostgreSQL database."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

import pytest
from delivery_support import NOW_MS, FakeClock, insert_group, make_config, record, status_event
from net_support import WAIT, http_receiver
from sqlalchemy import Engine, select, update

from notifier.config import ChannelConfig
from notifier.outbox import Dispatcher, DispatchStats
from notifier.store.claims import ClaimLost, Claims
from notifier.store.schema import outbox


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(outbox).order_by(outbox.c.id)))


def _groups(engine: Engine, count: int, channel: str = "hooks") -> None:
    for n in range(count):
        rec = record(operation_id=f"op-{n:03d}", status="finished")
        insert_group(engine, [status_event(rec, "processing", "finished")], rec, [channel])


def test_a_claimed_row_is_not_due_for_another_claimer_until_the_claim_expires(
    store_engine: Engine,
) -> None:
    _groups(store_engine, 3)
    claims = Claims(store_engine, ttl=60)
    first = claims.claim_due("token-a", ["hooks"], NOW_MS, 10)
    assert len(first) == 3
    assert claims.claim_due("token-b", ["hooks"], NOW_MS, 10) == []
    assert {row.claim_token for row in _rows(store_engine)} == {"token-a"}
    later = NOW_MS + 61_000
    with pytest.raises(ClaimLost):
        claims.hold("token-a", later)  # expired: the owner must stop sending
    assert len(claims.claim_due("token-b", ["hooks"], later, 10)) == 3  # taken over
    assert claims.release("token-a") == 0
    assert claims.release("token-b") == 3
    assert {row.claim_token for row in _rows(store_engine)} == {None}


def test_claims_are_per_operation_so_messages_still_coalesce(store_engine: Engine) -> None:
    rec = record(operation_id="op-1", status="processing")
    insert_group(store_engine, [status_event(rec, "waiting", "processing")], rec, ["hooks"])
    insert_group(
        store_engine, [status_event(rec, "processing", "finished")], rec, ["hooks"], now_ms=NOW_MS
    )
    with store_engine.begin() as connection:  # the second row is not due yet
        connection.execute(
            update(outbox).where(outbox.c.id == 2).values(next_attempt_at=NOW_MS + 10_000)
        )
    claims = Claims(store_engine, ttl=60)
    assert claims.claim_due("a", ["hooks"], NOW_MS, 1) == [("hooks", "prod", "op-1")]
    assert [row.claim_token for row in _rows(store_engine)] == ["a", "a"]


def test_a_dispatch_whose_claim_was_taken_over_records_nothing(store_engine: Engine) -> None:
    """The owner is frozen past its claim; another dispatcher takes the row over and sends
    it. The old owner's late result must not overwrite the row's state."""
    _groups(store_engine, 1)
    with http_receiver() as receiver:
        hooks = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/",))
        clock = FakeClock()
        frozen = Dispatcher(make_config([hooks]), store_engine, clock=clock, sleep=clock.sleep)
        frozen._token = "frozen"
        keys = frozen._claims.claim_due("frozen", ["hooks"], frozen._now_ms(), 10)
        assert keys
        later = frozen._now_ms() + frozen._claims.ttl_ms + 1
        other = Claims(store_engine, ttl=60)
        assert other.claim_due("other", ["hooks"], later, 10) == keys
        # the frozen dispatcher resumes and tries to record the row as sent: no match
        with store_engine.begin() as connection:
            from notifier.store.claims import owned

            result = connection.execute(
                update(outbox).where(owned("frozen")).values(state="sent", claim_token=None)
            )
        assert result.rowcount == 0
        assert [row.state for row in _rows(store_engine)] == ["pending"]
        assert [row.claim_token for row in _rows(store_engine)] == ["other"]


def test_two_dispatchers_at_once_send_every_event_exactly_once(store_engine: Engine) -> None:
    _groups(store_engine, 40)
    with http_receiver(delay=0.01) as receiver:
        hooks = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/",))
        dispatchers = [
            Dispatcher(make_config([hooks], batch_size=5), store_engine) for _ in range(2)
        ]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def work(dispatcher: Dispatcher) -> None:
            try:
                barrier.wait(30)
                for _ in range(40):
                    dispatcher.dispatch_due()
                    if all(row.state == "sent" for row in _rows(store_engine)):
                        return
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(d,)) for d in dispatchers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        requests = list(receiver.requests)
    assert not errors
    ids = Counter(request.headers["webhook-id"] for request in requests)
    assert len(ids) == 40
    assert set(ids.values()) == {1}, [i for i, n in ids.items() if n > 1]
    rows = _rows(store_engine)
    assert {row.state for row in rows} == {"sent"}
    assert {row.claim_token for row in rows} == {None}


def test_a_dispatch_that_fails_releases_its_claim(store_engine: Engine) -> None:
    _groups(store_engine, 2)
    with http_receiver(default_status=500) as receiver:
        hooks = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/",))
        clock = FakeClock()
        dispatcher = Dispatcher(make_config([hooks]), store_engine, clock=clock, sleep=clock.sleep)
        stats = dispatcher.dispatch_due()
    assert stats.failed == 2
    rows = _rows(store_engine)
    assert {row.claim_token for row in rows} == {None}
    assert {row.attempts for row in rows} == {1}


def test_a_success_whose_claim_was_taken_over_in_flight_is_not_recorded(
    store_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The request is on the wire past the claim's expiry and another instance takes the
    row over: the late success goes through the batched result writer, which matches the
    claim token, so it records nothing, says so once, and is not counted as sent."""
    _groups(store_engine, 1)
    with http_receiver() as receiver:
        receiver.hold_next()
        hooks = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/",))
        clock = FakeClock()
        slow = Dispatcher(make_config([hooks]), store_engine, clock=clock, sleep=clock.sleep)
        found: list[DispatchStats] = []
        worker = threading.Thread(target=lambda: found.append(slow.dispatch_due()), daemon=True)
        with caplog.at_level(logging.WARNING, logger="notifier"):
            worker.start()
            assert receiver.wait_held(WAIT)
            later = slow._now_ms() + slow._claims.ttl_ms + 1
            assert Claims(store_engine, ttl=60).claim_due("other", ["hooks"], later, 10)
            receiver.release()
            worker.join(WAIT)
            assert not worker.is_alive()
    (stats,) = found
    assert (stats.sent, stats.handled) == (0, 0)
    (row,) = _rows(store_engine)
    assert (row.state, row.attempts, row.done_targets, row.claim_token) == (
        "pending",
        0,
        "[]",
        "other",
    )
    warnings = [r.getMessage() for r in caplog.records if "took it over" in r.getMessage()]
    assert warnings == [
        f"delivery {row.id}: its claim expired and another instance took it "
        "over; its result here is not recorded"
    ]
