"""One polling cycle of one source: fetch -> parse -> diff -> one transaction.

A failed or partial fetch changes no snapshot and invents no event; it only updates the
source's health (failure count, last error) and, after ``unreachable_after`` seconds of
failures, records one ``source.unreachable`` event, and one ``source.recovered`` when
polling works again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Engine

from notifier.bcs.parse import parse_response, select
from notifier.config import Config, SourceConfig
from notifier.diff import diff_record
from notifier.errors import AuthError, SignatureRejected, SourceError
from notifier.model import Event, EventType, OperationRecord, canonical_json, event_id
from notifier.routing import channels_for
from notifier.stalls import StallSettings, api_now_ns
from notifier.store.durations import StallWatch
from notifier.store.lease import Fence
from notifier.store.repository import (
    CycleWrite,
    EventGroup,
    Repository,
    SnapshotWrite,
    SourceState,
)

logger = logging.getLogger(__name__)


class Fetched(Protocol):
    @property
    def body(self) -> Any: ...

    @property
    def request_id(self) -> str | None: ...


class SourceClient(Protocol):
    def fetch(self) -> Fetched: ...

    def close(self) -> None: ...


ClientFactory = Callable[[SourceConfig], SourceClient]


def default_client_factory(source: SourceConfig) -> SourceClient:
    from notifier.bcs.client import BcsClient

    return BcsClient(source)


@dataclass(frozen=True, slots=True)
class PollResult:
    source: str
    events: tuple[Event, ...] = ()
    groups: tuple[EventGroup, ...] = ()
    #: any watched operation is waiting or processing (poll at the active rate)
    active: bool = False
    error: SourceError | None = None
    records: int = 0
    stored: int = 0
    baseline: bool = False
    duration: float = 0.0
    #: operation ids of records skipped as malformed ("" where the id was unreadable)
    skipped: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


class Poller:
    """Polls sources and records what changed. Keeps one client per source (token caches)."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        client_factory: ClientFactory = default_client_factory,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.repository = Repository(engine)
        self.client_factory = client_factory
        self.clock = clock
        self.timer = timer
        self._clients: dict[str, tuple[SourceConfig, SourceClient]] = {}
        service = config.service
        self.stalls = StallWatch(
            engine,
            StallSettings(
                service.stall_factor,
                service.stall_min_samples,
                service.stall_floor,
                service.stall_reminders,
            ),
        )

    def adopt_clients(self, previous: Poller) -> None:
        """Take over ``previous``'s clients of sources whose config is unchanged (a reload),
        so cached IAM tokens survive; ``previous`` keeps, and closes, the rest."""
        for name, (source, client) in list(previous._clients.items()):
            if any(current == source for current in self.config.sources):
                self._clients.setdefault(name, (source, client))
                del previous._clients[name]

    def close(self) -> None:
        for _source, client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def poll_all(self, *, dry_run: bool = False) -> list[PollResult]:
        return [self.poll_source(source, dry_run=dry_run) for source in self.config.sources]

    def poll_source(
        self, source: SourceConfig, *, dry_run: bool = False, fence: Fence | None = None
    ) -> PollResult:
        """Poll one source and record what changed. ``fence``: the lease this poll runs
        under (several instances); its check ends the write, LeaseLost when it was lost."""
        started = self.timer()
        now_ms = int(self.clock() * 1000)
        state = self.repository.source_state(source.name)
        if state.rest_until is not None and now_ms < state.rest_until:
            # credentials were refused: sending again could lock the key (five AK/SK
            # rejections in a row lock it for 5 minutes), also after a restart
            resting = _resting_error(source, state, now_ms)
            result = self._failure(
                source,
                resting,
                now_ms,
                dry_run=dry_run,
                state=state,
                keep_last_error=True,
                fence=fence,
            )
            return replace(result, duration=self.timer() - started)
        client = self._client(source)
        if state.rest_until is None and getattr(client, "retry_not_before", None) is not None:
            # every rest is stored; none stored means `source clear-rest` ended it
            logger.info("%s: the credential rest was cleared; trying again", source.name)
            clear_rest = getattr(client, "clear_rest", None)
            if callable(clear_rest):
                clear_rest()
        try:
            fetched = client.fetch()
            parsed = parse_response(fetched.body, request_id=fetched.request_id)
        except SourceError as exc:
            rest_until = getattr(client, "retry_not_before", None)
            if isinstance(rest_until, int | float):
                state = replace(state, rest_until=int(rest_until * 1000))
                if dry_run:  # the one write a dry run makes: it protects the key
                    self.repository.save_rest(source.name, int(rest_until * 1000))
            result = self._failure(source, exc, now_ms, dry_run=dry_run, state=state, fence=fence)
            return replace(result, duration=self.timer() - started)
        records = select(parsed.records, source.filters)
        result = self._success(
            source,
            state,
            records,
            now_ms,
            skipped=parsed.skipped,
            keep_absent=parsed.skipped_unidentified,
            dry_run=dry_run,
            server_time_ns=getattr(fetched, "server_time_ns", None),
            fence=fence,
        )
        return replace(result, duration=self.timer() - started, skipped=parsed.skipped)

    # -- internals ------------------------------------------------------------------------

    def _client(self, source: SourceConfig) -> SourceClient:
        cached = self._clients.get(source.name)
        if cached is not None and cached[0] == source:
            return cached[1]
        if cached is not None:
            cached[1].close()
        client = self.client_factory(source)
        self._clients[source.name] = (source, client)
        return client

    def _success(
        self,
        source: SourceConfig,
        state: SourceState,
        records: Sequence[OperationRecord],
        now_ms: int,
        *,
        skipped: Sequence[str],
        keep_absent: bool,
        dry_run: bool,
        server_time_ns: int | None = None,
        fence: Fence | None = None,
    ) -> PollResult:
        name = source.name
        index = self.repository.snapshot_index(name)
        baseline = state.baseline_at is None
        scope = source_scope(source)
        rescoped = not baseline and state.scope is not None and state.scope != scope
        silent_new = (baseline or rescoped) and not self.config.service.notify_existing
        if rescoped:
            logger.info(
                "%s: endpoint, project or filters changed; operations seen for the first time "
                "are stored silently",
                name,
            )

        writes: list[SnapshotWrite] = []
        returned: list[str] = []
        prepared: list[tuple[OperationRecord, str, str]] = []
        for record in records:
            data = canonical_json(record.to_dict())
            digest = hashlib.sha256(data.encode()).hexdigest()
            stored = index.get(record.operation_id)
            if stored is not None and stored.content_hash == digest:
                if stored.gone:
                    returned.append(record.operation_id)
                continue
            writes.append(SnapshotWrite(record, data, digest, is_new=stored is None))
            prepared.append((record, data, digest))

        changed_ids = [item.record.operation_id for item in writes if not item.is_new]
        previous = self.repository.load_records(name, changed_ids) if changed_ids else {}
        groups: list[EventGroup] = []
        for record, data, _digest in prepared:
            before = previous.get(record.operation_id)
            if before is None and silent_new:
                continue
            found = diff_record(name, before, record)
            if found:
                groups.append(self._group(name, record.operation_id, found, data))
        # stall detection: learn what finished, alert what runs too long (API clock)
        stalls = self.stalls.observe(
            name,
            records,
            [(previous.get(record.operation_id), record) for record, _data, _hash in prepared],
            api_now_ns(server_time_ns, records),
            check=not (baseline and silent_new),
        )
        groups = self._with_stalls(name, groups, stalls.events, records)

        present = {record.operation_id for record in records} | set(skipped)
        gone = (
            []
            if keep_absent
            else [
                operation_id
                for operation_id, stored in index.items()
                if not stored.gone and operation_id not in present
            ]
        )
        if gone:
            logger.info("%s: %d operation(s) no longer listed, marked gone", name, len(gone))

        if state.unreachable_reported:
            groups.append(self._health_group(source, state, now_ms, recovered=True))
        new_state = replace(
            state,
            baseline_at=state.baseline_at if state.baseline_at is not None else now_ms,
            last_poll_at=now_ms,
            last_success_at=now_ms,
            consecutive_failures=0,
            failing_since=None,
            last_error=None,
            unreachable_reported=False,
            rest_until=None,
            scope=scope,
        )
        if baseline:
            logger.info(
                "%s: first poll, %d operation(s) stored as the baseline%s",
                name,
                len(records),
                "" if silent_new else " and reported (notify_existing)",
            )
        active = any(record.is_active for record in records)
        if dry_run:
            found_events = tuple(event for group in groups for event in group.events)
            return PollResult(
                name, found_events, tuple(groups), active, None, len(records), 0, baseline
            )
        written = self.repository.write_cycle(
            CycleWrite(
                state=new_state,
                now_ms=now_ms,
                snapshots=writes,
                gone=gone,
                returned=returned,
                groups=groups,
                stalls=stalls.write,
                fence=fence,
            )
        )
        written_events = tuple(event for group in written for event in group.events)
        return PollResult(
            name, written_events, tuple(written), active, None, len(records), len(writes), baseline
        )

    def _failure(
        self,
        source: SourceConfig,
        error: SourceError,
        now_ms: int,
        *,
        dry_run: bool,
        state: SourceState,
        keep_last_error: bool = False,
        fence: Fence | None = None,
    ) -> PollResult:
        """Record a failed poll; ``keep_last_error`` keeps the reason that caused a rest."""
        name = source.name
        logger.warning("%s: poll failed: %s", name, error.one_line())
        failing_since = state.failing_since if state.failing_since is not None else now_ms
        new_state = replace(
            state,
            last_poll_at=now_ms,
            consecutive_failures=state.consecutive_failures + 1,
            failing_since=failing_since,
            last_error=state.last_error if keep_last_error else error.one_line(),
        )
        groups: list[EventGroup] = []
        threshold_ms = self.config.service.unreachable_after * 1000
        if not state.unreachable_reported and now_ms - failing_since >= threshold_ms:
            groups.append(self._health_group(source, new_state, now_ms, recovered=False))
            new_state = replace(new_state, unreachable_reported=True)
            logger.error(
                "%s: unreachable for %.0f s: %s",
                name,
                (now_ms - failing_since) / 1000,
                error.one_line(),
            )
        active = self.repository.active_operations(name) > 0
        if dry_run:
            return PollResult(name, active=active, error=error)
        written = self.repository.write_cycle(
            CycleWrite(state=new_state, now_ms=now_ms, groups=groups, fence=fence)
        )
        events = tuple(event for group in written for event in group.events)
        return PollResult(name, events, tuple(written), active, error)

    def _group(
        self, source: str, operation_id: str, found: Sequence[Event], record: str | None
    ) -> EventGroup:
        digest = hashlib.sha256(
            "\x1f".join([source, operation_id, *(event.id for event in found)]).encode()
        ).hexdigest()
        channels = tuple(channels_for(self.config.channels, found))
        return EventGroup(
            f"grp_{digest[:32]}", source, operation_id, tuple(found), channels, record
        )

    def _with_stalls(
        self,
        source: str,
        groups: list[EventGroup],
        stall_events: Sequence[Event],
        records: Sequence[OperationRecord],
    ) -> list[EventGroup]:
        """``groups`` with the stall events added: to the operation's group of this cycle,
        or in a group of their own (one message per operation per cycle)."""
        if not stall_events:
            return groups
        pending: dict[str, list[Event]] = {}
        for event in stall_events:
            pending.setdefault(event.operation_id, []).append(event)
        merged: list[EventGroup] = []
        for group in groups:
            extra = pending.pop(group.operation_id, None)
            if extra is not None:
                found = [*group.events, *extra]
                group = self._group(source, group.operation_id, found, group.record)  # noqa: PLW2901
            merged.append(group)
        by_id = {record.operation_id: record for record in records}
        for operation_id, found in pending.items():
            record = canonical_json(by_id[operation_id].to_dict())
            merged.append(self._group(source, operation_id, found, record))
        return merged

    def _health_group(
        self, source: SourceConfig, state: SourceState, now_ms: int, *, recovered: bool
    ) -> EventGroup:
        since_ns = (state.failing_since or now_ms) * 1_000_000
        kind = EventType.SOURCE_RECOVERED if recovered else EventType.SOURCE_UNREACHABLE
        label = "recovered" if recovered else "unreachable"
        event = Event(
            id=event_id(source.name, "", None, None, None, label, since_ns),
            type=kind,
            source=source.name,
            operation_id="",
            record_time=now_ms * 1_000_000,
            operation={},
            detail=f"{source.endpoint} (project {source.project_id})",
            started_at=since_ns,
            ended_at=now_ms * 1_000_000 if recovered else 0,
            error=state.last_error,
        )
        return self._group(source.name, "", [event], None)


def _resting_error(source: SourceConfig, state: SourceState, now_ms: int) -> SourceError:
    """The error of a poll skipped while the source's credentials rest."""
    until = datetime.fromtimestamp((state.rest_until or now_ms) / 1000, UTC)
    message = (
        f"credentials refused earlier ({state.last_error or 'no detail'}); "
        f"no request before {until.isoformat(timespec='seconds')}"
    )
    error: SourceError
    if source.auth.type == "aksk":
        error = SignatureRejected(status=401, code=None, message=message)
    else:
        error = AuthError(status=401, code=None, message=message)
    error.retry_after = ((state.rest_until or now_ms) - now_ms) / 1000
    return error


def source_scope(source: SourceConfig) -> str:
    """Fingerprint of what a source watches: a change means a new, silent baseline for
    operations seen for the first time (widening a filter reports no history)."""
    filters = {key: sorted(values) for key, values in source.filters.items()}
    scope = canonical_json([source.endpoint, source.project_id, filters])
    return hashlib.sha256(scope.encode()).hexdigest()[:32]
