"""Which channel gets which event (pure): event-type globs, statuses, sources, blockchains,
resource and operation types, and the defaults that admit everything."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from delivery_support import event_for, record, status_event, substep_failed

from notifier.config import ChannelConfig
from notifier.model import Event, EventType, StallFacts
from notifier.routing import channels_for, event_matches, matching_events, routes

REC = record(status="failed")  # prod / BCSSVC01 / 99 / bcs-prod
CHAIN_ID = REC.blockchain_id


def _channel(**filters: Any) -> ChannelConfig:
    return ChannelConfig(name="c", urls=("json://127.0.0.1/",), **filters)


def _source_event(kind: EventType = EventType.SOURCE_UNREACHABLE, source: str = "prod") -> Event:
    return Event(
        id=f"evt_{kind}", type=kind, source=source, operation_id="", record_time=1, error="HTTP 502"
    )


FAILED = status_event(REC, "processing", "failed")
SUBSTEP_FAILED = substep_failed(REC, "Network", "Create EIP")
CREATED = event_for(REC, EventType.OPERATION_CREATED, to_status="waiting")
STEP_FINISHED = event_for(
    REC,
    EventType.STEP_STATUS_CHANGED,
    step_name="Network",
    from_status="processing",
    to_status="finished",
)
UNREACHABLE = _source_event()
OTHER_SOURCE = dataclasses.replace(FAILED, source="staging")
STALLED = dataclasses.replace(
    event_for(REC, EventType.SUBSTEP_STALLED, step_name="Network", substep="Create EIP"),
    from_status="processing",
    stall=StallFacts(1500.0, 840.0, 420.0, 12),
)
NO_CHAIN = dataclasses.replace(
    FAILED, operation={**FAILED.operation, "blockchain_id": "", "blockchain_name": ""}
)

CASES: list[tuple[str, dict[str, Any], Event, bool]] = [
    # defaults: every event
    ("defaults-operation", {}, FAILED, True),
    ("defaults-substep", {}, SUBSTEP_FAILED, True),
    ("defaults-source", {}, UNREACHABLE, True),
    # event-type globs
    ("glob-family", {"events": ("operation.*",)}, FAILED, True),
    ("glob-family-miss", {"events": ("operation.*",)}, SUBSTEP_FAILED, False),
    ("glob-exact", {"events": ("substep.status_changed",)}, SUBSTEP_FAILED, True),
    ("glob-exact-miss", {"events": ("substep.status_changed",)}, STEP_FINISHED, False),
    ("glob-suffix", {"events": ("*.status_changed",)}, STEP_FINISHED, True),
    ("glob-suffix-miss", {"events": ("*.status_changed",)}, CREATED, False),
    ("glob-any-of", {"events": ("source.*", "operation.created")}, CREATED, True),
    ("glob-any-of-source", {"events": ("source.*", "operation.created")}, UNREACHABLE, True),
    ("glob-any-of-miss", {"events": ("source.*", "operation.created")}, FAILED, False),
    ("glob-is-case-sensitive", {"events": ("Operation.*",)}, FAILED, False),
    ("glob-question-mark", {"events": ("step.status_change?",)}, STEP_FINISHED, True),
    ("glob-no-patterns", {"events": ()}, FAILED, False),
    ("glob-stalls", {"events": ("*.stalled",)}, STALLED, True),
    ("glob-stalls-miss", {"events": ("*.stalled",)}, STEP_FINISHED, False),
    # statuses: the new status of the event
    ("status-listed", {"statuses": ("failed",)}, FAILED, True),
    ("status-one-of", {"statuses": ("finished", "failed")}, STEP_FINISHED, True),
    ("status-not-listed", {"statuses": ("finished",)}, FAILED, False),
    ("status-created-waiting", {"statuses": ("failed",)}, CREATED, False),
    ("status-source-event-passes", {"statuses": ("failed",)}, UNREACHABLE, True),
    ("status-stall-passes", {"statuses": ("failed",)}, STALLED, True),
    # sources
    ("source-listed", {"sources": ("prod",)}, FAILED, True),
    ("source-not-listed", {"sources": ("prod",)}, OTHER_SOURCE, False),
    ("source-one-of", {"sources": ("prod", "staging")}, OTHER_SOURCE, True),
    ("source-event-filtered-too", {"sources": ("staging",)}, UNREACHABLE, False),
    # blockchains: by id or by name
    ("chain-by-name", {"blockchains": ("bcs-prod",)}, FAILED, True),
    ("chain-by-id", {"blockchains": (CHAIN_ID,)}, FAILED, True),
    ("chain-other", {"blockchains": ("bcs-other",)}, FAILED, False),
    ("chain-source-event-passes", {"blockchains": ("bcs-other",)}, UNREACHABLE, True),
    ("chain-operation-without-one", {"blockchains": ("bcs-prod",)}, NO_CHAIN, False),
    ("chain-empty-name-matches-nothing", {"blockchains": ("",)}, NO_CHAIN, False),
    # resource and operation types
    ("resource-type", {"resource_types": ("BCSSVC01",)}, FAILED, True),
    ("resource-type-miss", {"resource_types": ("BCSSVC02", "PLUGIN01")}, FAILED, False),
    ("resource-type-source-event", {"resource_types": ("BCSSVC02",)}, UNREACHABLE, True),
    ("operation-type", {"operation_types": ("00", "99")}, FAILED, True),
    ("operation-type-miss", {"operation_types": ("00",)}, FAILED, False),
    ("operation-type-source-event", {"operation_types": ("00",)}, UNREACHABLE, True),
    # every filter must admit the event
    (
        "all-filters-admit",
        {
            "events": ("operation.*",),
            "statuses": ("failed",),
            "sources": ("prod",),
            "blockchains": ("bcs-prod",),
            "resource_types": ("BCSSVC01",),
            "operation_types": ("99",),
        },
        FAILED,
        True,
    ),
    (
        "one-filter-refuses",
        {
            "events": ("operation.*",),
            "statuses": ("failed",),
            "sources": ("prod",),
            "blockchains": ("bcs-prod",),
            "resource_types": ("BCSSVC01",),
            "operation_types": ("00",),
        },
        FAILED,
        False,
    ),
]


@pytest.mark.parametrize(
    ("filters", "event", "admitted"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_event_matches(filters: dict[str, Any], event: Event, admitted: bool) -> None:
    assert event_matches(_channel(**filters), event) is admitted


def test_matching_events_keeps_the_admitted_ones_in_order() -> None:
    group = [CREATED, SUBSTEP_FAILED, STEP_FINISHED, FAILED]
    channel = _channel(statuses=("failed", "waiting"))
    assert matching_events(channel, group) == [CREATED, SUBSTEP_FAILED, FAILED]
    assert matching_events(_channel(events=("source.*",)), group) == []


def test_a_channel_gets_a_group_when_any_of_its_events_matches() -> None:
    channels = [
        dataclasses.replace(_channel(events=("substep.*",)), name="substeps"),
        dataclasses.replace(_channel(statuses=("finished",)), name="good-news"),
        dataclasses.replace(_channel(events=("source.*",)), name="health"),
        dataclasses.replace(_channel(), name="everything"),
    ]
    assert channels_for(channels, [SUBSTEP_FAILED, FAILED]) == ["substeps", "everything"]
    assert channels_for(channels, [STEP_FINISHED]) == ["good-news", "everything"]
    assert channels_for(channels, [UNREACHABLE]) == ["good-news", "health", "everything"]
    assert channels_for(channels, []) == []
    assert channels_for([], [FAILED]) == []


def test_routes_name_per_channel_the_ids_of_the_events_it_admits_in_order() -> None:
    """The one routing decision of a group (stored with each outbox row)."""
    channels = [
        dataclasses.replace(_channel(events=("substep.*",)), name="substeps"),
        dataclasses.replace(_channel(statuses=("failed",)), name="failures"),
        dataclasses.replace(_channel(events=("source.*",)), name="health"),
        dataclasses.replace(_channel(), name="everything"),
    ]
    group = [CREATED, SUBSTEP_FAILED, STEP_FINISHED, FAILED]
    assert routes(channels, group) == {
        "substeps": (SUBSTEP_FAILED.id,),
        "failures": (SUBSTEP_FAILED.id, FAILED.id),
        "everything": (CREATED.id, SUBSTEP_FAILED.id, STEP_FINISHED.id, FAILED.id),
    }
    assert list(routes(channels, group)) == channels_for(channels, group)
    assert routes(channels, [UNREACHABLE]) == {
        "failures": (UNREACHABLE.id,),
        "health": (UNREACHABLE.id,),
        "everything": (UNREACHABLE.id,),
    }
    assert routes(channels, []) == {}
    assert routes([], group) == {}
