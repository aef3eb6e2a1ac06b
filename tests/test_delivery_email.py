"""mailto:// through a real local SMTP server (aiosmtpd): one mail per operation, HTML + text."""

from __future__ import annotations

from collections.abc import Iterator
from email.header import decode_header, make_header

import pytest
from delivery_support import (
    T0_NS,
    insert_group,
    make_config,
    record,
    status_event,
    step,
    sub,
    substep_failed,
)
from net_support import Inbox, smtp_inbox
from sqlalchemy import Engine

from notifier.config import ChannelConfig
from notifier.outbox import Dispatcher


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with smtp_inbox() as inbox:
        yield inbox, inbox.port


def test_email_has_html_with_a_step_table_and_a_text_part(
    engine: Engine, smtp: tuple[Inbox, int]
) -> None:
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
    assert "<table" in html
    assert '<th align="left">Step / sub-step</th>' in html
    assert "bcs&lt;script&gt;&amp;" in html
    assert "<script>" not in html
    assert "quota &lt;exceeded&gt;" in html
    assert "2023-11-15T06:13:20+08:00" in html  # the channel's time zone
    assert "1m 35s" in html
    assert "Create EIP" in text
    assert "processing → failed" in text
    assert "<table" not in text
