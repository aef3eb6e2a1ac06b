"""Turn one operation's events of one cycle into a message people want to read (pure).

Input: the events a channel matched (in ``seq`` order, possibly several cycles coalesced)
and the operation record of the latest cycle. Output: a :class:`Message` with a plain-text
title and a body in the target's markup (``markdown``, ``html`` or ``text``).

Every string that comes from the API is escaped for the target's markup (Slack's own rules
for ``slack://``: :func:`escape_slack`), and a long body is cut by meaning, never
mid-markup: the message is built as a small document model and cut in stages (finished
sub-steps summarised, long error texts shortened, quiet steps collapsed, quiet transitions
left out, ...), each bisected to the fewest cuts that make the rendered body fit the
channel's budget, so it keeps as much as the budget holds.

Optional per-channel Jinja2 ``title``/``body`` templates render in a bounded sandbox where
an undefined name is an error and any failure is a :class:`TemplateError`;
:func:`check_templates` renders sample events at start.

Nothing here imports apprise, httpx, SQLAlchemy or click.
"""

from __future__ import annotations

import contextvars
import html
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import jinja2
import jinja2.sandbox
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.model import (
    STALL_EVENT_TYPES,
    TERMINAL_STATUSES,
    Event,
    EventType,
    OperationRecord,
    Step,
    SubStep,
    describe,
    ns_to_datetime,
    operation_type_name,
    shown_ns,
)
from notifier.stalls import step_span

Format = Literal["markdown", "html", "text"]
FORMATS: Final = ("markdown", "html", "text")
DIALECTS: Final = ("commonmark", "slack")
#: Every (format, dialect) a message can be rendered in; templates are checked in each.
_FORMAT_DIALECTS: Final = (
    ("markdown", "commonmark"),
    ("markdown", "slack"),
    ("html", "commonmark"),
    ("text", "commonmark"),
)

#: Status word -> symbol shown before it.
STATUS_SYMBOLS: Final[Mapping[str, str]] = {
    "finished": "✅",
    "failed": "❌",
    "stop": "⏹️",
    "processing": "🔄",
    "waiting": "⏳",
    "": "⚪",
    "unreachable": "⚠️",
    "recovered": "✅",
    "stalled": "⏰",
}
UNKNOWN_SYMBOL: Final = "❔"

#: apprise notify types (strings, so this module does not import apprise).
NOTIFY_TYPES: Final[Mapping[str, str]] = {
    "failed": "failure",
    "stop": "warning",
    "finished": "success",
    "unreachable": "warning",
    "recovered": "success",
    "stalled": "warning",
}

#: Smallest body budget honoured; below it a body cannot say anything useful.
MIN_BUDGET: Final = 120
TITLE_MAX: Final = 250
_ELLIPSIS: Final = "…"
_CONTROL_RE: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MARKDOWN_SPECIAL_RE: Final = re.compile(r"([\\`*_\[\]<>|~#&!])")


def status_symbol(status: str | None) -> str:
    return STATUS_SYMBOLS.get((status or "").strip().lower(), UNKNOWN_SYMBOL)


def status_label(status: str | None) -> str:
    return status if status else "not started"


#: How a headline says an operation's status: "OpCreate on bcs-prod failed",
#: "... is processing", "... was stopped"; unknown statuses read "... is <status>".
_HEADLINE_STATUS: Final = {
    "finished": ("", "finished"),
    "failed": ("", "failed"),
    "stop": ("was", "stopped"),
    "processing": ("is", "processing"),
    "waiting": ("is", "waiting"),
    "stalled": ("is", "stalled"),
}


def _headline_status(status: str | None) -> tuple[str, str]:
    return _HEADLINE_STATUS.get(status or "", ("is", status_label(status)))


def notify_type(status: str | None) -> str:
    return NOTIFY_TYPES.get(status or "", "info")


# -- escaping ---------------------------------------------------------------------------------


def one_line(value: object) -> str:
    """API text as one line: control characters and newlines become spaces."""
    text = "" if value is None else str(value)
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    return _CONTROL_RE.sub(" ", text)


def escape_markdown(value: object) -> str:
    """CommonMark-escape API text so it shows literally (one line)."""
    return _MARKDOWN_SPECIAL_RE.sub(r"\\\1", one_line(value))


def escape_html(value: object) -> str:
    return html.escape(one_line(value), quote=True)


def escape_text(value: object) -> str:
    return one_line(value)


_ZWSP: Final = "\u200b"


def escape_slack(value: object) -> str:
    """API text for a Slack target (one line), as Slack mrkdwn that shows it literally
    (``channels.slack`` posts it; the renderer's ``**bold**`` becomes ``*bold*`` there).

    Slack documents only ``&``, ``<`` and ``>`` as characters to escape (as ``&amp;``,
    ``&lt;``, ``&gt;``) and has no backslash escapes, so ``\\*`` would arrive as ``\\*``:

    - ``&``, ``<``, ``>`` become ``&amp;``, ``&lt;``, ``&gt;`` (no ``<!here>``, no link);
    - ``*`` becomes ``∗`` (U+2217) and a backtick ``ˋ`` (U+02CB): Slack would read them as
      bold and code markers and has no way to escape them;
    - ``_`` and ``~`` stay inside a word (Slack formats only at word boundaries); elsewhere a
      zero-width space on both sides keeps them from opening or closing formatting;
    - ``[``, ``]`` and backslashes stay as they are (mrkdwn reads neither).
    """
    text = one_line(value)
    out: list[str] = []
    last = len(text) - 1
    for index, char in enumerate(text):
        if char in _SLACK_ENTITIES:
            out.append(_SLACK_ENTITIES[char])
        elif char == "*":
            out.append("\u2217")
        elif char == "`":
            out.append("\u02cb")
        elif char in "_~":
            before = text[index - 1] if index > 0 else " "
            after = text[index + 1] if index < last else " "
            if before.isalnum() and after.isalnum():
                out.append(char)
            else:
                out.append(_ZWSP + char + _ZWSP)
        else:
            out.append(char)
    return "".join(out)


_SLACK_ENTITIES: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


ESCAPERS: Final[Mapping[str, Callable[[object], str]]] = {
    "markdown": escape_markdown,
    "html": escape_html,
    "text": escape_text,
}


def shorten(value: object, limit: int) -> str:
    """Cut raw text (before escaping) at a word boundary, marking the cut."""
    text = one_line(value).strip()
    if limit <= 0 or len(text) <= limit:
        return text
    cut = text[: max(limit - 1, 1)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + _ELLIPSIS


# -- times ------------------------------------------------------------------------------------


def zone(name: str | None) -> tzinfo:
    return ZoneInfo(name or "UTC")


def format_time(nanoseconds: int, timezone: tzinfo) -> str | None:
    """ISO 8601 to the second in ``timezone`` (``Z`` for UTC); None for 0 ("not yet")."""
    moment = ns_to_datetime(nanoseconds)
    if moment is None:
        return None
    local = moment.astimezone(timezone).replace(microsecond=0)
    text = local.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def format_duration(start_ns: int, end_ns: int) -> str | None:
    """Duration between two nanosecond times, or None when either is not set yet."""
    start_ns, end_ns = shown_ns(start_ns), shown_ns(end_ns)  # stored absurd values render too
    if start_ns <= 0 or end_ns <= 0 or end_ns < start_ns:
        return None
    nanoseconds = end_ns - start_ns
    if nanoseconds < 1_000_000_000:
        return f"{nanoseconds // 1_000_000} ms"
    seconds_total = nanoseconds / 1_000_000_000
    if seconds_total < 60:
        return f"{seconds_total:.1f} s"
    seconds = int(seconds_total)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    return f"{minutes}m {seconds:02d}s"


# -- the document model -----------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A rendered message for one target."""

    title: str
    body: str
    format: str
    notify_type: str = "info"


@dataclass(frozen=True)
class RenderOptions:
    format: str = "markdown"
    timezone: str = "UTC"
    budget: int = 0  # 0: no limit
    title_max: int = TITLE_MAX
    #: "slack" for Slack targets (markdown only): API text escaped for Slack's mrkdwn
    #: (``channels.slack`` turns the renderer's ``**bold**`` into ``*bold*``).
    dialect: str = "commonmark"


@dataclass(frozen=True)
class _Transition:
    symbol: str
    subject: str  # raw; "" for the operation itself
    kind: str  # "Operation", "Step", "Sub-step", "Source"
    change: str  # raw, e.g. "processing → failed"
    when: str | None
    duration: str | None
    detail: str | None
    messages: tuple[str, ...]
    important: bool  # a failure or a terminal state: never summarised
    problem: bool = False  # a failure, a stop or an unreachable source: cut last of all


@dataclass(frozen=True)
class _SubLine:
    symbol: str
    name: str
    status: str
    started: str | None
    ended: str | None
    duration: str | None
    detail: str | None
    messages: tuple[str, ...]
    mentioned: bool = False  # its detail/messages already show in a transition


@dataclass(frozen=True)
class _StepLine:
    number: int
    symbol: str
    name: str
    status: str
    detail: str | None
    sub_lines: tuple[_SubLine, ...]
    omitted: tuple[tuple[str, int], ...] = ()  # (status label, count) summarised
    collapsed: int = 0  # sub-steps hidden by collapsing the whole step


@dataclass(frozen=True)
class _Document:
    headline: tuple[tuple[str, bool], ...]  # (raw text, emphasised)
    transitions: tuple[_Transition, ...]
    omitted_transitions: int
    steps: tuple[_StepLine, ...]
    omitted_steps: int
    facts: tuple[tuple[str, str], ...]  # (label, raw value)
    message_limit: int = 0  # 0: error texts in full
    show_tree: bool = True
    truncated: bool = False


_FINISHED_LIKE: Final = frozenset({"finished"})
_PROBLEM: Final = frozenset({"failed", "stop"})


def _is_problem(status: str) -> bool:
    return status in _PROBLEM


def _operation_of(events: Sequence[Event], record: OperationRecord | None) -> Mapping[str, Any]:
    if record is not None:
        return record.summary()
    for event in reversed(events):
        if event.operation:
            return event.operation
    return {}


def _current_status(events: Sequence[Event], record: OperationRecord | None) -> str:
    if record is not None:
        return "stalled" if _stalled_now(events, record) else record.status
    for event in reversed(events):
        if event.type is EventType.SOURCE_UNREACHABLE:
            return "unreachable"
        if event.type is EventType.SOURCE_RECOVERED:
            return "recovered"
        status = event.operation.get("status") if event.operation else None
        if status is not None:
            return str(status)
    return ""


def _stalled_now(events: Sequence[Event], record: OperationRecord) -> bool:
    """A stall among ``events`` is still going on in ``record`` (same step, same start)."""
    if not record.is_active:
        return False
    for event in events:
        if event.stall is None or event.step is None:
            continue
        step = record.step(event.step)
        if step is None:
            continue
        if event.substep is None:
            item_status, started = step.status, step_span(step)[0]
        else:
            sub = step.sub_step(event.substep)
            if sub is None:
                continue
            item_status, started = sub.status, sub.start_time
        if item_status == "processing" and started == event.started_at:
            return True
    return False


def _seconds_text(seconds: float) -> str:
    nanoseconds = max(round(seconds * 1_000_000_000), 1)
    return format_duration(1, 1 + nanoseconds) or f"{seconds:g} s"


def stall_change(event: Event) -> str:
    """What a ``*.stalled`` event says: how long, and how long it usually takes."""
    stall = event.stall
    if stall is None:
        return ""
    runs = "run" if stall.samples == 1 else "runs"
    lead = "still stalled" if stall.reminder else "stalled"
    return (
        f"{lead}, processing for {_seconds_text(stall.elapsed_seconds)}; usually up to "
        f"{_seconds_text(stall.p95_seconds)} (p95 of {stall.samples} {runs}), alert after "
        f"{_seconds_text(stall.threshold_seconds)}"
    )


def _transition(event: Event, record: OperationRecord | None, timezone: tzinfo) -> _Transition:
    to_status = event.to_status or ""
    change = (
        f"{status_label(event.from_status)} → {status_label(to_status)}"
        if event.from_status is not None
        else f"new, {status_label(to_status)}"
    )
    subject = ""
    kind = "Operation"
    if event.type in (EventType.STEP_CREATED, EventType.STEP_STATUS_CHANGED):
        kind, subject = "Step", event.step or ""
    elif event.type in (EventType.SUBSTEP_CREATED, EventType.SUBSTEP_STATUS_CHANGED):
        kind, subject = "Sub-step", f"{event.step or ''} › {event.substep or ''}"
    elif event.type in (EventType.SOURCE_UNREACHABLE, EventType.SOURCE_RECOVERED):
        kind, subject = "Source", event.source
        to_status = "unreachable" if event.type is EventType.SOURCE_UNREACHABLE else "recovered"
        change = to_status
    elif event.type is EventType.OPERATION_CREATED:
        change = f"created, {status_label(to_status)}"
    if event.type in STALL_EVENT_TYPES:
        kind, subject = "Step", event.step or ""
        if event.substep is not None:
            kind, subject = "Sub-step", f"{event.step or ''} › {event.substep}"
        to_status, change = "stalled", stall_change(event)
    started, ended = event.started_at, event.ended_at
    # a change to an end state happened when it ended, or else when the API recorded it:
    # never at the start of what failed or stopped
    ended_state = to_status in TERMINAL_STATUSES
    when_ns = ended or (event.record_time if ended_state else started) or event.record_time
    duration = format_duration(started, ended)
    detail = event.detail if event.detail and event.detail.strip().lower() != to_status else None
    if event.error:
        detail = event.error
    if event.type is EventType.SOURCE_RECOVERED:
        # the error is history now: say so, or the message reads as if it still failed
        if duration:
            change = f"recovered after {duration} of failures"
            duration = None
        detail = f"last error: {event.error}" if event.error else None
    return _Transition(
        symbol=status_symbol(to_status),
        subject=subject,
        kind=kind,
        change=change,
        when=format_time(when_ns, timezone),
        duration=duration,
        detail=detail,
        messages=tuple(event.message),
        problem=to_status in _PROBLEM or to_status in ("unreachable", "stalled"),
        important=to_status in _PROBLEM
        or to_status in ("unreachable", "stalled")
        or kind == "Operation"
        or (record is not None and kind == "Step" and to_status in _FINISHED_LIKE),
    )


def _sub_line(sub: SubStep, timezone: tzinfo, mentioned: bool) -> _SubLine:
    detail = sub.detail if sub.detail and sub.detail.strip().lower() != sub.status else None
    return _SubLine(
        mentioned=mentioned,
        symbol=status_symbol(sub.status),
        name=sub.name,
        status=sub.status,
        started=format_time(sub.start_time, timezone),
        ended=format_time(sub.end_time, timezone),
        duration=format_duration(sub.start_time, sub.end_time),
        detail=detail,
        messages=tuple(sub.message),
    )


def _step_line(
    number: int, step: Step, timezone: tzinfo, mentioned: frozenset[tuple[str, str]]
) -> _StepLine:
    detail = step.detail if step.detail and step.detail.strip().lower() != step.status else None
    subs = sorted(step.sub_steps, key=lambda sub: (sub.serial_num, sub.name))
    return _StepLine(
        number=number,
        symbol=status_symbol(step.status),
        name=step.name,
        status=step.status,
        detail=detail,
        sub_lines=tuple(
            _sub_line(sub, timezone, (step.name, sub.name) in mentioned) for sub in subs
        ),
    )


def build_document(
    events: Sequence[Event], record: OperationRecord | None, timezone: tzinfo
) -> _Document:
    operation = _operation_of(events, record)
    status = _current_status(events, record)
    facts: list[tuple[str, str]] = []
    headline: list[tuple[str, bool]] = []
    if operation:
        type_name = operation.get("operation_type_name") or operation_type_name(
            str(operation.get("operation_type") or "")
        )
        chain = operation.get("blockchain_name") or operation.get("blockchain_id") or ""
        headline = [(str(type_name), True)]
        if chain:
            headline += [(" on ", False), (str(chain), True)]
        verb, word = _headline_status(status)
        headline += [(f" {verb} " if verb else " ", False), (word, True)]
        facts.append(("Operation", str(operation.get("operation_id") or "")))
        blockchain_id = operation.get("blockchain_id")
        if blockchain_id:
            facts.append(
                ("Blockchain", f"{operation.get('blockchain_name') or ''} ({blockchain_id})")
            )
        if operation.get("desc"):
            facts.append(("Description", str(operation["desc"])))
        for text in operation.get("message") or ():
            facts.append(("Message", str(text)))
    elif events:
        source_event = events[-1]
        word = "unreachable" if status == "unreachable" else "reachable again"
        headline = [("Source ", False), (source_event.source, True), (f" is {word}", False)]
    sources = sorted({event.source for event in events})
    if sources:
        facts.append(("Source", ", ".join(sources)))
    record_time = (
        record.record_time
        if record is not None
        else max((event.record_time for event in events), default=0)
    )
    updated = format_time(record_time, timezone)
    if updated:
        facts.append(("Updated", updated))
    steps: tuple[_StepLine, ...] = ()
    if record is not None:
        ordered = sorted(record.steps, key=lambda step: (step.serial_num, step.name))
        mentioned = frozenset(
            (event.step or "", event.substep or "")
            for event in events
            if event.substep is not None and (event.detail or event.message)
        )
        steps = tuple(
            _step_line(index, step, timezone, mentioned) for index, step in enumerate(ordered, 1)
        )
    return _Document(
        headline=tuple(headline),
        transitions=tuple(_transition(event, record, timezone) for event in events),
        omitted_transitions=0,
        steps=steps,
        omitted_steps=0,
        facts=tuple(facts),
    )


# -- cutting: stages of cuts, least valuable content first ----------------------------------
#
# Each stage offers ``count(doc)`` cuts of one kind (a finished sub-step summarised, a quiet
# transition left out, ...) in the order it wants them made; ``apply(doc, k)`` makes the first
# ``k``. :func:`fit` takes as few cuts as it needs, stage by stage, so a long message keeps
# as much as its budget holds instead of losing whole categories at once.


@dataclass(frozen=True)
class _Stage:
    name: str
    count: Callable[[_Document], int]
    apply: Callable[[_Document, int], _Document]


def _sub_positions(
    doc: _Document, statuses: frozenset[str], *, latest_first: bool
) -> list[tuple[int, int]]:
    positions = [
        (step_index, sub_index)
        for step_index, step in enumerate(doc.steps)
        for sub_index, sub in enumerate(step.sub_lines)
        if sub.status in statuses
    ]
    return positions[::-1] if latest_first else positions


def _summarise_stage(statuses: frozenset[str], *, latest_first: bool) -> _Stage:
    def count(doc: _Document) -> int:
        return len(_sub_positions(doc, statuses, latest_first=latest_first))

    def apply(doc: _Document, cuts: int) -> _Document:
        chosen = set(_sub_positions(doc, statuses, latest_first=latest_first)[:cuts])
        if not chosen:
            return doc
        steps: list[_StepLine] = []
        for step_index, line in enumerate(doc.steps):
            gone = [sub for i, sub in enumerate(line.sub_lines) if (step_index, i) in chosen]
            if gone:
                counts: dict[str, int] = dict(line.omitted)
                for sub in gone:
                    label = status_label(sub.status) if sub.status else "waiting"
                    counts[label] = counts.get(label, 0) + 1
                keep = tuple(
                    sub for i, sub in enumerate(line.sub_lines) if (step_index, i) not in chosen
                )
                line = replace(line, sub_lines=keep, omitted=tuple(counts.items()))  # noqa: PLW2901
            steps.append(line)
        return replace(doc, steps=tuple(steps))

    return _Stage(f"summarise {'/'.join(sorted(statuses))} sub-steps", count, apply)


def _message_stage(limit: int) -> _Stage:
    def count(doc: _Document) -> int:
        return 0 if doc.message_limit and doc.message_limit <= limit else 1

    def apply(doc: _Document, cuts: int) -> _Document:
        return replace(doc, message_limit=limit) if cuts and count(doc) else doc

    return _Stage(f"messages to {limit} characters", count, apply)


def _quiet_steps(doc: _Document) -> list[int]:
    return [
        index
        for index, step in enumerate(doc.steps)
        if not _is_problem(step.status) and (step.sub_lines or step.omitted)
    ]


def _collapse_apply(doc: _Document, cuts: int) -> _Document:
    """Steps without a problem lose their sub-step lines (a count remains), earliest first."""
    chosen = set(_quiet_steps(doc)[:cuts])
    if not chosen:
        return doc
    steps: list[_StepLine] = []
    for index, step in enumerate(doc.steps):
        if index in chosen:
            hidden = len(step.sub_lines) + sum(count for _, count in step.omitted)
            step = replace(  # noqa: PLW2901
                step, sub_lines=(), omitted=(), collapsed=step.collapsed + hidden
            )
        steps.append(step)
    return replace(doc, steps=tuple(steps))


def _transition_stage(name: str, select: Callable[[_Document], list[int]]) -> _Stage:
    def apply(doc: _Document, cuts: int) -> _Document:
        chosen = set(select(doc)[:cuts])
        if not chosen:
            return doc
        keep = tuple(item for index, item in enumerate(doc.transitions) if index not in chosen)
        return replace(
            doc, transitions=keep, omitted_transitions=doc.omitted_transitions + len(chosen)
        )

    return _Stage(name, lambda doc: len(select(doc)), apply)


def _quiet_transitions(doc: _Document) -> list[int]:
    """Transitions that are neither a failure nor a terminal state, oldest first."""
    return [index for index, item in enumerate(doc.transitions) if not item.important]


def _calm_transitions(doc: _Document) -> list[int]:
    """Important transitions that are no problem, oldest first; the latest always stays."""
    last = len(doc.transitions) - 1
    return [
        index for index, item in enumerate(doc.transitions) if not item.problem and index != last
    ]


def _all_but_the_cause(doc: _Document) -> list[int]:
    """Every transition but the first problem (the cause; the headline tells the outcome),
    newest first; without a problem, every transition but the latest."""
    problems = [index for index, item in enumerate(doc.transitions) if item.problem]
    keep = problems[0] if problems else len(doc.transitions) - 1
    return [index for index in reversed(range(len(doc.transitions))) if index != keep]


def _lone_steps(doc: _Document) -> list[int]:
    return [
        index
        for index, step in enumerate(doc.steps)
        if not _is_problem(step.status) and not step.sub_lines
    ]


def _drop_steps_apply(doc: _Document, cuts: int) -> _Document:
    chosen = set(_lone_steps(doc)[:cuts])
    if not chosen:
        return doc
    keep = tuple(step for index, step in enumerate(doc.steps) if index not in chosen)
    return replace(doc, steps=keep, omitted_steps=doc.omitted_steps + len(chosen))


def _drop_tree_apply(doc: _Document, cuts: int) -> _Document:
    return replace(doc, show_tree=False, truncated=True) if cuts and doc.show_tree else doc


def _drop_facts_apply(doc: _Document, cuts: int) -> _Document:
    if not cuts or len(doc.facts) <= 1:
        return doc
    return replace(doc, facts=doc.facts[:1], truncated=True)


_STAGES: Final[tuple[_Stage, ...]] = (
    _summarise_stage(frozenset({"finished"}), latest_first=False),
    _message_stage(200),
    _summarise_stage(frozenset({"waiting", ""}), latest_first=True),
    _message_stage(80),
    _Stage("collapse quiet steps", lambda doc: len(_quiet_steps(doc)), _collapse_apply),
    _transition_stage("leave out quiet transitions", _quiet_transitions),
    _Stage("leave out quiet steps", lambda doc: len(_lone_steps(doc)), _drop_steps_apply),
    _Stage("leave out the step tree", lambda doc: int(doc.show_tree), _drop_tree_apply),
    _Stage("keep one fact", lambda doc: int(len(doc.facts) > 1), _drop_facts_apply),
    _transition_stage("leave out calm transitions", _calm_transitions),
    _message_stage(30),
    _transition_stage("keep only the first failure", _all_but_the_cause),
)


def _reduce(doc: _Document, cuts: Sequence[int]) -> _Document:
    for stage, count in zip(_STAGES, cuts, strict=False):
        if count:
            doc = stage.apply(doc, count)
    return doc


# -- renderers --------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _omitted_text(omitted: Sequence[tuple[str, int]]) -> str:
    parts = [
        f"{count} more {label} sub-step{'s' if count != 1 else ''}" for label, count in omitted
    ]
    return "...and " + ", ".join(parts)


def _timing(started: str | None, ended: str | None, duration: str | None) -> str:
    if started and ended:
        text = f"{started} → {ended}"
    elif started:
        text = f"started {started}"
    else:
        return ""
    return f"{text} ({duration})" if duration else text


class _Renderer:
    """Shared walk over the document; subclasses supply the markup."""

    def __init__(self, escape: Callable[[object], str]) -> None:
        self.escape = escape

    def text(self, value: object, limit: int = 0) -> str:
        return self.escape(shorten(value, limit) if limit else value)

    def render(self, doc: _Document) -> str:
        raise NotImplementedError

    def transition_line(self, item: _Transition, doc: _Document) -> str:
        parts = [item.symbol, " "]
        if item.kind == "Operation":
            parts.append(self.strong("Operation"))
        elif item.kind == "Source":
            parts.append(self.strong(f"Source {self.text(item.subject)}", escaped=True))
        else:
            parts.append(f"{item.kind} {self.strong(self.text(item.subject), escaped=True)}")
        parts.append(f": {self.text(item.change)}")
        extra = [self.text(value) for value in (item.when, item.duration) if value]
        if extra:
            parts.append(" · " + " · ".join(extra))
        if item.detail:
            parts.append(" — " + self.text(item.detail, doc.message_limit))
        for message in item.messages:
            parts.append(" — " + self.text(message, doc.message_limit))
        return "".join(parts)

    def step_head(self, step: _StepLine) -> str:
        text = (
            f"{step.number}. {step.symbol} {self.strong(self.text(step.name), escaped=True)}"
            f" — {self.text(status_label(step.status))}"
        )
        if step.detail:
            text += f" ({self.text(step.detail, 120)})"
        if step.collapsed:
            text += f" · {_plural(step.collapsed, 'sub-step')}"
        return text

    def sub_text(self, sub: _SubLine, doc: _Document) -> str:
        text = f"{sub.symbol} {self.text(sub.name)} — {self.text(status_label(sub.status))}"
        timing = _timing(sub.started, sub.ended, sub.duration)
        if timing:
            text += f" · {self.text(timing)}"
        if sub.mentioned:
            return text
        if sub.detail:
            text += f" — {self.text(sub.detail, doc.message_limit)}"
        for message in sub.messages:
            text += f" — {self.text(message, doc.message_limit)}"
        return text

    def strong(self, value: str, *, escaped: bool = False) -> str:
        return value if escaped else self.text(value)

    def headline(self, doc: _Document) -> str:
        return "".join(
            self.strong(self.text(text), escaped=True) if emphasis else self.text(text)
            for text, emphasis in doc.headline
        )

    def notes(self, doc: _Document) -> list[str]:
        notes: list[str] = []
        if doc.omitted_transitions:
            notes.append(f"...and {_plural(doc.omitted_transitions, 'more transition')}")
        if doc.omitted_steps and doc.show_tree:
            notes.append(f"...and {_plural(doc.omitted_steps, 'more step')}")
        if not doc.show_tree:
            notes.append("(step tree left out to fit this channel)")
        elif doc.truncated:
            notes.append("(message shortened to fit this channel)")
        return notes


class _TextRenderer(_Renderer):
    """Blocks of lines; the Markdown renderer differs only in the markup of a few parts."""

    steps_title = "Steps:"
    sub_prefix = "   - "

    def __init__(self, escape: Callable[[object], str] = escape_text) -> None:
        super().__init__(escape)

    def note(self, note: str) -> str:
        return note

    def fact(self, label: str, value: str) -> str:
        return f"{label}: {one_line(value)}"

    def render(self, doc: _Document) -> str:
        blocks: list[str] = []
        if doc.headline:
            blocks.append(self.headline(doc))
        if doc.transitions:
            blocks.append("\n".join(f"- {self.transition_line(t, doc)}" for t in doc.transitions))
        if doc.show_tree and doc.steps:
            lines = [self.steps_title]
            for step in doc.steps:
                lines.append(self.step_head(step))
                lines.extend(
                    f"{self.sub_prefix}{self.sub_text(sub, doc)}" for sub in step.sub_lines
                )
                if step.omitted:
                    lines.append(f"{self.sub_prefix}{_omitted_text(step.omitted)}")
            blocks.append("\n".join(lines))
        notes = self.notes(doc)
        if notes:
            blocks.append("\n".join(self.note(note) for note in notes))
        if doc.facts:
            blocks.append("\n".join(self.fact(label, value) for label, value in doc.facts))
        return "\n\n".join(blocks)


class _MarkdownRenderer(_TextRenderer):
    steps_title = "**Steps**"
    sub_prefix = "    - "

    def __init__(self, escape: Callable[[object], str] = escape_markdown) -> None:
        super().__init__(escape)

    def strong(self, value: str, *, escaped: bool = False) -> str:
        inner = value if escaped else self.text(value)
        return f"**{inner}**" if inner else inner

    def note(self, note: str) -> str:
        return f"_{note}_"

    def fact(self, label: str, value: str) -> str:
        return f"{label}: `{_code(value)}`"


def _code(value: str) -> str:
    """Inline code content: backticks cannot be escaped inside a code span, so drop them."""
    return one_line(value).replace("`", "'")


#: The HTML layout stacks (no wide table): at most 640 px wide, and at a phone's 375 px
#: every line wraps, long ids included, so nothing is off-screen. Markup stays lean: it
#: counts against the channel's budget.
_HTML_WRAPPER: Final = '<div style="max-width:640px;overflow-wrap:anywhere">'


class _HtmlRenderer(_Renderer):
    def __init__(self) -> None:
        super().__init__(escape_html)

    def strong(self, value: str, *, escaped: bool = False) -> str:
        inner = value if escaped else self.text(value)
        return f"<b>{inner}</b>" if inner else inner

    def render(self, doc: _Document) -> str:
        parts: list[str] = [_HTML_WRAPPER]
        if doc.headline:
            parts.append(f"<p>{self.headline(doc)}</p>")
        if doc.transitions:
            items = "".join(f"<li>{self.transition_line(t, doc)}</li>" for t in doc.transitions)
            parts.append(f"<ul>{items}</ul>")
        if doc.show_tree and doc.steps:
            parts.append(self.steps(doc))
        for note in self.notes(doc):
            parts.append(f"<p><i>{self.text(note)}</i></p>")
        if doc.facts:
            facts = "<br>".join(
                f"{self.text(label)}: <code>{self.text(value)}</code>" for label, value in doc.facts
            )
            parts.append(f"<p>{facts}</p>")
        parts.append("</div>")
        return "\n".join(parts)

    def steps(self, doc: _Document) -> str:
        """The step tree, stacked: a line per step, its sub-steps listed under it, each with
        its status, then timing and detail on lines of their own."""
        blocks = ["<p><b>Steps</b></p>"]
        for step in doc.steps:
            head = (
                f"{step.number}. {step.symbol} <b>{self.text(step.name)}</b>"
                f" — {self.text(status_label(step.status))}"
            )
            if step.detail:
                head += f"<br>{self.text(step.detail, 120)}"
            if step.collapsed:
                head += f" · {_plural(step.collapsed, 'sub-step')}"
            items: list[str] = []
            for sub in step.sub_lines:
                item = f"{sub.symbol} {self.text(sub.name)} — {self.text(status_label(sub.status))}"
                timing = _timing(sub.started, sub.ended, sub.duration)
                if timing:
                    item += f"<br><small>{self.text(timing)}</small>"
                if not sub.mentioned:
                    notes = [self.text(sub.detail, doc.message_limit)] if sub.detail else []
                    notes += [self.text(message, doc.message_limit) for message in sub.messages]
                    item += "".join(f"<br>{note}" for note in notes)
                items.append(f"<li>{item}</li>")
            if step.omitted:
                items.append(f"<li><i>{self.text(_omitted_text(step.omitted))}</i></li>")
            listed = f"<ul>{''.join(items)}</ul>" if items else ""
            blocks.append(f"<p>{head}</p>{listed}")
        return "".join(blocks)


_RENDERERS: Final[Mapping[str, Callable[[], _Renderer]]] = {
    "markdown": _MarkdownRenderer,
    "html": _HtmlRenderer,
    "text": _TextRenderer,
}


def _renderer(fmt: str, dialect: str) -> _Renderer:
    if fmt == "markdown" and dialect == "slack":
        return _MarkdownRenderer(escape_slack)
    return _RENDERERS[fmt]()


def fit(doc: _Document, fmt: str, budget: int, dialect: str = "commonmark") -> str:
    """Render ``doc``, cutting it by meaning until it fits ``budget`` characters.

    Stage by stage (:data:`_STAGES`), the fewest cuts that make the body fit are found by
    bisection; then the stages before the one that made it fit give back what they can (a
    step tree left out may leave room for transitions thinned earlier). The body is always
    rendered from the cut document, so markup is never split."""
    renderer = _renderer(fmt, dialect)
    body = renderer.render(doc)
    if budget <= 0 or len(body) <= budget:
        return body
    budget = max(budget, MIN_BUDGET)
    rendered: dict[tuple[int, ...], str] = {}

    def attempt(cuts: Sequence[int]) -> str:
        key = tuple(cuts)
        if key not in rendered:
            rendered[key] = renderer.render(_reduce(doc, key))
        return rendered[key]

    def fewest(cuts: list[int], index: int, low: int, high: int) -> int:
        """The fewest cuts of stage ``index`` in [low, high] that fit (``high`` fits)."""
        while low < high:
            middle = (low + high) // 2
            cuts[index] = middle
            if len(attempt(cuts)) <= budget:
                high = middle
            else:
                low = middle + 1
        cuts[index] = high
        return high

    cuts = [0] * len(_STAGES)
    for index, stage in enumerate(_STAGES):
        available = stage.count(_reduce(doc, cuts))
        if not available:
            continue
        cuts[index] = available
        if len(attempt(cuts)) > budget:
            continue  # all of this stage is not enough: keep it, go on
        fewest(cuts, index, 1, available)
        for earlier in reversed(range(index)):
            if cuts[earlier]:
                fewest(cuts, earlier, 0, cuts[earlier])
        return attempt(cuts)
    doc = _reduce(doc, cuts)
    # Last resort: only the headline, cut on raw text so no markup is ever split.
    limit = budget
    while limit > 10:
        headline = tuple(
            (shorten(text, limit) if emphasis else text, emphasis)
            for text, emphasis in doc.headline
        )
        minimal = _Document(
            headline=headline,
            transitions=(),
            omitted_transitions=len(doc.transitions) + doc.omitted_transitions,
            steps=(),
            omitted_steps=0,
            facts=(),
            show_tree=False,
            truncated=False,
        )
        body = renderer.render(minimal)
        if len(body) <= budget:
            return body
        limit = limit * 2 // 3
    return escape_text(shorten(body, budget)) if fmt == "text" else ""


# -- titles and the public entry point --------------------------------------------------------


def default_title(events: Sequence[Event], record: OperationRecord | None, limit: int) -> str:
    """``❌ failed · OpCreate · bcs-prod`` (plain text: titles are never markup)."""
    status = _current_status(events, record)
    operation = _operation_of(events, record)
    if operation:
        type_name = operation.get("operation_type_name") or operation_type_name(
            str(operation.get("operation_type") or "")
        )
        where = operation.get("blockchain_name") or operation.get("blockchain_id") or ""
        parts = [f"{status_symbol(status)} {status_label(status)}", str(type_name)]
        if where:
            parts.append(one_line(where))
    else:
        source = events[-1].source if events else ""
        parts = [f"{status_symbol(status)} source {status}", source]
    return shorten(" · ".join(part for part in parts if part), limit)


def render_message(
    events: Sequence[Event],
    record: OperationRecord | None,
    options: RenderOptions,
    templates: Templates | None = None,
) -> Message:
    """The message for one operation's events on one channel target."""
    if options.format not in FORMATS:
        raise ValueError(f"unknown format {options.format!r}")
    if options.dialect not in DIALECTS:
        raise ValueError(f"unknown markdown dialect {options.dialect!r}")
    timezone = zone(options.timezone)
    status = _current_status(events, record)
    doc = build_document(events, record, timezone)
    title = default_title(events, record, options.title_max or TITLE_MAX)
    body = fit(doc, options.format, options.budget, options.dialect)
    if templates is not None and (templates.title or templates.body):
        context = template_context(events, record, options, timezone, title=title, body=body)
        if templates.title:
            title = shorten(templates.render_title(context), options.title_max or TITLE_MAX)
        if templates.body:
            rendered = templates.render_body(context, options.format)
            body = _cut_template_body(rendered, options.format, options.budget)
    return Message(title=title, body=body, format=options.format, notify_type=notify_type(status))


def plain_message(events: Sequence[Event], options: RenderOptions) -> Message:
    """The last resort when the default message cannot be built from some stored data: one
    escaped line per event (the ``events`` command's form), cut to the budget."""
    escape = {"markdown": escape_markdown, "html": escape_html}.get(options.format, escape_text)
    lines = [escape(describe(event)) for event in events]
    separator = "<br>\n" if options.format == "html" else "\n"
    body = separator.join(lines) or escape("(no events)")
    budget = max(options.budget, MIN_BUDGET) if options.budget > 0 else 0
    if budget and len(body) > budget:
        kept: list[str] = []
        size = 0
        for line in lines:
            if size + len(line) + len(separator) + 40 > budget:
                break
            kept.append(line)
            size += len(line) + len(separator)
        omitted = len(lines) - len(kept)
        kept.append(escape(f"({omitted} more event(s) not shown)"))
        body = separator.join(kept)
    last = events[-1] if events else None
    title = shorten(
        f"{last.source}: {last.operation_id or last.source} {last.type}"
        if last
        else "bcs-notifier",
        options.title_max or TITLE_MAX,
    )
    status = last.to_status if last is not None else None
    return Message(title=title, body=body, format=options.format, notify_type=notify_type(status))


def _cut_template_body(body: str, fmt: str, budget: int) -> str:
    """A user template's output is opaque: cut it at a line boundary, never mid-line."""
    if budget <= 0 or len(body) <= budget:
        return body
    note = "\n…" if fmt != "html" else "\n<p>…</p>"
    kept: list[str] = []
    size = len(note)
    for line in body.splitlines():
        if size + len(line) + 1 > budget:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(kept) + note


# -- templates --------------------------------------------------------------------------------


class TemplateError(ValueError):
    """A channel template failed to compile or render (the message is one line)."""


#: Work one template rendering may do: ``range`` items created (Jinja2's own sandbox caps one
#: range at ``MAX_RANGE``; this caps them all together, so nested loops stay bounded too) plus
#: attribute, item and call lookups; the characters it may produce; and the wall time it may
#: take. A template that needs more is a template error, reported by ``check-config``.
TEMPLATE_MAX_OPERATIONS: Final = 200_000
TEMPLATE_MAX_OUTPUT: Final = 65_536
TEMPLATE_MAX_SECONDS: Final = 2.0
_REPEAT_OPERATORS: Final = frozenset({"*", "**"})


class _Budget:
    """What one rendering may still spend (see ``TEMPLATE_MAX_*``)."""

    def __init__(self, operations: int, seconds: float) -> None:
        self.operations = operations
        self.deadline = time.monotonic() + seconds

    def spend(self, operations: int = 1) -> None:
        self.operations -= operations
        if self.operations < 0:
            raise TemplateError(
                f"template does too much work (more than {TEMPLATE_MAX_OPERATIONS} loop items "
                "and lookups); the sandbox stopped it"
            )
        if time.monotonic() > self.deadline:
            raise TemplateError(
                f"template took longer than {TEMPLATE_MAX_SECONDS:g} s; the sandbox stopped it"
            )


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "template_budget", default=None
)


def _spend(operations: int = 1) -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.spend(operations)


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with a work budget per rendering (see ``_Budget``)."""

    intercepted_binops = _REPEAT_OPERATORS

    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        return super().getitem(obj, argument)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _spend()
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _spend()
        if operator == "**":
            numbers = isinstance(left, int | float) and isinstance(right, int | float)
            if numbers and abs(right) > 64 and abs(left) > 1:
                raise TemplateError("template computes a power too large for the sandbox")
            return left**right
        # "*": a sequence repeated, or numbers multiplied
        for sequence, count in ((left, right), (right, left)):
            repeated = isinstance(sequence, str | list | tuple) and isinstance(count, int)
            if repeated and len(sequence) * count > TEMPLATE_MAX_OUTPUT:
                raise TemplateError(
                    f"template repeats a value to more than {TEMPLATE_MAX_OUTPUT} items"
                )
        return left * right


def _bounded_range(*args: int) -> range:
    """``range`` for templates: Jinja2's ``MAX_RANGE`` per range, and every item counted
    against the rendering's budget."""
    items = jinja2.sandbox.safe_range(*args)
    _spend(len(items))
    return items


@jinja2.pass_context
def _markdown_escape_filter(context: Any, value: object) -> str:
    """``markdown_escape`` for the target at hand: Slack's mrkdwn or CommonMark."""
    if context.get("dialect") == "slack":
        return escape_slack(value)
    return escape_markdown(value)


def _sandbox(autoescape: bool) -> ImmutableSandboxedEnvironment:
    environment = _BoundedSandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.globals["range"] = _bounded_range
    environment.filters["markdown_escape"] = _markdown_escape_filter
    environment.filters["one_line"] = one_line
    environment.filters["symbol"] = status_symbol
    environment.filters["shorten"] = shorten
    return environment


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class Templates:
    """A channel's compiled title/body templates."""

    title: str | None = None
    body: str | None = None
    _compiled: dict[tuple[str, bool], jinja2.Template] = field(
        default_factory=dict, compare=False, repr=False
    )

    def _template(self, source: str, autoescape: bool) -> jinja2.Template:
        key = (source, autoescape)
        if key not in self._compiled:
            try:
                self._compiled[key] = _sandbox(autoescape).from_string(source)
            except TemplateError:
                raise
            except Exception as exc:  # compiling runs constant folding too: anything goes
                raise TemplateError(f"template does not compile: {_error_text(exc)}") from exc
        return self._compiled[key]

    def render_title(self, context: Mapping[str, Any]) -> str:
        if self.title is None:
            return ""
        return one_line(self._render(self._template(self.title, False), context)).strip()

    def render_body(self, context: Mapping[str, Any], fmt: str) -> str:
        if self.body is None:
            return ""
        return self._render(self._template(self.body, fmt == "html"), context).strip()

    @staticmethod
    def _render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
        """Render within the sandbox's budget. Whatever a template raises for some data
        (``UndefinedError``, ``ZeroDivisionError``, ``OverflowError`` from a huge range, ...)
        becomes a :class:`TemplateError` with a one-line message."""
        token = _BUDGET.set(_Budget(TEMPLATE_MAX_OPERATIONS, TEMPLATE_MAX_SECONDS))
        try:
            size = 0
            parts: list[str] = []
            for part in template.generate(**context):
                size += len(part)
                if size > TEMPLATE_MAX_OUTPUT:
                    raise TemplateError(
                        f"template output is longer than {TEMPLATE_MAX_OUTPUT} characters"
                    )
                parts.append(part)
                _spend()
            return "".join(parts)
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:  # includes UndefinedError and SecurityError
            raise TemplateError(f"template failed: {' '.join(str(exc).split())}") from exc
        except Exception as exc:  # the template's own arithmetic, filters on odd data, ...
            raise TemplateError(f"template failed: {_error_text(exc)}") from exc
        finally:
            _BUDGET.reset(token)


def template_context(
    events: Sequence[Event],
    record: OperationRecord | None,
    options: RenderOptions,
    timezone: tzinfo,
    *,
    title: str,
    body: str,
) -> dict[str, Any]:
    """What a template sees (documented in README): plain dicts, strings and numbers."""
    status = _current_status(events, record)

    def event_view(event: Event) -> dict[str, Any]:
        view = event.to_dict()
        view["symbol"] = status_symbol(event.to_status)
        view["time"] = format_time(event.record_time, timezone)
        view["started"] = format_time(event.started_at, timezone)
        view["ended"] = format_time(event.ended_at, timezone)
        view["duration"] = format_duration(event.started_at, event.ended_at)
        # *.stalled: elapsed_seconds, threshold_seconds, p95_seconds, samples, reminder
        view["stall"] = event.stall.to_dict() if event.stall is not None else None
        if event.stall is not None:
            view["symbol"] = status_symbol("stalled")
        return view

    steps: list[dict[str, Any]] = []
    if record is not None:
        for step in sorted(record.steps, key=lambda item: (item.serial_num, item.name)):
            subs = sorted(step.sub_steps, key=lambda item: (item.serial_num, item.name))
            steps.append(
                {
                    "name": step.name,
                    "status": step.status,
                    "symbol": status_symbol(step.status),
                    "detail": step.detail,
                    "serial_num": step.serial_num,
                    "sub_steps": [
                        {
                            "name": sub.name,
                            "status": sub.status,
                            "symbol": status_symbol(sub.status),
                            "detail": sub.detail,
                            "message": list(sub.message),
                            "serial_num": sub.serial_num,
                            "started": format_time(sub.start_time, timezone),
                            "ended": format_time(sub.end_time, timezone),
                            "duration": format_duration(sub.start_time, sub.end_time),
                        }
                        for sub in subs
                    ],
                }
            )
    return {
        "events": [event_view(event) for event in events],
        "operation": dict(_operation_of(events, record)),
        "steps": steps,
        "status": status,
        "symbol": status_symbol(status),
        "source": events[-1].source if events else "",
        "format": options.format,
        "dialect": options.dialect,
        "default_title": title,
        "default_body": body,
    }


def sample_events() -> tuple[list[Event], OperationRecord]:
    """A representative failed operation, used to check templates at start and by
    ``test-channel``."""
    start = 1_618_218_591_951_266_000
    record = OperationRecord(
        operation_id="BCSSVC01-99-1618218591906093855",
        status="failed",
        resource_type="BCSSVC01",
        operation_type="99",
        project_id="051ddda57400d2982fccc014fab5749d",
        blockchain_id="23604f57-eac9-3777-e9f5-ae87457f2338",
        blockchain_name="bcs-sample",
        record_time=start + 95_000_000_000,
        steps=(
            Step(
                name="Preparation",
                status="finished",
                serial_num=1,
                sub_steps=(
                    SubStep(
                        name="Generate basic configurations",
                        status="finished",
                        start_time=start,
                        end_time=start + 2_000_000_000,
                        serial_num=1,
                    ),
                ),
            ),
            Step(
                name="Create Other Dependent Resource",
                status="failed",
                serial_num=2,
                sub_steps=(
                    SubStep(
                        name="Create EIP",
                        status="failed",
                        detail="quota exceeded",
                        message=("EIP quota of the project is exhausted",),
                        start_time=start + 3_000_000_000,
                        end_time=start + 95_000_000_000,
                        serial_num=2,
                    ),
                    SubStep(
                        name="Create network storage", status="", detail="waiting", serial_num=3
                    ),
                ),
            ),
        ),
    )
    operation = record.summary()
    events = [
        Event(
            id="evt_sample_substep",
            type=EventType.SUBSTEP_STATUS_CHANGED,
            source="sample",
            operation_id=record.operation_id,
            record_time=record.record_time,
            operation=operation,
            step="Create Other Dependent Resource",
            substep="Create EIP",
            from_status="processing",
            to_status="failed",
            detail="quota exceeded",
            message=("EIP quota of the project is exhausted",),
            started_at=start + 3_000_000_000,
            ended_at=start + 95_000_000_000,
        ),
        Event(
            id="evt_sample_operation",
            type=EventType.OPERATION_STATUS_CHANGED,
            source="sample",
            operation_id=record.operation_id,
            record_time=record.record_time,
            operation=operation,
            from_status="processing",
            to_status="failed",
        ),
    ]
    return events, record


def check_templates(title: str | None, body: str | None, timezone: str) -> list[tuple[str, str]]:
    """Compile and render a channel's templates on the sample event in every format and
    dialect, and with a single event (a template that divides by ``events|length - 1`` fails
    there, not at 3 a.m.).

    Returns ``(key, message)`` problems (key is ``title`` or ``body``), at most one per key.
    An unknown ``timezone`` (reported by the config loader) does not hide template problems:
    the check then renders in UTC."""
    if not title and not body:
        return []
    templates = Templates(title=title, body=body)
    try:
        zone_info = zone(timezone)
    except (ValueError, LookupError):  # an unknown time zone is reported by the config loader
        zone_info = zone("UTC")
    events, record = sample_events()
    samples = ((events, record), (events[-1:], record))
    problems: list[tuple[str, str]] = []
    for key in ("title", "body"):
        if not getattr(templates, key):
            continue
        try:
            for sample_events_, sample_record in samples:
                for fmt, dialect in _FORMAT_DIALECTS:
                    options = RenderOptions(format=fmt, timezone=timezone, dialect=dialect)
                    context = template_context(
                        sample_events_,
                        sample_record,
                        options,
                        zone_info,
                        title="sample",
                        body="sample",
                    )
                    if key == "title":
                        templates.render_title(context)
                    else:
                        templates.render_body(context, fmt)
        except TemplateError as exc:
            problems.append((key, str(exc)))
        except Exception as exc:  # every failure here is a config problem
            problems.append((key, f"template failed: {_error_text(exc)}"))
    return problems
