"""Turn one operation's events of one cycle into a message people want to read (pure).

The package face: every name ``notifier.channels.render`` exported as one module is
re-exported here, so ``from notifier.channels.render import ...`` keeps working. One job
per module:

- :mod:`~notifier.channels.render.escape`: API text escaped for Markdown (CommonMark or
  Slack's mrkdwn), HTML or text, and cut at a word boundary;
- :mod:`~notifier.channels.render.document`: what a message says (status words, times, the
  document model built from events and the record, the default title);
- :mod:`~notifier.channels.render.markup`: the Markdown / HTML / text writers;
- :mod:`~notifier.channels.render.cut`: :func:`fit`, cutting by meaning to a budget, stage
  by stage, bisected, never mid-markup (not ``fit.py``: the re-exported function would
  shadow the module, and a patch of ``render.fit.X`` would silently miss);
- :mod:`~notifier.channels.render.templates`: the bounded Jinja2 sandbox for per-channel
  ``title``/``body`` templates and :class:`TemplateError`;
- :mod:`~notifier.channels.render.message`: :func:`render_message` and
  :func:`plain_message`, the entry points.

Nothing here imports apprise, httpx, SQLAlchemy or click.
"""

from notifier.channels.render.cut import fit
from notifier.channels.render.document import (
    DIALECTS,
    FORMATS,
    MIN_BUDGET,
    NOTIFY_TYPES,
    STATUS_SYMBOLS,
    TITLE_MAX,
    UNKNOWN_SYMBOL,
    Message,
    RenderOptions,
    build_document,
    default_title,
    format_duration,
    format_time,
    notify_type,
    stall_change,
    status_label,
    status_symbol,
    zone,
)
from notifier.channels.render.escape import (
    ESCAPERS,
    escape_html,
    escape_markdown,
    escape_slack,
    escape_text,
    one_line,
    shorten,
)
from notifier.channels.render.message import plain_message, render_message
from notifier.channels.render.templates import (
    TEMPLATE_MAX_OPERATIONS,
    TEMPLATE_MAX_OUTPUT,
    TEMPLATE_MAX_SECONDS,
    Templates,
    check_templates,
    sample_events,
    template_context,
)
from notifier.errors import TemplateError

__all__ = [
    "DIALECTS",
    "ESCAPERS",
    "FORMATS",
    "MIN_BUDGET",
    "NOTIFY_TYPES",
    "STATUS_SYMBOLS",
    "TEMPLATE_MAX_OPERATIONS",
    "TEMPLATE_MAX_OUTPUT",
    "TEMPLATE_MAX_SECONDS",
    "TITLE_MAX",
    "UNKNOWN_SYMBOL",
    "Message",
    "RenderOptions",
    "TemplateError",
    "Templates",
    "build_document",
    "check_templates",
    "default_title",
    "escape_html",
    "escape_markdown",
    "escape_slack",
    "escape_text",
    "fit",
    "format_duration",
    "format_time",
    "notify_type",
    "one_line",
    "plain_message",
    "render_message",
    "sample_events",
    "shorten",
    "stall_change",
    "status_label",
    "status_symbol",
    "template_context",
    "zone",
]
