"""Rendering (pure): titles, escaping (Slack without backslashes), times, durations,
coalescing, truncation within a budget, templates and their bounds."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from delivery_support import T0_NS, event_for, record, status_event, step, sub, substep_failed

from notifier.channels.render import (
    RenderOptions,
    TemplateError,
    Templates,
    check_templates,
    escape_html,
    escape_markdown,
    escape_slack,
    format_duration,
    format_time,
    render_message,
    sample_events,
    template_context,
    zone,
)
from notifier.model import Event, EventType

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


# -- templates: every failure is bounded and one line --------------------------------------


def _context(count: int) -> dict[str, Any]:
    sample, rec = sample_events()
    options = RenderOptions(format="text")
    return template_context(sample[:count], rec, options, zone("UTC"), title="t", body="b")


@pytest.mark.parametrize(
    ("source", "events", "expected"),
    [
        ("n={{ 100 // (events|length - 1) }}", 1, "ZeroDivisionError"),
        ("{% for i in range(100000000) %}x{% endfor %}", 2, "OverflowError"),
        (
            "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}",
            2,
            "too much work",
        ),
        ("{{ 'x' * 1000000000 }}", 2, "repeats a value"),
        ("{{ 10 ** 100000000 }}", 2, "power too large"),
        ("{% for i in range(90000) %}xxxxxxxx{% endfor %}", 2, "output is longer"),
        ("{{ events[5].type }}", 2, "template failed"),
        ("{{ nothing_here }}", 2, "undefined"),
    ],
    ids=[
        "zero-division",
        "huge-range",
        "nested-ranges",
        "string-repeat",
        "huge-power",
        "huge-output",
        "index-error",
        "undefined-name",
    ],
)
def test_any_template_failure_is_a_bounded_one_line_template_error(
    source: str, events: int, expected: str
) -> None:
    with pytest.raises(TemplateError) as raised:
        Templates(body=source).render_body(_context(events), "text")
    message = str(raised.value)
    assert expected in message
    assert "\n" not in message


def test_templates_within_the_bounds_still_work() -> None:
    body = "{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 2 }} {{ 2 ** 10 }}"
    assert Templates(body=body).render_body(_context(2), "text") == "012 abab 1024"


@pytest.mark.parametrize(
    ("title", "body", "keys"),
    [
        ("{% for i in range(100000000) %}x{% endfor %}", None, ["title"]),
        (None, "n={{ 100 // (events|length - 1) }}", ["body"]),
        ("{{ 1 // 0 }}", "{{ missing }}", ["title", "body"]),
        ("{{ status }}", "{{ events|length }}", []),
    ],
    ids=["range-in-title", "single-event-division", "both-broken", "fine"],
)
def test_check_templates_reports_every_failure_as_a_problem(
    title: str | None, body: str | None, keys: list[str]
) -> None:
    problems = check_templates(title, body, "UTC")
    assert [key for key, _ in problems] == keys
    assert all("\n" not in message for _, message in problems)


# -- Slack: no backslash escapes ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sub_3", "Sub_3"),
        ("*bold*", "∗bold∗"),
        ("_it_", "\u200b_\u200bit\u200b_\u200b"),
        ("a~b ~s~", "a~b \u200b~\u200bs\u200b~\u200b"),
        ("<!here> & co", "&lt;!here&gt; &amp; co"),
        ("[x](y)", "[x](y)"),
        ("`rm`", "ˋrmˋ"),
        ("C:\\dir", "C:\\dir"),
        ("a|b #1 !", "a|b #1 !"),
    ],
    ids=[
        "intraword-underscore",
        "asterisks",
        "underscores",
        "tildes",
        "angle-brackets",
        "link",
        "backticks",
        "backslash",
        "plain-punctuation",
    ],
)
def test_escape_slack(text: str, expected: str) -> None:
    assert escape_slack(text) == expected
    assert "\\_" not in escape_slack(text)
    assert "\\*" not in escape_slack(text)


def test_a_slack_template_can_escape_for_slack() -> None:
    named = record(status="failed", name="a_b *c*")
    group_events = [status_event(named, "processing", "failed")]
    templates = Templates(body="{{ operation.blockchain_name|markdown_escape }}")
    slack = render_message(group_events, named, RenderOptions(dialect="slack"), templates)
    common = render_message(group_events, named, RenderOptions(), templates)
    assert slack.body == "a_b ∗c∗"
    assert common.body == "a\\_b \\*c\\*"


# -- "recovered" reads as recovered -----------------------------------------------------------


def test_the_recovered_message_says_it_is_history() -> None:
    since = T0_NS
    recovered = Event(
        id="evt_recovered",
        type=EventType.SOURCE_RECOVERED,
        source="tok",
        operation_id="",
        record_time=since + 720 * S,
        started_at=since,
        ended_at=since + 720 * S,
        error="HTTP 500 from the API",
    )
    body = render_message([recovered], None, RenderOptions(format="text")).body
    line = next(line for line in body.splitlines() if line.startswith("- "))
    assert "recovered after 12m 00s of failures" in line
    assert "last error: HTTP 500 from the API" in line
    assert "recovered · " not in line  # no bare "recovered … — HTTP 500"


# -- a long message keeps as much as its budget holds ----------------------------------------


def _long_operation() -> tuple[list[Event], Any]:
    """Six steps of eight sub-steps, 43 transitions, one failure with a long message."""
    steps = []
    for number in range(1, 7):
        subs = []
        for index in range(1, 9):
            status = "finished" if number < 6 or index < 3 else ("failed" if index == 3 else "")
            subs.append(
                sub(
                    f"Sub-step {number}.{index} doing work",
                    status,
                    index,
                    start=T0_NS,
                    end=T0_NS + index * S if status else 0,
                    message=["quota exceeded for the project " * 3] if status == "failed" else (),
                )
            )
        steps.append(
            step(
                f"Step {number} of the deployment",
                "failed" if number == 6 else "finished",
                number,
                subs,
            )
        )
    rec = record(status="failed", steps=steps)
    found = [
        event_for(
            rec,
            EventType.SUBSTEP_STATUS_CHANGED,
            step_name=item.name,
            substep=child.name,
            from_status="processing",
            to_status=child.status,
            started_at=T0_NS,
            ended_at=T0_NS + S,
        )
        for item in steps
        for child in item.sub_steps
        if child.status
    ]
    return [*found, status_event(rec, "processing", "failed")], rec


@pytest.mark.parametrize("fmt", ["markdown", "html", "text"])
@pytest.mark.parametrize("budget", [600, 1000, 2000, 4000, 8000], ids=lambda b: f"budget-{b}")
def test_a_cut_message_fits_and_uses_most_of_its_budget(fmt: str, budget: int) -> None:
    group_events, rec = _long_operation()
    full = render_message(group_events, rec, RenderOptions(format=fmt)).body
    assert len(full) > budget
    body = render_message(group_events, rec, RenderOptions(format=fmt, budget=budget)).body
    assert len(body) <= budget
    assert len(body) > 0.8 * budget, (len(body), budget)
    assert "Sub-step 6.3 doing work" in body  # the failure stays
    if fmt == "markdown":
        assert body.count("**") % 2 == 0
        assert body.count("`") % 2 == 0
    if fmt == "html":
        assert body.count("<ul>") == body.count("</ul>")
        assert body.count("<table") == body.count("</table>")


def test_a_4000_character_budget_keeps_most_transitions() -> None:
    """The review's case: 4,000 characters came out at 787 with 37 transitions dropped."""
    group_events, rec = _long_operation()
    body = render_message(group_events, rec, RenderOptions(format="markdown", budget=4000)).body
    kept = sum(1 for line in body.splitlines() if line.startswith("- "))
    assert kept >= 20
    assert len(body) > 3600
