"""One sender per target kind, behind one switch (:func:`sender_for`).

A :class:`Target` (``channels.targets``) hands what it sends to its :class:`Sender`:

- ``webhook://`` / ``webhooks://``: :class:`notifier.channels.webhook.WebhookSender`, one
  signed CloudEvent per request over a keep-alive ``httpx.Client`` (no apprise hand-off);
- ``slack://``: :class:`notifier.channels.slack.SlackSender`, Block Kit within Slack's limits;
- ``mailto://`` / ``mailtos://``: :class:`notifier.channels.email.EmailSender`, a multipart
  mail with the project's own text part, folded subjects and ``Auto-Submitted``;
- every other apprise schema: :class:`AppriseSender`, apprise as it documents itself.

Every send takes a ``timeout`` (seconds): the dispatcher passes the configured one, or less
while the service stops (what is left of ``--stop-grace``), so no send outlives the grace.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import apprise

from notifier.channels.privacy import Scrubber

logger = logging.getLogger(__name__)

SenderKind = Literal["message", "webhook"]


@dataclass(frozen=True)
class SendResult:
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """What one send carries: a message (chat, email) or one CloudEvent (webhooks)."""

    title: str
    body: str
    notify_type: str = "info"
    body_format: str = "text"
    #: Other renderings of the same message by format (email: ``{"text": ...}``).
    alternatives: Mapping[str, str] = field(default_factory=dict)
    #: Webhooks: the id of the CloudEvent ``body`` is (None: the sender reads the body).
    event_id: str | None = None


class Sender(Protocol):
    """Sends to one target URL; keeps its connections between sends."""

    kind: SenderKind
    #: Formats the sender wants besides the target's own (rendered into ``alternatives``).
    alternatives: tuple[str, ...]

    def send(self, message: Outgoing, *, timeout: float) -> SendResult: ...

    def close(self) -> None: ...


class Delivered:
    """The parts of a message that already went out (Slack channels, mail recipients), so
    retrying a partly delivered message sends only the rest. Kept in memory for the life of
    the sender (the last :data:`DELIVERED_KEPT` parts): after a restart the whole message
    goes again, which at-least-once allows."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, None] = OrderedDict()

    @staticmethod
    def key(part: str, message: Outgoing) -> str:
        digest = hashlib.sha256()
        for value in (part, message.title, message.body):
            digest.update(value.encode("utf-8", "surrogatepass") + b"\0")
        return digest.hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        while len(self._keys) > DELIVERED_KEPT:
            self._keys.popitem(last=False)


DELIVERED_KEPT: Final = 4096


def plugin_timeouts(plugin: Any) -> tuple[float, float]:
    """``(connect, read)`` seconds the URL's plugin was configured with (``cto``/``rto``)."""
    return float(plugin.socket_connect_timeout), float(plugin.socket_read_timeout)


class AppriseSender:
    """Any schema we have no sender of our own for: apprise's plugin, as it documents."""

    kind: SenderKind = "message"
    alternatives: tuple[str, ...] = ()

    def __init__(self, plugin: Any, scrub: Scrubber, describe: str = "") -> None:
        self.plugin = plugin
        self.scrub = scrub
        self.describe = describe
        self._connect, self._read = plugin_timeouts(plugin)
        self._apprise: Any = None

    def send(self, message: Outgoing, *, timeout: float) -> SendResult:
        if self._apprise is None:
            self._apprise = apprise.Apprise(asset=self.plugin.asset)
            self._apprise.add(self.plugin)
        # requests-based plugins read these per request: bound this send by ``timeout``.
        self.plugin.socket_connect_timeout = min(self._connect, timeout)
        self.plugin.socket_read_timeout = min(self._read, timeout)
        try:
            result = self._apprise.notify(
                body=message.body,
                title=message.title,
                notify_type=message.notify_type,
                body_format=message.body_format,
            )
        except Exception as exc:  # a plugin bug must not stop the dispatcher
            logger.warning("target %s raised %s", self.describe, type(exc).__name__)
            return SendResult(False, self.scrub(f"{type(exc).__name__}: {exc}"))
        if result:
            return SendResult(True)
        messages = [
            entry.message
            for entry in result.logs()
            if str(entry.level).upper() in ("WARNING", "ERROR", "CRITICAL")
        ]
        reason = messages[-1] if messages else f"apprise reported {result.status.name}"
        text = self.scrub(" ".join(str(reason).split()))[:500]
        return SendResult(False, text)

    def close(self) -> None:
        self._apprise = None


SenderFactory = Callable[[Any, Scrubber, str], Sender]

#: plugin class -> the sender that replaces apprise's own delivery for it; filled by
#: :func:`register_sender` (``channels.targets`` registers webhook, Slack and email).
SENDERS: Final[dict[type, SenderFactory]] = {}


def register_sender(plugin_type: type, factory: SenderFactory) -> None:
    SENDERS[plugin_type] = factory


def sender_for(plugin: Any, scrub: Scrubber, describe: str) -> Sender:
    """The one switch: the sender for a loaded apprise plugin."""
    for plugin_type, factory in SENDERS.items():
        if isinstance(plugin, plugin_type):
            return factory(plugin, scrub, describe)
    return AppriseSender(plugin, scrub, describe)
