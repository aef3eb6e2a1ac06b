"""``notifier.channels.render`` is a package with one job per module behind a face that keeps
every name the single module exported importable from where it was."""

from __future__ import annotations

import importlib

import pytest

from notifier.channels import render

#: What ``notifier/channels/render.py`` exported before the split (its public names), with
#: the module each lives in now.
HOMES = {
    "escape": [
        "ESCAPERS",
        "escape_html",
        "escape_markdown",
        "escape_slack",
        "escape_text",
        "one_line",
        "shorten",
    ],
    "document": [
        "DIALECTS",
        "FORMATS",
        "MIN_BUDGET",
        "NOTIFY_TYPES",
        "STATUS_SYMBOLS",
        "TITLE_MAX",
        "UNKNOWN_SYMBOL",
        "Message",
        "RenderOptions",
        "build_document",
        "default_title",
        "format_duration",
        "format_time",
        "notify_type",
        "stall_change",
        "status_label",
        "status_symbol",
        "zone",
    ],
    "cut": ["fit"],
    "templates": [
        "TEMPLATE_MAX_OPERATIONS",
        "TEMPLATE_MAX_OUTPUT",
        "TEMPLATE_MAX_SECONDS",
        "TemplateError",
        "Templates",
        "check_templates",
        "sample_events",
        "template_context",
    ],
    "message": ["plain_message", "render_message"],
}


@pytest.mark.parametrize(
    ("module", "name"),
    [(module, name) for module, names in HOMES.items() for name in names],
)
def test_the_face_re_exports_the_name_from_its_home(module: str, name: str) -> None:
    home = importlib.import_module(f"notifier.channels.render.{module}")
    assert getattr(render, name) is getattr(home, name)


def test_the_face_exports_exactly_the_old_names() -> None:
    assert sorted(render.__all__) == sorted(name for names in HOMES.values() for name in names)


@pytest.mark.parametrize("module", sorted(HOMES))
def test_no_re_exported_name_shadows_a_module(module: str) -> None:
    # a module named like a function the face re-exports (``fit``) would make
    # ``import notifier.channels.render.fit as m`` hand back the function
    assert getattr(render, module) is importlib.import_module(f"notifier.channels.render.{module}")
