"""The one ``one_line``: any text as a single line for a log line, an error, a stored
``last_error``, a chat message or a status line. Pure, no I/O."""

from __future__ import annotations

import re
from typing import Final

#: C0 controls and DEL but tab and newline, which :func:`one_line` replaces first (faster)
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
ELLIPSIS: Final = "…"


def one_line(value: object, limit: int | None = None, *, collapse: bool = True) -> str:
    """``value`` as one line: every control character (a CRLF pair counts as one) becomes a
    space. With ``collapse`` (the default), runs of whitespace become one space and the
    ends are trimmed; without it the spacing stays as it was (rendered API text keeps its
    columns). Longer than ``limit`` characters: cut to ``limit``, ending with "…".
    ``None`` is the empty string."""
    text = "" if value is None else str(value)
    # the common ones by str.replace: faster than the regex on them
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    text = _CONTROL_RE.sub(" ", text)
    if collapse:
        text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + ELLIPSIS
    return text
