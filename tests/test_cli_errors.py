"""The CLI's one error -> exit-code table, and database errors as one line (a real process:
a traceback would show on its stderr)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from config_support import channel, write_config
from sqlalchemy import text

from notifier.cli.base import EXIT_CODES, exit_code
from notifier.errors import (
    AlreadyRunning,
    ConfigError,
    LeaseLost,
    NotifierError,
    SourceError,
    StoreError,
    TemplateError,
    UnloadableURL,
)
from notifier.store import db


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("x"), 78),
        (AlreadyRunning("x"), 69),
        (StoreError("x"), 1),
        (LeaseLost("x"), 1),
        (TemplateError("x"), 1),
        (UnloadableURL("x"), 1),
        (NotifierError("x"), 1),
    ],
)
def test_exit_code_table(error: NotifierError, code: int) -> None:
    assert exit_code(error) == code


def test_a_source_error_escaping_a_command_exits_1_as_before() -> None:
    # `poll` itself exits 69 for a source it could not poll; the table does not say so
    assert exit_code(SourceError("unreachable")) == 1
    assert SourceError not in EXIT_CODES


def test_database_error_maps_sqlalchemy_errors_only(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT secret_column FROM missing WHERE a = :a"), {"a": "pw1"})
    except Exception as exc:
        mapped = db.database_error(exc)
    finally:
        engine.dispose()
    assert isinstance(mapped, StoreError)
    assert str(mapped) == "database error: OperationalError: no such table: missing"
    assert db.database_error(ValueError("x")) is None


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("table", "args"),
    [
        ("outbox", ("outbox", "list")),
        ("outbox", ("outbox", "dispatch")),
        ("events", ("events",)),
    ],
)
def test_a_missing_table_is_one_line_not_a_traceback(
    tmp_path: Path, table: str, args: tuple[str, ...]
) -> None:
    config = write_config(tmp_path, channels=[channel("ops", "json://127.0.0.1:9/")])
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine, backup=False)
    with engine.begin() as connection:  # at the head revision, but a table is gone
        connection.execute(text(f"DROP TABLE {table}"))
    engine.dispose()

    result = _cli(config, *args)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert f"no such table: {table}" in line
    if args == ("outbox", "list"):  # no store function maps this read: the CLI does
        assert line == "error: database error: OperationalError: no such table: outbox"
