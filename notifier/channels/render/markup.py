"""Writing a document in a target's markup (pure): Markdown (CommonMark or Slack), HTML, text.

The writers walk the same :class:`~notifier.channels.render.document.Document`; each
escapes every API string for its markup and differs only in how it marks a few parts up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from notifier.channels.render.document import Document, StepLine, SubLine, Transition, status_label
from notifier.channels.render.escape import (
    escape_html,
    escape_markdown,
    escape_slack,
    escape_text,
    one_line,
    shorten,
)


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

    def render(self, doc: Document) -> str:
        raise NotImplementedError

    def transition_line(self, item: Transition, doc: Document) -> str:
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

    def step_head(self, step: StepLine) -> str:
        text = (
            f"{step.number}. {step.symbol} {self.strong(self.text(step.name), escaped=True)}"
            f" — {self.text(status_label(step.status))}"
        )
        if step.detail:
            text += f" ({self.text(step.detail, 120)})"
        if step.collapsed:
            text += f" · {_plural(step.collapsed, 'sub-step')}"
        return text

    def sub_text(self, sub: SubLine, doc: Document) -> str:
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

    def headline(self, doc: Document) -> str:
        return "".join(
            self.strong(self.text(text), escaped=True) if emphasis else self.text(text)
            for text, emphasis in doc.headline
        )

    def notes(self, doc: Document) -> list[str]:
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

    def render(self, doc: Document) -> str:
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

    def render(self, doc: Document) -> str:
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

    def steps(self, doc: Document) -> str:
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


def renderer_for(fmt: str, dialect: str) -> _Renderer:
    if fmt == "markdown" and dialect == "slack":
        return _MarkdownRenderer(escape_slack)
    return _RENDERERS[fmt]()
