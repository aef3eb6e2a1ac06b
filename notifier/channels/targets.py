"""apprise wiring: our own apprise schemas, channel targets, URL validation.

- :func:`register_plugins` adds ``webhook://``/``webhooks://`` (signed CloudEvents) and
  ``console://`` to apprise (idempotent; importing this package does it).
- :func:`build_targets` turns a channel's URLs into :class:`Target` objects, one per URL,
  each remembering its apprise plugin instance (so apprise's per-service state and our
  pacing survive between dispatches).
- :func:`validate_channel` is registered in ``config.CHANNEL_VALIDATORS``: a URL apprise
  cannot load, a malformed webhook secret or a broken template is a config error with its
  key path. :func:`validate_channels` offers the same as ``ConfigProblem`` values.

URLs only ever reach logs and the database through :attr:`Target.safe_url` (apprise's
privacy mode plus :func:`privacy.mask_url`), and plugin error texts pass a
:class:`privacy.Scrubber` first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import apprise
from apprise.manager_plugins import NotificationManager
from apprise.plugins.slack import NotifySlack

from notifier import config as config_module
from notifier.channels.console import NotifyConsole
from notifier.channels.privacy import Scrubber, describe_unloadable, mask_url
from notifier.channels.render import check_templates
from notifier.channels.webhook import NotifyCloudEventWebhook
from notifier.config import ChannelConfig, Config, DeliveryConfig
from notifier.errors import ConfigProblem

logger = logging.getLogger(__name__)

WEBHOOK_SCHEMAS: Final = frozenset({"webhook", "webhooks"})
TargetKind = Literal["message", "webhook"]
_MANAGER = NotificationManager()  # type: ignore[no-untyped-call]  # apprise is untyped here


def register_plugins() -> None:
    """Add our schemas to apprise once per process."""
    for plugin in (NotifyCloudEventWebhook, NotifyConsole):
        schemas = {plugin.protocol} | (
            {plugin.secure_protocol} if isinstance(plugin.secure_protocol, str) else set()
        )
        if any(schema in _MANAGER and _MANAGER[schema] is plugin for schema in schemas):
            continue
        _MANAGER.add(plugin, schemas=sorted(schemas), force=True)  # type: ignore[no-untyped-call]


def _asset() -> apprise.AppriseAsset:
    return apprise.AppriseAsset(secure_logging=True, async_mode=False)


class UnloadableURL(ValueError):
    """apprise cannot load a URL; the message is safe to show (no secrets)."""


def load_plugin(url: str) -> Any:
    """Instantiate the apprise plugin for ``url`` or raise :class:`UnloadableURL`."""
    register_plugins()
    scrub = Scrubber.for_url(url)
    described = describe_unloadable(url)
    try:
        plugin = apprise.Apprise.instantiate(url, asset=_asset(), suppress_exceptions=False)
    except Exception as exc:  # plugins raise anything from their constructors
        reason = scrub(" ".join(str(exc).split())) or type(exc).__name__
        raise UnloadableURL(f"apprise cannot load {described}: {reason}") from exc
    if plugin is None:
        raise UnloadableURL(
            f"apprise cannot load {described}: unknown schema or malformed URL "
            "(see https://appriseit.com/services/)"
        )
    return plugin


def safe_url(plugin: Any) -> str:
    return mask_url(str(plugin.url(privacy=True)))


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None


def url_key(url: str) -> str:
    """A target's stable ``done_targets`` key: ``u`` + 12 hex digits of the SHA-256 of its
    full URL. Editing a channel's ``urls`` (reordering, removing one) keeps the keys of the
    others; the URL itself (which holds secrets) is never stored."""
    return "u" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]


@dataclass
class Target:
    """One URL of one channel, ready to send."""

    channel: str
    index: int
    kind: TargetKind
    format: str  # "markdown" | "html" | "text" (what the target takes)
    budget: int  # body characters
    title_max: int
    interval: float  # seconds to leave between two sends (the service's pacing)
    safe_url: str
    pacing_key: str
    plugin: Any = field(repr=False)
    scrub: Scrubber = field(repr=False)
    _apprise: Any = field(default=None, repr=False)
    url_key: str = ""  # see url_key(); "" only for targets built by hand in tests
    dialect: str = "commonmark"  # "slack": API text escaped for Slack's mrkdwn

    def key(self, event_id: str | None = None) -> str:
        """The ``done_targets`` key: :func:`url_key`, plus ``:<event id>`` for webhooks."""
        base = self.url_key or f"#{self.index}"
        return f"{base}:{event_id}" if event_id else base

    def legacy_key(self, event_id: str | None = None) -> str:
        """The key of rows written before keys derived from URLs: the URL's position."""
        return f"{self.index}:{event_id}" if event_id else str(self.index)

    def done(self, done_keys: Sequence[str] | set[str], event_id: str | None = None) -> bool:
        """Whether a row's ``done_targets`` say this target already has the delivery.

        A row written before the keys were derived from URLs carries positions
        (``"0"``, ``"1:evt_..."``): those are read as before, against the URL now at that
        position, so an old row re-sends only to positions it has not recorded. Only rows
        still pending from before the upgrade are affected, and only if ``urls`` changed."""
        return self.key(event_id) in done_keys or self.legacy_key(event_id) in done_keys

    def send(self, *, title: str, body: str, notify_type: str, body_format: str) -> SendResult:
        if self._apprise is None:
            self._apprise = apprise.Apprise(asset=self.plugin.asset)
            self._apprise.add(self.plugin)
        try:
            result = self._apprise.notify(
                body=body, title=title, notify_type=notify_type, body_format=body_format
            )
        except Exception as exc:  # a plugin bug must not stop the dispatcher
            logger.warning("channel %s target %s raised %s", self.channel, self.safe_url, exc)
            return SendResult(False, self.scrub(f"{type(exc).__name__}: {exc}"))
        if result:
            return SendResult(True)
        messages = [
            entry.message
            for entry in result.logs()
            if str(entry.level).upper() in ("WARNING", "ERROR", "CRITICAL")
        ]
        reason = messages[-1] if messages else f"apprise reported {result.status.name}"
        return SendResult(False, self.scrub(" ".join(str(reason).split()))[:500])


def target_for(channel: ChannelConfig, index: int, url: str, delivery: DeliveryConfig) -> Target:
    plugin = load_plugin(url)
    query = url.partition("?")[2]
    if "rto=" not in query:
        plugin.socket_read_timeout = delivery.timeout
    if "cto=" not in query:
        plugin.socket_connect_timeout = delivery.timeout
    interval = float(getattr(plugin, "request_rate_per_sec", 0) or 0)
    plugin.request_rate_per_sec = 0  # the dispatcher paces, with its own clock
    kind: TargetKind = "webhook" if isinstance(plugin, NotifyCloudEventWebhook) else "message"
    fmt = plugin.resolve_format(None)
    fmt_name = str(getattr(fmt, "value", fmt))
    title_max = int(plugin.title_maxlen) if plugin.title_maxlen > 0 else 250
    budget = int(plugin.body_maxlen) if plugin.body_maxlen else 0
    if plugin.title_maxlen <= 0 and budget:
        budget = max(budget - title_max - 2, 0)
    if channel.max_length:
        budget = min(budget, channel.max_length) if budget else channel.max_length
    shown = safe_url(plugin)
    try:
        identity = repr(plugin.url_identifier())
    except Exception:  # plugins without identifiers pace per channel URL
        identity = f"{channel.name}:{index}"
    return Target(
        channel=channel.name,
        index=index,
        kind=kind,
        format=fmt_name if fmt_name in ("markdown", "html", "text") else "text",
        budget=budget,
        title_max=title_max,
        interval=interval,
        safe_url=shown,
        pacing_key=identity,
        plugin=plugin,
        scrub=Scrubber.for_url(url, public=(shown,)),
        url_key=url_key(url),
        dialect="slack" if isinstance(plugin, NotifySlack) else "commonmark",
    )


def build_targets(channel: ChannelConfig, delivery: DeliveryConfig) -> list[Target]:
    return [target_for(channel, index, url, delivery) for index, url in enumerate(channel.urls)]


def validate_channel(channel: ChannelConfig) -> list[tuple[str, str]]:
    """Config check for one channel: ``(key, message)`` pairs (key relative to the channel)."""
    problems: list[tuple[str, str]] = []
    for index, url in enumerate(channel.urls):
        try:
            load_plugin(url)
        except UnloadableURL as exc:
            problems.append((f"urls[{index}]", str(exc)))
    for key, message in check_templates(channel.title, channel.body, channel.timezone):
        problems.append((key, message))
    return problems


def validate_channels(config: Config) -> list[ConfigProblem]:
    """The same checks for a loaded config, as ``ConfigProblem`` values with full key paths."""
    problems: list[ConfigProblem] = []
    for position, channel in enumerate(config.channels):
        for key, message in validate_channel(channel):
            problems.append(ConfigProblem(f"channels[{position}].{key}", message))
    return problems


def install_validators() -> None:
    """Make ``load_config`` check channel URLs and templates (idempotent)."""
    if validate_channel not in config_module.CHANNEL_VALIDATORS:
        config_module.CHANNEL_VALIDATORS.append(validate_channel)


def channel_summary(targets: Sequence[Target]) -> str:
    return ", ".join(target.safe_url for target in targets)


register_plugins()
install_validators()
