"""Turn an error response of BCS, IAM or the API gateway into a typed ``ApiError``.

Pure functions, no I/O. Huawei Cloud answers errors in several body shapes; all of them are
read tolerantly::

    {"error_code": "BCS.4001001", "error_msg": "..."}          BCS, APIGW.xxxx, APIG.xxxx, IAM.xxxx
    {"error_code": "BCS.4001001", "error_message": "..."}      some BCS pages
    {"error": {"code": "IAM.0011", "message": "...", "title": "Bad Request"}}   Keystone-style (IAM)
    {"code": "...", "message": "..."}                          other services behind the gateway
    <html>...502 Bad Gateway...</html>                         a proxy's page: a short text excerpt

The status decides the class: 401/403 -> ``AuthError`` (``SignatureRejected`` when the request
was AK/SK-signed and got a 401), 429 -> ``ThrottledError``, anything else -> ``ApiError``.
Every message is one line, length-capped, and scrubbed of the secrets the caller names and of
anything that looks like a signature or an IAM token, so it can go into logs and ``status``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, Final

from notifier.errors import ApiError, AuthError, SignatureRejected, ThrottledError
from notifier.redaction import REDACTED, SECRET_HEADER_LINE_RE, redact
from notifier.text import one_line

#: Longest server message kept in an error (characters); longer ones end with "…".
MAX_MESSAGE: Final = 300
#: Longest excerpt of a non-JSON body (an HTML error page) kept in an error.
MAX_EXCERPT: Final = 160
#: Longest canonical-request echo kept for the signature-rejection log line.
MAX_ECHO: Final = 2000

REQUEST_ID_HEADER: Final = "X-Request-Id"
_DROP_BLOCKS_RE: Final = re.compile(
    r"<(script|style)\b[^>]*>.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL
)
_TAG_RE: Final = re.compile(r"<[^>]*>")
_TITLE_RE: Final = re.compile(r"<title\b[^>]*>(.*?)</title\s*>", re.IGNORECASE | re.DOTALL)
_ECHO_KEY_RE: Final = re.compile(r"canonical[_-]?(request|string)", re.IGNORECASE)
_ECHO_TEXT_RE: Final = re.compile(
    r"canonical[ _-]?(?:request|string)[^'\"`]*?['\"`](.+?)['\"`]", re.IGNORECASE | re.DOTALL
)


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts and ``httpx.Headers``."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def html_excerpt(text: str, limit: int = MAX_EXCERPT) -> str:
    """A short, tag-free excerpt of an HTML (or plain-text) page."""
    title_match = _TITLE_RE.search(text)
    title = (
        one_line(html.unescape(_TAG_RE.sub(" ", title_match.group(1))), limit)
        if title_match
        else ""
    )
    stripped = _DROP_BLOCKS_RE.sub(" ", text)
    stripped = _TAG_RE.sub(" ", stripped)
    # a tag cut off by a truncated page
    stripped = stripped.split("<", 1)[0] if "<" in stripped and ">" not in stripped else stripped
    words = one_line(html.unescape(stripped), 10 * limit)
    # "502 Bad Gateway 502 Bad Gateway nginx": the title usually repeats as the heading
    if title and words.startswith(f"{title} {title}"):
        words = words[len(title) + 1 :]
    return one_line(words, limit)


def json_excerpt(body: Mapping[str, Any], limit: int = 200) -> str:
    """A decoded body as one line of compact JSON, cut at ``limit`` characters."""
    text = " ".join(json.dumps(body, ensure_ascii=False, default=str).split())
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def json_or_none(body: bytes) -> Any:
    """The JSON value of an error or token body, or ``None`` when it is not JSON (records
    are decoded by :func:`notifier.bcs.sanitize.decode_json`, which bounds what it reads)."""
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _first(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = data.get(key)
        if value not in (None, "", {}, []):
            return value
    return None


def error_fields(body: Any) -> tuple[str | None, str | None, str | None]:
    """``(code, message, request_id)`` from a decoded error body of any known shape."""
    if not isinstance(body, Mapping):
        return None, None, None
    code = _text(_first(body, "error_code", "errorCode", "code"))
    message = _text(_first(body, "error_msg", "error_message", "errorMsg", "message", "msg"))
    request_id = _text(_first(body, "request_id", "requestId"))
    nested = body.get("error")
    if isinstance(nested, Mapping):
        # Keystone style: {"error": {"code": 401 | "IAM.0011", "message": ..., "title": ...}}
        nested_code = nested.get("code")
        if code is None and isinstance(nested_code, str) and not nested_code.isdigit():
            code = nested_code
        nested_message = _text(_first(nested, "message", "error_msg", "msg"))
        title = _text(nested.get("title"))
        if message is None:
            if nested_message and title and title.lower() not in nested_message.lower():
                message = f"{title}: {nested_message}"
            else:
                message = nested_message or title
        if request_id is None:
            request_id = _text(_first(nested, "request_id", "requestId"))
    elif isinstance(nested, str) and message is None:
        message = nested
    return code, message, request_id


def signature_echo(body: bytes, secrets: Iterable[str] = ()) -> str | None:
    """The gateway's canonical-request echo in a signature-rejection body, redacted.

    Some gateways answer a bad signature with the canonical request they computed (a JSON
    field named like ``canonical_request`` / ``CanonicalRequest``, or a quoted block after
    "canonical request" / "canonical string" in the message). Comparing it with ours shows
    what differed. Header lines carrying credentials and any signature are blanked out.
    """
    found: str | None = None
    decoded = json_or_none(body)
    if isinstance(decoded, Mapping):
        found = _find_echo(decoded)
    if found is None:
        text = body.decode("utf-8", errors="replace")
        match = _ECHO_TEXT_RE.search(text)
        if match:
            found = match.group(1).replace("\\n", "\n")
    if not found:
        return None
    found = SECRET_HEADER_LINE_RE.sub(rf"\g<1>{REDACTED}", found)
    found = redact(found, secrets)
    return found[:MAX_ECHO]


def _find_echo(data: Mapping[str, Any], depth: int = 0) -> str | None:
    for key, value in data.items():
        if isinstance(value, str) and _ECHO_KEY_RE.search(str(key)):
            return value
        if isinstance(value, Mapping) and depth < 3:
            nested = _find_echo(value, depth + 1)
            if nested is not None:
                return nested
    for value in data.values():
        if isinstance(value, str):
            match = _ECHO_TEXT_RE.search(value)
            if match:
                return match.group(1)
    return None


def body_message(body: bytes, decoded: Any = None) -> tuple[str | None, str, str | None]:
    """``(code, message, request_id)`` from raw error-body bytes of any shape."""
    if decoded is None:
        decoded = json_or_none(body)
    code, message, request_id = error_fields(decoded)
    if message is None and code is None:
        if isinstance(decoded, Mapping | list):
            # JSON we do not know: a compact excerpt is still the best clue
            message = json.dumps(decoded, ensure_ascii=False, separators=(",", ":"))
            message = one_line(message, MAX_EXCERPT)
        elif isinstance(decoded, str):
            message = one_line(decoded, MAX_EXCERPT)
        else:
            message = html_excerpt(body.decode("utf-8", errors="replace"))
    return code, message or "", request_id


def api_error(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    *,
    signed: bool = False,
    url: str | None = None,
    secrets: Iterable[str] = (),
    context: str | None = None,
) -> ApiError:
    """The typed error for an error response.

    ``status`` and raw ``body`` bytes of the response, its ``headers`` (for ``X-Request-Id``;
    a ``request_id`` in the body is used when the header is missing). ``signed``: the request
    carried an AK/SK signature, so a 401 means the signature (or key) was refused.
    ``secrets``: values that must never appear in the message (tokens, keys, passwords).
    ``context``: a short prefix naming the call, e.g. ``"IAM token request"``.
    """
    code, message, body_request_id = body_message(body)
    secrets = tuple(secrets)
    message = one_line(redact(message, secrets), MAX_MESSAGE)
    if not message:
        try:
            message = HTTPStatus(status).phrase
        except ValueError:
            message = ""
    if context:
        message = f"{context}: {message}" if message else context
    code = one_line(redact(code, secrets), 64) if code else None
    request_id = header(headers, REQUEST_ID_HEADER) or body_request_id
    request_id = one_line(request_id, 128) if request_id else None
    cls: type[ApiError]
    if status == 401 and signed:
        cls = SignatureRejected
    elif status in (401, 403):
        cls = AuthError
    elif status == 429:
        cls = ThrottledError
    else:
        cls = ApiError
    return cls(status=status, code=code, message=message, request_id=request_id, url=url)
