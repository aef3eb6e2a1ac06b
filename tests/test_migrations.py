"""Migrations are the only schema path: one head, and the migrated schema equals the models."""

from __future__ import annotations

import json
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from delivery_support import (
    FakeClock,
    insert_group,
    make_config,
    record,
    status_event,
    substep_failed,
)
from net_support import http_receiver
from sqlalchemy import Engine, inspect, text

from notifier.config import ChannelConfig
from notifier.model import Event
from notifier.outbox import Dispatcher
from notifier.store import db
from notifier.store.schema import metadata


def test_one_head() -> None:
    script = ScriptDirectory(str(db.migrations_path()))
    assert len(script.get_heads()) == 1


def test_migrated_schema_matches_models(store_engine: Engine) -> None:
    """On SQLite and on a real PostgreSQL (whose URL names its socket directory as %2F...)."""
    with store_engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == []


def test_upgrade_from_0003_keeps_rows_and_lifts_the_column_limits(store_url: str) -> None:
    """An existing database at 0003: migration 0004 keeps its rows, and an operation id of
    300 characters and a status of 100 then fit (PostgreSQL enforces VARCHAR lengths)."""
    from alembic import command

    engine = db.make_engine(store_url)
    try:
        config = db._alembic_config(engine)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0003")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO snapshots (source, operation_id, content_hash, data, status, "
                    "record_time, first_seen, last_seen) VALUES ('prod', 'op-1', 'h', '{}', "
                    "'waiting', 1, 1, 1)"
                )
            )
        assert db.upgrade(engine, backup=False) == db.head_revision()
        long_id, long_status = "o" * 300, "s" * 100
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO snapshots (source, operation_id, content_hash, data, status, "
                    "record_time, first_seen, last_seen) VALUES ('prod', :id, 'h', '{}', "
                    ":status, 1, 1, 1)"
                ),
                {"id": long_id, "status": long_status},
            )
            rows = connection.execute(
                text("SELECT operation_id, status FROM snapshots ORDER BY operation_id")
            ).all()
        assert [tuple(row) for row in rows] == [(long_id, long_status), ("op-1", "waiting")]
        with engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
    finally:
        engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    path = db.migrations_path()
    assert (path / "env.py").is_file()
    assert any((path / "versions").glob("0001_*.py"))


def test_the_head_read_from_the_files_is_alembics() -> None:
    script = ScriptDirectory(str(db.migrations_path()))
    assert db.head_revision() == script.get_current_head()


def test_the_revision_is_read_without_alembic_and_agrees_with_it(engine: Engine) -> None:
    with engine.connect() as connection:
        assert (
            db.current_revision(engine)
            == MigrationContext.configure(connection).get_current_revision()
        )


def test_a_path_with_a_percent_sign_migrates(tmp_path: Path) -> None:
    folder = tmp_path / "100% state"
    engine = db.make_engine(f"sqlite:///{folder / 'state.db'}")
    assert db.upgrade(engine) == db.head_revision()
    engine.dispose()


def test_a_socket_directory_url_reaches_alembic_unharmed() -> None:
    """``%2F`` in a URL (a socket directory) is escaped for configparser, not interpolated."""
    url = "postgresql+psycopg://postgres@/postgres?host=%2Frun%2Fpostgresql"
    engine = db.make_engine(url)
    config = db._alembic_config(engine)
    rendered = engine.url.render_as_string(hide_password=False)
    assert "%2F" in rendered
    assert config.get_main_option("sqlalchemy.url") == rendered


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    from alembic import command

    config = db._alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _outbox_columns(engine: Engine) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns("outbox")}


def _insert_0006_group(engine: Engine, events: list[Event], channel: str) -> None:
    """An event group, its events and one outbox row, as revision 0006 stored them."""
    first = events[0]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO event_groups (id, source, operation_id, created_at, record) "
                "VALUES ('grp_1', :source, :operation_id, 1, NULL)"
            ),
            {"source": first.source, "operation_id": first.operation_id},
        )
        for event in events:
            connection.execute(
                text(
                    "INSERT INTO events (id, group_id, source, operation_id, type, "
                    "record_time, created_at, payload) VALUES (:id, 'grp_1', :source, "
                    ":operation_id, :type, :record_time, 1, :payload)"
                ),
                {
                    "id": event.id,
                    "source": event.source,
                    "operation_id": event.operation_id,
                    "type": str(event.type),
                    "record_time": event.record_time,
                    "payload": json.dumps(event.to_dict()),
                },
            )
        connection.execute(
            text(
                "INSERT INTO outbox (group_id, channel, state, attempts, created_at, "
                "next_attempt_at, updated_at, last_error, done_targets) VALUES ('grp_1', "
                ":channel, 'pending', 2, 1, 1, 1, 'HTTP 503', '[]')"
            ),
            {"channel": channel},
        )


def _dispatch_legacy_row(engine: Engine) -> list[str]:
    """Dispatch the row to a webhook channel that takes sub-step events only: the ids sent."""
    with http_receiver() as receiver:
        channel = ChannelConfig(
            name="hook", urls=(f"webhook://{receiver.base}/",), events=("substep.*",)
        )
        clock = FakeClock()
        stats = Dispatcher(
            make_config([channel]), engine, clock=clock, sleep=clock.sleep, rand=lambda: 0.5
        ).dispatch_due()
        sent = [body["id"] for body in receiver.bodies()]
    assert stats.sent == 1
    return sent


def test_upgrade_from_0006_keeps_outbox_rows_routed_at_dispatch(store_url: str) -> None:
    """Rows written before 0007 get ``event_ids`` NULL and keep being routed through the
    channel's filters when they are dispatched (SQLite and PostgreSQL)."""
    rec = record(status="failed")
    substep, failed = (
        substep_failed(rec, "Network", "Create EIP"),
        status_event(rec, "processing", "failed"),
    )
    engine = db.make_engine(store_url)
    try:
        _migrate(engine, "0006")
        assert "event_ids" not in _outbox_columns(engine)
        _insert_0006_group(engine, [substep, failed], "hook")
        assert db.upgrade(engine, backup=False) == db.head_revision()
        with engine.connect() as connection:
            row = connection.execute(text("SELECT * FROM outbox")).mappings().one()
            assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        assert (row["group_id"], row["channel"], row["attempts"], row["last_error"]) == (
            "grp_1",
            "hook",
            2,
            "HTTP 503",
        )
        assert row["event_ids"] is None
        assert _dispatch_legacy_row(engine) == [substep.id]
    finally:
        engine.dispose()


def test_downgrade_to_0006_drops_event_ids_and_keeps_the_rows(store_url: str) -> None:
    rec = record(status="failed")
    substep, failed = (
        substep_failed(rec, "Network", "Create EIP"),
        status_event(rec, "processing", "failed"),
    )
    engine = db.make_engine(store_url)
    try:
        assert db.upgrade(engine, backup=False) == db.head_revision()
        insert_group(engine, [substep, failed], rec, ["hook"], routed={"hook": [failed.id]})
        _migrate(engine, "0006", down=True)
        assert db.current_revision(engine) == "0006"
        assert "event_ids" not in _outbox_columns(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT channel, state FROM outbox")).all() == [
                ("hook", "pending")
            ]
        assert db.upgrade(engine, backup=False) == db.head_revision()
        with engine.connect() as connection:
            assert connection.execute(text("SELECT event_ids FROM outbox")).all() == [(None,)]
        assert _dispatch_legacy_row(engine) == [substep.id]  # routed at dispatch again
    finally:
        engine.dispose()
