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
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from notifier.config import Config, SourceConfig
from notifier.daemon.delivery import (
    SUMMARY_MAX_AGE,
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
    PollResultLike,
    SourceSchedule,
    Wakeup,
    stop_dispatcher,
)
from notifier.daemon.status import feed_watchdog, hung_sources, report_status, status_line
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


# -- a poll's outcome, options -----------------------------------------------------------


@dataclass
class _PollOutcome:
    result: PollResultLike | None
    error: BaseException | None
    duration: float


@dataclass
class DaemonOptions:
    stop_grace: float = 10.0
    watchdog_interval: float | None = None
    jitter_seed: int | None = None


# -- the daemon ----------------------------------------------------------------------------


class Daemon:
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
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        wait: Callable[[float], None] | None = None,
        executor: ExecutorLike | None = None,
        rng: random.Random | None = None,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self.config = config
        self._leases = leases  # None: the only instance on this database (polls everything)
        self._summary_failing = False
        self.engine = engine
        self.options = options or DaemonOptions()
        self.metrics = metrics or Metrics()
        self.notifier = notifier or SystemdNotifier(None)
        self._factory = components
        self._loader = config_loader
        self._on_reload = on_reload
        self._clock = clock
        self._wall = wall
        self._wakeup = Wakeup()
        self._wait = wait or self._wakeup.wait
        self._executor: ExecutorLike = executor or DaemonThreadExecutor()
        self._rng = rng or random.Random(self.options.jitter_seed)  # noqa: S311 - jitter
        self._components: Components | None = None
        self._retired: list[Components] = []
        self._schedules: dict[str, SourceSchedule] = {}
        self._dispatch_job: Future[Any] | None = None
        self._dispatch_components: Components | None = None
        self._dispatch_at: float = 0.0
        self._idle_dispatch = False
        self._dispatch_not_before: float = -math.inf  # backoff after a failed dispatch
        self._dispatch_failures = 0
        self._dispatch_error_kinds: set[str] = set()
        self._recheck_at: float = -math.inf
        self._summary = OutboxSummary()
        self._summary_at: float = -math.inf
        self._summary_dirty = True
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started_wall: float = wall()
        self._last_cycle_wall: float = self._started_wall
        self._last_watchdog: float = -math.inf
        self._status_text = ""
        self._cycles = 0
        #: SQLite: the database file as it was at start; a deleted or replaced file stops
        #: polling and delivering and fails health (notifier.store.guard)
        self._database_file = DatabaseFile.for_engine(engine)
        self._database_lost: str | None = None

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
        self._components = self._factory(self.config, self.engine)
        now = self._clock()
        known = self._known_states()
        for source in self.config.sources:
            schedule = SourceSchedule(config=source, next_at=now)
            state = known.get(source.name)
            if state is not None:
                schedule.failures = state.consecutive_failures
                schedule.last_error = state.last_error
                schedule.last_poll_at = _seconds(state.last_poll_at)
                schedule.last_success_at = _seconds(state.last_success_at)
            self._schedules[source.name] = schedule
        self._publish_leader_metrics()
        refresh_summary(self, force=True)

    def run(self) -> int:
        """Loop until a stop is requested; then stop gracefully. Returns the exit code 0."""
        if self._components is None:
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
        if not self._stop.is_set() and self._database_lost is None:
            self._maintain_leases()
            self._submit_due_polls()
            self._collect()  # inline executors finish at once
            maybe_dispatch(self)
            self._collect()
        self._cycles += 1
        self._last_cycle_wall = self._wall()
        self.metrics.set("last_cycle_timestamp_seconds", self._last_cycle_wall)
        refresh_summary(self)
        feed_watchdog(self)
        report_status(self)

    # -- the database file --

    def _check_database(self) -> None:
        if self._database_file is None or self._database_lost is not None:
            return
        lost = self._database_file.check()
        if lost is None:
            return
        self._database_lost = lost
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
        components = self._components
        if components is None:
            return
        now = self._clock()
        due = sorted(
            (s for s in self._schedules.values() if s.job is None and s.next_at <= now),
            key=lambda s: s.next_at,
        )
        for schedule in due:
            fence = None
            if self._leases is not None:
                if not self._leases.leads(schedule.name):
                    continue  # another instance leads it (or nobody yet): standby
                fence = self._leases.fence(schedule.name)
            schedule.job_started = now
            schedule.job = self._submit(self._poll_job(components.poller, schedule.config, fence))

    def _poll_job(
        self, poller: PollerLike, source: SourceConfig, fence: Fence | None = None
    ) -> Callable[[], _PollOutcome]:
        def job() -> _PollOutcome:
            started = time.monotonic()
            try:
                if fence is None:
                    result = poller.poll_source(source)
                else:  # several instances: the poll's transaction checks the lease last
                    result = poller.poll_source(source, fence=fence)  # type: ignore[call-arg]
            except LeaseLost as exc:
                logger.warning("%s: %s", source.name, exc)
                return _PollOutcome(None, exc, time.monotonic() - started)
            except Exception as exc:  # a bug or a store failure: logged by _record_poll
                return _PollOutcome(None, exc, time.monotonic() - started)
            return _PollOutcome(result, None, time.monotonic() - started)

        return job

    def _submit(self, job: Callable[[], Any]) -> Future[Any]:
        future = self._executor.submit(job)
        future.add_done_callback(lambda _f: self._wakeup.wake())
        return future

    def _collect(self) -> None:
        for schedule in list(self._schedules.values()):
            job = schedule.job
            if job is None or not job.done():
                continue
            schedule.job = None
            schedule.job_started = None
            schedule.stuck_reported = False
            try:
                outcome: _PollOutcome = job.result()
            except Exception as exc:  # pragma: no cover - _poll_job catches everything
                outcome = _PollOutcome(None, exc, 0.0)
            record_poll(self, schedule, outcome)
        job = self._dispatch_job
        if job is not None and job.done():
            self._dispatch_job = None
            try:
                stats = job.result()
            except Exception as exc:
                dispatch_failed(self, exc)
            else:
                dispatch_succeeded(self)
                record_dispatch(self, stats)
            self._summary_dirty = True
        close_retired(self)

    # -- timing (notifier.daemon.schedule), status (notifier.daemon.status) --

    def _spread(self) -> float:
        """A jitter draw in [-1, 1]; none without jitter (the seeded sequence stays put)."""
        if self.config.service.poll_jitter <= 0:
            return 0.0
        return self._rng.uniform(-1.0, 1.0)

    def _interval(self, source: SourceConfig, *, active: bool) -> float:
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

    def _failure_interval(self, source: SourceConfig, failures: int, error: BaseException) -> float:
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
        return reload_config(self)

    def _sleep_time(self) -> float:
        now = self._clock()
        deadlines = [
            max(self._dispatch_at, self._dispatch_not_before)
            if self._dispatch_job is None
            else math.inf,
            self._recheck_at if self._dispatch_job is None else math.inf,
        ]
        deadlines.extend(s.next_at for s in self._schedules.values() if s.job is None)
        deadlines.append(self._summary_at + SUMMARY_MAX_AGE)
        if self._leases is not None:
            deadlines.append(self._leases.next_at)
        return sleep_time(now, deadlines, self.options.watchdog_interval)

    # -- leases (several instances on one database) --

    def _maintain_leases(self) -> None:
        """Renew and take leases when due; a newly led source is polled at once."""
        keeper = self._leases
        if keeper is None or not keeper.due():
            return
        busy = [s.name for s in self._schedules.values() if s.job is not None]
        changes = keeper.maintain(list(self._schedules), busy)
        now = self._clock()
        for name in changes.gained:
            schedule = self._schedules.get(name)
            if schedule is not None and schedule.job is None:
                schedule.next_at = now
        self._publish_leader_metrics()

    def _recheck_leases(self) -> None:
        if self._leases is not None:
            self._leases.next_at = -math.inf

    def _publish_leader_metrics(self) -> None:
        keeper = self._leases
        for name in self._schedules:
            leads = (keeper is None or keeper.leads(name)) and not self._stop.is_set()
            self.metrics.set("leader", 1 if leads else 0, source=name)

    # -- stop --

    def _shutdown(self) -> None:
        grace = self.options.stop_grace
        deadline = self._clock() + grace
        if self._leases is not None:  # first: another instance takes over at once
            self._leases.release_all()
            self._publish_leader_metrics()
        self.notifier.stopping("stopping: finishing the current step")
        logger.info("stopping: up to %.0fs for running jobs and due deliveries", grace)
        components = self._components
        for part in [components, self._dispatch_components, *self._retired]:
            if part is not None:
                stop_dispatcher(part.dispatcher, grace)
        left_behind = self._drain_jobs(deadline)
        refresh_summary(self, force=True)
        while (
            components is not None
            and not left_behind
            and self._summary.due
            and self._clock() < deadline
        ):
            due_before = self._summary.due
            try:
                stats = components.dispatcher.dispatch_due(limit=GRACE_BATCH)
            except Exception as exc:
                if type(exc).__name__ in self._dispatch_error_kinds:  # traceback logged before
                    logger.warning("delivering during shutdown failed: %s", error_line(exc))
                else:
                    logger.exception("delivering during shutdown failed")
                break
            record_dispatch(self, stats)  # refreshes the summary
            self._ping_during_stop()
            if self._idle_dispatch or self._summary.due >= due_before:
                break  # no progress: what is due cannot be sent now
        refresh_summary(self, force=True)
        if self._summary.pending:
            logger.info(
                "stopped with %d pending deliveries kept in the outbox for the next start",
                self._summary.pending,
            )
        self._executor.shutdown(wait=not left_behind)
        if not left_behind:  # a job left running may still use them; the exit ends it
            for retired in self._retired:
                retired.close()
            self._retired.clear()
            if components is not None:
                components.close()
        self.notifier.status(f"stopped; {self._summary.pending} deliveries pending")

    def _drain_jobs(self, deadline: float) -> list[str]:
        """Wait for running jobs until ``deadline``; the names of those still running then."""
        while True:
            self._collect()
            running = {name: s.job for name, s in self._schedules.items() if s.job is not None}
            if self._dispatch_job is not None:
                running["the delivery"] = self._dispatch_job
            if not running:
                return []
            remaining = deadline - self._clock()
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

    def _known_states(self) -> Mapping[str, Any]:
        try:
            return source_statuses(self.engine)
        except NotifierError as exc:
            logger.warning("cannot read source state: %s", exc)
            return {}

    # -- views for status and tests --

    @property
    def schedules(self) -> Mapping[str, SourceSchedule]:
        return self._schedules

    @property
    def summary(self) -> OutboxSummary:
        return self._summary


def _seconds(milliseconds: int | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000
