"""Logging for the service: journald-friendly lines, JSON lines, and a redaction safety net.

Formats (``bcs-notifier run --log-format``):

- ``journal`` (default): ``<N>`` syslog priority prefixes that journald turns into the
  entry's priority; no timestamp of its own when stderr is the journal (``$JOURNAL_STREAM``),
  since the journal stamps every entry already.
- ``text``: ``2024-05-01T12:00:00.123Z INFO name: message`` for a terminal.
- ``json``: one JSON object a line for log shippers.

Every line goes through :class:`Redactor` last: known secret values from the config and
anything shaped like a credential (tokens, passwords, signatures, URL passwords) become
``********``. Code should never log a secret; this only catches mistakes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, Final
from urllib.parse import parse_qsl, urlsplit

from notifier.config import Config
from notifier.model import encodable
from notifier.redaction import MASK, mask_log_text

LOG_FORMATS: Final = ("journal", "text", "json")

#: syslog priorities journald reads from a ``<N>`` prefix
_PRIORITIES: Final = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
    (logging.DEBUG, 7),
)


class Redactor:
    """Masks known secret values and credential-shaped text; thread-safe, updatable."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        values = {value for value in secrets if value and len(value) >= 4}
        with self._lock:
            self._secrets = tuple(sorted(values, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        # a lone surrogate from the API must not break the handler
        return encodable(mask_log_text(text))


def config_secrets(config: Config) -> list[str]:
    """Every secret value in ``config``: credentials and the secret parts of channel URLs."""
    found: list[str] = []
    for source in config.sources:
        auth = source.auth
        for secret in (
            auth.token,
            auth.password,
            auth.access_key,
            auth.secret_key,
            auth.security_token,
        ):
            if secret:
                found.append(secret.reveal())
    for channel in config.channels:
        for url in channel.urls:
            found.extend(url_secrets(url))
    return found


def url_secrets(url: str) -> list[str]:
    """The parts of an apprise URL that may be credentials."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    if parts.password:
        found.append(parts.password)
    if parts.username and parts.password:
        found.append(f"{parts.username}:{parts.password}")
    # apprise puts tokens in the host and path (slack://T000/B000/XXXX, tgram://bottoken/)
    for piece in [parts.netloc.rsplit("@", 1)[-1], *parts.path.split("/")]:
        if len(piece) >= 12 and "." not in piece:
            found.append(piece)
    for _key, value in parse_qsl(parts.query, keep_blank_values=False):
        if len(value) >= 6:
            found.append(value)
    return found


def _priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


def _utc_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def full_message(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        return self.redactor.redact(message)


class JournalFormatter(_RedactingFormatter):
    """``<6>name: message``; every line of a traceback keeps the prefix."""

    def __init__(self, redactor: Redactor, *, timestamps: bool) -> None:
        super().__init__(redactor)
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_priority(record.levelno)}>"
        head = f"{_utc_time(record)} " if self.timestamps else ""
        lines = self.full_message(record).splitlines() or [""]
        first = f"{prefix}{head}{record.name}: {lines[0]}"
        return "\n".join([first, *(f"{prefix}{head}  {line}" for line in lines[1:])])


class TextFormatter(_RedactingFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{_utc_time(record)} {record.levelname} {record.name}: {self.full_message(record)}"


_STANDARD_ATTRIBUTES: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(_RedactingFormatter):
    """One JSON object a line: time, level, logger, message, extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _utc_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.redactor.redact(record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRIBUTES or key.startswith("_"):
                continue
            document[key] = self._redact_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exception"] = self.redactor.redact(record.exc_text)
        return json.dumps(document, ensure_ascii=False, default=str)

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        return self.redactor.redact(str(value))


def journal_stream_is_stderr(
    stream: IO[str] | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """True when ``$JOURNAL_STREAM`` names the device and inode of ``stream`` (stderr)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":", 1))
        stat = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return stat.st_dev == device and stat.st_ino == inode


def default_format(stream: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``run``'s format when none is chosen: ``text`` on a terminal that is not the journal,
    ``journal`` otherwise (systemd, a pipe, a file: the unit's usual places)."""
    target = stream or sys.stderr
    if journal_stream_is_stderr(target, environ):
        return "journal"
    try:
        on_terminal = target.isatty()
    except (AttributeError, ValueError, OSError):
        on_terminal = False
    return "text" if on_terminal else "journal"


def make_formatter(
    log_format: str,
    redactor: Redactor,
    *,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(redactor)
    if log_format == "text":
        return TextFormatter(redactor)
    if log_format == "journal":
        env = os.environ if environ is None else environ
        under_journal = bool(env.get("JOURNAL_STREAM")) and journal_stream_is_stderr(stream, env)
        return JournalFormatter(redactor, timestamps=not under_journal)
    raise ValueError(f"unknown log format {log_format!r}; expected one of {LOG_FORMATS}")


def configure(
    log_format: str,
    level: str,
    *,
    redactor: Redactor | None = None,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one that formats and redacts every line."""
    target = stream or sys.stderr
    handler = logging.StreamHandler(target)
    handler.setFormatter(
        make_formatter(log_format, redactor or Redactor(), stream=target, environ=environ)
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    set_level(level)
    return handler


def set_level(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    logging.getLogger().setLevel(numeric)
    # libraries that log every request (with URLs) only speak up at debug level
    quiet = logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore", "urllib3", "apprise", "alembic"):
        logging.getLogger(name).setLevel(quiet)
