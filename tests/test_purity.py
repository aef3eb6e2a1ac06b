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
    "notifier.clock",
    "notifier.text",
    "notifier.redaction",
]
#: pure modules inside a package whose face (``__init__``) imports the whole service: the
#: check imports them with an empty stand-in for that face, so it sees what the module
#: itself pulls in (the face stays eager: ``from notifier.daemon import serve`` must keep
#: naming the function, not the submodule of the same name)
BEHIND_A_FACE = ["notifier.daemon.schedule"]
FORBIDDEN = ["httpx", "sqlalchemy", "apprise", "click", "alembic", "requests"]


def _loaded_io_libraries(code: str) -> str:
    code += f"\nprint(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(module: str) -> None:
    assert _loaded_io_libraries(f"import sys, {module}") == ""


def _behind_face(module: str) -> str:
    """Code importing ``module`` with its package's ``__init__`` replaced by an empty one."""
    package = module.rpartition(".")[0]
    folder = package.split(".", 1)[1]  # "notifier.daemon" -> "daemon"
    return (
        "import importlib, pathlib, sys, types\n"
        "import notifier\n"
        f"face = types.ModuleType({package!r})\n"
        f"face.__path__ = [str(pathlib.Path(notifier.__file__).parent / {folder!r})]\n"
        f"sys.modules[{package!r}] = face\n"
        f"importlib.import_module({module!r})\n"
        f"assert sys.modules[{package!r}] is face\n"
    )


@pytest.mark.parametrize("module", BEHIND_A_FACE)
def test_pure_module_behind_a_face_imports_no_io_library(module: str) -> None:
    assert _loaded_io_libraries(_behind_face(module)) == ""


def test_the_face_check_sees_what_a_module_imports() -> None:
    """The stand-in face does not hide a module's own imports: the run loop (behind the
    same face) is caught."""
    assert "sqlalchemy" in _loaded_io_libraries(_behind_face("notifier.daemon.loop"))


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


def test_the_daemons_modules_use_its_public_surface() -> None:
    """The run loop's parts (polls, delivery, reload, status, ...) read and change the
    Daemon through its public attributes: no ``daemon._private`` (nor any other object's)
    outside the class that owns it."""
    import re
    from pathlib import Path

    import notifier

    folder = Path(notifier.__file__).parent / "daemon"
    reach = re.compile(r"\b(?!self\b|cls\b|os\b|sys\b)[a-z_][a-z0-9_]*\._[a-z][a-z0-9_]*")
    offenders = [
        f"{path.name}:{number}: {match.group(0)}"
        for path in sorted(folder.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for match in reach.finditer(line)
    ]
    assert offenders == []
