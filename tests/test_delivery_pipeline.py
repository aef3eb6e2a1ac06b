"""A poll that records transitions delivers them: chat, webhook and email, end to end over
the real pipeline (scripted source), a migrated SQLite file and real local servers."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config_support import channel, config_toml
from net_support import http_receiver, smtp_inbox
from sqlalchemy import Engine

from notifier.config import parse_config
from notifier.outbox import Dispatcher
from notifier.pipeline import Poller

FIXTURE = Path(__file__).parent / "fixtures" / "example_response.json"
SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


@dataclass
class _Fetched:
    body: Any
    request_id: str | None = "req-1"


class _Scripted:
    def __init__(self, bodies: list[Any]) -> None:
        self.bodies = bodies

    def fetch(self) -> _Fetched:
        return _Fetched(self.bodies.pop(0))

    def close(self) -> None:
        return


def test_poll_records_and_the_dispatcher_delivers_everywhere(engine: Engine) -> None:
    body = json.loads(FIXTURE.read_text())
    changed = copy.deepcopy(body)
    operation = changed["operation_records"][0]
    operation["operation_status"] = "failed"
    operation["record_time"] += 60_000_000_000
    dependent = operation["operation_process"]["Create Other Dependent Resource"]
    dependent["status"] = "failed"
    dependent["sub_steps"]["Create network storage"].update(
        status="failed", detail="", message=["disk quota exceeded"]
    )
    with smtp_inbox() as inbox, http_receiver() as receiver:
        mail = f"mailto://127.0.0.1:{inbox.port}?from=bcs@example.test&to=ops@example.test"
        channels = [
            channel("chat", f"json://{receiver.base}/chat?format=markdown"),
            channel("hooks", f"webhook://{receiver.base}/hooks?secret={SECRET}"),
            channel("mail", mail, statuses=["failed"]),
        ]
        config = parse_config(config_toml(channels=channels))
        client = _Scripted([body, changed])
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
