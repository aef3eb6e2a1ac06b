"""The entry points (pure): one operation's events of one cycle into a :class:`Message`.

:func:`render_message` builds the document, cuts it to the channel's budget and applies the
channel's templates; :func:`plain_message` is the last resort when stored data cannot be
rendered.
"""

from __future__ import annotations

from collections.abc import Sequence

from notifier.channels.render.cut import fit
from notifier.channels.render.document import (
    DIALECTS,
    FORMATS,
    MIN_BUDGET,
    TITLE_MAX,
    Message,
    RenderOptions,
    build_document,
    current_status,
    default_title,
    notify_type,
    zone,
)
from notifier.channels.render.escape import ESCAPERS, escape_text, shorten
from notifier.channels.render.templates import Templates, template_context
from notifier.model import Event, OperationRecord, describe


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
    status = current_status(events, record)
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
    escape = ESCAPERS.get(options.format, escape_text)
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
