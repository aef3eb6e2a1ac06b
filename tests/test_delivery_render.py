"""Rendering (pure): titles, escaping, times, durations, coalescing, truncation, templates."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from delivery_support import T0_NS, event_for, record, status_event, step, sub, substep_failed

from notifier.channels.render import (
    RenderOptions,
    Templates,
    check_templates,
    escape_html,
    escape_markdown,
    format_duration,
    format_time,
    render_message,
    sample_events,
    zone,
)
from notifier.model import EventType

S = 1_000_000_000


@pytest.mark.parametrize(
    ("status", "title", "notify_type"),
    [
        ("failed", "❌ failed · OpCreate · bcs-prod", "failure"),
        ("finished", "✅ finished · OpCreate · bcs-prod", "success"),
        ("processing", "🔄 processing · OpCreate · bcs-prod", "info"),
        ("stop", "⏹️ stop · OpCreate · bcs-prod", "warning"),
        ("waiting", "⏳ waiting · OpCreate · bcs-prod", "info"),
        ("exploded", "❔ exploded · OpCreate · bcs-prod", "info"),
    ],
    ids=["failed", "finished", "processing", "stop", "waiting", "unknown-future-status"],
)
def test_title_and_notify_type(status: str, title: str, notify_type: str) -> None:
    rec = record(status=status)
    message = render_message([status_event(rec, "processing", status)], rec, RenderOptions())
    assert message.title == title
    assert message.notify_type == notify_type


@pytest.mark.parametrize(
    ("status", "headline"),
    [
        ("failed", "OpCreate on bcs-prod failed"),
        ("finished", "OpCreate on bcs-prod finished"),
        ("stop", "OpCreate on bcs-prod was stopped"),
        ("processing", "OpCreate on bcs-prod is processing"),
        ("waiting", "OpCreate on bcs-prod is waiting"),
        ("exploded", "OpCreate on bcs-prod is exploded"),
    ],
    ids=["failed", "finished", "stop", "processing", "waiting", "unknown-future-status"],
)
def test_headline_reads_as_a_sentence(status: str, headline: str) -> None:
    rec = record(status=status)
    options = RenderOptions(format="text")
    message = render_message([status_event(rec, "processing", status)], rec, options)
    assert message.body.splitlines()[0] == headline


def test_source_event_title_and_body() -> None:
    from notifier.model import Event

    event = Event(
        id="evt_src",
        type=EventType.SOURCE_UNREACHABLE,
        source="prod",
        operation_id="",
        record_time=T0_NS,
        error="HTTP 502 (request id r-1)",
    )
    message = render_message([event], None, RenderOptions(format="text"))
    assert message.title == "⚠️ source unreachable · prod"
    assert message.notify_type == "warning"
    assert "Source prod is unreachable" in message.body
    assert "HTTP 502 (request id r-1)" in message.body


@pytest.mark.parametrize(
    ("raw", "fmt", "expected"),
    [
        ("a*b_c`d[e](f)<g>", "markdown", r"a\*b\_c\`d\[e\](f)\<g\>"),
        ("x & y #1 | ~z~ !", "markdown", r"x \& y \#1 \| \~z\~ \!"),
        ("line1\nline2\r\nline3\tx", "markdown", "line1 line2 line3 x"),
        (
            "<script>alert('x')</script> & \"q\"",
            "html",
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;",
        ),
    ],
    ids=["markdown-inline", "markdown-punctuation", "newlines-flattened", "html"],
)
def test_escaping(raw: str, fmt: str, expected: str) -> None:
    escape = escape_markdown if fmt == "markdown" else escape_html
    assert escape(raw) == expected


@pytest.mark.parametrize("fmt", ["markdown", "html", "text"], ids=["markdown", "html", "text"])
def test_api_strings_are_escaped_in_every_part_of_the_body(fmt: str) -> None:
    hostile = "*boom* <b>x</b> [link](http://evil)"
    rec = record(
        status="failed",
        name=hostile,
        steps=[step(hostile, "failed", 1, [sub(hostile, "failed", 1, message=[hostile])])],
    )
    events = [
        status_event(rec, "processing", "failed"),
        substep_failed(rec, hostile, hostile, [hostile]),
    ]
    body = render_message(events, rec, RenderOptions(format=fmt)).body
    if fmt == "markdown":
        outside_code = re.sub(r"`[^`]*`", "", body)  # code spans show their content literally
        assert "*boom*" not in outside_code.replace(r"\*boom\*", "")
        assert "[link](http://evil)" not in outside_code
        assert r"\[link\](http://evil)" in outside_code
    elif fmt == "html":
        assert "<b>x</b>" not in body
        assert "&lt;b&gt;x&lt;/b&gt;" in body
        _assert_balanced_html(body)
    else:
        assert hostile in body


@pytest.mark.parametrize(
    ("nanoseconds", "tz", "expected"),
    [
        (1_618_218_591_906_100_000, "UTC", "2021-04-12T09:09:51Z"),
        (1_618_218_591_906_100_000, "Asia/Shanghai", "2021-04-12T17:09:51+08:00"),
        (1_618_218_591_906_100_000, "America/New_York", "2021-04-12T05:09:51-04:00"),
        (0, "UTC", None),
    ],
    ids=["utc", "shanghai", "new-york-dst", "not-yet"],
)
def test_format_time(nanoseconds: int, tz: str, expected: str | None) -> None:
    assert format_time(nanoseconds, zone(tz)) == expected


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (T0_NS, T0_NS, "0 ms"),
        (T0_NS, T0_NS + 450_000_000, "450 ms"),
        (T0_NS, T0_NS + 12_340_000_000, "12.3 s"),
        (T0_NS, T0_NS + 125 * S, "2m 05s"),
        (T0_NS, T0_NS + 3 * 3600 * S + 62 * S, "3h 01m 02s"),
        (T0_NS, 0, None),
        (0, T0_NS, None),
        (T0_NS + S, T0_NS, None),
    ],
    ids=[
        "instant",
        "millis",
        "seconds",
        "minutes",
        "hours",
        "running",
        "not-started",
        "clock-skew",
    ],
)
def test_format_duration(start: int, end: int, expected: str | None) -> None:
    assert format_duration(start, end) == expected


def test_body_has_transitions_tree_in_serial_order_times_and_ids() -> None:
    rec = record(
        status="processing",
        steps=[
            step("Second", "processing", 2, [sub("b2", "processing", 5, start=T0_NS)]),
            step(
                "First",
                "finished",
                1,
                [
                    sub("a2", "finished", 2, start=T0_NS + 2 * S, end=T0_NS + 5 * S),
                    sub("a1", "finished", 1, start=T0_NS, end=T0_NS + 2 * S),
                ],
            ),
        ],
    )
    events = [
        event_for(
            rec,
            EventType.STEP_STATUS_CHANGED,
            step_name="First",
            from_status="processing",
            to_status="finished",
        )
    ]
    body = render_message(events, rec, RenderOptions(format="text", timezone="Asia/Shanghai")).body
    assert body.index("First") < body.index("Second")
    assert body.index("a1") < body.index("a2") < body.index("b2")
    assert "Step First: processing → finished" in body
    assert "a2 — finished · 2023-11-15T06:13:22+08:00 → 2023-11-15T06:13:25+08:00 (3.0 s)" in body
    assert "started 2023-11-15T06:13:20+08:00" in body
    assert "BCSSVC01-99-1700000000000000001" in body
    assert "23604f57-eac9-3777-e9f5-ae87457f2338" in body


@pytest.mark.parametrize("to_status", ["failed", "stop"])
def test_a_step_that_failed_or_stopped_shows_when_it_ended_not_when_it_started(
    to_status: str,
) -> None:
    ended = T0_NS + 38 * S
    rec = record(
        status=to_status,
        record_time=T0_NS + 40 * S,
        steps=[
            step(
                "Deploy Organization",
                to_status,
                1,
                [
                    sub("peers", to_status, 1, start=T0_NS, end=ended),
                    sub("orderers", "waiting", 2),  # never ran
                ],
            )
        ],
    )
    transition = {
        "step_name": "Deploy Organization",
        "from_status": "processing",
        "to_status": to_status,
    }
    with_end = event_for(
        rec, EventType.STEP_STATUS_CHANGED, started_at=T0_NS, ended_at=ended, **transition
    )
    without_end = event_for(rec, EventType.STEP_STATUS_CHANGED, started_at=T0_NS, **transition)
    options = RenderOptions(format="text", timezone="UTC")

    for event, when in ((with_end, "22:13:58Z"), (without_end, "22:14:00Z")):
        body = render_message([event], rec, options).body
        (line,) = [line for line in body.splitlines() if "Step Deploy Organization" in line]
        assert when in line, line
        assert "22:13:20Z" not in line, line  # the step's start


def test_coalesced_events_render_in_order_with_the_latest_tree() -> None:
    early = record(status="processing", record_time=T0_NS)
    late = record(status="finished", record_time=T0_NS + 60 * S)
    events = [
        status_event(early, "waiting", "processing"),
        status_event(late, "processing", "finished"),
    ]
    message = render_message(events, late, RenderOptions(format="text"))
    assert message.title.startswith("✅ finished")
    assert message.body.index("waiting → processing") < message.body.index("processing → finished")


def _big_failed_record(finished_subs: int) -> tuple[list, object]:
    subs = [
        sub(f"finished sub-step number {i}", "finished", i, start=T0_NS, end=T0_NS + i * S)
        for i in range(1, finished_subs + 1)
    ]
    failing = sub(
        "Create EIP",
        "failed",
        finished_subs + 1,
        start=T0_NS,
        end=T0_NS + 90 * S,
        message=["EIP quota exhausted: " + "details " * 40],
    )
    rec = record(
        status="failed",
        steps=[
            step("Install", "finished", 1, subs),
            step("Network", "failed", 2, [failing, sub("later", "", finished_subs + 2)]),
        ],
    )
    events = [
        substep_failed(rec, "Network", "Create EIP"),
        status_event(rec, "processing", "failed"),
    ]
    return events, rec


@pytest.mark.parametrize("fmt", ["markdown", "html", "text"], ids=["markdown", "html", "text"])
@pytest.mark.parametrize("budget", [4000, 2000, 1200, 700, 400], ids=lambda b: f"budget-{b}")
def test_truncation_fits_keeps_failures_and_never_cuts_markup(fmt: str, budget: int) -> None:
    events, rec = _big_failed_record(25)  # the stacked HTML is lean: more sub-steps to cut
    full = render_message(events, rec, RenderOptions(format=fmt)).body
    assert len(full) > 4000 or fmt != "html"
    body = render_message(events, rec, RenderOptions(format=fmt, budget=budget)).body
    assert len(body) <= budget
    assert "failed" in body
    if fmt == "html":
        _assert_balanced_html(body)
    if fmt == "markdown":
        assert body.count("**") % 2 == 0
        assert body.count("`") % 2 == 0


@pytest.mark.parametrize("fmt", ["markdown", "text"], ids=["markdown", "text"])
def test_finished_sub_steps_are_summarised_first(fmt: str) -> None:
    events, rec = _big_failed_record(17)
    full = render_message(events, rec, RenderOptions(format=fmt)).body
    body = render_message(events, rec, RenderOptions(format=fmt, budget=len(full) - 50)).body
    assert "more finished sub-step" in body  # only as many as needed, earliest first
    assert "Create EIP" in body
    assert "finished sub-step number 1 " not in body


def test_tiny_budget_still_says_what_happened() -> None:
    events, rec = _big_failed_record(5)
    body = render_message(events, rec, RenderOptions(format="markdown", budget=130)).body
    assert len(body) <= 130
    assert "failed" in body


def test_no_budget_means_no_cut() -> None:
    events, rec = _big_failed_record(30)
    body = render_message(events, rec, RenderOptions(format="text", budget=0)).body
    assert "finished sub-step number 30" in body


class _Balance(HTMLParser):
    VOID = frozenset({"br", "hr", "img", "meta", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack, f"unbalanced </{tag}>"
        assert self.stack[-1] == tag, f"unbalanced </{tag}> in {self.stack}"
        self.stack.pop()


def _assert_balanced_html(body: str) -> None:
    parser = _Balance()
    parser.feed(body)
    parser.close()
    assert parser.stack == []


# -- templates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "body", "problem"),
    [
        ("{{ symbol }} {{ operation.operation_type_name }}", "{{ default_body }}", None),
        ("{{ nope }}", None, "title"),
        (None, "{% for e in events %}{{ e.missing_field }}{% endfor %}", "body"),
        (None, "{{ ''.__class__.__mro__ }}", "body"),
        ("{% if %}", None, "title"),
    ],
    ids=["valid", "undefined-name", "undefined-attribute", "sandbox-escape", "syntax-error"],
)
def test_check_templates(title: str | None, body: str | None, problem: str | None) -> None:
    problems = check_templates(title, body, "UTC")
    if problem is None:
        assert problems == []
    else:
        assert [key for key, _ in problems] == [problem]


def test_templates_render_and_html_is_autoescaped() -> None:
    events, rec = sample_events()
    templates = Templates(
        title="{{ symbol }} {{ operation.blockchain_name }} {{ status }}",
        body=(
            "{% for e in events %}{{ e.symbol }} {{ e.substep or 'operation' }}: {{ e.to }}\n"
            "{% endfor %}<i>{{ operation.desc or '<none>' }}</i>"
        ),
    )
    html_message = render_message(events, rec, RenderOptions(format="html"), templates)
    assert html_message.title == "❌ bcs-sample failed"
    assert "❌ Create EIP: failed" in html_message.body
    assert "&lt;none&gt;" in html_message.body
    text_message = render_message(events, rec, RenderOptions(format="text"), templates)
    assert "<none>" in text_message.body
