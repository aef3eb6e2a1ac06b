"""Docs as contracts: every CLI command is in the README, the changelog keeps its form."""

from __future__ import annotations

import re
from pathlib import Path

import click

from notifier.cli import main

ROOT = Path(__file__).parent.parent


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    found: list[str] = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.extend(_commands(command, f"{full} "))
        else:
            found.append(full)
    return found


def test_every_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in _commands(main) if f"bcs-notifier {name}" not in readme]
    assert missing == []


def test_readme_quick_start_has_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick_start, re.S)
    assert block is not None
    lines = block.group(1).strip().splitlines()
    assert lines == [
        "pip install . && bcs-notifier demo",
        "pip install -e '.[test]' && python -m pytest",
    ]
    assert lines[1] in (ROOT / ".ci" / "run").read_text()


def test_changelog_keeps_a_changelog_form() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert changelog.startswith("# Changelog")
    assert "## [Unreleased]" in changelog
    assert "keepachangelog.com" in changelog
