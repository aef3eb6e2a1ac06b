"""The transactional outbox's consumer: send due deliveries, retry, dead-letter.

An ``outbox`` row is one (event group, channel) delivery, written in the same transaction
as the events, with the ids of the events routed to its channel then (``event_ids``:
routing is decided once, by the planner; the dispatcher never routes a row again, except
one written before migration 0007, whose ids are NULL: it is routed through the channel's
filters when dispatched, as before). :class:`Dispatcher` picks due rows, renders them
for each URL ("target") of the channel and records every target that succeeded in
``done_targets`` right after it did, so a retry (even after a crash) never re-sends to a
target that already has it:

- chat/email targets get one message per operation, key ``"u<hash of the URL>"``; all
  pending rows of the same (channel, operation) are coalesced into that one message, in
  order;
- webhook targets get one CloudEvent per event, key ``"u<hash of the URL>:<event id>"``.

Keys derive from the URL, not its position, so editing a channel's ``urls`` never makes a
row look delivered to a URL that does not have it (rows written with the older positional
keys are read as before: see :meth:`Target.done`).

One row failing never stops the others: a template that raises for some data falls back to
the default message; any other error while rendering or sending one operation's delivery
is a failed attempt of those rows (one-line ``last_error``, backoff, dead in the end).

Rows of a channel that is not configured (renamed or removed, e.g. by a reload) are left
alone: still pending, not attempted, never dead-lettered by attempts; a warning names the
channel. ``outbox reassign OLD NEW`` hands them to another channel, ``outbox purge
--unconfigured`` deletes them.

A row whose targets all succeeded becomes ``sent``. Otherwise it is retried with
exponential backoff and jitter (``[delivery]`` settings, persisted in ``next_attempt_at``)
until ``max_attempts`` or ``max_age``, then it is ``dead`` and stays visible
(``outbox list``) until ``outbox retry`` or ``outbox purge``.

Recording: every success and every row's new state go to a
:class:`~notifier.store.outbox_writes.ResultWriter`, which commits them in batches from a
writer thread while the next request is on the wire; a crash re-sends only what was not
recorded yet (with the same ``webhook-id``), and each dispatch ends with all of it committed.

Stopping: :meth:`Dispatcher.stop_within` makes a running dispatch stop taking rows when the
time is up and bounds each send by what is left of it; a send cut short by the stop is not
a failed attempt: its rows stay due as they were, for the next start.

Claims (``store/claims.py``): any instance may dispatch; a dispatch claims its due rows
(``FOR UPDATE SKIP LOCKED``, a claim token and expiry), extends the claim while it sends,
writes a row's result only while the claim is still its own (the ResultWriter's statements
match the claim token; a taken-over row records nothing, with a warning) and releases the
claim at its end, once they are committed, so two instances never send the same row;
after a crash, only what was not recorded yet is repeated (same webhook-id) once the claim
expired.

Pacing: a service's own rate (apprise's ``request_rate_per_sec``, e.g. Slack's 1.2 s) is
kept between two sends to the same target; a dispatch waits at most ``pacing_budget``
seconds in total and defers the rest (no attempt counted), so a backlog never bursts.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from notifier import routing
from notifier.channels.render import Templates
from notifier.channels.targets import SendResult, Target, UnloadableURL, build_targets
from notifier.clock import SYSTEM_CLOCK, Clock
from notifier.config import ChannelConfig, Config
from notifier.errors import StoreError, error_line
from notifier.outbox.delivery import Delivery
from notifier.outbox.rows import DispatchStats, Row
from notifier.outbox.state import UNCHANGED, Attempt, next_state
from notifier.store.claims import Claims, claim_ttl, new_token
from notifier.store.outbox_queries import (
    PENDING,
    STORE_ERRORS,
    load_claimed,
    store_errors,
    unconfigured_counts,
    write_now,
)
from notifier.store.outbox_writes import ResultWriter

if TYPE_CHECKING:  # only a type: every statement is in notifier/store/outbox_queries.py
    from notifier.store.db import Engine

logger = logging.getLogger("notifier.outbox")  # the log lines keep the module's old name

#: How often the dispatcher repeats its warning about rows waiting for a channel that is
#: not configured (the first dispatch after a start or reload always warns).
UNCONFIGURED_REMINDER: Final = 900.0


class Dispatcher(Delivery):
    """Sends due outbox rows. One instance per process; not thread-safe."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        pacing_budget: float = 5.0,
        targets: Mapping[str, Sequence[Target]] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.clock = clock
        self.sleep = sleep
        self.rand = rand
        self.pacing_budget = pacing_budget
        self._channels: dict[str, ChannelConfig] = {c.name: c for c in config.channels}
        self._targets: dict[str, list[Target]] = {k: list(v) for k, v in (targets or {}).items()}
        self._target_errors: dict[str, str] = {}
        self._templates: dict[str, Templates] = {}
        self._last_send: dict[str, float] = {}
        self._unsaved: dict[int, Row] = {}
        self._waited = 0.0
        self._warned_unconfigured: dict[str, float] = {}
        self._reported: set[tuple[str, str]] = set()
        self._writer: ResultWriter | None = None
        self._counted: dict[int, tuple[str, str]] = {}  # row id -> (channel, state) counted
        self._stop_at: float | None = None  # monotonic time; set by stop_within()
        self._claims = Claims(engine, claim_ttl(config.service.lease_ttl))
        self._token = new_token()
        self._held_at = 0.0

    # -- public API ---------------------------------------------------------------------------

    def dispatch_due(self, limit: int | None = None) -> DispatchStats:
        """Send every due delivery (at most ``limit`` rows, default ``batch_size``)."""
        stats = DispatchStats()
        self._waited = 0.0
        now_ms = self._now_ms()
        batch = limit if limit is not None else self.config.delivery.batch_size
        self._token, self._held_at = new_token(), self.clock.monotonic()
        try:
            with store_errors("cannot read the outbox"):
                bundles = self._load_bundles(now_ms, batch)
                self._warn_unconfigured()
            self._writer = ResultWriter(self.engine, token=self._token)
            try:
                for channel_name, rows in bundles:
                    if self._out_of_time():
                        break  # stopping: the rest stays due
                    self._dispatch_bundle(channel_name, rows, stats)
                self._writer.flush()
            finally:
                self._writer.close()
                self._uncount(self._writer.lost, stats)
                self._writer = None
                self.close()  # connections live for one dispatch (keep-alive within its batch)
        finally:
            self._release_claim()  # after the writer: its statements match the claim
        if stats.handled:
            logger.info(
                "dispatched: %d sent, %d retrying, %d dead, %d deferred",
                stats.sent,
                stats.failed,
                stats.dead,
                stats.deferred,
            )
        return stats

    def stop_within(self, seconds: float) -> None:
        """Stop: no send starts after ``seconds`` from now and none lasts beyond that.
        Safe to call from another thread while a dispatch runs (the service's stop)."""
        self._stop_at = self.clock.monotonic() + max(0.0, seconds)

    def close(self) -> None:
        """Close the targets' connections (they reopen on the next send)."""
        for targets in self._targets.values():
            for target in targets:
                target.close()

    def _out_of_time(self) -> bool:
        return self._stop_at is not None and self.clock.monotonic() >= self._stop_at

    def _warn_unconfigured(self) -> None:
        """One warning per channel that is not configured but has pending rows (repeated
        every ``UNCONFIGURED_REMINDER`` seconds while they wait), never one per row."""
        waiting = unconfigured_counts(self.engine, self._channels, states=(PENDING,))
        now = self.clock.monotonic()
        for name, count in sorted(waiting.items()):
            last = self._warned_unconfigured.get(name)
            if last is not None and now - last < UNCONFIGURED_REMINDER:
                continue
            self._warned_unconfigured[name] = now
            logger.warning(
                "%d deliver%s wait for channel %r, which is not configured: they stay pending "
                "(`outbox reassign %s NEW` hands them to another channel, `outbox purge "
                "--unconfigured` deletes them)",
                count,
                "y" if count == 1 else "ies",
                name,
                name,
            )
        for name in set(self._warned_unconfigured) - set(waiting):
            del self._warned_unconfigured[name]

    def targets(self, channel: ChannelConfig) -> list[Target]:
        """The channel's targets, built once (plugin instances and pacing persist)."""
        if channel.name not in self._targets:
            self._targets[channel.name] = build_targets(channel, self.config.delivery)
        return self._targets[channel.name]

    # -- loading ------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return self.clock.wall_ms()

    def _load_bundles(self, now_ms: int, batch: int) -> list[tuple[str, list[Row]]]:
        """Due rows grouped per (channel, source, operation), each group with every pending
        row of that operation (older ones first) so messages coalesce and keep their order."""
        keys = self._claims.claim_due(self._token, list(self._channels), now_ms, batch)
        return load_claimed(self.engine, self._token, keys, Row)

    # -- sending ------------------------------------------------------------------------------

    def _dispatch_bundle(self, channel_name: str, rows: list[Row], stats: DispatchStats) -> None:
        channel = self._channels.get(channel_name)
        if channel is None:  # the due query only picks configured channels
            return
        for row in rows:
            if row.broken:
                row.errors.append(row.broken)
                row.attempted = True
                row.permanent = row.broken
        usable = [row for row in rows if not row.broken]
        try:
            targets = self.targets(channel)
        except UnloadableURL as exc:  # config changed under us; retry later like a send failure
            for row in usable:
                row.errors.append(str(exc))
                row.attempted = True
            self._finish(rows, stats, channel_name)
            return
        usable = [row for row in usable if self._route_legacy(channel, row)]
        for target in targets:
            try:
                self._send(channel, target, usable, stats)
            except STORE_ERRORS:
                raise  # the store failed: the whole dispatch stops, the daemon backs off
            except Exception as exc:  # one operation's delivery fails alone
                self._report(channel.name, "sending", exc)
                error = f"{target.safe_url}: internal error: {error_line(exc, 500)}"
                for row in usable:
                    if not self._target_done(target, row):
                        row.errors.append(error)
                        row.attempted = True
        self._finish(rows, stats, channel_name)

    def _route_legacy(self, channel: ChannelConfig, row: Row) -> bool:
        """A row's events were routed when it was written (``outbox.event_ids``); a row
        older than that (revision 0007) is routed here, through the channel's filters as
        configured now, as before. False when routing it failed (the row fails alone)."""
        if row.routed:
            return True
        try:
            row.events = routing.matching_events(channel, row.events)
        except Exception as exc:  # a bad row fails alone
            self._report(channel.name, "routing", exc)
            row.errors.append(f"internal error while routing: {error_line(exc, 500)}")
            row.attempted = True
            return False
        row.routed = True
        return True

    def _report(self, channel: str, stage: str, exc: BaseException) -> None:
        """Log an unexpected error with its traceback once per (channel, kind) for the
        life of this dispatcher, then as one line."""
        kind = (channel, f"{stage}:{type(exc).__name__}")
        if kind in self._reported:
            logger.warning("channel %s: %s failed: %s", channel, stage, error_line(exc, 500))
            return
        self._reported.add(kind)
        logger.error(
            "channel %s: %s failed unexpectedly (the delivery is retried with backoff)",
            channel,
            stage,
            exc_info=exc,
        )

    def _pace(self, target: Target) -> bool:
        """Wait for the target's pacing; False when the wait would exceed the budget."""
        if target.interval <= 0:
            return True
        last = self._last_send.get(target.pacing_key)
        if last is None:
            return True
        wait = last + target.interval - self.clock.monotonic()
        if wait <= 0:
            return True
        if self._waited + wait > self.pacing_budget:
            return False
        if self._stop_at is not None and self.clock.monotonic() + wait >= self._stop_at:
            return False  # stopping: the wait would outlast the grace
        self._waited += wait
        self.sleep(wait)
        return True

    def _defer(self, rows: Iterable[Row], target: Target) -> None:
        now = self.clock.monotonic()
        last = self._last_send.get(target.pacing_key, now)
        until = self._now_ms() + int((last + target.interval - now) * 1000) + 1
        for row in rows:
            row.deferred_until = max(row.deferred_until or 0, until)

    def _deliver(self, target: Target, rows: Sequence[Row], **message: Any) -> SendResult:
        """One send, bounded by what is left of a stop; a send the stop cut short leaves
        ``rows`` as they were (``interrupted``): not an attempt, due again at the next start."""
        self._hold_claim()
        timeout = target.timeout
        if self._stop_at is not None:
            timeout = min(timeout, self._stop_at - self.clock.monotonic())
        result = target.send(**message, timeout=timeout)
        self._last_send[target.pacing_key] = self.clock.monotonic()
        if not result.ok and self._out_of_time():
            for row in rows:
                row.interrupted = True
        return result

    # -- recording ----------------------------------------------------------------------------

    def _mark_done(self, rows: Sequence[Row], keys: Sequence[str]) -> None:
        """Note a success; the writer commits it while the next request is on the wire, so
        a crash re-sends only results not recorded yet (at-least-once, same ids)."""
        now_ms = self._now_ms()
        for row, key in zip(rows, keys, strict=True):
            if key not in row.done:
                row.done.append(key)
            self._unsaved[row.id] = row
            self._write(row.id, {"done_targets": json.dumps(row.done), "updated_at": now_ms})

    def _write(self, row_id: int, values: Mapping[str, Any]) -> None:
        if self._writer is not None:
            self._writer.write(row_id, values)
            return
        # outside dispatch_due (tests driving one bundle): commit at once
        write_now(self.engine, self._token, row_id, dict(values))

    def _hold_claim(self) -> None:
        """Before a request: extend the claim once a third of its time has passed; stop
        (ClaimLost) when it is no longer this dispatch's."""
        now = self.clock.monotonic()
        if (now - self._held_at) * 1000 < self._claims.ttl_ms / 3:
            return
        self._claims.hold(self._token, self._now_ms())
        self._held_at = now

    def _uncount(self, lost: Collection[int], stats: DispatchStats) -> None:
        """Rows whose results the writer did not record (their claim was taken over) are
        not counted as handled here: the instance that took them over counts them."""
        for row_id in lost:
            counted = self._counted.pop(row_id, None)
            if counted is not None:
                stats.count(*counted, by=-1)
        self._counted.clear()

    def _release_claim(self) -> None:
        """End of a dispatch (its results are committed): drop the claim on what is left."""
        try:
            self._claims.release(self._token)
        except StoreError as exc:  # the claims expire by themselves
            logger.debug("cannot release the outbox claim: %s", exc)

    def _complete(self, row: Row) -> bool:
        """Whether every target of the row's channel has the events the row carries."""
        if row.broken or not row.routed or row.channel not in self._channels:
            return False
        targets = self._targets.get(row.channel)
        if targets is None:
            return False
        return all(self._target_done(target, row) for target in targets)

    def _finish(self, rows: Sequence[Row], stats: DispatchStats, channel: str) -> None:
        """Write each row's new state (``state.next_state``) and count it."""
        now_ms = self._now_ms()
        for row in rows:
            attempt = Attempt(
                attempts=row.attempts,
                created_at=row.created_at,
                complete=self._complete(row),
                attempted=row.attempted,
                errors=row.errors,
                deferred_until=row.deferred_until,
                interrupted=row.interrupted,
                permanent=row.permanent,
                unsaved=row.id in self._unsaved,
            )
            transition = next_state(attempt, self.config.delivery, now_ms, self.rand)
            if transition is None:
                continue  # pulled into the bundle but nothing was tried for it
            if transition.dead_reason == "permanent":
                logger.error(
                    "delivery %d to channel %s can never succeed as stored; it is dead at once: %s",
                    row.id,
                    channel,
                    row.permanent,
                )
            elif transition.dead_reason is not None:
                logger.error(
                    "delivery %d to channel %s is dead (%s): %s",
                    row.id,
                    channel,
                    transition.dead_reason,
                    transition.error,
                )
            values = dict(transition.values)
            values["updated_at"] = now_ms
            values["done_targets"] = json.dumps(row.done)
            self._write(row.id, values)
            self._unsaved.pop(row.id, None)
            if transition.state != UNCHANGED:
                stats.count(channel, transition.state)
                self._counted[row.id] = (channel, transition.state)
