"""What one poll writes, decided from plain values (no database, no HTTP, no channels).

The pipeline loads (source state, snapshot index), fetches (records), asks this module
what the cycle means - a baseline or a change of scope (first-seen operations stored
silently), operations gone or returned, the source unreachable or recovered, the new
source state - and writes the plan in one transaction. Every function here is pure, so
``tests/test_cycle.py`` checks the decisions table by table without a database.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from notifier.bcs.sanitize import CONTENT_ERRORS
from notifier.clock import iso
from notifier.config import ChannelConfig, SourceConfig
from notifier.errors import AuthError, SignatureRejected, SourceError
from notifier.model import (
    Event,
    EventType,
    OperationRecord,
    PackedJSON,
    canonical_json,
    event_id,
)
from notifier.routing import routes
from notifier.store.records import (
    EventGroup,
    RawEntry,
    SnapshotWrite,
    SourceState,
    StoredSnapshot,
)

logger = logging.getLogger("notifier.pipeline")


def source_scope(source: SourceConfig) -> str:
    """Fingerprint of what a source watches: a change means a new, silent baseline for
    operations seen for the first time (widening a filter reports no history)."""
    filters = {key: sorted(values) for key, values in source.filters.items()}
    scope = canonical_json([source.endpoint, source.project_id, filters])
    return hashlib.sha256(scope.encode()).hexdigest()[:32]


# -- baseline and scope -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """How a successful cycle treats operations it sees for the first time."""

    #: what the source watches now (:func:`source_scope`)
    scope: str
    #: the source has no baseline yet: this cycle makes it
    baseline: bool
    #: endpoint, project or filters changed since the last cycle
    rescoped: bool
    #: first-seen operations are stored without events
    silent_new: bool


def plan_scope(state: SourceState, scope: str, *, notify_existing: bool) -> Scope:
    baseline = state.baseline_at is None
    rescoped = not baseline and state.scope is not None and state.scope != scope
    silent_new = (baseline or rescoped) and not notify_existing
    return Scope(scope, baseline, rescoped, silent_new)


# -- records against the stored snapshots --------------------------------------------------


@dataclass(slots=True)
class Sorted:
    """The records of a cycle sorted against the stored snapshot index."""

    #: new or changed records to store
    writes: list[SnapshotWrite] = field(default_factory=list)
    #: marked gone before, listed again with unchanged content
    returned: list[str] = field(default_factory=list)
    #: operation id -> new raw hash, for records whose stored content is unchanged
    rehashed: dict[str, str] = field(default_factory=dict)
    #: what the raw index learns once the cycle is written
    remembered: dict[str, RawEntry] = field(default_factory=dict)
    #: records that cannot be stored (or diffed): neither written nor marked gone
    unstorable: list[str] = field(default_factory=list)


def sort_records(
    source: str,
    records: Iterable[OperationRecord],
    index: Mapping[str, StoredSnapshot],
    *,
    unchanged: Iterable[str] = (),
    canonical: Mapping[str, tuple[str | PackedJSON, str]] | None = None,
    raw_hashes: Mapping[str, str] | None = None,
) -> Sorted:
    """Which records are new or changed, which returned, and what raw hashes to keep.
    ``unchanged``: ids the listing skipped unparsed (raw form as stored); ``canonical``:
    id -> (canonical JSON, its hash) already computed by the listing."""
    canonical = canonical or {}
    raw_hashes = raw_hashes or {}
    result = Sorted()
    result.returned.extend(
        operation_id
        for operation_id in unchanged
        if (snapshot := index.get(operation_id)) is not None and snapshot.gone
    )
    for record in records:
        encoded = canonical.get(record.operation_id)
        data: str | PackedJSON
        try:
            if encoded is not None:
                data, digest = encoded
            else:
                data = canonical_json(record.to_dict())
                digest = hashlib.sha256(data.encode()).hexdigest()
        except CONTENT_ERRORS as exc:  # a last guard behind notifier.bcs.sanitize
            logger.warning(
                "%s: skipping operation record %r: it cannot be stored: %s",
                source,
                record.operation_id[:160],
                exc,
            )
            result.unstorable.append(record.operation_id)
            continue
        snapshot = index.get(record.operation_id)
        raw_hash = raw_hashes.get(record.operation_id)
        if raw_hash is not None:
            result.remembered[record.operation_id] = RawEntry(
                record.record_time, record.status, raw_hash, digest
            )
        if snapshot is not None and snapshot.content_hash == digest:
            if snapshot.gone:
                result.returned.append(record.operation_id)
            if raw_hash is not None:
                result.rehashed[record.operation_id] = raw_hash
            continue
        result.writes.append(
            SnapshotWrite(record, data, digest, is_new=snapshot is None, raw_hash=raw_hash)
        )
    return result


def gone_ids(
    index: Mapping[str, StoredSnapshot], present: Collection[str], *, keep_absent: bool
) -> list[str]:
    """Stored, not-gone operations a complete listing no longer has (none when
    ``keep_absent``: a partial listing, or records skipped without a readable id)."""
    if keep_absent:
        return []
    return [
        operation_id
        for operation_id, stored in index.items()
        if not stored.gone and operation_id not in present
    ]


# -- source health --------------------------------------------------------------------------


def success_state(state: SourceState, now_ms: int, *, scope: str, complete: bool) -> SourceState:
    """The source state after a successful cycle (failures and any rest cleared)."""
    return replace(
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
        last_full_at=now_ms if complete else state.last_full_at,
    )


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed cycle writes: the new state, and whether it reports the source
    unreachable now (once per outage, after ``unreachable_after`` seconds)."""

    state: SourceState
    unreachable: bool


def plan_failure(
    state: SourceState,
    now_ms: int,
    *,
    error: str,
    unreachable_after: float,
    keep_last_error: bool = False,
) -> Failure:
    """``error``: the failure's one line; ``keep_last_error`` keeps the reason that caused
    a credential rest."""
    failing_since = state.failing_since if state.failing_since is not None else now_ms
    new_state = replace(
        state,
        last_poll_at=now_ms,
        consecutive_failures=state.consecutive_failures + 1,
        failing_since=failing_since,
        last_error=state.last_error if keep_last_error else error,
    )
    report = not state.unreachable_reported and now_ms - failing_since >= unreachable_after * 1000
    if report:
        new_state = replace(new_state, unreachable_reported=True)
    return Failure(new_state, report)


def resting_error(source: SourceConfig, state: SourceState, now_ms: int) -> SourceError:
    """The error of a poll skipped while the source's credentials rest."""
    message = (
        f"credentials refused earlier ({state.last_error or 'no detail'}); "
        f"no request before {iso(state.rest_until or now_ms, 'offset')}"
    )
    error: SourceError
    if source.auth.type == "aksk":
        error = SignatureRejected(status=401, code=None, message=message)
    else:
        error = AuthError(status=401, code=None, message=message)
    error.retry_after = ((state.rest_until or now_ms) - now_ms) / 1000
    return error


# -- event groups ---------------------------------------------------------------------------


def group(
    channels: Sequence[ChannelConfig],
    source: str,
    operation_id: str,
    found: Sequence[Event],
    record: str | None,
) -> EventGroup:
    """The events of one operation in one cycle, routed to their channels: the one routing
    decision, kept per channel in ``EventGroup.routes`` and stored with its outbox row."""
    digest = hashlib.sha256(
        "\x1f".join([source, operation_id, *(event.id for event in found)]).encode()
    ).hexdigest()
    routed = routes(channels, found)
    return EventGroup(
        f"grp_{digest[:32]}", source, operation_id, tuple(found), tuple(routed), record, routed
    )


def with_stalls(
    channels: Sequence[ChannelConfig],
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
    for item in groups:
        extra = pending.pop(item.operation_id, None)
        if extra is not None:
            item = group(channels, source, item.operation_id, [*item.events, *extra], item.record)  # noqa: PLW2901
        merged.append(item)
    by_id = {record.operation_id: record for record in records}
    for operation_id, found in pending.items():
        record = canonical_json(by_id[operation_id].to_dict())
        merged.append(group(channels, source, operation_id, found, record))
    return merged


def health_group(
    channels: Sequence[ChannelConfig],
    source: SourceConfig,
    state: SourceState,
    now_ms: int,
    *,
    recovered: bool,
) -> EventGroup:
    """The ``source.unreachable`` or ``source.recovered`` event of ``source``, grouped."""
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
    return group(channels, source.name, "", [event], None)
