"""The one error tree of bcs-notifier.

Every error the package raises on purpose derives from ``NotifierError``; lower-level
errors (httpx, SQLAlchemy, apprise, OS) are mapped once, where they cross into the
package, with ``raise ... from exc``::

    NotifierError
    ├── ConfigError                 the configuration is invalid (exit 78)
    ├── SourceError                 polling one source failed; no state changes
    │   ├── TransportError          connect/read failure or timeout after retries
    │   ├── ApiError                the API answered with an error status
    │   │   ├── AuthError           401/403: credentials rejected or expired
    │   │   │   └── SignatureRejected   AK/SK signature refused: never retry blindly
    │   │   └── ThrottledError      429 after the retries of one cycle
    │   ├── InvalidResponse         the body is not the documented JSON shape
    │   │   └── IncompleteResponse  ``count`` larger than the records returned
    │   └── ResponseTooLarge        the body exceeded the configured size cap
    ├── StoreError                  the database failed or has the wrong schema
    │   ├── AlreadyRunning          another ``run`` holds the database
    │   └── LeaseLost               this instance no longer leads the source (fenced out)
    ├── TemplateError               a channel template failed to compile or render
    └── UnloadableURL               apprise cannot load a channel URL

A delivery that fails is not an exception: a sender returns a failed ``SendResult`` and the
outbox retries the row later or, for good, marks it dead. A few exceptions are private
signals inside one module (``bcs``'s record decoding) and never leave it; ``tests/
test_errors.py`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from notifier.text import one_line


class NotifierError(Exception):
    """Root of every error raised by bcs-notifier."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem found while validating the configuration."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(NotifierError):
    """The configuration is invalid; carries every problem found, with key paths."""

    def __init__(self, problems: Sequence[ConfigProblem], *, filename: str | None = None) -> None:
        self.problems = tuple(problems)
        self.filename = filename
        where = f"{filename}: " if filename else ""
        lines = [f"{where}{problem}" for problem in self.problems]
        super().__init__("invalid configuration:\n  " + "\n  ".join(lines))


class SourceError(NotifierError):
    """Polling a source failed; the cycle stores and reports nothing for it."""

    #: short machine-readable kind used in metrics and ``status`` ("transport", "api", ...)
    kind: str = "source"
    #: seconds before the next attempt can make sense, when the error knows (else None)
    retry_after: float | None = None

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        self.request_id = request_id
        super().__init__(message)

    def one_line(self) -> str:
        """A single line for logs and ``status``: the reason plus the request id."""
        text = one_line(self)
        if self.request_id:
            text = f"{text} (request id {self.request_id})"
        return text


class TransportError(SourceError):
    kind = "transport"


class ApiError(SourceError):
    """The API answered with an error status; fields from whatever body shape it sent."""

    kind = "api"

    def __init__(
        self,
        *,
        status: int,
        code: str | None,
        message: str,
        request_id: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.error_message = message
        self.url = url
        label = f"HTTP {status}"
        if code:
            label = f"{label} {code}"
        super().__init__(f"{label}: {message}" if message else label, request_id=request_id)


class AuthError(ApiError):
    kind = "auth"


class SignatureRejected(AuthError):
    """An AK/SK-signed request was refused. Five in a row lock the key for 5 minutes.

    The client never retries it within a fetch; the caller must not send another signed
    request for at least ``min_backoff`` seconds (``BcsClient.retry_not_before`` holds the
    exact time and the client itself refuses to sign again earlier).
    """

    kind = "signature"
    #: seconds to wait after a rejection before the next signed request (the lock is 5 min)
    min_backoff: float = 300.0


class ThrottledError(ApiError):
    kind = "throttled"


class InvalidResponse(SourceError):
    kind = "invalid_response"


class IncompleteResponse(InvalidResponse):
    kind = "incomplete_response"


class ResponseTooLarge(SourceError):
    kind = "too_large"


class StoreError(NotifierError):
    """The database failed, or its schema is not the one this version expects."""


class AlreadyRunning(StoreError):
    """Another ``bcs-notifier run`` holds this database."""


class LeaseLost(StoreError):
    """The poll's lease on its source expired or was taken over: its transaction rolled
    back, nothing of it was written (the fencing check)."""


class TemplateError(NotifierError, ValueError):
    """A channel template failed to compile or render (the message is one line).

    Also a ``ValueError``, as it always was: it is raised from inside Jinja2's sandbox
    calls, where library code may tell errors apart by that base."""


class UnloadableURL(NotifierError):
    """apprise cannot load a URL; the message is safe to show (no secrets)."""


def error_line(error: BaseException, limit: int | None = None) -> str:
    """``Type: message`` on one line (whitespace collapsed), cut at ``limit`` characters:
    how the service names an unexpected exception in a log line or a stored error."""
    text = one_line(error)
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if limit is None else line[:limit]
