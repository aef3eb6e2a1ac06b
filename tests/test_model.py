"""The plain values of the pipeline (pure): event ids, canonical JSON and content hashes,
status normalisation, API times, records and events in their stored form, the CloudEvent
document and the one-line description."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from delivery_support import T0_NS, event_for, record, status_event, step, sub

import notifier
from notifier.model import (
    Event,
    EventType,
    OperationRecord,
    PackedJSON,
    Packer,
    StallFacts,
    Step,
    SubStep,
    canonical_json,
    cloudevent,
    content_hash,
    describe,
    event_id,
    json_text,
    normalise_status,
    ns_to_datetime,
    ns_to_rfc3339,
    operation_type_name,
)

SCHEMA = json.loads(
    (Path(notifier.__file__).parent / "schemas" / "cloudevent.schema.json").read_text()
)
OP = "BCSSVC01-99-1618218591906093855"
RECORD_TIME = 1618218591906093855
S = 1_000_000_000

#: one transition: (source, operation_id, step, substep, from, to, record_time)
TRANSITION: tuple[str, str, str | None, str | None, str | None, str | None, int] = (
    "prod",
    OP,
    "Create Cluster",
    "Create CCE cluster",
    "processing",
    "finished",
    RECORD_TIME,
)


# -- event ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (TRANSITION, "evt_604ae2df5c845dbf56d24196c59a8594"),
        (
            ("prod", OP, None, None, None, "waiting", RECORD_TIME),
            "evt_c61595625a4bae0a2c355932cddb7d35",
        ),
    ],
    ids=["substep-transition", "operation-created"],
)
def test_event_ids_are_pinned_across_releases(parts: Any, expected: str) -> None:
    """Stored ids de-duplicate replays: a new formula would notify every stored event again."""
    assert event_id(*parts) == expected
    assert event_id(*parts) == event_id(*parts)


@pytest.mark.parametrize(
    "index",
    range(len(TRANSITION)),
    ids=["source", "operation", "step", "substep", "from", "to", "record-time"],
)
def test_every_input_of_an_event_id_changes_it(index: int) -> None:
    changed = list(TRANSITION)
    value = changed[index]
    changed[index] = value + 1 if isinstance(value, int) else f"{value or ''}x"
    assert event_id(*changed) != event_id(*TRANSITION)


def test_event_id_parts_cannot_run_into_each_other() -> None:
    assert event_id("ab", "c", None, None, None, "x", 1) != event_id(
        "a", "bc", None, None, None, "x", 1
    )
    assert event_id("s", "op", "a", "b", None, "x", 1) != event_id(
        "s", "op", "ab", None, None, "x", 1
    )


def test_a_missing_part_of_an_event_id_reads_as_empty() -> None:
    assert event_id("s", "op", None, None, None, "x", 1) == event_id("s", "op", "", "", "", "x", 1)


def test_event_id_shape() -> None:
    assert re.fullmatch(r"evt_[0-9a-f]{32}", event_id(*TRANSITION))


# -- canonical JSON and content hashes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        ({"z": {"y": [3, {"b": None, "a": True}]}}, '{"z":{"y":[3,{"a":true,"b":null}]}}'),
        ({"name": "链 é"}, '{"name":"链 é"}'),
        ([2, 1], "[2,1]"),
    ],
    ids=["sorted-keys", "nested-sorted-no-spaces", "non-ascii-kept", "lists-keep-order"],
)
def test_canonical_json(data: Any, expected: str) -> None:
    assert canonical_json(data) == expected


def test_content_hash_is_the_sha256_of_canonical_json_whatever_the_key_order() -> None:
    first = {"b": [1, {"z": "é", "a": None}], "a": 1}
    second = {"a": 1, "b": [1, {"a": None, "z": "é"}]}
    pinned = "bcf473fcfced13972d710c9255f65dc0084021a1d91225a35b65d7262cb07e05"
    assert content_hash(first) == content_hash(second) == pinned
    assert content_hash({"a": 2, "b": [1, {"z": "é", "a": None}]}) != pinned


def _record() -> OperationRecord:
    failing = sub("Create EIP", "failed", 2, start=T0_NS, end=T0_NS + S, message=["quota"])
    done = sub("Create VPC", "finished", 1, start=T0_NS, end=T0_NS + S)
    rec = record(status="failed", steps=[step("Network", "failed", 1, [done, failing])])
    return dataclasses.replace(
        rec, domain_id="d" * 32, message=("failed",), desc="a chain", cluster={"id": "c-1"}
    )


def test_a_record_hash_follows_its_content() -> None:
    rec = _record()
    assert rec.content_hash() == content_hash(rec.to_dict())
    assert rec.content_hash() == dataclasses.replace(rec).content_hash()
    assert rec.content_hash() != dataclasses.replace(rec, status="finished").content_hash()
    moved = dataclasses.replace(rec, record_time=rec.record_time + 1)
    assert moved.content_hash() != rec.content_hash()


# -- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        ("processing", None, "processing"),
        ("Processing", None, "processing"),
        (" FAILED ", None, "failed"),
        ("", "waiting", "waiting"),
        ("", " Waiting ", "waiting"),
        (None, "waiting", "waiting"),
        ("  ", "finished", "finished"),
        ("processing", "waiting", "processing"),
        ("", "Creating the cluster", ""),
        ("", "exploded", ""),
        ("", None, ""),
        (None, None, ""),
        ("Exploded", None, "exploded"),
    ],
    ids=[
        "plain",
        "upper-case",
        "padded",
        "empty-status-detail-waiting",
        "empty-status-padded-detail",
        "null-status-detail-waiting",
        "blank-status-detail-finished",
        "status-wins-over-detail",
        "detail-is-prose",
        "detail-not-a-known-status",
        "not-started",
        "all-null",
        "unknown-future-status-kept",
    ],
)
def test_normalise_status(status: str | None, detail: str | None, expected: str) -> None:
    assert normalise_status(status, detail) == expected


@pytest.mark.parametrize(
    ("status", "active", "terminal"),
    [
        ("waiting", True, False),
        ("processing", True, False),
        ("finished", False, True),
        ("failed", False, True),
        ("stop", False, True),
        ("", False, False),
        ("exploded", False, False),
    ],
    ids=["waiting", "processing", "finished", "failed", "stop", "empty", "unknown"],
)
def test_active_and_terminal_statuses(status: str, active: bool, terminal: bool) -> None:
    rec = record(status=status)
    assert (rec.is_active, rec.is_terminal) == (active, terminal)


@pytest.mark.parametrize(
    ("code", "name"),
    [("99", "OpCreate"), ("00", "OpDelete"), ("91", "OpUpgradeRb"), ("42", "42"), ("", "unknown")],
    ids=["create", "delete", "rollback", "future-code-kept", "empty"],
)
def test_operation_type_names(code: str, name: str) -> None:
    assert operation_type_name(code) == name
    assert (
        OperationRecord(operation_id=OP, status="", operation_type=code).operation_type_name == name
    )


# -- API times ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nanoseconds", "rfc3339", "as_datetime"),
    [
        (
            RECORD_TIME,
            "2021-04-12T09:09:51.906093855Z",
            datetime(2021, 4, 12, 9, 9, 51, 906093, tzinfo=UTC),
        ),
        (S, "1970-01-01T00:00:01.000000000Z", datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
        (1, "1970-01-01T00:00:00.000000001Z", datetime(1970, 1, 1, tzinfo=UTC)),
        (0, None, None),
        (-5, None, None),
    ],
    ids=["nine-digits-kept", "whole-second", "one-nanosecond", "zero-is-not-yet", "negative"],
)
def test_api_times(nanoseconds: int, rfc3339: str | None, as_datetime: datetime | None) -> None:
    assert ns_to_rfc3339(nanoseconds) == rfc3339
    assert ns_to_datetime(nanoseconds) == as_datetime


# -- records in their stored form --------------------------------------------------------------


def test_a_record_reads_back_from_its_stored_form() -> None:
    rec = _record()
    stored = json.loads(canonical_json(rec.to_dict()))  # through the snapshots table's JSON
    assert OperationRecord.from_dict(stored) == rec
    assert stored["steps"][0]["sub_steps"][1]["message"] == ["quota"]


def test_a_stored_record_without_optional_fields_reads_with_defaults() -> None:
    rec = OperationRecord.from_dict(
        {"operation_id": OP, "status": "waiting", "steps": [{"name": "s", "status": ""}]}
    )
    assert rec == OperationRecord(operation_id=OP, status="waiting", steps=(Step("s", ""),))


def test_steps_and_sub_steps_are_found_by_name() -> None:
    rec = _record()
    network = rec.step("Network")
    assert network is not None
    assert network.sub_step("Create EIP") == SubStep(
        "Create EIP",
        "failed",
        message=("quota",),
        start_time=T0_NS,
        end_time=T0_NS + S,
        serial_num=2,
    )
    assert network.sub_step("Create Nothing") is None
    assert rec.step("Nowhere") is None


def test_the_summary_is_what_every_event_carries() -> None:
    summary = _record().summary()
    assert summary == {
        "operation_id": "BCSSVC01-99-1700000000000000001",
        "resource_type": "BCSSVC01",
        "operation_type": "99",
        "operation_type_name": "OpCreate",
        "blockchain_id": "23604f57-eac9-3777-e9f5-ae87457f2338",
        "blockchain_name": "bcs-prod",
        "status": "failed",
        "project_id": "p" * 32,
        "domain_id": "d" * 32,
        "record_time": T0_NS,
        "desc": "a chain",
        "message": ["failed"],
    }


# -- events in their stored form ---------------------------------------------------------------


def _stall() -> Event:
    rec = _record()
    return dataclasses.replace(
        event_for(rec, EventType.SUBSTEP_STALLED, step_name="Network", substep="Create EIP"),
        from_status="processing",
        started_at=T0_NS,
        stall=StallFacts(1500.0, 840.0, 420.0, 12, reminder=1),
    )


def _source_event() -> Event:
    return Event(
        id="evt_source",
        type=EventType.SOURCE_UNREACHABLE,
        source="prod",
        operation_id="",
        record_time=T0_NS,
        started_at=T0_NS - 300 * S,
        error="HTTP 502 (request id r-1)",
    )


EVENTS = {
    "status-change": lambda: status_event(_record(), "processing", "failed"),
    "substep-with-message": lambda: event_for(
        _record(),
        EventType.SUBSTEP_STATUS_CHANGED,
        step_name="Network",
        substep="Create EIP",
        from_status="processing",
        to_status="failed",
        detail="quota",
        message=["quota", "exceeded"],
        started_at=T0_NS,
        ended_at=T0_NS + S,
    ),
    "created": lambda: event_for(_record(), EventType.OPERATION_CREATED, to_status="waiting"),
    "source-unreachable": _source_event,
    "stall": _stall,
}


@pytest.mark.parametrize("make", EVENTS.values(), ids=EVENTS.keys())
def test_an_event_reads_back_from_its_stored_form(make: Any) -> None:
    event = make()
    stored = json.loads(json.dumps(event.to_dict(), ensure_ascii=False))  # the events table
    assert Event.from_dict(stored) == event
    assert stored["type"] == str(event.type)
    assert (stored["from"], stored["to"]) == (event.from_status, event.to_status)
    assert ("stall" in stored) == (event.stall is not None)


def test_a_stored_event_without_optional_fields_reads_with_defaults() -> None:
    event = Event.from_dict(
        {
            "id": "evt_1",
            "type": "operation.created",
            "source": "prod",
            "operation_id": OP,
            "record_time": RECORD_TIME,
            "started_at": None,
        }
    )
    assert event == Event("evt_1", EventType.OPERATION_CREATED, "prod", OP, RECORD_TIME)


def test_a_stored_event_of_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match=r"operation\.exploded"):
        Event.from_dict(
            {
                "id": "e",
                "type": "operation.exploded",
                "source": "s",
                "operation_id": OP,
                "record_time": 1,
            }
        )


# -- the CloudEvent document -------------------------------------------------------------------


@pytest.mark.parametrize("make", EVENTS.values(), ids=EVENTS.keys())
def test_every_event_is_a_valid_cloudevent(make: Any) -> None:
    event = make()
    document = cloudevent(event)
    jsonschema.validate(document, SCHEMA)
    assert document["specversion"] == "1.0"
    assert document["id"] == event.id
    assert document["type"] == f"bcs_notifier.{event.type}"
    assert document["source"] == "bcs-notifier/prod"
    assert document["time"] == ns_to_rfc3339(event.record_time)
    assert document["datacontenttype"] == "application/json"
    assert document["data"] == event.data()
    json.dumps(document)  # JSON-ready as it is


def test_the_cloudevent_data_of_an_operation_event() -> None:
    event = EVENTS["substep-with-message"]()
    document = cloudevent(event)
    assert document["subject"] == "BCSSVC01-99-1700000000000000001"
    assert document["data"] == {
        "operation": _record().summary(),
        "step": "Network",
        "substep": "Create EIP",
        "from": "processing",
        "to": "failed",
        "detail": "quota",
        "message": ["quota", "exceeded"],
        "started_at": "2023-11-14T22:13:20.000000000Z",
        "ended_at": "2023-11-14T22:13:21.000000000Z",
    }


def test_the_cloudevent_of_a_source_event_names_the_source_and_its_error() -> None:
    document = cloudevent(_source_event())
    assert document["subject"] == "prod"  # no operation: the source is the subject
    assert document["data"]["operation"] == {}
    assert document["data"]["error"] == "HTTP 502 (request id r-1)"
    assert document["data"]["ended_at"] is None  # 0: not yet


def test_the_cloudevent_of_a_stall_carries_its_facts() -> None:
    data = cloudevent(_stall())["data"]
    assert {field.name: data[field.name] for field in dataclasses.fields(StallFacts)} == {
        "elapsed_seconds": 1500.0,
        "threshold_seconds": 840.0,
        "p95_seconds": 420.0,
        "samples": 12,
        "reminder": 1,
    }
    assert "error" not in data


def test_an_event_without_a_record_time_is_stamped_now() -> None:
    event = dataclasses.replace(_source_event(), record_time=0)
    before = datetime.now(UTC)
    stamped = cloudevent(event)["time"]
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamped)
    assert before.replace(microsecond=0) <= datetime.fromisoformat(stamped) <= after
    jsonschema.validate(cloudevent(event), SCHEMA)


# -- one line for terminals and logs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            EVENTS["status-change"],
            "2023-11-14T22:13:20.000000000Z prod BCSSVC01-99-1700000000000000001 "
            "operation.status_changed processing -> failed",
        ),
        (
            EVENTS["substep-with-message"],
            "2023-11-14T22:13:20.000000000Z prod BCSSVC01-99-1700000000000000001 "
            "substep.status_changed [Network / Create EIP] processing -> failed",
        ),
        (
            EVENTS["created"],
            "2023-11-14T22:13:20.000000000Z prod BCSSVC01-99-1700000000000000001 "
            "operation.created -> waiting",
        ),
        (
            _source_event,
            "2023-11-14T22:13:20.000000000Z prod - source.unreachable HTTP 502 (request id r-1)",
        ),
        (
            lambda: dataclasses.replace(
                status_event(_record(), "", "waiting"), record_time=0, to_status=None
            ),
            "- prod BCSSVC01-99-1700000000000000001 operation.status_changed (none) -> (none)",
        ),
    ],
    ids=["status-change", "substep-path", "created", "source-error", "no-time-no-status"],
)
def test_describe(make: Any, expected: str) -> None:
    assert describe(make()) == expected


@pytest.mark.parametrize(
    "texts",
    [
        ['{"a":1}'],
        ['{"id":"OP-1","desc":"链 – naïve"}', '{"id":"OP-2","desc":"链 – naïve"}', "{}"],
        ["x" * 100_000, "y" * 40_000, "x" * 100_000],  # a dictionary cut to zlib's window
    ],
)
def test_packed_json_gives_back_the_exact_text(texts: list[str]) -> None:
    packer = Packer()
    packed = [packer.pack(text) for text in texts]
    assert [item.text() for item in packed] == texts
    assert [json_text(item) for item in packed] == texts
    assert json_text(texts[0]) == texts[0]  # plain text passes through


def test_records_alike_pack_small_against_the_first() -> None:
    texts = [canonical_json(record(f"OP-{n}").to_dict()) for n in range(20)]
    packer = Packer()
    packed = [packer.pack(text) for text in texts]
    assert all(isinstance(item, PackedJSON) for item in packed)
    assert not packed[0].zdict
    assert packed[1].zdict
    # the later records differ from the first only in their ids
    for item, text in zip(packed[1:], texts[1:], strict=True):
        assert len(item.blob) * 4 < len(text)
