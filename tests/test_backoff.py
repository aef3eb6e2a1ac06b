"""notifier.backoff.compute_backoff: the one exponential back-off, table-driven, plus a
property check that it gives exactly what each call site computed before it existed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.backoff import Jitter, compute_backoff

# attempt, base, cap, max_exponent, jitter, draw, expected
CASES: list[tuple[int, float, float, int | None, Jitter, float, float]] = [
    (0, 10.0, 3600.0, None, "none", 0.0, 0.0),
    (-3, 10.0, 3600.0, None, "equal", 0.9, 0.0),
    (1, 10.0, 3600.0, None, "none", 0.0, 10.0),
    (2, 10.0, 3600.0, None, "none", 0.0, 20.0),
    (5, 10.0, 3600.0, None, "none", 0.0, 160.0),
    (10, 10.0, 3600.0, None, "none", 0.0, 3600.0),
    (100_000, 10.0, 3600.0, None, "none", 0.0, 3600.0),
    (10**9, 0.5, 30.0, None, "upward", 0.99, 30.0),
    (1, 0.0, 3600.0, None, "none", 0.0, 0.0),
    (100_000, 0.0, 3600.0, None, "equal", 0.5, 0.0),
    (3, 10.0, 0.0, None, "none", 0.0, 0.0),
    (30, 5.0, 1e12, 20, "none", 0.0, 5.0 * 2**20),
    (17, 5.0, 300.0, 16, "none", 0.0, 300.0),
    (3, 1.0, 1e9, 1, "none", 0.0, 2.0),
    (1, 10.0, 3600.0, None, "equal", 0.0, 5.0),
    (1, 10.0, 3600.0, None, "equal", 0.5, 7.5),
    (3, 10.0, 3600.0, None, "equal", 0.5, 30.0),
    (20, 10.0, 3600.0, None, "equal", 0.0, 1800.0),
    (20, 10.0, 3600.0, None, "equal", 0.999, 3598.2),
    (1, 0.5, 30.0, None, "upward", 0.0, 0.5),
    (1, 0.5, 30.0, None, "upward", 0.5, 0.75),
    (3, 0.5, 30.0, None, "upward", 0.5, 3.0),
    (6, 0.5, 30.0, None, "upward", 0.9, 30.0),
    (6, 0.5, 30.0, None, "upward", 0.0, 16.0),
    (7, 0.5, 30.0, None, "upward", 0.0, 30.0),
    (2, 2.0, 30.0, None, "upward", 0.0, 4.0),
]


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "max_exponent", "jitter", "draw", "expected"),
    CASES,
    ids=[f"{c[4]}-attempt{c[0]}-base{c[1]:g}-cap{c[2]:g}-exp{c[3]}-draw{c[5]:g}" for c in CASES],
)
def test_compute_backoff(
    attempt: int,
    base: float,
    cap: float,
    max_exponent: int | None,
    jitter: Jitter,
    draw: float,
    expected: float,
) -> None:
    delay = compute_backoff(
        attempt, base=base, cap=cap, max_exponent=max_exponent, jitter=jitter, draw=draw
    )
    assert delay == pytest.approx(expected, rel=1e-12, abs=0.0)
    assert isinstance(delay, float)


draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
jitters = st.sampled_from(["none", "equal", "upward"])


@given(st.integers(-5, 100_000), draws, jitters)
def test_never_above_the_cap_nor_below_zero(attempt: int, draw: float, jitter: Jitter) -> None:
    delay = compute_backoff(attempt, base=0.5, cap=30.0, jitter=jitter, draw=draw)
    assert 0.0 <= delay <= 30.0


@pytest.mark.parametrize("jitter", ["none", "upward"])
def test_grows_monotonically_for_a_fixed_draw(jitter: Jitter) -> None:
    delays = [
        compute_backoff(attempt, base=1.0, cap=600.0, jitter=jitter, draw=0.3)
        for attempt in range(1, 40)
    ]
    assert delays == sorted(delays)
    assert delays[-1] == 600.0


# the formulas the call sites used before this module, kept here to pin the equivalence


def _bcs_client_before(attempt: int, base: float, draw: float) -> float:
    return min(30.0, base * 2.0 ** (attempt - 1) * (1.0 + draw))


def _outbox_before(attempts: int, initial: float, maximum: float, draw: float) -> float:
    if attempts <= 0:
        return 0.0
    delay = min(maximum, initial * (2 ** (attempts - 1)))
    return float(delay / 2 + draw * delay / 2)


def _daemon_failure_before(failures: int, active: float, poll: float) -> float:
    return min(poll, active * 2 ** min(failures - 1, 20))


@given(st.integers(1, 12), st.sampled_from([0.5, 2.0]), draws)
def test_matches_the_bcs_client_retry_formula(attempt: int, base: float, draw: float) -> None:
    assert compute_backoff(
        attempt, base=base, cap=30.0, jitter="upward", draw=draw
    ) == _bcs_client_before(attempt, base, draw)


@given(
    st.integers(-2, 60),
    st.floats(0.0, 604_800.0),
    st.floats(0.0, 604_800.0),
    draws,
)
def test_matches_the_outbox_formula(
    attempts: int, initial: float, maximum: float, draw: float
) -> None:
    assert compute_backoff(
        attempts, base=initial, cap=maximum, jitter="equal", draw=draw
    ) == _outbox_before(attempts, initial, maximum, draw)


@given(st.integers(1, 200), st.floats(0.001, 86_400.0), st.floats(0.001, 86_400.0))
def test_matches_the_daemon_failure_formula(failures: int, active: float, poll: float) -> None:
    assert compute_backoff(
        failures, base=active, cap=poll, max_exponent=20
    ) == _daemon_failure_before(failures, active, poll)
