"""SIGHUP: re-read the config and swap it in, keeping the clients (and their IAM tokens) of
unchanged sources; an invalid config is logged and the running one kept."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from notifier.config import Config, SourceConfig
from notifier.daemon.delivery import dispatch_soon
from notifier.daemon.seams import ComponentFactory, SourceSchedule
from notifier.errors import ConfigError, NotifierError

if TYPE_CHECKING:
    from notifier.daemon.loop import Daemon

logger = logging.getLogger("notifier.daemon")


def reload_config(
    daemon: Daemon,
    loader: Callable[[], Config] | None,
    factory: ComponentFactory,
    on_reload: Callable[[Config, Config], None] | None = None,
) -> bool:
    """Re-read the config (SIGHUP) with ``loader``, build its components with ``factory``
    and swap them in, then call ``on_reload(old, new)``; keep the running config when the
    new one is invalid."""
    if loader is None:
        logger.warning("reload requested, but this daemon has no config file to re-read")
        return False
    daemon.notifier.reloading()
    try:
        try:
            new = loader()
        except ConfigError as exc:
            logger.error(
                "reload: the new configuration is invalid, keeping the running one:\n%s",
                "\n".join(str(problem) for problem in exc.problems) or str(exc),
            )
            return False
        old = daemon.config
        if new.service.database != old.service.database:
            logger.warning(
                "reload: service.database changed; a new database needs a restart, "
                "still using the current one"
            )
            new = dataclasses.replace(
                new, service=dataclasses.replace(new.service, database=old.service.database)
            )
        try:
            components = factory(new, daemon.engine)
        except NotifierError as exc:
            logger.error(
                "reload: cannot apply the new configuration (%s); keeping the running one", exc
            )
            return False
        if daemon.components is not None:
            adopt = getattr(components.poller, "adopt_clients", None)
            if callable(adopt):  # keep unchanged sources' clients (and their IAM tokens)
                adopt(daemon.components.poller)
            daemon.retired.append(daemon.components)
        daemon.components = components
        daemon.config = new
        apply_sources(daemon, new.sources)
        if on_reload is not None:
            try:
                on_reload(old, new)
            except Exception:
                logger.exception("reload: applying the new settings failed")
        logger.info(
            "reloaded %s: %d source(s), %d channel(s)",
            new.path or "the configuration",
            len(new.sources),
            len(new.channels),
        )
        dispatch_soon(daemon, daemon.clock.monotonic())
        daemon.dispatching.recheck_at = -math.inf
        return True
    finally:
        daemon.notifier.ready(daemon.status_line())


def apply_sources(daemon: Daemon, sources: Sequence[SourceConfig]) -> None:
    now = daemon.clock.monotonic()
    wanted = {source.name: source for source in sources}
    for name in list(daemon.schedules):
        if name not in wanted:
            logger.info("reload: source %s removed", name)
            del daemon.schedules[name]
            daemon.metrics.remove("source_up", source=name)
            daemon.metrics.remove("leader", source=name)
            daemon.metrics.remove("source_consecutive_failures", source=name)
            daemon.metrics.remove("source_last_success_timestamp_seconds", source=name)
    for name, source in wanted.items():
        schedule = daemon.schedules.get(name)
        if schedule is None:
            logger.info("reload: source %s added", name)
            daemon.schedules[name] = SourceSchedule(config=source, next_at=now)
            continue
        if schedule.config != source:
            schedule.next_at = now  # new endpoint, filters or credentials: poll at once
        schedule.config = source
        if schedule.job is None and not schedule.failures:
            limit = now + daemon.interval(source, active=schedule.active)
            schedule.next_at = min(schedule.next_at, limit)


def close_retired(daemon: Daemon) -> None:
    if not daemon.retired:
        return
    busy = any(s.job is not None for s in daemon.schedules.values())
    if busy or daemon.dispatching.job is not None:
        return
    for components in daemon.retired:
        components.close()
    daemon.retired.clear()
