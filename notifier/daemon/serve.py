"""The service: everything ``bcs-notifier run`` does around the loop - lock and migrate the
database, build the pipeline, the health listener, systemd, run until stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from notifier.config import Config
from notifier.daemon.loop import Daemon, DaemonOptions
from notifier.daemon.seams import ComponentFactory, Components
from notifier.errors import NotifierError
from notifier.health import HealthReport, Metrics
from notifier.leadership import LeaseKeeper, keeper_for
from notifier.store.startup import StoppedWaiting, open_store
from notifier.systemd import SystemdNotifier

if TYPE_CHECKING:
    from notifier.store.db import Engine

logger = logging.getLogger("notifier.daemon")


def default_components(config: Config, engine: Engine) -> Components:
    """The real pipeline: ``notifier.pipeline.Poller`` and ``notifier.outbox.Dispatcher``."""
    from notifier.outbox import Dispatcher
    from notifier.pipeline import Poller

    # the first cycle of each source in this process is a complete listing (reconcile)
    poller = Poller(config, engine, reconcile_at_start=True)
    return Components(poller=poller, dispatcher=Dispatcher(config, engine))


@dataclass
class ServeOptions:
    stop_grace: float = 10.0
    environ: Mapping[str, str] | None = None
    components: ComponentFactory = default_components


def serve(
    config: Config,
    *,
    config_loader: Callable[[], Config] | None,
    options: ServeOptions | None = None,
    on_reload: Callable[[Config, Config], None] | None = None,
) -> int:
    """Lock the database, migrate it, build the pipeline, tell systemd, run until stopped.

    Raises ``AlreadyRunning``, ``StoreError`` or ``ConfigError`` before READY=1; the CLI
    maps them to exit codes. Returns 0 after a graceful stop.
    """
    from notifier.health import HealthServer
    from notifier.store import db
    from notifier.store.lock import InstanceLock
    from notifier.systemd import watchdog_interval

    opts = options or ServeOptions()
    notifier = SystemdNotifier.from_environ(opts.environ)
    metrics = Metrics()
    engine = db.make_engine(config.service.database)
    lock = InstanceLock(engine)
    keeper: LeaseKeeper | None = None
    listener: list[HealthServer] = []  # the running health listener, if any

    def start_http(settings: Config, health: Callable[[], HealthReport]) -> None:
        http = settings.service.http
        if http is not None:
            server = HealthServer(http.listen, http.port, metrics=metrics, health=health)
            server.start()
            listener.append(server)

    def stop_http() -> None:
        while listener:
            listener.pop().close()

    def reload_extras(old: Config, new: Config) -> None:
        if on_reload is not None:
            on_reload(old, new)
        if old.service.http != new.service.http:
            stop_http()
            try:
                start_http(new, daemon.health)
            except OSError as exc:
                logger.error("reload: the health listener could not start: %s", exc)

    try:
        revision = open_store(engine, lock, notifier)
        logger.info("database %s at revision %s", _safe_url(engine), revision)
        keeper = keeper_for(config, engine)
        daemon = Daemon(
            config,
            engine,
            components=opts.components,
            notifier=notifier,
            metrics=metrics,
            options=DaemonOptions(
                stop_grace=opts.stop_grace, watchdog_interval=watchdog_interval(opts.environ)
            ),
            config_loader=config_loader,
            on_reload=reload_extras,
            leases=keeper,
        )
        with daemon.signal_handlers():
            daemon.start()
            try:
                start_http(config, daemon.health)
            except OSError as exc:
                raise NotifierError(str(exc)) from exc
            logger.info(
                "running: %d source(s), %d channel(s), idle every %gs, active every %gs",
                len(config.sources),
                len(config.channels),
                config.service.poll_interval,
                config.service.active_poll_interval,
            )
            notifier.ready(f"ready; {daemon.status_line()}")
            code = daemon.run()
        logger.info("stopped")
        return code
    except StoppedWaiting:
        logger.info("stopped while waiting for the database")
        return 0
    finally:
        stop_http()
        notifier.close()
        lock.release()
        engine.dispose()


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
