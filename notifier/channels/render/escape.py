"""Escaping API text for a target's markup (pure): CommonMark, Slack's mrkdwn, HTML, text.

Every string that comes from the API goes through one of these before it reaches a message
body; :func:`shorten` cuts raw text (before escaping) at a word boundary.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from typing import Final

from notifier.text import one_line as text_one_line

_ELLIPSIS: Final = "…"
_MARKDOWN_SPECIAL_RE: Final = re.compile(r"([\\`*_\[\]<>|~#&!])")


def one_line(value: object) -> str:
    """API text as one line: control characters and newlines become spaces, the spacing
    is kept (:func:`notifier.text.one_line` without collapsing)."""
    return text_one_line(value, collapse=False)


def escape_markdown(value: object) -> str:
    """CommonMark-escape API text so it shows literally (one line)."""
    return _MARKDOWN_SPECIAL_RE.sub(r"\\\1", one_line(value))


def escape_html(value: object) -> str:
    return html.escape(one_line(value), quote=True)


def escape_text(value: object) -> str:
    return one_line(value)


_ZWSP: Final = "\u200b"


def escape_slack(value: object) -> str:
    """API text for a Slack target (one line), as Slack mrkdwn that shows it literally
    (``channels.slack`` posts it; the renderer's ``**bold**`` becomes ``*bold*`` there).

    Slack documents only ``&``, ``<`` and ``>`` as characters to escape (as ``&amp;``,
    ``&lt;``, ``&gt;``) and has no backslash escapes, so ``\\*`` would arrive as ``\\*``:

    - ``&``, ``<``, ``>`` become ``&amp;``, ``&lt;``, ``&gt;`` (no ``<!here>``, no link);
    - ``*`` becomes ``∗`` (U+2217) and a backtick ``ˋ`` (U+02CB): Slack would read them as
      bold and code markers and has no way to escape them;
    - ``_`` and ``~`` stay inside a word (Slack formats only at word boundaries); elsewhere a
      zero-width space on both sides keeps them from opening or closing formatting;
    - ``[``, ``]`` and backslashes stay as they are (mrkdwn reads neither).
    """
    text = one_line(value)
    out: list[str] = []
    last = len(text) - 1
    for index, char in enumerate(text):
        if char in _SLACK_ENTITIES:
            out.append(_SLACK_ENTITIES[char])
        elif char == "*":
            out.append("\u2217")
        elif char == "`":
            out.append("\u02cb")
        elif char in "_~":
            before = text[index - 1] if index > 0 else " "
            after = text[index + 1] if index < last else " "
            if before.isalnum() and after.isalnum():
                out.append(char)
            else:
                out.append(_ZWSP + char + _ZWSP)
        else:
            out.append(char)
    return "".join(out)


_SLACK_ENTITIES: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


ESCAPERS: Final[Mapping[str, Callable[[object], str]]] = {
    "markdown": escape_markdown,
    "html": escape_html,
    "text": escape_text,
}


def shorten(value: object, limit: int) -> str:
    """Cut raw text (before escaping) at a word boundary, marking the cut."""
    text = one_line(value).strip()
    if limit <= 0 or len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 1)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + _ELLIPSIS
