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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier.errors import ConfigError, ConfigProblem
from notifier.model import KNOWN_STATUSES
from notifier.stalls import MAX_SAMPLES

CONFIG_ENV_VAR: Final = "BCS_NOTIFIER_CONFIG"
DEFAULT_CONFIG_PATHS: Final = (Path("notifier.toml"), Path("/etc/bcs-notifier/notifier.toml"))
#: four slashes: an absolute path (three would be relative to the working directory)
DEFAULT_DATABASE: Final = "sqlite:////var/lib/bcs-notifier/state.db"

AUTH_TYPES: Final = ("token", "password", "aksk")
#: ``operation_status`` is deliberately not a filter: an operation leaving the filtered status
#: would vanish from the response and its transition would never be seen.
FILTER_KEYS: Final = ("blockchain_id", "resource_type", "operation_type")
EVENT_TYPE_NAMES: Final = (
    "operation.created",
    "operation.status_changed",
    "step.created",
    "step.status_changed",
    "substep.created",
    "substep.status_changed",
    "source.unreachable",
    "source.recovered",
    "step.stalled",
    "substep.stalled",
)
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_RE: Final = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in a log line)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class HttpConfig:
    """Optional ``[service.http]`` listener for ``/healthz`` and ``/metrics``."""

    listen: str = "127.0.0.1"
    port: int = 9310
    stale_after: float = 0.0  # 0: three poll intervals plus the unreachable threshold


@dataclass(frozen=True)
class ServiceConfig:
    database: str = DEFAULT_DATABASE
    poll_interval: float = 60.0
    active_poll_interval: float = 5.0
    poll_jitter: float = 0.1
    notify_existing: bool = False
    unreachable_after: float = 300.0
    log_level: str = "info"
    http: HttpConfig | None = None
    #: stall detection: max(stall_floor, stall_factor x p95) of >= stall_min_samples
    stall_factor: float = 2.0
    stall_min_samples: int = 10
    stall_floor: float = 600.0
    stall_reminders: bool = False
    #: PostgreSQL: seconds a source's lease lasts unless renewed (every third of it)
    lease_ttl: float = 15.0


@dataclass(frozen=True)
class DeliveryConfig:
    """``[delivery]``: how the outbox retries."""

    max_attempts: int = 12
    max_age: float = 86400.0
    backoff_initial: float = 10.0
    backoff_max: float = 3600.0
    timeout: float = 15.0
    batch_size: int = 100


@dataclass(frozen=True)
class AuthConfig:
    type: str
    token: Secret | None = None
    iam_endpoint: str | None = None
    domain: str | None = None
    username: str | None = None
    password: Secret | None = None
    project_name: str | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    security_token: Secret | None = None


@dataclass(frozen=True)
class SourceConfig:
    name: str
    endpoint: str
    project_id: str
    auth: AuthConfig
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    timeout: float = 10.0
    max_retries: int = 3
    max_response_bytes: int = 32 * 1024 * 1024
    verify_tls: bool = True
    ca_file: str | None = None


@dataclass(frozen=True)
class ChannelConfig:
    name: str
    urls: tuple[str, ...]
    events: tuple[str, ...] = ("*",)
    statuses: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    blockchains: tuple[str, ...] = ()
    resource_types: tuple[str, ...] = ()
    operation_types: tuple[str, ...] = ()
    timezone: str = "UTC"
    title: str | None = None
    body: str | None = None
    max_length: int = 0  # 0: the target's own limit


@dataclass(frozen=True)
class Config:
    service: ServiceConfig
    delivery: DeliveryConfig
    sources: tuple[SourceConfig, ...]
    channels: tuple[ChannelConfig, ...]
    path: Path | None = None

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    def channel(self, name: str) -> ChannelConfig:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(name)


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
    path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate a config file; raise ``ConfigError`` listing every problem."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem("", "file not found")], filename=str(file)) from None
    except OSError as exc:
        problem = ConfigProblem("", f"cannot read: {exc.strerror}")
        raise ConfigError([problem], filename=str(file)) from exc
    return parse_config(text, filename=str(file), base_dir=file.parent, environ=environ)


def parse_config(
    text: str,
    *,
    filename: str | None = None,
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem("", f"not valid TOML: {exc}")], filename=filename) from exc
    reader = _Reader(
        problems=[],
        environ=os.environ if environ is None else environ,
        base_dir=base_dir or Path.cwd(),
    )
    config = _build(reader, data)
    if reader.problems or config is None:
        raise ConfigError(reader.problems, filename=filename)
    return Config(
        service=config.service,
        delivery=config.delivery,
        sources=config.sources,
        channels=config.channels,
        path=Path(filename) if filename else None,
    )


# -- validation -------------------------------------------------------------------------------


_MISSING: Final = object()


@dataclass
class _Reader:
    problems: list[ConfigProblem]
    environ: Mapping[str, str]
    base_dir: Path

    def problem(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(path, message))

    def section(self, data: Any, path: str) -> _Section | None:
        if not isinstance(data, dict):
            self.problem(path, f"must be a table, not {_type_name(data)}")
            return None
        return _Section(self, data, path)

    def interpolate(self, value: str, path: str) -> str | None:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if name not in self.environ:
                missing.append(name)
                return ""
            return self.environ[name]

        result = _ENV_RE.sub(replace, value)
        if missing:
            names = ", ".join(f"${{{name}}}" for name in missing)
            self.problem(path, f"environment variable not set: {names}")
            return None
        return result

    def read_secret_file(self, raw: str, path: str) -> str | None:
        candidate = Path(raw).expanduser()
        if not candidate.is_absolute():
            places = [self.base_dir / "credentials" / candidate, self.base_dir / candidate]
            credentials = self.environ.get("CREDENTIALS_DIRECTORY")
            if credentials:
                places.insert(0, Path(credentials) / candidate)
            candidate = next((place for place in places if place.is_file()), places[-1])
        try:
            return candidate.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            self.problem(path, f"cannot read {candidate}: {exc.strerror}")
            return None


def _type_name(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _Section:
    """One TOML table being read: typed getters that record problems instead of raising."""

    def __init__(self, reader: _Reader, data: dict[str, Any], path: str) -> None:
        self.reader = reader
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key, _MISSING)

    def string(self, key: str, default: Any = _MISSING, *, required: bool = False) -> Any:
        value = self.raw(key)
        path = self.key_path(key)
        if value is _MISSING:
            if required:
                self.reader.problem(path, "is required")
            return None if default is _MISSING else default
        if not isinstance(value, str):
            self.reader.problem(path, f"must be a string, not {_type_name(value)}")
            return None if default is _MISSING else default
        result = self.reader.interpolate(value, path)
        if result is not None and required and not result.strip():
            self.reader.problem(path, "must not be empty")
        return result

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        integer: bool = False,
    ) -> Any:
        value = self.raw(key)
        path = self.key_path(key)
        if value is _MISSING:
            return default
        allowed = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            kind = "an integer" if integer else "a number"
            self.reader.problem(path, f"must be {kind}, not {_type_name(value)}")
            return default
        if minimum is not None and value < minimum:
            self.reader.problem(path, f"must be at least {minimum:g}, not {value}")
            return default
        return value if integer else float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.reader.problem(
                self.key_path(key), f"must be true or false, not {_type_name(value)}"
            )
            return default
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        """A string or a list of strings (each interpolated)."""
        value = self.raw(key)
        path = self.key_path(key)
        if value is _MISSING:
            return default
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            self.reader.problem(path, "must be a string or a list of strings")
            return default
        result: list[str] = []
        for index, item in enumerate(items):
            text = self.reader.interpolate(item, f"{path}[{index}]")
            if text is not None:
                result.append(text)
        return tuple(result)

    def secret(self, key: str, *, required: bool = False) -> Secret | None:
        """``key`` or ``key_file``: exactly one of them."""
        file_key = f"{key}_file"
        path = self.key_path(key)
        if self.has(key) and self.has(file_key):
            self.reader.problem(path, f"give either {key} or {file_key}, not both")
        if self.has(file_key):
            file_name = self.string(file_key)
            self.raw(key)
            if file_name is None:
                return None
            content = self.reader.read_secret_file(file_name, self.key_path(file_key))
            if content is not None and not content:
                self.reader.problem(self.key_path(file_key), "the file is empty")
            return Secret(content) if content else None
        value = self.string(key, required=required)
        return Secret(value) if value else None

    def table(self, key: str) -> _Section | None:
        value = self.raw(key)
        if value is _MISSING:
            return None
        return self.reader.section(value, self.key_path(key))

    def tables(self, key: str) -> Iterator[_Section]:
        value = self.raw(key)
        if value is _MISSING:
            return
        if not isinstance(value, list):
            self.reader.problem(self.key_path(key), f"must be an array of tables ([[{key}]])")
            return
        for index, item in enumerate(value):
            section = self.reader.section(item, f"{self.key_path(key)}[{index}]")
            if section is not None:
                yield section

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.reader.problem(self.key_path(key), "unknown key")


def _check(reader: _Reader, ok: bool, path: str, message: str) -> None:
    if not ok:
        reader.problem(path, message)


def _check_url(reader: _Reader, value: str | None, path: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        shown = value
        if parts.password:  # never echo a credential, even a misplaced one
            shown = value.replace(f":{parts.password}@", ":********@")
        reader.problem(path, f"must be an http(s) URL, not {shown!r}")


def _check_unique(reader: _Reader, names: Sequence[tuple[str, str | None]], what: str) -> None:
    seen: set[str] = set()
    for path, name in names:
        if name is None:
            continue
        if name in seen:
            reader.problem(path, f"duplicate {what} name {name!r}")
        seen.add(name)


def _check_name(reader: _Reader, name: str | None, path: str) -> None:
    if name and not _NAME_RE.match(name):
        reader.problem(path, "must be 1-64 letters, digits, '_', '.' or '-'")


def _build(reader: _Reader, data: dict[str, Any]) -> Config | None:
    root = _Section(reader, data, "")
    service = _build_service(reader, root.table("service"))
    delivery = _build_delivery(root.table("delivery"))
    sources = [_build_source(reader, section) for section in root.tables("sources")]
    channels = [_build_channel(reader, section) for section in root.tables("channels")]
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


def _build_service(reader: _Reader, section: _Section | None) -> ServiceConfig:
    if section is None:
        return ServiceConfig()
    defaults = ServiceConfig()
    http_section = section.table("http")
    http = None
    if http_section is not None:
        http = HttpConfig(
            listen=http_section.string("listen", HttpConfig.listen),
            port=http_section.number("port", HttpConfig.port, minimum=0, integer=True),
            stale_after=http_section.number("stale_after", 0.0, minimum=0),
        )
        if http.port > 65535:
            reader.problem(http_section.key_path("port"), "must be at most 65535")
        http_section.finish()
    log_level = section.string("log_level", defaults.log_level)
    levels = ("debug", "info", "warning", "error")
    if log_level is not None and log_level.lower() not in levels:
        reader.problem(section.key_path("log_level"), f"must be one of {', '.join(levels)}")
    service = ServiceConfig(
        database=section.string("database", defaults.database) or defaults.database,
        poll_interval=section.number("poll_interval", defaults.poll_interval, minimum=1),
        active_poll_interval=section.number(
            "active_poll_interval", defaults.active_poll_interval, minimum=0.2
        ),
        poll_jitter=section.number("poll_jitter", defaults.poll_jitter, minimum=0),
        notify_existing=section.boolean("notify_existing", defaults.notify_existing),
        unreachable_after=section.number(
            "unreachable_after", defaults.unreachable_after, minimum=0
        ),
        log_level=(log_level or defaults.log_level).lower(),
        http=http,
        stall_factor=section.number("stall_factor", defaults.stall_factor, minimum=1),
        stall_min_samples=section.number(
            "stall_min_samples", defaults.stall_min_samples, minimum=1, integer=True
        ),
        stall_floor=section.number("stall_floor", defaults.stall_floor, minimum=0),
        stall_reminders=section.boolean("stall_reminders", defaults.stall_reminders),
        lease_ttl=section.number("lease_ttl", defaults.lease_ttl, minimum=1),
    )
    _check(
        reader,
        service.poll_jitter < 1,
        section.key_path("poll_jitter"),
        "must be below 1 (a fraction of the interval)",
    )
    if section.has("database"):
        # checked here, not at the first connection: a missing driver is a config error
        from notifier.store.db import database_url_problem

        problem = database_url_problem(service.database)
        if problem is not None:
            reader.problem(section.key_path("database"), problem)
    _check(
        reader,
        service.stall_min_samples <= MAX_SAMPLES,
        section.key_path("stall_min_samples"),
        f"must be at most {MAX_SAMPLES} (the durations kept per step)",
    )
    section.finish()
    return service


def _build_delivery(section: _Section | None) -> DeliveryConfig:
    if section is None:
        return DeliveryConfig()
    defaults = DeliveryConfig()
    delivery = DeliveryConfig(
        max_attempts=section.number("max_attempts", defaults.max_attempts, minimum=1, integer=True),
        max_age=section.number("max_age", defaults.max_age, minimum=1),
        backoff_initial=section.number("backoff_initial", defaults.backoff_initial, minimum=0),
        backoff_max=section.number("backoff_max", defaults.backoff_max, minimum=0),
        timeout=section.number("timeout", defaults.timeout, minimum=0.1),
        batch_size=section.number("batch_size", defaults.batch_size, minimum=1, integer=True),
    )
    section.finish()
    return delivery


def _build_auth(reader: _Reader, section: _Section | None, path: str) -> AuthConfig | None:
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


def _build_source(reader: _Reader, section: _Section) -> SourceConfig | None:
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
    timeout = section.number("timeout", SourceConfig.timeout, minimum=0.1)
    max_retries = section.number("max_retries", SourceConfig.max_retries, minimum=0, integer=True)
    max_bytes = section.number(
        "max_response_bytes", SourceConfig.max_response_bytes, minimum=1024, integer=True
    )
    verify_tls = section.boolean("verify_tls", True)
    ca_file = section.string("ca_file")
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
    )


#: Extra checks for channel URLs and templates, registered by ``notifier.channels`` so this
#: module stays free of apprise and Jinja2. Each returns problem messages for one channel.
ChannelValidator = Callable[["ChannelConfig"], list[tuple[str, str]]]
CHANNEL_VALIDATORS: list[ChannelValidator] = []


def _build_channel(reader: _Reader, section: _Section) -> ChannelConfig | None:
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
                f"{pattern!r} matches no event type ({', '.join(EVENT_TYPE_NAMES)})",
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
        max_length=section.number("max_length", 0, minimum=0, integer=True),
    )
    section.finish()
    if name is None or not urls or dropped:
        return None
    _check_timezone(reader, channel.timezone, section.key_path("timezone"))
    for key, message in _run_channel_validators(channel):
        reader.problem(section.key_path(key), message)
    return channel


def _run_channel_validators(channel: ChannelConfig) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for validator in CHANNEL_VALIDATORS:
        found.extend(validator(channel))
    return found


def _check_timezone(reader: _Reader, name: str, path: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        reader.problem(path, f"unknown time zone {name!r}")


def _glob_matches_any(pattern: str) -> bool:
    return any(fnmatchcase(event, pattern) for event in EVENT_TYPE_NAMES)
