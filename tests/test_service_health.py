"""Metrics text format, the /healthz and /metrics listener, the single-instance lock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from notifier.errors import AlreadyRunning
from notifier.health import HealthReport, HealthServer, Metrics
from notifier.store import db
from notifier.store.lock import InstanceLock, advisory_key, lock_file_for

SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? [-+0-9.eInfNa]+$')


def test_metrics_render_in_the_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.inc("polls_total", source="prod")
    metrics.inc("polls_total", source="prod")
    metrics.inc("poll_errors_total", source="prod", kind="transport")
    metrics.inc("events_total", type="operation.created")
    metrics.inc("deliveries_total", 3, result="sent")
    metrics.set("outbox_depth", 4)
    metrics.set("outbox_oldest_pending_age_seconds", 12.5)
    metrics.observe("poll_duration_seconds", 0.3, source="prod")
    metrics.observe("poll_duration_seconds", 7, source="prod")
    text = metrics.render()
    lines = text.splitlines()
    assert 'bcs_notifier_polls_total{source="prod"} 2' in lines
    assert 'bcs_notifier_poll_errors_total{kind="transport",source="prod"} 1' in lines
    assert 'bcs_notifier_events_total{type="operation.created"} 1' in lines
    assert 'bcs_notifier_deliveries_total{result="sent"} 3' in lines
    assert "bcs_notifier_outbox_depth 4" in lines
    assert "bcs_notifier_outbox_oldest_pending_age_seconds 12.5" in lines
    assert 'bcs_notifier_poll_duration_seconds_bucket{source="prod",le="0.25"} 0' in lines
    assert 'bcs_notifier_poll_duration_seconds_bucket{source="prod",le="0.5"} 1' in lines
    assert 'bcs_notifier_poll_duration_seconds_bucket{source="prod",le="10"} 2' in lines
    assert 'bcs_notifier_poll_duration_seconds_bucket{source="prod",le="+Inf"} 2' in lines
    assert 'bcs_notifier_poll_duration_seconds_sum{source="prod"} 7.3' in lines
    assert 'bcs_notifier_poll_duration_seconds_count{source="prod"} 2' in lines
    assert "# TYPE bcs_notifier_poll_duration_seconds histogram" in lines
    assert "# TYPE bcs_notifier_polls_total counter" in lines
    for line in lines:
        assert line.startswith("# ") or SAMPLE.match(line), line


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.inc("poll_errors_total", source='we"ird\\name', kind="api")
    assert 'source="we\\"ird\\\\name"' in metrics.render()


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, list[HealthReport]]]:
    metrics = Metrics()
    metrics.inc("polls_total", source="prod")
    reports = [HealthReport(True, (), {"sources": {}})]
    listener = HealthServer("127.0.0.1", 0, metrics=metrics, health=lambda: reports[0])
    listener.start()
    yield listener, reports
    listener.close()


def fetch(listener: HealthServer, path: str) -> tuple[int, str, str]:
    host, port = listener.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_metrics_endpoint(server: tuple[HealthServer, list[HealthReport]]) -> None:
    status, content_type, body = fetch(server[0], "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'bcs_notifier_polls_total{source="prod"} 1' in body


def test_healthz_fails_when_stale(server: tuple[HealthServer, list[HealthReport]]) -> None:
    listener, reports = server
    status, _, body = fetch(listener, "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    reports[0] = HealthReport(False, ("source prod: no successful poll for 900s",))
    status, content_type, body = fetch(listener, "/healthz")
    assert status == 503
    assert content_type == "application/json"
    assert json.loads(body)["reasons"] == ["source prod: no successful poll for 900s"]


def test_other_paths_are_not_found(server: tuple[HealthServer, list[HealthReport]]) -> None:
    assert fetch(server[0], "/")[0] == 404


def test_a_busy_port_is_a_clear_error(server: tuple[HealthServer, list[HealthReport]]) -> None:
    host, port = server[0].address
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
        HealthServer(host, port, metrics=Metrics(), health=lambda: HealthReport(True))


# -- the instance lock ---------------------------------------------------------------------


def test_a_second_lock_on_the_same_database_is_refused(engine: Engine) -> None:
    first = InstanceLock(engine).acquire()
    try:
        assert first.path == lock_file_for(engine)
        assert first.holder() == os.getpid()
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            InstanceLock(engine).acquire()
    finally:
        first.release()
    with InstanceLock(engine) as again:
        assert again.path is not None
        assert again.path.exists()
    assert InstanceLock(engine).holder() is None


def test_the_lock_holds_across_processes_and_dies_with_its_holder(
    engine: Engine, tmp_path: Path
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    script = (
        "import sys\n"
        "from notifier.store import db\n"
        "from notifier.store.lock import InstanceLock\n"
        f"lock = InstanceLock(db.make_engine({url!r})).acquire()\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(AlreadyRunning, match=f"pid {child.pid}"):
            InstanceLock(engine).acquire()
    finally:
        child.kill()  # no clean release: the kernel drops the lock
        child.communicate(timeout=10)
    InstanceLock(engine).acquire().release()


def test_memory_and_other_databases_have_no_lock_file() -> None:
    assert lock_file_for(db.make_engine("sqlite://")) is None
    assert -(2**63) <= advisory_key() < 2**63


def test_mysql_locks_are_named_after_the_database() -> None:
    """GET_LOCK is server-wide: the name must carry the database, or an unrelated install on
    another database of the same server is refused (MariaDB/MySQL stay single-instance)."""
    from notifier.store.lock import _ADVISORY

    for backend in ("mysql", "mariadb"):
        assert "DATABASE()" in _ADVISORY[backend]
    assert "postgresql" not in _ADVISORY  # several instances: leases, not a session lock
