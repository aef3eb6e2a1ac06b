"""``mailto://`` / ``mailtos://`` targets: mails written by the project, sent over SMTP.

apprise parses the URL (server, port, TLS mode, login, from, to, cc, bcc, reply-to,
``+Header=value``); the mail is built here (:func:`build_mail`):

- ``multipart/alternative``: a ``text/plain`` part from the project's plain-text renderer
  (the same content ``console://`` prints) and the ``text/html`` part;
- the subject folded the RFC 2047 way (encoded words of at most 75 characters, lines of at
  most 78), ``Date``, ``Message-ID``;
- ``Auto-Submitted: auto-generated`` (RFC 3834), so out-of-office replies stay away.

One mail per ``To`` address (each recipient sees only themselves, as apprise does), cc and
bcc on each. Pacing: :data:`INTERVAL` seconds between two mails to the same target, kept by
the dispatcher (no second throttle here). PGP URLs are left to apprise.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid
from typing import Any, Final

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

#: Seconds between two mails to the same target (server + login + sender).
INTERVAL: Final = 1.0
AUTO_SUBMITTED: Final = "auto-generated"
#: ``email.policy.SMTP`` folds encoded words up to 76 characters; RFC 2047 allows 75. With
#: lines of at most 76 characters every encoded word stays within the limit.
POLICY: Final = SMTP.clone(max_line_length=76)


def _address(pair: tuple[Any, str]) -> Address | str:
    name, address = pair
    if not name:
        return address
    try:
        return Address(display_name=str(name), addr_spec=address)
    except (ValueError, IndexError):
        return address


def build_mail(
    *,
    subject: str,
    text: str,
    html: str | None,
    sender: tuple[Any, str],
    to: tuple[Any, str],
    cc: Sequence[str] = (),
    reply_to: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    domain: str | None = None,
    now: datetime | None = None,
) -> EmailMessage:
    """One mail: text part (and HTML alternative), folded subject, ``Auto-Submitted``."""
    mail = EmailMessage(policy=POLICY)
    mail["Subject"] = " ".join(subject.split())
    mail["From"] = _address(sender)
    mail["To"] = _address(to)
    if cc:
        mail["Cc"] = ", ".join(cc)
    if reply_to:
        mail["Reply-To"] = ", ".join(reply_to)
    mail["Date"] = format_datetime(now or datetime.now(UTC))
    mail["Message-ID"] = make_msgid(domain=domain or None)
    mail["Auto-Submitted"] = AUTO_SUBMITTED
    mail["X-Mailer"] = USER_AGENT
    for name, value in headers:
        if name.lower() not in {"subject", "from", "to", "cc", "bcc", "date", "message-id"}:
            mail[name] = value
    mail.set_content(text, subtype="plain", charset="utf-8")
    if html is not None:
        mail.add_alternative(html, subtype="html", charset="utf-8")
    return mail


class EmailSender:
    kind: SenderKind = "message"
    alternatives: tuple[str, ...] = ("text",)
    interval: float = INTERVAL

    def __init__(self, plugin: Any, scrub: Scrubber, describe: str) -> None:
        self.plugin = plugin
        self.scrub = scrub
        self.describe = describe
        self._connect, self._read = plugin_timeouts(plugin)
        self._delivered = Delivered()  # recipients of a partly delivered message

    def _session(self, timeout: float) -> smtplib.SMTP:
        plugin = self.plugin
        context = ssl.create_default_context()
        if not plugin.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        session: smtplib.SMTP
        if plugin.secure_mode == "ssl":
            session = smtplib.SMTP_SSL(
                plugin.smtp_host, plugin.port, timeout=timeout, context=context
            )
        else:
            session = smtplib.SMTP(plugin.smtp_host, plugin.port, timeout=timeout)
        try:
            if plugin.secure_mode == "starttls":
                session.starttls(context=context)
            if plugin.user and plugin.password:
                session.login(plugin.user, plugin.password)
        except BaseException:
            session.close()
            raise
        return session

    def mails(self, message: Outgoing) -> list[tuple[str, list[str], EmailMessage]]:
        """``(To address, envelope recipients, mail)`` for every ``To`` address of the URL."""
        plugin = self.plugin
        html = message.body if message.body_format == "html" else None
        text = message.alternatives.get("text", message.body if html is None else "")
        cc = sorted(plugin.cc)
        bcc = sorted(plugin.bcc)
        headers = list(plugin.headers.items())
        result = []
        for to in plugin.targets:
            mail = build_mail(
                subject=message.title,
                text=text,
                html=html,
                sender=plugin.from_addr,
                to=to,
                cc=[address for address in cc if address != to[1]],
                reply_to=sorted(plugin.reply_to),
                headers=headers,
                domain=plugin.smtp_host,
            )
            result.append((to[1], [to[1], *cc, *bcc], mail))
        return result

    def send(self, message: Outgoing, *, timeout: float) -> SendResult:
        if not self.plugin.targets:
            return SendResult(False, "the URL names no recipient")
        mails = [
            (self._delivered.key(to, message), recipients, mail)
            for to, recipients, mail in self.mails(message)
        ]
        mails = [item for item in mails if item[0] not in self._delivered]  # a retry: the rest
        if not mails:
            return SendResult(True)
        try:
            session = self._session(min(self._connect, self._read, timeout))
            try:
                for done, recipients, mail in mails:
                    refused = session.send_message(
                        mail, from_addr=self.plugin.from_addr[1], to_addrs=recipients
                    )
                    if refused:
                        return SendResult(False, self.scrub(f"refused recipients: {refused}"))
                    self._delivered.add(done)
            finally:
                try:
                    session.quit()
                except (OSError, smtplib.SMTPException):
                    session.close()
        except (OSError, smtplib.SMTPException) as exc:
            text = " ".join(str(exc).split())
            return SendResult(
                False,
                self.scrub(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:500],
            )
        return SendResult(True)

    def close(self) -> None:
        return


def email_sender(plugin: Any, scrub: Scrubber, describe: str) -> Sender:
    if str(getattr(plugin, "pgp_mode", "no")) not in ("no", "none", "PGPMode.NONE"):
        return AppriseSender(plugin, scrub, describe)  # signed or encrypted: apprise's path
    return EmailSender(plugin, scrub, describe)
