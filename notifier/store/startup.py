"""Opening the store at ``run``'s start: lock (single-instance databases), migrate, and wait
for a database that cannot be reached instead of exiting.

While the database is down, ``open_store`` retries with backoff (1 s doubling up to
``STORE_RETRY_MAX``), logs each kind of failure once, keeps systemd's start timeout
extended and stops waiting on SIGTERM/SIGINT; a broken schema or another running instance
(``AlreadyRunning``) is raised at once. ``is_outage`` tells a connection failure from a bug
for the daemon's logging (one line instead of a traceback).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any, Final, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from notifier.errors import AlreadyRunning, StoreError, error_line
from notifier.store import db
from notifier.store.claims import Claims
from notifier.store.lease import MULTI_INSTANCE_BACKENDS

logger = logging.getLogger(__name__)

#: Waiting for the database at start: 1 s doubling up to this, until it answers or SIGTERM.
STORE_RETRY_MAX: Final = 30.0


class StoppedWaiting(StoreError):
    """SIGTERM/SIGINT arrived while waiting for the database: a clean stop."""


class Notifier(Protocol):
    def status(self, text: str) -> bool: ...
    def notify(self, *lines: str) -> bool: ...


def open_store(engine: Engine, lock: Any, notifier: Notifier) -> str:
    """Lock (single-instance databases) and migrate; returns the revision."""
    multi = engine.url.get_backend_name() in MULTI_INSTANCE_BACKENDS
    stop = threading.Event()
    kinds: set[str] = set()
    delay = 1.0

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                if not multi:
                    lock.acquire()
                notifier.status("migrating the database")
                revision = db.upgrade(engine)
                if not multi:  # the only instance: a crashed run's claims are void
                    Claims(engine, 1.0).clear_all()
                if kinds:
                    logger.info("the database answers again")
                return revision
            except AlreadyRunning:
                raise
            except StoreError as exc:
                if not is_outage(exc):
                    raise
                lock.release()
                kind = type(exc.__cause__ or exc).__name__
                if kind not in kinds:
                    kinds.add(kind)
                    logger.error(
                        "cannot reach the database (%s); retrying with backoff up to %.0fs "
                        "(logged once per kind of failure)",
                        error_line(exc),
                        STORE_RETRY_MAX,
                    )
                notifier.notify(
                    "STATUS=waiting for the database",
                    f"EXTEND_TIMEOUT_USEC={int((delay + 30) * 1e6)}",
                )
                if stop.wait(delay):
                    raise StoppedWaiting("stopped while waiting for the database") from exc
                delay = min(STORE_RETRY_MAX, delay * 2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def is_outage(exc: BaseException) -> bool:
    """A store error caused by a connection failure (server down, restarting, refused,
    the session terminated), not by a broken schema or a bug."""
    if not isinstance(exc, StoreError):
        return False
    cause = exc.__cause__
    if isinstance(cause, OperationalError):
        return True
    return isinstance(cause, DBAPIError) and bool(cause.connection_invalidated)
