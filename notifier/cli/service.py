"""Service commands: ``run``, ``status``, ``print-unit``.

Heavy modules (SQLAlchemy, the pipeline, apprise) are imported inside the commands so that
``bcs-notifier --help`` stays fast.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from notifier.cli.base import (
    Context,
    channel_validators,
    exit_code,
    main,
    pass_context,
    reported,
)
from notifier.clock import SYSTEM_CLOCK, iso
from notifier.config import Config
from notifier.errors import AlreadyRunning, ConfigError, NotifierError, StoreError
from notifier.text import one_line

logger = logging.getLogger("notifier.cli")

LOG_FORMAT_CHOICES = ("journal", "text", "json")


def _explicit_log_level() -> str | None:
    root = click.get_current_context().find_root()
    value = root.params.get("log_level")
    return str(value) if value else None


@main.command("run")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMAT_CHOICES),
    default=None,
    envvar="BCS_NOTIFIER_LOG_FORMAT",
    help="journal: <N> level prefixes for journald (timestamps only outside the journal); "
    "text: for a terminal; json: one object a line for log shippers. "
    "[default: text when stderr is a terminal and not the journal, else journal] "
    "[env: BCS_NOTIFIER_LOG_FORMAT]",
)
@click.option(
    "--stop-grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds given to due deliveries after SIGTERM before exiting.",
)
@pass_context
def run(context: Context, log_format: str | None, stop_grace: float) -> None:
    """The service: poll, diff, store, deliver, until SIGTERM/SIGINT (SIGHUP reloads)."""
    from notifier import logsetup
    from notifier.config import load_config

    log_format = log_format or logsetup.default_format()
    explicit_level = _explicit_log_level()
    # the chosen format from the first line on: what loading the config logs (apprise
    # loading its plugins) must not come out in another format; the level stays that of
    # the one-shot commands until the config (and with it every secret to mask) is known
    logsetup.configure(log_format, explicit_level or "error", redactor=context.redactor)
    from notifier.daemon import ServeOptions, serve  # after: importing it loads Alembic, which logs

    config = context.config()
    redactor = logsetup.Redactor(logsetup.config_secrets(config))
    logsetup.configure(log_format, explicit_level or config.service.log_level, redactor=redactor)

    def load() -> Config:
        return load_config(context.config_path, channel_validators=channel_validators())

    def on_reload(_old: Config, new: Config) -> None:
        redactor.update(logsetup.config_secrets(new))
        if explicit_level is None:
            logsetup.set_level(new.service.log_level)

    try:
        code = serve(
            config,
            config_loader=load,
            options=ServeOptions(stop_grace=stop_grace),
            on_reload=on_reload,
        )
    except NotifierError as exc:
        # the config's problems and the lock's holder as they are, anything else on one line
        whole = isinstance(exc, AlreadyRunning | ConfigError)
        logger.error("not starting: %s", exc if whole else one_line(exc))
        sys.exit(exit_code(exc))
    sys.exit(code)


# -- status ---------------------------------------------------------------------------------


def _age(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else max(0.0, (now_ms - then_ms) / 1000)


def _when(then_ms: int | None) -> str | None:
    return None if then_ms is None else iso(then_ms)


def _human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def _lost_database(url: str) -> str | None:
    """What to say when the database file is missing but its baseline marker is not."""
    from notifier.store.guard import BaselineMarker, sqlite_file

    marker = BaselineMarker.for_engine(url)
    if marker is None or not marker.sources():
        return None
    names = ", ".join(sorted(marker.sources()))
    return (
        f"the database {sqlite_file(url)} is missing, but {marker.path} says it held the "
        f"baseline of {names}: it was deleted or moved. Restore it, or start the service: "
        "operations updated since its last stored change are then reported"
    )


def collect_status(config: Config, now_ms: int) -> dict[str, Any]:
    """Everything ``status`` shows, as JSON-ready data (secrets redacted)."""
    from notifier.logsetup import Redactor, config_secrets
    from notifier.store import db
    from notifier.store.lock import InstanceLock
    from notifier.store.status import outbox_summary, source_statuses

    redactor = Redactor(config_secrets(config))
    if not db.database_exists(config.service.database):
        lost = _lost_database(config.service.database)
        if lost:
            raise StoreError(lost)
    db.require_database(config.service.database)
    engine = db.make_engine(config.service.database)
    try:
        db.require_current(engine)
        states = source_statuses(engine)
        summary = outbox_summary(engine, now_ms, [channel.name for channel in config.channels])
        lock = InstanceLock(engine)
        holder = lock.holder()
        can_tell = lock.path is not None
        cluster = _cluster(engine)
    finally:
        engine.dispose()
    sources = []
    names = [source.name for source in config.sources]
    names += sorted(name for name in states if name not in names)
    for name in names:
        state = states.get(name)
        error = state.last_error if state else None
        resting = state is not None and (state.rest_until or 0) > now_ms
        sources.append(
            {
                "source": name,
                "configured": name in {source.name for source in config.sources},
                "last_poll": _when(state.last_poll_at) if state else None,
                "last_success": _when(state.last_success_at) if state else None,
                "last_success_age": _age(now_ms, state.last_success_at) if state else None,
                # incremental polling: the last complete listing (reconciles and marks gone)
                "last_full_listing": _when(state.last_full_at) if state else None,
                "last_full_listing_age": _age(now_ms, state.last_full_at) if state else None,
                "consecutive_failures": state.consecutive_failures if state else 0,
                "failing_since": _when(state.failing_since) if state else None,
                "unreachable_reported": state.unreachable_reported if state else False,
                "last_error": redactor.redact(error) if error else None,
                # refused credentials: no request before this time (`source clear-rest`)
                "resting_until": _when(state.rest_until) if state and resting else None,
                "rest_reason": redactor.redact(error) if resting and error else None,
            }
        )
    running = (holder is not None) if can_tell else None
    if cluster is not None:  # PostgreSQL: the service runs while an instance heartbeats
        running = any(item["alive"] for item in cluster["instances"])
    return {
        "running": running,
        "pid": holder,
        **({"instances": cluster["instances"]} if cluster is not None else {}),
        "sources": sources,
        "outbox": {
            "pending": summary.pending,
            "due": summary.due,
            "oldest_pending": _when(summary.oldest_pending_at),
            "oldest_pending_age": summary.oldest_pending_age(now_ms),
            "dead": summary.dead,
            "sent": summary.sent,
            "unconfigured_channels": dict(sorted(summary.unconfigured.items())),
        },
    }


def _cluster(engine: Any) -> dict[str, Any] | None:
    """Every instance on a shared (PostgreSQL) database and what it leads, else None."""
    from notifier.store.lease import MULTI_INSTANCE_BACKENDS, leadership

    if engine.url.get_backend_name() not in MULTI_INSTANCE_BACKENDS:
        return None
    view = leadership(engine)
    return None if view is None else view.to_dict()


def _print_instances(instances: list[dict[str, Any]]) -> None:
    click.echo("instances:")
    if not instances:
        click.echo("  none")
    for item in instances:
        state = "alive" if item["alive"] else "gone (no heartbeat)"
        leads = ", ".join(
            f"{lease['source']} (epoch {lease['epoch']}, lease expires in "
            f"{lease['expires_in_seconds']:g}s)"
            for lease in item["leads"]
        )
        click.echo(
            f"  {item['id']}: {state}, pid {item['pid']} on {item['hostname']}; "
            f"leads {leads or 'nothing (standby)'}"
        )


@main.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
@pass_context
def status(context: Context, as_json: bool) -> None:
    """Last poll per source, failures, outbox depth, oldest undelivered, dead deliveries."""
    config = context.config()
    with reported():
        report = collect_status(config, SYSTEM_CLOCK.wall_ms())
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    if report["running"] is None:
        running = "unknown (only SQLite databases have a lock file to look at)"
    elif report["running"] and "instances" in report:
        alive = sum(1 for item in report["instances"] if item["alive"])
        running = f"running ({alive} instance{'s' if alive != 1 else ''})"
    elif report["running"]:
        running = f"running (pid {report['pid']})"
    else:
        running = "not running"
    click.echo(f"service: {running}")
    if "instances" in report:
        _print_instances(report["instances"])
    click.echo("sources:")
    incremental = config.service.poll_mode == "incremental"
    for source in report["sources"]:
        failures = source["consecutive_failures"]
        health = "ok" if not failures else f"{failures} failed poll(s) in a row"
        if source["unreachable_reported"]:
            health += ", reported unreachable"
        if source["last_poll"] is None:
            health = "never polled"
        if not source["configured"]:
            health += " (no longer configured)"
        last = source["last_success"] or "never"
        click.echo(
            f"  {source['source']}: {health}; last successful poll {last} "
            f"({_human_age(source['last_success_age'])})"
        )
        if incremental and source["last_full_listing"]:
            click.echo(
                f"    last complete listing {source['last_full_listing']} "
                f"({_human_age(source['last_full_listing_age'])})"
            )
        if source["resting_until"]:
            click.echo(
                f"    credentials resting until {source['resting_until']} "
                f"(refused: {source['rest_reason'] or 'no detail'}); once they are fixed, "
                f"`bcs-notifier source clear-rest {source['source']}` ends the rest"
            )
        elif source["last_error"] and failures:
            click.echo(f"    last error: {source['last_error']}")
    outbox = report["outbox"]
    oldest = (
        f", oldest undelivered {outbox['oldest_pending']} "
        f"({_human_age(outbox['oldest_pending_age'])})"
        if outbox["pending"]
        else ""
    )
    click.echo(
        f"outbox: {outbox['pending']} pending ({outbox['due']} due){oldest}; "
        f"{outbox['dead']} dead; {outbox['sent']} sent"
    )
    waiting = outbox["unconfigured_channels"]
    if waiting:
        names = ", ".join(f"{name} ({count})" for name, count in waiting.items())
        click.echo(
            f"  waiting for channels that are not configured: {names} "
            "(see `outbox reassign` / `outbox purge --unconfigured`)"
        )


# -- print-unit -----------------------------------------------------------------------------


def _raw_settings(path: Path) -> tuple[str | None, int | None]:
    """service.database and service.http.port, read without validating (secrets may be
    unset in the shell that prints the unit)."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None, None
    section = data.get("service")
    service: dict[str, Any] = section if isinstance(section, dict) else {}
    database = service.get("database")
    http = service.get("http")
    port: int | None = None
    if isinstance(http, dict):
        raw_port = http.get("port", 9310)
        port = raw_port if isinstance(raw_port, int) else None
    return (database if isinstance(database, str) else None), port


@main.command("print-unit")
@click.option(
    "--user",
    default=None,
    help="Run as this existing system user instead of a systemd DynamicUser.",
)
@click.option("--group", default=None, help="Its group (default: same as --user).")
@click.option(
    "--watchdog-sec",
    type=click.IntRange(min=10),
    default=60,
    show_default=True,
    help="WatchdogSec=: systemd restarts the service when a cycle hangs this long.",
)
@click.option(
    "--stop-grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Grace for due deliveries on stop (TimeoutStopSec= allows for it).",
)
@pass_context
def print_unit(
    context: Context, user: str | None, group: str | None, watchdog_sec: int, stop_grace: float
) -> None:
    """Print a hardened systemd unit for this install (every line commented)."""
    if group is not None and user is None:
        raise click.UsageError("--group needs --user (a DynamicUser has its own group)")
    from notifier.config import DEFAULT_DATABASE
    from notifier.systemd import DEFAULT_CONFIG_DIR, unit_options_for, unit_text

    config_path = context.config_path
    if config_path.is_file():
        config_path = config_path.resolve()
    else:
        config_path = DEFAULT_CONFIG_DIR / "notifier.toml"
    database, port = _raw_settings(config_path)
    options = unit_options_for(
        config_path,
        database_url=database or DEFAULT_DATABASE,
        http_port=port,
        user=user,
        group=group,
        watchdog_sec=watchdog_sec,
        stop_grace=stop_grace,
    )
    for warning in options.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(unit_text(options), nl=False)
