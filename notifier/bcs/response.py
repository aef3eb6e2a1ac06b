"""Reading one HTTP response of the BCS API: size caps, body decoding, typed errors.

What :class:`~notifier.bcs.client.BcsClient` does with a response once it is sent, as
functions over the response (no retries, no state): cap its stream at ``max_response_bytes``,
read and decode its body, and turn whatever went wrong into a
:class:`~notifier.errors.SourceError` subclass::

    body over the cap (declared or streamed)    -> ResponseTooLarge  (too_large)
    one record over max_record_bytes            -> ResponseTooLarge  (record_too_large)
    body not JSON, or JSON but not an object    -> InvalidResponse   (parse_body)
    HTTP 3xx / 4xx / 5xx                        -> ApiError and kin   (response_error)
    an httpx exception                          -> TransportError / InvalidResponse, and
                                                   whether a retry may help (transport_error)
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final, Generic, TypeVar

import httpx

from notifier.bcs.errors import REQUEST_ID_HEADER, api_error, html_excerpt
from notifier.bcs.sanitize import decode_json
from notifier.bcs.stream import RecordTooLarge
from notifier.errors import ApiError, InvalidResponse, ResponseTooLarge, SourceError, TransportError
from notifier.redaction import redact
from notifier.text import one_line

T = TypeVar("T")

#: Error bodies are read up to this many bytes (only an excerpt is kept anyway).
ERROR_BODY_LIMIT: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Fetched:
    """One successful answer: the parsed JSON object and where it came from."""

    body: Any
    request_id: str | None
    size: int
    status: int
    #: the response's ``Date`` header in nanoseconds (the API's clock), None without one
    server_time_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Streamed(Generic[T]):
    """One successful streamed answer: what ``consume`` made of its records."""

    value: T
    request_id: str | None
    size: int
    status: int
    #: the response's ``Date`` header in nanoseconds: the API's clock (stall detection)
    server_time_ns: int | None = None


# -- size caps ----------------------------------------------------------------------------------


class BodyTooLarge(Exception):
    """Raised from inside a response stream once it passes the size cap."""

    def __init__(self, limit: int, *, declared: int | None, request_id: str | None) -> None:
        self.limit = limit
        self.declared = declared
        self.request_id = request_id
        super().__init__(limit)


class CappedStream(httpx.SyncByteStream):
    """A response stream that stops once more than ``limit`` raw bytes came in."""

    def __init__(self, stream: httpx.SyncByteStream, limit: int, request_id: str | None) -> None:
        self._stream = stream
        self._limit = limit
        self._request_id = request_id

    def __iter__(self) -> Iterator[bytes]:
        received = 0
        for chunk in self._stream:
            received += len(chunk)
            if received > self._limit:
                raise BodyTooLarge(self._limit, declared=None, request_id=self._request_id)
            yield chunk

    def close(self) -> None:
        self._stream.close()


def cap_response(response: httpx.Response, limit: int) -> None:
    """Bound what ``response`` may bring in (a response hook, IAM answers included).

    A success declaring more than ``limit`` bytes fails at once; any body stops once more
    than ``limit`` raw bytes arrived (an error body at least :data:`ERROR_BODY_LIMIT`: error
    bodies are cut there when read, and a small cap must not turn a retryable 502 page into
    ``ResponseTooLarge``).
    """
    request_id = response.headers.get(REQUEST_ID_HEADER)
    if response.is_success:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise BodyTooLarge(limit, declared=int(declared), request_id=request_id)
    else:
        limit = max(limit, ERROR_BODY_LIMIT)
    if isinstance(response.stream, httpx.SyncByteStream):
        response.stream = CappedStream(response.stream, limit, request_id)


def too_large(exc: BodyTooLarge, host: str) -> ResponseTooLarge:
    """The error for a body that passed ``max_response_bytes``."""
    if exc.declared is not None:
        detail = f"Content-Length {exc.declared} bytes"
    else:
        detail = f"more than {exc.limit} bytes"
    return ResponseTooLarge(
        f"response from {host} is too large ({detail}; max_response_bytes = {exc.limit})",
        request_id=exc.request_id,
    )


def record_too_large(exc: RecordTooLarge, host: str, request_id: str | None) -> ResponseTooLarge:
    """The error for a streamed record (or body) that passed its cap."""
    key = "max_record_bytes" if exc.what == "a record" else "max_response_bytes"
    return ResponseTooLarge(
        f"{exc.what} from {host} is larger than {exc.limit} bytes ({key} = {exc.limit})",
        request_id=request_id,
    )


# -- bodies -------------------------------------------------------------------------------------


def read_body(
    response: httpx.Response, limit: int, request_id: str | None, *, truncate: bool = False
) -> bytes:
    """The decoded body, at most ``limit`` bytes (``truncate``: cut instead of failing)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[: limit - (size - len(chunk))])
                break
            raise BodyTooLarge(limit, declared=None, request_id=request_id)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(body: bytes, response: httpx.Response, request_id: str | None) -> Any:
    """A success body as a JSON object, or ``InvalidResponse``."""
    content_type = response.headers.get("Content-Type", "no Content-Type")
    try:
        data = decode_json(body, request_id)
    except (ValueError, RecursionError) as exc:
        excerpt = html_excerpt(body[:4096].decode("utf-8", errors="replace"), 80)
        detail = f"{type(exc).__name__}: {one_line(str(exc), 120)}"
        raise InvalidResponse(
            f"HTTP {response.status_code} body is not JSON ({content_type}, "
            f"{len(body)} bytes; {detail}){': ' + excerpt if excerpt else ''}",
            request_id=request_id,
        ) from exc
    if not isinstance(data, dict):
        raise InvalidResponse(
            f"HTTP {response.status_code} body is JSON but not an object (a {type(data).__name__})",
            request_id=request_id,
        )
    return data


# -- errors -------------------------------------------------------------------------------------


def response_error(
    response: httpx.Response, body: bytes, *, signed: bool, url: str, secrets: Iterable[str]
) -> ApiError:
    """The typed error for a response that is not a success (a redirect says so)."""
    status = response.status_code
    error = api_error(status, body, response.headers, signed=signed, url=url, secrets=secrets)
    if 300 <= status < 400:
        location = one_line(response.headers.get("Location", "?"), 200)
        error = ApiError(
            status=status,
            code=error.code,
            message=f"unexpected redirect to {location}; check the endpoint",
            request_id=error.request_id,
            url=url,
        )
    return error


def transport_error(
    exc: Exception,
    request_id: str | None,
    *,
    host: str,
    timeout: float,
    secrets: Iterable[str],
) -> tuple[SourceError, bool]:
    """The error for an httpx exception (caused by it), and whether another attempt may help."""
    error, retryable = _map_transport_error(exc, request_id, host, timeout, secrets)
    error.__cause__ = exc
    return error, retryable


def _map_transport_error(
    exc: Exception, request_id: str | None, host: str, timeout: float, secrets: Iterable[str]
) -> tuple[SourceError, bool]:
    name = type(exc).__name__
    reason = one_line(redact(str(exc), secrets), 200) or name
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting to",
            httpx.ReadTimeout: "reading from",
            httpx.WriteTimeout: "writing to",
            httpx.PoolTimeout: "waiting for a connection to",
        }.get(type(exc), "talking to")
        message = f"timed out after {timeout:g} s {phase} {host}"
        return TransportError(message, request_id=request_id), True
    if isinstance(exc, httpx.DecodingError):
        message = f"cannot decode the response from {host}: {reason}"
        return InvalidResponse(message, request_id=request_id), False
    if isinstance(exc, httpx.ConnectError) and caused_by_tls(exc):
        message = f"TLS failure connecting to {host}: {reason}"
        return TransportError(message, request_id=request_id), False
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError):
        message = f"network error talking to {host} ({name}): {reason}"
        return TransportError(message, request_id=request_id), True
    message = f"request to {host} failed ({name}): {reason}"
    return TransportError(message, request_id=request_id), False


def caused_by_tls(exc: BaseException) -> bool:
    """A TLS handshake/verification failure (retrying will not fix a bad certificate)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or "[SSL" in str(current):
            return True
        pending.extend(link for link in (current.__cause__, current.__context__) if link)
    return False


# -- headers ------------------------------------------------------------------------------------


def date_ns(value: str | None) -> int | None:
    """An HTTP ``Date`` header in nanoseconds since the epoch, None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int(moment.timestamp())
    return seconds * 1_000_000_000 if seconds > 0 else None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp() - now
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)
