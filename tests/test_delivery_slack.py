"""Slack messages built for Slack: every payload is posted to a local endpoint (the Slack
sender pointed at 127.0.0.1) and checked against Slack's documented Block Kit limits:
header <= 150 characters of plain text, section text <= 3,000, at most 50 blocks, plus a
top-level ``text`` for notifications; no "Apprise" branding; API text escaped without
backslashes (Slack shows them literally)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from delivery_support import (
    T0_NS,
    FakeClock,
    event_for,
    insert_group,
    make_config,
    record,
    status_event,
    step,
    sub,
    substep_failed,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from net_support import Receiver, http_receiver, point_slack_at
from sqlalchemy import Engine

from notifier.channels import slack
from notifier.config import ChannelConfig
from notifier.model import EventType, OperationRecord
from notifier.outbox import Dispatcher

S = 1_000_000_000
HOOK = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ops"
TEN_KB = "quota exceeded: " + "the request could not be served " * 320  # ~10 KB, spaces


def check_slack_limits(payload: dict[str, Any]) -> None:
    """Slack's documented limits for ``chat.postMessage`` / incoming webhooks."""
    blocks = payload["blocks"]
    assert 1 <= len(blocks) <= slack.MAX_BLOCKS
    header = blocks[0]
    assert header["type"] == "header"
    assert header["text"]["type"] == "plain_text"
    assert 0 < len(header["text"]["text"]) <= slack.HEADER_MAX
    for block in blocks[1:]:
        assert block["type"] == "section"
        assert block["text"]["type"] == "mrkdwn"
        assert 0 < len(block["text"]["text"]) <= slack.SECTION_MAX
    assert isinstance(payload["text"], str)
    assert 0 < len(payload["text"]) <= 40_000  # Slack truncates longer text
    document = json.dumps(payload, ensure_ascii=False)
    assert "apprise" not in document.lower()
    assert not {"username", "icon_url", "icon_emoji", "attachments"} & set(payload)


def _big_operation(steps: int = 60, message: str = TEN_KB) -> OperationRecord:
    return record(
        status="failed",
        name="bcs-" + "very-long-blockchain-name-" * 12,  # a title far over 150 characters
        steps=[
            step(
                f"Step {number}: create dependent resources",
                "failed" if number == 60 else "finished",
                number,
                [
                    sub(
                        f"Sub-step {number}.{index}",
                        "failed" if number == 60 and index == 1 else "finished",
                        index,
                        start=T0_NS,
                        end=T0_NS + (number + index) * 10**9,
                        message=[message],
                    )
                    for index in (1, 2)
                ],
            )
            for number in range(1, steps + 1)
        ],
    )


def _post_all(engine: Engine, channels: list[ChannelConfig], monkeypatch: Any) -> Receiver:
    with http_receiver() as receiver:
        point_slack_at(monkeypatch, receiver)
        stats = Dispatcher(make_config(channels), engine).dispatch_due()
        assert stats.failed == 0
        assert stats.dead == 0
    return receiver


def test_an_operation_with_60_steps_and_10_kb_messages_fits_slack(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = _big_operation()
    events = [
        *(
            event_for(
                rec,
                EventType.STEP_STATUS_CHANGED,
                step_name=f"Step {number}: create dependent resources",
                from_status="processing",
                to_status="finished",
                message=[TEN_KB],
            )
            for number in range(1, 60)
        ),
        substep_failed(rec, "Step 60: create dependent resources", "Sub-step 60.1", [TEN_KB]),
        status_event(rec, "processing", "failed"),
    ]
    insert_group(engine, events, rec, ["slack"])
    receiver = _post_all(engine, [ChannelConfig(name="slack", urls=(HOOK,))], monkeypatch)
    [request] = receiver.accepted
    assert request.path == "/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
    assert request.headers["content-type"].startswith("application/json")
    payload = request.json()
    check_slack_limits(payload)
    assert payload["channel"] == "#ops"
    header = payload["blocks"][0]["text"]["text"]
    assert header.startswith("❌ failed · OpCreate · bcs-very-long")
    assert header.endswith("…")
    body = "\n".join(block["text"]["text"] for block in payload["blocks"][1:])
    assert "Sub-step 60.1" in body  # the failure is kept when cutting
    assert "*Operation*" in body  # mrkdwn bold, not CommonMark's **
    assert "**" not in body
    assert len(body) <= slack.BODY_BUDGET + len(payload["blocks"]) * 2
    assert payload["text"].startswith("❌ failed · OpCreate")  # the phone notification


@pytest.mark.parametrize(
    ("steps", "message", "max_length"),
    [(1, "short", 0), (60, TEN_KB, 0), (60, TEN_KB, 3500), (5, "x" * 9000, 0)],
    ids=["small", "big", "channel-max-length", "one-long-word"],
)
def test_every_payload_is_within_the_limits(
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    steps: int,
    message: str,
    max_length: int,
) -> None:
    rec = _big_operation(steps, message)
    last = f"Step {steps}: create dependent resources"
    insert_group(engine, [substep_failed(rec, last, f"Sub-step {steps}.1", [message])], rec, ["s"])
    insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["s"])
    channel = ChannelConfig(name="s", urls=(HOOK, HOOK.replace("#ops", "")), max_length=max_length)
    receiver = _post_all(engine, [channel], monkeypatch)
    payloads = receiver.bodies()
    assert len(payloads) == 2  # one message per operation, per URL
    for payload in payloads:
        check_slack_limits(payload)
    assert "channel" not in payloads[1]  # the webhook's own channel
    if max_length:
        assert all(
            sum(len(block["text"]["text"]) for block in payload["blocks"][1:]) <= max_length
            for payload in payloads
        )


def test_a_template_body_is_split_into_sections_too(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = record(status="failed")
    insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["t"])
    template = "{% for n in range(2000) %}line {{ n }} of a long template\n{% endfor %}"
    channel = ChannelConfig(name="t", urls=(HOOK,), body=template)
    [payload] = _post_all(engine, [channel], monkeypatch).bodies()
    check_slack_limits(payload)
    assert len(payload["blocks"]) > 2  # split over several sections


def test_the_bot_api_gets_the_token_as_bearer_and_a_refusal_is_a_failure(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = record(status="failed")
    insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["bot"])
    channel = ChannelConfig(name="bot", urls=("slack://xoxb-1234-1234-abc124/#ops",))
    with http_receiver() as receiver:  # answers "ok", not Slack's {"ok": true}
        point_slack_at(monkeypatch, receiver)
        stats = Dispatcher(make_config([channel]), engine).dispatch_due()
        [request] = receiver.snapshot()
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == "Bearer xoxb-1234-1234-abc124"
    check_slack_limits(request.json())
    assert stats.sent == 0  # not taken for a success
    assert stats.failed + stats.dead == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a\n\nb", ["a\n\nb"]),
        ("a" * 3000 + "\n\n" + "b", ["a" * 3000, "b"]),
        ("x " * 2000, None),
        ("\n".join(["l" * 1000] * 7), None),
    ],
    ids=["fits", "paragraphs", "long-line", "many-lines"],
)
def test_sections(body: str, expected: list[str] | None) -> None:
    parts = slack.sections(body)
    if expected is not None:
        assert parts == expected
    assert all(0 < len(part) <= slack.SECTION_MAX for part in parts)
    assert "".join(parts).replace("\n", "").replace(" ", "") == body.replace("\n", "").replace(
        " ", ""
    )


def test_a_retry_posts_only_to_the_channels_that_did_not_get_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = record(status="failed")
    now_ms = int(time.time() * 1000)
    insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["two"], now_ms=now_ms)
    url = "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#first/#second"
    dispatcher = Dispatcher(
        make_config([ChannelConfig(name="two", urls=(url,))], backoff_initial=0), engine
    )
    with http_receiver(statuses=[200, 500]) as receiver:  # #second is refused once
        point_slack_at(monkeypatch, receiver)
        first = dispatcher.dispatch_due()
        second = dispatcher.dispatch_due()
        channels = [request.json()["channel"] for request in receiver.snapshot()]
    assert (first.sent, second.sent) == (0, 1)
    assert channels == ["#first", "#second", "#second"]


@settings(max_examples=200, deadline=None)
@given(
    title=st.text(max_size=400),
    body=st.text(alphabet=st.sampled_from("ab c\n*_~<>&é🙂"), max_size=20_000),
)
def test_any_title_and_body_make_a_payload_within_the_limits(title: str, body: str) -> None:
    payload = slack.build_payload(title, body, channel="#ops")
    blocks = payload["blocks"]
    assert len(blocks) <= slack.MAX_BLOCKS
    assert 0 < len(blocks[0]["text"]["text"]) <= slack.HEADER_MAX
    assert all(0 < len(block["text"]["text"]) <= slack.SECTION_MAX for block in blocks[1:])
    assert 0 < len(payload["text"]) <= slack.TEXT_MAX
    kept = "".join(block["text"]["text"] for block in blocks[1:])
    assert "".join(kept.split()) == "".join(body.split())  # nothing lost but whitespace


def test_slack_receives_text_without_backslash_escapes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = sub(
        "Sub_3 *bold*",
        "failed",
        1,
        start=T0_NS,
        end=T0_NS + S,
        message=["quota <exceeded> & [more](x) _now_"],
    )
    rec = record(status="failed", name="bcs_prod", steps=[step("Net_work", "failed", 1, [failing])])
    group_events = [
        event_for(
            rec,
            EventType.SUBSTEP_STATUS_CHANGED,
            step_name="Net_work",
            substep="Sub_3 *bold*",
            from_status="processing",
            to_status="failed",
            message=["quota <exceeded> & [more](x) _now_"],
        ),
        status_event(rec, "processing", "failed"),
    ]
    insert_group(engine, group_events, rec, ["slack"])
    channel = ChannelConfig(name="slack", urls=("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcO/#ops",))
    with http_receiver() as receiver:
        point_slack_at(monkeypatch, receiver)
        clock = FakeClock()
        dispatcher = Dispatcher(make_config([channel]), engine, clock=clock, sleep=clock.sleep)
        assert dispatcher.dispatch_due().sent == 1
        [payload] = receiver.bodies()
    text = "\n".join(block["text"]["text"] for block in payload["blocks"][1:])
    assert {block["text"]["type"] for block in payload["blocks"][1:]} == {"mrkdwn"}
    assert "\\" not in text  # Slack shows a backslash escape literally
    assert "Sub_3 ∗bold∗" in text
    assert "*bcs_prod*" in text  # our bold, in Slack's syntax
    assert "&lt;exceeded&gt; &amp; [more](x)" in text
    assert "\u200b_\u200bnow\u200b_\u200b" in text
