"""The stall store on SQLite and PostgreSQL, migrated by Alembic: samples, alerts, retention."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import Engine, func, select

from notifier.model import OPERATION_ID_MAX
from notifier.stalls import (
    ALERT_RETENTION_NS,
    NS,
    Alert,
    DurationKey,
    Sample,
    StallPlan,
    StallSettings,
)
from notifier.store.durations import StallWatch, StallWrite, duration_table, write_stalls
from notifier.store.schema import stall_alerts, step_durations

KEY = DurationKey("BCSSVC01", "99", "Create Cluster", "Create CCE cluster")
OTHER = DurationKey("BCSSVC01", "01", "Upgrade", "")
T0 = 1_800_000_000 * NS


@pytest.fixture
def engine(store_engine: Engine) -> Engine:
    """A database migrated to head through Alembic: a SQLite file, or PostgreSQL."""
    return store_engine


def samples(key: DurationKey, count: int, *, first: int = 0) -> list[Sample]:
    return [
        Sample(key, f"op-{key.operation_type}-{index}", (index + 1) * NS, T0 + index * NS)
        for index in range(first, first + count)
    ]


def write(engine: Engine, item: StallWrite) -> None:
    with engine.begin() as connection:
        write_stalls(connection, item)


def count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(table).where(*where)  # type: ignore[arg-type]
        return int(connection.execute(query).scalar_one())


def alert(operation_id: str, *, episode: int = 0, ended: int | None = None, at: int = T0) -> Alert:
    return Alert(
        operation_id, "Create Cluster", "", episode, T0 - 100 * NS, 0, NS, NS, 10, at, ended
    )


def test_learning_the_same_samples_twice_stores_them_once(engine: Engine) -> None:
    write(engine, StallWrite("a", samples(KEY, 5)))
    write(engine, StallWrite("a", samples(KEY, 5)))
    write(engine, StallWrite("b", samples(KEY, 5)))  # the same operations seen by another source
    assert count(engine, step_durations) == 5


def test_the_newest_samples_of_each_key_are_kept(engine: Engine) -> None:
    write(engine, StallWrite("a", samples(KEY, 150) + samples(OTHER, 3)))
    write(engine, StallWrite("a", samples(KEY, 120, first=150)))
    assert count(engine, step_durations, step_durations.c.operation_type == "99") == 200
    assert count(engine, step_durations, step_durations.c.operation_type == "01") == 3
    rows = {row.key: row.usual for row in duration_table(engine, StallSettings())}
    # the 200 newest are operations 70..269 with durations 71..270 s
    assert rows[KEY].samples == 200
    assert rows[KEY].p95_ns == 260 * NS  # rank 190 of 71..270
    assert rows[KEY].median_ns == 170 * NS  # rank 100
    assert rows[OTHER].threshold_ns is None  # 3 < 10 samples


def test_one_big_first_poll_stores_only_what_it_keeps(engine: Engine) -> None:
    write(engine, StallWrite("a", samples(KEY, 5000)))
    assert count(engine, step_durations) == 200
    watch = StallWatch(engine, StallSettings())
    found = watch.usual([KEY])[KEY]
    assert found.samples == 200
    assert found.p95_ns == 4990 * NS


def test_usual_counts_this_cycles_samples_without_counting_twice(engine: Engine) -> None:
    write(engine, StallWrite("a", samples(KEY, 10)))
    watch = StallWatch(engine, StallSettings())
    found = watch.usual([KEY], samples(KEY, 12))  # two new, ten already stored
    assert found[KEY].samples == 12


def test_alerts_are_stored_raised_closed_and_read_back(engine: Engine) -> None:
    first, second = alert("op-1"), alert("op-2")
    write(engine, StallWrite("a", plan=StallPlan(opened=(first, second)), now_ns=T0))
    watch = StallWatch(engine, StallSettings())
    assert sorted(a.operation_id for a in watch.alerts("a", [])) == ["op-1", "op-2"]
    assert watch.alerts("b", ["op-1"]) == []  # per source
    bumped = replace(first, level=2, alerted_at=T0 + NS)
    closed = replace(second, ended_at=T0 + 2 * NS)
    write(engine, StallWrite("a", plan=StallPlan(raised=(bumped,), closed=(closed,)), now_ns=T0))
    # open ones always; closed ones only for the operations asked about
    assert watch.alerts("a", []) == [bumped]
    assert sorted(a.operation_id for a in watch.alerts("a", ["op-2"])) == ["op-1", "op-2"]
    assert [a.ended_at for a in watch.alerts("a", ["op-2"]) if a.operation_id == "op-2"] == [
        T0 + 2 * NS
    ]


def test_old_alerts_are_dropped_after_the_retention(engine: Engine) -> None:
    old_closed = alert("op-1", ended=T0)
    old_open = alert("op-2", at=T0)
    recent = alert("op-3", ended=T0 + ALERT_RETENTION_NS)
    write(engine, StallWrite("a", plan=StallPlan(opened=(old_closed, old_open, recent))))
    assert count(engine, stall_alerts) == 3
    write(engine, StallWrite("a", now_ns=T0 + ALERT_RETENTION_NS + NS))
    with engine.connect() as connection:
        left = connection.execute(select(stall_alerts.c.operation_id)).scalars().all()
    assert left == ["op-3"]


def test_an_operation_id_as_long_as_the_snapshots_allow_is_learned_and_alerted(
    engine: Engine,
) -> None:
    """Migration 0004 lets snapshots hold 512-character operation ids; the stall tables
    take them too (PostgreSQL enforces the length: a shorter column failed the cycle)."""
    long_id = "BCSSVC01-99-" + "7" * (OPERATION_ID_MAX - 12)
    sample = Sample(KEY, long_id, 5 * NS, T0)
    opened = alert(long_id)
    write(engine, StallWrite("a", [sample], plan=StallPlan(opened=(opened,)), now_ns=T0))
    watch = StallWatch(engine, StallSettings())
    assert watch.usual([KEY], [])[KEY].samples == 1
    assert [a.operation_id for a in watch.alerts("a", [])] == [long_id]
