"""Keep secrets of channel URLs out of logs, errors and the database.

apprise's ``url(privacy=True)`` masks passwords and tokens, but not every plugin masks
custom headers (``+Authorization=...``) or query parameters. :func:`mask_url` masks those
too; :class:`Scrubber` removes every secret-looking piece of a raw URL from free text
(an error message a plugin logged, an exception's text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from notifier.redaction import URL_MASK, URL_SECRET_KEY_RE

MASK: Final = URL_MASK
_MIN_SECRET_LENGTH: Final = 4


def _is_secret_key(key: str) -> bool:
    return key.startswith(("+", "-")) or bool(URL_SECRET_KEY_RE.search(key))


def mask_url(url: str) -> str:
    """Mask header, request-parameter and secret-named query values of an apprise URL
    (already in privacy mode)."""
    base, _, query = url.partition("?")
    if not query:
        return url
    pairs = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        secret = _is_secret_key(key) and value and not set(value) <= {"*"}
        shown = MASK if secret else value
        pairs.append(f"{quote(key, safe='+-:')}={quote(shown, safe='*@,')}")
    return f"{base}?{'&'.join(pairs)}"


def describe_unloadable(url: str) -> str:
    """A safe description of a URL apprise could not load: its scheme only (hosts can be
    tokens too, as in ``tgram://<bot token>/``); the key path says which URL it is."""
    match = re.match(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if not match:
        return "a value that is not a URL"
    return f"a {match.group(1).lower()}:// URL"


def _secret_candidates(raw_url: str) -> set[str]:
    parts = urlsplit(raw_url.strip())
    candidates: set[str] = set()
    if parts.hostname:
        candidates.add(parts.hostname)
    if parts.password:
        candidates.add(parts.password)
    if parts.username and parts.password is None:
        candidates.add(parts.username)  # schemas like slack://token@... put tokens there
    for segment in parts.path.split("/"):
        candidates.add(segment)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if _is_secret_key(key):
            candidates.add(value)
    # The netloc without the host can still hide tokens (e.g. "user:token@host").
    expanded = set()
    for value in candidates:
        expanded.add(value)
        expanded.add(unquote(value))
        expanded.add(quote(unquote(value), safe=""))
        # Header values like "Bearer abc123": mask the token part alone too.
        expanded.update(word for word in unquote(value).split() if len(word) >= 8)
    return {value for value in expanded if len(value) >= _MIN_SECRET_LENGTH}


@dataclass(frozen=True)
class Scrubber:
    """Replaces the secrets of one raw URL in text."""

    secrets: tuple[str, ...]

    @classmethod
    def for_url(cls, raw_url: str, public: Iterable[str] = ()) -> Scrubber:
        """``public``: strings known to be safe (the privacy URL, the host)."""
        shown = " ".join(public)
        secrets = {
            value
            for value in _secret_candidates(raw_url)
            if (not shown or value not in shown) and not set(value) <= {"*"}
        }
        return cls(tuple(sorted(secrets, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text
