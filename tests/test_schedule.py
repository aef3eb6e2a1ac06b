"""The run loop's timetable (notifier.daemon.schedule): plain values in, seconds out."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
from config_support import config_toml, source

import notifier
from notifier.config import parse_config
from notifier.daemon import schedule
from notifier.daemon.schedule import (
    DISPATCH_FAILURE_BACKOFF_MAX,
    DISPATCH_RETRY,
    MAX_SLEEP,
    dispatch_failure_delay,
    failure_interval,
    is_stuck,
    jittered,
    poll_interval,
    sleep_time,
    stuck_after,
    stuck_limit,
)

PACKAGE = Path(notifier.__file__).parent / "daemon"


@pytest.mark.parametrize(
    ("seconds", "jitter", "spread", "expected"),
    [
        (60.0, 0.0, 1.0, 60.0),  # no jitter: the spread is ignored
        (60.0, -0.5, 1.0, 60.0),  # a negative jitter is none
        (60.0, 0.1, 0.0, 60.0),
        (60.0, 0.1, 1.0, 66.0),
        (60.0, 0.1, -1.0, 54.0),
        (60.0, 0.5, 0.5, 75.0),
    ],
)
def test_jittered(seconds: float, jitter: float, spread: float, expected: float) -> None:
    assert jittered(seconds, jitter, spread) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("active", "full", "jitter", "spread", "expected"),
    [
        (False, None, 0.0, 0.0, 300.0),  # idle
        (True, None, 0.0, 0.0, 15.0),  # a watched operation is running
        (False, 120.0, 0.0, 0.0, 120.0),  # incremental: the complete listing is due first
        (True, 120.0, 0.0, 0.0, 15.0),  # ... which never lengthens the active interval
        (False, 900.0, 0.0, 0.0, 300.0),
        (False, None, 0.2, 1.0, 360.0),
        (True, None, 0.2, -1.0, 12.0),
    ],
)
def test_poll_interval(
    active: bool, full: float | None, jitter: float, spread: float, expected: float
) -> None:
    got = poll_interval(
        active=active,
        active_interval=15.0,
        idle_interval=300.0,
        full_interval=full,
        jitter=jitter,
        spread=spread,
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "retry_after", "signature_rest", "expected"),
    [
        (1, None, None, 15.0),  # the first failure waits the active interval
        (2, None, None, 30.0),
        (3, None, None, 60.0),
        (5, None, None, 240.0),
        (6, None, None, 300.0),  # capped at the idle interval
        (10_000, None, None, 300.0),  # no overflow however long it fails
        (1, 90.0, None, 90.0),  # the server's Retry-After is a floor
        (6, 90.0, None, 300.0),  # ... never a ceiling
        (1, 0.0, None, 15.0),  # a zero or negative hint is ignored
        (1, -5.0, None, 15.0),
        (1, None, 300.0, 300.0),  # a refused signature rests at least its floor
        (1, 600.0, 300.0, 600.0),  # ... or longer when the server says so
        (1, 100.0, 300.0, 300.0),  # ... never shorter
        (1, None, 5.0, 15.0),  # a small floor does not shorten the backoff
    ],
)
def test_failure_interval(
    failures: int, retry_after: float | None, signature_rest: float | None, expected: float
) -> None:
    got = failure_interval(
        failures,
        active_interval=15.0,
        idle_interval=300.0,
        retry_after=retry_after,
        signature_rest=signature_rest,
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "jitter", "spread", "retry_after", "expected"),
    [
        (1, 0.1, 1.0, None, 16.5),  # the backoff is jittered ...
        (6, 0.1, 1.0, None, 330.0),  # ... after the cap, as the daemon always did
        (1, 0.1, -1.0, 14.0, 14.0),  # the floor applies to the jittered delay
        (1, 0.1, -1.0, 10.0, 13.5),
    ],
)
def test_failure_interval_with_jitter(
    failures: int, jitter: float, spread: float, retry_after: float | None, expected: float
) -> None:
    got = failure_interval(
        failures,
        active_interval=15.0,
        idle_interval=300.0,
        jitter=jitter,
        spread=spread,
        retry_after=retry_after,
    )
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        (0, 0.0),
        (1, DISPATCH_RETRY),
        (2, 10.0),
        (3, 20.0),
        (6, 160.0),
        (7, DISPATCH_FAILURE_BACKOFF_MAX),
        (100_000, DISPATCH_FAILURE_BACKOFF_MAX),
    ],
)
def test_dispatch_failure_delay(failures: int, expected: float) -> None:
    assert dispatch_failure_delay(failures) == expected


@pytest.mark.parametrize(
    ("timeout", "retries", "expected"),
    [
        (10.0, 0, 300.0),  # 80 s worst case: the 300 s minimum
        (30.0, 2, 720.0),  # 30 * 3 attempts * 2 round trips * 4
        (60.0, 5, 2880.0),
    ],
)
def test_stuck_limit(timeout: float, retries: int, expected: float) -> None:
    assert stuck_limit(timeout, retries) == expected


def test_stuck_after_reads_the_source_settings() -> None:
    text = config_toml(
        service={"database": "sqlite:///unused.db"},
        sources=[source("prod", timeout=30, max_retries=2)],
    )
    config = parse_config(text)
    prod = config.sources[0]
    assert (prod.timeout, prod.max_retries) == (30, 2)
    assert stuck_after(prod) == 720.0


@pytest.mark.parametrize(
    ("started", "now", "limit", "expected"),
    [
        (None, 1_000.0, 300.0, False),  # nothing runs
        (100.0, 400.0, 300.0, False),  # exactly at the limit: still fine
        (100.0, 400.5, 300.0, True),
        (100.0, 150.0, 300.0, False),
    ],
)
def test_is_stuck(started: float | None, now: float, limit: float, expected: bool) -> None:
    assert is_stuck(started, now, limit) is expected


@pytest.mark.parametrize(
    ("now", "deadlines", "watchdog", "expected"),
    [
        (100.0, [130.0, 160.0], None, 30.0),  # the earliest deadline
        (100.0, [130.0, 160.0], 10.0, 10.0),  # ... or the next watchdog ping
        (100.0, [130.0], 0.0, 30.0),  # no watchdog
        (100.0, [50.0], None, 0.0),  # overdue: no sleep, never a negative one
        (100.0, [math.inf], None, MAX_SLEEP),  # nothing due: the longest sleep
        (100.0, [], None, MAX_SLEEP),
        (100.0, [-math.inf, 200.0], None, 0.0),  # "at once" (a lease recheck)
        (0.0, [10_000.0], None, MAX_SLEEP),
    ],
)
def test_sleep_time(
    now: float, deadlines: list[float], watchdog: float | None, expected: float
) -> None:
    assert sleep_time(now, deadlines, watchdog) == expected


def test_the_timetable_imports_no_io_library() -> None:
    """Loaded on its own (not through the package face, which wires the whole service)."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('timetable', {schedule.__file__!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert module.dispatch_failure_delay(2) == 10.0\n"
        "bad = [m for m in ('httpx', 'sqlalchemy', 'apprise', 'click', 'alembic', 'requests',\n"
        "                   'notifier.store', 'notifier.daemon') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert out == ""


def test_the_daemon_package_does_not_import_sqlalchemy() -> None:
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "sqlalchemy"]
    assert offenders == []
