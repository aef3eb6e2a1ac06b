"""Turn one operation's events of one cycle into a message people want to read (pure).

Input: the events a channel matched (in ``seq`` order, possibly several cycles coalesced)
and the operation record of the latest cycle. Output: a :class:`Message` with a plain-text
title and a body in the target's markup (``markdown``, ``html`` or ``text``).

Every string that comes from the API is escaped for the target's markup, and a long body
is cut by meaning, never mid-markup: the message is built as a small document model,
reduced step by step (finished sub-steps summarised, finished steps collapsed, long error
texts shortened, transitions thinned) until the rendered body fits the channel's budget.

Optional per-channel Jinja2 ``title``/``body`` templates render in a sandbox where an
undefined name is an error; :func:`check_templates` renders a sample event at start.

Nothing here imports apprise, httpx, SQLAlchemy or click.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import tzinfo
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.model import (
    Event,
    EventType,
    OperationRecord,
    Step,
    SubStep,
    ns_to_datetime,
    operation_type_name,
)

Format = Literal["markdown", "html", "text"]
FORMATS: Final = ("markdown", "html", "text")

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
}
UNKNOWN_SYMBOL: Final = "❔"

#: apprise notify types (strings, so this module does not import apprise).
NOTIFY_TYPES: Final[Mapping[str, str]] = {
    "failed": "failure",
    "stop": "warning",
    "finished": "success",
    "unreachable": "warning",
    "recovered": "success",
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
        return record.status
    for event in reversed(events):
        if event.type is EventType.SOURCE_UNREACHABLE:
            return "unreachable"
        if event.type is EventType.SOURCE_RECOVERED:
            return "recovered"
        status = event.operation.get("status") if event.operation else None
        if status is not None:
            return str(status)
    return ""


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
    started, ended = event.started_at, event.ended_at
    when_ns = ended or started or event.record_time
    detail = event.detail if event.detail and event.detail.strip().lower() != to_status else None
    if event.error:
        detail = event.error
    return _Transition(
        symbol=status_symbol(to_status),
        subject=subject,
        kind=kind,
        change=change,
        when=format_time(when_ns, timezone),
        duration=format_duration(started, ended),
        detail=detail,
        messages=tuple(event.message),
        important=to_status in _PROBLEM
        or to_status == "unreachable"
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


# -- reducers: each returns a shorter document, or None when it has nothing left to cut -------


def _summarise_subs(doc: _Document, statuses: frozenset[str]) -> _Document | None:
    changed = False
    steps: list[_StepLine] = []
    for line in doc.steps:
        keep = tuple(sub for sub in line.sub_lines if sub.status not in statuses)
        if len(keep) != len(line.sub_lines):
            changed = True
            counts: dict[str, int] = dict(line.omitted)
            for sub in line.sub_lines:
                if sub.status in statuses:
                    label = status_label(sub.status) if sub.status else "waiting"
                    counts[label] = counts.get(label, 0) + 1
            line = replace(line, sub_lines=keep, omitted=tuple(counts.items()))  # noqa: PLW2901
        steps.append(line)
    return replace(doc, steps=tuple(steps)) if changed else None


def _summarise_finished_subs(doc: _Document) -> _Document | None:
    return _summarise_subs(doc, frozenset({"finished"}))


def _summarise_waiting_subs(doc: _Document) -> _Document | None:
    return _summarise_subs(doc, frozenset({"waiting", ""}))


def _shorten_messages(doc: _Document) -> _Document | None:
    if doc.message_limit and doc.message_limit <= 80:
        return None
    return replace(doc, message_limit=200 if not doc.message_limit else 80)


def _collapse_quiet_steps(doc: _Document) -> _Document | None:
    """Steps without a problem lose their sub-step lines (a count remains)."""
    changed = False
    steps: list[_StepLine] = []
    for step in doc.steps:
        if not _is_problem(step.status) and (step.sub_lines or step.omitted):
            hidden = len(step.sub_lines) + sum(count for _, count in step.omitted)
            step = replace(  # noqa: PLW2901
                step, sub_lines=(), omitted=(), collapsed=step.collapsed + hidden
            )
            changed = True
        steps.append(step)
    return replace(doc, steps=tuple(steps)) if changed else None


def _thin_transitions(doc: _Document) -> _Document | None:
    keep = tuple(item for item in doc.transitions if item.important)
    if len(keep) == len(doc.transitions):
        return None
    dropped = len(doc.transitions) - len(keep)
    return replace(doc, transitions=keep, omitted_transitions=doc.omitted_transitions + dropped)


def _drop_quiet_steps(doc: _Document) -> _Document | None:
    keep = tuple(step for step in doc.steps if _is_problem(step.status) or step.sub_lines)
    if len(keep) == len(doc.steps):
        return None
    return replace(doc, steps=keep, omitted_steps=doc.omitted_steps + len(doc.steps) - len(keep))


def _drop_tree(doc: _Document) -> _Document | None:
    if not doc.show_tree:
        return None
    return replace(doc, show_tree=False, truncated=True)


def _drop_last_transition(doc: _Document) -> _Document | None:
    if len(doc.transitions) <= 1:
        return None
    return replace(
        doc,
        transitions=doc.transitions[:-1],
        omitted_transitions=doc.omitted_transitions + 1,
        message_limit=min(doc.message_limit or 80, 80),
    )


def _terse_messages(doc: _Document) -> _Document | None:
    if doc.message_limit and doc.message_limit <= 30:
        return None
    return replace(doc, message_limit=30)


def _drop_facts(doc: _Document) -> _Document | None:
    if len(doc.facts) <= 1:
        return None
    return replace(doc, facts=doc.facts[:1], truncated=True)


_REDUCERS: Final = (
    _summarise_finished_subs,
    _shorten_messages,
    _summarise_waiting_subs,
    _shorten_messages,
    _collapse_quiet_steps,
    _thin_transitions,
    _drop_quiet_steps,
    _drop_tree,
    _drop_facts,
)


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


class _MarkdownRenderer(_Renderer):
    def __init__(self) -> None:
        super().__init__(escape_markdown)

    def strong(self, value: str, *, escaped: bool = False) -> str:
        inner = value if escaped else self.text(value)
        return f"**{inner}**" if inner else inner

    def render(self, doc: _Document) -> str:
        blocks: list[str] = []
        if doc.headline:
            blocks.append(self.headline(doc))
        if doc.transitions:
            lines = [f"- {self.transition_line(item, doc)}" for item in doc.transitions]
            blocks.append("\n".join(lines))
        if doc.show_tree and doc.steps:
            lines = ["**Steps**"]
            for step in doc.steps:
                lines.append(self.step_head(step))
                lines.extend(f"    - {self.sub_text(sub, doc)}" for sub in step.sub_lines)
                if step.omitted:
                    lines.append(f"    - {_omitted_text(step.omitted)}")
            blocks.append("\n".join(lines))
        notes = self.notes(doc)
        if notes:
            blocks.append("\n".join(f"_{note}_" for note in notes))
        if doc.facts:
            blocks.append("\n".join(f"{label}: `{_code(value)}`" for label, value in doc.facts))
        return "\n\n".join(blocks)


def _code(value: str) -> str:
    """Inline code content: backticks cannot be escaped inside a code span, so drop them."""
    return one_line(value).replace("`", "'")


class _TextRenderer(_Renderer):
    def __init__(self) -> None:
        super().__init__(escape_text)

    def render(self, doc: _Document) -> str:
        blocks: list[str] = []
        if doc.headline:
            blocks.append(self.headline(doc))
        if doc.transitions:
            blocks.append("\n".join(f"- {self.transition_line(t, doc)}" for t in doc.transitions))
        if doc.show_tree and doc.steps:
            lines = ["Steps:"]
            for step in doc.steps:
                lines.append(self.step_head(step))
                lines.extend(f"   - {self.sub_text(sub, doc)}" for sub in step.sub_lines)
                if step.omitted:
                    lines.append(f"   - {_omitted_text(step.omitted)}")
            blocks.append("\n".join(lines))
        notes = self.notes(doc)
        if notes:
            blocks.append("\n".join(notes))
        if doc.facts:
            blocks.append("\n".join(f"{label}: {one_line(value)}" for label, value in doc.facts))
        return "\n\n".join(blocks)


_CELL: Final = 'align="left"'
_TABLE: Final = (
    '<table border="1" cellpadding="4" cellspacing="0" style="border-collapse:collapse">'
)


class _HtmlRenderer(_Renderer):
    def __init__(self) -> None:
        super().__init__(escape_html)

    def strong(self, value: str, *, escaped: bool = False) -> str:
        inner = value if escaped else self.text(value)
        return f"<b>{inner}</b>" if inner else inner

    def render(self, doc: _Document) -> str:
        parts: list[str] = []
        if doc.headline:
            parts.append(f"<p>{self.headline(doc)}</p>")
        if doc.transitions:
            items = "".join(f"<li>{self.transition_line(t, doc)}</li>" for t in doc.transitions)
            parts.append(f"<ul>{items}</ul>")
        if doc.show_tree and doc.steps:
            parts.append(self.table(doc))
        for note in self.notes(doc):
            parts.append(f"<p><i>{self.text(note)}</i></p>")
        if doc.facts:
            rows = "".join(
                f"<tr><th {_CELL}>{self.text(label)}</th>"
                f"<td {_CELL}><code>{self.text(value)}</code></td></tr>"
                for label, value in doc.facts
            )
            parts.append(f"<table>{rows}</table>")
        return "\n".join(parts)

    def table(self, doc: _Document) -> str:
        head = "".join(
            f"<th {_CELL}>{name}</th>"
            for name in ("#", "Step / sub-step", "Status", "Started", "Ended", "Duration", "Detail")
        )
        rows = [f"<tr>{head}</tr>"]
        for step in doc.steps:
            detail = self.text(step.detail, 120) if step.detail else ""
            if step.collapsed:
                detail = (detail + " " if detail else "") + _plural(step.collapsed, "sub-step")
            rows.append(
                f"<tr><td {_CELL}>{step.number}</td><td {_CELL}><b>{self.text(step.name)}</b></td>"
                f"<td {_CELL}>{step.symbol} {self.text(status_label(step.status))}</td>"
                f"<td {_CELL}></td><td {_CELL}></td><td {_CELL}></td><td {_CELL}>{detail}</td></tr>"
            )
            for sub in step.sub_lines:
                notes = [self.text(sub.detail, doc.message_limit)] if sub.detail else []
                notes += [self.text(message, doc.message_limit) for message in sub.messages]
                if sub.mentioned:
                    notes = []
                rows.append(
                    f"<tr><td {_CELL}></td><td {_CELL}>&nbsp;&nbsp;{self.text(sub.name)}</td>"
                    f"<td {_CELL}>{sub.symbol} {self.text(status_label(sub.status))}</td>"
                    f"<td {_CELL}>{self.text(sub.started or '')}</td>"
                    f"<td {_CELL}>{self.text(sub.ended or '')}</td>"
                    f"<td {_CELL}>{self.text(sub.duration or '')}</td>"
                    f"<td {_CELL}>{'<br>'.join(notes)}</td></tr>"
                )
            if step.omitted:
                rows.append(
                    f"<tr><td {_CELL}></td>"
                    f'<td colspan="6" {_CELL}><i>{self.text(_omitted_text(step.omitted))}</i></td>'
                    "</tr>"
                )
        return _TABLE + "".join(rows) + "</table>"


_RENDERERS: Final[Mapping[str, Callable[[], _Renderer]]] = {
    "markdown": _MarkdownRenderer,
    "html": _HtmlRenderer,
    "text": _TextRenderer,
}


def fit(doc: _Document, fmt: str, budget: int) -> str:
    """Render ``doc``, reducing it by meaning until it fits ``budget`` characters."""
    renderer = _RENDERERS[fmt]()
    body = renderer.render(doc)
    if budget <= 0 or len(body) <= budget:
        return body
    budget = max(budget, MIN_BUDGET)
    for reducer in _REDUCERS:
        reduced = reducer(doc)
        if reduced is None:
            continue
        doc = reduced
        body = renderer.render(doc)
        if len(body) <= budget:
            return body
    for reducer in (_drop_last_transition, _terse_messages):
        while len(body) > budget:
            reduced = reducer(doc)
            if reduced is None:
                break
            doc = reduced
            body = renderer.render(doc)
    if len(body) <= budget:
        return body
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
    timezone = zone(options.timezone)
    status = _current_status(events, record)
    doc = build_document(events, record, timezone)
    title = default_title(events, record, options.title_max or TITLE_MAX)
    body = fit(doc, options.format, options.budget)
    if templates is not None and (templates.title or templates.body):
        context = template_context(events, record, options, timezone, title=title, body=body)
        if templates.title:
            title = shorten(templates.render_title(context), options.title_max or TITLE_MAX)
        if templates.body:
            rendered = templates.render_body(context, options.format)
            body = _cut_template_body(rendered, options.format, options.budget)
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
    """A channel template failed to compile or render."""


def _sandbox(autoescape: bool) -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["markdown_escape"] = escape_markdown
    environment.filters["one_line"] = one_line
    environment.filters["symbol"] = status_symbol
    environment.filters["shorten"] = shorten
    return environment


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
            except jinja2.TemplateError as exc:
                raise TemplateError(f"template does not compile: {exc}") from exc
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
        try:
            return template.render(**context)
        except jinja2.TemplateError as exc:  # includes UndefinedError and SecurityError
            raise TemplateError(f"template failed: {exc}") from exc
        except (TypeError, ValueError, AttributeError, LookupError) as exc:
            raise TemplateError(f"template failed: {type(exc).__name__}: {exc}") from exc


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
    """Compile and render a channel's templates on the sample event in every format.

    Returns ``(key, message)`` problems (key is ``title`` or ``body``)."""
    if not title and not body:
        return []
    templates = Templates(title=title, body=body)
    events, record = sample_events()
    problems: list[tuple[str, str]] = []
    for key in ("title", "body"):
        if not getattr(templates, key):
            continue
        for fmt in FORMATS:
            options = RenderOptions(format=fmt, timezone=timezone)
            try:
                zone_info = zone(timezone)
                context = template_context(
                    events, record, options, zone_info, title="sample", body="sample"
                )
                if key == "title":
                    templates.render_title(context)
                else:
                    templates.render_body(context, fmt)
            except TemplateError as exc:
                problems.append((key, str(exc)))
                break
            except (ValueError, LookupError):
                break  # an unknown time zone is reported by the config loader
    return problems
