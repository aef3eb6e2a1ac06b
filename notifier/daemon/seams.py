"""The seams of the run loop: what it needs of a poller and a dispatcher, the components
built from one config, the executors its jobs run on, its self-pipe wake-up, and the state
it keeps per source (:class:`SourceSchedule`)."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from notifier.config import Config, SourceConfig
from notifier.errors import SourceError
from notifier.model import Event

if TYPE_CHECKING:
    from notifier.store.db import Engine

logger = logging.getLogger("notifier.daemon")


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


@dataclass
class PollOutcome:
    """A finished poll job: the poller's result, or what it raised, and how long it took."""

    result: PollResultLike | None
    error: BaseException | None
    duration: float


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


ComponentFactory: TypeAlias = "Callable[[Config, Engine], Components]"


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


@dataclass
class SourceSchedule:
    config: SourceConfig
    next_at: float  # monotonic seconds
    job: Future[Any] | None = None
    job_started: float | None = None  # monotonic seconds
    active: bool = False
    failures: int = 0
    last_poll_at: int | None = None  # wall time, ms
    last_success_at: int | None = None  # wall time, ms
    last_error: str | None = None
    last_error_kind: str | None = None
    stuck_reported: bool = False
    #: the stored credential rest (wall time, ms) after a refused login or signature,
    #: and why; ``source clear-rest`` ends it early
    rest_until: int | None = None
    rest_reason: str | None = None
    #: the kind of unexpected failure (a store error, a bug) last logged in full: the same
    #: kind again is one debug line, until a poll works again
    logged_failure: str | None = None

    @property
    def name(self) -> str:
        return self.config.name
