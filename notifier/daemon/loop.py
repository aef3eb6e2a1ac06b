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
import dataclasses
import logging
import math
import os
import random
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any, Final, Protocol

from sqlalchemy import Engine

from notifier.config import Config, SourceConfig
from notifier.errors import (
    AuthError,
    ConfigError,
    LeaseLost,
    NotifierError,
    SignatureRejected,
    SourceError,
    StoreError,
    error_line,
)
from notifier.health import HealthReport, Metrics
from notifier.leadership import LeaseKeeper, keeper_for
from notifier.model import Event, describe
from notifier.store.guard import MARKER_SUFFIX, DatabaseFile
from notifier.store.lease import Fence
from notifier.store.startup import StoppedWaiting, is_outage, open_store
from notifier.store.status import (
    OutboxSummary,
    next_attempt_at,
    outbox_summary,
    source_statuses,
)
from notifier.systemd import SystemdNotifier

logger = logging.getLogger("notifier.daemon")

SIGNATURE_BACKOFF: Final = 300.0  # five refused signatures lock an AK for five minutes
#: Look for rows made due by others (`outbox retry`, `outbox reassign`) this often: one
#: indexed query (the earliest next attempt), so a retry takes effect within seconds.
OUTBOX_RECHECK: Final = 5.0
SUMMARY_MAX_AGE: Final = 30.0
GRACE_BATCH: Final = 10
DISPATCH_RETRY: Final = 5.0  # due rows the dispatcher did not attempt: look again after this
#: A dispatch that raised (the store is locked or gone, a bug) is retried after
#: DISPATCH_RETRY, doubling per failure in a row up to this, never in a tight loop.
DISPATCH_FAILURE_BACKOFF_MAX: Final = 300.0


# -- seams ---------------------------------------------------------------------------------


class PollResultLike(Protocol):
    """What ``Poller.poll_source`` returns (``notifier.pipeline.PollResult``)."""

    @property
    def source(self) -> str: ...
    @property
    def events(self) -> Sequence[Event]: ...
    @property
    def active(self) -> bool: ...
    @property
    def error(self) -> SourceError | None: ...
    @property
    def records(self) -> int: ...
    @property
    def duration(self) -> float: ...


class PollerLike(Protocol):
    def poll_source(self, source: SourceConfig, /) -> PollResultLike: ...


class DispatcherLike(Protocol):
    def dispatch_due(self, limit: int | None = None) -> Any: ...


def stop_dispatcher(dispatcher: DispatcherLike, seconds: float) -> None:
    """Tell a dispatcher (running or not) to be done within ``seconds``, if it can be told."""
    stop_within = getattr(dispatcher, "stop_within", None)
    if callable(stop_within):
        stop_within(seconds)


@dataclass
class Components:
    """The pipeline pieces built from one config; rebuilt on reload."""

    poller: PollerLike
    dispatcher: DispatcherLike

    def close(self) -> None:
        for part in (self.poller, self.dispatcher):
            closer = getattr(part, "close", None)
            if callable(closer):
                try:
                    closer()
                except Exception:
                    logger.exception("closing %s failed", type(part).__name__)


ComponentFactory = Callable[[Config, Engine], Components]


class ExecutorLike(Protocol):
    def submit(self, fn: Callable[[], Any], /) -> Future[Any]: ...
    def shutdown(self, wait: bool = True) -> None: ...


class InlineExecutor:
    """Runs each job at once in the calling thread (deterministic tests, one-shot use)."""

    def submit(self, fn: Callable[[], Any], /) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        return None


class DaemonThreadExecutor:
    """One daemon thread per job: a job still running at the end of the stop grace (a poll
    or a send that ignores its timeout) is left behind instead of holding the exit, as a
    ``ThreadPoolExecutor``'s worker would. The loop runs at most one job per source and one
    dispatch at a time, so the threads stay few."""

    def __init__(self, thread_name_prefix: str = "bcs-notifier-job") -> None:
        self._prefix = thread_name_prefix
        self._threads: list[threading.Thread] = []
        self._count = 0

    def submit(self, fn: Callable[[], Any], /) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()

        def run() -> None:
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        self._count += 1
        thread = threading.Thread(target=run, name=f"{self._prefix}-{self._count}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()
        return future

    def shutdown(self, wait: bool = True) -> None:
        if wait:
            for thread in self._threads:
                thread.join()
        self._threads = [t for t in self._threads if t.is_alive()]


class Wakeup:
    """A self-pipe: ``wake()`` is safe from signal handlers and other threads."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds or until woken; drain pending wake-ups."""
        with contextlib.suppress(InterruptedError):
            select.select([self._read], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 512):
                pass

    def close(self) -> None:
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- per-source state ----------------------------------------------------------------------


@dataclass
class SourceSchedule:
    config: SourceConfig
    next_at: float
    job: Future[Any] | None = None
    job_started: float | None = None
    active: bool = False
    failures: int = 0
    last_poll_at: float | None = None  # wall clock
    last_success_at: float | None = None  # wall clock
    last_error: str | None = None
    last_error_kind: str | None = None
    stuck_reported: bool = False
    #: the stored credential rest (wall clock seconds) after a refused login or signature,
    #: and why; ``source clear-rest`` ends it early
    rest_until: float | None = None
    rest_reason: str | None = None
    #: the kind of unexpected failure (a store error, a bug) last logged in full: the same
    #: kind again is one debug line, until a poll works again
    logged_failure: str | None = None

    @property
    def name(self) -> str:
        return self.config.name


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


def stuck_after(source: SourceConfig) -> float:
    """A poll running longer than this is hung: the watchdog stops being fed."""
    worst_fetch = source.timeout * (source.max_retries + 1) * 2  # API + auth round trips
    return max(300.0, worst_fetch * 4)


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
        self._refresh_summary(force=True)

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
            self._maybe_dispatch()
            self._collect()
        self._cycles += 1
        self._last_cycle_wall = self._wall()
        self.metrics.set("last_cycle_timestamp_seconds", self._last_cycle_wall)
        self._refresh_summary()
        self._feed_watchdog()
        self._report_status()

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
            self._record_poll(schedule, outcome)
        job = self._dispatch_job
        if job is not None and job.done():
            self._dispatch_job = None
            try:
                stats = job.result()
            except Exception as exc:
                self._dispatch_failed(exc)
            else:
                self._dispatch_succeeded()
                self._record_dispatch(stats)
            self._summary_dirty = True
        self._close_retired()

    def _record_poll(self, schedule: SourceSchedule, outcome: _PollOutcome) -> None:
        name = schedule.name
        if name not in self._schedules or self._schedules[name] is not schedule:
            return  # the source was removed by a reload while it was polled
        if isinstance(outcome.error, LeaseLost):
            if self._leases is not None:
                self._leases.drop(name)
            self._recheck_leases()
            return  # nothing was written; whoever leads the source now polls it
        result = outcome.result
        duration = result.duration if result is not None else outcome.duration
        error: BaseException | None = outcome.error
        if result is not None and result.error is not None:
            error = result.error
        now_wall = self._wall()
        schedule.last_poll_at = now_wall
        self.metrics.inc("polls_total", source=name)
        self.metrics.observe("poll_duration_seconds", duration, source=name)
        events = list(result.events) if result is not None else []
        for event in events:
            self.metrics.inc("events_total", type=str(event.type))
            _log_event(event)
        if events:
            self._summary_dirty = True
            self._dispatch_soon(self._clock())
        if error is None and result is not None:
            if schedule.logged_failure is not None:
                logger.warning(
                    "source %s: polling works again after %d failed poll(s)",
                    name,
                    schedule.failures,
                )
            elif schedule.failures:
                logger.info(
                    "source %s works again after %d failed poll(s)", name, schedule.failures
                )
            schedule.logged_failure = None
            schedule.failures = 0
            schedule.last_error = None
            schedule.last_error_kind = None
            schedule.rest_until = schedule.rest_reason = None
            schedule.last_success_at = now_wall
            schedule.active = bool(result.active)
            self.metrics.set("source_up", 1, source=name)
            self.metrics.set("source_last_success_timestamp_seconds", now_wall, source=name)
            interval = self._interval(schedule.config, active=schedule.active)
            logger.debug(
                "polled %s: %d record(s), %d event(s), %s, next in %.1fs",
                name,
                result.records,
                len(events),
                "active" if schedule.active else "idle",
                interval,
            )
        else:
            if error is None:  # pragma: no cover - a result without an error is handled above
                error = NotifierError("poll returned no result")
            schedule.failures += 1
            kind = error.kind if isinstance(error, SourceError) else "internal"
            if not isinstance(error, SourceError):
                self._log_unexpected(schedule, error)
            text = error.one_line() if isinstance(error, SourceError) else error_line(error)
            self.metrics.inc("poll_errors_total", source=name, kind=kind)
            self.metrics.set("source_up", 0, source=name)
            interval = self._failure_interval(schedule.config, schedule.failures, error)
            # the pipeline logs every failed fetch; here only what the scheduler decides
            if isinstance(error, SignatureRejected):
                logger.warning(
                    "%s: the AK/SK signature was refused; not polling it for %.0fs "
                    "(repeated refusals lock the key)",
                    name,
                    interval,
                )
            else:
                logger.debug(
                    "%s: %d failed poll(s) in a row (%s); next try in %.0fs",
                    name,
                    schedule.failures,
                    kind,
                    interval,
                )
            schedule.last_error = text
            schedule.last_error_kind = kind
            if isinstance(error, AuthError):
                self._note_rest(schedule)
        self.metrics.set("source_consecutive_failures", schedule.failures, source=name)
        schedule.next_at = self._clock() + interval

    def _log_unexpected(self, schedule: SourceSchedule, error: BaseException) -> None:
        """A poll that failed outside the source (full disk, read-only database, a bug):
        logged in full once per kind, then one debug line per poll until one works."""
        kind = failure_kind(error)
        if kind == schedule.logged_failure:
            logger.debug(
                "polling source %s failed again (%d in a row): %s",
                schedule.name,
                schedule.failures + 1,
                error_line(error),
            )
            return
        schedule.logged_failure = kind
        logger.error(
            "polling source %s failed: %s (logged once until it works again or fails differently)",
            schedule.name,
            error_line(error),
            exc_info=None if isinstance(error, StoreError) else error,
        )

    def _jittered(self, seconds: float) -> float:
        jitter = self.config.service.poll_jitter
        if jitter <= 0:
            return seconds
        return seconds * (1 + jitter * self._rng.uniform(-1.0, 1.0))

    def _interval(self, source: SourceConfig, *, active: bool) -> float:
        service = self.config.service
        base = service.active_poll_interval if active else service.poll_interval
        if service.poll_mode == "incremental":  # the complete listing is due by then
            base = min(base, service.full_poll_interval)
        return self._jittered(base)

    def _failure_interval(self, source: SourceConfig, failures: int, error: BaseException) -> float:
        service = self.config.service
        backoff = service.active_poll_interval * 2 ** min(failures - 1, 20)
        delay = self._jittered(min(service.poll_interval, backoff))
        hint = getattr(error, "retry_after", None)
        if isinstance(error, SignatureRejected):
            floor = getattr(error, "min_backoff", SIGNATURE_BACKOFF)
            if isinstance(hint, int | float) and hint > floor:
                floor = hint
            return max(delay, float(floor))
        if isinstance(hint, int | float) and hint > 0:
            return max(delay, float(hint))
        return delay

    # -- delivery --

    def _dispatch_soon(self, when: float) -> None:
        """Dispatch at ``when`` or earlier as planned, but never inside a failure backoff."""
        self._dispatch_at = max(min(self._dispatch_at, when), self._dispatch_not_before)

    def _maybe_dispatch(self) -> None:
        if self._dispatch_job is not None or self._components is None:
            return
        now = self._clock()
        if now >= self._recheck_at:
            self._recheck_outbox(now)
        if now < self._dispatch_at or now < self._dispatch_not_before:
            return
        components = self._components
        self._dispatch_at = math.inf  # set again when the dispatch reports (or fails)
        self._dispatch_job = self._submit(components.dispatcher.dispatch_due)

    def _note_rest(self, schedule: SourceSchedule) -> None:
        """After a refused login or signature: the rest the poll stored, if any."""
        state = self._known_states().get(schedule.name)
        rest_ms = getattr(state, "rest_until", None)
        if isinstance(rest_ms, int) and rest_ms > self._wall() * 1000:
            schedule.rest_until = rest_ms / 1000
            schedule.rest_reason = getattr(state, "last_error", None) or schedule.last_error
        else:
            schedule.rest_until = schedule.rest_reason = None

    def _recheck_rests(self, now: float) -> None:
        """Poll a resting source at once when its stored rest was cleared (``source
        clear-rest``: the credentials were fixed) or ended."""
        resting = [s for s in self._schedules.values() if s.rest_until is not None]
        if not resting:
            return
        states = self._known_states()
        wall_ms = self._wall() * 1000
        for schedule in resting:
            stored = getattr(states.get(schedule.name), "rest_until", None)
            if isinstance(stored, int) and stored > wall_ms:
                continue
            logger.info("%s: the credential rest is over; polling it now", schedule.name)
            schedule.rest_until = schedule.rest_reason = None
            if schedule.job is None:
                schedule.next_at = min(schedule.next_at, now)

    def _recheck_outbox(self, now: float) -> None:
        """Notice rows others made due (``outbox retry``): one cheap indexed query."""
        self._recheck_at = now + OUTBOX_RECHECK
        self._recheck_rests(now)
        try:
            earliest = next_attempt_at(self.engine, self._channel_names())
        except NotifierError as exc:
            logger.debug("cannot look at the outbox: %s", exc)
            return
        if earliest is not None:
            self._dispatch_soon(now + max(0.0, earliest / 1000 - self._wall()))

    def _dispatch_failed(self, exc: BaseException) -> None:
        """Back off (DISPATCH_RETRY doubling up to DISPATCH_FAILURE_BACKOFF_MAX); log the
        traceback once per kind of failure, later ones of that kind as one debug line."""
        self._dispatch_failures += 1
        delay = min(
            DISPATCH_FAILURE_BACKOFF_MAX,
            DISPATCH_RETRY * 2 ** min(self._dispatch_failures - 1, 16),
        )
        now = self._clock()
        self._dispatch_not_before = now + delay
        self._dispatch_at = self._dispatch_not_before
        kind = type(exc).__name__
        if kind not in self._dispatch_error_kinds:
            self._dispatch_error_kinds.add(kind)
            logger.error(
                "dispatching deliveries failed (%s); retrying in %.0fs, backing off while it "
                "keeps failing (logged once per kind of failure)",
                error_line(exc),
                delay,
                exc_info=None if is_outage(exc) else exc,
            )
        else:
            logger.debug(
                "dispatching deliveries failed again (%d in a row: %s); retrying in %.0fs",
                self._dispatch_failures,
                error_line(exc),
                delay,
            )

    def _dispatch_succeeded(self) -> None:
        if self._dispatch_failures:
            logger.info(
                "dispatching deliveries works again after %d failed attempt(s)",
                self._dispatch_failures,
            )
        self._dispatch_failures = 0
        self._dispatch_error_kinds.clear()
        self._dispatch_not_before = -math.inf

    def _channel_names(self) -> list[str]:
        return [channel.name for channel in self.config.channels]

    def _record_dispatch(self, stats: Any) -> None:
        counts = dispatch_counts(stats)
        for result, count in counts.items():
            if count:
                self.metrics.inc("deliveries_total", count, result=result)
        # next run: when the earliest pending row is due (refreshed below); when this run
        # attempted nothing although rows were due, do not spin on them
        self._idle_dispatch = bool(counts) and not any(counts.values())
        self._refresh_summary(force=True)
        self._schedule_dispatch_from_summary()

    def _schedule_dispatch_from_summary(self) -> None:
        summary = self._summary
        now = self._clock()
        if summary.due:
            delay = DISPATCH_RETRY if self._idle_dispatch else 0.0
            self._dispatch_at = max(now + delay, self._dispatch_not_before)
            return
        if summary.next_attempt_at is not None:
            delay = max(0.0, summary.next_attempt_at / 1000 - self._wall())
            self._dispatch_soon(now + delay)

    def _refresh_summary(self, *, force: bool = False) -> None:
        now = self._clock()
        if not force and not self._summary_dirty and now - self._summary_at < SUMMARY_MAX_AGE:
            return
        try:
            self._summary = outbox_summary(
                self.engine, int(self._wall() * 1000), self._channel_names()
            )
        except NotifierError as exc:
            if not self._summary_failing:  # once per outage, not every cycle
                logger.warning("cannot read the outbox: %s", error_line(exc))
            self._summary_failing = True
            return
        self._summary_failing = False
        self._summary_at = now
        self._summary_dirty = False
        summary = self._summary
        self.metrics.set("outbox_depth", summary.pending)
        self.metrics.set("outbox_dead", summary.dead)
        age = summary.oldest_pending_age(int(self._wall() * 1000))
        self.metrics.set("outbox_oldest_pending_age_seconds", age or 0.0)
        if self._dispatch_job is None:
            self._schedule_dispatch_from_summary()

    # -- timing, watchdog, status --

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
        delay = min(deadlines) - now
        if self.options.watchdog_interval:
            delay = min(delay, self.options.watchdog_interval)
        return max(0.0, min(delay, 3600.0))

    def _hung_sources(self) -> list[str]:
        now = self._clock()
        hung = []
        for schedule in self._schedules.values():
            started = schedule.job_started
            if started is not None and now - started > stuck_after(schedule.config):
                hung.append(schedule.name)
                if not schedule.stuck_reported:
                    schedule.stuck_reported = True
                    logger.error(
                        "polling %s has been running for %.0fs: it hangs; "
                        "no more watchdog pings so systemd restarts the service",
                        schedule.name,
                        now - started,
                    )
        return hung

    def _feed_watchdog(self) -> None:
        if not self.options.watchdog_interval:
            return
        if self._hung_sources() or self._database_lost is not None:
            return
        self.notifier.watchdog()
        self._last_watchdog = self._clock()

    def status_line(self) -> str:
        schedules = list(self._schedules.values())
        polled = [s.last_poll_at for s in schedules if s.last_poll_at is not None]
        parts = []
        if self._database_lost is not None:
            parts.append("DATABASE LOST, not polling")
        if polled:
            parts.append(f"last poll {_clock_text(max(polled))}")
        else:
            parts.append("no poll yet")
        failing = [s.name for s in schedules if s.failures]
        if failing:
            parts.append(f"failing: {', '.join(sorted(failing))}")
        active = [s.name for s in schedules if s.active]
        if active:
            parts.append(f"active: {', '.join(sorted(active))}")
        summary = self._summary
        parts.append(f"outbox {summary.pending} pending, {summary.dead} dead")
        if self._leases is not None:
            led = self._leases.led()
            parts.append(f"leads {', '.join(led)}" if led else "standby")
        return "; ".join(parts)

    def _report_status(self) -> None:
        text = self.status_line()
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    def health(self) -> HealthReport:
        """Fresh while the loop goes round and every source succeeded recently enough."""
        service = self.config.service
        http = service.http
        stale_after = http.stale_after if http is not None and http.stale_after > 0 else 0.0
        if not stale_after:
            stale_after = 3 * service.poll_interval + service.unreachable_after
        now = self._wall()
        reasons: list[str] = []
        loop_age = now - self._last_cycle_wall
        watchdog_bound = max(stale_after, 3 * (self.options.watchdog_interval or 0))
        if loop_age > watchdog_bound:
            reasons.append(f"the run loop last went round {loop_age:.0f}s ago")
        sources: dict[str, Any] = {}
        for schedule in self._schedules.values():
            # a restart gets a fresh window: downtime before it is not the loop's fault
            age = now - max(schedule.last_success_at or 0.0, self._started_wall)
            sources[schedule.name] = {
                "last_success": _iso(schedule.last_success_at),
                "consecutive_failures": schedule.failures,
                "last_error": schedule.last_error,
                "resting_until": _iso(schedule.rest_until),
                "rest_reason": schedule.rest_reason,
            }
            if self._leases is not None:
                leads = self._leases.leads(schedule.name)
                sources[schedule.name]["leader"] = leads
                if not leads:
                    continue  # another instance polls it: its freshness is not ours to judge
            if age > stale_after:
                reasons.append(f"source {schedule.name}: no successful poll for {age:.0f}s")
        if self._database_lost is not None:
            reasons.append(self._database_lost)
        if self._stop.is_set():
            reasons.append("stopping")
        details = {
            "sources": sources,
            "outbox": {"pending": self._summary.pending, "dead": self._summary.dead},
            "stale_after": stale_after,
        }
        if self._leases is not None:
            details["instance"] = self._leases.holder
            details["cluster"] = self._cluster_view()
        return HealthReport(not reasons, tuple(reasons), details)

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

    def _cluster_view(self) -> Any:
        """Every instance on the database and what it leads (for ``/healthz``)."""
        from notifier.store.lease import leadership

        try:
            view = leadership(self.engine)
        except NotifierError as exc:
            return {"error": str(exc)}
        return None if view is None else view.to_dict()

    # -- reload --

    def reload(self) -> bool:
        """Re-read the config (SIGHUP); keep the running one when the new one is invalid."""
        if self._loader is None:
            logger.warning("reload requested, but this daemon has no config file to re-read")
            return False
        self.notifier.reloading()
        try:
            try:
                new = self._loader()
            except ConfigError as exc:
                logger.error(
                    "reload: the new configuration is invalid, keeping the running one:\n%s",
                    "\n".join(str(problem) for problem in exc.problems) or str(exc),
                )
                return False
            old = self.config
            if new.service.database != old.service.database:
                logger.warning(
                    "reload: service.database changed; a new database needs a restart, "
                    "still using the current one"
                )
                new = dataclasses.replace(
                    new, service=dataclasses.replace(new.service, database=old.service.database)
                )
            try:
                components = self._factory(new, self.engine)
            except NotifierError as exc:
                logger.error(
                    "reload: cannot apply the new configuration (%s); keeping the running one", exc
                )
                return False
            if self._components is not None:
                adopt = getattr(components.poller, "adopt_clients", None)
                if callable(adopt):  # keep unchanged sources' clients (and their IAM tokens)
                    adopt(self._components.poller)
                self._retired.append(self._components)
            self._components = components
            self.config = new
            self._apply_sources(new.sources)
            if self._on_reload is not None:
                try:
                    self._on_reload(old, new)
                except Exception:
                    logger.exception("reload: applying the new settings failed")
            logger.info(
                "reloaded %s: %d source(s), %d channel(s)",
                new.path or "the configuration",
                len(new.sources),
                len(new.channels),
            )
            self._dispatch_soon(self._clock())
            self._recheck_at = -math.inf
            return True
        finally:
            self.notifier.ready(self.status_line())

    def _apply_sources(self, sources: Sequence[SourceConfig]) -> None:
        now = self._clock()
        wanted = {source.name: source for source in sources}
        for name in list(self._schedules):
            if name not in wanted:
                logger.info("reload: source %s removed", name)
                del self._schedules[name]
                self.metrics.remove("source_up", source=name)
                self.metrics.remove("leader", source=name)
                self.metrics.remove("source_consecutive_failures", source=name)
                self.metrics.remove("source_last_success_timestamp_seconds", source=name)
        for name, source in wanted.items():
            schedule = self._schedules.get(name)
            if schedule is None:
                logger.info("reload: source %s added", name)
                self._schedules[name] = SourceSchedule(config=source, next_at=now)
                continue
            if schedule.config != source:
                schedule.next_at = now  # new endpoint, filters or credentials: poll at once
            schedule.config = source
            if schedule.job is None and not schedule.failures:
                limit = now + self._interval(source, active=schedule.active)
                schedule.next_at = min(schedule.next_at, limit)

    def _close_retired(self) -> None:
        if not self._retired:
            return
        busy = any(s.job is not None for s in self._schedules.values())
        if busy or self._dispatch_job is not None:
            return
        for components in self._retired:
            components.close()
        self._retired.clear()

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
        self._refresh_summary(force=True)
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
            self._record_dispatch(stats)  # refreshes the summary
            self._ping_during_stop()
            if self._idle_dispatch or self._summary.due >= due_before:
                break  # no progress: what is due cannot be sent now
        self._refresh_summary(force=True)
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
        if self.options.watchdog_interval and not self._hung_sources():
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


#: ``DispatchStats`` field -> ``deliveries_total{result=...}`` label
DELIVERY_RESULTS: Final = {
    "sent": "sent",
    "failed": "retry",
    "retried": "retry",
    "dead": "dead",
    "deferred": "deferred",
}


def dispatch_counts(stats: Any) -> dict[str, int]:
    """Delivery counts by result label from a ``DispatchStats`` (or a mapping of them)."""
    counts: dict[str, int] = {}
    if stats is None:
        return counts
    for field_name, label in DELIVERY_RESULTS.items():
        if isinstance(stats, Mapping):
            value = stats.get(field_name)
        else:
            value = getattr(stats, field_name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            counts[label] = counts.get(label, 0) + value
    return counts


def _log_event(event: Event) -> None:
    if str(event.type).startswith("source."):
        return  # the pipeline logs health changes when it records them
    logger.info("%s", describe(event))


def failure_kind(error: BaseException) -> str:
    """What makes two failures "the same kind": the error type and the database's own
    message (``database or disk is full``, ``attempt to write a readonly database``)."""
    cause: BaseException | None = error
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    original = getattr(cause, "orig", None) or cause
    detail = " ".join(str(original).split())[:80]
    return f"{type(error).__name__}/{type(original).__name__}: {detail}"


def _seconds(milliseconds: int | None) -> float | None:
    return None if milliseconds is None else milliseconds / 1000


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clock_text(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- the service: everything `bcs-notifier run` does around the loop ------------------------


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
