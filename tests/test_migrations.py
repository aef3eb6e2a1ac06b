"""Migrations are the only schema path: one head, and the migrated schema equals the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

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
