"""Tolerant parsing of operation-record responses into frozen model values (pure, no I/O).

Any map or list may be null or absent, unknown statuses are kept as they come, nanosecond
integers stay exact, and the ``"status": ""`` + ``"detail": "waiting"`` quirk reads as
``waiting``. One malformed record is skipped with a warning naming its ``operation_id``; a
response that is not the documented shape, or whose ``count`` is larger than the records it
returned, raises, so that the cycle changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
            f"an error body came with a success status: {_excerpt(body)}", request_id=request_id
        )
    if "operation_records" not in body and body.get("count") != 0:
        # an empty list must be said, not implied: reading this as "no records" would
        # mark every stored operation gone
        raise InvalidResponse(
            f"response has no operation_records: {_excerpt(body)}", request_id=request_id
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
                operation_id or f"#{index}",
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


def _excerpt(body: Mapping[str, Any], limit: int = 200) -> str:
    text = " ".join(json.dumps(body, ensure_ascii=False, default=str).split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def _operation_id(raw: Any) -> str:
    if isinstance(raw, Mapping):
        value = raw.get("operation_id")
        if isinstance(value, str):
            return value.strip()
    return ""


def parse_record(raw: Any) -> OperationRecord:
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
    operation_type = raw.get("operation_type")
    if isinstance(operation_type, int) and not isinstance(operation_type, bool):
        operation_type = f"{operation_type:02d}"  # the API's codes keep a leading zero
    status = normalise_status(_text(raw, "operation_status"))
    return OperationRecord(
        operation_id=operation_id,
        status=status,
        resource_type=_text(raw, "resource_type"),
        operation_type=_as_text(operation_type, "operation_type"),
        domain_id=_text(raw, "domain_id"),
        project_id=_text(raw, "project_id"),
        blockchain_id=_text(raw, "blockchain_id"),
        blockchain_name=_text(raw, "blockchain_name"),
        record_time=_integer(raw, "record_time"),
        message=_messages(raw, "message"),
        desc=_optional_text(raw, "desc"),
        cluster=_cluster(raw.get("cluster_info")),
        steps=_steps(raw.get("operation_process")),
    )


def _steps(raw: Any) -> tuple[Step, ...]:
    steps = [_step(key, value) for key, value in _entries(raw, "operation_process")]
    steps.sort(key=lambda step: (step.serial_num, step.name))
    return tuple(steps)


def _step(key: str | None, raw: Any) -> Step:
    if not isinstance(raw, Mapping):
        raise MalformedRecord(f"step {key!r} is {_kind(raw)}, not an object")
    name = _name(key, raw, "step_name")
    detail = _optional_text(raw, "detail")
    sub_steps = [
        _sub_step(sub_key, value) for sub_key, value in _entries(raw.get("sub_steps"), name)
    ]
    sub_steps.sort(key=lambda sub: (sub.serial_num, sub.name))
    return Step(
        name=name,
        status=normalise_status(_text(raw, "status"), detail),
        detail=detail,
        serial_num=_integer(raw, "serial_num"),
        sub_steps=tuple(sub_steps),
    )


def _sub_step(key: str | None, raw: Any) -> SubStep:
    if not isinstance(raw, Mapping):
        raise MalformedRecord(f"sub-step {key!r} is {_kind(raw)}, not an object")
    detail = _optional_text(raw, "detail")
    return SubStep(
        name=_name(key, raw, "substep_name"),
        status=normalise_status(_text(raw, "status"), detail),
        detail=detail,
        message=_messages(raw, "message"),
        start_time=_integer(raw, "start_time"),
        end_time=_integer(raw, "end_time"),
        serial_num=_integer(raw, "serial_num"),
    )


def _entries(raw: Any, where: str) -> list[tuple[str | None, Any]]:
    """A name-keyed map (the documented form) or, tolerated, a list of objects."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return [(str(key), value) for key, value in raw.items()]
    if isinstance(raw, list):
        return [(None, value) for value in raw]
    raise MalformedRecord(f"{where} holds {_kind(raw)}, not a map")


def _name(key: str | None, raw: Mapping[str, Any], field: str) -> str:
    name = raw.get(field)
    if isinstance(name, str) and name.strip():
        return name.strip()
    if key:
        return key
    raise MalformedRecord(f"an entry has no {field}")


def _text(raw: Mapping[str, Any], field: str) -> str:
    return _as_text(raw.get(field), field)


def _as_text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise MalformedRecord(f"{field} is {_kind(value)}, not a string")


def _optional_text(raw: Mapping[str, Any], field: str) -> str | None:
    value = raw.get(field)
    return None if value is None else _as_text(value, field)


def _integer(raw: Mapping[str, Any], field: str) -> int:
    value = raw.get(field)
    if value is None:
        return 0
    if isinstance(value, bool):
        raise MalformedRecord(f"{field} is a boolean, not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise MalformedRecord(f"{field} is {value!r}, not an integer")


def _messages(raw: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = raw.get(field)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list):
        return tuple(str(item) for item in value if item is not None)
    raise MalformedRecord(f"{field} is {_kind(value)}, not a list of strings")


def _cluster(value: Any) -> Mapping[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


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
