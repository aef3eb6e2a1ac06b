"""The ``main`` click group, the shared context and error-to-exit-code helpers."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click

from notifier import __version__
from notifier.config import ChannelValidator, Config, find_config_path, load_config
from notifier.errors import AlreadyRunning, ConfigError, NotifierError
from notifier.logsetup import Redactor, config_secrets, configure
from notifier.text import one_line

EX_CONFIG = 78
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69

logger = logging.getLogger("notifier")

#: The one error -> exit status table of every command (the error's most specific class
#: listed wins). A source that cannot be polled is not an exception: ``poll`` exits
#: EX_UNAVAILABLE for it itself.
EXIT_CODES: Mapping[type[NotifierError], int] = {
    ConfigError: EX_CONFIG,
    AlreadyRunning: EX_UNAVAILABLE,
    NotifierError: 1,
}


def exit_code(exc: NotifierError) -> int:
    """The exit status a command ends with on ``exc`` (:data:`EXIT_CODES`)."""
    for kind in type(exc).__mro__:
        code = EXIT_CODES.get(kind)
        if code is not None:
            return code
    return 1


class Context:
    """What every command gets: the config path (loaded lazily) and output settings."""

    def __init__(self, config_path: Path, redactor: Redactor | None = None) -> None:
        self.config_path = config_path
        self.redactor = redactor or Redactor()
        self._config: Config | None = None
        self._channels_checked = False
        self._cleanups: list[Callable[[], object]] = []

    def on_close(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` when the command ends (engines, temporary files)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        while self._cleanups:
            self._cleanups.pop()()

    def config(self, *, check_channels: bool = True) -> Config:
        """The validated config; ``check_channels=False`` leaves the channels' URLs and
        templates unchecked (they need apprise): for ``poll``, which checks them once it
        has something to deliver."""
        if self._config is None or (check_channels and not self._channels_checked):
            validators = channel_validators() if check_channels else ()
            try:
                self._config = load_config(self.config_path, channel_validators=validators)
            except ConfigError as exc:
                fail_config(exc)
            self._channels_checked = check_channels
            self.redactor.update(config_secrets(self._config))
        return self._config


def channel_validators() -> tuple[ChannelValidator, ...]:
    """The checks of channel URLs and templates ``load_config`` is given (they import
    apprise, so only the commands that check channels pay for it)."""
    from notifier.channels.targets import validate_channel

    return (validate_channel,)


def fail_config(exc: ConfigError) -> NoReturn:
    click.echo(f"error: {exc}", err=True)  # every problem, one a line
    sys.exit(exit_code(exc))


def fail(exc: NotifierError, code: int | None = None) -> NoReturn:
    """End the command: ``error: <one line>`` on stderr, the status of :data:`EXIT_CODES`."""
    line = exc.one_line() if hasattr(exc, "one_line") else one_line(exc)
    click.echo(f"error: {line}", err=True)
    sys.exit(exit_code(exc) if code is None else code)


@contextmanager
def reported(context: Context | None = None) -> Iterator[None]:
    """Run a command's work: an error ends it with :func:`fail` (one line, the status of
    :data:`EXIT_CODES`), a database error the store did not map included - never a
    traceback; ``context`` is closed in any case."""
    try:
        yield
    except NotifierError as exc:
        fail(exc)
    except Exception as exc:
        from notifier.store.db import database_error

        mapped = database_error(exc)
        if mapped is None:
            raise
        fail(mapped)
    finally:
        if context is not None:
            context.close()


pass_context = click.make_pass_decorator(Context)

#: The exit status of a command ended by Ctrl-C (128 + SIGINT), as a shell reports it.
EX_INTERRUPTED = 130


class _Group(click.Group):
    """The ``main`` group: Ctrl-C before a command has installed its own signal handling
    (while it imports, reads the config, starts up) exits 130 quietly, as the same key
    does a moment later, instead of click's "Aborted!" with status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(EX_INTERRUPTED) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    help="Log level (default: error, as commands print their own outcome; `run` uses "
    "the config's service.log_level).",
)
@click.version_option(__version__, prog_name="bcs-notifier")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """Watch Huawei Cloud BCS operations and notify people and systems when they move."""
    # every command logs through the redacting handler; the config's secrets are added
    # to it once the config is loaded (`run` installs its own, in the chosen format)
    redactor = Redactor()
    configure("text", log_level or "error", redactor=redactor)
    ctx.obj = Context(find_config_path(config_path), redactor)
