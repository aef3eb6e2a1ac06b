"""Simulator clocks: a manual one for tests, a scaled one for demos."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from notifier.simulator.clock import ManualClock, ScaledClock, to_ns

NS = 1_000_000_000


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(datetime(2024, 1, 15, 8, 30, tzinfo=UTC))
    start = clock.now_ns()
    assert start == 1_705_307_400 * NS
    assert clock.wall_ns() == start
    assert clock.now_ns() == start
    clock.advance(1.5)
    assert clock.now_ns() == start + 1_500_000_000
    assert clock.time() == pytest.approx(1_705_307_401.5)
    clock.set(1_705_307_500)
    assert clock.wall_ns() == 1_705_307_500 * NS


def test_manual_clock_never_goes_backwards() -> None:
    clock = ManualClock(100)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(99)


def test_manual_clock_defaults_to_now_in_whole_seconds() -> None:
    before = int(datetime.now(UTC).timestamp())
    clock = ManualClock()
    assert clock.now_ns() % NS == 0
    assert before - 1 <= clock.now_ns() // NS <= before + 2


class FakeMonotonic:
    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


def test_scaled_clock_runs_the_story_faster_but_keeps_gateway_time_real() -> None:
    monotonic = FakeMonotonic()
    clock = ScaledClock(
        10, start=1_705_307_400, monotonic=monotonic, real_ns=lambda: 1_800_000_000 * NS
    )
    assert clock.now_ns() == 1_705_307_400 * NS
    assert clock.wall_ns() == 1_800_000_000 * NS
    monotonic.value += 2
    assert clock.now_ns() == (1_705_307_400 + 20) * NS
    assert clock.wall_ns() == (1_800_000_000 + 2) * NS
    clock.advance(5)
    assert clock.now_ns() == (1_705_307_400 + 25) * NS
    assert clock.wall_ns() == (1_800_000_000 + 7) * NS
    assert clock.time() == pytest.approx(1_800_000_007)


def test_scaled_clock_rejects_a_non_positive_speed() -> None:
    with pytest.raises(ValueError, match="positive"):
        ScaledClock(0)


def test_start_times_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        to_ns(datetime(2024, 1, 15, 8, 30))  # noqa: DTZ001 - the naive datetime is the point
    plus_eight = timezone(timedelta(hours=8))
    assert to_ns(datetime(2024, 1, 15, 16, 30, tzinfo=plus_eight)) == 1_705_307_400 * NS
