"""One ``bcs-notifier run`` per database.

SQLite: an exclusive ``fcntl`` lock on ``<database>.lock`` next to the file; the kernel
drops it when the process dies, so a crash never leaves a stale lock. The file holds the
holder's pid for the error message. PostgreSQL: several ``run`` instances share the database
(leases, ``store/lease.py``); ``run`` takes no lock there, and a one-off command that must
not run beside the service (``poll``, ``outbox dispatch``) is refused while an instance is
alive in the ``instances`` table. MySQL/MariaDB: one instance, a session-level ``GET_LOCK``
named after the database (the lock is server-wide: another database on the same server is
another install), held on a dedicated connection for the life of the process. Other
databases: no enforcement (logged).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import AlreadyRunning, StoreError

logger = logging.getLogger(__name__)

LOCK_NAME: Final = "bcs-notifier run"


def lock_file_for(engine: Engine) -> Path | None:
    """``<database>.lock`` for a SQLite file, None for other databases and ``:memory:``."""
    if engine.url.get_backend_name() != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    path = Path(database).expanduser().resolve()
    return path.with_name(path.name + ".lock")


def advisory_key(name: str = LOCK_NAME) -> int:
    """A stable signed 64-bit key, part of the MySQL/MariaDB lock name."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class InstanceLock:
    """Held while the service runs; ``release()`` (or leaving the ``with``) frees it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.path = lock_file_for(engine)
        self._fd: int | None = None
        self._connection: Connection | None = None

    def acquire(self) -> InstanceLock:
        if self.path is not None:
            self._acquire_file(self.path)
        else:
            self._acquire_advisory()
        return self

    def _acquire_file(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise AlreadyRunning(
                f"another bcs-notifier run ({who}) is using {path.with_suffix('')}: "
                "stop it first (only one instance may poll and deliver per database)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def _acquire_advisory(self) -> None:
        backend = self.engine.url.get_backend_name()
        if backend == "postgresql":
            self._refuse_beside_instances()
            return
        statement = _ADVISORY.get(backend)
        if statement is None:
            logger.warning(
                "%s databases have no instance lock: make sure only one `run` uses it", backend
            )
            return
        try:
            connection = self.engine.connect()
            got = connection.execute(text(statement), {"key": advisory_key()}).scalar()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take the instance lock: {exc}") from exc
        if not got:
            connection.close()
            raise AlreadyRunning(
                f"another bcs-notifier run holds the instance lock on this {backend} database: "
                "stop it first (several instances on one database are supported on "
                "PostgreSQL only)"
            )
        connection.commit()
        self._connection = connection

    def _refuse_beside_instances(self) -> None:
        from notifier.store.lease import leadership

        view = leadership(self.engine)
        alive = view.alive() if view is not None else ()
        if alive:
            who = ", ".join(f"{item.hostname} pid {item.pid}" for item in alive)
            raise AlreadyRunning(
                f"bcs-notifier run is running on this database ({who}): stop it first"
            )

    def holder(self) -> int | None:
        """The pid of the running service holding a SQLite lock file, without locking."""
        if self.path is None:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            pid = _read_pid(fd)
        finally:
            os.close(fd)
        if pid is None:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a crashed run left its pid behind; the lock itself is gone
        except PermissionError:
            return pid  # alive, owned by the service user
        return pid

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.close()  # the session lock goes with the session
            self._connection = None

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


_ADVISORY: Final[dict[str, str]] = {
    # GET_LOCK is server-wide: the name carries the database (hashed: at most 64 characters)
    "mysql": "SELECT GET_LOCK(CONCAT('bcs-notifier-', SHA1(CONCAT(DATABASE(), :key))), 0)",
    "mariadb": "SELECT GET_LOCK(CONCAT('bcs-notifier-', SHA1(CONCAT(DATABASE(), :key))), 0)",
}


def _read_pid(fd: int) -> int | None:
    try:
        data: Any = os.pread(fd, 32, 0)
        return int(data.decode().strip() or "0") or None
    except (OSError, ValueError):
        return None
