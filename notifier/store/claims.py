"""Claimed deliveries: any instance may dispatch, no row is sent by two at once.

A dispatch claims its due outbox rows in one short transaction: the due rows are selected
``FOR UPDATE SKIP LOCKED`` (another instance's concurrent claim skips them instead of
waiting), then every pending row of the same (channel, operation) is claimed with them so
messages still coalesce, each with the dispatch's ``claim_token`` and a ``claim_expires_at``.
A row already claimed by a live claim is not due for anyone else; an expired claim (its
dispatcher crashed or froze) is taken over. While it sends, the dispatcher extends its
claim (:meth:`Claims.hold`) before every request once a third of the claim's time has
passed, and stops when the claim is no longer its own; every write of a row's result
matches the token, so only the claim's owner marks a row sent. The claim stays on the rows
until the dispatch has committed its results and releases it at its end.

The claim's clock is the dispatcher's (the same as ``next_attempt_at``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, and_, exists, or_, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import StoreError, error_line
from notifier.store.db import chunks
from notifier.store.schema import event_groups, outbox

#: A claim lasts at least this long, and ``CLAIM_TTL_LEASES`` x ``lease_ttl``.
CLAIM_TTL_MIN: Final = 10.0
CLAIM_TTL_LEASES: Final = 4


class ClaimLost(StoreError):
    """This dispatch's claim expired and may have been taken over: it stops sending."""


def claim_ttl(lease_ttl: float) -> float:
    return max(CLAIM_TTL_MIN, CLAIM_TTL_LEASES * lease_ttl)


def new_token() -> str:
    return uuid.uuid4().hex


def unclaimed(now_ms: int) -> Any:
    """Rows free to claim: never claimed, released, or the claim expired."""
    return or_(outbox.c.claim_token.is_(None), outbox.c.claim_expires_at <= now_ms)


class Claims:
    """The claim SQL of one dispatcher; ``ttl`` in seconds."""

    def __init__(self, engine: Engine, ttl: float) -> None:
        self.engine = engine
        self.ttl_ms = max(1, int(ttl * 1000))

    def claim_due(
        self, token: str, channels: Sequence[str], now_ms: int, batch: int
    ) -> list[tuple[str, str, str]]:
        """Claim up to ``batch`` due rows and their operations' other pending rows; the
        (channel, source, operation_id) keys claimed, oldest due first."""
        other = outbox.alias("other")
        other_group = event_groups.alias("other_group")
        foreign_claim = exists(
            select(other.c.id)
            .join(other_group, other_group.c.id == other.c.group_id)
            .where(
                other.c.state == "pending",
                other.c.channel == outbox.c.channel,
                other_group.c.source == event_groups.c.source,
                other_group.c.operation_id == event_groups.c.operation_id,
                other.c.claim_token.is_not(None),
                other.c.claim_expires_at > now_ms,
            )
        )
        due = (
            select(
                outbox.c.id, outbox.c.channel, event_groups.c.source, event_groups.c.operation_id
            )
            .join(event_groups, event_groups.c.id == outbox.c.group_id)
            .where(
                outbox.c.state == "pending",
                outbox.c.next_attempt_at <= now_ms,
                outbox.c.channel.in_(list(channels)),
                unclaimed(now_ms),
                ~foreign_claim,  # another instance is sending this operation: keep the order
            )
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(batch)
        )
        due = self._skip_locked(due)
        try:
            with self.engine.begin() as connection:
                found = connection.execute(due).all()
                keys = list(dict.fromkeys((r.channel, r.source, r.operation_id) for r in found))
                if not keys:
                    return []
                self._claim_rows(connection, token, [r.id for r in found], now_ms)
                for chunk in chunks(keys, 300):
                    self._claim_siblings(connection, token, chunk, now_ms)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot claim outbox rows: {error_line(exc, 300)}") from exc
        return keys

    def _claim_rows(self, connection: Connection, token: str, ids: list[int], now_ms: int) -> None:
        for chunk in chunks(ids):
            connection.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(chunk)), unclaimed(now_ms))
                .values(claim_token=token, claim_expires_at=now_ms + self.ttl_ms)
            )

    def _claim_siblings(
        self, connection: Connection, token: str, keys: Sequence[tuple[str, str, str]], now_ms: int
    ) -> None:
        siblings = (
            select(outbox.c.id)
            .join(event_groups, event_groups.c.id == outbox.c.group_id)
            .where(
                outbox.c.state == "pending",
                unclaimed(now_ms),
                tuple_(outbox.c.channel, event_groups.c.source, event_groups.c.operation_id).in_(
                    list(keys)
                ),
            )
        )
        ids = list(connection.scalars(self._skip_locked(siblings)))
        self._claim_rows(connection, token, ids, now_ms)

    def _skip_locked(self, query: Any) -> Any:
        """``FOR UPDATE OF outbox SKIP LOCKED`` where several instances dispatch
        (PostgreSQL); SQLite serialises writers anyway, and the single-instance MySQL/MariaDB
        install keeps working on versions without SKIP LOCKED."""
        if self.engine.url.get_backend_name() != "postgresql":
            return query
        return query.with_for_update(of=outbox, skip_locked=True)

    def hold(self, token: str, now_ms: int) -> int:
        """Extend the claim of every row this token still holds; raise ClaimLost when it
        holds none of them any more (they expired, someone took them over)."""
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(outbox)
                    .where(outbox.c.claim_token == token, outbox.c.claim_expires_at > now_ms)
                    .values(claim_expires_at=now_ms + self.ttl_ms)
                )
                held = int(result.rowcount or 0)
                expired = connection.execute(
                    select(outbox.c.id).where(
                        outbox.c.claim_token == token, outbox.c.claim_expires_at <= now_ms
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot extend the outbox claim: {error_line(exc, 300)}") from exc
        if expired is not None or held == 0:
            raise ClaimLost(
                "this dispatch's claim on its outbox rows expired; another instance may "
                "deliver them: stopping this dispatch"
            )
        return held

    def release(self, token: str) -> int:
        """Drop whatever this token still claims (the rows stay as they are)."""
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(outbox)
                    .where(outbox.c.claim_token == token)
                    .values(claim_token=None, claim_expires_at=None)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot release the outbox claim: {error_line(exc, 300)}") from exc
        return int(result.rowcount or 0)

    def clear_all(self) -> int:
        """Forget every claim: only for a single-instance store at start (a crashed run's
        claims would otherwise hold its rows back until they expire)."""
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(outbox)
                    .where(outbox.c.claim_token.is_not(None))
                    .values(claim_token=None, claim_expires_at=None)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot clear outbox claims: {error_line(exc, 300)}") from exc
        return int(result.rowcount or 0)


def owned(token: str) -> Any:
    """The WHERE clause of every write of a claimed row's result."""
    return and_(outbox.c.claim_token == token)
