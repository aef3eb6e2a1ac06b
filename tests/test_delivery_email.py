"""mailto:// through a real local SMTP server (aiosmtpd): one mail per operation, HTML (a
stacked layout readable at phone width) + the project's own text part, folded RFC 2047
subjects, ``Auto-Submitted``, paced per target once (no second throttle)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from email.header import decode_header, make_header
from typing import Any

import pytest
from delivery_support import (
    T0_NS,
    FakeClock,
    insert_group,
    make_config,
    record,
    status_event,
    step,
    sub,
    substep_failed,
)
from net_support import Inbox, free_port, smtp_inbox
from sqlalchemy import Engine

from notifier.channels import email as email_channel
from notifier.channels.render import RenderOptions, render_message
from notifier.config import ChannelConfig
from notifier.model import Event, OperationRecord
from notifier.outbox import Dispatcher


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_inbox() as inbox:
        yield inbox, inbox.port


def test_email_has_stacked_html_and_a_text_part(engine: Engine, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    hostile = "bcs<script>&"
    rec = record(
        status="failed",
        name=hostile,
        steps=[
            step(
                "Preparation",
                "finished",
                1,
                [sub("Generate config", "finished", 1, start=T0_NS, end=T0_NS + 2 * 10**9)],
            ),
            step(
                "Network",
                "failed",
                2,
                [
                    sub(
                        "Create EIP",
                        "failed",
                        2,
                        start=T0_NS,
                        end=T0_NS + 95 * 10**9,
                        message=["quota <exceeded>"],
                    )
                ],
            ),
        ],
    )
    events = [
        substep_failed(rec, "Network", "Create EIP", ["quota <exceeded>"]),
        status_event(rec, "processing", "failed"),
    ]
    channel = ChannelConfig(
        name="mail",
        urls=(f"mailto://127.0.0.1:{port}?from=bcs@example.test&to=ops@example.test",),
        timezone="Asia/Shanghai",
    )
    insert_group(engine, events, rec, ["mail"])
    stats = Dispatcher(make_config([channel]), engine).dispatch_due()
    assert stats.sent == 1
    assert len(inbox.messages) == 1
    mail = inbox.messages[0]
    assert inbox.recipients == [["ops@example.test"]]
    subject = str(make_header(decode_header(mail["Subject"])))
    assert subject == f"❌ failed · OpCreate · {hostile}"
    parts = {part.get_content_type(): part for part in mail.walk() if not part.is_multipart()}
    assert set(parts) == {"text/plain", "text/html"}
    html = parts["text/html"].get_payload(decode=True).decode()
    text = parts["text/plain"].get_payload(decode=True).decode()
    assert "<table" not in html  # no wide table: stacked, readable at 375 px
    assert 'style="max-width:640px;overflow-wrap:anywhere"' in html
    assert "<b>Create EIP</b>" not in html  # sub-steps are list items under their step
    assert "<b>Network</b>" in html
    assert "bcs&lt;script&gt;&amp;" in html
    assert "<script>" not in html
    assert "quota &lt;exceeded&gt;" in html
    assert "2023-11-15T06:13:20+08:00" in html  # the channel's time zone
    assert "1m 35s" in html
    assert "Create EIP" in text
    assert "processing → failed" in text
    assert "<table" not in text


def _text_renderer_body(events: list[Event], rec: OperationRecord, timezone: str) -> str:
    return render_message(events, rec, RenderOptions(format="text", timezone=timezone)).body


def test_the_text_part_is_the_plain_text_renderer_and_headers_are_right(
    engine: Engine, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    name = "区块链-" + "ünïcödé-chain-" * 20  # a subject far over 75 characters, not ASCII
    rec = record(
        status="failed",
        name=name,
        steps=[step("Network", "failed", 1, [sub("Create EIP", "failed", 1, message=["q"])])],
    )
    events = [
        substep_failed(rec, "Network", "Create EIP", ["q"]),
        status_event(rec, "processing", "failed"),
    ]
    channel = ChannelConfig(
        name="mail",
        urls=(f"mailto://127.0.0.1:{port}?from=bcs@example.test&to=ops@example.test",),
    )
    insert_group(engine, events, rec, ["mail"])
    assert Dispatcher(make_config([channel]), engine).dispatch_due().sent == 1
    [mail] = inbox.messages

    assert mail["Auto-Submitted"] == "auto-generated"
    raw_subject = mail.get_all("Subject")
    assert raw_subject is not None
    assert len(raw_subject) == 1
    folded = raw_subject[0]
    words = re.findall(r"=\?[^?]+\?[bBqQ]\?[^?]*\?=", folded)
    assert len(words) > 1  # folded into several encoded words
    assert all(len(word) <= 75 for word in words)
    raw = mail.as_bytes().split(b"\n\n", 1)[0].decode("ascii")
    long_lines = [line for line in raw.splitlines() if len(line.rstrip("\r")) > 78]
    assert long_lines == []
    subject = str(make_header(decode_header(folded)))
    assert f"❌ failed · OpCreate · {name}".startswith(subject.removesuffix("…"))
    assert len(subject) > 75
    assert "apprise" not in raw.lower()

    parts = {part.get_content_type(): part for part in mail.walk() if not part.is_multipart()}
    text = parts["text/plain"].get_payload(decode=True).decode().replace("\r\n", "\n")
    assert text.strip() == _text_renderer_body(events, rec, "UTC").strip()
    assert parts["text/plain"].get_content_charset() == "utf-8"


def test_mail_is_paced_once_per_target(engine: Engine, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    for number in range(4):
        rec = record(operation_id=f"BCSSVC01-99-17000000000000004{number:02d}", status="failed")
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["mail"])
    channel = ChannelConfig(
        name="mail",
        urls=(f"mailto://127.0.0.1:{port}?from=bcs@example.test&to=ops@example.test",),
    )
    clock = FakeClock()
    dispatcher = Dispatcher(make_config([channel]), engine, clock=clock, sleep=clock.sleep)
    stats = dispatcher.dispatch_due()
    assert (stats.sent, stats.deferred) == (4, 0)  # 3 waits of INTERVAL fit the 5 s budget
    assert len(inbox.messages) == 4
    assert clock.sleeps == pytest.approx([email_channel.INTERVAL] * 3)


class _RefuseOnce(Inbox):
    """Refuses ``refused`` as a recipient the first time it is named."""

    def __init__(self, port: int, refused: str) -> None:
        super().__init__(port)
        self.refused = refused

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address == self.refused:
            self.refused = ""
            return "550 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_retry_mails_only_the_recipients_that_did_not_get_it(engine: Engine) -> None:
    from aiosmtpd.controller import Controller

    inbox = _RefuseOnce(free_port(), "b@example.test")
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        rec = record(status="failed")
        now_ms = int(time.time() * 1000)
        found = [status_event(rec, "processing", "failed")]
        insert_group(engine, found, rec, ["mail"], now_ms=now_ms)
        url = (
            f"mailto://127.0.0.1:{inbox.port}?from=bcs@example.test"
            "&to=a@example.test,b@example.test"
        )
        channel = ChannelConfig(name="mail", urls=(url,))
        dispatcher = Dispatcher(make_config([channel], backoff_initial=0), engine)
        first = dispatcher.dispatch_due()
        second = dispatcher.dispatch_due()
    finally:
        controller.stop()
    assert (first.sent, second.sent) == (0, 1)
    assert inbox.recipients == [["a@example.test"], ["b@example.test"]]
