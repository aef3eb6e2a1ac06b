"""Per-source leases with fencing, for several ``run`` instances on one PostgreSQL database.

One ``leases`` row per source: (holder, epoch, expires_at). :meth:`LeaseStore.acquire` takes
or renews it in ONE statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` the row is
ours or expired ``RETURNING`` the epoch), so two instances can never both win: PostgreSQL
locks the row and re-checks the condition against the winner's version. A takeover (another
holder, or our own lease after it expired) bumps ``epoch``: the fencing token.

A poll writes its cycle in one transaction whose LAST statement is :meth:`Fence.check`: an
``UPDATE`` of the lease row that matches only while it still has this holder and epoch and
has not expired. It locks the row until the commit, so a takeover waits for the commit and
a lost lease rolls the whole cycle back (:class:`~notifier.errors.LeaseLost`): an instance
that was frozen (SIGSTOP) or cut off writes nothing stale after it resumes.

Times are the DATABASE's clock in milliseconds (``statement_timestamp()``, SQLite's
``julianday('now')``), never the instances' own, so clock skew between hosts does not
matter. Releasing a lease sets its expiry to now and keeps the row, so epochs only grow.

``instances``: every running service, with a heartbeat renewed together with the leases;
``status`` and ``/healthz`` show them, and the number alive decides each one's share.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    and_,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import LeaseLost, StoreError, error_line
from notifier.store.schema import instances, leases

logger = logging.getLogger(__name__)

#: Databases where several instances may share the store (leases, claims, standby).
MULTI_INSTANCE_BACKENDS: Final = frozenset({"postgresql"})
#: Instance rows that stopped heartbeating are dropped this many lease_ttl later.
INSTANCE_RETENTION_TTLS: Final = 20


def new_holder_id() -> str:
    """Unique per process: host, pid and a random part (a pid can be reused)."""
    host = socket.gethostname()[:80] or "localhost"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def database_now_ms(backend: str) -> ColumnElement[int]:
    """The database's clock in integer milliseconds since the epoch (UTC)."""
    if backend == "postgresql":
        return cast(
            func.floor(func.extract("epoch", func.statement_timestamp()) * 1000), BigInteger
        )
    if backend == "sqlite":
        return cast((func.julianday(literal_column("'now'")) - 2440587.5) * 86400000.0, BigInteger)
    raise StoreError(f"leases are not supported on {backend} databases")


@dataclass(frozen=True)
class Lease:
    source: str
    holder: str
    epoch: int
    acquired_at: int
    expires_at: int


@dataclass(frozen=True)
class Instance:
    id: str
    hostname: str
    pid: int
    started_at: int
    heartbeat_at: int
    expires_at: int


@dataclass(frozen=True)
class Fence:
    """What a poll's transaction checks last: the lease of ``source`` still held by
    ``holder`` at ``epoch``, not expired."""

    source: str
    holder: str
    epoch: int

    def check(self, connection: Connection) -> None:
        """Raise LeaseLost (the caller's transaction then rolls back) unless still held."""
        now = database_now_ms(connection.engine.url.get_backend_name())
        result = connection.execute(
            update(leases)
            .where(
                leases.c.source == self.source,
                leases.c.holder == self.holder,
                leases.c.epoch == self.epoch,
                leases.c.expires_at > now,
            )
            .values(epoch=leases.c.epoch)
        )
        if result.rowcount != 1:
            raise LeaseLost(
                f"the lease of source {self.source} (epoch {self.epoch}) was lost: "
                "this poll's writes were rolled back"
            )


class LeaseStore:
    """The SQL of leases and instances for one holder. Every method is one short
    transaction; SQLAlchemy errors become StoreError."""

    def __init__(self, engine: Engine, holder: str, ttl: float) -> None:
        self.engine = engine
        self.holder = holder
        self.ttl_ms = max(1, int(ttl * 1000))
        self.backend = engine.url.get_backend_name()
        self._now = database_now_ms(self.backend)

    # -- leases ---------------------------------------------------------------------------

    def acquire(self, source: str) -> Lease | None:
        """Take or renew the lease of ``source`` (one atomic statement); None while another
        holder's lease is still valid."""
        now = self._now
        statement = _upsert(self.backend).values(
            source=source,
            holder=self.holder,
            epoch=1,
            acquired_at=now,
            expires_at=now + self.ttl_ms,
        )
        still_ours = and_(leases.c.holder == self.holder, leases.c.expires_at > now)
        statement = statement.on_conflict_do_update(
            index_elements=[leases.c.source],
            set_={
                "holder": self.holder,
                "epoch": case((still_ours, leases.c.epoch), else_=leases.c.epoch + 1),
                "acquired_at": case((still_ours, leases.c.acquired_at), else_=now),
                "expires_at": now + self.ttl_ms,
            },
            where=or_(leases.c.holder == self.holder, leases.c.expires_at <= now),
        ).returning(leases.c.epoch, leases.c.acquired_at, leases.c.expires_at)
        try:
            with self.engine.begin() as connection:
                row = connection.execute(statement).first()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot take the lease of {source}: {error_line(exc, 300)}") from exc
        if row is None:
            return None
        return Lease(source, self.holder, int(row.epoch), int(row.acquired_at), int(row.expires_at))

    def release(self, sources: Iterable[str]) -> int:
        """Let the leases go at once (expiry = now); the rows and epochs stay."""
        names = list(sources)
        if not names:
            return 0
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(leases)
                    .where(leases.c.source.in_(names), leases.c.holder == self.holder)
                    .values(expires_at=self._now)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot release leases: {error_line(exc, 300)}") from exc
        return int(result.rowcount or 0)

    def remaining(self, sources: Iterable[str]) -> dict[str, int]:
        """Milliseconds until each other holder's lease of ``sources`` expires (the
        database's clock), so a standby can try again the moment one runs out."""
        names = list(sources)
        if not names:
            return {}
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    select(leases.c.source, (leases.c.expires_at - self._now).label("left")).where(
                        leases.c.source.in_(names), leases.c.holder != self.holder
                    )
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the leases: {error_line(exc, 300)}") from exc
        return {str(row.source): max(0, int(row.left)) for row in rows}

    def fence(self, lease: Lease) -> Fence:
        return Fence(lease.source, lease.holder, lease.epoch)

    # -- instances ------------------------------------------------------------------------

    def heartbeat(self, *, hostname: str | None = None, pid: int | None = None) -> None:
        """Register this instance or renew its row; drop rows long dead."""
        now = self._now
        values: dict[str, Any] = {"heartbeat_at": now, "expires_at": now + self.ttl_ms}
        retention = self.ttl_ms * INSTANCE_RETENTION_TTLS
        try:
            with self.engine.begin() as connection:
                result = connection.execute(
                    update(instances).where(instances.c.id == self.holder).values(**values)
                )
                if result.rowcount == 0:
                    connection.execute(
                        insert(instances).values(
                            id=self.holder,
                            hostname=(hostname or socket.gethostname())[:255],
                            pid=pid if pid is not None else os.getpid(),
                            started_at=now,
                            **values,
                        )
                    )
                connection.execute(
                    delete(instances).where(instances.c.expires_at < now - retention)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record this instance: {error_line(exc, 300)}") from exc

    def unregister(self) -> None:
        try:
            with self.engine.begin() as connection:
                connection.execute(delete(instances).where(instances.c.id == self.holder))
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot unregister this instance: {error_line(exc, 300)}") from exc

    def live_instances(self) -> int:
        try:
            with self.engine.connect() as connection:
                count = connection.execute(
                    select(func.count())
                    .select_from(instances)
                    .where(instances.c.expires_at > self._now)
                ).scalar_one()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot count the instances: {error_line(exc, 300)}") from exc
        return max(1, int(count))


@dataclass(frozen=True)
class Leadership:
    """Who runs and who leads what, as ``status`` and ``/healthz`` show it."""

    now_ms: int
    instances: tuple[Instance, ...]
    leases: tuple[Lease, ...]

    def alive(self) -> tuple[Instance, ...]:
        return tuple(item for item in self.instances if item.expires_at > self.now_ms)

    def led_by(self, holder: str) -> tuple[Lease, ...]:
        return tuple(
            lease
            for lease in self.leases
            if lease.holder == holder and lease.expires_at > self.now_ms
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "instances": [
                {
                    "id": item.id,
                    "hostname": item.hostname,
                    "pid": item.pid,
                    "alive": item.expires_at > self.now_ms,
                    "started_at_ms": item.started_at,
                    "heartbeat_at_ms": item.heartbeat_at,
                    "leads": [
                        {
                            "source": lease.source,
                            "epoch": lease.epoch,
                            "expires_in_seconds": round((lease.expires_at - self.now_ms) / 1000, 1),
                        }
                        for lease in self.led_by(item.id)
                    ],
                }
                for item in self.instances
            ],
            "leases": [
                {
                    "source": lease.source,
                    "holder": lease.holder,
                    "epoch": lease.epoch,
                    "valid": lease.expires_at > self.now_ms,
                    "expires_at_ms": lease.expires_at,
                }
                for lease in self.leases
            ],
        }


def leadership(engine: Engine) -> Leadership | None:
    """Every instance and lease recorded in the database (None on a database without
    multi-instance support, or one not migrated yet)."""
    backend = engine.url.get_backend_name()
    if backend not in MULTI_INSTANCE_BACKENDS and backend != "sqlite":
        return None
    try:
        with engine.connect() as connection:
            now = int(connection.execute(select(database_now_ms(backend))).scalar_one())
            instance_rows = connection.execute(
                select(instances).order_by(instances.c.started_at, instances.c.id)
            ).all()
            lease_rows = connection.execute(select(leases).order_by(leases.c.source)).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the instances: {error_line(exc, 300)}") from exc
    return Leadership(
        now,
        tuple(
            Instance(r.id, r.hostname, r.pid, r.started_at, r.heartbeat_at, r.expires_at)
            for r in instance_rows
        ),
        tuple(Lease(r.source, r.holder, r.epoch, r.acquired_at, r.expires_at) for r in lease_rows),
    )


def fair_share(sources: int, instances: int) -> int:
    """How many sources one of ``instances`` live instances should lead."""
    return math.ceil(sources / max(1, instances))


def preference(holder: str, sources: Sequence[str]) -> list[str]:
    """The order in which ``holder`` tries to take free sources: different per instance,
    so instances starting together spread over the sources instead of racing."""
    import hashlib

    return sorted(sources, key=lambda name: hashlib.sha256(f"{holder}\0{name}".encode()).digest())


def _upsert(backend: str) -> Any:
    if backend == "postgresql":
        return postgresql.insert(leases)
    if backend == "sqlite":
        return sqlite.insert(leases)
    raise StoreError(f"leases are not supported on {backend} databases")
