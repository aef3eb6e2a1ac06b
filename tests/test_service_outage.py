"""Database outages on PostgreSQL, end to end: ``run`` started while the server is down
waits and retries instead of exiting; a server stopped while the service runs is retried
too; each kind of failure is logged once; polling and delivery resume by themselves."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from config_support import sim_source
from e2e_support import (
    GatedSimulator,
    Service,
    assert_exactly_once,
    expected_transitions,
    operation_deliveries,
    webhook_receiver,
    write_config,
)
from net_support import WAIT
from pg_support import PostgresServer
from sqlalchemy import event
from test_e2e_scale import STORY

from notifier.errors import StoreError
from notifier.store import db
from notifier.store.repository import Repository

pytestmark = pytest.mark.slow


def _wait_log(service: Service, text: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while text not in service.stderr():
        assert service.alive(), service.stderr()
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never logged:\n{service.stderr()}")
        time.sleep(0.05)


def test_run_waits_for_the_database_and_survives_it_going_away(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """The suite's one server is stopped for this test and started again, whatever happens
    (the rest of the session uses it)."""
    server = postgres
    url = server.create_database()
    server.stop()
    try:
        with GatedSimulator(seed=12, story=STORY) as sim, webhook_receiver() as receiver:
            source = sim_source(sim, "aksk", "prod", timeout=10, max_retries=0)
            config = write_config(tmp_path, [source], receiver.url, database=url, lease_ttl=3)
            service = Service(config, tmp_path)
            service.start()
            try:
                _wait_log(service, "cannot reach the database")  # down at start: it waits
                server.start()
                _wait_log(service, "at revision")
                sim.wait_valid_after(0)
                instants = sim.change_instants()
                for instant in instants[:3]:
                    sim.wait_valid_after(sim.move_to(instant))
                # nothing in flight when the server stops: a success not yet recorded would
                # be sent again after the outage (at-least-once, same id), not exactly once
                so_far = len(expected_transitions("prod", sim.truths()))
                receiver.wait_for(
                    lambda got: len({d.webhook_id for d in operation_deliveries(got)}) >= so_far,
                    WAIT,
                )
                _wait_recorded(url)
                server.stop()  # the database goes away while the service runs
                _wait_log(service, "cannot renew leases")
                mark = sim.mark()
                server.start()
                _wait_log(service, "the database works again")
                sim.wait_valid_after(mark)
                for instant in instants[3:]:
                    sim.wait_valid_after(sim.move_to(instant))
                expected = expected_transitions("prod", sim.truths())
                receiver.wait_for(
                    lambda got: (
                        len({d.webhook_id for d in operation_deliveries(got)}) >= len(expected)
                    )
                )
                service.send(signal.SIGTERM)
                assert service.wait() == 0
            finally:
                service.kill()
            log = service.stderr()
            assert log.count("cannot reach the database") == 1  # once per kind, not per retry
            assert log.count("cannot renew leases") == 1
            assert "Traceback" not in log.split("cannot renew leases")[0]
            assert_exactly_once(receiver.snapshot(), expected)
    finally:
        server.start()  # a no-op while it runs


def test_sigterm_while_waiting_for_the_database_is_a_clean_stop(tmp_path: Path) -> None:
    missing = tmp_path / "no-server-here"
    missing.mkdir()
    with GatedSimulator(seed=13, story=STORY) as sim, webhook_receiver() as receiver:
        url = PostgresServer.url_for(missing)
        source = sim_source(sim, "aksk", "prod", timeout=10, max_retries=0)
        config = write_config(tmp_path, [source], receiver.url, database=url)
        service = Service(config, tmp_path)
        service.start()
        try:
            _wait_log(service, "cannot reach the database")
            service.send(signal.SIGTERM)
            assert service.wait() == 0
        finally:
            service.kill()
        assert "stopped while waiting for the database" in service.stderr()
        assert "Traceback" not in service.stderr()


def test_a_read_whose_session_the_server_ended_is_a_store_error(postgres: PostgresServer) -> None:
    """The server ends the session after the query answered: closing the connection (its
    rollback) fails too, and that is a StoreError (an outage, retried with one log line
    per kind), not an unexpected error with a traceback."""
    engine = db.make_engine(postgres.create_database())
    try:
        db.upgrade(engine)
        ended: list[int] = []

        @event.listens_for(engine, "after_cursor_execute")
        def end_session(connection: Any, *_: Any) -> None:
            if not ended:
                pid = connection.connection.dbapi_connection.info.backend_pid
                postgres.admin("SELECT pg_terminate_backend(:pid)", pid=pid)
                ended.append(pid)

        with pytest.raises(StoreError, match="database query failed"):
            Repository(engine).snapshot_index("prod")
        assert ended
        assert Repository(engine).snapshot_index("prod") == {}  # a fresh session next time
    finally:
        engine.dispose()


def _wait_recorded(url: str) -> None:
    """Until every outbox row is sent (its success committed), with a generous deadline."""
    from sqlalchemy import func, select

    from notifier.store.schema import outbox

    engine = db.make_engine(url)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            with engine.connect() as connection:
                open_rows = connection.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.state != "sent")
                ).scalar_one()
            if open_rows == 0:
                return
            assert time.monotonic() < deadline, f"{open_rows} outbox row(s) still not recorded"
            time.sleep(0.1)
    finally:
        engine.dispose()
