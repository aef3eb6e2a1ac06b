"""A poll that records transitions delivers them: chat, webhook and email, end to end over
the real pipeline (scripted source), a migrated SQLite file and real local servers."""

from __future__ import annotations

from typing import Any

from config_support import channel, config_toml
from net_support import http_receiver, smtp_inbox
from source_support import ScriptedClient, storage_failed
from sqlalchemy import Engine

from notifier.config import parse_config
from notifier.outbox import Dispatcher
from notifier.pipeline import Poller

SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def test_poll_records_and_the_dispatcher_delivers_everywhere(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    body = example_body
    with smtp_inbox() as inbox, http_receiver() as receiver:
        mail = f"mailto://127.0.0.1:{inbox.port}?from=bcs@example.test&to=ops@example.test"
        channels = [
            channel("chat", f"json://{receiver.base}/chat?format=markdown"),
            channel("hooks", f"webhook://{receiver.base}/hooks?secret={SECRET}"),
            channel("mail", mail, statuses=["failed"]),
        ]
        config = parse_config(config_toml(channels=channels))
        client = ScriptedClient([body, storage_failed(body)])
        with Poller(config, engine, client_factory=lambda _source: client) as poller:
            assert not poller.poll_all()[0].events  # the silent baseline
            found = poller.poll_all()[0].events
        stats = Dispatcher(config, engine).dispatch_due()
        chat = [r.json() for r in receiver.accepted if r.path.startswith("/chat")]
        hooks = [r for r in receiver.accepted if r.path.startswith("/hooks")]

    assert len(found) >= 3
    assert stats.sent == 3
    assert len(chat) == 1  # one readable message for the operation
    assert chat[0]["title"] == "❌ failed · OpCreate · bcs-i3b0ms"
    assert "Create network storage" in chat[0]["message"]
    assert [r.headers["webhook-id"] for r in hooks] == [event.id for event in found]
    assert all("webhook-signature" in r.headers for r in hooks)
    [mail] = inbox.messages
    types = {part.get_content_type() for part in mail.walk() if not part.is_multipart()}
    assert types == {"text/plain", "text/html"}
