"""A real PostgreSQL for the tests: ONE server (the ``pgserver`` package's bundled
PostgreSQL 16) for the whole run, started on first use, and a fresh database per test.

The server listens on a unix socket only (no TCP port), so URLs carry the socket directory
as ``?host=%2F...``: the spelling that used to crash Alembic's configparser.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, text


class PostgresServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.start()
        # a throw-away server: no durability, so databases and the shutdown are quick
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            self.admin(f"ALTER SYSTEM SET {setting} = off")
        self.admin("SELECT pg_reload_conf()")

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL for ``database`` (psycopg 3, socket directory escaped)."""
        return self.url_for(self.directory, database)

    @staticmethod
    def url_for(directory: Path, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={quote(str(directory), safe='')}"

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.admin(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def admin(self, statement: str, **parameters: Any) -> list[Any]:
        """Run one statement on the maintenance database (autocommit); its rows."""
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                result = connection.execute(text(statement), parameters)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def terminate_backends(self, database: str) -> int:
        """``pg_terminate_backend`` of every session on ``database``; how many."""
        rows = self.admin(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()",
            name=database,
        )
        return int(rows[0][0])

    def terminate_process_sessions(self, database: str, pid: int) -> int:
        """``pg_terminate_backend`` of the sessions one ``bcs-notifier`` process opened on
        ``database`` (their ``application_name`` carries its pid); how many."""
        rows = self.admin(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = :name AND application_name = :application",
            name=database,
            application=f"bcs-notifier[{pid}]",
        )
        return int(rows[0][0])

    def start(self) -> None:
        """Start (or start again) the server of ``directory``."""
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime dir, which warns without XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            import pgserver

            self.server: Any = pgserver.get_server(str(self.directory), cleanup_mode="stop")

    def stop(self) -> None:
        """Stop the server (the data stays; ``start`` brings it back)."""
        self.close()

    def close(self) -> None:
        with warnings.catch_warnings(), contextlib.suppress(Exception):
            warnings.simplefilter("ignore")
            self.server.cleanup()


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A server in a fresh directory under /tmp (as root, pgserver runs PostgreSQL as its own
    user, which cannot enter pytest's private temporary directories); removed after."""
    directory = Path(tempfile.mkdtemp(prefix="bcs-pg-"))
    directory.chmod(0o755)
    server = PostgresServer(directory)
    try:
        yield server
    finally:
        server.close()
        shutil.rmtree(directory, ignore_errors=True)


def database_name(url: str) -> str:
    from sqlalchemy.engine import make_url

    return str(make_url(url).database)
