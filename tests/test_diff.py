"""The pure diff, table-driven from the API page's example record."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from notifier.bcs.parse import parse_record
from notifier.diff import diff_record
from notifier.model import EventType, OperationRecord

Mutation = Callable[[dict[str, Any]], None]
DEPENDENT = "Create Other Dependent Resource"


def _record(example_body: dict[str, Any], mutate: Mutation | None = None) -> OperationRecord:
    raw = copy.deepcopy(example_body["operation_records"][0])
    if mutate is not None:
        mutate(raw)
    return parse_record(raw)


def _sub(raw: dict[str, Any], step: str, sub: str) -> dict[str, Any]:
    result: dict[str, Any] = raw["operation_process"][step]["sub_steps"][sub]
    return result


def storage_starts(raw: dict[str, Any]) -> None:
    sub = _sub(raw, DEPENDENT, "Create network storage")
    sub.update(status="processing", detail=None, start_time=1618219100000000001)
    raw["record_time"] = 1618219100000000001


def storage_finishes_and_operation_finishes(raw: dict[str, Any]) -> None:
    sub = _sub(raw, DEPENDENT, "Create network storage")
    sub.update(status="finished", detail=None, start_time=5, end_time=1618219200000000000)
    raw["operation_process"][DEPENDENT]["status"] = "finished"
    raw["operation_status"] = "finished"
    raw["record_time"] = 1618219200000000000


def new_step_with_sub_step(raw: dict[str, Any]) -> None:
    raw["operation_process"]["Create Cluster"] = {
        "step_name": "Create Cluster",
        "status": "processing",
        "detail": "",
        "serial_num": 3,
        "sub_steps": {
            "Create CCE cluster": {
                "substep_name": "Create CCE cluster",
                "status": "processing",
                "serial_num": 4,
                "start_time": 1618219300000000000,
                "end_time": 0,
            }
        },
    }
    raw["record_time"] = 1618219300000000000


def storage_fails_and_operation_fails(raw: dict[str, Any]) -> None:
    sub = _sub(raw, DEPENDENT, "Create network storage")
    sub.update(status="failed", message=["quota exceeded: evs"], start_time=7, end_time=9)
    raw["operation_process"][DEPENDENT]["status"] = "failed"
    raw["operation_status"] = "failed"
    raw["message"] = ["create blockchain failed"]


def status_case_and_spacing_only(raw: dict[str, Any]) -> None:
    raw["operation_status"] = " PROCESSING "
    raw["operation_process"]["Preparation"]["status"] = "Finished"


def empty_status_becomes_explicit_waiting(raw: dict[str, Any]) -> None:
    _sub(raw, DEPENDENT, "Create network storage").update(status="waiting", detail=None)


def jump_from_waiting_to_finished(raw: dict[str, Any]) -> None:
    _sub(raw, DEPENDENT, "Create network storage").update(status="finished", detail="")


def unknown_future_status(raw: dict[str, Any]) -> None:
    raw["operation_status"] = "rolling_back"


def only_record_time_changes(raw: dict[str, Any]) -> None:
    raw["record_time"] += 1


CASES: list[tuple[str, Mutation, list[tuple[EventType, str | None, str | None, str | None]]]] = [
    (
        "substep-starts",
        storage_starts,
        [(EventType.SUBSTEP_STATUS_CHANGED, "Create network storage", "waiting", "processing")],
    ),
    (
        "finish-order-substep-step-operation",
        storage_finishes_and_operation_finishes,
        [
            (EventType.STEP_STATUS_CHANGED, None, "processing", "finished"),
            (EventType.SUBSTEP_STATUS_CHANGED, "Create network storage", "waiting", "finished"),
            (EventType.OPERATION_STATUS_CHANGED, None, "processing", "finished"),
        ],
    ),
    (
        "new-step-and-substep",
        new_step_with_sub_step,
        [
            (EventType.STEP_CREATED, None, None, "processing"),
            (EventType.SUBSTEP_CREATED, "Create CCE cluster", None, "processing"),
        ],
    ),
    (
        "failure",
        storage_fails_and_operation_fails,
        [
            (EventType.STEP_STATUS_CHANGED, None, "processing", "failed"),
            (EventType.SUBSTEP_STATUS_CHANGED, "Create network storage", "waiting", "failed"),
            (EventType.OPERATION_STATUS_CHANGED, None, "processing", "failed"),
        ],
    ),
    ("case-only", status_case_and_spacing_only, []),
    ("quirk-to-explicit-waiting", empty_status_becomes_explicit_waiting, []),
    (
        "missed-transition-reported-as-jump",
        jump_from_waiting_to_finished,
        [(EventType.SUBSTEP_STATUS_CHANGED, "Create network storage", "waiting", "finished")],
    ),
    (
        "unknown-status-kept",
        unknown_future_status,
        [(EventType.OPERATION_STATUS_CHANGED, None, "processing", "rolling_back")],
    ),
    ("record-time-only", only_record_time_changes, []),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_transitions(
    example_body: dict[str, Any],
    mutate: Mutation,
    expected: list[tuple[EventType, str | None, str | None, str | None]],
) -> None:
    before = _record(example_body)
    after = _record(example_body, mutate)
    events = diff_record("prod", before, after)
    assert [(e.type, e.substep, e.from_status, e.to_status) for e in events] == expected
    for event in events:
        assert event.source == "prod"
        assert event.operation_id == before.operation_id
        assert event.record_time == after.record_time
        assert event.operation["status"] == after.status


def test_new_operation_is_one_created_event(example_body: dict[str, Any]) -> None:
    record = _record(example_body)
    (event,) = diff_record("prod", None, record)
    assert event.type is EventType.OPERATION_CREATED
    assert event.to_status == "processing"
    assert event.from_status is None
    assert event.started_at == 1618218591951266000  # earliest sub-step start


def test_ids_are_stable_and_distinct(example_body: dict[str, Any]) -> None:
    before = _record(example_body)
    after = _record(example_body, storage_finishes_and_operation_finishes)
    first = diff_record("prod", before, after)
    again = diff_record(
        "prod",
        _record(example_body),
        _record(example_body, storage_finishes_and_operation_finishes),
    )
    assert [event.id for event in first] == [event.id for event in again]
    assert len({event.id for event in first}) == len(first)
    other_source = diff_record("staging", before, after)
    assert {event.id for event in first}.isdisjoint(event.id for event in other_source)


def test_substep_event_carries_times_message_and_step(example_body: dict[str, Any]) -> None:
    events = diff_record(
        "prod", _record(example_body), _record(example_body, storage_fails_and_operation_fails)
    )
    sub_event = next(e for e in events if e.type is EventType.SUBSTEP_STATUS_CHANGED)
    assert sub_event.step == DEPENDENT
    assert sub_event.message == ("quota exceeded: evs",)
    assert (sub_event.started_at, sub_event.ended_at) == (7, 9)
    operation_event = events[-1]
    assert operation_event.message == ("create blockchain failed",)


def test_a_failed_step_ends_when_its_last_sub_step_ended(example_body: dict[str, Any]) -> None:
    """The sub-steps after the failure never run (no end time): the step still ended, when
    the failing one did."""
    failed_at = 1618219200000000000

    def storage_fails_before_the_last_sub_step(raw: dict[str, Any]) -> None:
        storage_fails_and_operation_fails(raw)
        _sub(raw, DEPENDENT, "Create network storage").update(
            start_time=1618219100000000000, end_time=failed_at
        )
        raw["operation_process"][DEPENDENT]["sub_steps"]["Attach storage"] = {
            "substep_name": "Attach storage",
            "status": "waiting",
            "start_time": 0,
            "end_time": 0,
            "serial_num": 3,
        }

    events = diff_record(
        "prod", _record(example_body), _record(example_body, storage_fails_before_the_last_sub_step)
    )

    step_event = next(e for e in events if e.type is EventType.STEP_STATUS_CHANGED)
    assert (step_event.to_status, step_event.ended_at) == ("failed", failed_at)


def test_operation_start_event_comes_before_step_events(example_body: dict[str, Any]) -> None:
    def waiting(raw: dict[str, Any]) -> None:
        raw["operation_status"] = "waiting"

    def starts(raw: dict[str, Any]) -> None:
        storage_starts(raw)

    events = diff_record("prod", _record(example_body, waiting), _record(example_body, starts))
    assert [event.type for event in events] == [
        EventType.OPERATION_STATUS_CHANGED,
        EventType.SUBSTEP_STATUS_CHANGED,
    ]


def test_no_change_no_events(example_body: dict[str, Any]) -> None:
    assert diff_record("prod", _record(example_body), _record(example_body)) == []
