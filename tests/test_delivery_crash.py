"""Crash safety with real processes: SIGKILL right after the commit, and again in the middle
of a send; after a restart every event reaches its webhook, repeats carry the same id.

Results are committed in batches by a writer thread that does not wait for the sender, so
the kill in the middle of a send comes once the earlier success is recorded (it is within
milliseconds): what was recorded is never re-sent, the send that was cut is."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from config_support import channel, write_config
from net_support import http_receiver

FIXTURE = Path(__file__).parent / "fixtures" / "example_response.json"
SECRET = "whsec_" + base64.b64encode(b"crash-test-secret-0123456789abcd").decode()
ROOT = Path(__file__).parent.parent

POLL_THEN_HANG = textwrap.dedent(
    """
    import json, sys, time
    from notifier.config import load_config
    from notifier.pipeline import Poller
    from notifier.store import db
    from source_support import ScriptedClient, storage_failed

    config = load_config(sys.argv[1])
    body = json.loads(open(sys.argv[2]).read())

    engine = db.make_engine(config.service.database)
    db.upgrade(engine)
    client = ScriptedClient([body, storage_failed(body)])
    with Poller(config, engine, client_factory=lambda source: client) as poller:
        poller.poll_all()            # baseline, silent
        results = poller.poll_all()  # the change: snapshot + events + outbox, one commit
    print("COMMITTED", sum(len(r.events) for r in results), flush=True)
    time.sleep(600)                  # killed here, before anything is sent
    """
)


def _recorded_targets(database: Path) -> int:
    """How many (target, event) deliveries the outbox has recorded as done."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30) as connection:
        rows = connection.execute("SELECT done_targets FROM outbox").fetchall()
    return sum(len(json.loads(text or "[]")) for (text,) in rows)


def _wait_recorded(database: Path, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _recorded_targets(database) < count:
        assert time.monotonic() < deadline, "the first success was never recorded"
        time.sleep(0.05)


def _write_config(tmp_path: Path, port: int) -> Path:
    return write_config(
        tmp_path,
        delivery={"backoff_initial": 0, "backoff_max": 0, "timeout": 5},
        channels=[channel("hooks", f"webhook://127.0.0.1:{port}/events?secret={SECRET}")],
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")]  # tests: source_support
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "notifier", "--config", str(config), *args]


@pytest.mark.slow
def test_sigkill_after_commit_and_mid_send_loses_nothing(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        config = _write_config(tmp_path, receiver.port)

        # 1. Poll and commit, then die before dispatching anything.
        child = subprocess.Popen(
            [sys.executable, "-c", POLL_THEN_HANG, str(config), str(FIXTURE)],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("COMMITTED"), line
        expected_events = int(line.split()[1])
        assert expected_events >= 3
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        assert receiver.requests == []

        # 2. Restart the dispatcher; the receiver holds the second request open, and the
        #    dispatcher is killed while that send is in flight.
        receiver.hold_next(skip=1)
        dispatcher = subprocess.Popen(
            _cli(config, "outbox", "dispatch"), env=_env(), stderr=subprocess.DEVNULL
        )
        assert receiver.wait_held(timeout=30), "the dispatcher never reached the second send"
        _wait_recorded(tmp_path / "state.db", 1)  # the first success, while the second hangs
        dispatcher.send_signal(signal.SIGKILL)
        dispatcher.wait(timeout=10)
        receiver.release()
        before_restart = [request.headers["webhook-id"] for request in receiver.requests]
        assert len(before_restart) == 2

        # 3. Restart again: everything is delivered; only the interrupted event repeats.
        done = subprocess.run(
            _cli(config, "outbox", "dispatch"),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        listed = subprocess.run(
            _cli(config, "outbox", "list", "--state", "all", "--json"),
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        requests = list(receiver.requests)

    ids = [request.headers["webhook-id"] for request in requests]
    assert len(set(ids)) == expected_events, ids
    assert ids[:2] == before_restart
    repeated = {item for item in ids if ids.count(item) > 1}
    assert repeated == {before_restart[1]}  # the send that was cut, and nothing else
    bodies: dict[str, Any] = {}
    for request in requests:
        document = request.json()
        assert document["id"] == request.headers["webhook-id"]
        if document["id"] in bodies:
            assert document == bodies[document["id"]]
        bodies[document["id"]] = document
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [row["state"] for row in rows] == ["sent"]
