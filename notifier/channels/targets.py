"""apprise wiring: our own apprise schemas, channel targets, URL validation.

- :func:`register_plugins` adds ``webhook://``/``webhooks://`` (signed CloudEvents) and
  ``console://`` to apprise (idempotent; importing this package does it).
- :func:`build_targets` turns a channel's URLs into :class:`Target` objects, one per URL,
  each remembering its apprise plugin instance (so apprise's per-service state and our
  pacing survive between dispatches).
- :func:`validate_channel` is passed to ``load_config`` by the CLI: a URL apprise
  cannot load, a malformed webhook secret or a broken template is a config error with its
  key path.

Each target sends through the :class:`~notifier.channels.senders.Sender` of its kind
(:func:`~notifier.channels.senders.sender_for`, the one switch): webhooks, Slack and email
have senders of their own, every other schema goes through apprise.

URLs only ever reach logs and the database through :attr:`Target.safe_url` (apprise's
privacy mode plus :func:`privacy.mask_url`), and plugin error texts pass a
:class:`privacy.Scrubber` first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import apprise
from apprise.manager_plugins import NotificationManager
from apprise.plugins.email import NotifyEmail
from apprise.plugins.slack import NotifySlack

from notifier.channels import email as email_channel
from notifier.channels import slack as slack_channel
from notifier.channels.console import NotifyConsole
from notifier.channels.privacy import Scrubber, describe_unloadable, mask_url
from notifier.channels.render import RenderOptions, check_templates
from notifier.channels.senders import (
    Outgoing,
    Sender,
    SendResult,
    register_sender,
    sender_for,
)
from notifier.channels.webhook import NotifyCloudEventWebhook, WebhookSender
from notifier.config import ChannelConfig, DeliveryConfig
from notifier.errors import UnloadableURL

logger = logging.getLogger(__name__)

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


register_sender(NotifyCloudEventWebhook, WebhookSender)
register_sender(NotifySlack, slack_channel.slack_sender)
register_sender(NotifyEmail, email_channel.email_sender)
__all__ = ["SendResult", "Target", "UnloadableURL", "build_targets"]


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
    sender: Sender | None = field(default=None, repr=False)  # None: built by hand (tests)
    timeout: float = 15.0  # seconds a send may take at most (less while stopping)

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

    def render_options(self, timezone: str) -> RenderOptions:
        """How a message for this target is rendered (times in the channel's ``timezone``)."""
        return RenderOptions(
            format=self.format,
            timezone=timezone,
            budget=self.budget,
            title_max=self.title_max,
            dialect=self.dialect,
        )

    @property
    def alternatives(self) -> tuple[str, ...]:
        """Formats rendered besides :attr:`format` for this target (email: the text part)."""
        return self._sender().alternatives

    def _sender(self) -> Sender:
        if self.sender is None:
            self.sender = sender_for(self.plugin, self.scrub, self.safe_url)
        return self.sender

    def send(
        self,
        *,
        title: str,
        body: str,
        notify_type: str,
        body_format: str,
        alternatives: dict[str, str] | None = None,
        timeout: float | None = None,
        event_id: str | None = None,
    ) -> SendResult:
        """Send once, within ``timeout`` seconds (default :attr:`timeout`); never raises.
        ``event_id``: ``body`` is the CloudEvent with that id (webhooks)."""
        message = Outgoing(title, body, notify_type, body_format, alternatives or {}, event_id)
        limit = self.timeout if timeout is None else max(0.001, min(timeout, self.timeout))
        try:
            return self._sender().send(message, timeout=limit)
        except Exception as exc:  # a sender bug must not stop the dispatcher
            logger.warning("channel %s target %s raised %s", self.channel, self.safe_url, exc)
            return SendResult(False, self.scrub(f"{type(exc).__name__}: {exc}")[:500])

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()


def target_for(channel: ChannelConfig, index: int, url: str, delivery: DeliveryConfig) -> Target:
    plugin = load_plugin(url)
    query = url.partition("?")[2]
    if "rto=" not in query:
        plugin.socket_read_timeout = delivery.timeout
    if "cto=" not in query:
        plugin.socket_connect_timeout = delivery.timeout
    interval = float(getattr(plugin, "request_rate_per_sec", 0) or 0)
    plugin.request_rate_per_sec = 0  # the dispatcher paces, with its own clock
    shown = safe_url(plugin)
    scrub = Scrubber.for_url(url, public=(shown,))
    sender = sender_for(plugin, scrub, shown)
    interval = float(getattr(sender, "interval", interval))  # a sender's own pacing wins
    kind: TargetKind = sender.kind
    fmt = plugin.resolve_format(None)
    fmt_name = str(getattr(fmt, "value", fmt))
    title_max = int(plugin.title_maxlen) if plugin.title_maxlen > 0 else 250
    budget = int(plugin.body_maxlen) if plugin.body_maxlen else 0
    if plugin.title_maxlen <= 0 and budget:
        budget = max(budget - title_max - 2, 0)
    if isinstance(sender, slack_channel.SlackSender):
        title_max, budget = slack_channel.HEADER_MAX, slack_channel.BODY_BUDGET
    if channel.max_length:
        budget = min(budget, channel.max_length) if budget else channel.max_length
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
        scrub=scrub,
        url_key=url_key(url),
        dialect="slack" if isinstance(plugin, NotifySlack) else "commonmark",
        sender=sender,
        timeout=max(float(plugin.socket_connect_timeout), float(plugin.socket_read_timeout), 0.001),
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


register_plugins()
