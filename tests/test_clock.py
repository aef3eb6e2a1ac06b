"""notifier.clock: the Clock protocol, SYSTEM_CLOCK, the shared fake, and iso()."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from clock_support import FakeClock

from notifier.clock import SYSTEM_CLOCK, Clock, iso, ms_from_seconds, seconds_from_ms

# -- SYSTEM_CLOCK ------------------------------------------------------------------------------


def test_system_clock_wall_ms_is_the_hosts_time_in_integer_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    reading = SYSTEM_CLOCK.wall_ms()
    after = time.time_ns() // 1_000_000
    assert isinstance(reading, int)
    assert before <= reading <= after


def test_system_clock_monotonic_is_time_monotonic_and_never_goes_back() -> None:
    before = time.monotonic()
    first = SYSTEM_CLOCK.monotonic()
    second = SYSTEM_CLOCK.monotonic()
    after = time.monotonic()
    assert before <= first <= second <= after


def test_the_system_clock_and_the_fake_satisfy_the_protocol() -> None:
    clocks: list[Clock] = [SYSTEM_CLOCK, FakeClock()]
    for clock in clocks:
        assert isinstance(clock.wall_ms(), int)
        assert isinstance(clock.monotonic(), float)
    assert repr(SYSTEM_CLOCK) == "SYSTEM_CLOCK"


# -- the shared fake ---------------------------------------------------------------------------


def test_fake_clock_moves_both_readings_together_only_when_told() -> None:
    clock = FakeClock(5.0, wall_start_ms=1_000_000)
    assert (clock.monotonic(), clock.wall_ms()) == (5.0, 1_000_000)
    assert (clock.monotonic(), clock.wall_ms()) == (5.0, 1_000_000)  # standing still
    clock.advance(1.25)
    assert (clock.monotonic(), clock.wall_ms()) == (6.25, 1_001_250)
    clock.sleep(0.5)
    clock.wait(2)
    assert clock.sleeps == [0.5, 2]
    assert (clock.monotonic(), clock.wall_ms(), clock.wall()) == (8.75, 1_003_750, 1003.75)


def test_fake_clock_runs_each_scheduled_action_once_when_a_wait_passes_it() -> None:
    clock = FakeClock()
    ran: list[float] = []
    clock.at[3.0] = lambda: ran.append(clock.now)
    clock.at[10.0] = lambda: ran.append(-1)
    clock.sleep(2.9)
    assert ran == []
    clock.sleep(0.1)  # reaches 3.0 exactly
    clock.sleep(1)
    assert ran == [3.0]
    assert list(clock.at) == [10.0]


def test_fake_clock_at_wall_reads_epoch_seconds_on_both() -> None:
    clock = FakeClock.at_wall(1_700_000_000.5)
    assert clock.monotonic() == 1_700_000_000.5
    assert clock.wall_ms() == 1_700_000_000_500


# -- units -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "milliseconds"),
    [(0.0, 0), (1.0, 1000), (1_700_000_000.1234, 1_700_000_000_123), (2.9999, 2999)],
    ids=["zero", "one", "epoch-truncated", "fraction-truncated"],
)
def test_ms_from_seconds_truncates(seconds: float, milliseconds: int) -> None:
    assert ms_from_seconds(seconds) == milliseconds


def test_seconds_from_ms_is_the_metrics_edge() -> None:
    assert seconds_from_ms(1_700_000_120_000) == 1_700_000_120.0
    assert seconds_from_ms(1_500) == 1.5


# -- iso: the exact outputs of the helpers it replaces -----------------------------------------

MOMENT_MS = 1_705_307_400_999  # 2024-01-15 08:30:00.999 UTC


@pytest.mark.parametrize(
    ("milliseconds", "style", "expected"),
    [
        # daemon/status.py _iso, cli/delivery.py _iso_ms, cli/service.py _when, cli/sources.py
        (MOMENT_MS, "z", "2024-01-15T08:30:00Z"),
        (0, "z", "1970-01-01T00:00:00Z"),
        # daemon/status.py _clock_text (the systemd status line)
        (MOMENT_MS, "space", "2024-01-15 08:30:00Z"),
        # bcs/errors.py iso_seconds, pipeline.py's lost-baseline line
        (MOMENT_MS, "offset", "2024-01-15T08:30:00+00:00"),
        # bcs/auth.py: the end of a login rest
        (MOMENT_MS, "time", "08:30:00 UTC"),
    ],
    ids=["z", "z-epoch", "space", "offset", "time"],
)
def test_iso_styles(milliseconds: int, style: str, expected: str) -> None:
    assert iso(milliseconds, style) == expected  # type: ignore[arg-type]


def test_iso_default_style_is_z() -> None:
    assert iso(MOMENT_MS) == "2024-01-15T08:30:00Z"


@pytest.mark.parametrize(
    "seconds",
    [0.0, 1.999, 59.5, 1_705_307_400.0, 1_705_307_400.999, 4_102_444_799.9],
    ids=["epoch", "fraction", "half", "whole", "almost-next", "year-2099"],
)
def test_iso_matches_each_old_helper_for_the_same_moment(seconds: float) -> None:
    milliseconds = ms_from_seconds(seconds)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    old = {  # what each old helper printed
        "z": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "space": moment.strftime("%Y-%m-%d %H:%M:%SZ"),
        "offset": moment.isoformat(timespec="seconds"),
        "time": moment.strftime("%H:%M:%S UTC"),
    }
    for style, text in old.items():
        assert iso(milliseconds, style) == text, style  # type: ignore[arg-type]
    # cli/service.py used time.gmtime on the stored ms
    assert iso(milliseconds) == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(milliseconds / 1000)
    )
