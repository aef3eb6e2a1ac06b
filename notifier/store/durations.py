"""Stall detection's store: learned durations and alerted stalls.

:class:`StallWatch` loads what one cycle needs (the stored alerts of the source, the
samples of the running steps' keys), calls the pure policy in :mod:`notifier.stalls` and
returns the stall events and a :class:`StallWrite`; :func:`write_stalls` writes that inside
the cycle's transaction (``Repository.write_cycle``), so the snapshots, the events and the
alert state commit together and a restart never sends a stall again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RowMapping,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import StoreError
from notifier.model import Event, OperationRecord
from notifier.stalls import (
    ALERT_RETENTION_NS,
    MAX_SAMPLES,
    Alert,
    DurationKey,
    Sample,
    StallPlan,
    StallSettings,
    Usual,
    learned_samples,
    plan_stalls,
    running_keys,
    stall_event,
    usual,
)
from notifier.store.db import chunks
from notifier.store.schema import stall_alerts, step_durations

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StallWrite:
    """What one cycle writes for stall detection (with the cycle, in one transaction)."""

    source: str
    samples: Sequence[Sample] = ()
    plan: StallPlan = field(default_factory=StallPlan)
    #: the API's time of the cycle (0: unknown); alerts older than ALERT_RETENTION_NS go
    now_ns: int = 0


@dataclass(frozen=True, slots=True)
class StallCycle:
    events: tuple[Event, ...]
    write: StallWrite


@dataclass(frozen=True, slots=True)
class DurationRow:
    """One line of ``bcs-notifier durations``."""

    key: DurationKey
    usual: Usual


class StallWatch:
    """Learns durations and decides stalls for the poller (reads only; see ``write_stalls``)."""

    def __init__(self, engine: Engine, settings: StallSettings) -> None:
        self.engine = engine
        self.settings = settings

    def observe(
        self,
        source: str,
        records: Sequence[OperationRecord],
        changed: Iterable[tuple[OperationRecord | None, OperationRecord]],
        now_ns: int,
        *,
        check: bool = True,
        learned: Sequence[Sample] = (),
    ) -> StallCycle:
        """One cycle: ``records`` are the current state of the operations the cycle saw,
        ``changed`` the (previous, current) pairs stored now (``previous`` None: new, the
        baseline included), ``now_ns`` the API's time. ``check`` False learns only;
        ``learned``: samples read before the records were slimmed (a silent baseline)."""
        samples = [sample for before, after in changed for sample in learned_samples(before, after)]
        samples.extend(learned)
        plan = StallPlan()
        if check and now_ns > 0:
            active = [record for record in records if record.is_active]
            alerts = self.alerts(source, [record.operation_id for record in active])
            watched = {record.operation_id for record in active} | {
                alert.operation_id for alert in alerts if alert.open
            }
            considered = [record for record in records if record.operation_id in watched]
            keys = running_keys(considered)
            known = self.usual(keys, samples) if keys else {}
            plan = plan_stalls(considered, alerts, known, now_ns, self.settings)
        by_id = {record.operation_id: record for record in records}
        events = tuple(
            stall_event(source, by_id[notice.alert.operation_id], notice, now_ns)
            for notice in plan.notices
        )
        for event in events:
            logger.info(
                "%s: %s %s stalled: %s", source, event.operation_id, event.step, event.stall
            )
        return StallCycle(events, StallWrite(source, samples, plan, now_ns))

    # -- reads ------------------------------------------------------------------------------

    def alerts(self, source: str, operation_ids: Sequence[str]) -> list[Alert]:
        """Every open alert of ``source``, and every alert of ``operation_ids``."""
        found: dict[tuple[str, str, str, int], Alert] = {}
        mine = stall_alerts.c.source == source
        queries = [select(stall_alerts).where(mine, stall_alerts.c.ended_at.is_(None))]
        queries.extend(
            select(stall_alerts).where(mine, stall_alerts.c.operation_id.in_(chunk))
            for chunk in chunks(operation_ids)
        )
        try:
            with self.engine.connect() as connection:
                for query in queries:
                    for row in connection.execute(query).mappings():
                        alert = _alert(row)
                        found[(*alert.item, alert.episode)] = alert
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read the stall alerts of {source}: {exc}") from exc
        return list(found.values())

    def usual(
        self, keys: Iterable[DurationKey], extra: Sequence[Sample] = ()
    ) -> dict[DurationKey, Usual]:
        """The usual durations of ``keys``: stored samples plus ``extra`` (this cycle's)."""
        result: dict[DurationKey, Usual] = {}
        pending: dict[DurationKey, list[Sample]] = {}
        for sample in extra:
            pending.setdefault(sample.key, []).append(sample)
        try:
            with self.engine.connect() as connection:
                for key in keys:
                    rows = connection.execute(
                        select(
                            step_durations.c.operation_id,
                            step_durations.c.duration_ns,
                            step_durations.c.ended_at,
                        )
                        .where(_key_clause(key))
                        .order_by(step_durations.c.ended_at.desc(), step_durations.c.id.desc())
                        .limit(MAX_SAMPLES)
                    ).all()
                    merged = {row.operation_id: (row.ended_at, row.duration_ns) for row in rows}
                    for sample in pending.get(key, ()):
                        learned = (sample.ended_at, sample.duration_ns)
                        merged.setdefault(sample.operation_id, learned)
                    newest = sorted(merged.values(), reverse=True)[:MAX_SAMPLES]
                    found = usual([duration for _ended, duration in newest], self.settings)
                    if found is not None:
                        result[key] = found
        except SQLAlchemyError as exc:
            raise StoreError(f"could not read the learned durations: {exc}") from exc
        return result


def duration_table(engine: Engine, settings: StallSettings) -> list[DurationRow]:
    """Every learned key with its usual duration, sorted by key (``bcs-notifier durations``)."""
    columns = (
        step_durations.c.resource_type,
        step_durations.c.operation_type,
        step_durations.c.step,
        step_durations.c.substep,
    )
    grouped: dict[DurationKey, list[tuple[int, int, int]]] = {}
    try:
        with engine.connect() as connection:
            query = select(
                *columns,
                step_durations.c.id,
                step_durations.c.duration_ns,
                step_durations.c.ended_at,
            )
            for row in connection.execute(query):
                key = DurationKey(row.resource_type, row.operation_type, row.step, row.substep)
                grouped.setdefault(key, []).append((row.ended_at, row.id, row.duration_ns))
    except SQLAlchemyError as exc:
        raise StoreError(f"could not read the learned durations: {exc}") from exc
    rows: list[DurationRow] = []
    for key in sorted(grouped):
        newest = sorted(grouped[key], reverse=True)[:MAX_SAMPLES]
        found = usual([duration for _ended, _id, duration in newest], settings)
        if found is not None:
            rows.append(DurationRow(key, found))
    return rows


# -- writes (inside the cycle's transaction) ------------------------------------------------------


def write_stalls(connection: Connection, write: StallWrite) -> None:
    _write_samples(connection, write.source, write.samples)
    plan = write.plan
    if plan.opened:
        connection.execute(
            insert(stall_alerts), [_alert_row(write.source, alert) for alert in plan.opened]
        )
    for alert in plan.raised:
        connection.execute(
            update(stall_alerts)
            .where(_alert_clause(write.source, alert))
            .values(level=alert.level, alerted_at=alert.alerted_at)
        )
    for alert in plan.closed:
        connection.execute(
            update(stall_alerts)
            .where(_alert_clause(write.source, alert))
            .values(ended_at=alert.ended_at)
        )
    if write.now_ns > ALERT_RETENTION_NS:
        horizon = write.now_ns - ALERT_RETENTION_NS
        connection.execute(
            delete(stall_alerts).where(
                stall_alerts.c.source == write.source,
                func.coalesce(stall_alerts.c.ended_at, stall_alerts.c.alerted_at) < horizon,
            )
        )


def _write_samples(connection: Connection, source: str, samples: Sequence[Sample]) -> None:
    if not samples:
        return
    unique: dict[tuple[str, str, str], Sample] = {}
    for sample in samples:
        unique.setdefault((sample.operation_id, sample.key.step, sample.key.substep), sample)
    operation_ids = sorted({sample.operation_id for sample in unique.values()})
    known: set[tuple[str, str, str]] = set()
    for chunk in chunks(operation_ids):
        query = select(
            step_durations.c.operation_id, step_durations.c.step, step_durations.c.substep
        ).where(step_durations.c.operation_id.in_(chunk))
        known.update((row.operation_id, row.step, row.substep) for row in connection.execute(query))
    by_key: dict[DurationKey, list[Sample]] = {}
    for item, sample in unique.items():
        if item not in known:
            by_key.setdefault(sample.key, []).append(sample)
    # only the newest MAX_SAMPLES of a key can stay (a first poll may bring thousands)
    fresh = [
        sample
        for samples in by_key.values()
        for sample in sorted(samples, key=lambda sample: sample.ended_at)[-MAX_SAMPLES:]
    ]
    if not fresh:
        return
    connection.execute(
        insert(step_durations),
        [
            {
                "resource_type": sample.key.resource_type,
                "operation_type": sample.key.operation_type,
                "step": sample.key.step,
                "substep": sample.key.substep,
                "operation_id": sample.operation_id,
                "source": source,
                "duration_ns": sample.duration_ns,
                "ended_at": sample.ended_at,
            }
            for sample in fresh
        ],
    )
    for key in sorted(by_key):
        _prune(connection, key)


def _prune(connection: Connection, key: DurationKey) -> None:
    """Keep the newest MAX_SAMPLES samples of ``key``."""
    count = connection.execute(
        select(func.count()).select_from(step_durations).where(_key_clause(key))
    ).scalar_one()
    if count <= MAX_SAMPLES:
        return
    keep = (
        select(step_durations.c.id)
        .where(_key_clause(key))
        .order_by(step_durations.c.ended_at.desc(), step_durations.c.id.desc())
        .limit(MAX_SAMPLES)
    )
    keep_ids = list(connection.scalars(keep))
    connection.execute(
        delete(step_durations).where(_key_clause(key), step_durations.c.id.not_in(keep_ids))
    )


def _key_clause(key: DurationKey) -> ColumnElement[bool]:
    return and_(
        step_durations.c.resource_type == key.resource_type,
        step_durations.c.operation_type == key.operation_type,
        step_durations.c.step == key.step,
        step_durations.c.substep == key.substep,
    )


def _alert_clause(source: str, alert: Alert) -> ColumnElement[bool]:
    return and_(
        stall_alerts.c.source == source,
        stall_alerts.c.operation_id == alert.operation_id,
        stall_alerts.c.step == alert.step,
        stall_alerts.c.substep == alert.substep,
        stall_alerts.c.episode == alert.episode,
    )


def _alert_row(source: str, alert: Alert) -> dict[str, object]:
    return {
        "source": source,
        "operation_id": alert.operation_id,
        "step": alert.step,
        "substep": alert.substep,
        "episode": alert.episode,
        "started_at": alert.started_at,
        "level": alert.level,
        "threshold_ns": alert.threshold_ns,
        "p95_ns": alert.p95_ns,
        "samples": alert.samples,
        "alerted_at": alert.alerted_at,
        "ended_at": alert.ended_at,
    }


def _alert(row: RowMapping) -> Alert:
    return Alert(
        operation_id=row["operation_id"],
        step=row["step"],
        substep=row["substep"],
        episode=int(row["episode"]),
        started_at=int(row["started_at"]),
        level=int(row["level"]),
        threshold_ns=int(row["threshold_ns"]),
        p95_ns=int(row["p95_ns"]),
        samples=int(row["samples"]),
        alerted_at=int(row["alerted_at"]),
        ended_at=int(row["ended_at"]) if row["ended_at"] is not None else None,
    )
