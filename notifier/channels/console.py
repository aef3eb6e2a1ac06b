"""The ``console://`` apprise schema: print what a chat user would see.

``console://`` (or ``console://stdout``) writes to standard output, ``console://stderr`` to
standard error. ``?format=text`` (the default) prints the plain-text rendering,
``?format=markdown`` the Markdown a chat target gets. Used by ``bcs-notifier demo`` and handy
for trying a configuration in a terminal.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any, Final, TextIO

from apprise import NotifyFormat, NotifyType
from apprise.plugins.base import NotifyBase

_LOCK = threading.Lock()
_STREAMS = ("stdout", "stderr")

#: Plain stand-ins for what the messages use, on a stream whose encoding cannot show it
#: (``PYTHONIOENCODING=latin-1``, an ASCII terminal); anything else becomes ``?``.
PLAIN_SYMBOLS: Final[Mapping[str, str]] = {
    "✅": "[ok]",
    "❌": "[x]",
    "⏹": "[stop]",
    "🔄": "[..]",
    "⏳": "[wait]",
    "⚪": "[ ]",
    "⚠": "[!]",
    "❔": "[?]",
    "\ufe0f": "",  # the variation selector after ⏹ and ⚠
    "→": "->",
    "›": ">",
    "·": "-",
    "…": "...",
    "—": "-",
    "–": "-",
    "•": "*",
}


def printable(text: str, encoding: str | None) -> str:
    """``text`` as ``encoding`` can write it: unchanged when it can, else every character
    it cannot show replaced by its plain stand-in (so a delivery never dies on a symbol)."""
    if not encoding:
        return text
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        pass
    except LookupError:  # an encoding Python does not know: let the stream decide
        return text
    else:
        return text
    plain = []
    for character in text:
        try:
            character.encode(encoding)
        except UnicodeEncodeError:
            plain.append(PLAIN_SYMBOLS.get(character, "?"))
        else:
            plain.append(character)
    return "".join(plain)


class NotifyConsole(NotifyBase):
    service_name = "Console (bcs-notifier)"
    protocol = "console"
    secure_protocol = ()
    category = "custom"
    request_rate_per_sec = 0
    notify_format = (NotifyFormat.TEXT, NotifyFormat.MARKDOWN)
    title_maxlen = 250
    body_maxlen = 1024 * 1024
    templates = ("{schema}://", "{schema}://{host}")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        stream = (self.host or "stdout").lower()
        if stream not in _STREAMS:
            raise TypeError(f"console stream must be stdout or stderr, not {stream!r}")
        self.stream_name = stream

    def _stream(self) -> TextIO:
        # Looked up at send time so redirected streams (tests, the demo) are honoured.
        return sys.stdout if self.stream_name == "stdout" else sys.stderr

    def send(
        self,
        body: str,
        title: str = "",
        notify_type: Any = NotifyType.INFO,
        **kwargs: Any,
    ) -> bool:
        if self.resolve_format(kwargs.get("body_format")) == NotifyFormat.MARKDOWN:
            heading = f"## {title}" if title else ""
        else:
            heading = f"{title}\n{'=' * min(len(title), 72)}" if title else ""
        text = "\n".join(part for part in (heading, body) if part)
        stream = self._stream()
        text = printable(text, getattr(stream, "encoding", None))
        with _LOCK:
            stream.write(text.rstrip("\n") + "\n\n")
            stream.flush()
        return True

    def url_identifier(self) -> tuple[Any, ...]:
        return (self.protocol, self.stream_name)

    def url(self, privacy: bool = False, *args: Any, **kwargs: Any) -> str:
        params = self.url_parameters(privacy=privacy, *args, **kwargs)  # noqa: B026
        query = f"?{self.urlencode(params)}" if params else ""
        host = "" if self.stream_name == "stdout" else self.stream_name
        return f"{self.protocol}://{host}{query}"

    @staticmethod
    def parse_url(url: str) -> dict[str, Any] | None:
        results: dict[str, Any] | None = NotifyBase.parse_url(url, verify_host=False)
        return results
