"""Helpers for the delivery tests: records, events, outbox rows, configs, a fake clock."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from clock_support import FakeClock as SharedFakeClock
from sqlalchemy import Engine, insert

from notifier.config import ChannelConfig, Config, DeliveryConfig, ServiceConfig
from notifier.model import Event, EventType, OperationRecord, Step, SubStep, event_id
from notifier.store.schema import event_groups, events, outbox

T0_NS = 1_700_000_000_000_000_000
NOW_MS = 1_700_000_100_000


def record(
    operation_id: str = "BCSSVC01-99-1700000000000000001",
    status: str = "processing",
    *,
    steps: Sequence[Step] = (),
    name: str = "bcs-prod",
    record_time: int = T0_NS,
) -> OperationRecord:
    return OperationRecord(
        operation_id=operation_id,
        status=status,
        resource_type="BCSSVC01",
        operation_type="99",
        project_id="p" * 32,
        blockchain_id="23604f57-eac9-3777-e9f5-ae87457f2338",
        blockchain_name=name,
        record_time=record_time,
        steps=tuple(steps),
    )


def step(name: str, status: str, serial: int, subs: Sequence[SubStep] = ()) -> Step:
    return Step(name=name, status=status, serial_num=serial, sub_steps=tuple(subs))


def sub(
    name: str,
    status: str,
    serial: int,
    *,
    start: int = 0,
    end: int = 0,
    message: Sequence[str] = (),
) -> SubStep:
    return SubStep(
        name=name,
        status=status,
        serial_num=serial,
        start_time=start,
        end_time=end,
        message=tuple(message),
    )


def event_for(
    rec: OperationRecord,
    event_type: EventType,
    *,
    source: str = "prod",
    step_name: str | None = None,
    substep: str | None = None,
    from_status: str | None = None,
    to_status: str | None = None,
    detail: str | None = None,
    message: Sequence[str] = (),
    started_at: int = 0,
    ended_at: int = 0,
) -> Event:
    return Event(
        id=event_id(
            source, rec.operation_id, step_name, substep, from_status, to_status, rec.record_time
        ),
        type=event_type,
        source=source,
        operation_id=rec.operation_id,
        record_time=rec.record_time,
        operation=rec.summary(),
        step=step_name,
        substep=substep,
        from_status=from_status,
        to_status=to_status,
        detail=detail,
        message=tuple(message),
        started_at=started_at,
        ended_at=ended_at,
    )


def status_event(rec: OperationRecord, from_status: str, to_status: str) -> Event:
    return event_for(
        rec, EventType.OPERATION_STATUS_CHANGED, from_status=from_status, to_status=to_status
    )


def substep_failed(
    rec: OperationRecord, step_name: str, substep: str, message: Sequence[str] = ()
) -> Event:
    """The sub-step ``step_name › substep`` of ``rec`` went from processing to failed."""
    return event_for(
        rec,
        EventType.SUBSTEP_STATUS_CHANGED,
        step_name=step_name,
        substep=substep,
        from_status="processing",
        to_status="failed",
        message=message,
    )


_group_counter = iter(range(1, 1_000_000))


def insert_group(
    engine: Engine,
    group_events: Sequence[Event],
    rec: OperationRecord | None,
    channels: Sequence[str],
    *,
    now_ms: int = NOW_MS,
    group_id: str | None = None,
    routed: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """What the pipeline writes in one transaction: group, events, one outbox row per channel.

    ``routed``: channel -> the event ids stored with its row (``outbox.event_ids``, the
    routing decided at write); a channel not in it gets NULL, a row written before
    revision 0007 (routed at dispatch)."""
    group_id = group_id or f"grp_{next(_group_counter):06d}"
    first = group_events[0]
    with engine.begin() as connection:
        connection.execute(
            insert(event_groups).values(
                id=group_id,
                source=first.source,
                operation_id=first.operation_id,
                created_at=now_ms,
                record=json.dumps(rec.to_dict()) if rec is not None else None,
            )
        )
        for event in group_events:
            connection.execute(
                insert(events).values(
                    id=event.id,
                    group_id=group_id,
                    source=event.source,
                    operation_id=event.operation_id,
                    type=str(event.type),
                    record_time=event.record_time,
                    created_at=now_ms,
                    payload=json.dumps(event.to_dict()),
                )
            )
        for channel in channels:
            connection.execute(
                insert(outbox).values(
                    group_id=group_id,
                    channel=channel,
                    state="pending",
                    attempts=0,
                    created_at=now_ms,
                    next_attempt_at=now_ms,
                    updated_at=now_ms,
                    done_targets="[]",
                    event_ids=(
                        json.dumps(list(routed[channel]))
                        if routed is not None and channel in routed
                        else None
                    ),
                )
            )
    return group_id


def make_config(
    channels: Sequence[ChannelConfig], database: str = "sqlite://", **delivery: Any
) -> Config:
    return Config(
        service=ServiceConfig(database=database),
        delivery=DeliveryConfig(**delivery),
        sources=(),
        channels=tuple(channels),
    )


class FakeClock(SharedFakeClock):
    """The shared fake clock (``clock_support``) at ``NOW_MS``: its monotonic reading in
    seconds equals the wall time, so the dispatcher's pacing and its stored ms agree."""

    def __init__(self, start: float = NOW_MS / 1000) -> None:
        super().__init__(start, wall_start_ms=round(start * 1000))
