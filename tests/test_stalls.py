"""The pure stall policy: percentiles, thresholds, learning, which stalls are due."""

from __future__ import annotations

from dataclasses import replace

import pytest

from notifier.model import EventType, OperationRecord, Step, SubStep
from notifier.stalls import (
    MAX_SAMPLES,
    NS,
    Alert,
    DurationKey,
    NewestSamples,
    Sample,
    StallSettings,
    Usual,
    api_now_ns,
    due_level,
    finished_samples,
    learned_samples,
    percentile,
    plan_stalls,
    running_items,
    stall_event,
    threshold_ns,
    usual,
)

T0 = 1_700_000_000 * NS
STEP, SUB = "Preparation", "Check dependent resources"
KEY = DurationKey("BCSSVC01", "00", STEP, SUB)
STEP_KEY = DurationKey("BCSSVC01", "00", STEP, "")


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([5], 95, 5),
        ([1, 2], 50, 1),  # the lower middle value: rank ceil(0.5 * 2) = 1
        ([1, 2, 3], 50, 2),
        ([3, 1, 2, 4], 50, 2),
        (list(range(1, 21)), 95, 19),  # rank ceil(0.95 * 20) = 19
        (list(range(1, 21)), 100, 20),
        (list(range(1, 13)), 95, 12),  # rank ceil(11.4) = 12: the largest of 12
        (list(range(1, 101)), 95, 95),
        (list(range(1, 201)), 95, 190),
        (list(range(1, 201)), 1, 2),
    ],
    ids=["one", "two-median", "three-median", "unsorted", "20-p95", "20-p100", "12-p95",
         "100-p95", "200-p95", "200-p1"],
)  # fmt: skip
def test_percentile_is_nearest_rank(values: list[int], percent: int, expected: int) -> None:
    assert percentile(values, percent) == expected


@pytest.mark.parametrize("percent", [0, 101])
def test_percentile_rejects_a_percent_out_of_range(percent: int) -> None:
    with pytest.raises(ValueError, match="percent"):
        percentile([1], percent)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 95)


@pytest.mark.parametrize(
    ("p95_seconds", "factor", "floor", "expected_seconds"),
    [
        (3.0, 2.0, 5.0, 6.0),  # factor x p95 above the floor
        (2.0, 2.0, 5.0, 5.0),  # the floor wins
        (400.0, 2.0, 600.0, 800.0),
        (100.0, 2.0, 600.0, 600.0),
        (10.0, 1.5, 0.0, 15.0),
    ],
    ids=["factor", "floor", "default-factor", "default-floor", "no-floor"],
)
def test_threshold_is_the_larger_of_floor_and_factor_times_p95(
    p95_seconds: float, factor: float, floor: float, expected_seconds: float
) -> None:
    settings = StallSettings(factor=factor, floor_seconds=floor)
    assert threshold_ns(round(p95_seconds * NS), settings) == round(expected_seconds * NS)


def test_usual_by_hand() -> None:
    """Twelve durations 2.0, 2.1, ..., 3.1 s (shuffled): median is rank 6 = 2.5 s, p95 is
    rank ceil(0.95 x 12) = 12 = 3.1 s, threshold max(5, 2 x 3.1) = 6.2 s."""
    durations = [round((2.0 + 0.1 * i) * NS) for i in (7, 0, 11, 3, 5, 9, 1, 10, 2, 8, 4, 6)]
    found = usual(durations, StallSettings(floor_seconds=5.0))
    assert found == Usual(
        samples=12, median_ns=round(2.5 * NS), p95_ns=round(3.1 * NS), threshold_ns=6_200_000_000
    )


def test_too_few_samples_give_no_threshold() -> None:
    found = usual([NS, 2 * NS, 3 * NS], StallSettings(min_samples=10))
    assert found is not None
    assert found.threshold_ns is None
    assert found.p95_ns == 3 * NS
    assert usual([], StallSettings()) is None


# -- records ---------------------------------------------------------------------------------


def sub(status: str, start: float = 0, end: float = 0, name: str = SUB, serial: int = 1) -> SubStep:
    return SubStep(
        name=name,
        status=status,
        start_time=T0 + round(start * NS) if start else 0,
        end_time=T0 + round(end * NS) if end else 0,
        serial_num=serial,
    )


def record(
    *subs: SubStep,
    step_status: str | None = None,
    status: str = "processing",
    operation_id: str = "BCSSVC01-00-1",
) -> OperationRecord:
    if step_status is None:
        statuses = {item.status for item in subs}
        step_status = "finished" if statuses == {"finished"} else "processing"
    return OperationRecord(
        operation_id=operation_id,
        status=status,
        resource_type="BCSSVC01",
        operation_type="00",
        record_time=max((max(item.start_time, item.end_time) for item in subs), default=T0),
        steps=(Step(STEP, step_status, serial_num=1, sub_steps=subs),),
    )


def test_finished_steps_and_sub_steps_are_samples() -> None:
    done = record(
        sub("finished", 1, 3.5),
        sub("finished", 4, 6, name="Second", serial=2),
        status="finished",
    )
    found = {(s.key.substep, s.duration_ns) for s in finished_samples(done)}
    assert found == {(SUB, round(2.5 * NS)), ("Second", 2 * NS), ("", 5 * NS)}


@pytest.mark.parametrize(
    "bad",
    [
        sub("finished", 5, 3),  # ends before it starts
        sub("finished", 0, 3),  # never started
        sub("finished", 1, 0),  # no end
        sub("failed", 1, 3),  # not successful
        sub("stop", 1, 3),
        sub("finished", 1, 1 + 31 * 86_400),  # implausibly long
    ],
    ids=["backwards", "no-start", "no-end", "failed", "stop", "too-long"],
)
def test_unusable_durations_are_not_learned(bad: SubStep) -> None:
    assert finished_samples(record(bad, step_status="failed")) == []


def test_only_what_finished_since_the_previous_snapshot_is_learned() -> None:
    before = record(sub("finished", 1, 2), sub("processing", 3, name="Second", serial=2))
    after = record(sub("finished", 1, 2), sub("finished", 3, 7, name="Second", serial=2))
    assert {s.key.substep for s in learned_samples(None, after)} == {SUB, "Second", ""}
    assert {s.key.substep for s in learned_samples(before, after)} == {"Second", ""}
    assert learned_samples(after, after) == []


def test_running_items_are_processing_steps_and_sub_steps_with_a_start() -> None:
    running = record(sub("finished", 1, 2), sub("processing", 3, name="Second", serial=2))
    assert {(item.key.substep, item.started_at) for item in running_items(running)} == {
        ("Second", T0 + 3 * NS),
        ("", T0 + NS),
    }
    assert running_items(replace(running, status="failed")) == []
    assert running_items(record(sub("processing"))) == []  # no start time: cannot measure


def test_a_record_time_far_ahead_of_the_date_does_not_move_the_clock() -> None:
    bogus = replace(record(sub("processing", 7)), record_time=T0 + 86_400 * NS)
    assert api_now_ns(T0 + 5 * NS, [bogus, record(sub("processing", 7))]) == T0 + 7 * NS
    assert api_now_ns(T0 + 5 * NS, [bogus]) == T0 + 5 * NS
    assert api_now_ns(T0, [record(sub("processing", 600))]) == T0 + 600 * NS  # within 10 min


@pytest.mark.parametrize(
    ("server", "expected"),
    [(None, T0 + 7 * NS), (T0 + 9 * NS, T0 + 9 * NS), (T0 + 5 * NS, T0 + 7 * NS)],
    ids=["no-date", "date-later", "records-later"],
)
def test_the_api_clock_is_the_date_header_or_the_latest_record(
    server: int | None, expected: int
) -> None:
    records = [record(sub("processing", 7)), record(sub("processing", 2))]
    assert api_now_ns(server, records) == expected
    assert api_now_ns(None, []) == 0


# -- plans -----------------------------------------------------------------------------------

SETTINGS = StallSettings(factor=2.0, min_samples=10, floor_seconds=5.0)
USUAL = {KEY: Usual(12, round(2.5 * NS), 3 * NS, 6 * NS)}
STALLING = record(sub("processing", 10))  # started at T0 + 10 s


def at(seconds: float) -> int:
    return T0 + round(seconds * NS)


def alert(level: int = 0, *, episode: int = 0, ended: int | None = None, **changes: int) -> Alert:
    values = {
        "operation_id": STALLING.operation_id,
        "step": STEP,
        "substep": SUB,
        "episode": episode,
        "started_at": at(10),
        "level": level,
        "threshold_ns": 6 * NS,
        "p95_ns": 3 * NS,
        "samples": 12,
        "alerted_at": at(16.5),
        "ended_at": ended,
    }
    return Alert(**(values | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("elapsed", "reminders", "expected"),
    [
        (5.9, False, -1),
        (6.0, False, -1),  # "longer than": not at the threshold itself
        (6.1, False, 0),
        (100.0, False, 0),  # without reminders the alert is all there is
        (12.1, True, 1),
        (24.1, True, 2),
        (1000.0, True, 2),  # never more than the 4x reminder
    ],
)
def test_due_level(elapsed: float, reminders: bool, expected: int) -> None:
    settings = replace(SETTINGS, reminders=reminders)
    assert due_level(round(elapsed * NS), 6 * NS, settings) == expected


def test_a_stall_is_alerted_once_past_the_threshold() -> None:
    assert not plan_stalls([STALLING], [], USUAL, at(15.9), SETTINGS)
    plan = plan_stalls([STALLING], [], USUAL, at(16.5), SETTINGS)
    assert plan.opened == (alert(),)
    assert [notice.elapsed_ns for notice in plan.notices] == [round(6.5 * NS)]
    # the next cycle knows it was alerted: nothing again, however long it goes on
    assert not plan_stalls([STALLING], [alert()], USUAL, at(500), SETTINGS)


def test_fewer_samples_than_the_minimum_alert_nothing() -> None:
    few = {KEY: Usual(3, 2 * NS, 3 * NS, None)}
    assert not plan_stalls([STALLING], [], few, at(10_000), SETTINGS)
    assert not plan_stalls([STALLING], [], {}, at(10_000), SETTINGS)


def test_reminders_come_at_two_and_four_times_the_threshold_and_never_more() -> None:
    settings = replace(SETTINGS, reminders=True)
    state = [alert()]
    assert not plan_stalls([STALLING], state, USUAL, at(10 + 12), settings)
    second = plan_stalls([STALLING], state, USUAL, at(10 + 12.5), settings)
    assert second.raised == (alert(1, alerted_at=at(22.5)),)
    state = list(second.raised)
    assert not plan_stalls([STALLING], state, USUAL, at(10 + 24), settings)
    third = plan_stalls([STALLING], state, USUAL, at(10 + 24.5), settings)
    assert [a.level for a in third.raised] == [2]
    assert not plan_stalls([STALLING], list(third.raised), USUAL, at(10_000), settings)


def test_a_late_first_look_sends_one_event_at_the_level_due() -> None:
    plan = plan_stalls([STALLING], [], USUAL, at(10 + 30), replace(SETTINGS, reminders=True))
    assert [(a.level, a.episode) for a in plan.opened] == [(2, 0)]
    assert len(plan.notices) == 1


@pytest.mark.parametrize(
    "moved",
    [
        record(sub("finished", 10, 40)),
        record(sub("failed", 10, 40), step_status="failed", status="failed"),
        record(sub("processing", 50)),  # restarted: a new start time
        record(),  # the step has no such sub-step any more
    ],
    ids=["finished", "failed", "restarted", "vanished"],
)
def test_the_stall_ends_when_the_step_moves(moved: OperationRecord) -> None:
    plan = plan_stalls([moved], [alert()], USUAL, at(60), SETTINGS)
    assert plan.closed == (alert(ended=at(60)),)


def test_an_open_alert_of_an_operation_not_seen_stays_open() -> None:
    assert not plan_stalls([], [alert()], USUAL, at(60), SETTINGS)


def test_a_later_stall_of_the_same_step_is_a_new_episode_with_a_new_id() -> None:
    again = record(sub("processing", 100))
    plan = plan_stalls([again], [alert(ended=at(60))], USUAL, at(107), SETTINGS)
    (opened,) = plan.opened
    assert opened.episode == 1
    first = stall_event(
        "src", STALLING, plan_stalls([STALLING], [], USUAL, at(17), SETTINGS).notices[0], at(17)
    )
    second = stall_event("src", again, plan.notices[0], at(107))
    assert first.id != second.id


def test_a_step_whose_sub_step_is_stalled_is_reported_through_the_sub_step() -> None:
    step_usual = {**USUAL, STEP_KEY: Usual(12, 2 * NS, 3 * NS, 6 * NS)}
    plan = plan_stalls([STALLING], [], step_usual, at(30), SETTINGS)
    assert [(a.step, a.substep) for a in plan.opened] == [(STEP, SUB)]
    # the sub-step finished, the step goes on with another one: now the step has stalled
    later = record(sub("finished", 10, 40), sub("processing", 41, name="Second", serial=2))
    plan = plan_stalls([later], [alert()], step_usual, at(45), SETTINGS)
    assert [(a.step, a.substep) for a in plan.opened] == [(STEP, "")]
    assert plan.closed == (alert(ended=at(45)),)


def test_the_stall_event_carries_what_the_contract_names() -> None:
    notice = plan_stalls([STALLING], [], USUAL, at(16.5), SETTINGS).notices[0]
    event = stall_event("prod", STALLING, notice, at(16.5))
    assert event.type is EventType.SUBSTEP_STALLED
    assert event.record_time == at(16.5)
    data = event.data()
    assert {key: data[key] for key in ("step", "substep", "from", "to")} == {
        "step": STEP,
        "substep": SUB,
        "from": "processing",
        "to": None,
    }
    assert data["elapsed_seconds"] == 6.5
    assert data["threshold_seconds"] == 6.0
    assert data["p95_seconds"] == 3.0
    assert data["samples"] == 12
    assert data["reminder"] == 0
    assert data["started_at"] == "2023-11-14T22:13:30.000000000Z"
    # the same stall always has the same id; the stored form reads back equal
    assert stall_event("prod", STALLING, notice, at(99)).id == event.id
    from notifier.model import Event

    assert Event.from_dict(event.to_dict()) == event


def test_a_step_stall_is_a_step_event() -> None:
    step_usual = {STEP_KEY: Usual(12, 2 * NS, 3 * NS, 6 * NS)}
    notice = plan_stalls([STALLING], [], step_usual, at(17), SETTINGS).notices[0]
    event = stall_event("prod", STALLING, notice, at(17))
    assert event.type is EventType.STEP_STALLED
    assert event.substep is None


def test_names_too_long_for_the_store_are_neither_learned_nor_watched() -> None:
    long_name = "x" * 513
    done = record(sub("finished", 1, 2, name=long_name), status="finished")
    assert [s.key.substep for s in finished_samples(done)] == [""]  # the step still counts
    running = record(sub("processing", 1, name=long_name))
    assert [item.key.substep for item in running_items(running)] == [""]
    odd = replace(record(sub("processing", 1)), resource_type="R" * 65)
    assert running_items(odd) == []


def test_newest_samples_keeps_what_the_store_would_keep() -> None:
    """Per key the newest MAX_SAMPLES by end time, the later of equal end times winning, as
    the store's own pruning (sorted by end time, the last MAX_SAMPLES) would keep them."""
    other = replace(KEY, substep="Other")
    arrivals = [
        Sample(KEY if n % 3 else other, f"OP-{n}", 10 * NS, T0 + (n * 7919 % 450) * NS)
        for n in range(900)
    ]
    kept = NewestSamples()
    kept.add(arrivals[:400])
    kept.add(arrivals[400:])
    expected: list[Sample] = []
    for key in (KEY, other):
        of_key = [sample for sample in arrivals if sample.key == key]
        expected += sorted(of_key, key=lambda sample: sample.ended_at)[-MAX_SAMPLES:]
    chosen = kept.samples()
    assert sorted(chosen, key=arrivals.index) == sorted(expected, key=arrivals.index)
    assert list(chosen) == sorted(chosen, key=arrivals.index)  # in arrival order


def test_newest_samples_keeps_all_below_the_limit() -> None:
    arrivals = [Sample(KEY, f"OP-{n}", NS, T0 + n) for n in range(5)]
    kept = NewestSamples(limit=3)
    kept.add(arrivals)
    assert kept.samples() == tuple(arrivals[2:])
