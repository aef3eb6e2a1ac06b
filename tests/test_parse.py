"""Tolerant parsing of operation-record responses."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from notifier.bcs.parse import parse_record, parse_response, select
from notifier.errors import IncompleteResponse, InvalidResponse


def test_example_record_reads_with_its_quirks(example_body: dict[str, Any]) -> None:
    parsed = parse_response(example_body)
    assert parsed.count == 1
    (record,) = parsed.records
    assert record.operation_id == "BCSSVC01-99-1618218591906093855"
    assert record.status == "processing"
    assert record.operation_type_name == "OpCreate"
    assert record.record_time == 1618218591906100000  # exact: not through a float
    assert [step.name for step in record.steps] == [
        "Preparation",
        "Create Other Dependent Resource",
    ]
    dependent = record.steps[1]
    assert [sub.name for sub in dependent.sub_steps] == ["Create EIP", "Create network storage"]
    waiting = dependent.sub_steps[1]
    assert waiting.status == "waiting"  # "status": "" with "detail": "waiting"
    assert waiting.start_time == 0
    assert dependent.sub_steps[0].start_time == 1618219038464462600
    assert record.message == ()
    assert record.desc is None
    assert record.cluster is not None
    assert record.cluster["node_infos"] is None


def test_sub_steps_are_ordered_by_serial_num_not_by_map_order() -> None:
    raw = {
        "operation_id": "op",
        "operation_status": "processing",
        "operation_process": {
            "B": {"status": "waiting", "serial_num": 2, "sub_steps": None},
            "A": {
                "status": "processing",
                "serial_num": 1,
                "sub_steps": {
                    "z": {"status": "finished", "serial_num": 7},
                    "y": {"status": "processing", "serial_num": 9},
                    "x": {"status": "", "detail": "waiting", "serial_num": 8},
                },
            },
        },
    }
    record = parse_record(raw)
    assert [step.name for step in record.steps] == ["A", "B"]
    assert [sub.name for sub in record.steps[0].sub_steps] == ["z", "x", "y"]
    assert record.steps[1].sub_steps == ()


@pytest.mark.parametrize(
    ("status", "detail", "expected"),
    [
        ("", "waiting", "waiting"),
        ("  Finished ", None, "finished"),
        ("", None, ""),
        ("", "some free text", ""),
        ("paused_by_operator", None, "paused_by_operator"),
        (None, "processing", "processing"),
    ],
    ids=["empty-detail-waiting", "case-and-space", "empty", "free-detail", "unknown", "null"],
)
def test_status_normalisation(status: str | None, detail: str | None, expected: str) -> None:
    raw = {
        "operation_id": "op",
        "operation_status": "processing",
        "operation_process": {
            "s": {"status": status, "detail": detail, "serial_num": 1, "sub_steps": {}}
        },
    }
    assert parse_record(raw).steps[0].status == expected


def test_nulls_and_absent_maps_are_tolerated() -> None:
    raw = {
        "operation_id": "op",
        "operation_status": None,
        "operation_process": None,
        "message": None,
        "cluster_info": None,
        "record_time": None,
    }
    record = parse_record(raw)
    assert record.status == ""
    assert record.steps == ()
    assert record.record_time == 0


def test_operation_type_keeps_its_leading_zero() -> None:
    assert parse_record({"operation_id": "op", "operation_type": 0}).operation_type == "00"
    assert parse_record({"operation_id": "op", "operation_type": "04"}).operation_type == "04"


def test_one_malformed_record_is_skipped_with_its_id(
    example_body: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    bad = copy.deepcopy(example_body["operation_records"][0])
    bad["operation_id"] = "BCSSVC01-99-1"
    bad["record_time"] = "not a number"
    body = {"count": 2, "operation_records": [bad, example_body["operation_records"][0]]}
    with caplog.at_level(logging.WARNING):
        parsed = parse_response(body, request_id="req-7")
    assert [record.operation_id for record in parsed.records] == ["BCSSVC01-99-1618218591906093855"]
    assert parsed.skipped == ("BCSSVC01-99-1",)
    assert not parsed.skipped_unidentified
    assert "BCSSVC01-99-1" in caplog.text
    assert "req-7" in caplog.text


def test_a_record_without_id_blocks_gone_marking() -> None:
    parsed = parse_response({"count": 2, "operation_records": [{"x": 1}, {"operation_id": "a"}]})
    assert parsed.skipped_unidentified
    assert [record.operation_id for record in parsed.records] == ["a"]


@pytest.mark.parametrize(
    "body",
    [[], "text", None, {"operation_records": {}}, {"count": "3", "operation_records": []}],
    ids=["list", "string", "null", "records-not-list", "count-not-int"],
)
def test_wrong_shapes_raise(body: Any) -> None:
    with pytest.raises(InvalidResponse):
        parse_response(body)


def test_count_larger_than_records_is_incomplete(example_body: dict[str, Any]) -> None:
    example_body["count"] = 5
    with pytest.raises(IncompleteResponse, match="count is 5 but 1"):
        parse_response(example_body)


def test_null_record_list_with_zero_count_is_empty() -> None:
    assert parse_response({"count": 0, "operation_records": None}).records == ()


def test_select_applies_multi_valued_filters_locally() -> None:
    records = [
        parse_record({"operation_id": f"op{i}", "resource_type": rt, "operation_type": ot})
        for i, (rt, ot) in enumerate(
            [("BCSSVC01", "99"), ("BCSSVC02", "99"), ("PLUGIN01", "00"), ("BCSSVC01", "01")]
        )
    ]
    chosen = select(
        records, {"resource_type": ("BCSSVC01", "PLUGIN01"), "operation_type": ("99", "00")}
    )
    assert [record.operation_id for record in chosen] == ["op0", "op2"]
    assert select(records, {}) == records
