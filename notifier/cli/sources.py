"""Source commands: ``source clear-rest`` ends a credential rest once the credentials work."""

from __future__ import annotations

import click

from notifier.cli.base import Context, main, pass_context, reported
from notifier.clock import SYSTEM_CLOCK, iso


@main.group("source")
def source_group() -> None:
    """A source's stored state."""


@source_group.command("clear-rest")
@click.argument("name")
@pass_context
def clear_rest(context: Context, name: str) -> None:
    """End NAME's credential rest after its credentials were fixed.

    A refused AK/SK signature or IAM login makes a source rest (5 minutes: five refused
    signatures in a row lock the key), also across restarts. This ends the rest: the next
    poll tries again, and a running service polls the source within seconds.
    """
    from notifier.cli.core import open_existing_store
    from notifier.store.lock import InstanceLock
    from notifier.store.repository import Repository

    config = context.config()
    with reported(context):
        engine = open_existing_store(context)
        repository = Repository(engine)
        known = {state.source for state in repository.source_states()}
        configured = [source.name for source in config.sources]
        if name not in known and name not in configured:
            raise click.BadParameter(
                f"no source named {name} (known: {', '.join(configured) or 'none'})",
                param_hint="NAME",
            )
        before = repository.clear_rest(name)
        lock = InstanceLock(engine)
        holder, can_tell = lock.holder(), lock.path is not None
    now_ms = SYSTEM_CLOCK.wall_ms()
    if before.rest_until is None or before.rest_until <= now_ms:
        click.echo(f"{name}: not resting; nothing to clear")
        return
    until = iso(before.rest_until)
    click.echo(
        f"{name}: credential rest until {until} cleared "
        f"(refused: {context.redactor.redact(before.last_error or 'no detail')})"
    )
    if holder is not None:
        click.echo(f"the running service (pid {holder}) polls it within seconds")
    elif not can_tell:
        click.echo("a running service polls it within seconds; else the next `run` or `poll`")
    else:
        click.echo("the next `bcs-notifier run` or `poll` tries it again")
