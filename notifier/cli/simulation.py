"""Simulation commands: ``simulate`` serves the embedded BCS + IAM simulator."""

from __future__ import annotations

import signal
import sys
import threading
from datetime import datetime
from types import FrameType
from typing import Final

import click

from notifier.cli.base import main
from notifier.text import one_line

DEFAULT_PORT: Final = 9390
AUTH_CHOICES: Final = ("token", "password", "aksk")


def parse_start(value: str | None) -> datetime | float | None:
    """``--start``: Unix seconds, or ISO 8601 with a UTC offset (``Z`` allowed)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            "expected Unix seconds or ISO 8601, e.g. 2024-01-15T08:30:00Z", param_hint="--start"
        ) from None
    if moment.tzinfo is None:
        raise click.BadParameter(
            "give a UTC offset, e.g. 2024-01-15T08:30:00Z", param_hint="--start"
        )
    return moment


@main.command("simulate")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port on 127.0.0.1 (0: any free port).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Scenario seed.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Simulated seconds per real second; 0 stops the clock "
    "(move it with POST /_sim/advance?seconds=N).",
)
@click.option(
    "--auth",
    "auth_type",
    type=click.Choice(AUTH_CHOICES),
    default="password",
    show_default=True,
    help="Credentials shown in the config snippet (all three kinds are always accepted).",
)
@click.option(
    "--start",
    default=None,
    help="Simulated time the story is anchored to: Unix seconds or ISO 8601 (default: now).",
)
@click.option(
    "--token-lifetime",
    type=click.FloatRange(min=1),
    default=86_400.0,
    show_default=True,
    help="Seconds an IAM token stays valid.",
)
@click.option(
    "--story-only",
    is_flag=True,
    help="Stop after the scripted story (no generated operations every 10 minutes).",
)
@click.option(
    "--story",
    "story_name",
    type=click.Choice(["default", "stall", "demo"]),
    default="default",
    show_default=True,
    help="The scripted story: stall = twelve short deletions, then one whose sub-step hangs "
    "for 20 s (try stall_floor = 5); demo = the default with the demo's stall.",
)
def simulate(
    port: int,
    seed: int,
    speed: float,
    auth_type: str,
    start: str | None,
    token_lifetime: float,
    story_only: bool,
    story_name: str,
) -> None:
    """Serve the BCS/IAM simulator on 127.0.0.1 until Ctrl-C or SIGTERM.

    Prints a [[sources]] block for notifier.toml that points at it. The story: an upgrade
    already running, then a new blockchain, a failing "add organisation", a stopped "scale
    organisation" and a "join channel", all terminal about 8 simulated minutes after start.
    """
    from notifier.simulator import Simulator
    from notifier.simulator.stories import STORIES

    try:
        simulator = Simulator(
            seed=seed,
            story=STORIES[story_name],
            speed=speed or None,
            start=parse_start(start),
            episodes=not story_only,
            token_lifetime=token_lifetime,
            port=port,
        )
        simulator.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        endpoint = simulator.endpoint
        pace = f"speed {speed:g}x" if speed else "manual clock"
        click.echo(f"# bcs-notifier simulator: BCS + IAM on {endpoint} (seed {seed}, {pace})")
        click.echo(
            f"# state: GET {endpoint}/_sim/state  faults: POST {endpoint}/_sim/faults?kind=500"
        )
        click.echo("# Add this source to notifier.toml:")
        click.echo("")
        click.echo(simulator.config_snippet(auth_type), nl=False)
        click.echo("")
        click.echo("# Ctrl-C stops the simulator.")
        sys.stdout.flush()
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        simulator.stop()
    click.echo("simulator stopped", err=True)


@main.command("demo")
@click.option(
    "--speed",
    type=click.FloatRange(min=1),
    default=15.0,
    show_default=True,
    help="Simulated seconds per real second (15: the story takes about 35 s).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Scenario seed.")
@click.option(
    "--auth",
    "auth_type",
    type=click.Choice(AUTH_CHOICES),
    default="aksk",
    show_default=True,
    help="How the service authenticates to the simulator.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Real seconds between polls.",
)
def demo(speed: float, seed: int, auth_type: str, interval: float) -> None:
    """The embedded simulator + the real service + console output, self-contained.

    Starts the BCS simulator on 127.0.0.1, a temporary SQLite store and the polling and
    delivery pipeline with a console:// channel; plays a scripted story (a blockchain
    created step by step, an operation failing, one stopped) and exits by itself, leaving
    nothing behind. Needs no credentials and no network beyond loopback.
    """
    from notifier.demo import Demo, DemoOptions, summary_lines
    from notifier.errors import NotifierError

    runner = Demo(
        DemoOptions(speed=speed, seed=seed, auth=auth_type, interval=interval),
        say=click.echo,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.request_stop()

    # SIGHUP too: a closed terminal must not leave the temporary directory behind
    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals}
    try:
        report = runner.run()
    except NotifierError as exc:
        raise click.ClickException(one_line(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start the demo: {exc}") from exc
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("\n".join(summary_lines(report)))
    if report.interrupted:
        sys.exit(130)
    if not report.completed or report.dead:
        sys.exit(1)  # the story did not end, or some of it never reached the console
