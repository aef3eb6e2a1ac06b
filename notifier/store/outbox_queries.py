"""Every statement the outbox's consumer and its CLI run (``notifier/outbox/`` has no SQL).

- :func:`load_claimed`: the rows a dispatch claimed (``store/claims.py``), grouped per
  (channel, source, operation) with their stored record and events, read tolerantly: data
  that cannot be read marks its group ``broken`` instead of raising;
- :func:`write_now`: one row's result outside a batched dispatch (``store/outbox_writes.py``
  records the batched ones);
- the helpers of ``outbox list / retry / purge / reassign`` and ``status``.

A failing statement of the dispatch surfaces as :class:`~notifier.errors.StoreError`
(:func:`store_errors`); :data:`STORE_ERRORS` names every store failure, for code that must
let them through while it catches the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypedDict, TypeVar

from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    bindparam,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import SQLAlchemyError

from notifier.errors import StoreError, error_line
from notifier.model import Event, OperationRecord
from notifier.store.claims import owned
from notifier.store.db import chunks
from notifier.store.schema import event_groups, events, outbox

PENDING: Final = "pending"
SENT: Final = "sent"
DEAD: Final = "dead"
STATES: Final = (PENDING, SENT, DEAD)

#: Every failure of the store: a dispatch stops on them (the daemon backs off).
STORE_ERRORS: Final = (StoreError, SQLAlchemyError)


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Raise a failing statement as ``StoreError("<what>: <error>")``."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StoreError(f"{what}: {exc}") from exc


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
    events: int  # the events it carries: those routed to its channel


@dataclass
class StoredRow:
    """A claimed pending row as stored: its group's record, the events routed to its
    channel when it was written (``outbox.event_ids``), the targets done."""

    id: int
    group_id: str
    channel: str
    attempts: int
    created_at: int  # when max_age counts from: the manual retry, else the row's creation
    done: list[str]
    source: str
    operation_id: str
    group_created_at: int
    record: OperationRecord | None
    events: list[Event]
    broken: str | None = None  # the stored events or record cannot be read
    #: False for a row written before revision 0007 (``event_ids`` NULL): ``events`` are
    #: all of its group's, and the dispatcher routes them through the channel's filters
    routed: bool = True


Row = TypeVar("Row", bound=StoredRow)


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


def _event_ids(text: str) -> list[str]:
    """The ids of a row's ``event_ids`` JSON list (raises ValueError or TypeError)."""
    ids = json.loads(text)
    if not isinstance(ids, list) or not all(isinstance(item, str) for item in ids):
        raise TypeError(f"not a list of event ids: {text[:100]!r}")
    return ids


def load_claimed(
    engine: Engine, token: str, keys: Sequence[tuple[str, str, str]], row_type: type[Row]
) -> list[tuple[str, list[Row]]]:
    """The claimed pending rows of ``keys`` ((channel, source, operation), as claimed),
    grouped per key with every such row of that operation (older ones first) so messages
    coalesce and keep their order; each row is a ``row_type``."""
    with engine.connect() as connection:
        by_key: dict[tuple[str, str, str], list[Row]] = {key: [] for key in keys}
        for chunk in chunks(keys, 300):
            for row in _load_rows(connection, token, chunk, row_type):
                by_key[(row.channel, row.source, row.operation_id)].append(row)
    return [(key[0], rows) for key, rows in by_key.items() if rows]


def _load_rows(
    connection: Any, token: str, keys: Sequence[tuple[str, str, str]], row_type: type[Row]
) -> list[Row]:
    query = (
        select(
            outbox.c.id,
            outbox.c.group_id,
            outbox.c.channel,
            outbox.c.attempts,
            func.coalesce(outbox.c.retried_at, outbox.c.created_at).label("age_from"),
            outbox.c.done_targets,
            outbox.c.event_ids,
            event_groups.c.source,
            event_groups.c.operation_id,
            event_groups.c.created_at.label("group_created_at"),
            event_groups.c.record,
        )
        .join(event_groups, event_groups.c.id == outbox.c.group_id)
        .where(
            outbox.c.state == PENDING,
            owned(token),
            tuple_(outbox.c.channel, event_groups.c.source, event_groups.c.operation_id).in_(
                list(keys)
            ),
        )
        .order_by(event_groups.c.created_at, outbox.c.id)
    )
    rows: list[Row] = []
    records: dict[str, OperationRecord | None] = {}
    broken: dict[str, str] = {}  # group id -> why its stored data cannot be read
    routed: dict[int, list[str]] = {}  # row id -> the stored ids of the events it carries
    unreadable: dict[int, str] = {}  # row id -> why its event_ids cannot be read
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
        if item.event_ids is not None:
            try:
                routed[item.id] = _event_ids(item.event_ids)
            except (ValueError, TypeError) as exc:
                routed[item.id] = []
                unreadable[item.id] = f"event_ids unreadable: {error_line(exc, 500)}"
        rows.append(
            row_type(
                **_row_keys(item),
                created_at=item.age_from,
                done=done,
                group_created_at=item.group_created_at,
                record=records[item.group_id],
                events=[],
                routed=item.event_ids is not None,
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
        row.broken = broken.get(row.group_id) or unreadable.get(row.id)
        if row.routed:  # the events routed to the row's channel when it was written
            ids = set(routed[row.id])
            row.events = [event for event in row.events if event.id in ids]
            missing = ids - {event.id for event in row.events}
            if row.broken is None and missing:
                row.broken = f"routed event {min(missing)[:100]!r} is not recorded in its group"
    return rows


def write_now(engine: Engine, token: str, row_id: int, values: dict[str, Any]) -> None:
    """Commit one claimed row's result at once (a dispatch without its batched writer)."""
    try:
        with engine.begin() as connection:
            connection.execute(
                update(outbox).where(outbox.c.id == row_id, owned(token)).values(**values)
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot record a delivery: {exc}") from exc


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
                events=_carried(row.event_ids, row.events),
            )
            for row in connection.execute(query)
        ]


def _carried(event_ids: str | None, group_events: int) -> int:
    """How many events a row carries: those routed to its channel (all of its group's for
    a row older than revision 0007, or when its ids cannot be read)."""
    if event_ids is None:
        return group_events
    try:
        return len(_event_ids(event_ids))
    except (ValueError, TypeError):
        return group_events


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


@dataclass(frozen=True)
class Reassigned:
    """What :func:`reassign` did."""

    #: rows handed to the new channel
    moved: int
    #: of them, rows that carry no event the new channel's filters admit (nothing to send:
    #: the next dispatch marks them sent)
    empty: int
    #: rows left with the old channel: the new one has a row of the same event group
    kept: int


def reassign(
    engine: Engine, *, old: str, new: str, now_ms: int, admits: Callable[[Event], bool]
) -> Reassigned:
    """Hand the pending and dead rows of channel ``old`` (renamed in the config) to ``new``,
    due now with a fresh attempt count.

    Routing is decided again, once, for ``new``: a row keeps of the events it carried for
    ``old`` (its ``event_ids``; all of its group's for a row older than revision 0007) those
    that ``admits`` (``new``'s filters) lets through, so ``new`` never gets what it would
    refuse, nor what ``old`` was not going to send. A row whose event group ``new`` already
    has a row of stays with ``old`` (that row carries ``new``'s own decision). A row whose
    stored events or ids cannot be read moves as it is (it fails when dispatched).
    ``done_targets`` is kept: a URL both channels share keeps its key, so what it already
    received is not sent again."""
    with engine.begin() as connection:
        rows = connection.execute(
            select(outbox.c.id, outbox.c.group_id, outbox.c.event_ids)
            .where(outbox.c.channel == old, outbox.c.state.in_([PENDING, DEAD]))
            .order_by(outbox.c.id)
        ).all()
        groups = sorted({row.group_id for row in rows})
        taken: set[str] = set()
        group_events: dict[str, list[Event] | None] = {group: [] for group in groups}
        for chunk in chunks(groups):
            taken.update(
                connection.scalars(
                    select(outbox.c.group_id).where(
                        outbox.c.channel == new, outbox.c.group_id.in_(list(chunk))
                    )
                )
            )
            query = (
                select(events.c.group_id, events.c.payload)
                .where(events.c.group_id.in_(list(chunk)))
                .order_by(events.c.seq)
            )
            for item in connection.execute(query):
                found = group_events[item.group_id]
                if found is None:
                    continue
                try:
                    found.append(Event.from_dict(json.loads(item.payload)))
                except Exception:  # unreadable: the row fails alone when dispatched
                    group_events[item.group_id] = None
        moves: list[dict[str, Any]] = []
        empty = 0
        for row in rows:
            if row.group_id in taken:
                continue
            event_ids = _rerouted(row.event_ids, group_events[row.group_id], admits)
            if event_ids == "[]":
                empty += 1
            moves.append({"b_id": row.id, "b_event_ids": event_ids})
        if moves:
            connection.execute(
                update(outbox)
                .where(outbox.c.id == bindparam("b_id"))
                .values(
                    channel=new,
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=now_ms,
                    updated_at=now_ms,
                    retried_at=now_ms,
                    event_ids=bindparam("b_event_ids"),
                ),
                moves,
            )
    return Reassigned(moved=len(moves), empty=empty, kept=len(rows) - len(moves))


def _rerouted(
    stored: str | None, group_events: list[Event] | None, admits: Callable[[Event], bool]
) -> str | None:
    """A row's ``event_ids`` for the channel it is handed to (see :func:`reassign`)."""
    if group_events is None:
        return stored
    try:
        carried = set(_event_ids(stored)) if stored is not None else None
        kept = [
            event.id
            for event in group_events
            if (carried is None or event.id in carried) and admits(event)
        ]
    except Exception:  # odd stored data: moved as it is, it fails alone when dispatched
        return stored
    return json.dumps(kept)


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
