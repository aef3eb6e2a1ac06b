"""Per-channel Jinja2 ``title``/``body`` templates in a bounded sandbox (pure).

An undefined name is an error and any failure is a :class:`TemplateError` with a one-line
message; the work, output and time of one rendering are capped. :func:`check_templates`
renders sample events at start, in every format and dialect.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any, Final

import jinja2
import jinja2.sandbox
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier.channels.render.document import (
    RenderOptions,
    current_status,
    format_duration,
    format_time,
    operation_of,
    status_symbol,
    zone,
)
from notifier.channels.render.escape import escape_markdown, escape_slack, one_line, shorten
from notifier.errors import TemplateError
from notifier.model import Event, EventType, OperationRecord, Step, SubStep

#: Every (format, dialect) a message can be rendered in; templates are checked in each.
_FORMAT_DIALECTS: Final = (
    ("markdown", "commonmark"),
    ("markdown", "slack"),
    ("html", "commonmark"),
    ("text", "commonmark"),
)


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
    status = current_status(events, record)

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
        "operation": dict(operation_of(events, record)),
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
