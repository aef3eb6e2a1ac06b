"""Load and validate ``notifier.toml``.

The whole file is validated at once: every problem is collected with its key path and
reported together in one :class:`~notifier.errors.ConfigError`; unknown keys are errors.
Any string may reference an environment variable as ``${NAME}`` (``$${`` is a literal
``${``), and every secret has a ``*_file`` variant whose relative path is looked up in
``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) first, then in ``credentials/``
next to the config file (where ``LoadCredential=`` reads them from, so admin commands run
outside the service find them too), then next to the config file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.config.model import (
    AUTH_TYPES,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATHS,
    FILTER_KEYS,
    POLL_MODES,
    AuthConfig,
    ChannelConfig,
    Config,
    DeliveryConfig,
    HttpConfig,
    ServiceConfig,
    SourceConfig,
)
from notifier.config.reader import Reader, Section
from notifier.errors import ConfigError, ConfigProblem
from notifier.model import KNOWN_STATUSES, EventType
from notifier.redaction import MASK
from notifier.stalls import MAX_SAMPLES

#: Extra checks of a channel that need what this package stays free of (apprise, Jinja2):
#: the composition root passes them in (``notifier.channels.targets.validate_channel``).
#: Each returns ``(key, message)`` problems for one channel, the key relative to it.
ChannelValidator = Callable[[ChannelConfig], list[tuple[str, str]]]

#: The event types a channel's ``events`` globs may match (the enum's, in its order).
_EVENT_TYPES: Final = tuple(event_type.value for event_type in EventType)
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config``, then ``$BCS_NOTIFIER_CONFIG``, then ``./notifier.toml``, then /etc."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if candidate.is_file():
            return candidate
    return DEFAULT_CONFIG_PATHS[0]


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    channel_validators: Sequence[ChannelValidator] = (),
) -> Config:
    """Read and validate a config file; raise ``ConfigError`` listing every problem.

    ``channel_validators`` check each complete channel further (its URLs, its templates);
    their problems are config errors like any other."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem("", "file not found")], filename=str(file)) from None
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[: exc.start].count(b"\n") + 1
        problem = ConfigProblem(
            "", f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} on line {line}"
        )
        raise ConfigError([problem], filename=str(file)) from exc
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read: {exc.strerror}")
        raise ConfigError([problem], filename=str(file)) from exc
    return parse_config(
        text,
        filename=str(file),
        base_dir=file.parent,
        environ=environ,
        channel_validators=channel_validators,
    )


def parse_config(
    text: str,
    *,
    filename: str | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    channel_validators: Sequence[ChannelValidator] = (),
) -> Config:
    """Validate a config file's text (see :func:`load_config`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"not valid TOML: {exc}")], filename=filename) from exc
    except RecursionError as exc:  # arrays or inline tables nested thousands deep
        problem = ConfigProblem("", "not valid TOML: nested too deeply")
        raise ConfigError([problem], filename=filename) from exc
    except ValueError as exc:  # an integer literal past Python's digit limit
        problem = ConfigProblem("", f"not valid TOML: {' '.join(str(exc).split())[:160]}")
        raise ConfigError([problem], filename=filename) from exc
    reader = Reader(
        problems=[],
        environ=os.environ if environ is None else environ,
        base_dir=base_dir or Path.cwd(),
    )
    config = _build(reader, data, tuple(channel_validators))
    if reader.problems or config is None:
        raise ConfigError(reader.problems, filename=filename)
    return Config(
        service=config.service,
        delivery=config.delivery,
        sources=config.sources,
        channels=config.channels,
        path=Path(filename) if filename else None,
    )


#: Upper bounds of keys in seconds.
_DAY: Final = 86_400.0
_WEEK: Final = 7 * _DAY


def _check(reader: Reader, ok: bool, path: str, message: str) -> None:
    if not ok:
        reader.problem(path, message)


def _check_url(reader: Reader, value: str | None, path: str) -> None:
    if not value:
        return
    if _CONTROL_RE.search(value):
        reader.problem(path, "must not contain control characters or spaces")
        return
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
        password = parts.password
    except ValueError as exc:
        reader.problem(path, f"is not a valid URL: {exc}")
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = value
        if password:  # never echo a credential, even a misplaced one
            shown = value.replace(f":{password}@", f":{MASK}@")
        reader.problem(path, f"must be an http(s) URL, not {shown!r}")


_CONTROL_RE: Final = re.compile(r"[\x00-\x20\x7f]")


def _check_database(reader: Reader, url: str, path: str) -> None:
    """A SQLAlchemy URL of a known backend; a SQLite file whose place can hold a file."""
    # checked here, not at the first connection: a missing driver is a config error
    from notifier.store.db import database_url_problem, sqlite_database

    if not url.strip():
        reader.problem(path, "must not be empty (leave it out for the default)")
        return
    if "\x00" in url:
        reader.problem(path, "must not contain a NUL character")
        return
    problem = database_url_problem(url)
    if problem is not None:
        reader.problem(path, " ".join(problem.split())[:300])
        return
    database = sqlite_database(url)
    if database is None:
        return
    if database in ("", ":memory:") or database.startswith("file:"):
        reader.problem(path, "must name a SQLite file (the state must outlive the process)")
        return
    file = Path(database).expanduser()
    if file.is_dir():
        reader.problem(path, f"{database} is a directory, not a database file")
    elif not file.exists() and any(p.exists() and not p.is_dir() for p in file.parents):
        reader.problem(path, f"cannot create {database}: a parent is not a directory")


def _check_ca_file(reader: Reader, ca_file: str | None, path: str) -> None:
    """An existing file of PEM certificates (read as TLS verification will read it)."""
    import ssl

    if ca_file is None:
        return
    if not ca_file.strip() or "\x00" in ca_file:
        reader.problem(path, "must be the path of a file of PEM certificates")
        return
    file = Path(ca_file).expanduser()
    if not file.is_file():
        reader.problem(path, f"{ca_file}: no such file")
        return
    try:
        ssl.create_default_context(cafile=str(file))
    except (ssl.SSLError, OSError, ValueError) as exc:
        reader.problem(path, f"{ca_file}: not a file of PEM certificates ({exc})")


def _check_unique(reader: Reader, names: Sequence[tuple[str, str | None]], what: str) -> None:
    seen: set[str] = set()
    for path, name in names:
        if name is None:
            continue
        if name in seen:
            reader.problem(path, f"duplicate {what} name {name!r}")
        seen.add(name)


def _check_name(reader: Reader, name: str | None, path: str) -> None:
    if name and not _NAME_RE.match(name):
        reader.problem(path, "must be 1-64 letters, digits, '_', '.' or '-'")


def _build(
    reader: Reader, data: dict[str, Any], channel_validators: Sequence[ChannelValidator]
) -> Config | None:
    root = Section(reader, data, "")
    service = _build_service(reader, root.table("service"))
    delivery = _build_delivery(root.table("delivery"))
    sources = [_build_source(reader, section) for section in root.tables("sources")]
    channels = [
        _build_channel(reader, section, channel_validators) for section in root.tables("channels")
    ]
    if "sources" not in data:
        reader.problem("sources", "at least one [[sources]] entry is required")
    root.finish()
    _check_unique(
        reader, [(f"sources[{i}].name", s.name) for i, s in enumerate(sources) if s], "source"
    )
    _check_unique(
        reader, [(f"channels[{i}].name", c.name) for i, c in enumerate(channels) if c], "channel"
    )
    source_names = {source.name for source in sources if source}
    for index, channel in enumerate(channels):
        if channel is None:
            continue
        for name in channel.sources:
            _check(
                reader,
                name in source_names,
                f"channels[{index}].sources",
                f"no source named {name!r}",
            )
    if reader.problems:
        return None
    return Config(
        service=service,
        delivery=delivery,
        sources=tuple(source for source in sources if source is not None),
        channels=tuple(channel for channel in channels if channel is not None),
    )


def _build_service(reader: Reader, section: Section | None) -> ServiceConfig:
    if section is None:
        return ServiceConfig()
    defaults = ServiceConfig()
    http_section = section.table("http")
    http = None
    if http_section is not None:
        http = HttpConfig(
            listen=http_section.string("listen", HttpConfig.listen),
            port=http_section.number(
                "port", HttpConfig.port, minimum=0, integer=True, maximum=65535
            ),
            stale_after=http_section.number("stale_after", 0.0, minimum=0, maximum=_WEEK),
        )
        http_section.finish()
    log_level = section.string("log_level", defaults.log_level)
    levels = ("debug", "info", "warning", "error")
    if log_level is not None and log_level.lower() not in levels:
        reader.problem(section.key_path("log_level"), f"must be one of {', '.join(levels)}")
    database = section.string("database", defaults.database)
    if database is not None:
        _check_database(reader, database, section.key_path("database"))
    service = ServiceConfig(
        database=database or defaults.database,
        poll_interval=section.number(
            "poll_interval", defaults.poll_interval, minimum=1, maximum=_DAY
        ),
        active_poll_interval=section.number(
            "active_poll_interval", defaults.active_poll_interval, minimum=0.2, maximum=_DAY
        ),
        poll_jitter=section.number("poll_jitter", defaults.poll_jitter, minimum=0),
        notify_existing=section.boolean("notify_existing", defaults.notify_existing),
        unreachable_after=section.number(
            "unreachable_after", defaults.unreachable_after, minimum=0, maximum=_WEEK
        ),
        log_level=(log_level or defaults.log_level).lower(),
        http=http,
        stall_factor=section.number("stall_factor", defaults.stall_factor, minimum=1),
        stall_min_samples=section.number(
            "stall_min_samples", defaults.stall_min_samples, minimum=1, integer=True
        ),
        stall_floor=section.number("stall_floor", defaults.stall_floor, minimum=0),
        stall_reminders=section.boolean("stall_reminders", defaults.stall_reminders),
        poll_mode=section.string("poll_mode", defaults.poll_mode) or defaults.poll_mode,
        full_poll_interval=section.number(
            "full_poll_interval", defaults.full_poll_interval, minimum=1
        ),
        lease_ttl=section.number("lease_ttl", defaults.lease_ttl, minimum=1, maximum=_DAY),
    )
    _check(
        reader,
        service.poll_mode in POLL_MODES,
        section.key_path("poll_mode"),
        f"must be one of {', '.join(POLL_MODES)}",
    )
    _check(
        reader,
        service.poll_jitter < 1,
        section.key_path("poll_jitter"),
        "must be below 1 (a fraction of the interval)",
    )
    _check(
        reader,
        service.stall_min_samples <= MAX_SAMPLES,
        section.key_path("stall_min_samples"),
        f"must be at most {MAX_SAMPLES} (the durations kept per step)",
    )
    section.finish()
    return service


def _build_delivery(section: Section | None) -> DeliveryConfig:
    if section is None:
        return DeliveryConfig()
    defaults = DeliveryConfig()
    delivery = DeliveryConfig(
        max_attempts=section.number(
            "max_attempts", defaults.max_attempts, minimum=1, integer=True, maximum=10_000
        ),
        max_age=section.number("max_age", defaults.max_age, minimum=1, maximum=365 * _DAY),
        backoff_initial=section.number(
            "backoff_initial", defaults.backoff_initial, minimum=0, maximum=_WEEK
        ),
        backoff_max=section.number("backoff_max", defaults.backoff_max, minimum=0, maximum=_WEEK),
        timeout=section.number("timeout", defaults.timeout, minimum=0.1, maximum=3600),
        batch_size=section.number(
            "batch_size", defaults.batch_size, minimum=1, integer=True, maximum=100_000
        ),
    )
    section.finish()
    return delivery


def _build_auth(reader: Reader, section: Section | None, path: str) -> AuthConfig | None:
    if section is None:
        reader.problem(path, "is required ([sources.auth] with a type)")
        return None
    auth_type = section.string("type", required=True)
    if auth_type is not None and auth_type not in AUTH_TYPES:
        reader.problem(section.key_path("type"), f"must be one of {', '.join(AUTH_TYPES)}")
    auth: AuthConfig | None = None
    if auth_type == "token":
        auth = AuthConfig(type="token", token=section.secret("token", required=True))
    elif auth_type == "password":
        iam_endpoint = section.string("iam_endpoint", required=True)
        _check_url(reader, iam_endpoint, section.key_path("iam_endpoint"))
        auth = AuthConfig(
            type="password",
            iam_endpoint=iam_endpoint,
            domain=section.string("domain", required=True),
            username=section.string("username", required=True),
            password=section.secret("password", required=True),
            project_name=section.string("project_name"),
        )
    elif auth_type == "aksk":
        auth = AuthConfig(
            type="aksk",
            access_key=section.secret("access_key", required=True),
            secret_key=section.secret("secret_key", required=True),
            security_token=section.secret("security_token"),
        )
    if auth_type in AUTH_TYPES:
        section.finish()
    return auth


def _build_source(reader: Reader, section: Section) -> SourceConfig | None:
    name = section.string("name", required=True)
    _check_name(reader, name, section.key_path("name"))
    endpoint = section.string("endpoint", required=True)
    _check_url(reader, endpoint, section.key_path("endpoint"))
    project_id = section.string("project_id", required=True)
    filters: dict[str, tuple[str, ...]] = {}
    filter_section = section.table("filters")
    if filter_section is not None:
        for key in FILTER_KEYS:
            values = filter_section.strings(key)
            if filter_section.data.get(key) in ([], ""):
                reader.problem(filter_section.key_path(key), "must not be empty")
            if values:
                filters[key] = values
        filter_section.finish()
    auth = _build_auth(reader, section.table("auth"), section.key_path("auth"))
    timeout = section.number("timeout", SourceConfig.timeout, minimum=0.1, maximum=3600)
    max_retries = section.number(
        "max_retries", SourceConfig.max_retries, minimum=0, integer=True, maximum=100
    )
    max_bytes = section.number(
        "max_response_bytes",
        SourceConfig.max_response_bytes,
        minimum=1024,
        integer=True,
        maximum=2**32,
    )
    verify_tls = section.boolean("verify_tls", True)
    ca_file = section.string("ca_file")
    max_record_bytes = section.number(
        "max_record_bytes", SourceConfig.max_record_bytes, minimum=1024, integer=True
    )
    _check_ca_file(reader, ca_file, section.key_path("ca_file"))
    section.finish()
    if name is None or endpoint is None or project_id is None or auth is None:
        return None
    return SourceConfig(
        name=name,
        endpoint=endpoint.rstrip("/"),
        project_id=project_id,
        auth=auth,
        filters=filters,
        timeout=timeout,
        max_retries=max_retries,
        max_response_bytes=max_bytes,
        verify_tls=verify_tls,
        ca_file=ca_file,
        max_record_bytes=max_record_bytes,
    )


def _build_channel(
    reader: Reader, section: Section, validators: Sequence[ChannelValidator]
) -> ChannelConfig | None:
    name = section.string("name", required=True)
    _check_name(reader, name, section.key_path("name"))
    urls = section.strings("urls")
    given = section.raw("urls")
    given = [given] if isinstance(given, str) else given
    # a URL dropped for its own error (an unset ${VAR}) was reported already, at its index
    dropped = isinstance(given, list) and len(urls) != len(given)
    if not urls and not dropped:
        reader.problem(section.key_path("urls"), "at least one apprise URL is required")
    events = section.strings("events", ("*",))
    for index, pattern in enumerate(events):
        if not _glob_matches_any(pattern):
            reader.problem(
                f"{section.key_path('events')}[{index}]",
                f"{pattern!r} matches no event type ({', '.join(_EVENT_TYPES)})",
            )
    statuses = tuple(status.strip().lower() for status in section.strings("statuses"))
    # a typo ("faild") would silently filter out everything: unknown statuses only on request
    if not section.boolean("allow_unknown_statuses", False):
        for index, status in enumerate(statuses):
            if status not in KNOWN_STATUSES:
                reader.problem(
                    f"{section.key_path('statuses')}[{index}]",
                    f"unknown status {status!r} (known: {', '.join(sorted(KNOWN_STATUSES))}; "
                    "allow_unknown_statuses = true accepts others)",
                )
    channel = ChannelConfig(
        name=name or "",
        urls=urls,
        events=events,
        statuses=statuses,
        sources=section.strings("sources"),
        blockchains=section.strings("blockchains"),
        resource_types=section.strings("resource_types"),
        operation_types=section.strings("operation_types"),
        timezone=section.string("timezone", "UTC") or "UTC",
        title=section.string("title"),
        body=section.string("body"),
        max_length=section.number("max_length", 0, minimum=0, integer=True, maximum=10_000_000),
    )
    section.finish()
    # checked whatever else is wrong with the channel: every problem is reported at once
    _check_timezone(reader, channel.timezone, section.key_path("timezone"))
    if name is None or not urls or dropped:
        return None
    for validator in validators:
        for key, message in validator(channel):
            reader.problem(section.key_path(key), message)
    return channel


def _check_timezone(reader: Reader, name: str, path: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        reader.problem(path, f"unknown time zone {name!r}")


def _glob_matches_any(pattern: str) -> bool:
    return any(fnmatchcase(event, pattern) for event in _EVENT_TYPES)
