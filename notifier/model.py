"""Plain frozen values that flow through the pipeline: records, steps, events.

Nothing here does I/O or imports httpx, SQLAlchemy, apprise or click.
Timestamps from the API are nanoseconds since the epoch (UTC) and stay ``int``;
``0`` means "not yet".
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

#: Operation statuses the API documents; unknown future values are kept as they come.
KNOWN_STATUSES = frozenset({"waiting", "processing", "finished", "failed", "stop"})
TERMINAL_STATUSES = frozenset({"finished", "failed", "stop"})
ACTIVE_STATUSES = frozenset({"waiting", "processing"})
#: The longest operation id stored (a key column); a record with a longer one is skipped.
OPERATION_ID_MAX = 512

OPERATION_TYPE_NAMES: Mapping[str, str] = {
    "99": "OpCreate",
    "00": "OpDelete",
    "01": "OpUpgrade",
    "91": "OpUpgradeRb",
    "02": "OpAddOrg",
    "03": "OpScaleOrg",
    "04": "OpJoinChannel",
    "05": "OpJoinUnion",
}

RESOURCE_TYPE_NAMES: Mapping[str, str] = {
    "BCSSVC01": "BCS",
    "BCSSVC02": "UGBaaS",
    "PLUGIN01": "RESTful API add-on",
    "PLUGIN02": "trusted computing add-on",
    "PLUGIN03": "light-node add-on",
}


class EventType(StrEnum):
    OPERATION_CREATED = "operation.created"
    OPERATION_STATUS_CHANGED = "operation.status_changed"
    STEP_CREATED = "step.created"
    STEP_STATUS_CHANGED = "step.status_changed"
    SUBSTEP_CREATED = "substep.created"
    SUBSTEP_STATUS_CHANGED = "substep.status_changed"
    SOURCE_UNREACHABLE = "source.unreachable"
    SOURCE_RECOVERED = "source.recovered"
    STEP_STALLED = "step.stalled"
    SUBSTEP_STALLED = "substep.stalled"


#: The event types of a step or sub-step processing far longer than it usually does.
STALL_EVENT_TYPES = frozenset({EventType.STEP_STALLED, EventType.SUBSTEP_STALLED})


def operation_type_name(operation_type: str) -> str:
    return OPERATION_TYPE_NAMES.get(operation_type, operation_type or "unknown")


def normalise_status(status: str | None, detail: str | None = None) -> str:
    """Lower-case and trim; an empty status whose detail is a status word reads as it."""
    value = (status or "").strip().lower()
    if not value:
        hint = (detail or "").strip().lower()
        if hint in KNOWN_STATUSES:
            return hint
    return value


#: The range of the store's integer columns; every integer from the API is clamped to it.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The latest instant shown (a day before the calendar ends, so any time zone can show it).
#: Later values (only events stored by older versions can hold them: the parser clamps to
#: int64, year 2262) are shown as this instant instead of failing to render.
MAX_SHOWN_NS = int((datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH).total_seconds()) * 1_000_000_000


def shown_ns(nanoseconds: object) -> int:
    """A stored nanosecond time made safe to render: 0 ("not yet") unless a positive int,
    at most :data:`MAX_SHOWN_NS`."""
    if isinstance(nanoseconds, bool) or not isinstance(nanoseconds, int) or nanoseconds <= 0:
        return 0
    return min(nanoseconds, MAX_SHOWN_NS)


def ns_to_datetime(nanoseconds: int) -> datetime | None:
    """Nanoseconds since the epoch to an aware UTC datetime (microsecond precision).

    Never fails: values past year 9999 show as the last day of the calendar."""
    nanoseconds = shown_ns(nanoseconds)
    if nanoseconds <= 0:
        return None
    seconds, remainder = divmod(nanoseconds, 1_000_000_000)
    return _EPOCH + timedelta(seconds=seconds, microseconds=remainder // 1000)


def ns_to_rfc3339(nanoseconds: int) -> str | None:
    """Nanoseconds to RFC 3339 UTC, keeping all nine fractional digits (never fails)."""
    nanoseconds = shown_ns(nanoseconds)
    if nanoseconds <= 0:
        return None
    seconds, remainder = divmod(nanoseconds, 1_000_000_000)
    base = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{remainder:09d}Z"


def stored_int(value: object) -> int:
    """An integer read back from stored JSON, clamped to int64 like the parser clamps what
    the API sends: 0 for anything that is not a whole number (stored by an older version or
    edited by hand), never an exception."""
    number = 0
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and len(value) < 40:
        try:
            number = int(value)
        except ValueError:
            return 0
    return max(INT64_MIN, min(INT64_MAX, number))


@dataclass(frozen=True, slots=True)
class SubStep:
    name: str
    status: str
    detail: str | None = None
    message: tuple[str, ...] = ()
    start_time: int = 0
    end_time: int = 0
    serial_num: int = 0


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    status: str
    detail: str | None = None
    serial_num: int = 0
    sub_steps: tuple[SubStep, ...] = ()

    def sub_step(self, name: str) -> SubStep | None:
        for sub_step in self.sub_steps:
            if sub_step.name == name:
                return sub_step
        return None


@dataclass(frozen=True, slots=True)
class OperationRecord:
    """One operation record, normalised: statuses lower-cased, maps ordered by serial_num."""

    operation_id: str
    status: str
    resource_type: str = ""
    operation_type: str = ""
    domain_id: str = ""
    project_id: str = ""
    blockchain_id: str = ""
    blockchain_name: str = ""
    record_time: int = 0
    message: tuple[str, ...] = ()
    desc: str | None = None
    cluster: Mapping[str, Any] | None = field(default=None, hash=False, compare=True)
    steps: tuple[Step, ...] = ()

    @property
    def operation_type_name(self) -> str:
        return operation_type_name(self.operation_type)

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def step(self, name: str) -> Step | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def summary(self) -> dict[str, Any]:
        """The operation fields every event carries (``data.operation`` in a CloudEvent)."""
        return {
            "operation_id": self.operation_id,
            "resource_type": self.resource_type,
            "operation_type": self.operation_type,
            "operation_type_name": self.operation_type_name,
            "blockchain_id": self.blockchain_id,
            "blockchain_name": self.blockchain_name,
            "status": self.status,
            "project_id": self.project_id,
            "domain_id": self.domain_id,
            "record_time": self.record_time,
            "desc": self.desc,
            "message": list(self.message),
        }

    def to_dict(self) -> dict[str, Any]:
        """Normalised JSON-ready form (the stored snapshot)."""
        return {
            "operation_id": self.operation_id,
            "status": self.status,
            "resource_type": self.resource_type,
            "operation_type": self.operation_type,
            "domain_id": self.domain_id,
            "project_id": self.project_id,
            "blockchain_id": self.blockchain_id,
            "blockchain_name": self.blockchain_name,
            "record_time": self.record_time,
            "message": list(self.message),
            "desc": self.desc,
            "cluster": dict(self.cluster) if self.cluster is not None else None,
            "steps": [
                {
                    "name": step.name,
                    "status": step.status,
                    "detail": step.detail,
                    "serial_num": step.serial_num,
                    "sub_steps": [
                        {
                            "name": sub.name,
                            "status": sub.status,
                            "detail": sub.detail,
                            "message": list(sub.message),
                            "start_time": sub.start_time,
                            "end_time": sub.end_time,
                            "serial_num": sub.serial_num,
                        }
                        for sub in step.sub_steps
                    ],
                }
                for step in self.steps
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperationRecord:
        """Inverse of :meth:`to_dict` (reads stored snapshots)."""
        return cls(
            operation_id=data["operation_id"],
            status=data["status"],
            resource_type=data.get("resource_type", ""),
            operation_type=data.get("operation_type", ""),
            domain_id=data.get("domain_id", ""),
            project_id=data.get("project_id", ""),
            blockchain_id=data.get("blockchain_id", ""),
            blockchain_name=data.get("blockchain_name", ""),
            record_time=stored_int(data.get("record_time", 0)),
            message=tuple(data.get("message") or ()),
            desc=data.get("desc"),
            cluster=data.get("cluster"),
            steps=tuple(
                Step(
                    name=step["name"],
                    status=step["status"],
                    detail=step.get("detail"),
                    serial_num=stored_int(step.get("serial_num", 0)),
                    sub_steps=tuple(
                        SubStep(
                            name=sub["name"],
                            status=sub["status"],
                            detail=sub.get("detail"),
                            message=tuple(sub.get("message") or ()),
                            start_time=stored_int(sub.get("start_time", 0)),
                            end_time=stored_int(sub.get("end_time", 0)),
                            serial_num=stored_int(sub.get("serial_num", 0)),
                        )
                        for sub in step.get("sub_steps", ())
                    ),
                )
                for step in data.get("steps", ())
            ),
        )

    def content_hash(self) -> str:
        """sha256 of the canonical JSON form: equal hashes mean nothing to store."""
        return content_hash(self.to_dict())


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PackedJSON:
    """A canonical JSON text kept zlib-compressed until it is stored: a silent baseline
    holds every record of a long history for one transaction (10,000 records of 4.5 KB are
    45 MB as text, under 3 MB packed). ``zdict``: the preset dictionary it was packed with
    (shared by a :class:`Packer`'s texts)."""

    blob: bytes
    zdict: bytes = b""

    def text(self) -> str:
        unpack = zlib.decompressobj(zdict=self.zdict) if self.zdict else zlib.decompressobj()
        return (unpack.decompress(self.blob) + unpack.flush()).decode()


class Packer:
    """Packs the records of one listing with the first one as a preset dictionary: records
    share their keys and most values, so each packs to a few hundred bytes."""

    def __init__(self) -> None:
        self._zdict = b""

    def pack(self, text: str) -> PackedJSON:
        data = text.encode()
        if not self._zdict:
            self._zdict = data[-32_768:]  # zlib's window: a longer dictionary is not used
            return PackedJSON(zlib.compress(data, 1))
        pack = zlib.compressobj(1, zdict=self._zdict)
        return PackedJSON(pack.compress(data) + pack.flush(), self._zdict)


def json_text(data: str | PackedJSON) -> str:
    """The JSON text of ``data``, unpacked when packed."""
    return data if isinstance(data, str) else data.text()


def event_id(
    source: str,
    operation_id: str,
    step: str | None,
    substep: str | None,
    from_status: str | None,
    to_status: str | None,
    record_time: int,
) -> str:
    """Stable id of one observed transition: same inputs, same id, across restarts."""
    parts = [source, operation_id, step or "", substep or "", from_status or "", to_status or ""]
    parts.append(str(record_time))
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"evt_{digest[:32]}"


@dataclass(frozen=True, slots=True)
class StallFacts:
    """Why a ``*.stalled`` event fired (seconds on the API's clock)."""

    elapsed_seconds: float
    threshold_seconds: float
    p95_seconds: float
    samples: int
    #: 0: the alert; 1, 2: the reminders at 2x and 4x the threshold
    reminder: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "elapsed_seconds": self.elapsed_seconds,
            "threshold_seconds": self.threshold_seconds,
            "p95_seconds": self.p95_seconds,
            "samples": self.samples,
            "reminder": self.reminder,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StallFacts:
        return cls(
            elapsed_seconds=float(data["elapsed_seconds"]),
            threshold_seconds=float(data["threshold_seconds"]),
            p95_seconds=float(data["p95_seconds"]),
            samples=int(data["samples"]),
            reminder=int(data.get("reminder") or 0),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One change observed on a source (or a change of the source's health)."""

    id: str
    type: EventType
    source: str
    operation_id: str
    record_time: int
    operation: Mapping[str, Any] = field(default_factory=dict, hash=False)
    step: str | None = None
    substep: str | None = None
    from_status: str | None = None
    to_status: str | None = None
    detail: str | None = None
    message: tuple[str, ...] = ()
    started_at: int = 0
    ended_at: int = 0
    error: str | None = None
    stall: StallFacts | None = None

    def data(self) -> dict[str, Any]:
        """The ``data`` member of the CloudEvent for this event."""
        data: dict[str, Any] = {
            "operation": dict(self.operation),
            "step": self.step,
            "substep": self.substep,
            "from": self.from_status,
            "to": self.to_status,
            "detail": self.detail,
            "message": list(self.message),
            "started_at": ns_to_rfc3339(self.started_at),
            "ended_at": ns_to_rfc3339(self.ended_at),
        }
        if self.error is not None:
            data["error"] = self.error
        if self.stall is not None:
            data.update(self.stall.to_dict())
        return data

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in the events table."""
        return {
            "id": self.id,
            "type": str(self.type),
            "source": self.source,
            "operation_id": self.operation_id,
            "record_time": self.record_time,
            "operation": dict(self.operation),
            "step": self.step,
            "substep": self.substep,
            "from": self.from_status,
            "to": self.to_status,
            "detail": self.detail,
            "message": list(self.message),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": self.error,
        } | ({"stall": self.stall.to_dict()} if self.stall is not None else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        return cls(
            id=data["id"],
            type=EventType(data["type"]),
            source=data["source"],
            operation_id=data["operation_id"],
            record_time=stored_int(data["record_time"]),
            operation=_mapping(data.get("operation")),
            step=data.get("step"),
            substep=data.get("substep"),
            from_status=data.get("from"),
            to_status=data.get("to"),
            detail=data.get("detail"),
            message=tuple(data.get("message") or ()),
            started_at=stored_int(data.get("started_at") or 0),
            ended_at=stored_int(data.get("ended_at") or 0),
            error=data.get("error"),
            stall=StallFacts.from_dict(data["stall"]) if data.get("stall") else None,
        )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def cloudevent(event: Event) -> dict[str, Any]:
    """The CloudEvents 1.0 document for one event (webhooks and ``--json`` output)."""
    time = ns_to_rfc3339(event.record_time)
    if time is None:
        time = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "specversion": "1.0",
        "id": event.id,
        "type": f"bcs_notifier.{event.type}",
        "source": f"bcs-notifier/{event.source}",
        "subject": event.operation_id or event.source,
        "time": time,
        "datacontenttype": "application/json",
        "data": event.data(),
    }


_UNENCODABLE_RE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """``text`` with any lone surrogate replaced by U+FFFD: always encodes as UTF-8."""
    return _UNENCODABLE_RE.sub("\ufffd", text)


def event_body(event: Event) -> str:
    """The CloudEvent of ``event`` as compact JSON text that always encodes as UTF-8 (a
    webhook body, a ``--json`` line)."""
    document = cloudevent(event)
    return encodable(json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str))


def describe(event: Event) -> str:
    """One line for terminals and logs: time, source, operation, what moved."""
    when = ns_to_rfc3339(event.record_time) or "-"
    where = " / ".join(part for part in (event.step, event.substep) if part)
    if event.type in (EventType.SOURCE_UNREACHABLE, EventType.SOURCE_RECOVERED):
        what = event.error or ""
    elif event.stall is not None:
        stall = event.stall
        what = (
            f"processing for {stall.elapsed_seconds:g} s (p95 {stall.p95_seconds:g} s of "
            f"{stall.samples}, threshold {stall.threshold_seconds:g} s)"
        )
    elif event.from_status is None:
        what = f"-> {event.to_status or '(none)'}"
    else:
        what = f"{event.from_status or '(none)'} -> {event.to_status or '(none)'}"
    subject = event.operation_id or "-"
    parts = [when, event.source, subject, str(event.type)]
    if where:
        parts.append(f"[{where}]")
    if what:
        parts.append(what)
    return encodable(" ".join(str(part) for part in parts))
