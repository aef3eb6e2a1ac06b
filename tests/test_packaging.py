"""What a non-editable install ships: every package, the migrations inside ``notifier``."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_package_list_names_every_package() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(settings["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "notifier").rglob("__init__.py")
    }
    found |= {
        "notifier." + ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "migrations").rglob("__init__.py")
    }
    assert listed == found
    assert settings["package-dir"] == {"notifier.migrations": "migrations"}


def test_migrations_are_importable_inside_the_package() -> None:
    from notifier import migrations
    from notifier.store import db

    assert Path(migrations.__file__).parent == db.migrations_path()
    assert (db.migrations_path() / "script.py.mako").is_file()
