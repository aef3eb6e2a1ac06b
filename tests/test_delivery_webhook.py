"""webhook:// and json:// against a real local HTTP server; CloudEvents schema; signatures."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from config_support import channel, write_config
from delivery_support import (
    FakeClock,
    insert_group,
    make_config,
    record,
    status_event,
    step,
    sub,
    substep_failed,
)
from net_support import http_receiver, verify_standard_webhook
from sqlalchemy import Engine, select

import notifier
from notifier.channels.targets import url_key, validate_channel
from notifier.config import ChannelConfig
from notifier.outbox import Dispatcher, list_entries
from notifier.store.schema import outbox

SCHEMA = json.loads(
    (Path(notifier.__file__).parent / "schemas" / "cloudevent.schema.json").read_text()
)
# A Standard Webhooks example secret (24+ bytes once decoded).
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _failed_operation() -> tuple[list[Any], Any]:
    rec = record(
        status="failed",
        steps=[step("Network", "failed", 1, [sub("Create EIP", "failed", 1, message=["quota"])])],
    )
    events = [
        substep_failed(rec, "Network", "Create EIP", ["quota"]),
        status_event(rec, "processing", "failed"),
    ]
    return events, rec


def test_webhook_posts_one_signed_cloudevent_per_event(engine: Engine) -> None:
    events, rec = _failed_operation()
    with http_receiver() as receiver:
        channel = ChannelConfig(
            name="hooks", urls=(f"webhook://{receiver.base}/in?secret={SECRET}&+X-Team=ops",)
        )
        insert_group(engine, events, rec, ["hooks"])
        clock = FakeClock()
        stats = Dispatcher(
            make_config([channel]), engine, clock=clock, sleep=clock.sleep
        ).dispatch_due()
        requests = receiver.accepted
    assert stats.sent == 1
    assert len(requests) == 2
    for request, event in zip(requests, events, strict=True):
        assert request.path == "/in"
        assert request.headers["content-type"] == "application/cloudevents+json"
        assert request.headers["x-team"] == "ops"
        assert request.headers["webhook-id"] == event.id
        assert request.headers["webhook-timestamp"].isdigit()
        assert verify_standard_webhook(SECRET, request.headers, request.body)
        document = request.json()
        jsonschema.validate(document, SCHEMA)
        assert document["id"] == event.id
        assert document["type"] == f"bcs_notifier.{event.type}"
        assert document["subject"] == rec.operation_id
    assert requests[0].json()["data"]["substep"] == "Create EIP"
    assert requests[1].json()["data"]["to"] == "failed"


def test_the_signing_secret_never_reaches_the_receiver(engine: Engine) -> None:
    """``?secret=`` configures the signature; the request carries only the signature."""
    events, rec = _failed_operation()
    with http_receiver() as receiver:
        channel = ChannelConfig(
            name="hooks", urls=(f"webhook://{receiver.base}/in?secret={SECRET}&x-team=ops",)
        )
        insert_group(engine, events[:1], rec, ["hooks"])
        Dispatcher(make_config([channel]), engine).dispatch_due()
        (request,) = receiver.accepted
    key = SECRET.removeprefix("whsec_")
    assert "secret" not in request.path
    assert key not in request.path
    assert all(key not in value for value in request.headers.values())
    assert key.encode() not in request.body
    assert verify_standard_webhook(SECRET, request.headers, request.body)


def test_no_secret_no_signature_header(engine: Engine) -> None:
    events, rec = _failed_operation()
    with http_receiver() as receiver:
        channel = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/",))
        insert_group(engine, events[:1], rec, ["hooks"])
        Dispatcher(make_config([channel]), engine).dispatch_due()
        request = receiver.accepted[0]
    assert "webhook-signature" not in request.headers
    assert request.headers["webhook-id"] == events[0].id


def test_retry_resends_only_failed_events_with_the_same_webhook_id(engine: Engine) -> None:
    events, rec = _failed_operation()
    with http_receiver(statuses=[200, 503]) as receiver:
        channel = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/?secret={SECRET}",))
        insert_group(engine, events, rec, ["hooks"])
        clock = FakeClock()
        dispatcher = Dispatcher(
            make_config([channel], backoff_initial=10), engine, clock=clock, sleep=clock.sleep
        )
        first = dispatcher.dispatch_due()
        assert (first.sent, first.failed) == (0, 1)
        [entry] = list_entries(engine)
        assert entry.attempts == 1
        assert "HTTP 503" in (entry.last_error or "")
        assert dispatcher.dispatch_due().handled == 0  # backing off
        clock.advance(11)
        second = dispatcher.dispatch_due()
        ids = [request.headers["webhook-id"] for request in receiver.requests]
        statuses = [request.status for request in receiver.requests]
    assert second.sent == 1
    assert ids == [events[0].id, events[1].id, events[1].id]
    assert statuses == [200, 503, 200]


def test_json_target_gets_one_readable_message_per_operation(engine: Engine) -> None:
    events, rec = _failed_operation()
    with http_receiver() as receiver:
        channel = ChannelConfig(
            name="json", urls=(f"json://{receiver.base}/notify?format=markdown",)
        )
        insert_group(engine, events, rec, ["json"])
        Dispatcher(make_config([channel]), engine).dispatch_due()
        bodies = receiver.bodies()
    assert len(bodies) == 1
    assert bodies[0]["title"] == "❌ failed · OpCreate · bcs-prod"
    assert "Sub-step **Network › Create EIP**: processing → failed" in bodies[0]["message"]
    assert bodies[0]["type"] == "failure"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("webhook://example.test/?secret=nope", "must start with 'whsec_'"),
        ("webhook://example.test/?secret=whsec_!!!", "not valid base64"),
        (
            "webhook://example.test/?secret=whsec_" + base64.b64encode(b"short").decode(),
            "24-64 bytes",
        ),
        ("unknownschema://token@example.test/", "unknown schema"),
        ("console://printer", "stdout or stderr"),
    ],
    ids=["no-prefix", "bad-base64", "too-short", "unknown-schema", "bad-console-stream"],
)
def test_invalid_urls_are_config_problems(url: str, fragment: str) -> None:
    problems = validate_channel(ChannelConfig(name="c", urls=("console://", url)))
    assert [key for key, _ in problems] == ["urls[1]"]
    assert fragment in problems[0][1]


def test_an_invalid_signing_secret_is_not_echoed_in_the_problem() -> None:
    secret = "whsec_" + base64.b64encode(b"s3cr3t-but-too-short").decode()
    problems = validate_channel(
        ChannelConfig(name="c", urls=(f"webhook://x.test/?secret={secret}",))
    )
    assert [key for key, _ in problems] == ["urls[0]"]
    assert "24-64 bytes" in problems[0][1]
    assert secret.removeprefix("whsec_") not in problems[0][1]


@pytest.mark.parametrize("command", [["check-config"], ["outbox", "list"]], ids=" ".join)
def test_a_bad_url_fails_any_command_with_its_key_path_and_exit_78(
    tmp_path: Path, command: list[str]
) -> None:
    from click.testing import CliRunner

    from notifier.cli import main

    urls = ("console://", "slack://T1s3cr3tT0k3n/B2", "json://127.0.0.1/")
    config = write_config(tmp_path, channels=[channel("ops", *urls)])
    result = CliRunner().invoke(main, ["--config", str(config), *command])
    assert result.exit_code == 78
    assert "channels[0].urls[1]" in result.output
    assert "s3cr3t" not in result.output


def test_webhook_keys_are_per_url_and_event(engine: Engine) -> None:
    with http_receiver() as inbox:
        url = f"webhook://127.0.0.1:{inbox.port}/hook"
        rec = record(status="failed")
        group_events = [
            status_event(rec, "waiting", "processing"),
            status_event(rec, "processing", "failed"),
        ]
        insert_group(engine, group_events, rec, ["h"])
        clock = FakeClock()
        config = make_config([ChannelConfig(name="h", urls=(url,))])
        stats = Dispatcher(config, engine, clock=clock, sleep=clock.sleep).dispatch_due()
    with engine.connect() as connection:
        [stored] = connection.execute(select(outbox.c.done_targets)).scalars()
    done = json.loads(stored)
    assert stats.sent == 1
    assert done == [f"{url_key(url)}:{event.id}" for event in group_events]
    assert all("127.0.0.1" not in key for key in done)
