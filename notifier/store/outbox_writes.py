"""Recording delivery results in batches without weakening at-least-once.

The dispatcher notes every result (a target that succeeded, a row's new state) with
:meth:`ResultWriter.write` and goes on sending; a writer thread commits what was noted in
one transaction per batch: once :data:`BATCH` results wait or the oldest has waited
:data:`LINGER` seconds, whichever comes first. Commits overlap the next requests instead
of preceding each one, and they are few, so the writer rarely competes with the sender.

What this keeps:
- a result is committed within ``LINGER`` plus one commit's time of being noted, also
  while the next send hangs (the writer does not wait for the sender), so a crash re-sends
  only what was not recorded yet, with the same ``webhook-id``;
- at most :data:`MAX_PENDING` results wait: the sender waits for the writer beyond that;
- a batch whose connection the server dropped (``pg_terminate_backend``, a restart) is
  committed again on a fresh one, up to :data:`ATTEMPTS` times: its statements set the
  same values again, so a commit that went through before the drop changes nothing;
- :meth:`ResultWriter.flush` returns once every noted result is committed, and re-raises
  (as ``StoreError``) a commit that failed; after a failure nothing more is accepted, so
  the dispatch stops and the rows stay pending (retried later, never dropped).

Writes for one row keep their order (later values win). This is the only place that writes
a dispatch's results. With a claim ``token`` (store/claims.py) every statement matches it in
its ``WHERE``, and each batch first locks its rows and keeps only those the token still
claims: a row whose claim expired and was taken over by another instance records nothing
here, with one warning, and is listed in :attr:`ResultWriter.lost`. The claim stays on the
rows until the dispatch releases it (``Claims.release``), so a batch committed again still
matches it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from notifier.errors import StoreError
from notifier.store.claims import owned
from notifier.store.db import chunks
from notifier.store.schema import outbox

logger = logging.getLogger(__name__)

BATCH: Final = 50
LINGER: Final = 0.02  # seconds
MAX_PENDING: Final = 200
ATTEMPTS: Final = 3  # commits of one batch while the server drops the connection
#: Seconds :meth:`ResultWriter.close` waits for the writer thread to end.
CLOSE_TIMEOUT: Final = 60.0


def _statement(columns: tuple[str, ...], token: str | None) -> Any:
    values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in columns}
    statement = update(outbox).where(outbox.c.id == bindparam("row_id"))
    if token is not None:
        statement = statement.where(owned(token))
    return statement.values(**values)


class ResultWriter:
    """Commits outbox row updates from a writer thread, in batches. One per dispatch;
    ``token``: the dispatch's claim, which every write must still hold."""

    def __init__(self, engine: Engine, *, token: str | None = None) -> None:
        self.engine = engine
        self.token = token
        self._lost: set[int] = set()
        self._lock = threading.Condition()
        self._pending: dict[int, dict[str, Any]] = {}  # row id -> column values (merged)
        self._busy = False
        self._hurry = False  # flush() waits: commit without lingering
        self._closed = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0

    # -- the dispatcher's side --------------------------------------------------------------

    def write(self, row_id: int, values: Mapping[str, Any]) -> None:
        """Note new column values for a row; committed soon, in order with earlier ones."""
        with self._lock:
            self._raise_failed()
            while len(self._pending) >= MAX_PENDING and self._error is None:
                self._lock.wait()
            self._raise_failed()
            self._pending.setdefault(row_id, {}).update(values)
            self._start()
            if len(self._pending) in (1, BATCH):  # wake the writer only when it has work
                self._lock.notify_all()

    def flush(self) -> None:
        """Wait until every noted result is committed; raise ``StoreError`` if one failed."""
        with self._lock:
            self._hurry = True
            self._lock.notify_all()
            while (self._pending or self._busy) and self._error is None:
                self._lock.wait()
            self._hurry = False
            self._raise_failed()

    def close(self) -> None:
        """Commit what is noted, then stop the writer thread (errors are raised by flush)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(CLOSE_TIMEOUT)

    @property
    def lost(self) -> frozenset[int]:
        """Rows whose results were not recorded: their claim was no longer this token's."""
        with self._lock:
            return frozenset(self._lost)

    # -- the writer thread ------------------------------------------------------------------

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise StoreError(f"cannot record a delivery: {self._error}") from self._error

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="bcs-notifier-outbox-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if not self._pending:
                    return
                linger_until = time.monotonic() + LINGER
                while len(self._pending) < BATCH and not (self._hurry or self._closed):
                    remaining = linger_until - time.monotonic()
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
                batch, self._pending = self._pending, {}
                self._busy = True
                self._lock.notify_all()  # room for the sender again
            try:
                self._commit(batch)
            except SQLAlchemyError as exc:
                logger.debug("recording %d delivery results failed: %s", len(batch), exc)
                with self._lock:
                    self._error = exc
                    self._busy = False
                    self._lock.notify_all()
                return
            with self._lock:
                self._busy = False
                self.commits += 1
                self._lock.notify_all()

    def _commit(self, batch: Mapping[int, Mapping[str, Any]]) -> None:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._commit_once(batch)
                return
            except DBAPIError as exc:
                if not exc.connection_invalidated or attempt == ATTEMPTS:
                    raise
                logger.debug("recording delivery results: connection lost, again: %s", exc)

    def _commit_once(self, batch: Mapping[int, Mapping[str, Any]]) -> None:
        with self.engine.begin() as connection:
            lost = self._not_owned(connection, list(batch))
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row_id, values in batch.items():
                if row_id in lost:
                    continue
                columns = tuple(sorted(values))
                params = {f"v_{name}": value for name, value in values.items()}
                params["row_id"] = row_id
                groups.setdefault(columns, []).append(params)
            for columns, rows in groups.items():
                connection.execute(_statement(columns, self.token), rows)
        for row_id in sorted(lost):
            logger.warning(
                "delivery %d: its claim expired and another instance took it over; "
                "its result here is not recorded",
                row_id,
            )
        with self._lock:
            self._lost.update(lost)

    def _not_owned(self, connection: Connection, ids: list[int]) -> set[int]:
        """Of ``ids``, those this token no longer claims; the others stay locked (``FOR
        UPDATE``) until the batch commits, so no takeover slips in between."""
        if self.token is None:
            return set()
        held: set[int] = set()
        for chunk in chunks(ids):
            query = (
                select(outbox.c.id)
                .where(outbox.c.id.in_(chunk), owned(self.token))
                .with_for_update()
            )
            held.update(connection.scalars(query))
        return set(ids) - held
