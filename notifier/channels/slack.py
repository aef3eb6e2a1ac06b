"""``slack://`` targets: Block Kit messages built for Slack, posted by the project.

apprise parses the URL (webhook tokens or a bot token, channels, ``user@``); the message is
built here and posted over one keep-alive ``httpx.Client`` per target:

- a ``header`` block with the title (plain text, at most :data:`HEADER_MAX` characters);
- the body (rendered by ``channels.render`` for the ``slack`` dialect, already cut by meaning
  to the target's budget) in ``section`` blocks of ``mrkdwn`` text, at most
  :data:`SECTION_MAX` characters each, split between blocks of lines, then between lines,
  a single overlong line at a space; never more than :data:`MAX_BLOCKS` blocks;
- a top-level ``text``: the title and the first line of the body, which Slack shows in
  phone notifications and where blocks cannot be shown.

No "Apprise" branding: no footer, icon or username unless the URL names a user.
Webhook modes post to ``{HOOK_BASE}/T/B/X`` (``hooks.slack-gov.com`` for gov webhooks),
the bot mode to ``{API_BASE}/chat.postMessage`` with the token as ``Bearer``; workflow URLs
are left to apprise. Tests point the bases at a local server.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

import httpx
from apprise.plugins.slack import NotifySlack, SlackMode

from notifier.channels.privacy import Scrubber
from notifier.channels.senders import (
    AppriseSender,
    Delivered,
    Outgoing,
    Sender,
    SenderKind,
    SendResult,
    plugin_timeouts,
)
from notifier.channels.webhook import USER_AGENT

logger = logging.getLogger(__name__)

#: Slack's documented limits (https://docs.slack.dev/reference/block-kit/blocks).
HEADER_MAX: Final = 150
SECTION_MAX: Final = 3000
MAX_BLOCKS: Final = 50
TEXT_MAX: Final = 3000  # the notification fallback: Slack truncates long text anyway
#: Body characters a Slack message carries at most (cut by meaning to fit): four full
#: sections' worth, which a phone still scrolls through comfortably.
BODY_BUDGET: Final = 12_000

HOOK_BASE = "https://hooks.slack.com/services"
HOOK_GOV_BASE = "https://hooks.slack-gov.com/services"
API_BASE = "https://slack.com/api"


def to_mrkdwn(markdown: str) -> str:
    """The ``slack`` dialect's CommonMark as Slack mrkdwn: ``**bold**`` -> ``*bold*``.
    API text never holds ``*`` (``render.escape_slack`` writes ``∗``), so every ``**`` is
    markup; nothing else is converted (no link is ever made from API text)."""
    return markdown.replace("**", "*")


def escape_text(text: str) -> str:
    """Plain text for a ``mrkdwn`` field: Slack's three escapes."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _split_line(line: str, limit: int) -> list[str]:
    """A line longer than ``limit`` in pieces of at most ``limit``, at a space if there is one."""
    pieces: list[str] = []
    while len(line) > limit:
        cut = line.rfind(" ", limit // 2, limit)
        cut = cut if cut > 0 else limit
        pieces.append(line[:cut].rstrip())
        line = line[cut:].lstrip()
    if line:
        pieces.append(line)
    return pieces


def sections(body: str, limit: int = SECTION_MAX) -> list[str]:
    """``body`` in texts of at most ``limit`` characters: whole paragraphs where they fit,
    else whole lines, a line longer than a section at a space."""
    chunks: list[str] = []
    current = ""
    for paragraph in body.split("\n\n"):
        candidate = f"{current}\n\n{paragraph}" if current else paragraph
        if len(candidate) <= limit:
            current = candidate
            continue
        if current:
            chunks.append(current)
            current = ""
        for line in paragraph.split("\n"):
            for piece in _split_line(line, limit):
                candidate = f"{current}\n{piece}" if current else piece
                if len(candidate) <= limit:
                    current = candidate
                else:
                    chunks.append(current)
                    current = piece
    if current.strip():
        chunks.append(current)
    return [chunk for chunk in chunks if chunk.strip()]


def build_payload(title: str, body: str, *, channel: str | None = None) -> dict[str, Any]:
    """The ``chat.postMessage`` / webhook JSON for one message (``body`` in Slack mrkdwn)."""
    header = _cut(" ".join(title.split()) or "bcs-notifier", HEADER_MAX)
    texts = sections(body)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}
    ]
    room = MAX_BLOCKS - 1
    if len(texts) > room:  # never with the body budget; kept as a hard guarantee
        texts = [*texts[: room - 1], "_(message shortened to fit Slack)_"]
    blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": text}} for text in texts]
    first_line = next((line for line in body.splitlines() if line.strip()), "")
    fallback = f"{escape_text(header)}\n{first_line}" if first_line else escape_text(header)
    payload: dict[str, Any] = {"text": _cut(fallback, TEXT_MAX), "blocks": blocks}
    if channel:
        payload["channel"] = channel
    return payload


def _channel(name: str | None) -> str | None:
    """A channel of the URL as Slack takes it (apprise's rules: ``+ID`` is an id, ``@user``
    a user, anything else a ``#channel``)."""
    if not name:
        return None
    if name[0] == "+":
        return name[1:]
    if name[0] in "@#":
        return name
    return f"#{name}"


class SlackSender:
    kind: SenderKind = "message"
    alternatives: tuple[str, ...] = ()

    def __init__(self, plugin: NotifySlack, scrub: Scrubber, describe: str) -> None:
        self.plugin = plugin
        self.scrub = scrub
        self.describe = describe
        self._connect, self._read = plugin_timeouts(plugin)
        self._client: httpx.Client | None = None
        self._delivered = Delivered()  # channels of a partly delivered message

    def _url(self) -> str:
        if self.plugin.mode is SlackMode.BOT:
            return f"{API_BASE}/chat.postMessage"
        base = HOOK_GOV_BASE if self.plugin.mode is SlackMode.WEBHOOK_GOV else HOOK_BASE
        plugin = self.plugin
        return f"{base}/{plugin.token_a}/{plugin.token_b}/{plugin.token_c}"

    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if self.plugin.mode is SlackMode.BOT:
                headers["Authorization"] = f"Bearer {self.plugin.access_token}"
            self._client = httpx.Client(
                verify=bool(self.plugin.verify_certificate), headers=headers
            )
        return self._client

    def send(self, message: Outgoing, *, timeout: float) -> SendResult:
        body = to_mrkdwn(message.body)
        channels = list(self.plugin.channels) or [None]
        limit = httpx.Timeout(min(self._read, timeout), connect=min(self._connect, timeout))
        for name in channels:
            done = self._delivered.key(name or "", message)
            if done in self._delivered:
                continue  # a retry: this channel has it already
            payload = build_payload(message.title, body, channel=_channel(name))
            if self.plugin.user:
                payload["username"] = self.plugin.user
            result = self._post(payload, limit)
            if not result.ok:
                return result
            self._delivered.add(done)
        return SendResult(True)

    def _post(self, payload: dict[str, Any], limit: httpx.Timeout) -> SendResult:
        content = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            response = self._http().post(
                self._url(),
                content=content,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=limit,
            )
        except httpx.HTTPError as exc:
            self.close()
            return SendResult(
                False,
                self.scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())}")[:500],
            )
        if response.status_code != 200:
            reason = " ".join(response.text.split())[:200]
            return SendResult(
                False, self.scrub(f"Slack answered HTTP {response.status_code} {reason}")
            )
        if self.plugin.mode is SlackMode.BOT:
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            if not isinstance(answer, dict) or not answer.get("ok"):
                error = answer.get("error") if isinstance(answer, dict) else None
                reason = (
                    f"Slack refused the message: {error}"
                    if error
                    else ('Slack did not confirm the message (no {"ok": true} in its answer)')
                )
                return SendResult(False, self.scrub(reason))
        return SendResult(True)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def slack_sender(plugin: Any, scrub: Scrubber, describe: str) -> Sender:
    if plugin.mode in (SlackMode.WEBHOOK, SlackMode.WEBHOOK_GOV, SlackMode.BOT):
        return SlackSender(plugin, scrub, describe)
    return AppriseSender(plugin, scrub, describe)  # workflow URLs: apprise's own format
