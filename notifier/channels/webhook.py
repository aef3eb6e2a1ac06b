"""The ``webhook://`` / ``webhooks://`` apprise schemas: signed CloudEvents, one per request.

The body handed to the plugin is the CloudEvents 1.0 JSON document of one event (the
dispatcher renders it with :func:`notifier.model.cloudevent`); it is POSTed byte for byte
as ``application/cloudevents+json`` with the Standard Webhooks headers:

- ``webhook-id``: the event id, the same on every retry, so receivers drop duplicates;
- ``webhook-timestamp``: integer seconds since the epoch of this attempt;
- ``webhook-signature`` (when the URL has ``?secret=whsec_<base64>``):
  ``v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}" keyed with the decoded secret>``.

URL form: ``webhooks://user:password@host:port/path?secret=whsec_...&+X-Header=value``
(``-name=value`` adds a query parameter to the request URL, as apprise's ``json://`` does).
A body that is not a CloudEvent (a plain apprise notification) is wrapped in one of type
``bcs_notifier.message``. Requests identify as ``User-Agent: bcs-notifier/<version>``.

The dispatcher does not go through apprise for these URLs: :class:`WebhookSender` posts
over one keep-alive ``httpx.Client`` per target, in the calling thread, with the settings
the plugin parsed from the URL (the plugin stays the URL parser and ``test-channel``'s path).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import httpx
import requests
from apprise import NotifyFormat, NotifyType
from apprise.exception import AppriseImproperlyConfigured
from apprise.plugins.base import NotifyBase
from apprise.url import PrivacyMode

from notifier import __version__
from notifier.channels.privacy import Scrubber
from notifier.channels.senders import Outgoing, SenderKind, SendResult, plugin_timeouts
from notifier.clock import MS_PER_SECOND, SYSTEM_CLOCK, Clock
from notifier.model import encodable

logger = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/cloudevents+json"
SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
#: Standard Webhooks: secrets are 24 to 64 random bytes.
SECRET_MIN_BYTES: Final = 24
SECRET_MAX_BYTES: Final = 64
USER_AGENT: Final = f"bcs-notifier/{__version__}"


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError when malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"the secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the secret is not valid base64 after 'whsec_'") from exc
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        raise ValueError(
            f"the secret must decode to {SECRET_MIN_BYTES}-{SECRET_MAX_BYTES} bytes, not {len(key)}"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one request."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def _as_cloudevent(body: str, title: str, notify_type: Any) -> tuple[str, bytes]:
    """``(id, bytes)`` to send: the body itself when it is a CloudEvent, else a wrapper."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("specversion") and document.get("id"):
        return str(document["id"]), encodable(body).encode("utf-8")
    message_id = f"msg_{uuid.uuid4().hex}"
    wrapper = {
        "specversion": "1.0",
        "id": message_id,
        "type": "bcs_notifier.message",
        "source": "bcs-notifier",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "datacontenttype": "application/json",
        "data": {"title": title, "body": body, "notify_type": str(notify_type)},
    }
    return message_id, encodable(json.dumps(wrapper, ensure_ascii=False)).encode("utf-8")


class NotifyCloudEventWebhook(NotifyBase):
    """POST one CloudEvent per notification, signed the Standard Webhooks way."""

    service_name = "CloudEvents webhook (bcs-notifier)"
    protocol = "webhook"
    secure_protocol = "webhooks"
    setup_url = "https://www.standardwebhooks.com/"
    category = "custom"
    request_rate_per_sec = 0
    notify_format = NotifyFormat.TEXT
    title_maxlen = 250
    body_maxlen = 4 * 1024 * 1024
    templates = (
        "{schema}://{host}",
        "{schema}://{host}:{port}",
        "{schema}://{user}@{host}",
        "{schema}://{user}:{password}@{host}",
        "{schema}://{user}:{password}@{host}:{port}",
    )

    #: Injectable for tests and benchmarks (apprise builds the plugin); the system's otherwise.
    clock: ClassVar[Clock] = SYSTEM_CLOCK

    def __init__(
        self,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        fullpath = kwargs.get("fullpath")
        self.fullpath: str = fullpath if isinstance(fullpath, str) else ""
        self.secret = secret or None
        self._key: bytes | None = None
        if self.secret:
            try:
                self._key = decode_secret(self.secret)
            except ValueError as exc:
                raise AppriseImproperlyConfigured(f"webhook secret: {exc}") from exc
        self.headers: dict[str, str] = dict(headers or {})
        self.params: dict[str, str] = dict(params or {})
        # One keep-alive session per target: the dispatcher keeps this plugin instance.
        self._session: requests.Session | None = None

    def _http(self) -> requests.Session:
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def signature(self, message_id: str, timestamp: int, payload: bytes) -> str | None:
        """The ``webhook-signature`` header of a message, None without a secret."""
        if self._key is None:
            return None
        return sign(self._key, message_id, timestamp, payload)

    @property
    def endpoint(self) -> str:
        schema = "https" if self.secure else "http"
        port = f":{self.port}" if self.port else ""
        return f"{schema}://{self.host}{port}{self.fullpath or '/'}"

    def send(
        self,
        body: str,
        title: str = "",
        notify_type: Any = NotifyType.INFO,
        **kwargs: Any,
    ) -> bool:
        message_id, payload = _as_cloudevent(body, title, notify_type)
        timestamp = self.clock.wall_ms() // MS_PER_SECOND  # the header is in whole seconds
        headers = {
            "User-Agent": USER_AGENT,
            "Content-Type": CONTENT_TYPE,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        headers.update(self.headers)
        signature = self.signature(message_id, timestamp, payload)
        if signature is not None:
            headers["webhook-signature"] = signature
        auth = (self.user, self.password or "") if self.user else None
        self.throttle()
        try:
            response = self._http().post(
                self.endpoint,
                data=payload,
                headers=headers,
                params=self.params or None,
                auth=auth,
                verify=self.verify_certificate,
                timeout=self.request_timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            if self._session is not None:  # start over with a fresh connection next time
                self._session.close()
                self._session = None
            self.logger.warning("webhook request failed: %s", type(exc).__name__)
            self.logger.debug("webhook exception: %s", exc)
            return False
        if 200 <= response.status_code < 300:
            self.logger.info("webhook delivered %s (HTTP %d)", message_id, response.status_code)
            return True
        self.logger.warning(
            "webhook rejected %s: HTTP %d %s",
            message_id,
            response.status_code,
            response.reason or "",
        )
        return False

    def url_identifier(self) -> tuple[Any, ...]:
        return (
            self.secure_protocol if self.secure else self.protocol,
            self.user,
            self.password,
            self.host,
            self.port,
            self.fullpath.rstrip("/"),
        )

    def url(self, privacy: bool = False, *args: Any, **kwargs: Any) -> str:
        params: dict[str, str] = {}
        if self.secret:
            params["secret"] = self.pprint(self.secret, privacy, mode=PrivacyMode.Secret, safe="")
        params.update(self.url_parameters(privacy=privacy, *args, **kwargs))  # noqa: B026
        for name, value in self.headers.items():
            params[f"+{name}"] = (
                self.pprint(value, privacy, mode=PrivacyMode.Secret, safe="") if privacy else value
            )
        for name, value in self.params.items():
            params[f"-{name}"] = (
                self.pprint(value, privacy, mode=PrivacyMode.Secret, safe="") if privacy else value
            )
        auth = ""
        if self.user and self.password:
            password = self.pprint(self.password, privacy, mode=PrivacyMode.Secret, safe="")
            auth = f"{self.quote(self.user, safe='')}:{password}@"
        elif self.user:
            auth = f"{self.quote(self.user, safe='')}@"
        port = f":{self.port}" if self.port else ""
        path = self.quote(self.fullpath, safe="/") if self.fullpath else "/"
        schema = self.secure_protocol if self.secure else self.protocol
        return f"{schema}://{auth}{self.host}{port}{path}?{self.urlencode(params)}"

    @staticmethod
    def parse_url(url: str) -> dict[str, Any] | None:
        results: dict[str, Any] | None = NotifyBase.parse_url(url)
        if not results:
            return results
        query = results["qsd"]
        if query.get("secret"):
            results["secret"] = NotifyBase.unquote(query["secret"])
        results["headers"] = {
            NotifyBase.unquote(name): NotifyBase.unquote(value)
            for name, value in results["qsd+"].items()
        }
        results["params"] = {
            NotifyBase.unquote(name): NotifyBase.unquote(value)
            for name, value in results["qsd-"].items()
        }
        return results


def _headers(plugin: NotifyCloudEventWebhook, message_id: str, timestamp: int) -> dict[str, str]:
    headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": CONTENT_TYPE,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    headers.update(plugin.headers)
    return headers


class WebhookSender:
    """Signed CloudEvents over one keep-alive ``httpx.Client``, no thread hand-off per event."""

    kind: SenderKind = "webhook"
    alternatives: tuple[str, ...] = ()

    def __init__(self, plugin: NotifyCloudEventWebhook, scrub: Scrubber, describe: str) -> None:
        self.plugin = plugin
        self.scrub = scrub
        self.describe = describe
        self._connect, self._read = plugin_timeouts(plugin)
        auth = (plugin.user, plugin.password or "") if plugin.user else None
        self._auth = httpx.BasicAuth(*auth) if auth else None
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                verify=bool(self.plugin.verify_certificate),
                follow_redirects=False,
                params=self.plugin.params or None,
                auth=self._auth,
            )
        return self._client

    def send(self, message: Outgoing, *, timeout: float) -> SendResult:
        if message.event_id is not None:  # the dispatcher's own CloudEvent: no need to parse it
            message_id, payload = message.event_id, message.body.encode("utf-8")
        else:
            message_id, payload = _as_cloudevent(message.body, message.title, message.notify_type)
        timestamp = self.plugin.clock.wall_ms() // MS_PER_SECOND
        headers = _headers(self.plugin, message_id, timestamp)
        signature = self.plugin.signature(message_id, timestamp, payload)
        if signature is not None:
            headers["webhook-signature"] = signature
        limit = httpx.Timeout(min(self._read, timeout), connect=min(self._connect, timeout))
        try:
            response = self._http().post(
                self.plugin.endpoint, content=payload, headers=headers, timeout=limit
            )
        except httpx.HTTPError as exc:
            self.close()  # start over with a fresh connection next time
            logger.debug("webhook %s: %s", self.describe, type(exc).__name__)
            return SendResult(
                False,
                self.scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())}")[:500],
            )
        if 200 <= response.status_code < 300:
            return SendResult(True)
        return SendResult(
            False, self.scrub(f"HTTP {response.status_code} {response.reason_phrase}".strip())
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
