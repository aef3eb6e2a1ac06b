"""`bcs-notifier run` as a real process whose SQLite database is deleted under it (issue 14):
it notices, says so loudly, fails /healthz and stops polling; the next start reports what
changed while there was no database instead of taking a silent baseline."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import config_support
import pytest
from e2e_support import Service
from net_support import free_port, http_receiver

from notifier.simulator.server import Simulator

pytestmark = pytest.mark.slow

WAIT = 60.0


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _health(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_a_database_deleted_under_run_is_noticed_and_never_a_silent_baseline(
    tmp_path: Path,
) -> None:
    simulator = Simulator(seed=3, story=(), episodes=False).start()
    try:
        with http_receiver() as receiver:
            port = free_port()
            config = config_support.write_config(
                tmp_path,
                service={
                    "poll_interval": 1,
                    "active_poll_interval": 0.3,
                    "poll_jitter": 0,
                    "http": {"listen": "127.0.0.1", "port": port},
                },
                sources=[config_support.sim_source(simulator, "token", "sim", timeout=5)],
                channels=[config_support.channel("hook", f"webhook://{receiver.base}/hook")],
            )
            marker = tmp_path / "state.db.baselines.json"
            service = Service(config, tmp_path).start()
            try:
                _wait_for(marker.exists, "the first baseline and its marker")
                _wait_for(lambda: _health(port)[0] == 200, "a healthy service")
                for name in ("state.db", "state.db-wal", "state.db-shm"):
                    (tmp_path / name).unlink(missing_ok=True)
                _wait_for(lambda: _health(port)[0] == 503, "/healthz to fail")
                assert "was deleted under the running service" in _health(port)[1]
                assert "was deleted under the running service" in service.stderr()
                assert not (tmp_path / "state.db").exists()  # no silent new file
            finally:
                service.stop()
            assert service.stderr().count("was deleted under the running service") == 1

            # meanwhile an operation starts; the next start reports it, not a silent baseline
            simulator.schedule("create", "bcs-after-loss")
            service.start()
            try:
                _wait_for(
                    lambda: any(
                        request.json()["type"] == "bcs_notifier.operation.created"
                        for request in receiver.accepted
                    ),
                    "the operation created while there was no database",
                )
                assert "the database was deleted or replaced" in service.stderr()
            finally:
                assert service.stop() == 0
    finally:
        simulator.stop()
