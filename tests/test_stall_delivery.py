"""Stall events are rendered and delivered like any event: chat text, webhooks, routing."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import jsonschema
import pytest
from delivery_support import (
    T0_NS,
    FakeClock,
    event_for,
    insert_group,
    make_config,
    record,
    step,
    sub,
)
from net_support import http_receiver, verify_standard_webhook
from sqlalchemy import Engine

import notifier
from notifier.channels.render import RenderOptions, render_message
from notifier.config import ChannelConfig
from notifier.model import Event, EventType, OperationRecord, describe
from notifier.outbox import Dispatcher
from notifier.routing import channels_for
from notifier.stalls import NS, StallSettings, Usual, key_of, plan_stalls, stall_event

SCHEMA = json.loads(
    (Path(notifier.__file__).parent / "schemas" / "cloudevent.schema.json").read_text()
)
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
STEP, SUB = "Create Cluster", "Create CCE cluster"
STARTED = T0_NS - 1_500 * NS  # the sub-step has run 25 minutes at T0


def stalled_record(*, sub_status: str = "processing") -> OperationRecord:
    end = T0_NS if sub_status != "processing" else 0
    return record(
        steps=[
            step(
                STEP,
                "processing",
                1,
                [
                    sub(SUB, sub_status, 1, start=STARTED, end=end),
                    sub("Create node pool", "", 2),
                ],
            )
        ]
    )


def stall(rec: OperationRecord, *, reminders: bool = False, at: int = T0_NS) -> Event:
    usual = {key_of(rec, STEP, SUB): Usual(12, 300 * NS, 420 * NS, 840 * NS)}
    settings = StallSettings(reminders=reminders)
    (notice,) = plan_stalls([rec], [], usual, at, settings).notices
    return stall_event("prod", rec, notice, at)


def test_the_chat_message_says_which_step_how_long_and_how_long_it_usually_takes() -> None:
    rec = stalled_record()
    message = render_message([stall(rec)], rec, RenderOptions(format="text"))
    assert message.title == "⏰ stalled · OpCreate · bcs-prod"
    assert message.notify_type == "warning"
    body = message.body
    assert body.splitlines()[0] == "OpCreate on bcs-prod is stalled"
    assert (
        "⏰ Sub-step Create Cluster › Create CCE cluster: stalled, processing for 25m 00s; "
        "usually up to 7m 00s (p95 of 12 runs), alert after 14m 00s" in body
    )


def test_a_reminder_says_still_stalled() -> None:
    rec = stalled_record()
    event = stall(rec, reminders=True, at=STARTED + 2 * 840 * NS + NS)
    assert event.stall is not None
    assert event.stall.reminder == 1
    body = render_message([event], rec, RenderOptions(format="text")).body
    assert "still stalled, processing for 28m 01s" in body


def test_a_stall_that_ended_meanwhile_does_not_title_the_message() -> None:
    """Coalesced cycles: the stall, then the sub-step finished: no longer "stalled"."""
    rec = stalled_record()
    event = stall(rec)
    moved = stalled_record(sub_status="finished")
    message = render_message([event], moved, RenderOptions(format="text"))
    assert message.title == "🔄 processing · OpCreate · bcs-prod"
    assert "stalled, processing for 25m 00s" in message.body  # the transition stays told


@pytest.mark.parametrize(
    ("fmt", "dialect"),
    [("markdown", "commonmark"), ("markdown", "slack"), ("html", "commonmark")],
    ids=["markdown", "slack", "html"],
)
def test_step_names_from_the_api_are_escaped_in_stall_messages(fmt: str, dialect: str) -> None:
    rec = record(
        steps=[
            step("<b>*Cluster*</b>", "processing", 1, [sub(SUB, "processing", 1, start=STARTED)])
        ]
    )
    usual = {key_of(rec, "<b>*Cluster*</b>", SUB): Usual(12, 300 * NS, 420 * NS, 840 * NS)}
    (notice,) = plan_stalls([rec], [], usual, T0_NS, StallSettings()).notices
    event = stall_event("prod", rec, notice, T0_NS)
    body = render_message([event], rec, RenderOptions(format=fmt, dialect=dialect)).body
    assert "<b>*Cluster" not in body
    assert "stalled, processing for 25m 00s" in body


def test_describe_tells_the_stall_in_one_line() -> None:
    line = describe(stall(stalled_record()))
    assert "substep.stalled [Create Cluster / Create CCE cluster]" in line
    assert "processing for 1500 s (p95 420 s of 12, threshold 840 s)" in line


def test_stalls_route_by_their_glob() -> None:
    event = stall(stalled_record())
    channels = [
        ChannelConfig(name="stalls", urls=("json://x",), events=("*.stalled",)),
        ChannelConfig(name="substeps", urls=("json://x",), events=("substep.*",)),
        ChannelConfig(name="ops", urls=("json://x",), events=("operation.*",)),
        # a stall has no new status: a statuses filter lets it through
        ChannelConfig(name="bad-news", urls=("json://x",), statuses=("failed",)),
    ]
    assert channels_for(channels, [event]) == ["stalls", "substeps", "bad-news"]


def test_a_stall_is_delivered_as_a_signed_cloudevent_and_a_chat_message(engine: Engine) -> None:
    rec = stalled_record()
    event = stall(rec)
    with http_receiver() as receiver:
        hooks = ChannelConfig(name="hooks", urls=(f"webhook://{receiver.base}/in?secret={SECRET}",))
        chat = ChannelConfig(name="chat", urls=(f"json://{receiver.base}/chat",))
        insert_group(engine, [event], rec, ["hooks", "chat"])
        clock = FakeClock()
        stats = Dispatcher(
            make_config([hooks, chat]), engine, clock=clock, sleep=clock.sleep
        ).dispatch_due()
        requests = list(receiver.requests)
    assert stats.sent == 2
    (hook,) = [request for request in requests if request.path == "/in"]
    assert hook.headers["webhook-id"] == event.id
    assert verify_standard_webhook(SECRET, hook.headers, hook.body)
    document = hook.json()
    jsonschema.validate(document, SCHEMA)
    assert document["type"] == "bcs_notifier.substep.stalled"
    assert document["data"]["elapsed_seconds"] == 1500.0
    assert document["data"]["threshold_seconds"] == 840.0
    (message,) = [request for request in requests if request.path == "/chat"]
    payload = message.json()
    assert payload["title"] == "⏰ stalled · OpCreate · bcs-prod"
    assert "usually up to 7m 00s (p95 of 12 runs)" in payload["message"]


def test_templates_see_the_stall_and_other_events_see_none() -> None:
    from notifier.channels.render import Templates

    rec = stalled_record()
    templates = Templates(
        title="{{ events[0].symbol }} {{ events[0].stall.elapsed_seconds }}",
        body="{% for e in events %}{{ e.type }}={{ e.stall is none }};{% endfor %}",
    )
    other = event_for(rec, EventType.STEP_STATUS_CHANGED, step_name=STEP, to_status="processing")
    message = render_message([stall(rec), other], rec, RenderOptions(format="text"), templates)
    assert message.title == "⏰ 1500.0"
    assert message.body == "substep.stalled=False;step.status_changed=True;"
