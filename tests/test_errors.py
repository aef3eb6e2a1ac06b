"""The error tree really is one tree: every exception class bcs-notifier defines derives from
``NotifierError``, except private signals that never leave their module (listed here)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import notifier
from notifier.errors import NotifierError, TemplateError, UnloadableURL

#: Exceptions that are control-flow signals inside ``bcs``: raised and caught there, never seen
#: by a caller. Listed by class name (a module split may move them); each says where it is
#: caught.
SIGNALS = {
    # bcs.client: the size cap hit inside a response stream, mapped to ResponseTooLarge
    "BodyTooLarge",
    # bcs.parse -> bcs.source: one record skipped with a warning, the rest still read
    "MalformedRecord",
    # bcs.stream -> bcs.client: a record past its cap, mapped to ResponseTooLarge / a skip
    "RecordTooLarge",
    # bcs.stream -> bcs.client: decode the body again whole
    "DecodeWhole",
}


def _defined_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(notifier.__path__, "notifier."):
        if info.name == "notifier.__main__":  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                found[f"{info.name}.{name}"] = value
    return found


def test_every_exception_joins_the_tree_or_is_a_listed_signal() -> None:
    found = _defined_exceptions()
    outside = {
        path: cls
        for path, cls in found.items()
        if not issubclass(cls, NotifierError) and cls.__name__ not in SIGNALS
    }
    assert outside == {}, "join NotifierError, or list a private signal in SIGNALS"
    assert "notifier.errors.ConfigError" in found  # the walk really saw the package


def test_every_listed_signal_still_exists() -> None:
    names = {cls.__name__ for cls in _defined_exceptions().values()}
    assert SIGNALS - names == set(), "SIGNALS names a class that no longer exists"


@pytest.mark.parametrize(
    ("old_home", "name", "cls"),
    [
        ("notifier.channels.render", "TemplateError", TemplateError),
        ("notifier.channels.render.templates", "TemplateError", TemplateError),
        ("notifier.channels.targets", "UnloadableURL", UnloadableURL),
    ],
)
def test_moved_errors_keep_their_old_import_path(old_home: str, name: str, cls: type) -> None:
    assert getattr(importlib.import_module(old_home), name) is cls


def test_a_template_failure_is_a_notifier_error_and_still_a_value_error() -> None:
    from notifier.channels.render import Templates

    with pytest.raises(NotifierError) as raised:
        Templates(title="{{ 1 // 0 }}").render_title({})
    assert isinstance(raised.value, TemplateError)
    assert isinstance(raised.value, ValueError)  # as before: Jinja2 code may tell by this base


def test_an_unloadable_url_is_a_notifier_error() -> None:
    from notifier.channels.targets import load_plugin

    with pytest.raises(NotifierError) as raised:
        load_plugin("nosuchschema://host/path")
    assert isinstance(raised.value, UnloadableURL)
    assert "nosuchschema" in str(raised.value)


@pytest.mark.parametrize(
    ("error", "limit", "line"),
    [
        (ValueError("bad\n  value"), None, "ValueError: bad value"),
        (KeyError(), None, "KeyError"),
        (OSError("x" * 50), 20, "OSError: xxxxxxxxxxx"),
    ],
    ids=["collapsed", "no-message", "cut"],
)
def test_error_line_names_the_type_on_one_line(
    error: BaseException, limit: int | None, line: str
) -> None:
    from notifier.errors import error_line

    assert error_line(error, limit) == line
