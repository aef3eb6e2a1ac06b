"""The run loop: a per-source scheduler, the dispatcher between polls, signals, reload, stop.

One main thread schedules; every poll and every dispatch runs as a job on a small thread
pool, at most one job per source and one dispatch at a time, so a source that hangs in a
timeout never delays another source or a delivery. The main thread sleeps on a self-pipe
(:class:`Wakeup`) that signal handlers and finished jobs write to, until the earliest
next-poll time, the next due delivery, or the next watchdog ping.

Per source: ``active_poll_interval`` after a poll that saw a watched operation waiting or
processing, ``poll_interval`` otherwise, each with ``poll_jitter``; after a failure the delay
backs off from the active interval up to the idle one; a refused AK/SK signature waits at
least ``retry_after`` (300 s: five refusals lock the key). In ``poll_mode = "incremental"``
the poller makes a cycle a complete listing when ``full_poll_interval`` has passed (and the
first cycle of each source after start); no poll waits longer than that interval.

Delivery: right after a poll that found events, when the earliest pending row falls due, and
within ``OUTBOX_RECHECK`` seconds of another process making a row due (``outbox retry``).
Rows of channels that are not configured are never due. A dispatch that raises is retried
after a backoff (5 s doubling to 5 min), its traceback logged once per kind of failure.

Several instances (PostgreSQL): a :class:`~notifier.leadership.LeaseKeeper` decides which
sources this instance leads; only those are polled, each poll under its lease's fence; a
newly led source is polled at once; every instance delivers (claimed outbox rows).

SIGTERM/SIGINT: release the leases first (another instance takes over within one active
interval), stop submitting; within ``stop_grace`` seconds of the signal, let running
jobs finish and send what is due, then exit 0. The grace bounds everything: the dispatcher
stops taking rows when it runs out and bounds each send by what is left of it; a poll or a
send still running then is left behind (jobs run on daemon threads, so they never hold the
exit). Nothing undelivered is lost: it stays due in the outbox for the next start.
SIGHUP: reload the config; an invalid one is logged and the running one kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from notifier.clock import SYSTEM_CLOCK, Clock, seconds_from_ms
from notifier.config import Config, SourceConfig
from notifier.daemon.delivery import (
    SUMMARY_MAX_AGE,
    DispatchState,
    dispatch_failed,
    dispatch_succeeded,
    maybe_dispatch,
    record_dispatch,
    refresh_summary,
)
from notifier.daemon.polls import record_poll
from notifier.daemon.reload import close_retired, reload_config
from notifier.daemon.schedule import (
    SIGNATURE_BACKOFF,
    failure_interval,
    poll_interval,
    sleep_time,
)
from notifier.daemon.seams import (
    ComponentFactory,
    Components,
    DaemonThreadExecutor,
    ExecutorLike,
    PollerLike,
    PollOutcome,
    SourceSchedule,
    Wakeup,
    stop_dispatcher,
)
from notifier.daemon.status import feed_watchdog, hung_sources, status_line
from notifier.daemon.status import health as health_report
from notifier.errors import LeaseLost, NotifierError, SignatureRejected, error_line
from notifier.health import HealthReport, Metrics
from notifier.leadership import LeaseKeeper
from notifier.store.guard import MARKER_SUFFIX, DatabaseFile
from notifier.store.lease import Fence
from notifier.store.status import OutboxSummary, source_statuses
from notifier.systemd import SystemdNotifier

if TYPE_CHECKING:
    from notifier.store.db import Engine

#: the one logger of the run loop, whichever module of the package logs
logger = logging.getLogger("notifier.daemon")

GRACE_BATCH: Final = 10


# -- options -----------------------------------------------------------------------------


@dataclass
class DaemonOptions:
    stop_grace: float = 10.0
    watchdog_interval: float | None = None
    jitter_seed: int | None = None


# -- the daemon ----------------------------------------------------------------------------


class Daemon:
    """The run loop. Its parts in the other modules of the package read and change it
    through its public attributes only: ``config``, ``engine``, ``clock``, ``metrics``,
    ``notifier``, ``options``, ``leases``, ``components`` (and ``retired``, the replaced
    ones still to close), ``schedules``, ``dispatching``, ``database_lost``,
    ``started_at_ms``/``last_cycle_at_ms`` (wall ms), and the methods ``submit``,
    ``interval``, ``failure_interval``, ``known_states``, ``recheck_leases``."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        components: ComponentFactory,
        notifier: SystemdNotifier | None = None,
        metrics: Metrics | None = None,
        options: DaemonOptions | None = None,
        config_loader: Callable[[], Config] | None = None,
        on_reload: Callable[[Config, Config], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        wait: Callable[[float], None] | None = None,
        executor: ExecutorLike | None = None,
        rng: random.Random | None = None,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.clock = clock
        self.options = options or DaemonOptions()
        self.metrics = metrics or Metrics()
        self.notifier = notifier or SystemdNotifier(None)
        #: None: the only instance on this database (polls everything)
        self.leases = leases
        self.components: Components | None = None
        #: components replaced by a reload, closed once no job uses them
        self.retired: list[Components] = []
        self.schedules: dict[str, SourceSchedule] = {}
        self.dispatching = DispatchState()
        self.started_at_ms: int = clock.wall_ms()
        self.last_cycle_at_ms: int = self.started_at_ms
        #: SQLite: the database file as it was at start; a deleted or replaced file stops
        #: polling and delivering and fails health (notifier.store.guard)
        self.database_lost: str | None = None
        self._database_file = DatabaseFile.for_engine(engine)
        self._factory = components
        self._loader = config_loader
        self._on_reload = on_reload
        self._wakeup = Wakeup()
        self._wait = wait or self._wakeup.wait
        self._executor: ExecutorLike = executor or DaemonThreadExecutor()
        self._rng = rng or random.Random(self.options.jitter_seed)  # noqa: S311 - jitter
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._status_text = ""

    # -- control (signal handlers and other threads) --

    def request_stop(self) -> None:
        self._stop.set()
        self._wakeup.wake()

    def request_reload(self) -> None:
        self._reload.set()
        self._wakeup.wake()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        """SIGTERM/SIGINT stop, SIGHUP reloads; the previous handlers come back after."""

        def on_stop(signum: int, _frame: FrameType | None) -> None:
            self.request_stop()

        def on_hup(signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        previous = {
            signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
            signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
            signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup),
        }
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- life cycle --

    def start(self) -> None:
        """Build the components and schedule every source for an immediate first poll."""
        self.components = self._factory(self.config, self.engine)
        now = self.clock.monotonic()
        known = self.known_states()
        for source in self.config.sources:
            schedule = SourceSchedule(config=source, next_at=now)
            state = known.get(source.name)
            if state is not None:
                schedule.failures = state.consecutive_failures
                schedule.last_error = state.last_error
                schedule.last_poll_at = state.last_poll_at
                schedule.last_success_at = state.last_success_at
            self.schedules[source.name] = schedule
        self._publish_leader_metrics()
        refresh_summary(self, force=True)

    def run(self) -> int:
        """Loop until a stop is requested; then stop gracefully. Returns the exit code 0."""
        if self.components is None:
            self.start()
        try:
            while not self._stop.is_set():
                self.cycle()
                if self._stop.is_set():
                    break
                self._wait(self._sleep_time())
            self._shutdown()
        finally:
            self._wakeup.close()
        return 0

    def cycle(self) -> None:
        """One pass: reload if asked, collect finished jobs, start due ones, report."""
        if self._reload.is_set():
            self._reload.clear()
            self.reload()
        self._check_database()
        self._collect()
        if not self._stop.is_set() and self.database_lost is None:
            self._maintain_leases()
            self._submit_due_polls()
            self._collect()  # inline executors finish at once
            maybe_dispatch(self)
            self._collect()
        self.last_cycle_at_ms = self.clock.wall_ms()
        self.metrics.set("last_cycle_timestamp_seconds", seconds_from_ms(self.last_cycle_at_ms))
        refresh_summary(self)
        feed_watchdog(self)
        self._report_status()

    # -- the database file --

    def _check_database(self) -> None:
        if self._database_file is None or self.database_lost is not None:
            return
        lost = self._database_file.check()
        if lost is None:
            return
        self.database_lost = lost
        self.metrics.set("database_lost", 1)
        logger.critical(
            "%s: polling and delivering stop (a new empty file would take a silent "
            "baseline), /healthz fails and the watchdog is no longer fed. Restart the "
            "service: the next start reports what changed since the last poll this "
            "database stored (see %s%s), or restore the file first",
            lost,
            self._database_file.path.name,
            MARKER_SUFFIX,
        )

    # -- polling --

    def _submit_due_polls(self) -> None:
        components = self.components
        if components is None:
            return
        now = self.clock.monotonic()
        due = sorted(
            (s for s in self.schedules.values() if s.job is None and s.next_at <= now),
            key=lambda s: s.next_at,
        )
        for schedule in due:
            fence = None
            if self.leases is not None:
                if not self.leases.leads(schedule.name):
                    continue  # another instance leads it (or nobody yet): standby
                fence = self.leases.fence(schedule.name)
            schedule.job_started = now
            schedule.job = self.submit(self._poll_job(components.poller, schedule.config, fence))

    def _poll_job(
        self, poller: PollerLike, source: SourceConfig, fence: Fence | None = None
    ) -> Callable[[], PollOutcome]:
        def job() -> PollOutcome:
            started = self.clock.monotonic()
            try:
                if fence is None:
                    result = poller.poll_source(source)
                else:  # several instances: the poll's transaction checks the lease last
                    result = poller.poll_source(source, fence=fence)  # type: ignore[call-arg]
            except LeaseLost as exc:
                logger.warning("%s: %s", source.name, exc)
                return PollOutcome(None, exc, self.clock.monotonic() - started)
            except Exception as exc:  # a bug or a store failure: logged by record_poll
                return PollOutcome(None, exc, self.clock.monotonic() - started)
            return PollOutcome(result, None, self.clock.monotonic() - started)

        return job

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        """Run ``job`` on the executor; the loop wakes when it is done."""
        future = self._executor.submit(job)
        future.add_done_callback(lambda _f: self._wakeup.wake())
        return future

    def _collect(self) -> None:
        for schedule in list(self.schedules.values()):
            job = schedule.job
            if job is None or not job.done():
                continue
            schedule.job = None
            schedule.job_started = None
            schedule.stuck_reported = False
            try:
                outcome: PollOutcome = job.result()
            except Exception as exc:  # pragma: no cover - _poll_job catches everything
                outcome = PollOutcome(None, exc, 0.0)
            record_poll(self, schedule, outcome)
        job = self.dispatching.job
        if job is not None and job.done():
            self.dispatching.job = None
            try:
                stats = job.result()
            except Exception as exc:
                dispatch_failed(self, exc)
            else:
                dispatch_succeeded(self)
                record_dispatch(self, stats)
            self.dispatching.summary_dirty = True
        close_retired(self)

    # -- timing (notifier.daemon.schedule), status (notifier.daemon.status) --

    def _spread(self) -> float:
        """A jitter draw in [-1, 1]; none without jitter (the seeded sequence stays put)."""
        if self.config.service.poll_jitter <= 0:
            return 0.0
        return self._rng.uniform(-1.0, 1.0)

    def interval(self, source: SourceConfig, *, active: bool) -> float:
        """Seconds until the source's next poll after one that worked (with jitter)."""
        service = self.config.service
        incremental = service.poll_mode == "incremental"  # the complete listing is due by then
        return poll_interval(
            active=active,
            active_interval=service.active_poll_interval,
            idle_interval=service.poll_interval,
            full_interval=service.full_poll_interval if incremental else None,
            jitter=service.poll_jitter,
            spread=self._spread(),
        )

    def failure_interval(self, source: SourceConfig, failures: int, error: BaseException) -> float:
        """Seconds until the next try after ``failures`` failed polls in a row."""
        service = self.config.service
        spread = self._spread()
        hint = getattr(error, "retry_after", None)
        rest = None
        if isinstance(error, SignatureRejected):
            rest = float(getattr(error, "min_backoff", SIGNATURE_BACKOFF))
        return failure_interval(
            failures,
            active_interval=service.active_poll_interval,
            idle_interval=service.poll_interval,
            jitter=service.poll_jitter,
            spread=spread,
            retry_after=float(hint) if isinstance(hint, int | float) else None,
            signature_rest=rest,
        )

    def status_line(self) -> str:
        return status_line(self)

    def health(self) -> HealthReport:
        """Fresh while the loop goes round and every source succeeded recently enough."""
        return health_report(self)

    def reload(self) -> bool:
        """Re-read the config (SIGHUP); keep the running one when the new one is invalid."""
        return reload_config(self, self._loader, self._factory, self._on_reload)

    def _report_status(self) -> None:
        text = self.status_line()
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    def _sleep_time(self) -> float:
        now = self.clock.monotonic()
        state = self.dispatching
        deadlines = [
            max(state.at, state.not_before) if state.job is None else math.inf,
            state.recheck_at if state.job is None else math.inf,
        ]
        deadlines.extend(s.next_at for s in self.schedules.values() if s.job is None)
        deadlines.append(state.summary_at + SUMMARY_MAX_AGE)
        if self.leases is not None:
            deadlines.append(self.leases.next_at)
        return sleep_time(now, deadlines, self.options.watchdog_interval)

    # -- leases (several instances on one database) --

    def _maintain_leases(self) -> None:
        """Renew and take leases when due; a newly led source is polled at once."""
        keeper = self.leases
        if keeper is None or not keeper.due():
            return
        busy = [s.name for s in self.schedules.values() if s.job is not None]
        changes = keeper.maintain(list(self.schedules), busy)
        now = self.clock.monotonic()
        for name in changes.gained:
            schedule = self.schedules.get(name)
            if schedule is not None and schedule.job is None:
                schedule.next_at = now
        self._publish_leader_metrics()

    def recheck_leases(self) -> None:
        """Maintain the leases at the next cycle (a poll found its lease lost)."""
        if self.leases is not None:
            self.leases.next_at = -math.inf

    def _publish_leader_metrics(self) -> None:
        keeper = self.leases
        for name in self.schedules:
            leads = (keeper is None or keeper.leads(name)) and not self._stop.is_set()
            self.metrics.set("leader", 1 if leads else 0, source=name)

    # -- stop --

    def _shutdown(self) -> None:
        grace = self.options.stop_grace
        deadline = self.clock.monotonic() + grace
        if self.leases is not None:  # first: another instance takes over at once
            self.leases.release_all()
            self._publish_leader_metrics()
        self.notifier.stopping("stopping: finishing the current step")
        logger.info("stopping: up to %.0fs for running jobs and due deliveries", grace)
        components = self.components
        for part in [components, *self.retired]:
            if part is not None:
                stop_dispatcher(part.dispatcher, grace)
        left_behind = self._drain_jobs(deadline)
        refresh_summary(self, force=True)
        while (
            components is not None
            and not left_behind
            and self.summary.due
            and self.clock.monotonic() < deadline
        ):
            due_before = self.summary.due
            try:
                stats = components.dispatcher.dispatch_due(limit=GRACE_BATCH)
            except Exception as exc:
                if type(exc).__name__ in self.dispatching.error_kinds:  # traceback logged before
                    logger.warning("delivering during shutdown failed: %s", error_line(exc))
                else:
                    logger.exception("delivering during shutdown failed")
                break
            record_dispatch(self, stats)  # refreshes the summary
            self._ping_during_stop()
            if self.dispatching.idle or self.summary.due >= due_before:
                break  # no progress: what is due cannot be sent now
        refresh_summary(self, force=True)
        if self.summary.pending:
            logger.info(
                "stopped with %d pending deliveries kept in the outbox for the next start",
                self.summary.pending,
            )
        self._executor.shutdown(wait=not left_behind)
        if not left_behind:  # a job left running may still use them; the exit ends it
            for retired in self.retired:
                retired.close()
            self.retired.clear()
            if components is not None:
                components.close()
        self.notifier.status(f"stopped; {self.summary.pending} deliveries pending")

    def _drain_jobs(self, deadline: float) -> list[str]:
        """Wait for running jobs until ``deadline``; the names of those still running then."""
        while True:
            self._collect()
            running = {name: s.job for name, s in self.schedules.items() if s.job is not None}
            if self.dispatching.job is not None:
                running["the delivery"] = self.dispatching.job
            if not running:
                return []
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                names = sorted(running)
                logger.warning(
                    "stop grace over: leaving %s running; what it had not recorded stays due "
                    "for the next start",
                    ", ".join(names),
                )
                return names
            self._ping_during_stop()
            self._wait(min(remaining, 1.0, self.options.watchdog_interval or 1.0))

    def _ping_during_stop(self) -> None:
        if self.options.watchdog_interval and not hung_sources(self):
            self.notifier.watchdog()

    def known_states(self) -> Mapping[str, Any]:
        """Every source's stored state (empty when the store cannot be read)."""
        try:
            return source_statuses(self.engine)
        except NotifierError as exc:
            logger.warning("cannot read source state: %s", exc)
            return {}

    # -- views for status and tests --

    @property
    def summary(self) -> OutboxSummary:
        return self.dispatching.summary
