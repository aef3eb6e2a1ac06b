"""Tolerant parsing of operation-record responses into frozen model values (pure, no I/O).

Any map or list may be null or absent, unknown statuses are kept as they come, nanosecond
integers stay exact, and the ``"status": ""`` + ``"detail": "waiting"`` quirk reads as
``waiting``. One malformed record is skipped with a warning naming its ``operation_id``; a
response that is not the documented shape, or whose ``count`` is larger than the records it
returned, raises, so that the cycle changes nothing.

Every value is bounded where it enters (``notifier.bcs.sanitize``): integers to int64, text
without lone surrogates or NULs and at most 16 KiB, free-form maps to a few levels; a record
with such repairs is kept and logged once with what was bounded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from notifier.bcs.errors import json_excerpt
from notifier.bcs.sanitize import (
    MAX_ID,
    MAX_ITEMS,
    MAX_NAME,
    MAX_STATUS,
    bounded_int,
    clean_text,
    clean_value,
    json_int,
    safe_text,
)
from notifier.errors import IncompleteResponse, InvalidResponse
from notifier.model import OPERATION_ID_MAX, OperationRecord, Step, SubStep, normalise_status

logger = logging.getLogger(__name__)


class MalformedRecord(ValueError):
    """One record cannot be read; the rest of the response still can."""


@dataclass(frozen=True, slots=True)
class ParsedResponse:
    count: int
    records: tuple[OperationRecord, ...]
    #: operation ids of the records skipped as malformed ("" where the id itself was unreadable)
    skipped: tuple[str, ...] = ()

    @property
    def skipped_unidentified(self) -> bool:
        """A skipped record had no readable id: no absent record may be marked gone."""
        return "" in self.skipped


def parse_response(body: Any, *, request_id: str | None = None) -> ParsedResponse:
    """Read a whole response body (already decoded from JSON)."""
    if not isinstance(body, Mapping):
        raise InvalidResponse(
            f"response body is {_kind(body)}, not a JSON object", request_id=request_id
        )
    error = body.get("error_code") or body.get("error")
    if error is not None and "operation_records" not in body:
        raise InvalidResponse(
            f"an error body came with a success status: {json_excerpt(body)}", request_id=request_id
        )
    if "operation_records" not in body and body.get("count") != 0:
        # an empty list must be said, not implied: reading this as "no records" would
        # mark every stored operation gone
        raise InvalidResponse(
            f"response has no operation_records: {json_excerpt(body)}", request_id=request_id
        )
    raw_records = body.get("operation_records")
    if raw_records is None:
        raw_records = []
    if not isinstance(raw_records, list):
        raise InvalidResponse(
            f"operation_records is {_kind(raw_records)}, not a list", request_id=request_id
        )
    count = body.get("count", len(raw_records))
    if count is None:
        count = len(raw_records)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InvalidResponse(f"count is {count!r}, not a whole number", request_id=request_id)
    if count > len(raw_records):
        raise IncompleteResponse(
            f"incomplete response: count is {count} but {len(raw_records)} records were returned",
            request_id=request_id,
        )
    records: list[OperationRecord] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_records):
        operation_id = _operation_id(raw)
        try:
            record = parse_record(raw)
        except MalformedRecord as exc:
            logger.warning(
                "skipping malformed operation record %s: %s (request id %s)",
                shown_id(operation_id) if operation_id else f"#{index}",
                exc,
                request_id or "-",
            )
            skipped.append(operation_id)
            continue
        if record.operation_id in seen:
            logger.warning(
                "operation record %s appears twice in one response; keeping the first",
                record.operation_id,
            )
            continue
        seen.add(record.operation_id)
        records.append(record)
    return ParsedResponse(count=count, records=tuple(records), skipped=tuple(skipped))


def _operation_id(raw: Any) -> str:
    if isinstance(raw, Mapping):
        value = raw.get("operation_id")
        if isinstance(value, str):
            return clean_text(value.strip(), "operation_id", [], MAX_ID * 4)
    return ""


def parse_record(raw: Any) -> OperationRecord:
    """One record; values out of bounds are repaired and logged once (one warning)."""
    if not isinstance(raw, Mapping):
        raise MalformedRecord(f"record is {_kind(raw)}, not an object")
    operation_id = _operation_id(raw)
    if not operation_id:
        raise MalformedRecord("operation_id is missing or not a string")
    if len(operation_id) > OPERATION_ID_MAX:
        raise MalformedRecord(
            f"operation_id is {len(operation_id)} characters long (at most {OPERATION_ID_MAX} "
            "are stored)"
        )
    notes: list[str] = []
    operation_type = raw.get("operation_type")
    if isinstance(operation_type, int) and not isinstance(operation_type, bool):
        operation_type = f"{bounded_int(operation_type, 'operation_type', notes):02d}"
    record = OperationRecord(
        operation_id=operation_id,
        status=_status(_text(raw, "operation_status", notes), None, "operation_status", notes),
        resource_type=_text(raw, "resource_type", notes),
        operation_type=_as_text(operation_type, "operation_type", notes),
        domain_id=_text(raw, "domain_id", notes),
        project_id=_text(raw, "project_id", notes),
        blockchain_id=_text(raw, "blockchain_id", notes),
        blockchain_name=_text(raw, "blockchain_name", notes),
        record_time=_timestamp(raw, "record_time", notes),
        message=_messages(raw, "message", notes),
        desc=_optional_text(raw, "desc", notes),
        cluster=_cluster(raw.get("cluster_info"), notes),
        steps=_steps(raw.get("operation_process"), notes),
    )
    if notes:
        shown = list(dict.fromkeys(notes))
        more = f"; and {len(shown) - 5} more" if len(shown) > 5 else ""
        logger.warning(
            "operation record %s: bounded values from the API: %s%s",
            shown_id(operation_id),
            "; ".join(shown[:5]),
            more,
        )
    return record


def shown_id(operation_id: str) -> str:
    """An id as a log line shows it: printable, at most 160 characters."""
    return repr(safe_text(operation_id, 160))[1:-1]


def _status(value: str, detail: str | None, field: str, notes: list[str]) -> str:
    return clean_text(normalise_status(value, detail), field, notes, MAX_STATUS)


def _steps(raw: Any, notes: list[str]) -> tuple[Step, ...]:
    steps = [_step(key, value, notes) for key, value in _entries(raw, "operation_process")]
    steps.sort(key=lambda step: (step.serial_num, step.name))
    return tuple(steps)


def _step(key: str | None, raw: Any, notes: list[str]) -> Step:
    if not isinstance(raw, Mapping):
        raise MalformedRecord(f"step {_shown_key(key)} is {_kind(raw)}, not an object")
    name = _name(key, raw, "step_name", notes)
    detail = _optional_text(raw, "detail", notes)
    sub_steps = [
        _sub_step(sub_key, value, notes) for sub_key, value in _entries(raw.get("sub_steps"), name)
    ]
    sub_steps.sort(key=lambda sub: (sub.serial_num, sub.name))
    return Step(
        name=name,
        status=_status(_text(raw, "status", notes), detail, "step status", notes),
        detail=detail,
        serial_num=_integer(raw, "serial_num", notes),
        sub_steps=tuple(sub_steps),
    )


def _sub_step(key: str | None, raw: Any, notes: list[str]) -> SubStep:
    if not isinstance(raw, Mapping):
        raise MalformedRecord(f"sub-step {_shown_key(key)} is {_kind(raw)}, not an object")
    detail = _optional_text(raw, "detail", notes)
    return SubStep(
        name=_name(key, raw, "substep_name", notes),
        status=_status(_text(raw, "status", notes), detail, "sub-step status", notes),
        detail=detail,
        message=_messages(raw, "message", notes),
        start_time=_timestamp(raw, "start_time", notes),
        end_time=_timestamp(raw, "end_time", notes),
        serial_num=_integer(raw, "serial_num", notes),
    )


def _shown_key(key: str | None) -> str:
    return "None" if key is None else repr(safe_text(key, 80))


def _entries(raw: Any, where: str) -> list[tuple[str | None, Any]]:
    """A name-keyed map (the documented form) or, tolerated, a list of objects."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [(str(key), value) for key, value in raw.items()]
    if isinstance(raw, list):
        return [(None, value) for value in raw]
    raise MalformedRecord(f"{_shown_key(where)} holds {_kind(raw)}, not a map")


def _name(key: str | None, raw: Mapping[str, Any], field: str, notes: list[str]) -> str:
    name = raw.get(field)
    if isinstance(name, str) and name.strip():
        return clean_text(name.strip(), field, notes, MAX_NAME)
    if key:
        return clean_text(key, field, notes, MAX_NAME)
    raise MalformedRecord(f"an entry has no {field}")


def _text(raw: Mapping[str, Any], field: str, notes: list[str]) -> str:
    return _as_text(raw.get(field), field, notes)


def _as_text(value: Any, field: str, notes: list[str]) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value, field, notes)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(bounded_int(value, field, notes))
    if isinstance(value, float):
        return str(value)
    raise MalformedRecord(f"{field} is {_kind(value)}, not a string")


def _optional_text(raw: Mapping[str, Any], field: str, notes: list[str]) -> str | None:
    value = raw.get(field)
    return None if value is None else _as_text(value, field, notes)


def _integer(raw: Mapping[str, Any], field: str, notes: list[str]) -> int:
    value = raw.get(field)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise MalformedRecord(f"{field} is a boolean, not an integer")
    if isinstance(value, int):
        return bounded_int(value, field, notes)
    if isinstance(value, str) and _DECIMAL_RE.fullmatch(value.strip()):
        return bounded_int(_string_int(value.strip()), field, notes)
    if isinstance(value, float) and value.is_integer():
        return bounded_int(int(value), field, notes)
    raise MalformedRecord(f"{field} is {_shown_value(value)}, not an integer")


def _timestamp(raw: Mapping[str, Any], field: str, notes: list[str]) -> int:
    """Nanoseconds since the epoch: a negative time reads as 0 ("not yet")."""
    value = _integer(raw, field, notes)
    if value < 0:
        notes.append(f"{field} {value} is before 1970: read as 0 (not set)")
        return 0
    return value


_DECIMAL_RE = re.compile(r"-?[0-9]+")


def _string_int(text: str) -> int:
    """A decimal string as an int, never past Python's digit limit (clamped instead)."""
    negative = text.startswith("-")
    digits = text.removeprefix("-").lstrip("0") or "0"
    return json_int(f"-{digits}" if negative else digits)


def _shown_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(safe_text(value, 40))
    if isinstance(value, float):
        return repr(value)
    return _kind(value)


def _messages(raw: Mapping[str, Any], field: str, notes: list[str]) -> tuple[str, ...]:
    value = raw.get(field)
    if value is None:
        return ()
    if isinstance(value, str):
        return (clean_text(value, field, notes),) if value else ()
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            notes.append(f"{field} cut from {len(value)} to {MAX_ITEMS} items")
            value = value[:MAX_ITEMS]
        return tuple(_message(item, field, notes) for item in value if item is not None)
    raise MalformedRecord(f"{field} is {_kind(value)}, not a list of strings")


def _message(item: Any, field: str, notes: list[str]) -> str:
    if isinstance(item, str):
        return clean_text(item, field, notes)
    if isinstance(item, bool | float) or not isinstance(item, int):
        if isinstance(item, Mapping | list):
            text = json.dumps(clean_value(item, field, notes), ensure_ascii=False, default=str)
            return clean_text(text, field, notes)
        return clean_text(str(item), field, notes)
    return str(bounded_int(item, field, notes))


def _cluster(value: Any, notes: list[str]) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    cleaned = clean_value(value, "cluster_info", notes)
    return cleaned if isinstance(cleaned, dict) else None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def select(
    records: Sequence[OperationRecord], filters: Mapping[str, Sequence[str]]
) -> list[OperationRecord]:
    """The records every configured filter admits.

    The client sends single-valued filters to the API; a filter with several values is
    not expressible there, so the whole list comes back and is narrowed here. Filtering
    again on single-valued keys is harmless, and guards against an API that ignores one.
    """
    if not filters:
        return list(records)
    return [record for record in records if _admitted(record, filters)]


_FILTER_FIELDS = {
    "blockchain_id": lambda record: record.blockchain_id,
    "resource_type": lambda record: record.resource_type,
    "operation_type": lambda record: record.operation_type,
}


def _admitted(record: OperationRecord, filters: Mapping[str, Sequence[str]]) -> bool:
    for key, allowed in filters.items():
        field = _FILTER_FIELDS.get(key)
        if field is None or not allowed:
            continue
        if field(record) not in allowed:
            return False
    return True
