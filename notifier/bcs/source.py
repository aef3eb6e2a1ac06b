"""The source of a poll: fetch + parse + filter, records out.

One response (a complete listing, a status list, an ``operation_id`` follow-up) becomes a
:class:`Listing`: the records that must be diffed, parsed into model values and narrowed by
the source's filters, and the ids of the records whose raw content is what the store holds,
which are **not parsed at all**. The check is cheap: the record's ``operation_id``,
``record_time`` and status are read from the raw object, then a hash of the raw object (its
JSON with sorted keys) is compared with the one in the in-memory index (``known``); only a
mismatch builds model objects.

Each response is checked on its own: an error body, a missing list or a ``count`` larger
than the records returned raises, so the cycle changes nothing. One malformed record is
skipped with a warning naming its id.

Clients that can send query parameters (``fetch_records``, :class:`~notifier.bcs.client.
BcsClient`) are read as a stream; a client that only has ``fetch()`` (a whole decoded body)
is read from that body, and can only give complete listings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from notifier.bcs.errors import json_excerpt
from notifier.bcs.parse import MalformedRecord, parse_record, select, shown_id
from notifier.bcs.sanitize import CONTENT_ERRORS
from notifier.bcs.stream import split_body
from notifier.errors import IncompleteResponse, InvalidResponse
from notifier.model import OperationRecord, PackedJSON, Packer, canonical_json, normalise_status
from notifier.stalls import NewestSamples, Sample, finished_samples

logger = logging.getLogger(__name__)

#: Operation statuses a cycle of incremental polling asks for, one request each.
ACTIVE_QUERIES = ("waiting", "processing")
_FILTER_KEYS = ("blockchain_id", "resource_type", "operation_type")


class RawEntry(Protocol):
    """What the index knows of a stored record (``notifier.store.repository.RawEntry``)."""

    @property
    def record_time(self) -> int: ...

    @property
    def status(self) -> str: ...

    @property
    def raw_hash(self) -> str: ...


class Fetched(Protocol):
    @property
    def body(self) -> Any: ...

    @property
    def request_id(self) -> str | None: ...


class Client(Protocol):
    """What a poll needs of a client: ``fetch()``; ``fetch_records`` where it exists."""

    def fetch(self) -> Fetched: ...


class SourceClient(Client, Protocol):
    """A client as the pipeline holds it, one per source: it fetches through this module
    (never reading a body itself) and is closed when its source goes."""

    def close(self) -> None: ...


class RawRecords(Protocol):
    """One response's records as raw JSON values (``RecordStream`` or a decoded body)."""

    request_id: str | None
    envelope: dict[str, Any]
    records_kind: str
    returned: int

    def records(self) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class Listing:
    """What one response holds, ready for the diff."""

    count: int
    #: records to diff (new or changed), each with the hash of its raw form
    records: tuple[tuple[OperationRecord, str], ...] = ()
    #: admitted records whose raw content is the stored one: not parsed
    unchanged: tuple[str, ...] = ()
    #: operation ids of the records skipped as malformed ("" where the id was unreadable)
    skipped: tuple[str, ...] = ()
    #: every operation id the response listed, admitted by the filters or not
    listed: frozenset[str] = field(default_factory=frozenset)
    request_id: str | None = None
    #: ``slim`` listings: operation id -> (canonical JSON, packed, and its hash) of the full
    #: record, whose entry in ``records`` keeps only the operation's own fields (no steps)
    canonical: Mapping[str, tuple[PackedJSON, str]] = field(default_factory=dict)
    #: the newest ``Date`` of the responses (nanoseconds): the API's clock, for stalls
    server_time_ns: int | None = None
    #: ``slim`` listings: the step durations the full records showed (stripped since), the
    #: newest ``notifier.stalls.MAX_SAMPLES`` of each step
    samples: tuple[Sample, ...] = ()

    @property
    def skipped_unidentified(self) -> bool:
        """A skipped record had no readable id: no absent record may be marked gone."""
        return "" in self.skipped


def raw_hash(raw: Any) -> str:
    """Hash of a raw record as the API sent it (JSON with sorted keys)."""
    try:
        data = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # beyond 64 bits, a lone surrogate, deep nesting: the exact encoder
        try:
            data = json.dumps(
                raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
            ).encode("utf-8", "surrogatepass")
        except (ValueError, RecursionError):
            # no stable form: a digest that matches nothing, so the record is always parsed
            # (and bounded there, notifier.bcs.sanitize) instead of ever being skipped
            return os.urandom(32).hex()
    return hashlib.sha256(data).hexdigest()


class BodyRecords:
    """:class:`RawRecords` over a body that was decoded whole (``fetch()`` clients)."""

    def __init__(self, body: Any, request_id: str | None) -> None:
        if not isinstance(body, Mapping):
            kind = "null" if body is None else type(body).__name__
            raise InvalidResponse(
                f"response body is {kind}, not a JSON object", request_id=request_id
            )
        self.request_id = request_id
        self.envelope, raw, self.records_kind = split_body(dict(body))
        self._list: list[Any] = raw if isinstance(raw, list) else []
        self.returned = len(self._list)

    def records(self) -> Iterator[Any]:
        yield from self._list


def queries_supported(client: object) -> bool:
    """The client can send query parameters (status lists and follow-ups)."""
    return callable(getattr(client, "fetch_records", None))


def fetch_listing(
    client: Client,
    filters: Mapping[str, Sequence[str]],
    params: Sequence[tuple[str, str]] = (),
    *,
    known: Mapping[str, RawEntry] | None = None,
    only: str | None = None,
    slim: bool = False,
) -> Listing:
    """One response of ``client`` (with ``params``) as a :class:`Listing`; ``slim``: see
    :func:`read_listing`."""
    fetch_records = getattr(client, "fetch_records", None)
    if not callable(fetch_records):
        if params:
            raise TypeError(f"{type(client).__name__} cannot send query parameters")
        fetched = client.fetch()
        body = BodyRecords(fetched.body, fetched.request_id)
        read = read_listing(body, filters, known, only=only, slim=slim)
        return replace(read, server_time_ns=getattr(fetched, "server_time_ns", None))
    streamed = fetch_records(
        lambda raw: read_listing(raw, filters, known, only=only, slim=slim), list(params)
    )
    listing: Listing = streamed.value
    return replace(listing, server_time_ns=getattr(streamed, "server_time_ns", None))


def fetch_active(
    client: Client, filters: Mapping[str, Sequence[str]], watched: Sequence[str]
) -> Listing:
    """The short requests of an incremental cycle, merged: the waiting and processing
    lists, then ``?operation_id=X`` for every watched (stored as active) operation that is
    in neither list, to read its terminal state. Any failed request raises: the cycle then
    changes nothing."""
    lists = [
        fetch_listing(client, filters, [("operation_status", status)]) for status in ACTIVE_QUERIES
    ]
    listed = frozenset().union(*(listing.listed for listing in lists))
    follow_ups = [
        fetch_listing(client, filters, [("operation_id", operation_id)], only=operation_id)
        for operation_id in watched
        if operation_id not in listed
    ]
    return merge([*lists, *follow_ups])


def read_listing(
    raw: RawRecords,
    filters: Mapping[str, Sequence[str]],
    known: Mapping[str, RawEntry] | None = None,
    *,
    only: str | None = None,
    slim: bool = False,
) -> Listing:
    """Classify every record of one response (the ``consume`` of a streamed fetch);
    ``only``: keep just this operation (a follow-up whose filter the API ignored); ``slim``:
    encode each record at once and keep only its operation fields (a silent baseline, which
    diffs nothing: memory holds the packed JSON to store and the newest durations of each
    step, not 10,000 step trees)."""
    known = known or {}
    canonical: dict[str, tuple[PackedJSON, str]] = {}
    samples = NewestSamples()
    packer = Packer()
    shared: dict[str, str] = {}
    records: list[tuple[OperationRecord, str]] = []
    unchanged: list[str] = []
    skipped: list[str] = []
    listed: set[str] = set()
    for index, item in enumerate(raw.records()):
        operation_id = _operation_id(item)
        if operation_id and operation_id in listed:
            logger.warning(
                "operation record %s appears twice in one response; keeping the first",
                shown_id(operation_id),
            )
            continue
        if operation_id:
            listed.add(operation_id)
        if only is not None and operation_id != only:
            continue
        if operation_id and _excluded(item, filters):
            continue
        digest = raw_hash(item)
        entry = known.get(operation_id) if operation_id else None
        if entry is not None and entry.raw_hash == digest and _same_head(item, entry):
            unchanged.append(operation_id)
            continue
        try:
            record = parse_record(item)
            if not select([record], filters):
                continue
            if slim:
                data = canonical_json(record.to_dict())
                digest_of_data = hashlib.sha256(data.encode()).hexdigest()
                canonical[record.operation_id] = (packer.pack(data), digest_of_data)
                samples.add(finished_samples(record))  # the baseline teaches usual durations
                record = _slim(record, shared)
        except (MalformedRecord, *CONTENT_ERRORS) as exc:
            # CONTENT_ERRORS: a last guard behind notifier.bcs.sanitize (it cannot be stored)
            logger.warning(
                "skipping malformed operation record %s: %s (request id %s)",
                shown_id(operation_id) if operation_id else f"#{index}",
                exc,
                raw.request_id or "-",
            )
            skipped.append(operation_id)
            continue
        records.append((record, digest))
    count = _checked_count(raw)
    return Listing(
        count=count,
        records=tuple(records),
        unchanged=tuple(unchanged),
        skipped=tuple(skipped),
        listed=frozenset(listed),
        request_id=raw.request_id,
        canonical=canonical,
        samples=samples.samples(),
    )


def _slim(record: OperationRecord, shared: dict[str, str]) -> OperationRecord:
    """``record`` with only the operation's own fields (a silent baseline keeps 10,000 of
    them for its transaction), the values most records share (statuses, types, the
    project, its chains) kept once in ``shared``."""

    def one(value: str) -> str:
        return shared.setdefault(value, value)

    return replace(
        record,
        steps=(),
        message=(),
        cluster=None,
        desc=None,
        status=one(record.status),
        resource_type=one(record.resource_type),
        operation_type=one(record.operation_type),
        domain_id=one(record.domain_id),
        project_id=one(record.project_id),
        blockchain_id=one(record.blockchain_id),
        blockchain_name=one(record.blockchain_name),
    )


def _checked_count(raw: RawRecords) -> int:
    """The response's ``count``, once it is known to describe the records returned."""
    envelope, kind, request_id = raw.envelope, raw.records_kind, raw.request_id
    error = envelope.get("error_code") or envelope.get("error")
    if error is not None and kind == "absent":
        raise InvalidResponse(
            f"an error body came with a success status: {json_excerpt(envelope)}",
            request_id=request_id,
        )
    if kind == "absent" and envelope.get("count") != 0:
        # an empty list must be said, not implied: reading this as "no records" would
        # mark every stored operation gone
        raise InvalidResponse(
            f"response has no operation_records: {json_excerpt(envelope)}", request_id=request_id
        )
    if kind not in ("list", "null", "absent"):
        raise InvalidResponse(f"operation_records is a {kind}, not a list", request_id=request_id)
    count = envelope.get("count")
    if count is None:
        count = raw.returned
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidResponse(f"count is {count!r}, not a whole number", request_id=request_id)
    if count > raw.returned:
        raise IncompleteResponse(
            f"incomplete response: count is {count} but {raw.returned} records were returned",
            request_id=request_id,
        )
    return count


def _operation_id(raw: Any) -> str:
    if isinstance(raw, dict):
        value = raw.get("operation_id")
        if isinstance(value, str):
            return value.strip()
    return ""


def _same_head(raw: dict[str, Any], entry: RawEntry) -> bool:
    """``record_time`` and status as stored (read without building anything)."""
    status = raw.get("operation_status")
    if not isinstance(status, str) or normalise_status(status) != entry.status:
        return False
    return raw.get("record_time") == entry.record_time


def _excluded(raw: Any, filters: Mapping[str, Sequence[str]]) -> bool:
    """True when a filter certainly rejects the raw record (undecidable: parse it)."""
    if not filters or not isinstance(raw, dict):
        return False
    for key in _FILTER_KEYS:
        allowed = filters.get(key)
        if not allowed:
            continue
        value = raw.get(key)
        if key == "operation_type" and isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:02d}"
        if isinstance(value, str) and value not in allowed:
            return True
    return False


def merge(listings: Sequence[Listing]) -> Listing:
    """Several short responses of one cycle as one listing; an operation listed twice (it
    moved between two requests) keeps its latest ``record_time``, later responses winning
    ties."""
    chosen: dict[str, tuple[OperationRecord, str]] = {}
    unchanged: dict[str, None] = {}
    for listing in listings:
        for record, digest in listing.records:
            previous = chosen.get(record.operation_id)
            if previous is None or record.record_time >= previous[0].record_time:
                chosen[record.operation_id] = (record, digest)
        unchanged.update(dict.fromkeys(listing.unchanged))
    return Listing(
        count=sum(listing.count for listing in listings),
        records=tuple(chosen.values()),
        unchanged=tuple(operation_id for operation_id in unchanged if operation_id not in chosen),
        skipped=tuple(item for listing in listings for item in listing.skipped),
        listed=frozenset().union(*(listing.listed for listing in listings)),
        request_id=listings[-1].request_id if listings else None,
        server_time_ns=max(
            (listing.server_time_ns for listing in listings if listing.server_time_ns),
            default=None,
        ),
    )
