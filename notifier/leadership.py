"""Which sources this ``run`` leads, when several instances share one PostgreSQL database.

:class:`LeaseKeeper` runs on the daemon's main thread every third of ``lease_ttl`` (or every
``active_poll_interval`` if that is shorter): it renews this instance's heartbeat and
leases, takes free (expired or released) leases up to its fair share ``ceil(sources /
live instances)`` and hands extra ones over (releases leases of idle sources above its
share while other instances run), so the sources spread over the instances and every
source has exactly one poller. An instance leading nothing is a standby.

Below its share, an instance also tries again the moment the first other lease runs out
(read from the database), so a takeover after a crash takes ``lease_ttl`` and a little.

A lease counts as held only until ``lease_ttl`` (minus a safety margin) after its last
successful renewal on this host's monotonic clock; the database's own expiry and the
fencing check of every poll transaction (``store/lease.py``) make that safe even when this
process was frozen. Database failures are logged once per kind and retried with backoff
(1 s doubling up to the renewal interval); the leases lapse by themselves meanwhile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from notifier.clock import SYSTEM_CLOCK, Clock
from notifier.config import Config
from notifier.errors import StoreError
from notifier.store.lease import Fence, Lease, LeaseStore, fair_share, preference

if TYPE_CHECKING:
    from notifier.store.db import Engine

logger = logging.getLogger(__name__)

#: A lease is used for new polls only up to this fraction of lease_ttl after its renewal.
SAFETY: float = 0.8
#: After a failed renewal (database down), try again this soon.
RETRY_AFTER: float = 1.0
#: A standby below its share tries again this long after another lease's expiry.
EXPIRY_MARGIN: float = 0.02


@dataclass
class _Held:
    lease: Lease
    renewed_at: float  # monotonic


@dataclass
class LeaseChanges:
    gained: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)


class LeaseKeeper:
    def __init__(
        self,
        store: LeaseStore,
        ttl: float,
        *,
        interval: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.interval = min(ttl / 3, interval) if interval else ttl / 3
        self._clock = clock
        self._held: dict[str, _Held] = {}
        self._error_kinds: set[str] = set()
        self.next_at = -math.inf
        self.failing = False
        self._failures = 0

    @property
    def holder(self) -> str:
        return self.store.holder

    def leads(self, source: str) -> bool:
        held = self._held.get(source)
        return held is not None and self._clock.monotonic() < held.renewed_at + self.ttl * SAFETY

    def led(self) -> list[str]:
        return sorted(name for name in self._held if self.leads(name))

    def fence(self, source: str) -> Fence | None:
        held = self._held.get(source)
        return None if held is None else self.store.fence(held.lease)

    def epoch(self, source: str) -> int | None:
        held = self._held.get(source)
        return None if held is None else held.lease.epoch

    def due(self) -> bool:
        return self._clock.monotonic() >= self.next_at

    def drop(self, source: str) -> None:
        """The lease was found lost (a poll's fencing check failed)."""
        self._held.pop(source, None)

    def maintain(self, sources: Sequence[str], busy: Collection[str] = ()) -> LeaseChanges:
        """Heartbeat, renew, take up to the fair share, hand extras over."""
        changes = LeaseChanges()
        now = self._clock.monotonic()
        self.next_at = now + self.interval
        before = set(self._held)
        try:
            self.store.heartbeat()
            live = self.store.live_instances()
            for name in list(self._held):
                if name not in sources:
                    self.store.release([name])
                    del self._held[name]
                    continue
                lease = self.store.acquire(name)
                if lease is None:
                    del self._held[name]
                    logger.warning(
                        "the lease of source %s was taken over by another instance", name
                    )
                else:
                    self._held[name] = _Held(lease, now)
            share = fair_share(len(sources), live)
            for name in preference(self.holder, sources):
                if len(self._held) >= share:
                    break
                if name in self._held:
                    continue
                lease = self.store.acquire(name)
                if lease is not None:
                    self._held[name] = _Held(lease, now)
            if len(self._held) < share:  # wake when the first other lease runs out
                self._wake_at_expiry(now, [name for name in sources if name not in self._held])
            if live > 1 and len(self._held) > share:
                extra = [name for name in sorted(self._held) if name not in busy]
                extra = extra[: len(self._held) - share]
                if extra:
                    self.store.release(extra)
                    for name in extra:
                        del self._held[name]
                    logger.info(
                        "handing over source(s) %s: %d instances share %d source(s)",
                        ", ".join(extra),
                        live,
                        len(sources),
                    )
        except StoreError as exc:
            self._failed(exc)
        else:
            if self.failing:
                logger.info("the database works again: leases renewed")
            self.failing = False
            self._failures = 0
            self._error_kinds.clear()
        for name in list(self._held):  # lapsed while the database could not be reached
            if not self.leads(name):
                del self._held[name]
        after = set(self.led())
        changes.gained = sorted(after - before)
        changes.lost = sorted(before - after)
        for name in changes.gained:
            held = self._held[name]
            logger.info("leading source %s (lease epoch %d)", name, held.lease.epoch)
        for name in changes.lost:
            logger.info("no longer leading source %s", name)
        return changes

    def _wake_at_expiry(self, now: float, sources: Sequence[str]) -> None:
        remaining = self.store.remaining(sources)
        if remaining:
            soonest = now + min(remaining.values()) / 1000 + EXPIRY_MARGIN
            self.next_at = min(self.next_at, max(now + 0.1, soonest))  # never a busy loop

    def release_all(self) -> None:
        """Stop: let every lease go at once, leave the instance list."""
        names = list(self._held)
        self._held.clear()
        try:
            if names:
                self.store.release(names)
                logger.info("released the lease(s) of %s", ", ".join(sorted(names)))
            self.store.unregister()
        except StoreError as exc:
            logger.warning("cannot release the leases (they expire by themselves): %s", exc)

    def _failed(self, exc: StoreError) -> None:
        self._failures += 1
        delay = min(self.interval, RETRY_AFTER * 2 ** min(self._failures - 1, 16))
        self.next_at = self._clock.monotonic() + delay
        self.failing = True
        kind = type(exc.__cause__ or exc).__name__
        if kind in self._error_kinds:
            logger.debug("renewing leases failed again: %s", exc)
            return
        self._error_kinds.add(kind)
        logger.error(
            "cannot renew leases (%s); retrying with backoff up to every %.0fs, the leases "
            "lapse meanwhile (logged once per kind of failure)",
            exc,
            self.interval,
        )


def keeper_for(config: Config, engine: Engine) -> LeaseKeeper | None:
    """A lease keeper on databases shared by several instances (PostgreSQL), else None."""
    from notifier.store.lease import MULTI_INSTANCE_BACKENDS, new_holder_id

    if engine.url.get_backend_name() not in MULTI_INSTANCE_BACKENDS:
        return None
    service = config.service
    store = LeaseStore(engine, new_holder_id(), service.lease_ttl)
    logger.info(
        "joining as instance %s: leases of %gs; polling only the sources this instance leads",
        store.holder,
        service.lease_ttl,
    )
    return LeaseKeeper(store, service.lease_ttl, interval=service.active_poll_interval)
