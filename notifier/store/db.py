"""Engine set-up and Alembic migrations, run programmatically from the installed package.

Alembic is imported only to migrate: the revision a database is at and the head revision
are read without it (a one-shot ``poll`` on a current schema pays nothing for Alembic).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import sqlalchemy
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from notifier.errors import StoreError, error_line

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

logger = logging.getLogger(__name__)

#: Values a statement takes at once where a list goes into ``IN (...)`` or one executemany:
#: under SQLite's variable limit, and a bounded batch in memory.
CHUNK: Final = 500
_T = TypeVar("_T")


def chunks(items: Sequence[_T], size: int = CHUNK) -> Iterator[Sequence[_T]]:
    """``items`` in slices of ``size``, in order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: The engine type the service passes around: other modules import it from here, so
#: SQLAlchemy itself is imported only under notifier/store/.
Engine: TypeAlias = sqlalchemy.Engine

SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT = 10  # seconds to reach a database server
MIGRATION_KEY = 0x62_63_73_6E_6D_69_67  # pg_advisory_xact_lock key of migrations ("bcsnmig")


def migrations_path() -> Path:
    """The Alembic migrations: ``migrations/`` of the repository, installed inside the
    package as ``notifier.migrations``."""
    # imported by name: the package is mapped from the repository's migrations/ folder
    migrations = importlib.import_module("notifier.migrations")
    return Path(str(migrations.__file__)).resolve().parent


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL: {exc}") from exc
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {}
    if not is_sqlite:
        # a connection the server dropped (pg_terminate_backend, restart) is noticed and
        # replaced at checkout instead of failing the next poll
        options["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "psycopg",
            "psycopg2",
        ):
            options["connect_args"] = {
                "connect_timeout": CONNECT_TIMEOUT,
                # pg_stat_activity tells the instances apart (and pg_terminate_backend can aim)
                "application_name": f"bcs-notifier[{os.getpid()}]",
            }
    try:
        engine = create_engine(parsed, **options)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot open database: {exc}") from exc
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def database_url_problem(url: str) -> str | None:
    """What keeps ``url`` from being opened, before anything connects: not a URL, an
    unknown database kind, or a driver that is not installed. None when it can be."""
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"unknown database kind {parsed.drivername!r} (sqlite:/// or postgresql://...)"
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is no number
        return f"not a database URL: {exc}"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        hint = " (pip install 'psycopg[binary]')" if missing == "psycopg" else ""
        return (
            f"the {parsed.get_backend_name()} driver {parsed.get_driver_name()!r} is not "
            f"installed: no module {missing!r}{hint}"
        )
    return None


def sqlite_database(url: str) -> str | None:
    """The database part of a SQLite URL (``""`` when it names none); None for another
    backend. ``url`` must be one :func:`database_url_problem` accepts."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return parsed.database or ""


def database_exists(url: str) -> bool:
    """False for a SQLite file that does not exist yet (opening it would create it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).expanduser().exists()


def require_database(url: str) -> None:
    """Refuse to read a database that does not exist yet: opening it would create it, and a
    command that only reads never creates anything."""
    if database_exists(url):
        return
    where = Path(str(make_url(url).database)).expanduser()
    raise StoreError(
        f"no database yet at {where} (nothing was polled): start `bcs-notifier run` or run "
        "`bcs-notifier poll` once"
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _alembic_config(engine: Engine) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(migrations_path()))
    url = engine.url.render_as_string(hide_password=False)
    # configparser interpolates "%": a socket directory spelled "%2Frun%2Fpostgresql" (or a
    # password with "%") must reach Alembic as written
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


_REVISION = re.compile(r"""^revision\s*=\s*["']([^"']+)["']""", re.MULTILINE)
_DOWN_REVISION = re.compile(r"""^down_revision\s*=\s*(?:None|["']([^"']*)["'])\s*$""", re.MULTILINE)


def head_revision() -> str:
    """The newest migration. A plain chain (one ``down_revision`` string each) is read from
    the files; anything else (merges, branches) is left to Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (migrations_path() / "versions").glob("*.py"):
        source = path.read_text(encoding="utf-8")
        revision, down = _REVISION.search(source), _DOWN_REVISION.search(source)
        if revision is None:
            continue
        if down is None:  # a tuple of parents: a merge
            return _alembic_head()
        revisions.add(revision.group(1))
        if down.group(1):
            parents.add(down.group(1))
    heads = revisions - parents
    if len(heads) == 1:
        return heads.pop()
    return _alembic_head()


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_path()))
    head = script.get_current_head()
    if head is None:  # pragma: no cover - the package always ships a migration
        raise StoreError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision in ``alembic_version`` (None: an empty database)."""
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                return None
            versions = list(
                connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the schema revision: {exc}") from exc
    if len(versions) > 1:
        raise StoreError(f"the database has several schema revisions: {', '.join(versions)}")
    return str(versions[0]) if versions else None


def upgrade(engine: Engine, *, backup: bool = True) -> str:
    """Migrate to the head revision; back up an existing SQLite file first."""
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    if backup and current is not None:
        backup_sqlite_file(engine, current)
    logger.info("migrating database from %s to %s", current or "empty", head)
    from alembic import command

    config = _alembic_config(engine)
    try:
        with engine.begin() as connection:
            if engine.url.get_backend_name() == "postgresql":
                # several instances start at once: one migrates, the others wait for its
                # commit (a transaction lock: safe behind PgBouncer too), then find it done
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"database migration failed: {exc}") from exc
    return head


def backup_sqlite_file(engine: Engine, revision: str) -> Path | None:
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    source = Path(database)
    if not source.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = source.with_name(f"{source.name}.{revision}.{stamp}.bak")
    with engine.connect() as connection:  # checkpoint so the copy holds the WAL content
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy2(source, target)
    logger.info("backed up %s to %s before migrating", source, target)
    return target


def require_current(engine: Engine) -> None:
    """Refuse to work on a database whose schema is not this version's head."""
    current = current_revision(engine)
    head = head_revision()
    if current != head:
        raise StoreError(
            f"database schema is at {current or 'nothing'}, expected {head}: "
            "run `bcs-notifier db upgrade`"
        )


def database_error(exc: BaseException) -> StoreError | None:
    """``exc`` as the StoreError a command reports when it is a SQLAlchemy error no store
    function mapped (else None): the driver's message only, never the statement or its
    parameters."""
    if not isinstance(exc, SQLAlchemyError):
        return None
    reason: BaseException = exc
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        reason = exc.orig
    return StoreError(f"database error: {error_line(reason)}")


@dataclass(frozen=True, slots=True)
class DatabaseAddress:
    """Where a database URL points (the parts ``notifier.systemd`` orders units by)."""

    backend: str  # "sqlite", "postgresql", "mysql", ...
    driver: str  # e.g. "postgresql+psycopg", "mysql+mariadbconnector"
    host: str | None
    #: ``?host=`` values (libpq: several hosts, or a unix-socket directory)
    query_hosts: tuple[str, ...]


def database_address(url: str) -> DatabaseAddress | None:
    """The parts of ``url``, or None when it is no database URL SQLAlchemy can read."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    query_host = parsed.query.get("host")
    hosts = (query_host,) if isinstance(query_host, str) else tuple(query_host or ())
    return DatabaseAddress(parsed.get_backend_name(), parsed.drivername, parsed.host, hosts)
