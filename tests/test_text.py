"""notifier.text.one_line: the one helper behind the render escape, the API error texts and
SourceError.one_line / error_line, with the exact outputs of the copies it replaced."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifier.bcs.errors import MAX_MESSAGE
from notifier.channels.render.escape import one_line as render_one_line
from notifier.errors import SourceError, error_line
from notifier.text import one_line

# -- the old copies, verbatim (the oracles) ------------------------------------------------------

_OLD_RENDER_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_OLD_BCS_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def old_render_one_line(value: object) -> str:  # channels/render/escape.py
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _OLD_RENDER_CONTROL.sub(" ", text)


def old_bcs_one_line(text: str, limit: int = MAX_MESSAGE) -> str:  # bcs/errors.py
    text = " ".join(_OLD_BCS_CONTROL.sub(" ", text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def old_error_one_line(text: str) -> str:  # NotifierError.one_line, error_line
    return " ".join(text.split())


# -- the table -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "limit", "collapse", "expected"),
    [
        ("plain", None, True, "plain"),
        (None, None, True, ""),
        (None, None, False, ""),
        (42, None, True, "42"),
        ("a\r\nb\nc\td", None, False, "a b c d"),
        ("a  \r\n  b", None, False, "a     b"),
        ("a  \r\n  b", None, True, "a b"),
        ("  padded  ", None, False, "  padded  "),
        ("  padded  ", None, True, "padded"),
        ("nul\x00bell\x07del\x7fesc\x1b", None, False, "nul bell del esc "),
        ("nul\x00bell\x07del\x7fesc\x1b", None, True, "nul bell del esc"),
        ("lone\rcarriage", None, True, "lone carriage"),
        ("unicode\u2028line\xa0nbsp", None, True, "unicode line nbsp"),
        ("unicode\u2028line", None, False, "unicode\u2028line"),
        ("x" * 10, 10, True, "x" * 10),
        ("x" * 11, 10, True, "x" * 9 + "…"),
        ("word " * 5, 8, True, "word wo…"),
        ("word     more", 6, True, "word…"),
    ],
    ids=[
        "plain",
        "none",
        "none-kept",
        "number",
        "newlines-tab",
        "crlf-kept-spacing",
        "crlf-collapsed",
        "ends-kept",
        "ends-trimmed",
        "controls-kept-spacing",
        "controls-collapsed",
        "lone-cr",
        "unicode-space-collapsed",
        "unicode-space-not-a-control",
        "at-limit",
        "over-limit",
        "cut-mid-word",
        "cut-before-space",
    ],
)
def test_one_line(value: object, limit: int | None, collapse: bool, expected: str) -> None:
    assert one_line(value, limit, collapse=collapse) == expected


# -- the same outputs as the old copies ----------------------------------------------------------

TEXTS = [
    "",
    "simple text",
    "a\r\nb\rc\nd\te\x0bf\x0cg",
    "\x00\x01\x1c\x1d\x1e\x1f\x7f",
    "  many   spaces\t\ttabs  ",
    "ünïcødé – dash\u2028sep\u3000ideographic",
    "<title>502 Bad Gateway</title>\r\n",
    "x" * 400,
]


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_the_render_escape_keeps_its_output(text: str) -> None:
    assert render_one_line(text) == old_render_one_line(text)
    assert render_one_line(None) == old_render_one_line(None)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
@pytest.mark.parametrize("limit", [MAX_MESSAGE, 160, 64, 2], ids=lambda n: f"limit{n}")
def test_the_api_error_texts_keep_their_output(text: str, limit: int) -> None:
    assert one_line(text, limit) == old_bcs_one_line(text, limit)


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_error_lines_keep_their_output_for_every_text_without_other_controls(text: str) -> None:
    """SourceError.one_line and error_line collapsed whitespace only; they now also turn
    the controls that are not whitespace (NUL, BEL, DEL, ...) into spaces, as the API's
    error texts always did (a NUL cannot be stored in PostgreSQL nor shown in a status)."""
    expected = old_error_one_line(_OLD_BCS_CONTROL.sub(" ", text))
    assert SourceError(text).one_line() == expected
    assert SourceError(text, request_id="req-1").one_line() == f"{expected} (request id req-1)"
    assert error_line(ValueError(text)) == (f"ValueError: {expected}" if expected else "ValueError")
    if not re.search(r"[\x00-\x08\x0e-\x1b\x7f]", text):
        assert SourceError(text).one_line() == old_error_one_line(text)


@given(st.text())
def test_render_one_line_matches_the_old_copy_for_any_text(text: str) -> None:
    assert render_one_line(text) == old_render_one_line(text)


@given(st.text(), st.integers(min_value=2, max_value=400))
def test_api_one_line_matches_the_old_copy_for_any_text(text: str, limit: int) -> None:
    assert one_line(text, limit) == old_bcs_one_line(text, limit)


@given(st.text())
def test_one_line_is_one_line(text: str) -> None:
    for line in (one_line(text), one_line(text, collapse=False)):
        assert not re.search(r"[\x00-\x1f\x7f]", line)
