"""The transactional outbox's consumer: send due deliveries, retry, dead-letter.

An ``outbox`` row is one (event group, channel) delivery, written in the same transaction
as the events. :class:`Dispatcher` picks due rows, renders them for each URL ("target") of
the channel and records every target that succeeded in ``done_targets`` right after it
did, so a retry (even after a crash) never re-sends to a target that already has it:

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
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypedDict

from sqlalchemy import ColumnElement, Engine, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError

from notifier import routing
from notifier.channels.render import (
    Message,
    RenderOptions,
    TemplateError,
    Templates,
    plain_message,
    render_message,
)
from notifier.channels.targets import SendResult, Target, UnloadableURL, build_targets
from notifier.config import ChannelConfig, Config
from notifier.errors import StoreError, error_line
from notifier.model import Event, OperationRecord, event_body
from notifier.store.claims import Claims, claim_ttl, new_token, owned
from notifier.store.outbox_writes import ResultWriter
from notifier.store.schema import event_groups, events, outbox
from notifier.store.status import next_attempt_at

logger = logging.getLogger("notifier.outbox")  # the log lines keep the module's old name

PENDING: Final = "pending"
SENT: Final = "sent"
DEAD: Final = "dead"
STATES: Final = (PENDING, SENT, DEAD)
#: How often the dispatcher repeats its warning about rows waiting for a channel that is
#: not configured (the first dispatch after a start or reload always warns).
UNCONFIGURED_REMINDER: Final = 900.0


class Clock(Protocol):
    def __call__(self) -> float: ...


@dataclass
class ChannelStats:
    sent: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    messages: int = 0  # requests made (messages or webhook events), successful or not


@dataclass
class DispatchStats:
    """What one :meth:`Dispatcher.dispatch_due` did (counts of outbox rows)."""

    sent: int = 0
    failed: int = 0
    dead: int = 0
    deferred: int = 0
    messages: int = 0
    channels: dict[str, ChannelStats] = field(default_factory=dict)

    def channel(self, name: str) -> ChannelStats:
        return self.channels.setdefault(name, ChannelStats())

    def count(self, channel: str, state: str, by: int = 1) -> None:
        stats = self.channel(channel)
        attribute = {SENT: "sent", DEAD: "dead", PENDING: "failed", "deferred": "deferred"}[state]
        setattr(stats, attribute, getattr(stats, attribute) + by)
        setattr(self, attribute, getattr(self, attribute) + by)

    @property
    def handled(self) -> int:
        return self.sent + self.failed + self.dead + self.deferred


@dataclass(frozen=True)
class OutboxEntry:
    """One outbox row for ``outbox list`` and ``status``."""

    id: int
    channel: str
    state: str
    attempts: int
    source: str
    operation_id: str
    group_id: str
    created_at: int
    next_attempt_at: int
    updated_at: int
    last_error: str | None
    done_targets: tuple[str, ...]
    events: int


@dataclass
class _Row:
    id: int
    group_id: str
    channel: str
    attempts: int
    created_at: int
    done: list[str]
    source: str
    operation_id: str
    group_created_at: int
    record: OperationRecord | None
    events: list[Event]
    errors: list[str] = field(default_factory=list)
    deferred_until: int | None = None
    attempted: bool = False
    broken: str | None = None  # the stored events or record cannot be read
    interrupted: bool = False  # a send was cut short by the stop: the row stays as it was
    #: why this row can never be delivered as stored (retrying cannot help): dead at once
    permanent: str | None = None


class _RowKeys(TypedDict):
    """The columns an outbox row and its listing share: the row, its channel, its group."""

    id: int
    group_id: str
    channel: str
    attempts: int
    source: str
    operation_id: str


def _row_keys(item: Any) -> _RowKeys:
    """``_RowKeys`` of a result row that selects the outbox and event group columns."""
    return _RowKeys(
        id=item.id,
        group_id=item.group_id,
        channel=item.channel,
        attempts=item.attempts,
        source=item.source,
        operation_id=item.operation_id,
    )


def _done_targets(text: str | None) -> list[str]:
    """The keys of a row's ``done_targets`` JSON list (raises ValueError or TypeError)."""
    return [str(key) for key in json.loads(text or "[]")]


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def backoff_seconds(
    attempts: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    if attempts <= 0:
        return 0.0
    delay = min(maximum, initial * (2 ** (attempts - 1)))
    return float(delay / 2 + rand() * delay / 2)


class Dispatcher:
    """Sends due outbox rows. One instance per process; not thread-safe."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
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
        self._unsaved: dict[int, _Row] = {}
        self._waited = 0.0
        self._warned_unconfigured: dict[str, float] = {}
        self._reported: set[tuple[str, str]] = set()
        self._writer: ResultWriter | None = None
        self._counted: dict[int, tuple[str, str]] = {}  # row id -> (channel, state) counted
        self._stop_at: float | None = None  # self.clock() time; set by stop_within()
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
        self._token, self._held_at = new_token(), self.clock()
        try:
            try:
                bundles = self._load_bundles(now_ms, batch)
                self._warn_unconfigured()
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot read the outbox: {exc}") from exc
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
        self._stop_at = self.clock() + max(0.0, seconds)

    def close(self) -> None:
        """Close the targets' connections (they reopen on the next send)."""
        for targets in self._targets.values():
            for target in targets:
                target.close()

    def _out_of_time(self) -> bool:
        return self._stop_at is not None and self.clock() >= self._stop_at

    def next_due_at(self) -> float | None:
        """When the earliest pending row of a configured channel is due (seconds since the
        epoch), or None."""
        value = next_attempt_at(self.engine, self._channels)
        return None if value is None else value / 1000.0

    def _warn_unconfigured(self) -> None:
        """One warning per channel that is not configured but has pending rows (repeated
        every ``UNCONFIGURED_REMINDER`` seconds while they wait), never one per row."""
        waiting = unconfigured_counts(self.engine, self._channels, states=(PENDING,))
        now = self.clock()
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
        return int(self.clock() * 1000)

    def _load_bundles(self, now_ms: int, batch: int) -> list[tuple[str, list[_Row]]]:
        """Due rows grouped per (channel, source, operation), each group with every pending
        row of that operation (older ones first) so messages coalesce and keep their order."""
        keys = self._claims.claim_due(self._token, list(self._channels), now_ms, batch)
        with self.engine.connect() as connection:
            by_key: dict[tuple[str, str, str], list[_Row]] = {key: [] for key in keys}
            for chunk in _chunks(keys, 300):
                for row in self._load_rows(connection, chunk):
                    by_key[(row.channel, row.source, row.operation_id)].append(row)
        return [(key[0], rows) for key, rows in by_key.items() if rows]

    def _load_rows(self, connection: Any, keys: Sequence[tuple[str, str, str]]) -> list[_Row]:
        query = (
            select(
                outbox.c.id,
                outbox.c.group_id,
                outbox.c.channel,
                outbox.c.attempts,
                func.coalesce(outbox.c.retried_at, outbox.c.created_at).label("age_from"),
                outbox.c.done_targets,
                event_groups.c.source,
                event_groups.c.operation_id,
                event_groups.c.created_at.label("group_created_at"),
                event_groups.c.record,
            )
            .join(event_groups, event_groups.c.id == outbox.c.group_id)
            .where(
                outbox.c.state == PENDING,
                owned(self._token),
                tuple_(outbox.c.channel, event_groups.c.source, event_groups.c.operation_id).in_(
                    list(keys)
                ),
            )
            .order_by(event_groups.c.created_at, outbox.c.id)
        )
        rows: list[_Row] = []
        records: dict[str, OperationRecord | None] = {}
        broken: dict[str, str] = {}  # group id -> why its stored data cannot be read
        for item in connection.execute(query):
            if item.group_id not in records:
                try:
                    records[item.group_id] = (
                        OperationRecord.from_dict(json.loads(item.record)) if item.record else None
                    )
                except Exception as exc:  # one unreadable group fails alone
                    records[item.group_id] = None
                    broken[item.group_id] = (
                        f"stored operation record unreadable: {error_line(exc, 500)}"
                    )
            try:
                done = _done_targets(item.done_targets)
            except (ValueError, TypeError) as exc:
                done = []
                broken.setdefault(item.group_id, f"done_targets unreadable: {error_line(exc, 500)}")
            rows.append(
                _Row(
                    **_row_keys(item),
                    created_at=item.age_from,
                    done=done,
                    group_created_at=item.group_created_at,
                    record=records[item.group_id],
                    events=[],
                )
            )
        group_events: dict[str, list[Event]] = {group: [] for group in records}
        event_query = (
            select(events.c.group_id, events.c.payload)
            .where(events.c.group_id.in_(list(records)))
            .order_by(events.c.seq)
        )
        for item in connection.execute(event_query):
            try:
                group_events[item.group_id].append(Event.from_dict(json.loads(item.payload)))
            except Exception as exc:  # one unreadable event fails its group
                broken.setdefault(item.group_id, f"stored event unreadable: {error_line(exc, 500)}")
        for row in rows:
            row.events = group_events[row.group_id]
            row.broken = broken.get(row.group_id)
        return rows

    # -- sending ------------------------------------------------------------------------------

    def _dispatch_bundle(self, channel_name: str, rows: list[_Row], stats: DispatchStats) -> None:
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
        matched: dict[int, list[Event]] = {}
        for row in usable:
            try:
                matched[row.id] = routing.matching_events(channel, row.events)
            except Exception as exc:  # a bad row fails alone
                self._report(channel.name, "routing", exc)
                row.errors.append(f"internal error while routing: {error_line(exc, 500)}")
                row.attempted = True
        usable = [row for row in usable if row.id in matched]
        for target in targets:
            try:
                if target.kind == "webhook":
                    self._send_webhook(channel, target, usable, matched, stats)
                else:
                    self._send_message(channel, target, usable, matched, stats)
            except (StoreError, SQLAlchemyError):
                raise  # the store failed: the whole dispatch stops, the daemon backs off
            except Exception as exc:  # one operation's delivery fails alone
                self._report(channel.name, "sending", exc)
                error = f"{target.safe_url}: internal error: {error_line(exc, 500)}"
                for row in usable:
                    if not self._target_done(target, row, matched[row.id]):
                        row.errors.append(error)
                        row.attempted = True
        self._finish(rows, stats, channel_name)

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

    @staticmethod
    def _target_done(target: Target, row: _Row, wanted: Sequence[Event]) -> bool:
        if target.kind == "webhook":
            return all(target.done(row.done, event.id) for event in wanted)
        return not wanted or target.done(row.done)

    def _pace(self, target: Target) -> bool:
        """Wait for the target's pacing; False when the wait would exceed the budget."""
        if target.interval <= 0:
            return True
        last = self._last_send.get(target.pacing_key)
        if last is None:
            return True
        wait = last + target.interval - self.clock()
        if wait <= 0:
            return True
        if self._waited + wait > self.pacing_budget:
            return False
        if self._stop_at is not None and self.clock() + wait >= self._stop_at:
            return False  # stopping: the wait would outlast the grace
        self._waited += wait
        self.sleep(wait)
        return True

    def _defer(self, rows: Iterable[_Row], target: Target) -> None:
        last = self._last_send.get(target.pacing_key, self.clock())
        until = int((last + target.interval) * 1000) + 1
        for row in rows:
            row.deferred_until = max(row.deferred_until or 0, until)

    def _deliver(self, target: Target, rows: Sequence[_Row], **message: Any) -> SendResult:
        """One send, bounded by what is left of a stop; a send the stop cut short leaves
        ``rows`` as they were (``interrupted``): not an attempt, due again at the next start."""
        self._hold_claim()
        timeout = target.timeout
        if self._stop_at is not None:
            timeout = min(timeout, self._stop_at - self.clock())
        result = target.send(**message, timeout=timeout)
        self._last_send[target.pacing_key] = self.clock()
        if not result.ok and self._out_of_time():
            for row in rows:
                row.interrupted = True
        return result

    def _send_message(
        self,
        channel: ChannelConfig,
        target: Target,
        rows: list[_Row],
        matched: Mapping[int, list[Event]],
        stats: DispatchStats,
    ) -> None:
        key = target.key()
        waiting = [row for row in rows if not target.done(row.done)]
        if not waiting:
            return
        merged = [event for row in waiting for event in matched[row.id]]
        if not merged:  # nothing this channel wants (filters changed): done for this target
            self._mark_done(waiting, [key] * len(waiting))
            return
        if self._out_of_time():
            return
        if not self._pace(target):
            self._defer(waiting, target)
            return
        record = next((row.record for row in reversed(waiting) if row.record is not None), None)
        options = RenderOptions(
            format=target.format,
            timezone=channel.timezone,
            budget=target.budget,
            title_max=target.title_max,
            dialect=target.dialect,
        )
        try:
            message = self._render(channel, merged, record, options)
        except Exception as exc:  # even the plain fallback failed: the content cannot be sent
            reason = f"{target.safe_url}: cannot render this content: {error_line(exc, 500)}"
            self._report(channel.name, "rendering", exc)
            for row in waiting:
                row.attempted = True
                row.errors.append(reason)
                row.permanent = reason
            return
        alternatives = self._alternatives(channel, target, merged, record, options)
        for row in waiting:
            row.attempted = True
        stats.messages += 1
        stats.channel(channel.name).messages += 1
        result = self._deliver(
            target,
            waiting,
            title=message.title,
            body=message.body,
            notify_type=message.notify_type,
            body_format=message.format,
            alternatives=alternatives,
        )
        if result.ok:
            self._mark_done(waiting, [key] * len(waiting))
        elif not waiting[0].interrupted:
            error = f"{target.safe_url}: {result.error}"
            logger.warning("channel %s: delivery failed: %s", channel.name, error)
            for row in waiting:
                row.errors.append(error)

    def _alternatives(
        self,
        channel: ChannelConfig,
        target: Target,
        merged: Sequence[Event],
        record: OperationRecord | None,
        options: RenderOptions,
    ) -> dict[str, str]:
        """The other formats the target's sender wants (email: the plain-text part), each
        rendered from the same events, with the channel's templates where they render."""
        result: dict[str, str] = {}
        for fmt in target.alternatives:
            if fmt == options.format:
                continue
            other = RenderOptions(
                format=fmt,
                timezone=options.timezone,
                budget=0,
                title_max=options.title_max,
                dialect="commonmark",
            )
            result[fmt] = self._render(channel, merged, record, other).body
        return result

    def _render(
        self,
        channel: ChannelConfig,
        events: Sequence[Event],
        record: OperationRecord | None,
        options: RenderOptions,
    ) -> Message:
        """The channel's message; a failing template falls back to the default message, and
        a default message that fails on odd stored data to a plain list of the events."""
        try:
            try:
                return render_message(events, record, options, self._templates_for(channel))
            except TemplateError as exc:
                if (channel.name, str(exc)) not in self._reported:
                    self._reported.add((channel.name, str(exc)))
                    logger.warning(
                        "channel %s: %s; sending the default message instead (reported once "
                        "per kind of failure)",
                        channel.name,
                        exc,
                    )
                return render_message(events, record, options)
        except Exception as exc:  # any content problem: the plain fallback
            self._report(channel.name, "rendering", exc)
            return plain_message(events, options)

    def _send_webhook(
        self,
        channel: ChannelConfig,
        target: Target,
        rows: list[_Row],
        matched: Mapping[int, list[Event]],
        stats: DispatchStats,
    ) -> None:
        blocked: str | None = None
        for row in rows:
            for event in matched[row.id]:
                key = target.key(event.id)
                if target.done(row.done, event.id):
                    continue
                if blocked is not None:
                    # Keep the operation's events in order: later ones wait with the failed one.
                    row.attempted = True
                    row.errors.append(blocked)
                    break
                if self._out_of_time():
                    return
                if not self._pace(target):
                    self._defer([row], target)
                    break
                row.attempted = True
                stats.messages += 1
                stats.channel(channel.name).messages += 1
                try:
                    body = event_body(event)
                except Exception as exc:  # odd stored data: this event can never be sent
                    reason = (
                        f"{target.safe_url}: cannot encode event {event.id}: {error_line(exc, 500)}"
                    )
                    self._report(channel.name, "encoding", exc)
                    row.attempted = True
                    row.errors.append(reason)
                    row.permanent = reason
                    break
                result = self._deliver(
                    target,
                    [row],
                    title=str(event.type),
                    body=body,
                    notify_type="info",
                    body_format="text",
                    event_id=event.id,
                )
                if result.ok:
                    self._mark_done([row], [key])
                    continue
                if row.interrupted:
                    return
                error = f"{target.safe_url}: {result.error}"
                logger.warning("channel %s: webhook failed: %s", channel.name, error)
                row.errors.append(error)
                blocked = f"{target.safe_url}: waiting for an earlier event of this operation"
                break

    def _templates_for(self, channel: ChannelConfig) -> Templates | None:
        if not channel.title and not channel.body:
            return None
        if channel.name not in self._templates:
            self._templates[channel.name] = Templates(title=channel.title, body=channel.body)
        return self._templates[channel.name]

    # -- recording ----------------------------------------------------------------------------

    def _mark_done(self, rows: Sequence[_Row], keys: Sequence[str]) -> None:
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
        try:  # outside dispatch_due (tests driving one bundle): commit at once
            with self.engine.begin() as connection:
                connection.execute(
                    update(outbox).where(outbox.c.id == row_id, owned(self._token)).values(**values)
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record a delivery: {exc}") from exc

    def _hold_claim(self) -> None:
        """Before a request: extend the claim once a third of its time has passed; stop
        (ClaimLost) when it is no longer this dispatch's."""
        now = self.clock()
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

    def _complete(self, row: _Row) -> bool:
        """Whether every target of the row's channel has what the row carries for it."""
        channel = self._channels.get(row.channel)
        if row.broken or channel is None or row.channel not in self._targets:
            return False
        wanted = routing.matching_events(channel, row.events)
        return all(self._target_done(target, row, wanted) for target in self._targets[row.channel])

    def _finish(self, rows: Sequence[_Row], stats: DispatchStats, channel: str) -> None:
        now_ms = self._now_ms()
        delivery = self.config.delivery
        for row in rows:
            values: dict[str, Any]
            if self._complete(row):
                state, values = SENT, {"state": SENT, "last_error": None}
            elif not row.attempted and row.deferred_until is not None:
                state = "deferred"
                values = {"next_attempt_at": row.deferred_until}
            elif not row.attempted or (row.interrupted and not row.errors):
                if row.id not in self._unsaved:
                    continue  # pulled into the bundle but nothing was tried for it
                state, values = "", {}  # only its bookkeeping changed
            else:
                attempts = row.attempts + 1
                too_old = now_ms - row.created_at >= delivery.max_age * 1000
                error = "; ".join(dict.fromkeys(row.errors))[:2000] or None
                if row.deferred_until is not None and not row.errors:
                    state = "deferred"
                    values = {"next_attempt_at": row.deferred_until}
                elif row.permanent is not None:
                    state = DEAD
                    values = {
                        "state": DEAD,
                        "attempts": attempts,
                        "last_error": (
                            f"permanent failure, not retried: {row.permanent} "
                            "(retrying cannot help; `outbox retry` after a fix)"
                        )[:2000],
                    }
                    logger.error(
                        "delivery %d to channel %s can never succeed as stored; it is dead "
                        "at once: %s",
                        row.id,
                        channel,
                        row.permanent,
                    )
                elif attempts >= delivery.max_attempts or too_old:
                    state = DEAD
                    reason = "max_age reached" if too_old else f"{attempts} attempts"
                    values = {
                        "state": DEAD,
                        "attempts": attempts,
                        "last_error": f"dead after {reason}: {error or 'no detail'}"[:2000],
                    }
                    logger.error(
                        "delivery %d to channel %s is dead (%s): %s",
                        row.id,
                        channel,
                        reason,
                        error,
                    )
                else:
                    state = PENDING
                    delay = backoff_seconds(
                        attempts, delivery.backoff_initial, delivery.backoff_max, self.rand
                    )
                    next_at = now_ms + int(delay * 1000)
                    if row.deferred_until is not None:
                        next_at = max(next_at, row.deferred_until)
                    values = {
                        "attempts": attempts,
                        "next_attempt_at": next_at,
                        "last_error": error,
                    }
            values["updated_at"] = now_ms
            values["done_targets"] = json.dumps(row.done)
            self._write(row.id, values)
            self._unsaved.pop(row.id, None)
            if state:
                stats.count(channel, state)
                self._counted[row.id] = (channel, state)


# -- helpers for the CLI (list / retry / purge) ---------------------------------------------


def list_entries(
    engine: Engine,
    *,
    states: Sequence[str] = (PENDING, DEAD),
    channel: str | None = None,
    limit: int | None = None,
) -> list[OutboxEntry]:
    counts = (
        select(events.c.group_id, func.count().label("events"))
        .group_by(events.c.group_id)
        .subquery()
    )
    query = (
        select(
            outbox,
            event_groups.c.source,
            event_groups.c.operation_id,
            func.coalesce(counts.c.events, 0).label("events"),
        )
        .join(event_groups, event_groups.c.id == outbox.c.group_id)
        .outerjoin(counts, counts.c.group_id == outbox.c.group_id)
        .where(outbox.c.state.in_(list(states)))
        .order_by(outbox.c.id)
    )
    if channel:
        query = query.where(outbox.c.channel == channel)
    if limit:
        query = query.limit(limit)
    with engine.connect() as connection:
        return [
            OutboxEntry(
                **_row_keys(row),
                state=row.state,
                created_at=row.created_at,
                next_attempt_at=row.next_attempt_at,
                updated_at=row.updated_at,
                last_error=row.last_error,
                done_targets=tuple(_done_targets(row.done_targets)),
                events=row.events,
            )
            for row in connection.execute(query)
        ]


def unconfigured_counts(
    engine: Engine, configured: Iterable[str], *, states: Sequence[str] = (PENDING, DEAD)
) -> dict[str, int]:
    """Rows (in ``states``) per channel name that is not in ``configured``."""
    names = list(configured)
    query = (
        select(outbox.c.channel, func.count())
        .where(outbox.c.state.in_(list(states)), outbox.c.channel.not_in(names))
        .group_by(outbox.c.channel)
    )
    with engine.connect() as connection:
        return {str(name): int(count) for name, count in connection.execute(query)}


def reassign(engine: Engine, *, old: str, new: str, now_ms: int) -> int:
    """Hand the pending and dead rows of channel ``old`` (renamed in the config) to ``new``,
    due now with a fresh attempt count. ``done_targets`` is kept: a URL both channels share
    keeps its key, so what it already received is not sent again."""
    with engine.begin() as connection:
        result = connection.execute(
            update(outbox)
            .where(outbox.c.channel == old, outbox.c.state.in_([PENDING, DEAD]))
            .values(
                channel=new,
                state=PENDING,
                attempts=0,
                next_attempt_at=now_ms,
                updated_at=now_ms,
                retried_at=now_ms,
            )
        )
    return int(result.rowcount or 0)


def counts_by_state(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.state, func.count()).group_by(outbox.c.state)
        ).all()
    result = dict.fromkeys(STATES, 0)
    for state, count in rows:
        result[str(state)] = int(count)
    return result


def retry(
    engine: Engine,
    *,
    now_ms: int,
    ids: Sequence[int] = (),
    channel: str | None = None,
    include_pending: bool = False,
) -> int:
    """Make dead (and, with ``include_pending``, waiting) rows due now with a fresh attempt
    count. ``done_targets`` is kept: targets that already have a message are not re-sent."""
    states = [DEAD, PENDING] if include_pending else [DEAD]
    conditions: list[ColumnElement[bool]] = [outbox.c.state.in_(states)]
    if ids:
        conditions.append(outbox.c.id.in_(list(ids)))
    if channel:
        conditions.append(outbox.c.channel == channel)
    with engine.begin() as connection:
        result = connection.execute(
            update(outbox)
            .where(and_(*conditions))
            .values(
                state=PENDING,
                attempts=0,
                next_attempt_at=now_ms,
                updated_at=now_ms,
                retried_at=now_ms,  # max_age counts again from the manual retry
            )
        )
    return int(result.rowcount or 0)


def purge(
    engine: Engine,
    *,
    states: Sequence[str] = (SENT,),
    older_than_ms: int | None = None,
    ids: Sequence[int] = (),
    channel: str | None = None,
    unconfigured: Iterable[str] | None = None,
) -> int:
    """Delete outbox rows (events stay in the history). With ``unconfigured`` (the names
    of the configured channels), only rows of the other channels go."""
    conditions: list[ColumnElement[bool]] = [outbox.c.state.in_(list(states))]
    if unconfigured is not None:
        conditions.append(outbox.c.channel.not_in(list(unconfigured)))
    if older_than_ms is not None:
        conditions.append(outbox.c.updated_at < older_than_ms)
    if ids:
        conditions.append(outbox.c.id.in_(list(ids)))
    if channel:
        conditions.append(outbox.c.channel == channel)
    with engine.begin() as connection:
        result = connection.execute(delete(outbox).where(and_(*conditions)))
    return int(result.rowcount or 0)


def oldest_undelivered_ms(engine: Engine) -> int | None:
    with engine.connect() as connection:
        value = connection.execute(
            select(func.min(outbox.c.created_at)).where(
                or_(outbox.c.state == PENDING, outbox.c.state == DEAD)
            )
        ).scalar()
    return None if value is None else int(value)
