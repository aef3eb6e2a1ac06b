"""The end-to-end oracle on its own (no processes, no server): how the simulator's requests are
read as polling cycles, which of them the service commits, and what it then stores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from e2e_support import (
    COMMITTED,
    FAILED,
    NS,
    UNFINISHED,
    CycleReader,
    GatedSimulator,
    Observation,
    committed_views,
    expected_transitions,
    group_cycles,
    request_kind,
    seen_alone,
)

from notifier.simulator import ReceivedRequest

WAITING = "operation_status=waiting"
PROCESSING = "operation_status=processing"


def rec(operation_id: str, status: str, record_time: int) -> dict[str, Any]:
    return {"operation_id": operation_id, "operation_status": status, "record_time": record_time}


#: simulated instant -> the API's records then
STORY: dict[int, list[dict[str, Any]]] = {
    1: [rec("a", "processing", 10), rec("b", "finished", 5)],
    2: [rec("a", "finished", 20), rec("b", "finished", 5), rec("c", "waiting", 21)],
    3: [rec("a", "finished", 20), rec("b", "finished", 5), rec("c", "processing", 30)],
}


def records_at(now_ns: int) -> list[dict[str, Any]]:
    return STORY[now_ns]


def ask(
    now: int, query: str = "", status: int | None = 200, fault: str | None = None
) -> Observation:
    return Observation(now, status, fault, "password", query)


def follow(now: int, operation_id: str, status: int | None = 200) -> Observation:
    return ask(now, f"operation_id={operation_id}", status)


def read(observations: Sequence[Observation]) -> list[Any]:
    return CycleReader(records_at).read(observations)


def test_a_complete_listing_is_a_cycle_and_the_short_requests_of_one_cycle_stay_together() -> None:
    observations = [
        ask(1),
        ask(1, WAITING),
        ask(1, PROCESSING),
        ask(1, WAITING),
        ask(1, PROCESSING, status=401),
        ask(1, PROCESSING),  # sent again after a new login: the same request
        follow(1, "x"),
        ask(1),
        ask(1, status=401),
        ask(1),
    ]
    assert group_cycles(observations) == [(0,), (1, 2), (3, 4, 5, 6), (7,), (8, 9)]
    assert group_cycles(observations, 3) == [(3, 4, 5, 6), (7,), (8, 9)]


def test_a_cycle_whose_second_request_failed_commits_nothing() -> None:
    observations = [
        ask(1),  # baseline: a processing, b finished
        ask(2, WAITING),
        ask(2, PROCESSING, status=500),  # the cycle fails: a's end is not stored
        ask(2, WAITING),
        ask(2, PROCESSING),
        follow(2, "a"),
    ]
    cycles = read(observations)
    assert [c.state for c in cycles] == [COMMITTED, FAILED, COMMITTED]
    views = committed_views(cycles)
    assert [index for index, _records in views] == [0, 5]
    expected = expected_transitions("s", views)
    told = {(t.operation_id, t.type, t.to_status): index for t, index in expected.items()}
    # a's end and c's creation come with the cycle that worked, and only once
    assert told == {
        ("a", "operation.status_changed", "finished"): 5,
        ("c", "operation.created", "waiting"): 5,
    }


def test_a_failed_follow_up_commits_nothing() -> None:
    observations = [ask(1), ask(2, WAITING), ask(2, PROCESSING), follow(2, "a", status=None)]
    cycles = read(observations)
    assert [c.state for c in cycles] == [COMMITTED, FAILED]
    assert expected_transitions("s", committed_views(cycles)) == {}


def test_an_operation_listed_twice_keeps_its_latest_record_time() -> None:
    # c is waiting when the waiting list is asked (instant 2), processing when the
    # processing list is (instant 3): the service keeps the later record
    observations = [ask(1), ask(2, WAITING), ask(3, PROCESSING), follow(3, "a")]
    cycles = read(observations)
    assert cycles[-1].committed
    assert cycles[-1].shown["c"] == rec("c", "processing", 30)
    assert cycles[-1].view["c"] == rec("c", "processing", 30)
    assert seen_alone(cycles) == {1}  # the second cycle straddled two instants


def test_of_two_records_with_one_record_time_the_later_answer_wins() -> None:
    story = {1: [rec("a", "processing", 10)], 2: [rec("a", "waiting", 10)]}
    observations = [ask(1), ask(2, WAITING), ask(1, PROCESSING)]
    cycles = CycleReader(story.__getitem__).read(observations)
    assert cycles[-1].view["a"] == rec("a", "processing", 10)


def test_what_the_short_lists_do_not_show_keeps_its_stored_state() -> None:
    observations = [ask(1), ask(2, WAITING), ask(2, PROCESSING), follow(2, "a")]
    view = read(observations)[-1].view
    assert view == {
        "a": rec("a", "finished", 20),  # from its follow-up
        "b": rec("b", "finished", 5),  # stored, never asked for again
        "c": rec("c", "waiting", 21),
    }


def test_a_complete_listing_replaces_the_stored_view() -> None:
    story = {1: [rec("a", "finished", 1), rec("b", "finished", 2)], 2: [rec("b", "finished", 2)]}
    cycles = CycleReader(story.__getitem__).read([ask(1), ask(2)])
    assert cycles[-1].view == {"b": rec("b", "finished", 2)}


def test_a_cycle_waiting_for_its_follow_ups_is_not_committed_yet() -> None:
    observations = [ask(1), ask(2, WAITING), ask(2, PROCESSING)]
    cycles = read(observations)
    assert cycles[-1].state == UNFINISHED  # a (stored processing, in neither list) is due
    assert len(committed_views(cycles)) == 1
    # the process ended before the follow-up: the next run starts with a complete listing
    cycles = read([*observations, ask(3)])
    assert [c.state for c in cycles] == [COMMITTED, UNFINISHED, COMMITTED]


def test_a_cycle_left_without_its_follow_ups_is_a_finding() -> None:
    observations = [ask(1), ask(2, WAITING), ask(2, PROCESSING), ask(2, WAITING)]
    with pytest.raises(AssertionError, match=r"without the follow-ups on \['a'\]"):
        read(observations)


@pytest.mark.parametrize(
    ("follow_ups", "message"),
    [
        (["b"], r"followed up on \['b'\]"),  # b is stored finished: nothing to learn
        (["c"], r"followed up on \['c'\]"),  # c is new, and the waiting list showed it
        (["a", "a"], "a follow-up asked twice"),
    ],
    ids=["not-active", "listed", "twice"],
)
def test_a_follow_up_the_service_must_not_ask_is_a_finding(
    follow_ups: list[str], message: str
) -> None:
    story = {**STORY, 2: [rec("a", "processing", 10), *STORY[2][1:]]}
    observations = [ask(1), ask(2, WAITING), ask(2, PROCESSING)]
    observations += [follow(2, operation_id) for operation_id in follow_ups]
    with pytest.raises(AssertionError, match=message):
        CycleReader(story.__getitem__).read(observations)


def test_a_request_after_a_failed_one_in_the_same_cycle_is_a_finding() -> None:
    observations = [ask(1), ask(2, WAITING, fault="truncated"), ask(2, PROCESSING)]
    with pytest.raises(AssertionError, match="after a failed request"):
        read(observations)


def test_short_lists_before_any_baseline_are_a_finding() -> None:
    with pytest.raises(AssertionError, match="before any baseline"):
        read([ask(1, status=500), ask(1, WAITING), ask(1, PROCESSING)])


def test_reading_again_gives_what_reading_once_does() -> None:
    observations = [
        ask(1),
        ask(2, WAITING),
        ask(2, PROCESSING, status=502),
        ask(2, WAITING),
        ask(2, PROCESSING),
        follow(2, "a"),
        ask(3, WAITING),
        ask(3, PROCESSING),
        ask(3),
    ]
    reader = CycleReader(records_at)
    for end in range(1, len(observations) + 1):
        assert reader.read(observations[:end]) == read(observations[:end])


def test_in_full_mode_the_views_are_the_intact_answers() -> None:
    """poll_mode = "full": exactly the oracle the end-to-end tests always had."""
    observations = [
        ask(1),
        ask(1, status=500),
        ask(2, status=401),
        ask(2),
        ask(2, fault="count"),
        ask(3, fault="slow"),
        ask(3, status=None, fault="disconnect"),
        ask(3),
    ]
    cycles = read(observations)
    assert [c.state for c in cycles] == [
        COMMITTED,
        FAILED,
        COMMITTED,
        FAILED,
        FAILED,
        FAILED,
        COMMITTED,
    ]
    old = [(index, records_at(o.now_ns)) for index, o in enumerate(observations) if o.valid]
    assert committed_views(cycles) == old
    assert seen_alone(cycles) == {1, 2, 3}


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("", "complete"),
        ("blockchain_id=abc", "complete"),
        (WAITING, "waiting"),
        (f"blockchain_id=abc&{PROCESSING}", "processing"),
        ("operation_id=x", "follow-up"),
        ("operation_id=", "complete"),  # a blank parameter is no filter (the API ignores it)
    ],
    ids=["plain", "filtered", "waiting", "processing", "follow-up", "blank"],
)
def test_what_a_request_asks_for(query: str, kind: str) -> None:
    assert request_kind(query) == kind
    assert ask(1, query).kind == kind


def test_a_fault_aimed_at_a_kind_of_request_is_taken_by_the_next_one_of_that_kind() -> None:
    sim = GatedSimulator(seed=3)  # not started: requests are handed to it directly
    path = f"/v2/{sim.project_id}/operation/record"
    headers = {"x-auth-token": sim.credentials.token}

    def get(query: str) -> int:
        return sim.handle(ReceivedRequest("GET", path, query, headers, b"")).status

    sim.inject_on("processing", "500")
    sim.inject_on(None, "502")
    assert [get(WAITING), get(PROCESSING), get(PROCESSING), get("")] == [502, 500, 200, 200]
    assert sim.armed() == []
    assert [(o.kind, o.fault) for o in sim.observations] == [
        ("waiting", "502"),
        ("processing", "500"),
        ("processing", None),
        ("complete", None),
    ]


def test_tokens_revoked_and_the_clock_moved_as_a_kind_of_request_arrives() -> None:
    sim = GatedSimulator(seed=3)
    path = f"/v2/{sim.project_id}/operation/record"
    headers = {"x-auth-token": sim.issue_token()}
    start = sim.clock.now_ns()

    def get(query: str) -> int:
        return sim.handle(ReceivedRequest("GET", path, query, headers, b"")).status

    sim.inject_on("processing", "expire-tokens")
    sim.move_on("processing", start + 5 * NS)
    assert [get(WAITING), get(PROCESSING)] == [200, 401]
    assert [o.now_ns for o in sim.observations] == [start, start + 5 * NS]
    assert sim.moved == [1]  # the request the clock moved for
    assert sim.armed() == []
