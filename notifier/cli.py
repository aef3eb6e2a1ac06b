"""The ``bcs-notifier`` command line: a thin composition root.

It parses options, wires the library together and turns ``NotifierError`` into a one-line
message and an exit code. click is imported nowhere else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from notifier import __version__
from notifier.config import Config, find_config_path, load_config
from notifier.errors import ConfigError, NotifierError

EX_CONFIG = 78
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69

logger = logging.getLogger("notifier")


class Context:
    """What every command gets: the config path (loaded lazily) and output settings."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                fail_config(exc)
        return self._config


def fail_config(exc: ConfigError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EX_CONFIG)


def fail(exc: NotifierError, code: int = 1) -> NoReturn:
    line = exc.one_line() if hasattr(exc, "one_line") else " ".join(str(exc).split())
    click.echo(f"error: {line}", err=True)
    sys.exit(code)


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config file (default: $BCS_NOTIFIER_CONFIG, ./notifier.toml, "
    "/etc/bcs-notifier/notifier.toml).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Log level (default: the config's service.log_level, else warning).",
)
@click.version_option(__version__, prog_name="bcs-notifier")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """Watch Huawei Cloud BCS operations and notify people and systems when they move."""
    logging.basicConfig(
        level=(log_level or "warning").upper(),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ctx.obj = Context(find_config_path(config_path))


def command(name: str | None = None, **kwargs: Any) -> Callable[..., Any]:
    return main.command(name, **kwargs)


@main.command("check-config")
@pass_context
def check_config(context: Context) -> None:
    """Validate the configuration: exit 0, or 78 with every error."""
    config = context.config()
    click.echo(
        f"{context.config_path}: OK ({len(config.sources)} source(s), "
        f"{len(config.channels)} channel(s))"
    )


@main.group()
def db() -> None:
    """Database schema migrations (Alembic)."""


@db.command("upgrade")
@pass_context
def db_upgrade(context: Context) -> None:
    """Migrate the database to this version's schema."""
    from notifier.store import db as store_db

    try:
        engine = store_db.make_engine(context.config().service.database)
        revision = store_db.upgrade(engine)
    except NotifierError as exc:
        fail(exc)
    click.echo(f"database at revision {revision}")


@db.command("current")
@pass_context
def db_current(context: Context) -> None:
    """Print the database's schema revision and this version's head."""
    from notifier.store import db as store_db

    try:
        engine = store_db.make_engine(context.config().service.database)
        current = store_db.current_revision(engine)
        head = store_db.head_revision()
    except NotifierError as exc:
        fail(exc)
    state = "up to date" if current == head else "needs `bcs-notifier db upgrade`"
    click.echo(f"current: {current or 'none'}\nhead: {head}\n{state}")
