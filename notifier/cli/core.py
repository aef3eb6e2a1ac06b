"""Core commands: check-config, db, poll, events."""

from __future__ import annotations

import click

from notifier.cli.base import Context, fail, main, pass_context
from notifier.errors import NotifierError


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
