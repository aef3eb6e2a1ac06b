"""One polling cycle of one source: fetch -> parse -> diff -> one transaction.

A failed or partial fetch changes no snapshot and invents no event; it only updates the
source's health (failure count, last error) and, after ``unreachable_after`` seconds of
failures, records one ``source.unreachable`` event, and one ``source.recovered`` when
polling works again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from notifier.bcs.sanitize import CONTENT_ERRORS
from notifier.bcs.source import (
    Listing,
    SourceClient,
    fetch_active,
    fetch_listing,
    queries_supported,
)
from notifier.clock import SYSTEM_CLOCK, Clock, iso
from notifier.config import Config, SourceConfig
from notifier.cycle import (
    gone_ids,
    group,
    health_group,
    plan_failure,
    plan_scope,
    resting_error,
    sort_records,
    source_scope,
    success_state,
    with_stalls,
)
from notifier.diff import diff_record
from notifier.errors import SourceError
from notifier.model import ACTIVE_STATUSES, Event, OperationRecord, json_text
from notifier.stalls import StallSettings, api_now_ns
from notifier.store.durations import StallWatch
from notifier.store.guard import BaselineMarker
from notifier.store.lease import Fence
from notifier.store.repository import (
    CycleWrite,
    EventGroup,
    RawEntry,
    Repository,
    SourceState,
    StoredSnapshot,
)

if TYPE_CHECKING:
    from notifier.store.db import Engine

__all__ = [
    "ClientFactory",
    "PollResult",
    "Poller",
    "default_client_factory",
    "diff_record",
    "source_scope",
]

logger = logging.getLogger(__name__)


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
    #: this cycle read a complete listing (else: the short lists of incremental polling)
    complete: bool = True

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
        clock: Clock = SYSTEM_CLOCK,
        reconcile_at_start: bool = False,
    ) -> None:
        self.config = config
        self.repository = Repository(engine)
        self.client_factory = client_factory
        self.clock = clock
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
        #: ``run``: the first cycle of each source in this process is a complete listing
        self.reconcile_at_start = reconcile_at_start
        self._listed: set[str] = set()
        #: per source: operation id -> what its stored snapshot was made from (raw hash)
        self._raw_index: dict[str, dict[str, RawEntry]] = {}
        #: SQLite: the marker that a lost database had a baseline (notifier.store.guard)
        self.marker = BaselineMarker.for_engine(engine)

    def adopt_clients(self, previous: Poller) -> None:
        """Take over ``previous``'s clients of sources whose config is unchanged (a reload),
        so cached IAM tokens survive; ``previous`` keeps, and closes, the rest."""
        for name, (source, client) in list(previous._clients.items()):
            if any(current == source for current in self.config.sources):
                self._clients.setdefault(name, (source, client))
                del previous._clients[name]
        self._listed |= previous._listed
        for name, index in previous._raw_index.items():
            self._raw_index.setdefault(name, index)

    def close(self) -> None:
        for _source, client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> Poller:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def poll_all(self, *, dry_run: bool = False, full: bool = False) -> list[PollResult]:
        return [
            self.poll_source(source, dry_run=dry_run, full=full) for source in self.config.sources
        ]

    def poll_source(
        self,
        source: SourceConfig,
        *,
        dry_run: bool = False,
        full: bool = False,
        fence: Fence | None = None,
    ) -> PollResult:
        """One cycle; ``full`` forces a complete listing (else :meth:`wants_complete`).
        ``fence``: the lease this poll runs under (several instances); its check ends the
        write, LeaseLost when it was lost."""
        started = self.clock.monotonic()
        now_ms = self.clock.wall_ms()
        state = self.repository.source_state(source.name)
        if state.rest_until is not None and now_ms < state.rest_until:
            # credentials were refused: sending again could lock the key (five AK/SK
            # rejections in a row lock it for 5 minutes), also after a restart
            resting = resting_error(source, state, now_ms)
            result = self._failure(
                source,
                resting,
                now_ms,
                dry_run=dry_run,
                state=state,
                keep_last_error=True,
                fence=fence,
            )
            return replace(result, duration=self.clock.monotonic() - started)
        client = self._client(source)
        if state.rest_until is None and getattr(client, "retry_not_before", None) is not None:
            # every rest is stored; none stored means `source clear-rest` ended it
            logger.info("%s: the credential rest was cleared; trying again", source.name)
            clear_rest = getattr(client, "clear_rest", None)
            if callable(clear_rest):
                clear_rest()
        complete = full or self.wants_complete(source, state, now_ms, client)
        stored: dict[str, StoredSnapshot] | None = None
        try:
            if complete:
                stored = self.repository.snapshot_index(source.name)
                known = self._known(source.name, stored)
                # a silent baseline diffs nothing: keep the JSON to store, not the records
                slim = (
                    state.baseline_at is None
                    and not self.config.service.notify_existing
                    and (self.marker is None or self.marker.get(source.name) is None)
                )
                listing = fetch_listing(client, source.filters, known=known, slim=slim)
            else:
                watched = self.repository.active_operation_ids(source.name)
                listing = fetch_active(client, source.filters, watched)
        except SourceError as exc:
            rest_until = getattr(client, "retry_not_before", None)
            if isinstance(rest_until, int | float):
                state = replace(state, rest_until=int(rest_until * 1000))
                if dry_run:  # the one write a dry run makes: it protects the key
                    self.repository.save_rest(source.name, int(rest_until * 1000))
            result = self._failure(source, exc, now_ms, dry_run=dry_run, state=state, fence=fence)
            return replace(result, duration=self.clock.monotonic() - started, complete=complete)
        records = [record for record, _digest in listing.records]
        result = self._success(
            source,
            state,
            records,
            now_ms,
            skipped=listing.skipped,
            keep_absent=listing.skipped_unidentified or not complete,
            dry_run=dry_run,
            server_time_ns=listing.server_time_ns,
            listing=listing,
            stored=stored,
            complete=complete,
            fence=fence,
        )
        return replace(
            result,
            duration=self.clock.monotonic() - started,
            skipped=listing.skipped,
            complete=complete,
        )

    def wants_complete(
        self, source: SourceConfig, state: SourceState, now_ms: int, client: object
    ) -> bool:
        """Whether this cycle reads a complete listing: always in ``poll_mode = "full"``;
        in incremental mode at the baseline, after a change of scope, at the first cycle
        of ``run`` (``reconcile_at_start``), every ``full_poll_interval`` seconds, and for a
        client that cannot send query parameters."""
        service = self.config.service
        if service.poll_mode == "full" or not queries_supported(client):
            return True
        if state.baseline_at is None or state.last_full_at is None:
            return True
        if state.scope is not None and state.scope != source_scope(source):
            return True
        if self.reconcile_at_start and source.name not in self._listed:
            return True
        return now_ms - state.last_full_at >= service.full_poll_interval * 1000

    # -- internals ------------------------------------------------------------------------

    def _known(self, name: str, stored: dict[str, StoredSnapshot]) -> dict[str, RawEntry]:
        """The raw index of ``name``, entries whose snapshot changed since dropped."""
        index = self._raw_index.get(name)
        if index is None:
            index = self._raw_index[name] = self.repository.raw_index(name)
        for operation_id in [
            operation_id
            for operation_id, entry in index.items()
            if (snapshot := stored.get(operation_id)) is None
            or snapshot.content_hash != entry.content_hash
        ]:
            del index[operation_id]
        return index

    def _remember(self, name: str, entries: dict[str, RawEntry]) -> None:
        """Put what a cycle stored into the raw index (when it is loaded)."""
        index = self._raw_index.get(name)
        if index is not None:
            index.update(entries)

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
        listing: Listing | None = None,
        stored: dict[str, StoredSnapshot] | None = None,
        complete: bool = True,
        fence: Fence | None = None,
    ) -> PollResult:
        """Diff ``records`` against the store and write the cycle. ``listing``: where they
        came from (raw hashes, records skipped unparsed); ``stored``: the snapshot index
        when already loaded (a complete listing); ``keep_absent``: mark nothing gone."""
        name = source.name
        pairs = listing.records if listing else ()
        raw_hashes = {record.operation_id: digest for record, digest in pairs}
        unchanged = listing.unchanged if listing else ()
        canonical = listing.canonical if listing else {}
        if stored is not None:
            index = stored
        else:
            index = self.repository.snapshot_index(
                name, [record.operation_id for record in records]
            )
        plan = plan_scope(
            state, source_scope(source), notify_existing=self.config.service.notify_existing
        )
        baseline, silent_new = plan.baseline, plan.silent_new
        lost = self.marker.get(name) if baseline and self.marker is not None else None
        if lost is not None:
            logger.error(
                "%s: the database has no baseline for this source, but %s says it had one "
                "(since %s): the database was deleted or replaced. Not a silent baseline: "
                "operations updated after the last change it held are reported",
                name,
                self.marker.path if self.marker is not None else "-",
                iso(lost.baseline_at, "offset"),
            )
        if plan.rescoped:
            logger.info(
                "%s: endpoint, project or filters changed; operations seen for the first time "
                "are stored silently",
                name,
            )

        sorted_ = sort_records(
            name, records, index, unchanged=unchanged, canonical=canonical, raw_hashes=raw_hashes
        )
        writes, returned, unstorable = sorted_.writes, sorted_.returned, sorted_.unstorable
        prepared = [(item.record, item.data, item.content_hash) for item in writes]
        changed_ids = [item.record.operation_id for item in writes if not item.is_new]
        previous = self.repository.load_records(name, changed_ids) if changed_ids else {}
        groups: list[EventGroup] = []
        for record, data, _digest in prepared:
            before = previous.get(record.operation_id)
            missed = lost is not None and record.record_time > lost.last_record_time
            if before is None and silent_new and not missed:
                continue
            try:
                found = diff_record(name, before, record)
            except CONTENT_ERRORS as exc:  # skipped like a malformed record, tried again
                logger.warning(
                    "%s: skipping operation record %r: it cannot be diffed: %s",
                    name,
                    record.operation_id[:160],
                    exc,
                )
                unstorable.append(record.operation_id)
                continue
            if found:
                groups.append(self._group(name, record.operation_id, found, json_text(data)))
        # stall detection: learn what finished, alert what runs too long (API clock); the
        # running operations skipped unparsed are watched through their stored snapshots
        known = self._raw_index.get(name, {})
        still_running = [
            operation_id
            for operation_id in unchanged
            if (entry := known.get(operation_id)) is not None and entry.status in ACTIVE_STATUSES
        ]
        watched = [*records]
        if still_running:
            watched.extend(self.repository.load_records(name, still_running).values())
        stalls = self.stalls.observe(
            name,
            watched,
            [(previous.get(record.operation_id), record) for record, _data, _hash in prepared],
            api_now_ns(server_time_ns, records),
            check=not (baseline and silent_new),
            learned=listing.samples if listing else (),
        )
        groups = self._with_stalls(name, groups, stalls.events, watched)

        if unstorable:
            writes = [item for item in writes if item.record.operation_id not in unstorable]
        present = (
            {record.operation_id for record in records}
            | set(skipped)
            | set(unchanged)
            | set(unstorable)
        )
        gone = gone_ids(index, present, keep_absent=keep_absent)
        if gone:
            logger.info("%s: %d operation(s) no longer listed, marked gone", name, len(gone))

        if state.unreachable_reported:
            groups.append(self._health_group(source, state, now_ms, recovered=True))
        new_state = success_state(state, now_ms, scope=plan.scope, complete=complete)
        if baseline:
            logger.info(
                "%s: first poll, %d operation(s) stored as the baseline%s",
                name,
                len(records),
                "" if silent_new else " and reported (notify_existing)",
            )
        active = any(record.is_active for record in records) or bool(still_running)
        listed = len(records) + len(unchanged)
        if dry_run:
            found_events = tuple(event for group in groups for event in group.events)
            return PollResult(name, found_events, tuple(groups), active, None, listed, 0, baseline)
        written = self.repository.write_cycle(
            CycleWrite(
                state=new_state,
                now_ms=now_ms,
                snapshots=writes,
                gone=gone,
                returned=returned,
                groups=groups,
                stalls=stalls.write,
                raw_hashes=sorted_.rehashed,
                fence=fence,
            )
        )
        self._remember(name, sorted_.remembered)
        if complete:
            self._listed.add(name)
        if self.marker is not None and new_state.baseline_at is not None:
            self.marker.update(
                name,
                baseline_at=new_state.baseline_at,
                last_record_time=max((record.record_time for record in records), default=0),
            )
        written_events = tuple(event for group in written for event in group.events)
        return PollResult(
            name, written_events, tuple(written), active, None, listed, len(writes), baseline
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
        planned = plan_failure(
            state,
            now_ms,
            error=error.one_line(),
            unreachable_after=self.config.service.unreachable_after,
            keep_last_error=keep_last_error,
        )
        new_state = planned.state
        groups: list[EventGroup] = []
        if planned.unreachable:
            groups.append(self._health_group(source, new_state, now_ms, recovered=False))
            logger.error(
                "%s: unreachable for %.0f s: %s",
                name,
                (now_ms - (new_state.failing_since or now_ms)) / 1000,
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
        return group(self.config.channels, source, operation_id, found, record)

    def _with_stalls(
        self,
        source: str,
        groups: list[EventGroup],
        stall_events: Sequence[Event],
        records: Sequence[OperationRecord],
    ) -> list[EventGroup]:
        return with_stalls(self.config.channels, source, groups, stall_events, records)

    def _health_group(
        self, source: SourceConfig, state: SourceState, now_ms: int, *, recovered: bool
    ) -> EventGroup:
        return health_group(self.config.channels, source, state, now_ms, recovered=recovered)
