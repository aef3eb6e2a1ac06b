"""The pure planner of one poll (notifier.cycle): decisions table by table, no database."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import pytest

from notifier.config import AuthConfig, ChannelConfig, SourceConfig
from notifier.cycle import (
    gone_ids,
    group,
    health_group,
    plan_failure,
    plan_scope,
    resting_error,
    sort_records,
    source_scope,
    success_state,
    with_stalls,
)
from notifier.errors import AuthError, SignatureRejected
from notifier.model import Event, EventType, OperationRecord, canonical_json
from notifier.store.records import SourceState, StoredSnapshot

SOURCE = SourceConfig(
    name="prod",
    endpoint="https://bcs.example.test",
    project_id="p1",
    auth=AuthConfig(type="token"),
    filters={"operation_status": ("failed", "successful")},
)
NOW = 1_700_000_000_000


def record(operation_id: str, status: str = "successful", time: int = 1) -> OperationRecord:
    return OperationRecord(operation_id=operation_id, status=status, record_time=time)


def content_hash(item: OperationRecord) -> str:
    return hashlib.sha256(canonical_json(item.to_dict()).encode()).hexdigest()


# -- baseline and scope ---------------------------------------------------------------------

SCOPE = source_scope(SOURCE)


@pytest.mark.parametrize(
    ("baseline_at", "stored_scope", "notify_existing", "expected"),
    [
        # (baseline, rescoped, silent_new)
        (None, None, False, (True, False, True)),
        (None, None, True, (True, False, False)),
        (5, SCOPE, False, (False, False, False)),
        (5, None, False, (False, False, False)),  # a scope never stored is no change
        (5, "other", False, (False, True, True)),
        (5, "other", True, (False, True, False)),
    ],
)
def test_plan_scope(
    baseline_at: int | None,
    stored_scope: str | None,
    notify_existing: bool,
    expected: tuple[bool, bool, bool],
) -> None:
    state = SourceState("prod", baseline_at=baseline_at, scope=stored_scope)
    plan = plan_scope(state, SCOPE, notify_existing=notify_existing)
    assert (plan.baseline, plan.rescoped, plan.silent_new) == expected
    assert plan.scope == SCOPE


def test_source_scope_follows_endpoint_project_and_filters_not_their_order() -> None:
    reordered = replace(SOURCE, filters={"operation_status": ("successful", "failed")})
    assert source_scope(reordered) == SCOPE
    for changed in (
        replace(SOURCE, endpoint="https://other.example.test"),
        replace(SOURCE, project_id="p2"),
        replace(SOURCE, filters={}),
    ):
        assert source_scope(changed) != SCOPE


# -- records against the index --------------------------------------------------------------


def test_sort_records_new_changed_unchanged_and_returned() -> None:
    same, back, changed, new = record("same"), record("back"), record("changed"), record("new")
    index = {
        "same": StoredSnapshot(content_hash(same), gone=False),
        "back": StoredSnapshot(content_hash(back), gone=True),
        "changed": StoredSnapshot("old-hash", gone=False),
        "skipped-gone": StoredSnapshot("h", gone=True),
        "skipped-here": StoredSnapshot("h", gone=False),
    }
    result = sort_records(
        "prod",
        [same, back, changed, new],
        index,
        unchanged=["skipped-gone", "skipped-here"],
        raw_hashes={"same": "raw-same", "new": "raw-new"},
    )
    assert [(item.record.operation_id, item.is_new) for item in result.writes] == [
        ("changed", False),
        ("new", True),
    ]
    assert result.writes[1].raw_hash == "raw-new"
    assert result.writes[0].content_hash == content_hash(changed)
    assert result.returned == ["skipped-gone", "back"]
    assert result.rehashed == {"same": "raw-same"}  # stored content unchanged, raw form new
    assert set(result.remembered) == {"same", "new"}
    assert result.remembered["new"].content_hash == content_hash(new)
    assert result.unstorable == []


def test_sort_records_uses_the_listing_canonical_json() -> None:
    item = record("a")
    result = sort_records("prod", [item], {}, canonical={"a": ("{}", "given-hash")})
    assert (result.writes[0].data, result.writes[0].content_hash) == ("{}", "given-hash")


def test_sort_records_skips_content_that_cannot_be_stored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = OperationRecord(operation_id="bad", status="successful", cluster={"x": object()})
    with caplog.at_level(logging.WARNING, logger="notifier.pipeline"):
        result = sort_records("prod", [bad, record("good")], {})
    assert result.unstorable == ["bad"]
    assert [item.record.operation_id for item in result.writes] == ["good"]
    assert [r.getMessage() for r in caplog.records if "cannot be stored" in r.getMessage()]


@pytest.mark.parametrize(
    ("present", "keep_absent", "expected"),
    [
        ({"a", "b"}, False, []),
        ({"a"}, False, ["b"]),
        (set(), False, ["a", "b"]),  # an empty complete listing: everything is gone
        (set(), True, []),  # partial listing, or a record skipped without a readable id
    ],
)
def test_gone_ids(present: set[str], keep_absent: bool, expected: list[str]) -> None:
    index = {
        "a": StoredSnapshot("h", gone=False),
        "b": StoredSnapshot("h", gone=False),
        "c": StoredSnapshot("h", gone=True),  # already gone: not marked twice
    }
    assert gone_ids(index, present, keep_absent=keep_absent) == expected


# -- source health --------------------------------------------------------------------------


@pytest.mark.parametrize("complete", [True, False])
def test_success_state_clears_failures_and_keeps_the_baseline(complete: bool) -> None:
    failing = SourceState(
        "prod",
        baseline_at=10,
        consecutive_failures=4,
        failing_since=20,
        last_error="boom",
        unreachable_reported=True,
        rest_until=NOW + 5,
        scope="old",
        last_full_at=30,
    )
    state = success_state(failing, NOW, scope=SCOPE, complete=complete)
    assert state == SourceState(
        "prod",
        baseline_at=10,
        last_poll_at=NOW,
        last_success_at=NOW,
        scope=SCOPE,
        last_full_at=NOW if complete else 30,
    )
    assert success_state(SourceState("prod"), NOW, scope=SCOPE, complete=True).baseline_at == NOW


@pytest.mark.parametrize(
    ("failing_since", "reported", "expected_report"),
    [
        (None, False, False),  # the first failure starts the clock
        (NOW - 299_999, False, False),
        (NOW - 300_000, False, True),  # unreachable_after reached: reported once
        (NOW - 900_000, True, False),  # already reported in this outage
    ],
)
def test_plan_failure(failing_since: int | None, reported: bool, expected_report: bool) -> None:
    state = SourceState(
        "prod",
        consecutive_failures=2,
        failing_since=failing_since,
        last_error="before",
        unreachable_reported=reported,
    )
    planned = plan_failure(state, NOW, error="now", unreachable_after=300)
    assert planned.unreachable is expected_report
    assert planned.state.consecutive_failures == 3
    assert planned.state.failing_since == (failing_since if failing_since is not None else NOW)
    assert planned.state.last_poll_at == NOW
    assert planned.state.last_error == "now"
    assert planned.state.unreachable_reported is (reported or expected_report)
    kept = plan_failure(state, NOW, error="now", unreachable_after=300, keep_last_error=True)
    assert kept.state.last_error == "before"


@pytest.mark.parametrize(("auth", "kind"), [("aksk", SignatureRejected), ("token", AuthError)])
def test_resting_error(auth: str, kind: type[Exception]) -> None:
    source = replace(SOURCE, auth=AuthConfig(type=auth))
    state = SourceState("prod", last_error="401 refused", rest_until=NOW + 60_000)
    error = resting_error(source, state, NOW)
    assert type(error) is kind
    assert error.retry_after == 60
    assert "401 refused" in error.one_line()
    # NOW + 60 s is 2023-11-14T22:14:20.000Z; a fraction of a second is dropped
    assert "no request before 2023-11-14T22:14:20+00:00" in error.one_line()
    later = resting_error(source, replace(state, rest_until=NOW + 60_999), NOW)
    assert "no request before 2023-11-14T22:14:20+00:00" in later.one_line()


# -- groups ---------------------------------------------------------------------------------

CHANNELS = (
    ChannelConfig("all", ("json://127.0.0.1",)),
    ChannelConfig("health", ("json://127.0.0.1",), events=("source.*",)),
)


def test_health_groups_are_routed_and_stable() -> None:
    state = SourceState("prod", failing_since=NOW - 1000, last_error="down")
    down = health_group(CHANNELS, SOURCE, state, NOW, recovered=False)
    again = health_group(CHANNELS, SOURCE, state, NOW, recovered=False)
    up = health_group(CHANNELS, SOURCE, state, NOW, recovered=True)
    assert down == again  # ids derive from the outage, not from the call
    assert down.id != up.id
    assert down.channels == ("all", "health")
    assert down.routes == {"all": (down.events[0].id,), "health": (down.events[0].id,)}
    assert [event.type for event in down.events] == [EventType.SOURCE_UNREACHABLE]
    assert [event.type for event in up.events] == [EventType.SOURCE_RECOVERED]
    assert up.events[0].ended_at == NOW * 1_000_000
    assert down.events[0].ended_at == 0
    assert down.events[0].error == "down"


def _event(operation_id: str, kind: EventType, suffix: str) -> Event:
    return Event(
        id=f"evt_{operation_id}_{suffix}",
        type=kind,
        source="prod",
        operation_id=operation_id,
        record_time=1,
        operation={},
    )


def test_with_stalls_joins_the_operation_group_or_makes_its_own() -> None:
    changed = _event("a", EventType.OPERATION_STATUS_CHANGED, "1")
    stall_a = _event("a", EventType.STEP_STALLED, "s")
    stall_b = _event("b", EventType.STEP_STALLED, "s")
    groups = [group(CHANNELS, "prod", "a", [changed], "{}")]
    assert with_stalls(CHANNELS, "prod", groups, [], []) is groups
    merged = with_stalls(CHANNELS, "prod", groups, [stall_a, stall_b], [record("b", "processing")])
    assert [(item.operation_id, len(item.events)) for item in merged] == [("a", 2), ("b", 1)]
    assert merged[0].id != groups[0].id  # a different set of events is a different group
    assert merged[0].record == "{}"
    assert merged[1].record == canonical_json(record("b", "processing").to_dict())
    assert merged[1].channels == ("all",)
    assert merged[0].routes == {"all": (changed.id, stall_a.id)}  # routed again, merged


def test_a_group_keeps_per_channel_the_events_its_filters_admit() -> None:
    """Routing is decided here, once: each channel's ids go with its outbox row."""
    changed = _event("a", EventType.OPERATION_STATUS_CHANGED, "1")
    stalled = _event("a", EventType.STEP_STALLED, "s")
    channels = (
        *CHANNELS,
        ChannelConfig("stalls", ("json://127.0.0.1",), events=("*.stalled",)),
        ChannelConfig("none", ("json://127.0.0.1",), events=("substep.*",)),
    )
    planned = group(channels, "prod", "a", [changed, stalled], None)
    assert planned.channels == ("all", "stalls")
    assert planned.routes == {"all": (changed.id, stalled.id), "stalls": (stalled.id,)}
    assert planned.routed_ids("stalls") == (stalled.id,)
