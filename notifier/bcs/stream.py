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
one record may take), ``max_body_bytes`` the whole body. A number the C backend cannot read
(beyond 64 bits, thousands of digits) makes the client decode that answer again whole
(``exact_integers``, within ``max_body_bytes``) through
:func:`notifier.bcs.sanitize.decode_json`, which clamps such numbers to the int64 range.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

import ijson

from notifier.bcs.errors import html_excerpt
from notifier.bcs.sanitize import decode_json
from notifier.errors import InvalidResponse
from notifier.text import one_line

#: Bytes read before the ``operation_records`` array must have started (else: decoded whole).
HEAD_LIMIT: Final = 1024 * 1024
#: Bytes of members that may follow the array.
TAIL_BYTES: Final = 64 * 1024
#: Where the top-level array starts (the members before it are ``count`` and the like).
_ARRAY_START: Final = re.compile(rb'"operation_records"\s*:\s*\[')
_ABSENT: Final = object()


def split_body(body: dict[str, Any]) -> tuple[dict[str, Any], Any, str]:
    """A decoded body as (envelope: its members but ``operation_records``, the records value,
    its kind: ``"list"``, ``"null"``, ``"absent"`` or the JSON type it has instead)."""
    envelope = {key: value for key, value in body.items() if key != "operation_records"}
    records = body.get("operation_records", _ABSENT)
    if records is _ABSENT:
        kind = "absent"
    elif records is None:
        kind = "null"
    elif isinstance(records, list):
        kind = "list"
    else:
        kind = type(records).__name__
    return envelope, records, kind


class RecordTooLarge(Exception):
    """One record (or the whole body) passed its cap while being decoded."""

    def __init__(self, limit: int, *, what: str) -> None:
        self.limit = limit
        self.what = what
        super().__init__(f"{what} is larger than {limit} bytes")


#: what the C backend cannot read but the whole-body decoder can (a number beyond 64 bits
#: or of thousands of digits, text that is not strict UTF-8 such as an encoded surrogate)
_DECODE_AGAIN: Final = re.compile(
    r"integer overflow|Unexpected symbol '-?[0-9]|invalid bytes in UTF8 string"
)


#: nesting past this (estimated, see ``RecordStream._check_depth``) is decoded whole
MAX_STREAM_DEPTH: Final = 256
_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")
_DEPTH_STEP: Final = 256


class DecodeWhole(Exception):
    """The C decoder met what it cannot read (see ``_DECODE_AGAIN``): decode the answer
    again whole (``exact_integers``)."""


class RecordStream:
    """The records of one response body, decoded from ``chunks`` as they are read.

    Iterate once over :meth:`records`; afterwards :attr:`envelope` holds the top-level
    members other than ``operation_records`` and :attr:`records_kind` says what
    ``operation_records`` was: ``"list"``, ``"null"``, ``"absent"`` or another JSON kind.
    Raises :class:`~notifier.errors.InvalidResponse` for a body that is not a JSON object,
    :class:`RecordTooLarge` past a cap, :class:`DecodeWhole` (see the module docstring).
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
        #: open brackets minus closed ones so far (an estimate: brackets inside strings count)
        self._depth = 0

    # -- reading ---------------------------------------------------------------------------

    def _next_chunk(self) -> bytes:
        for chunk in self._chunks:
            if not chunk:
                continue
            self.size += len(chunk)
            if self.size > self._max_body:
                raise RecordTooLarge(self._max_body, what="the response")
            if not self._exact:
                self._check_depth(chunk)
            return chunk
        return b""

    def _check_depth(self, chunk: bytes) -> None:
        """Hand nothing deeply nested to the C backend: its memory grows with the square of
        the depth (a prefix string per level). Brackets are counted at C speed over the
        chunk's brackets alone; inside strings they count too, which can only send an
        answer to the whole-body decoder, where deep nesting is bounded exactly."""
        brackets = chunk.translate(None, _NOT_BRACKETS)
        depth = self._depth
        for start in range(0, len(brackets), _DEPTH_STEP):  # the depth within, step by step
            piece = brackets[start : start + _DEPTH_STEP]
            opened = piece.count(b"[") + piece.count(b"{")
            depth = max(0, depth + 2 * opened - len(piece))
            if depth > MAX_STREAM_DEPTH:
                raise DecodeWhole
        self._depth = depth

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
        if self._exact:  # a number the C backend cannot read: the whole answer, bounded
            rest = iter(self._next_chunk, b"")
            yield from self._whole(head + b"".join(rest))
            return
        self.envelope = self._head_members(head[: match.start()])
        self.records_kind = "list"
        self._pending = head
        self._array_start = match.end()
        self._since_record = -self._array_start  # the members before the array are no record
        try:
            for item in ijson.items(self, "operation_records.item", use_float=True):
                self._since_record = 0
                if len(self._recent) > 1:
                    self._recent_start += sum(len(chunk) for chunk in self._recent[:-1])
                    del self._recent[:-1]
                self.returned += 1
                yield item
        except UnicodeDecodeError as exc:
            raise DecodeWhole from exc
        except ijson.JSONError as exc:
            if _DECODE_AGAIN.search(str(exc)):
                raise DecodeWhole from exc
            recent = b"".join(self._recent)[-4096:]
            raise self._invalid(recent, f"{type(exc).__name__}: {exc}") from exc
        self.envelope.update(self._tail_members())

    def _whole(self, body: bytes) -> Iterator[Any]:
        try:
            data = decode_json(body, self.request_id)
        except (ValueError, RecursionError) as exc:
            raise self._invalid(body, f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidResponse(
                f"body is JSON but not an object (a {type(data).__name__})",
                request_id=self.request_id,
            )
        self.envelope, records, self.records_kind = split_body(data)
        if isinstance(records, list):
            self.returned = len(records)
            yield from records

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
