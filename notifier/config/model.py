"""What a loaded ``notifier.toml`` is: frozen values, its defaults, and the fixed choices.

Nothing here reads a file or validates; :mod:`notifier.config.load` builds these values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from notifier.redaction import MASK

CONFIG_ENV_VAR: Final = "BCS_NOTIFIER_CONFIG"
DEFAULT_CONFIG_PATHS: Final = (Path("notifier.toml"), Path("/etc/bcs-notifier/notifier.toml"))
#: four slashes: an absolute path (three would be relative to the working directory)
DEFAULT_DATABASE: Final = "sqlite:////var/lib/bcs-notifier/state.db"

AUTH_TYPES: Final = ("token", "password", "aksk")
#: ``operation_status`` is deliberately not a filter: an operation leaving the filtered status
#: would vanish from the response and its transition would never be seen.
FILTER_KEYS: Final = ("blockchain_id", "resource_type", "operation_type")
POLL_MODES: Final = ("incremental", "full")


class Secret:
    """A string that never shows itself in ``repr``/``str`` (so never in a log line)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

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
    #: "incremental": short status lists per cycle, a complete listing every
    #: ``full_poll_interval`` seconds; "full": one complete listing every cycle
    poll_mode: str = "incremental"
    full_poll_interval: float = 900.0
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
    #: a listing is decoded as a stream: this caps the whole body (time, not memory) ...
    max_response_bytes: int = 1024 * 1024 * 1024
    verify_tls: bool = True
    ca_file: str | None = None
    #: ... and this one record of it (memory: a record is decoded whole)
    max_record_bytes: int = 4 * 1024 * 1024


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
