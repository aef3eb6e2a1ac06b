"""Delivery commands: ``outbox list|retry|purge|reassign|dispatch`` and ``test-channel NAME``."""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from typing import Any

import click

from notifier.cli.base import Context, exit_code, main, pass_context, reported
from notifier.clock import SYSTEM_CLOCK, iso, ms_from_seconds

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _iso_ms(value: int | None) -> str:
    return iso(value) if value else "-"


def _parse_duration(value: str) -> float:
    match = _DURATION_RE.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 30d, 12h, 90m or 3600")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@main.group(invoke_without_command=True)
@click.pass_context
def outbox(ctx: click.Context) -> None:
    """Pending and dead deliveries (default: list them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(outbox_list)


@outbox.command("list")
@click.option(
    "--state",
    "states",
    type=click.Choice(["pending", "dead", "sent", "all"]),
    multiple=True,
    help="Rows in this state (repeatable; default: pending and dead).",
)
@click.option("--channel", metavar="NAME", help="Only this channel's deliveries.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N rows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@pass_context
def outbox_list(
    context: Context,
    states: tuple[str, ...] = (),
    channel: str | None = None,
    limit: int | None = None,
    as_json: bool = False,
) -> None:
    """List deliveries: id, state, attempts, channel, operation, next attempt, last error."""
    from notifier import outbox as outbox_module
    from notifier.cli.core import open_existing_store

    config = context.config()
    configured = {item.name for item in config.channels}
    wanted = list(outbox_module.STATES) if "all" in states else list(states or ("pending", "dead"))
    with reported(context):
        engine = open_existing_store(context)  # a listing never creates nor migrates
        entries = outbox_module.list_entries(engine, states=wanted, channel=channel, limit=limit)
        counts = outbox_module.counts_by_state(engine)
        orphans = outbox_module.unconfigured_counts(engine, configured)
    if as_json:
        for entry in entries:
            click.echo(
                json.dumps(
                    {
                        "id": entry.id,
                        "channel": entry.channel,
                        "channel_configured": entry.channel in configured,
                        "state": entry.state,
                        "attempts": entry.attempts,
                        "source": entry.source,
                        "operation_id": entry.operation_id,
                        "events": entry.events,
                        "created_at": _iso_ms(entry.created_at),
                        "next_attempt_at": _iso_ms(entry.next_attempt_at),
                        "last_error": entry.last_error,
                        "done_targets": list(entry.done_targets),
                    },
                    ensure_ascii=False,
                )
            )
        return
    summary = ", ".join(f"{counts[state]} {state}" for state in outbox_module.STATES)
    if not entries:
        click.echo(f"no {'/'.join(wanted)} deliveries ({summary})")
        return
    for entry in entries:
        when = (
            f"next {_iso_ms(entry.next_attempt_at)}"
            if entry.state == "pending"
            else f"since {_iso_ms(entry.updated_at)}"
        )
        if entry.state == "pending" and entry.channel not in configured:
            when = "waiting"
        click.echo(
            f"#{entry.id} {entry.state} attempts={entry.attempts} channel={entry.channel} "
            f"{entry.source}/{entry.operation_id or '-'} events={entry.events} {when}"
        )
        if entry.channel not in configured and entry.state != "sent":
            click.echo(
                f"    channel {entry.channel!r} is not configured: nothing is sent until it is "
                f"again, or `outbox reassign {entry.channel} NEW`; "
                "`outbox purge --unconfigured` deletes"
            )
        if entry.last_error:
            click.echo(f"    last error: {entry.last_error}")
    click.echo(f"({summary})")
    if orphans:
        names = ", ".join(f"{name} ({count})" for name, count in sorted(orphans.items()))
        click.echo(f"waiting for channels that are not configured: {names}")


@outbox.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--channel", metavar="NAME", help="Only this channel's deliveries.")
@click.option(
    "--pending", "include_pending", is_flag=True, help="Also make waiting retries due now."
)
@pass_context
def outbox_retry(
    context: Context, ids: tuple[int, ...], channel: str | None, include_pending: bool
) -> None:
    """Make dead deliveries (all, or IDS) due again now with a fresh attempt count.

    Targets that already received a delivery are not sent it again."""
    from notifier import outbox as outbox_module
    from notifier.cli.core import open_store

    context.config()
    with reported(context):
        engine = open_store(context, create=False)
        count = outbox_module.retry(
            engine,
            now_ms=SYSTEM_CLOCK.wall_ms(),
            ids=ids,
            channel=channel,
            include_pending=include_pending,
        )
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} due again")


@outbox.command("purge")
@click.argument("ids", nargs=-1, type=int)
@click.option("--sent/--no-sent", default=True, help="Delete delivered rows (default: yes).")
@click.option("--dead", is_flag=True, help="Also delete dead rows (they are never retried).")
@click.option(
    "--older-than",
    metavar="DURATION",
    default=None,
    help="Only rows last updated before this long ago (30d, 12h, 90m, seconds).",
)
@click.option("--channel", metavar="NAME", help="Only this channel's deliveries.")
@click.option(
    "--unconfigured",
    is_flag=True,
    help="Delete the pending and dead deliveries of channels that are not configured.",
)
@pass_context
def outbox_purge(
    context: Context,
    ids: tuple[int, ...],
    sent: bool,
    dead: bool,
    older_than: str | None,
    channel: str | None,
    unconfigured: bool,
) -> None:
    """Delete delivered (and, with --dead, dead) outbox rows; the events stay recorded.

    With --unconfigured: only the waiting (pending and dead) deliveries of channels that are
    no longer in the configuration."""
    from notifier import outbox as outbox_module
    from notifier.cli.core import open_store

    if unconfigured:
        states = ["pending", "dead"]
    else:
        states = [state for state, wanted in (("sent", sent), ("dead", dead)) if wanted]
    if not states:
        raise click.UsageError("nothing to purge: give --sent and/or --dead")
    cutoff = None
    if older_than is not None:
        cutoff = SYSTEM_CLOCK.wall_ms() - ms_from_seconds(_parse_duration(older_than))
    config = context.config()
    with reported(context):
        engine = open_store(context, create=False)
        count = outbox_module.purge(
            engine,
            states=states,
            older_than_ms=cutoff,
            ids=ids,
            channel=channel,
            unconfigured=[item.name for item in config.channels] if unconfigured else None,
        )
    what = "unconfigured channels'" if unconfigured else "/".join(states)
    click.echo(f"purged {count} {what} deliver{'y' if count == 1 else 'ies'}")


@outbox.command("reassign")
@click.argument("old")
@click.argument("new")
@pass_context
def outbox_reassign(context: Context, old: str, new: str) -> None:
    """Hand the pending and dead deliveries of channel OLD to channel NEW (after renaming a
    channel), due now with a fresh attempt count.

    Each keeps of the events it carried for OLD those NEW's filters admit. A delivery of an
    event group NEW already has stays with OLD. URLs both channels have keep what they
    already received: it is not sent again."""
    from notifier import outbox as outbox_module
    from notifier.cli.core import open_store
    from notifier.routing import event_matches

    config = context.config()
    target = next((item for item in config.channels if item.name == new), None)
    if target is None:
        known = ", ".join(item.name for item in config.channels) or "none configured"
        raise click.BadParameter(f"no channel named {new!r} (known: {known})", param_hint="NEW")
    if old == new:
        raise click.BadParameter("OLD and NEW are the same channel", param_hint="NEW")
    with reported(context):
        engine = open_store(context, create=False)
        done = outbox_module.reassign(
            engine,
            old=old,
            new=new,
            now_ms=SYSTEM_CLOCK.wall_ms(),
            admits=lambda event: event_matches(target, event),
        )
    count = done.moved
    click.echo(f"{count} deliver{'y' if count == 1 else 'ies'} of {old} handed to {new}, due now")
    if done.empty:
        click.echo(
            f"{done.empty} of them carr{'ies' if done.empty == 1 else 'y'} no event {new}'s "
            "filters admit: nothing is sent for them (they become sent)"
        )
    if done.kept:
        click.echo(
            f"{done.kept} deliver{'y' if done.kept == 1 else 'ies'} left with {old}: {new} "
            "already has their event groups (`outbox purge --unconfigured` deletes them)"
        )


@outbox.command("dispatch")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N rows.")
@pass_context
def outbox_dispatch(context: Context, limit: int | None) -> None:
    """Send the deliveries that are due now (what `run` does between polls)."""
    from notifier.cli.core import hold_instance_lock, open_store
    from notifier.outbox import Dispatcher

    config = context.config()
    with reported(context):
        engine = open_store(context, create=False)
        hold_instance_lock(context, engine, hint="the running service delivers due rows itself")
        stats = Dispatcher(config, engine).dispatch_due(limit=limit)
    click.echo(
        f"{stats.sent} sent, {stats.failed} to retry, {stats.dead} dead, "
        f"{stats.deferred} deferred ({stats.messages} request(s))"
    )
    if stats.failed or stats.dead:
        sys.exit(1)


@main.command("test-channel")
@click.argument("name")
@pass_context
def test_channel(context: Context, name: str) -> None:
    """Send a test message through every URL of channel NAME; exit 1 if one fails."""
    from notifier.channels.render import Templates, render_message, sample_events
    from notifier.channels.targets import UnloadableURL, build_targets
    from notifier.model import ns_to_rfc3339

    config = context.config()
    try:
        channel = config.channel(name)
    except KeyError:
        known = ", ".join(channel.name for channel in config.channels) or "none configured"
        raise click.BadParameter(
            f"no channel named {name!r} (known: {known})", param_hint="NAME"
        ) from None
    try:
        targets = build_targets(channel, config.delivery)
    except UnloadableURL as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_code(exc))
    events, record = sample_events()
    failures = 0
    for target in targets:
        if target.kind == "webhook":
            now_ns = time.time_ns()
            document: dict[str, Any] = {
                "specversion": "1.0",
                "id": f"evt_test_{uuid.uuid4().hex}",
                "type": "bcs_notifier.test",
                "source": f"bcs-notifier/{channel.name}",
                "subject": "test-channel",
                "time": ns_to_rfc3339(now_ns),
                "datacontenttype": "application/json",
                "data": {
                    "operation": {},
                    "step": None,
                    "substep": None,
                    "from": None,
                    "to": None,
                    "detail": f"test message for channel {channel.name}",
                    "message": [],
                    "started_at": None,
                    "ended_at": None,
                },
            }
            result = target.send(
                title="bcs_notifier.test",
                body=json.dumps(document, separators=(",", ":")),
                notify_type="info",
                body_format="text",
            )
        else:
            templates = (
                Templates(title=channel.title, body=channel.body)
                if channel.title or channel.body
                else None
            )
            options = target.render_options(channel.timezone)
            message = render_message(events, record, options, templates)
            alternatives = {  # e.g. the text part of a mail
                fmt: render_message(
                    events,
                    record,
                    options.alternative(fmt),
                    templates,
                ).body
                for fmt in target.alternatives
                if fmt != target.format
            }
            result = target.send(
                title=f"[test] {message.title}",
                body=message.body,
                notify_type=message.notify_type,
                body_format=message.format,
                alternatives=alternatives,
            )
        target.close()
        if result.ok:
            click.echo(f"ok      {target.safe_url}")
        else:
            failures += 1
            click.echo(f"FAILED  {target.safe_url}: {result.error}")
    if failures:
        sys.exit(1)
