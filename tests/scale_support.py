"""Several real ``bcs-notifier run`` processes on one PostgreSQL database: start them, find
the leader of a source from the ``leases`` table, and tell their processes apart."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from e2e_support import Service
from net_support import WAIT
from sqlalchemy import Engine, select
from sqlalchemy.exc import ProgrammingError

from notifier.store import db
from notifier.store.lease import database_now_ms
from notifier.store.schema import leases, outbox

#: a short lease so takeovers happen within seconds
LEASE_TTL = 3


class Cluster:
    """``count`` services sharing one config (and so one database)."""

    def __init__(self, config: Path, directory: Path, count: int, url: str) -> None:
        self.services: list[Service] = []
        for index in range(count):
            logs = directory / f"instance{index}"
            logs.mkdir()
            self.services.append(Service(config, logs))
        self.engine: Engine = db.make_engine(url)

    def start(self) -> Cluster:
        for service in self.services:
            service.start()
        return self

    def alive(self) -> list[Service]:
        return [service for service in self.services if service.alive()]

    def lease(self, source: str) -> tuple[int, int] | None:
        """(pid of the holder, epoch) of the valid lease of ``source``, if any."""
        now = database_now_ms(self.engine.url.get_backend_name())
        try:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(leases.c.holder, leases.c.epoch).where(
                        leases.c.source == source, leases.c.expires_at > now
                    )
                ).first()
        except ProgrammingError:  # not migrated yet: the instances are still starting
            return None
        if row is None:
            return None
        return int(str(row.holder).split(":")[-2]), int(row.epoch)

    def wait_leader(
        self, source: str, *, not_pid: int | None = None, timeout: float = WAIT
    ) -> tuple[Service, int]:
        """The service leading ``source`` (another than ``not_pid``), and its epoch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = self.lease(source)
            if held is not None and held[0] != not_pid:
                for service in self.services:
                    if service.process is not None and service.process.pid == held[0]:
                        return service, held[1]
            time.sleep(0.05)
        raise AssertionError(f"no instance took the lease of {source} within {timeout}s")

    def wait_settled(self, timeout: float = WAIT) -> None:
        """Until every outbox row is recorded as sent (no send is in flight)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.engine.connect() as connection:
                open_rows = connection.execute(
                    select(outbox.c.id).where(outbox.c.state != "sent")
                ).first()
            if open_rows is None:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the outbox never settled")
            time.sleep(0.05)

    def stop_all(self) -> list[int]:
        """SIGTERM to every live instance at once; their exit codes."""
        import signal

        running = self.alive()
        for service in running:
            service.send(signal.SIGTERM)
        return [service.wait() for service in running]

    def logs(self) -> str:
        return "\n".join(
            service.stderr(run) for service in self.services for run in range(1, service.runs + 1)
        )

    def close(self) -> None:
        for service in self.services:
            service.kill()
        self.engine.dispose()


@contextmanager
def cluster(config: Path, directory: Path, count: int, url: str) -> Iterator[Cluster]:
    group = Cluster(config, directory, count, url)
    try:
        yield group
    finally:
        group.close()


def pid_of(service: Service) -> int:
    assert service.process is not None
    return service.process.pid


def settings(url: str, **extra: Any) -> dict[str, Any]:
    """Service settings for a cluster on ``url``."""
    return {"database": url, "lease_ttl": LEASE_TTL, **extra}


def unique(items: Sequence[Any]) -> bool:
    return len(set(items)) == len(items)
