"""The simulator stands in for the outside world (the BCS and IAM APIs), so it imports nothing
of the service it is there to check: not its config, client, signer, store or channels. Checked
twice: in a fresh interpreter that imports every simulator module, and in the source, where an
import inside a function counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import notifier.simulator

PACKAGE = Path(notifier.simulator.__file__).parent
SOURCES = sorted(PACKAGE.glob("*.py"))
#: no I/O library the service uses either: the simulator is stdlib only
FORBIDDEN_LIBRARIES = ["httpx", "sqlalchemy", "apprise", "click", "alembic", "requests"]


def is_service_module(name: str) -> bool:
    """A ``notifier`` module outside ``notifier.simulator`` (the bare package is only its
    ``__init__``, which holds the version)."""
    inside = name == "notifier.simulator" or name.startswith("notifier.simulator.")
    return name.startswith("notifier.") and not inside


def imported_names(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth, relative imports resolved."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["notifier", "simulator"][: 3 - node.level]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.append(module)
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_the_simulator_has_modules_to_check() -> None:
    assert {path.stem for path in SOURCES} >= {"__init__", "server", "http", "scenario", "auth"}


def test_importing_every_simulator_module_loads_nothing_of_the_service() -> None:
    modules = [f"notifier.simulator.{path.stem}" for path in SOURCES if path.stem != "__init__"]
    code = (
        f"import sys, notifier.simulator, {', '.join(modules)}\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] == 'notifier')))\n"
        f"print('\\n'.join(m for m in {FORBIDDEN_LIBRARIES!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert set(modules) <= set(loaded)  # the check saw them
    offenders = [name for name in loaded if is_service_module(name)]
    offenders += [name for name in loaded if name in FORBIDDEN_LIBRARIES]
    assert offenders == []


@pytest.mark.parametrize("path", SOURCES, ids=[path.name for path in SOURCES])
def test_no_simulator_source_imports_the_service(path: Path) -> None:
    offenders = [name for name in imported_names(path) if is_service_module(name)]
    offenders += [
        name for name in imported_names(path) if name.split(".")[0] in FORBIDDEN_LIBRARIES
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from notifier.config import SourceConfig", True),
        ("def f():\n    from notifier.bcs import signing", True),
        ("from .. import config", True),
        ("import notifier.store.db", True),
        ("from notifier import demo", True),
        ("from notifier.simulator.clock import ManualClock", False),
        ("from . import clock", False),
        ("import json", False),
    ],
)
def test_the_source_check_sees_service_imports(tmp_path: Path, source: str, expected: bool) -> None:
    path = tmp_path / "module.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert any(is_service_module(name) for name in imported_names(path)) is expected
