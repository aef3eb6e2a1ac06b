"""notifier.outbox.state: an outbox row's state machine, table-driven, without a database."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.backoff import compute_backoff
from notifier.config import DeliveryConfig
from notifier.outbox.state import (
    DEFERRED,
    UNCHANGED,
    Attempt,
    Transition,
    backoff_seconds,
    next_state,
)

NOW = 10_000_000  # ms
DELIVERY = DeliveryConfig(max_attempts=3, max_age=3600.0, backoff_initial=10.0, backoff_max=100.0)
TRIED = Attempt(attempts=0, created_at=NOW - 1000, attempted=True, errors=["u: HTTP 500"])


def _half() -> float:
    return 0.5


def _never() -> float:
    raise AssertionError("no random draw expected for this transition")


CASES: list[tuple[str, Attempt, Transition | None]] = [
    (
        "complete-is-sent",
        replace(TRIED, complete=True),
        Transition("sent", {"state": "sent", "last_error": None}),
    ),
    (
        "complete-wins-over-permanent",
        replace(TRIED, complete=True, permanent="bad"),
        Transition("sent", {"state": "sent", "last_error": None}),
    ),
    (
        "untried-deferred",
        Attempt(attempts=2, created_at=NOW, deferred_until=NOW + 500),
        Transition(DEFERRED, {"next_attempt_at": NOW + 500}),
    ),
    ("untried-untouched", Attempt(attempts=1, created_at=NOW), None),
    (
        "untried-with-bookkeeping",
        Attempt(attempts=1, created_at=NOW, unsaved=True),
        Transition(UNCHANGED),
    ),
    (
        "interrupted-without-errors-untouched",
        Attempt(attempts=1, created_at=NOW, attempted=True, interrupted=True),
        None,
    ),
    (
        "interrupted-with-bookkeeping",
        Attempt(attempts=1, created_at=NOW, attempted=True, interrupted=True, unsaved=True),
        Transition(UNCHANGED),
    ),
    (
        "tried-no-error-deferred",
        Attempt(attempts=0, created_at=NOW, attempted=True, deferred_until=NOW + 700),
        Transition(DEFERRED, {"next_attempt_at": NOW + 700}),
    ),
    (
        "first-failure-retries-with-backoff",
        TRIED,
        Transition(
            "pending",
            {"attempts": 1, "next_attempt_at": NOW + 7500, "last_error": "u: HTTP 500"},
        ),
    ),
    (
        "second-failure-doubles",
        replace(TRIED, attempts=1),
        Transition(
            "pending",
            {"attempts": 2, "next_attempt_at": NOW + 15_000, "last_error": "u: HTTP 500"},
        ),
    ),
    (
        "retry-not-before-deferral",
        replace(TRIED, deferred_until=NOW + 60_000),
        Transition(
            "pending",
            {"attempts": 1, "next_attempt_at": NOW + 60_000, "last_error": "u: HTTP 500"},
        ),
    ),
    (
        "errors-joined-once-each",
        replace(TRIED, errors=["a", "b", "a"]),
        Transition("pending", {"attempts": 1, "next_attempt_at": NOW + 7500, "last_error": "a; b"}),
    ),
    (
        "tried-without-error-text",
        replace(TRIED, errors=[]),
        Transition("pending", {"attempts": 1, "next_attempt_at": NOW + 7500, "last_error": None}),
    ),
    (
        "max-attempts-is-dead",
        replace(TRIED, attempts=2),
        Transition(
            "dead",
            {"state": "dead", "attempts": 3, "last_error": "dead after 3 attempts: u: HTTP 500"},
            dead_reason="3 attempts",
            error="u: HTTP 500",
        ),
    ),
    (
        "max-age-is-dead",
        replace(TRIED, created_at=NOW - 3_600_000),
        Transition(
            "dead",
            {
                "state": "dead",
                "attempts": 1,
                "last_error": "dead after max_age reached: u: HTTP 500",
            },
            dead_reason="max_age reached",
            error="u: HTTP 500",
        ),
    ),
    (
        "dead-without-detail",
        replace(TRIED, attempts=2, errors=[]),
        Transition(
            "dead",
            {"state": "dead", "attempts": 3, "last_error": "dead after 3 attempts: no detail"},
            dead_reason="3 attempts",
            error=None,
        ),
    ),
    (
        "permanent-is-dead-at-once",
        replace(TRIED, permanent="cannot encode event e1"),
        Transition(
            "dead",
            {
                "state": "dead",
                "attempts": 1,
                "last_error": "permanent failure, not retried: cannot encode event e1 "
                "(retrying cannot help; `outbox retry` after a fix)",
            },
            dead_reason="permanent",
            error="cannot encode event e1",
        ),
    ),
]


@pytest.mark.parametrize(("row", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_next_state(row: Attempt, expected: Transition | None) -> None:
    draws: list[float] = []

    def draw() -> float:
        draws.append(0.5)
        return 0.5

    assert next_state(row, DELIVERY, NOW, draw) == expected
    # one random draw for a retry, none for any other transition
    assert len(draws) == (1 if expected is not None and expected.state == "pending" else 0)


def test_a_long_error_is_cut_to_what_the_column_keeps() -> None:
    row = replace(TRIED, errors=["x" * 5000])
    retried = next_state(row, DELIVERY, NOW, _half)
    assert retried is not None
    assert retried.values["last_error"] == "x" * 2000
    dead = next_state(replace(row, attempts=2), DELIVERY, NOW, _never)
    assert dead is not None
    assert len(dead.values["last_error"]) == 2000
    assert dead.values["last_error"].startswith("dead after 3 attempts: xxx")


def test_the_retry_delay_is_the_equal_jitter_backoff() -> None:
    for attempts, draw in [(0, 0.0), (0, 0.99), (4, 0.25), (9, 0.75)]:
        row = replace(TRIED, attempts=attempts)
        config = replace(DELIVERY, max_attempts=100)
        transition = next_state(row, config, NOW, lambda value=draw: value)
        assert transition is not None
        delay = compute_backoff(attempts + 1, base=10.0, cap=100.0, jitter="equal", draw=draw)
        assert transition.values["next_attempt_at"] == NOW + int(delay * 1000)


@given(
    st.integers(-2, 60),
    st.floats(0.0, 604_800.0),
    st.floats(0.0, 604_800.0),
    st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoff_seconds_is_compute_backoff(
    attempts: int, initial: float, maximum: float, draw: float
) -> None:
    expected = compute_backoff(attempts, base=initial, cap=maximum, jitter="equal", draw=draw)
    assert backoff_seconds(attempts, initial, maximum, lambda: draw) == expected


def test_backoff_seconds_draws_nothing_before_a_failure() -> None:
    assert backoff_seconds(0, 10.0, 100.0, _never) == 0.0


def test_the_package_face_keeps_every_name() -> None:
    import notifier.outbox as face

    names: dict[str, Any] = {
        name: getattr(face, name)
        for name in (
            "Dispatcher",
            "DispatchStats",
            "OutboxEntry",
            "Reassigned",
            "backoff_seconds",
            "counts_by_state",
            "list_entries",
            "purge",
            "reassign",
            "retry",
            "unconfigured_counts",
            "STATES",
        )
    }
    assert names["STATES"] == ("pending", "sent", "dead")
    assert hasattr(face.Dispatcher, "_deliver")


def test_the_outbox_package_runs_no_sql_of_its_own() -> None:
    """Every statement is in notifier/store/: no module of notifier/outbox/ imports
    sqlalchemy outside ``if TYPE_CHECKING:`` (type names only)."""
    import ast
    from pathlib import Path

    import notifier.outbox as face

    package = Path(face.__file__).parent
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
            for node in ast.walk(block)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0] == "sqlalchemy" for m in modules), path.name
