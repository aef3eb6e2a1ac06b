"""Decoding an operation-record response record by record, as its bytes arrive.

A complete listing of a long history is tens of megabytes; decoding it whole holds the body
and every object built from it at once. :class:`RecordStream` hands out the items of the
top-level ``operation_records`` array one at a time (ijson's C backend over the byte chunks),
so memory holds one record, not the listing. The other top-level members (``count``, error
fields) are read from the bytes before the array (the API sends ``count`` first) or, when
they come after it, from the last bytes of the body; :attr:`RecordStream.envelope` has them
once the records are exhausted.

A body without an ``operation_records`` array near its start (an error body, ``"count": 0``
alone, a null list) is small: it is decoded whole, within :data:`HEAD_LIMIT` bytes.

Limits: ``max_record_bytes`` bounds the bytes read while one record is decoded (the memory
one record may take), ``max_body_bytes`` the whole body. Integers beyond 64 bits are decoded
exactly by ijson's pure-Python backend (``exact_integers``), which the client switches to
when the C backend reports an overflow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

import ijson

from notifier.bcs.errors import html_excerpt, one_line
from notifier.errors import InvalidResponse

#: Bytes read before the ``operation_records`` array must have started (else: decoded whole).
HEAD_LIMIT: Final = 1024 * 1024
#: Bytes of members that may follow the array.
TAIL_BYTES: Final = 64 * 1024
#: Where the top-level array starts (the members before it are ``count`` and the like).
_ARRAY_START: Final = re.compile(rb'"operation_records"\s*:\s*\[')
_ABSENT: Final = object()


class RecordTooLarge(Exception):
    """One record (or the whole body) passed its cap while being decoded."""

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.what = what
        super().__init__(f"{what} is larger than {limit} bytes")


class IntegerOverflow(Exception):
    """The C decoder met an integer beyond 64 bits; decode again with exact integers."""


class RecordStream:
    """The records of one response body, decoded from ``chunks`` as they are read.

    Iterate once over :meth:`records`; afterwards :attr:`envelope` holds the top-level
    members other than ``operation_records`` and :attr:`records_kind` says what
    ``operation_records`` was: ``"list"``, ``"null"``, ``"absent"`` or another JSON kind.
    Raises :class:`~notifier.errors.InvalidResponse` for a body that is not a JSON object,
    :class:`RecordTooLarge` past a cap, :class:`IntegerOverflow` (see the module docstring).
    """

    def __init__(
        self,
        chunks: Iterator[bytes],
        *,
        max_record_bytes: int,
        max_body_bytes: int,
        request_id: str | None = None,
        exact_integers: bool = False,
    ) -> None:
        self._chunks = chunks
        self._max_record = max_record_bytes
        self._max_body = max_body_bytes
        self.request_id = request_id
        self._exact = exact_integers
        self._pending = b""
        #: the chunks handed to ijson since the one it was reading at the last record, and
        #: the body offset of the first: the end of the array is in there
        self._recent: list[bytes] = []
        self._recent_start = 0
        self._array_start = 0
        self.size = 0
        self._since_record = 0
        self.envelope: dict[str, Any] = {}
        self.records_kind = "absent"
        self.returned = 0

    # -- reading ---------------------------------------------------------------------------

    def _next_chunk(self) -> bytes:
        for chunk in self._chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self._max_body:
                raise RecordTooLarge(self._max_body, what="the response")
            return chunk
        return b""

    def read(self, size: int = -1) -> bytes:
        """File-like ``read`` for ijson: the pending head first, then the chunks."""
        if size == 0:  # ijson probes the type of the data with read(0)
            return b""
        if self._pending:
            data, self._pending = self._pending, b""
        else:
            data = self._next_chunk()
        if self._since_record > self._max_record:
            raise RecordTooLarge(self._max_record, what="a record")
        self._since_record += len(data)
        if data:
            self._recent.append(data)
        return data

    # -- records ---------------------------------------------------------------------------

    def records(self) -> Iterator[Any]:
        head = b""
        match = None
        while match is None:
            chunk = self._next_chunk()
            if not chunk:
                break
            head += chunk
            match = _ARRAY_START.search(head)
            if match is None and len(head) > HEAD_LIMIT:
                raise self._invalid(
                    head, f"no operation_records list in the first {HEAD_LIMIT} bytes"
                )
        if match is None:
            yield from self._whole(head)
            return
        self.envelope = self._head_members(head[: match.start()])
        self.records_kind = "list"
        self._pending = head
        self._array_start = match.end()
        self._since_record = -self._array_start  # the members before the array are no record
        backend = ijson.get_backend("python") if self._exact else ijson
        try:
            for item in backend.items(self, "operation_records.item", use_float=True):
                self._since_record = 0
                if len(self._recent) > 1:
                    self._recent_start += sum(len(chunk) for chunk in self._recent[:-1])
                    del self._recent[:-1]
                self.returned += 1
                yield item
        except ijson.JSONError as exc:
            if "integer overflow" in str(exc):
                raise IntegerOverflow from exc
            recent = b"".join(self._recent)[-4096:]
            raise self._invalid(recent, f"{type(exc).__name__}: {exc}") from exc
        self.envelope.update(self._tail_members())

    def _whole(self, body: bytes) -> Iterator[Any]:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise self._invalid(body, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidResponse(
                f"body is JSON but not an object (a {type(data).__name__})",
                request_id=self.request_id,
            )
        records = data.pop("operation_records", _ABSENT)
        self.envelope = data
        if records is _ABSENT:
            self.records_kind = "absent"
        elif records is None:
            self.records_kind = "null"
        elif isinstance(records, list):
            self.records_kind = "list"
            self.returned = len(records)
            yield from records
        else:
            self.records_kind = type(records).__name__

    def _head_members(self, head: bytes) -> dict[str, Any]:
        """The members before the array: ``{"count": 3, `` + ``"operation_records": null}``."""
        try:
            members = json.loads(head + b'"operation_records":null}')
        except (ValueError, RecursionError) as exc:
            detail = "operation_records is not a member of the top object"
            raise self._invalid(head, detail) from exc
        if not isinstance(members, dict):
            raise self._invalid(head, "the body is not a JSON object")
        members.pop("operation_records", None)
        return members

    def _tail_members(self) -> dict[str, Any]:
        """The members after the array, read from the bytes of the (valid) body since the
        last record: the first ``]`` after which ``{"operation_records":null`` + the rest
        is an object closes the array (one inside the last record, or before it, leaves
        that record's closing brace unbalanced)."""
        recent = b"".join(self._recent)
        position = max(0, self._array_start - self._recent_start)
        while (position := recent.find(b"]", position)) >= 0:
            position += 1
            rest = recent[position:]
            if len(rest) > TAIL_BYTES:
                continue
            if rest.lstrip()[:1] not in (b",", b"}"):
                continue
            try:
                members = json.loads(b'{"operation_records":null' + rest)
            except (ValueError, RecursionError):
                continue
            if isinstance(members, dict):
                members.pop("operation_records", None)
                return members
        raise self._invalid(recent[-4096:], "cannot read the members that follow operation_records")

    def _invalid(self, body: bytes, detail: str) -> InvalidResponse:
        excerpt = html_excerpt(body[:4096].decode("utf-8", errors="replace"), 80)
        return InvalidResponse(
            f"body is not a valid JSON listing ({self.size} bytes; {one_line(detail, 160)})"
            f"{': ' + excerpt if excerpt else ''}",
            request_id=self.request_id,
        )
