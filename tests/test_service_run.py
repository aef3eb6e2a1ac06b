"""`bcs-notifier run` as a real process under a test harness.

The harness plays systemd (a unix datagram socket as ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``),
the BCS API (the simulator on 127.0.0.1, with injected faults) and a webhook receiver (a
local HTTP server that fails on purpose for a while). It checks that the service becomes
ready, polls at the active rate while an operation runs and at the idle rate after,
survives API and channel faults, reports unreachable/recovered once each, and exits 0 on
SIGTERM with nothing lost.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import config_support
import pytest
from net_support import NotifyListener, Receiver, free_port, http_receiver
from sqlalchemy import create_engine, func, select

from notifier.simulator.auth import ReceivedRequest
from notifier.simulator.http import RECORD_PATH, SimResponse
from notifier.simulator.server import Simulator
from notifier.store.schema import events, outbox

pytestmark = pytest.mark.slow

IDLE = 2.0
ACTIVE = 0.3


class TimedSimulator(Simulator):
    """The simulator, noting the real (monotonic) time of every poll: its first record
    request (a complete listing, or the waiting list that opens an incremental cycle)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_times: list[float] = []

    def handle(self, request: ReceivedRequest) -> SimResponse:
        opens_cycle = request.query in ("", "operation_status=waiting")
        if RECORD_PATH.match(request.path) and opens_cycle:
            self.poll_times.append(time.monotonic())
        return super().handle(request)


POLL_DECISION = re.compile(r"polled sim: .*, (?P<mode>active|idle), next in (?P<next>[0-9.]+)s$")


def not_sent(tmp_path: Path) -> int:
    """Outbox rows not sent yet (pending or dead)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.state != "sent")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def delivered(receiver: Receiver) -> dict[str, dict[str, Any]]:
    """Each accepted CloudEvent by its webhook id."""
    return {request.headers["webhook-id"]: request.json() for request in receiver.accepted}


def types(receiver: Receiver) -> list[str]:
    return [document["type"] for document in delivered(receiver).values()]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[tuple[TimedSimulator, Receiver, NotifyListener]]:
    simulator = TimedSimulator(seed=3, story=(), episodes=False).start()
    systemd = NotifyListener(tmp_path / "notify.sock")
    with http_receiver() as receiver:
        yield simulator, receiver, systemd
    systemd.close()
    simulator.stop()


def write_config(tmp_path: Path, simulator: Simulator, receiver: Receiver, http_port: int) -> Path:
    return config_support.write_config(
        tmp_path,
        service={
            "poll_interval": IDLE,
            "active_poll_interval": ACTIVE,
            "poll_jitter": 0,
            "unreachable_after": 1.5,
            "http": {"listen": "127.0.0.1", "port": http_port},
        },
        delivery={"backoff_initial": 0.2, "backoff_max": 0.5, "max_attempts": 100},
        sources=[config_support.sim_source(simulator, "token", "sim", max_retries=0, timeout=10)],
        channels=[config_support.channel("hook", f"webhook://{receiver.base}/hook")],
    )


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_run_under_a_harness(
    tmp_path: Path, harness: tuple[TimedSimulator, Receiver, NotifyListener]
) -> None:
    simulator, receiver, systemd = harness
    http_port = free_port()
    config = write_config(tmp_path, simulator, receiver, http_port)
    receiver.statuses.extend([500] * 3)  # the channel is down for the first deliveries
    log = (tmp_path / "run.log").open("w")
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(systemd.path),
        "WATCHDOG_USEC": "3000000",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "notifier",
            "--config",
            str(config),
            "--log-level",
            "debug",
            "run",
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
        env=env,
    )
    run_log = tmp_path / "run.log"

    def log_offset() -> int:
        return len(run_log.read_text())

    def decisions(offset: int) -> list[str]:
        """The scheduler's choice after each successful poll logged past ``offset``:
        "active" or "idle", from its "polled ..., next in Ns" debug lines."""
        found = []
        for line in run_log.read_text()[offset:].splitlines():
            try:
                message = json.loads(line)["message"]
            except (ValueError, KeyError):
                continue  # a line still being written
            match = POLL_DECISION.match(message)
            if match:
                expected = ACTIVE if match["mode"] == "active" else IDLE
                assert float(match["next"]) == pytest.approx(expected), message
                found.append(match["mode"])
        return found

    def polls_since(count: int) -> int:
        return len(simulator.poll_times) - count

    try:
        wait_for(lambda: "READY=1" in systemd.lines(), 60, "READY=1")
        wait_for(lambda: "WATCHDOG=1" in systemd.lines(), 60, "WATCHDOG=1")

        # a second instance on the same database refuses to start, with a clear message
        second = subprocess.run(
            [sys.executable, "-m", "notifier", "--config", str(config), "run"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NOTIFY_SOCKET": ""},
            check=False,
        )
        assert second.returncode == 69
        assert f"another bcs-notifier run (pid {process.pid})" in second.stderr

        # idle: nothing in progress, so the scheduler picks the idle interval, poll after poll
        wait_for(lambda: polls_since(0) >= 2, 60, "two polls")
        mark = log_offset()
        wait_for(lambda: decisions(mark).count("idle") >= 2, 60, "two idle polls")
        assert "active" not in decisions(mark)

        # an operation starts: the active interval
        simulator.schedule("create", "bcs-harness")
        wait_for(lambda: "operation.created" in " ".join(types(receiver)), 60, "created")
        mark = log_offset()
        seen = len(simulator.poll_times)
        wait_for(lambda: decisions(mark).count("active") >= 3, 60, "three active polls")
        # each decision follows a request the simulator served (a poll that was under way
        # at the mark may log its decision after it: wait, do not count at one instant)
        wait_for(lambda: polls_since(seen) >= 3, 60, "three active poll requests")

        # it finishes: back to the idle interval
        simulator.advance(simulator.story_remaining() + 60)
        wait_for(
            lambda: (
                "bcs_notifier.operation.status_changed" in types(receiver)
                and any(
                    d["data"]["to"] == "finished" and d["type"].endswith("operation.status_changed")
                    for d in delivered(receiver).values()
                )
            ),
            60,
            "the finished operation",
        )
        mark = log_offset()
        wait_for(lambda: decisions(mark)[-2:] == ["idle", "idle"], 60, "idle polls again")
        failed = [request for request in receiver.snapshot() if request.status == 500]
        assert len(failed) == 3  # the channel failures were retried

        status, body = get(http_port, "/healthz")
        assert status == 200, body
        status, metrics = get(http_port, "/metrics")
        assert status == 200
        assert 'bcs_notifier_polls_total{source="sim"}' in metrics
        assert 'bcs_notifier_deliveries_total{result="retry"}' in metrics

        # the API fails: unreachable once, then recovered once
        simulator.inject("500", count=10_000)
        wait_for(lambda: "bcs_notifier.source.unreachable" in types(receiver), 60, "unreachable")
        seen = len(simulator.poll_times)
        wait_for(lambda: polls_since(seen) >= 3, 60, "more failed polls")  # no second report
        simulator.clear_faults()
        wait_for(lambda: "bcs_notifier.source.recovered" in types(receiver), 60, "recovered")
        wait_for(lambda: not_sent(tmp_path) == 0, 60, "every delivery sent")
        assert types(receiver).count("bcs_notifier.source.unreachable") == 1
        assert types(receiver).count("bcs_notifier.source.recovered") == 1
        assert any(line.startswith("STATUS=last poll") for line in systemd.lines())

        # SIGHUP: an invalid config is refused and logged, a valid one applied
        good = config.read_text()
        config.write_text(good.replace(f"poll_interval = {IDLE}", "poll_interval = 0"))
        process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: "the new configuration is invalid" in (tmp_path / "run.log").read_text(),
            60,
            "the refused reload",
        )
        assert "service.poll_interval: must be at least 1" in (tmp_path / "run.log").read_text()
        config.write_text(good.replace('name = "hook"', 'name = "hook2"'))
        process.send_signal(signal.SIGHUP)
        # start, and after each reload (the daemon logs "reloaded" before it tells systemd)
        wait_for(lambda: systemd.lines().count("READY=1") == 3, 60, "READY=1 after the reload")
        assert "reloaded" in (tmp_path / "run.log").read_text()
        assert process.poll() is None
        assert "RELOADING=1" in systemd.lines()

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()
    lines = systemd.lines()
    assert "STOPPING=1" in lines
    output = (tmp_path / "run.log").read_text()
    records = [json.loads(line) for line in output.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert simulator.credentials.token not in output  # no secret in any line

    # nothing lost: every recorded event reached the receiver, nothing is left pending
    engine = create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        with engine.connect() as connection:
            recorded = set(connection.execute(select(events.c.id)).scalars())
            left = connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.state != "sent")
            ).scalar_one()
    finally:
        engine.dispose()
    assert recorded
    assert recorded <= set(delivered(receiver))
    assert left == 0
