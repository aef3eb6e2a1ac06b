"""Leases with fencing (store/lease.py) and the keeper that spreads sources over instances
(leadership.py), on a migrated SQLite file and on a real PostgreSQL database."""

from __future__ import annotations

import threading

import pytest
from clock_support import FakeClock
from sqlalchemy import Engine, func, select, update

from notifier.errors import LeaseLost
from notifier.leadership import LeaseKeeper
from notifier.model import OperationRecord
from notifier.store.lease import (
    Fence,
    LeaseStore,
    fair_share,
    leadership,
    preference,
)
from notifier.store.repository import CycleWrite, Repository, SnapshotWrite, SourceState
from notifier.store.schema import events, instances, leases, snapshots


def _expire(engine: Engine, source: str) -> None:
    """The holder stopped renewing long ago (instead of waiting ``ttl`` for real)."""
    with engine.begin() as connection:
        connection.execute(update(leases).where(leases.c.source == source).values(expires_at=0))


def _expire_instance(engine: Engine, holder: str) -> None:
    with engine.begin() as connection:
        connection.execute(update(instances).where(instances.c.id == holder).values(expires_at=0))


def test_take_renew_and_takeover_bump_the_epoch_only_on_takeover(store_engine: Engine) -> None:
    first = LeaseStore(store_engine, "a", ttl=30)
    second = LeaseStore(store_engine, "b", ttl=30)
    taken = first.acquire("prod")
    assert taken is not None
    assert taken.epoch == 1
    assert second.acquire("prod") is None  # valid and someone else's
    renewed = first.acquire("prod")
    assert renewed is not None
    assert renewed.epoch == 1
    assert renewed.expires_at >= taken.expires_at
    _expire(store_engine, "prod")
    took_over = second.acquire("prod")
    assert took_over is not None
    assert took_over.epoch == 2
    assert took_over.holder == "b"
    assert first.acquire("prod") is None
    # its own lease after it lapsed is a takeover too: a poll under the old epoch is fenced
    _expire(store_engine, "prod")
    again = second.acquire("prod")
    assert again is not None
    assert again.epoch == 3


def test_release_lets_another_instance_take_over_at_once_and_epochs_only_grow(
    store_engine: Engine,
) -> None:
    first = LeaseStore(store_engine, "a", ttl=30)
    second = LeaseStore(store_engine, "b", ttl=30)
    assert first.acquire("prod") is not None
    assert first.release(["prod"]) == 1
    lease = second.acquire("prod")
    assert lease is not None
    assert lease.epoch == 2
    assert first.release(["prod"]) == 0  # not its lease any more: nothing happens
    with store_engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(leases)).scalar_one() == 1


def test_exactly_one_of_many_concurrent_takers_wins(store_engine: Engine) -> None:
    stores = [LeaseStore(store_engine, f"holder-{n}", ttl=30) for n in range(8)]
    barrier = threading.Barrier(len(stores))
    won: list[str] = []
    errors: list[BaseException] = []

    def take(store: LeaseStore) -> None:
        try:
            barrier.wait(30)
            if store.acquire("prod") is not None:
                won.append(store.holder)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(won) == 1


def _cycle(source: str, operation_id: str, fence: Fence | None) -> CycleWrite:
    record = OperationRecord(operation_id=operation_id, status="processing")
    return CycleWrite(
        state=SourceState(source=source, last_poll_at=1, last_success_at=1, baseline_at=1),
        now_ms=1,
        snapshots=[SnapshotWrite(record, "{}", "hash", True)],
        fence=fence,
    )


def test_a_poll_under_a_lost_lease_writes_nothing(store_engine: Engine) -> None:
    """The fencing check is the transaction's last statement: after a takeover the old
    leader's whole cycle rolls back (the frozen-leader case)."""
    old = LeaseStore(store_engine, "old", ttl=30)
    new = LeaseStore(store_engine, "new", ttl=30)
    repository = Repository(store_engine)
    lease = old.acquire("prod")
    assert lease is not None
    repository.write_cycle(_cycle("prod", "op-1", old.fence(lease)))  # still held: written
    _expire(store_engine, "prod")
    newer = new.acquire("prod")
    assert newer is not None
    with pytest.raises(LeaseLost):
        repository.write_cycle(_cycle("prod", "op-2", old.fence(lease)))
    repository.write_cycle(_cycle("prod", "op-3", new.fence(newer)))
    with store_engine.connect() as connection:
        ids = sorted(connection.scalars(select(snapshots.c.operation_id)))
        assert connection.execute(select(func.count()).select_from(events)).scalar_one() == 0
    assert ids == ["op-1", "op-3"]


def test_an_expired_lease_fences_even_before_anyone_takes_it(store_engine: Engine) -> None:
    store = LeaseStore(store_engine, "old", ttl=30)
    lease = store.acquire("prod")
    assert lease is not None
    _expire(store_engine, "prod")
    with pytest.raises(LeaseLost):
        Repository(store_engine).write_cycle(_cycle("prod", "op-1", store.fence(lease)))


def test_long_operation_ids_and_statuses_are_stored(store_engine: Engine) -> None:
    """300-character ids and 100-character statuses fit on SQLite and PostgreSQL alike."""
    record = OperationRecord(operation_id="x" * 300, status="s" * 100)
    Repository(store_engine).write_cycle(
        CycleWrite(
            state=SourceState(source="prod"),
            now_ms=1,
            snapshots=[SnapshotWrite(record, "{}", "hash", True)],
        )
    )
    with store_engine.connect() as connection:
        row = connection.execute(select(snapshots.c.operation_id, snapshots.c.status)).one()
    assert (len(row.operation_id), len(row.status)) == (300, 100)


def test_instances_and_leases_are_listed_for_status(store_engine: Engine) -> None:
    first = LeaseStore(store_engine, "a", ttl=30)
    second = LeaseStore(store_engine, "b", ttl=30)
    first.heartbeat(hostname="host-a", pid=11)
    second.heartbeat(hostname="host-b", pid=22)
    assert first.live_instances() == 2
    first.acquire("prod")
    view = leadership(store_engine)
    assert view is not None
    data = view.to_dict()
    by_id = {item["id"]: item for item in data["instances"]}
    assert by_id["a"]["pid"] == 11
    assert by_id["a"]["alive"]
    assert [lease["source"] for lease in by_id["a"]["leads"]] == ["prod"]
    assert by_id["a"]["leads"][0]["epoch"] == 1
    assert 0 < by_id["a"]["leads"][0]["expires_in_seconds"] <= 30
    assert by_id["b"]["leads"] == []
    _expire_instance(store_engine, "b")
    assert first.live_instances() == 1
    second.unregister()
    view = leadership(store_engine)
    assert view is not None
    assert [item.id for item in view.instances] == ["a"]


@pytest.mark.parametrize(
    ("sources", "instances", "share"),
    [(1, 1, 1), (1, 2, 1), (2, 2, 1), (3, 2, 2), (5, 3, 2), (0, 2, 0)],
    ids=["alone", "standby", "even", "odd", "three", "nothing"],
)
def test_fair_share(sources: int, instances: int, share: int) -> None:
    assert fair_share(sources, instances) == share


def test_preference_differs_between_instances() -> None:
    names = [f"s{n}" for n in range(8)]
    assert sorted(preference("a", names)) == names
    assert preference("a", names) != preference("b", names)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def _keeper(engine: Engine, holder: str, clock: FakeClock) -> LeaseKeeper:
    return LeaseKeeper(LeaseStore(engine, holder, ttl=30), 30, clock=clock)


def test_two_keepers_split_the_sources_and_one_takes_all_when_the_other_dies(
    store_engine: Engine, clock: FakeClock
) -> None:
    sources = ["s1", "s2", "s3", "s4"]
    first = _keeper(store_engine, "a", clock)
    assert first.maintain(sources).gained == sources  # alone: it leads everything
    second = _keeper(store_engine, "b", clock)
    assert second.maintain(sources).gained == []  # all leased: a standby for now
    lost = first.maintain(sources).lost  # sees two instances: hands two over
    assert len(lost) == 2
    gained = second.maintain(sources).gained
    assert sorted(gained) == sorted(lost)
    assert sorted(first.led() + second.led()) == sources
    assert not set(first.led()) & set(second.led())
    # the second instance dies (kill -9): its leases and heartbeat lapse
    for name in second.led():
        _expire(store_engine, name)
    _expire_instance(store_engine, "b")
    assert sorted(first.maintain(sources).gained) == sorted(gained)
    assert first.led() == sources


def test_a_keeper_that_cannot_renew_stops_leading_after_the_ttl(
    store_engine: Engine, clock: FakeClock
) -> None:
    keeper = _keeper(store_engine, "a", clock)
    keeper.maintain(["prod"])
    assert keeper.leads("prod")
    store_engine.dispose()
    keeper.store.engine = _broken_engine()
    clock.now += 10
    keeper.maintain(["prod"])  # the database is gone: logged, retried soon
    assert keeper.failing
    assert keeper.leads("prod")  # still inside its lease
    clock.now += 30
    changes = keeper.maintain(["prod"])
    assert changes.lost == ["prod"]
    assert not keeper.leads("prod")


def test_release_all_hands_every_lease_over(store_engine: Engine, clock: FakeClock) -> None:
    first = _keeper(store_engine, "a", clock)
    first.maintain(["s1", "s2"])
    first.release_all()
    second = _keeper(store_engine, "b", clock)
    assert second.maintain(["s1", "s2"]).gained == ["s1", "s2"]
    assert {second.epoch("s1"), second.epoch("s2")} == {2}


def _broken_engine() -> Engine:
    from notifier.store import db

    return db.make_engine("postgresql+psycopg://nobody@/none?host=%2Fnonexistent-socket-dir")
