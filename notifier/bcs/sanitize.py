"""Bounding every value that comes from the API, where it enters (pure, no I/O).

Whatever a decoder hands over, the values kept from it can always be stored (SQLite and
PostgreSQL), hashed, rendered and sent:

- integers are clamped to the signed 64-bit range the store's ``BIGINT`` columns hold
  (nanosecond timestamps in that range are years 1677-2262, which every calendar shows);
  :func:`json_int` is the ``parse_int`` hook of ``json.loads`` so a number literal of any
  length (also past Python's 4,300-digit limit) is read as a clamped :class:`ClampedInt`
  instead of failing the whole response;
- text loses lone surrogates (``"\\ud800"`` escapes) and NUL characters, each replaced by
  U+FFFD, and is cut at :data:`MAX_TEXT` characters;
- free-form maps (``cluster_info``) are copied to :data:`MAX_DEPTH` levels and
  :data:`MAX_ITEMS` members, with non-finite floats read as null.

Every repair is noted (``notes``) so the parser logs one warning per record naming what was
bounded. A value that cannot be repaired (an ``operation_id`` longer than the store's column)
makes the record malformed: it is skipped like any other malformed record.

Any decoder of operation records (the buffered one in ``bcs.response`` and a streamed one)
uses :func:`json_int` and then ``parse.parse_record``, which calls the functions here.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from notifier.model import INT64_MAX, INT64_MIN, OPERATION_ID_MAX

logger = logging.getLogger(__name__)

#: What encoding or hashing a value that escaped the bounding here could still raise: the
#: last guard of every place that stores a record (it is skipped, never a failed poll).
CONTENT_ERRORS: Final = (ValueError, TypeError, OverflowError, RecursionError, UnicodeError)

#: Characters kept of one string from the API (a 1 MB ``message`` is cut, not stored whole).
MAX_TEXT: Final = 16_384
#: Longest ``operation_id`` the store holds (``VARCHAR(512)`` since migration 0004).
MAX_ID: Final = OPERATION_ID_MAX
#: Longest status kept (a ``Text`` column since migration 0004: bounded, not refused).
MAX_STATUS: Final = 256
#: Longest step or sub-step name kept.
MAX_NAME: Final = 512
#: Nesting kept of a free-form map; deeper members become a short note.
MAX_DEPTH: Final = 8
#: Members kept of one free-form map or list, and messages kept of one ``message`` list.
MAX_ITEMS: Final = 1_000
REPLACEMENT: Final = "\ufffd"
_ELLIPSIS: Final = "…"
_UNSAFE_RE: Final = re.compile("[\ud800-\udfff\x00]")
_DIGITS_SHOWN: Final = 24


class ClampedInt(int):
    """An integer literal outside the int64 range, already clamped by :func:`json_int`."""

    literal: str

    def __new__(cls, value: int, literal: str) -> ClampedInt:
        instance = super().__new__(cls, value)
        instance.literal = literal
        return instance


def json_int(literal: str) -> int:
    """``json.loads(..., parse_int=json_int)``: exact in range, clamped outside it.

    Never calls ``int()`` on a literal too long to be in range, so a 5,000-digit number
    costs nothing and raises nothing.
    """
    digits = literal.lstrip("-")
    if len(digits) <= 18:  # at most 999...9 (18 digits) < 2**63: always in range
        return int(literal)
    if len(digits) <= 19:
        value = int(literal)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    bound = INT64_MIN if literal.startswith("-") else INT64_MAX
    shown = literal if len(literal) <= _DIGITS_SHOWN else f"{literal[:_DIGITS_SHOWN]}…"
    return ClampedInt(bound, f"{shown} ({len(digits)} digits)")


def bounded_int(value: int, field: str, notes: list[str]) -> int:
    """``value`` clamped to int64; a note says so."""
    if isinstance(value, ClampedInt):
        notes.append(f"{field} {value.literal} clamped to {int(value)}")
        return int(value)
    if value > INT64_MAX or value < INT64_MIN:
        bound = INT64_MAX if value > 0 else INT64_MIN
        notes.append(f"{field} ({value.bit_length()}-bit number) clamped to {bound}")
        return bound
    return int(value)


def clean_text(value: str, field: str, notes: list[str], limit: int = MAX_TEXT) -> str:
    """``value`` without lone surrogates or NULs (U+FFFD instead), at most ``limit`` long."""
    if len(value) <= limit and value.isascii() and "\x00" not in value:
        return value  # the usual case, and no surrogate is ASCII
    if len(value) > limit:
        notes.append(f"{field} cut from {len(value)} to {limit} characters")
        value = value[: limit - 1] + _ELLIPSIS
    if _UNSAFE_RE.search(value):
        notes.append(f"{field} had unencodable characters (replaced by U+FFFD)")
        value = _UNSAFE_RE.sub(REPLACEMENT, value)
    return value


def safe_text(value: str, limit: int = MAX_TEXT) -> str:
    """:func:`clean_text` without notes (log lines, fallbacks)."""
    return clean_text(value, "", [], limit)


def clean_value(value: Any, field: str, notes: list[str], depth: int = 0) -> Any:
    """A JSON-ready copy of a free-form value, bounded in depth, size, numbers and text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return bounded_int(value, field, notes)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        notes.append(f"{field} {value!r} read as null")
        return None
    if isinstance(value, str):
        return clean_text(value, field, notes)
    if depth >= MAX_DEPTH and isinstance(value, Mapping | list):
        notes.append(f"{field} nested deeper than {MAX_DEPTH} levels: dropped")
        return f"{_ELLIPSIS} (nested too deep)"
    if isinstance(value, Mapping):
        items = list(value.items())
        if len(items) > MAX_ITEMS:
            notes.append(f"{field} cut from {len(items)} to {MAX_ITEMS} members")
            items = items[:MAX_ITEMS]
        return {
            clean_text(str(key), f"{field} key", notes, MAX_NAME): clean_value(
                member, f"{field}.{safe_text(str(key), 40)}", notes, depth + 1
            )
            for key, member in items
        }
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            notes.append(f"{field} cut from {len(value)} to {MAX_ITEMS} items")
            value = value[:MAX_ITEMS]
        return [clean_value(item, f"{field}[]", notes, depth + 1) for item in value]
    notes.append(f"{field} of type {type(value).__name__} read as null")
    return None


#: JSON nesting kept when a body is too deep for the decoder (records sit at depth 2).
MAX_JSON_DEPTH: Final = 64
_JSON_TOKEN_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def flatten_deep_json(text: str, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, int]:
    """``text`` with every array or object nested deeper than ``max_depth`` replaced by
    ``null``, and how many were replaced.

    The decoder's fallback when a body nests so deep that ``json.loads`` raises
    ``RecursionError``: one record nested thousands deep then costs only that record (its
    parse finds a null where a map should be, and skips it with a warning), not the whole
    response. Strings are skipped whole, so brackets inside them do not count.
    """
    pieces: list[str] = []
    depth = 0
    cut_from = -1  # where the subtree being dropped starts
    kept_to = 0
    replaced = 0
    for match in _JSON_TOKEN_RE.finditer(text):
        lexeme = match.group()
        if lexeme in ("[", "{"):
            depth += 1
            if depth == max_depth + 1 and cut_from < 0:
                cut_from = match.start()
        elif lexeme in ("]", "}"):
            if depth == max_depth + 1 and cut_from >= 0:
                pieces.append(text[kept_to:cut_from])
                pieces.append("null")
                kept_to = match.end()
                cut_from = -1
                replaced += 1
            depth -= 1
    pieces.append(text[kept_to:])
    return "".join(pieces), replaced


def decode_json(body: bytes, request_id: str | None = None) -> Any:
    """JSON with huge number literals clamped (``json_int``); a body nested too deep for the
    decoder is decoded again with the too-deep parts as null, so one such record is skipped
    instead of failing the whole response."""
    try:
        return json.loads(body, parse_int=json_int)
    except RecursionError:
        text, replaced = flatten_deep_json(body.decode("utf-8", errors="replace"))
        logger.warning(
            "the response nests deeper than the decoder allows; %d part(s) nested too deep "
            "read as null (request id %s)",
            replaced,
            request_id or "-",
        )
        return json.loads(text, parse_int=json_int)
