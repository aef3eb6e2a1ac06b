"""What a message says (pure): the document model built from events and the record.

Input: the events a channel matched (in ``seq`` order, possibly several cycles coalesced)
and the operation record of the latest cycle. :func:`build_document` turns them into a
small :class:`Document` (headline, transitions, step tree, facts) holding raw API text;
``markup`` writes it in a target's markup and ``cut`` fits it by meaning to a budget. The
status words and symbols, times and durations every part shows are here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

from notifier.channels.render.escape import one_line, shorten
from notifier.model import (
    STALL_EVENT_TYPES,
    TERMINAL_STATUSES,
    Event,
    EventType,
    OperationRecord,
    Step,
    SubStep,
    ns_to_datetime,
    operation_type_name,
    shown_ns,
)
from notifier.stalls import step_span

FORMATS: Final = ("markdown", "html", "text")
DIALECTS: Final = ("commonmark", "slack")

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

    def alternative(self, fmt: str) -> RenderOptions:
        """The options of another part of the same message (email: the text part): in
        ``fmt``, unbounded, plain CommonMark."""
        return replace(self, format=fmt, budget=0, dialect="commonmark")


@dataclass(frozen=True)
class Transition:
    """One event as a line: what changed, when, and what the API said about it."""

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
class SubLine:
    """A sub-step of the step tree, as the record holds it now."""

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
class StepLine:
    """A step of the step tree with its sub-steps (some summarised or hidden by ``cut``)."""

    number: int
    symbol: str
    name: str
    status: str
    detail: str | None
    sub_lines: tuple[SubLine, ...]
    omitted: tuple[tuple[str, int], ...] = ()  # (status label, count) summarised
    collapsed: int = 0  # sub-steps hidden by collapsing the whole step


@dataclass(frozen=True)
class Document:
    """What a message says, as raw API text: ``markup`` escapes and writes it, ``cut`` makes
    it smaller."""

    headline: tuple[tuple[str, bool], ...]  # (raw text, emphasised)
    transitions: tuple[Transition, ...]
    omitted_transitions: int
    steps: tuple[StepLine, ...]
    omitted_steps: int
    facts: tuple[tuple[str, str], ...]  # (label, raw value)
    message_limit: int = 0  # 0: error texts in full
    show_tree: bool = True
    truncated: bool = False


_FINISHED_LIKE: Final = frozenset({"finished"})
_PROBLEM: Final = frozenset({"failed", "stop"})


def is_problem(status: str) -> bool:
    return status in _PROBLEM


def operation_of(events: Sequence[Event], record: OperationRecord | None) -> Mapping[str, Any]:
    if record is not None:
        return record.summary()
    for event in reversed(events):
        if event.operation:
            return event.operation
    return {}


def current_status(events: Sequence[Event], record: OperationRecord | None) -> str:
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


def _transition(event: Event, record: OperationRecord | None, timezone: tzinfo) -> Transition:
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
    return Transition(
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


def _sub_line(sub: SubStep, timezone: tzinfo, mentioned: bool) -> SubLine:
    detail = sub.detail if sub.detail and sub.detail.strip().lower() != sub.status else None
    return SubLine(
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
) -> StepLine:
    detail = step.detail if step.detail and step.detail.strip().lower() != step.status else None
    subs = sorted(step.sub_steps, key=lambda sub: (sub.serial_num, sub.name))
    return StepLine(
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
) -> Document:
    operation = operation_of(events, record)
    status = current_status(events, record)
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
    steps: tuple[StepLine, ...] = ()
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
    return Document(
        headline=tuple(headline),
        transitions=tuple(_transition(event, record, timezone) for event in events),
        omitted_transitions=0,
        steps=steps,
        omitted_steps=0,
        facts=tuple(facts),
    )


# -- the title ------------------------------------------------------------------------------


def default_title(events: Sequence[Event], record: OperationRecord | None, limit: int) -> str:
    """``❌ failed · OpCreate · bcs-prod`` (plain text: titles are never markup)."""
    status = current_status(events, record)
    operation = operation_of(events, record)
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
