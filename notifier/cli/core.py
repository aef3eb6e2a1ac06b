"""Core commands: check-config, db, poll, events."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from notifier.cli.base import (
    EX_UNAVAILABLE,
    Context,
    exit_code,
    main,
    pass_context,
    reported,
)
from notifier.clock import SYSTEM_CLOCK
from notifier.config import Config, SourceConfig
from notifier.model import Event, describe, event_body

if TYPE_CHECKING:
    from notifier.store.db import Engine


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

    with reported():
        engine = store_db.make_engine(context.config().service.database)
        revision = store_db.upgrade(engine)
    click.echo(f"database at revision {revision}")


@db.command("current")
@pass_context
def db_current(context: Context) -> None:
    """Print the database's schema revision and this version's head."""
    from notifier.store import db as store_db

    with reported(context):
        engine = open_existing_store(context, current=False)
        current = store_db.current_revision(engine)
        head = store_db.head_revision()
    state = "up to date" if current == head else "needs `bcs-notifier db upgrade`"
    click.echo(f"current: {current or 'none'}\nhead: {head}\n{state}")


def open_store(context: Context, *, dry_run: bool = False, create: bool = True) -> Engine:
    """The migrated store; for a dry run on a database that does not exist yet, a
    temporary one (so the dry run shows what a first poll would do and writes nothing).
    ``create`` False: a database that does not exist yet is a one-line error (a command
    that changes deliveries has nothing to change there, and must not leave a file)."""
    from notifier.store import db as store_db

    config = context.config(check_channels=False)  # the database URL is all it needs
    if not create:
        store_db.require_database(config.service.database)
    if dry_run:
        if not store_db.database_exists(config.service.database):
            scratch = Path(tempfile.mkdtemp(prefix="bcs-notifier-dry-run-"))
            context.on_close(lambda: shutil.rmtree(scratch, ignore_errors=True))
            engine = store_db.make_engine(f"sqlite:///{scratch / 'state.db'}")
            store_db.upgrade(engine, backup=False)
        else:
            engine = store_db.make_engine(config.service.database)
            store_db.require_current(engine)
    else:
        engine = store_db.make_engine(config.service.database)
        store_db.upgrade(engine)
    context.on_close(engine.dispose)
    return engine


def open_existing_store(context: Context, *, current: bool = True) -> Engine:
    """The store for a command that only reads: never created (nor migrated) here; a
    database that does not exist yet is a one-line error. ``current``: its schema must be
    this version's."""
    from notifier.store import db as store_db

    url = context.config().service.database
    store_db.require_database(url)
    engine = store_db.make_engine(url)
    context.on_close(engine.dispose)
    if current:
        store_db.require_current(engine)
    return engine


def hold_instance_lock(context: Context, engine: Engine, *, hint: str) -> None:
    """Take the lock ``run`` holds, for the length of the command: one writer and one
    dispatcher per database. A running service refuses the command with exit 69."""
    from notifier.errors import AlreadyRunning
    from notifier.store.lock import InstanceLock

    lock = InstanceLock(engine)
    try:
        lock.acquire()
    except AlreadyRunning as exc:
        context.close()
        click.echo(f"error: {exc}; {hint}", err=True)
        sys.exit(exit_code(exc))
    context.on_close(lock.release)
    from notifier.store.claims import Claims
    from notifier.store.lease import MULTI_INSTANCE_BACKENDS

    if engine.url.get_backend_name() not in MULTI_INSTANCE_BACKENDS:
        Claims(engine, 1.0).clear_all()  # the only dispatcher now: a killed one's claims are void


@main.command()
@click.option("--dry-run", is_flag=True, help="Fetch and diff, but store and send nothing.")
@click.option("--json", "as_json", is_flag=True, help="One CloudEvents JSON document per line.")
@click.option(
    "--full",
    is_flag=True,
    help="Read a complete listing (incremental mode otherwise asks only for what is active).",
)
@click.option(
    "--source",
    "source_names",
    multiple=True,
    metavar="NAME",
    help="Poll only this source (repeatable; default: all).",
)
@pass_context
def poll(
    context: Context, dry_run: bool, as_json: bool, full: bool, source_names: tuple[str, ...]
) -> None:
    """Run one cycle: poll every source, record and deliver the events found, print them.

    Due deliveries (these events', and earlier ones waiting for a retry) are sent once;
    what fails stays in the outbox. Exits 69 when a source could not be polled (its
    stored state is left as it was).
    """
    from notifier.pipeline import Poller

    # channel URLs are checked (apprise imported) only when there is something to deliver
    config = context.config(check_channels=False)
    sources = _select_sources(config.sources, source_names)
    failed = False
    with reported(context):
        engine = open_store(context, dry_run=dry_run)
        if not dry_run:
            hold_instance_lock(context, engine, hint="`poll --dry-run` works beside it")
        with Poller(config, engine) as poller:
            for source in sources:
                result = poller.poll_source(source, dry_run=dry_run, full=full)
                for event in result.events:
                    click.echo(_event_text(event, as_json=as_json))
                if result.skipped:
                    names = ", ".join(name or "(no id)" for name in result.skipped)
                    click.echo(
                        f"warning: {source.name}: skipped {len(result.skipped)} malformed "
                        f"record(s): {names} (details with --log-level warning)",
                        err=True,
                    )
                if result.error is not None:
                    failed = True
                    click.echo(f"error: {source.name}: {result.error.one_line()}", err=True)
                elif result.baseline and not result.events:
                    verb = "would be stored" if dry_run else "stored"
                    click.echo(
                        f"{source.name}: first poll, {result.records} operation(s) {verb} "
                        "as the baseline (changes from now on are reported)",
                        err=True,
                    )
        if not dry_run and config.channels and _deliveries_due(config, engine):
            _deliver(context.config(), engine)
    if failed:
        sys.exit(EX_UNAVAILABLE)


def _deliveries_due(config: Config, engine: Engine) -> bool:
    """Any outbox row of a configured channel due now (one cheap query, no apprise)."""
    from notifier.store.status import outbox_summary

    now_ms = SYSTEM_CLOCK.wall_ms()
    names = [channel.name for channel in config.channels]
    return outbox_summary(engine, now_ms, names).due > 0


def _deliver(config: Config, engine: Engine) -> None:
    """Send the due outbox rows once; failures stay queued for the next poll or ``run``."""
    from notifier.outbox import Dispatcher

    stats = Dispatcher(config, engine).dispatch_due()
    if stats.handled:
        parts = [f"{stats.sent} sent"]
        if stats.failed:
            parts.append(f"{stats.failed} failed (retried later)")
        if stats.deferred:
            parts.append(f"{stats.deferred} deferred (pacing)")
        if stats.dead:
            parts.append(f"{stats.dead} dead")
        click.echo(f"deliveries: {', '.join(parts)}", err=True)


@main.command()
@click.option("--operation", "operation_id", metavar="ID", help="Only this operation's events.")
@click.option("--source", "source_name", metavar="NAME", help="Only this source's events.")
@click.option("--json", "as_json", is_flag=True, help="One CloudEvents JSON document per line.")
@pass_context
def events(
    context: Context, operation_id: str | None, source_name: str | None, as_json: bool
) -> None:
    """The recorded events, oldest first."""
    from notifier.store.repository import Repository

    context.config()
    with reported(context):
        engine = open_existing_store(context)
        for stored in Repository(engine).iter_events(operation_id=operation_id, source=source_name):
            click.echo(_event_text(stored.event, as_json=as_json))


def _select_sources(sources: Sequence[SourceConfig], names: Sequence[str]) -> list[SourceConfig]:
    if not names:
        return list(sources)
    known = {source.name: source for source in sources}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise click.BadParameter(
            f"no source named {', '.join(unknown)} (known: {', '.join(known)})",
            param_hint="--source",
        )
    return [known[name] for name in names]


def _event_text(event: Event, *, as_json: bool) -> str:
    if as_json:
        return event_body(event)
    return describe(event)
