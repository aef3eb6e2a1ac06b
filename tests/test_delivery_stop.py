"""The stop honours ``--stop-grace``: a real ``run`` process, a webhook receiver that takes
the request and never answers, SIGTERM. The service exits 0 within the grace (plus 2 s for
the interpreter to wind down); every undelivered row is left due, not counted as an
attempt, and the next start delivers it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import config_support
import pytest
from delivery_support import insert_group, record, status_event
from net_support import http_receiver
from sqlalchemy import Engine, select

from notifier.simulator.server import Simulator
from notifier.store import db
from notifier.store.schema import outbox

GRACE = 3.0
ROWS = 5


class Silent:
    """Accepts connections on 127.0.0.1, reads what comes, never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.received = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connection.settimeout(0.1)
            self.connections.append(connection)
            threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                if connection.recv(65536):
                    self.received.set()
                else:
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    @contextmanager
    def serving(self) -> Iterator[Silent]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)
            for connection in self.connections:
                connection.close()
            self.listener.close()


def _config(tmp_path: Path, simulator: Simulator, hook: str) -> Path:
    return config_support.write_config(
        tmp_path,
        service={"poll_interval": 60, "poll_jitter": 0},
        delivery={"timeout": 30, "max_age": 365 * 86400, "backoff_initial": 0},
        sources=[config_support.sim_source(simulator, "token", "sim", max_retries=0, timeout=2)],
        channels=[config_support.channel("hook", hook)],
    )


def _rows(engine: Engine) -> list[tuple[str, int, int]]:
    with engine.connect() as connection:
        return [
            (row.state, row.attempts, row.next_attempt_at)
            for row in connection.execute(select(outbox).order_by(outbox.c.id))
        ]


@pytest.mark.slow
def test_sigterm_with_a_receiver_that_never_answers_exits_within_the_grace(
    tmp_path: Path,
) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine, backup=False)
    now_ms = int(time.time() * 1000)
    for number in range(ROWS):
        rec = record(operation_id=f"BCSSVC01-99-17000000000000002{number:02d}", status="failed")
        insert_group(
            engine, [status_event(rec, "processing", "failed")], rec, ["hook"], now_ms=now_ms
        )

    simulator = Simulator(seed=3, story=(), episodes=False).start()
    try:
        with Silent().serving() as silent:
            config = _config(tmp_path, simulator, f"webhook://127.0.0.1:{silent.port}/hook")
            log = (tmp_path / "run.log").open("w")
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "notifier",
                    "--config",
                    str(config),
                    "run",
                    "--stop-grace",
                    f"{GRACE:g}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                assert silent.received.wait(60), "the service never sent the first webhook"
                process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                code = process.wait(timeout=60)
                took = time.monotonic() - signalled
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
                log.close()
        output = (tmp_path / "run.log").read_text()
        assert code == 0, output
        assert took <= GRACE + 2, f"stopping took {took:.1f}s with a {GRACE:g}s grace"
        assert "Traceback" not in output

        # Every row is still pending, not counted as an attempt, and due now.
        rows = _rows(engine)
        assert len(rows) == ROWS
        assert {state for state, _, _ in rows} == {"pending"}
        assert {attempts for _, attempts, _ in rows} == {0}
        assert all(due <= int(time.time() * 1000) for _, _, due in rows)

        # The next start delivers them all (the channel's URL now answers).
        with http_receiver() as receiver:
            config = _config(tmp_path, simulator, f"webhook://{receiver.base}/hook")
            done = subprocess.run(
                [sys.executable, "-m", "notifier", "--config", str(config), "outbox", "dispatch"],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            accepted = receiver.accepted
        assert done.returncode == 0, done.stderr
        assert len({request.headers["webhook-id"] for request in accepted}) == ROWS
        assert {state for state, _, _ in _rows(engine)} == {"sent"}
        assert all(json.loads(request.body)["specversion"] == "1.0" for request in accepted)
    finally:
        simulator.stop()
        engine.dispose()
