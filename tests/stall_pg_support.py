"""A real PostgreSQL for the stall store tests: one ``pgserver`` (bundled PostgreSQL) per
test session, started on first use, and a fresh database per test.

The server listens on a unix socket only. Engines connect through a ``creator`` so their URL
holds no socket path (Alembic's config would read a ``%2F`` in it as interpolation).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

_server: Any = None
_directory: Path | None = None


def _start() -> tuple[Any, Path]:
    global _server, _directory  # noqa: PLW0603 - one server per test session
    if _server is None:
        # as root, pgserver runs PostgreSQL as its own user: a world-readable directory
        directory = Path(tempfile.mkdtemp(prefix="bcs-stall-pg-"))
        directory.chmod(0o755)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns without XDG_RUNTIME_DIR
            import pgserver

            _server = pgserver.get_server(str(directory), cleanup_mode="stop")
        _directory = directory
        atexit.register(_stop)
        admin = _engine("postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                connection.execute(text(f"ALTER SYSTEM SET {setting} = off"))
            connection.execute(text("SELECT pg_reload_conf()"))
        admin.dispose()
    assert _directory is not None
    return _server, _directory


def _stop() -> None:
    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        _server.cleanup()
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)


def _engine(database: str, **options: Any) -> Engine:
    import psycopg

    assert _directory is not None
    directory = str(_directory)
    return create_engine(
        "postgresql+psycopg://",
        creator=lambda: psycopg.connect(host=directory, user="postgres", dbname=database),
        **options,
    )


def fresh_database() -> Callable[[], Engine]:
    """A new, empty database of the session's server: a factory of engines on it (a test
    that restarts the service opens a second one)."""
    _start()
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = _engine("postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return lambda: _engine(name)
