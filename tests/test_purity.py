"""The pure core imports no I/O library, so its tests need no fixtures: checked in a fresh
interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "notifier.backoff",
    "notifier.model",
    "notifier.diff",
    "notifier.stalls",
    "notifier.routing",
    "notifier.bcs.parse",
    "notifier.bcs.signing",
    "notifier.channels.render",
    "notifier.config",
    "notifier.cycle",
    "notifier.store.records",
]
FORBIDDEN = ["httpx", "sqlalchemy", "apprise", "click", "alembic", "requests"]


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_click_is_imported_only_by_the_cli() -> None:
    from pathlib import Path

    import notifier

    root = Path(notifier.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "cli" not in path.relative_to(root).parts
        and ("import click" in path.read_text() or "from click" in path.read_text())
    ]
    assert offenders == []
