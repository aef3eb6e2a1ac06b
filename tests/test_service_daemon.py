"""The run loop against fakes: a scripted poller and dispatcher, an injected clock, a real
SQLite store migrated by Alembic (for the outbox queries), real sockets where systemd is
involved."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clock_support import FakeClock as SharedFakeClock
from config_support import config_toml, source, token_auth
from net_support import NotifyListener
from sqlalchemy import Engine, func, insert, select, update

from notifier.config import Config, SourceConfig, parse_config
from notifier.daemon import (
    OUTBOX_RECHECK,
    Components,
    Daemon,
    DaemonOptions,
    InlineExecutor,
    dispatch_counts,
)
from notifier.errors import (
    ConfigError,
    ConfigProblem,
    SignatureRejected,
    StoreError,
    TransportError,
)
from notifier.health import Metrics
from notifier.model import Event, EventType
from notifier.outbox import DispatchStats, counts_by_state, retry
from notifier.store.schema import event_groups, outbox
from notifier.systemd import SystemdNotifier

EPOCH = 1_700_000_000.0


def make_config(database: str, sources: tuple[str, ...] = ("a",), **service: Any) -> Config:
    settings = {"poll_interval": 60, "active_poll_interval": 5, "poll_jitter": 0} | service
    text = config_toml(
        service={"database": database, **settings},
        sources=[source(name, auth=token_auth(f"secret-token-{name}")) for name in sources],
    )
    return parse_config(text)


class FakeClock(SharedFakeClock):
    """The shared fake clock (both readings move only when the loop waits), starting at
    monotonic 0 and wall ``EPOCH``; once a wait passes ``stop_at`` the daemon is asked to
    stop (after ``on_stop``)."""

    def __init__(self) -> None:
        super().__init__(0.0, wall_start_ms=int(EPOCH * 1000))
        self.stop_at: float | None = None
        self.on_stop: Callable[[], None] | None = None
        self.daemon: Daemon | None = None

    def wait(self, seconds: float) -> None:
        super().wait(seconds)
        if self.stop_at is not None and self.now >= self.stop_at and self.daemon is not None:
            if self.on_stop is not None and not self.daemon.stopping:
                self.on_stop()
            self.daemon.request_stop()


@dataclass(frozen=True)
class Result:
    source: str
    events: tuple[Event, ...] = ()
    active: bool = False
    error: Any = None
    records: int = 0
    duration: float = 0.01


Script = Callable[[str, float, int], Result]


@dataclass
class FakePoller:
    clock: FakeClock
    script: Script
    calls: list[tuple[str, float]] = field(default_factory=list)
    closed: bool = False

    def poll_source(self, source: SourceConfig, /) -> Result:
        count = sum(1 for name, _ in self.calls if name == source.name)
        self.calls.append((source.name, self.clock.now))
        return self.script(source.name, self.clock.now, count)

    def times(self, name: str) -> list[float]:
        return [at for source, at in self.calls if source == name]

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeDispatcher:
    clock: FakeClock
    engine: Engine | None = None
    deliver: bool = True
    calls: list[tuple[float, int | None]] = field(default_factory=list)

    def dispatch_due(self, limit: int | None = None) -> dict[str, int]:
        self.calls.append((self.clock.now, limit))
        if not self.deliver or self.engine is None:
            return {"sent": 0, "retried": 0, "dead": 0}
        due = (
            select(outbox.c.id)
            .where(
                outbox.c.state == "pending",
                outbox.c.next_attempt_at <= self.clock.wall_ms(),
            )
            .limit(limit if limit is not None else -1)
        )
        with self.engine.begin() as connection:
            ids = list(connection.execute(due).scalars())
            connection.execute(update(outbox).where(outbox.c.id.in_(ids)).values(state="sent"))
        sent = len(ids)
        return {"sent": sent, "retried": 0, "dead": 0}


@dataclass
class FlakyDispatcher(FakeDispatcher):
    """Raises ``error`` while it is set; ends the run if the loop calls it in a tight loop
    (so a regression fails the test instead of hanging it)."""

    error: Exception | None = None

    def dispatch_due(self, limit: int | None = None) -> dict[str, int]:
        if len(self.calls) >= 199 and self.clock.daemon is not None:
            self.clock.daemon.request_stop()
        if self.error is not None:
            self.calls.append((self.clock.now, limit))
            raise self.error
        return super().dispatch_due(limit)


def idle(name: str, _now: float, _count: int) -> Result:
    return Result(name)


def event(source: str = "a", kind: EventType = EventType.OPERATION_STATUS_CHANGED) -> Event:
    return Event(
        id=f"evt_{source}_{kind}",
        type=kind,
        source=source,
        operation_id="BCSSVC01-99-1",
        record_time=1,
        from_status="waiting",
        to_status="processing",
    )


def build(
    config: Config,
    engine: Engine,
    clock: FakeClock,
    script: Script = idle,
    *,
    dispatcher: FakeDispatcher | None = None,
    **kwargs: Any,
) -> tuple[Daemon, FakePoller, FakeDispatcher]:
    poller = FakePoller(clock, script)
    dispatch = dispatcher or FakeDispatcher(clock, engine)
    daemon = Daemon(
        config,
        engine,
        components=lambda _config, _engine: Components(poller, dispatch),
        clock=clock,
        wait=clock.wait,
        executor=InlineExecutor(),
        **kwargs,
    )
    clock.daemon = daemon
    return daemon, poller, dispatch


def start_in_thread(
    config: Config, engine: Engine, poller: Any, *, workers: int
) -> tuple[Daemon, threading.Thread]:
    """A daemon on real time with a real thread pool, running in its own thread."""
    daemon = Daemon(
        config,
        engine,
        components=lambda _c, _e: Components(poller, FakeDispatcher(FakeClock())),
        executor=ThreadPoolExecutor(max_workers=workers),
    )
    thread = threading.Thread(target=daemon.run)
    thread.start()
    return daemon, thread


def run_for(daemon: Daemon, clock: FakeClock, seconds: float) -> int:
    clock.stop_at = clock.now + seconds
    return daemon.run()


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


def add_pending(engine: Engine, count: int, now_ms: int, *, due_in_ms: int = 0) -> None:
    with engine.begin() as connection:
        for index in range(count):
            group = f"grp_{now_ms}_{index}"
            connection.execute(
                insert(event_groups).values(
                    id=group, source="a", operation_id="op", created_at=now_ms, record=None
                )
            )
            connection.execute(
                insert(outbox).values(
                    group_id=group,
                    channel="chat",
                    state="pending",
                    attempts=0,
                    created_at=now_ms,
                    next_attempt_at=now_ms + due_in_ms,
                    updated_at=now_ms,
                    done_targets="[]",
                )
            )


def pending(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(outbox).where(outbox.c.state == "pending")
            ).scalar_one()
        )


def with_chat(config: Config) -> Config:
    """``add_pending`` writes rows of channel "chat"; rows of a channel that is not
    configured wait untouched, so configure it."""
    import dataclasses

    from notifier.config import ChannelConfig

    return dataclasses.replace(config, channels=(ChannelConfig(name="chat", urls=("console://",)),))


# -- scheduling ------------------------------------------------------------------------------


def test_active_rate_while_an_operation_runs_then_idle_rate(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()

    def script(name: str, now: float, _count: int) -> Result:
        return Result(name, active=now < 30)

    daemon, poller, _ = build(make_config(database_url), engine, clock, script)
    assert run_for(daemon, clock, 300) == 0
    assert poller.times("a")[:8] == [0, 5, 10, 15, 20, 25, 30, 90]
    assert set(gaps(poller.times("a"))[6:]) == {60}


def test_polls_follow_the_monotonic_clock_and_status_the_wall_clock(
    engine: Engine, database_url: str
) -> None:
    """The wall clock jumping (NTP, a VM resumed) moves no poll: intervals are measured on
    the monotonic reading; what is stored and shown is wall time in ms."""
    clock = FakeClock()

    def jump() -> None:
        clock.wall_start_ms += 86_400_000  # a day ahead at monotonic 90

    clock.at[90.0] = jump
    daemon, poller, _ = build(make_config(database_url), engine, clock)
    assert run_for(daemon, clock, 200) == 0
    assert poller.times("a") == [0, 60, 120, 180]
    schedule = daemon.schedules["a"]
    assert schedule.last_poll_at == int(EPOCH * 1000) + 86_400_000 + 180_000
    assert isinstance(schedule.last_success_at, int)
    assert daemon.health().details["sources"]["a"]["last_success"] == "2023-11-15T22:16:20Z"
    assert "last poll 2023-11-15 22:16:20Z" in daemon.status_line()


@pytest.mark.parametrize(
    ("mode", "idle_gap"), [("incremental", 40), ("full", 60)], ids=["incremental", "full"]
)
def test_an_idle_source_is_polled_by_the_time_a_complete_listing_is_due(
    engine: Engine, database_url: str, mode: str, idle_gap: int
) -> None:
    config = make_config(database_url, poll_mode=mode, full_poll_interval=40)
    clock = FakeClock()
    daemon, poller, _ = build(config, engine, clock)
    assert run_for(daemon, clock, 300) == 0
    assert set(gaps(poller.times("a"))) == {idle_gap}


def test_jitter_spreads_polls_within_the_configured_fraction(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()
    config = make_config(database_url, poll_jitter=0.1)
    daemon, poller, _ = build(config, engine, clock, options=DaemonOptions(jitter_seed=7))
    run_for(daemon, clock, 60 * 40)
    intervals = gaps(poller.times("a"))
    assert len(intervals) >= 30
    assert all(54 <= gap <= 66 for gap in intervals)
    assert len(set(intervals)) > 10  # not all the same


def test_failures_back_off_from_the_active_to_the_idle_interval(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()

    def script(name: str, _now: float, count: int) -> Result:
        if count < 6:
            return Result(name, error=TransportError("connect timeout"))
        return Result(name)

    daemon, poller, _ = build(make_config(database_url), engine, clock, script)
    run_for(daemon, clock, 400)
    assert gaps(poller.times("a"))[:7] == [5, 10, 20, 40, 60, 60, 60]
    assert daemon.schedules["a"].failures == 0
    assert daemon.metrics.value("poll_errors_total", source="a", kind="transport") == 6


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 300), (600.0, 600), (10.0, 300)],
    ids=["min-backoff-300s", "longer-hint", "shorter-hint-ignored"],
)
def test_a_refused_signature_pauses_the_source_for_the_lock_out(
    engine: Engine, database_url: str, retry_after: float | None, expected: float
) -> None:
    clock = FakeClock()

    def script(name: str, _now: float, count: int) -> Result:
        if count == 0:
            error = SignatureRejected(status=401, code="APIGW.0301", message="bad signature")
            if retry_after is not None:
                error.retry_after = retry_after  # type: ignore[attr-defined]
            return Result(name, error=error)
        return Result(name, active=True)

    daemon, poller, _ = build(make_config(database_url), engine, clock, script)
    run_for(daemon, clock, 1000)
    times = poller.times("a")
    assert times[:2] == [0, expected]
    assert gaps(times)[1] == 5  # active rate again after the pause


def test_clearing_a_stored_rest_polls_the_source_again_at_once(
    engine: Engine, database_url: str
) -> None:
    """The rest a refused signature stored shows in /healthz; ``source clear-rest`` (the
    stored rest cleared) ends it: the loop polls the source within OUTBOX_RECHECK."""
    from notifier.store.repository import Repository

    repository = Repository(engine)
    seen: list[dict[str, Any]] = []

    class Clock(FakeClock):
        def wait(self, seconds: float) -> None:
            super().wait(seconds)
            if self.now >= 30 and not seen and self.daemon is not None:
                seen.append(dict(self.daemon.health().details["sources"]["a"]))
                repository.clear_rest("a")

    clock = Clock()

    def script(name: str, now: float, count: int) -> Result:
        if count == 0:  # what the pipeline does on a refusal: store the rest, then fail
            repository.save_rest(name, clock.wall_ms() + 300_000)
            error = SignatureRejected(status=401, code="APIGW.0301", message="bad signature")
            return Result(name, error=error)
        return Result(name, active=True)

    daemon, poller, _ = build(make_config(database_url), engine, clock, script)
    run_for(daemon, clock, 100)

    (health,) = seen
    assert health["resting_until"] == "2023-11-14T22:18:20Z"  # 300 s after the refusal
    assert "APIGW.0301" in health["rest_reason"]
    times = poller.times("a")
    assert times[0] == 0
    assert 30 <= times[1] <= 30 + OUTBOX_RECHECK + 1  # not 300 s later
    assert daemon.health().details["sources"]["a"]["resting_until"] is None


def test_a_hanging_source_never_delays_another(engine: Engine, database_url: str) -> None:
    release = threading.Event()
    polled: dict[str, int] = {"fast": 0, "slow": 0}
    config = make_config(
        database_url, sources=("slow", "fast"), poll_interval=1, active_poll_interval=0.2
    )

    class Poller:
        def poll_source(self, source: SourceConfig, /) -> Result:
            polled[source.name] += 1
            if source.name == "slow":
                release.wait(120)
            return Result(source.name, active=True)

    daemon, thread = start_in_thread(config, engine, Poller(), workers=4)
    try:
        deadline = time.monotonic() + 60
        while polled["fast"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert polled["fast"] >= 5
        assert polled["slow"] == 1  # still in its first poll, and only one at a time
    finally:
        release.set()
        daemon.request_stop()
        thread.join(10)
    assert not thread.is_alive()


def test_an_unexpected_exception_in_a_poll_keeps_the_loop_alive(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()

    def script(name: str, _now: float, count: int) -> Result:
        if count == 0:
            raise RuntimeError("bug in the pipeline")
        return Result(name)

    daemon, poller, _ = build(make_config(database_url), engine, clock, script)
    with caplog.at_level(logging.ERROR):
        assert run_for(daemon, clock, 200) == 0
    assert poller.times("a")[:3] == [0, 5, 65]
    assert daemon.metrics.value("poll_errors_total", source="a", kind="internal") == 1
    assert "bug in the pipeline" in caplog.text


# -- delivery --------------------------------------------------------------------------------


def test_events_are_dispatched_right_after_the_poll_that_found_them(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()

    def script(name: str, now: float, _count: int) -> Result:
        if now == 120:
            add_pending(engine, 2, clock.wall_ms())
            return Result(name, events=(event(),))
        return Result(name)

    daemon, _, dispatcher = build(make_config(database_url), engine, clock, script)
    run_for(daemon, clock, 200)
    assert 120 in [at for at, _ in dispatcher.calls]
    assert pending(engine) == 0
    assert daemon.metrics.value("deliveries_total", result="sent") == 2
    assert daemon.metrics.value("events_total", type="operation.status_changed") == 1


def test_a_scheduled_retry_is_dispatched_when_it_falls_due(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()
    add_pending(engine, 1, clock.wall_ms(), due_in_ms=42_000)
    daemon, _, dispatcher = build(with_chat(make_config(database_url)), engine, clock)
    run_for(daemon, clock, 50)
    assert next(at for at, _ in dispatcher.calls if at > 0) == pytest.approx(42, abs=0.01)
    assert pending(engine) == 0


def test_a_failing_dispatcher_does_not_stop_polling(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()

    class Broken(FakeDispatcher):
        def dispatch_due(self, limit: int | None = None) -> dict[str, int]:
            super().dispatch_due(limit)
            raise OSError("channel exploded")

    dispatcher = Broken(clock)
    daemon, poller, _ = build(make_config(database_url), engine, clock, dispatcher=dispatcher)
    with caplog.at_level(logging.ERROR):
        run_for(daemon, clock, 300)
    assert len(poller.times("a")) == 5
    assert "channel exploded" in caplog.text


def test_a_failing_dispatch_backs_off_and_logs_once(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    add_pending(engine, 1, clock.wall_ms() - 1000)
    dispatcher = FlakyDispatcher(clock, engine, error=StoreError("database is locked"))
    daemon, _, _ = build(with_chat(make_config(database_url)), engine, clock, dispatcher=dispatcher)
    with caplog.at_level(logging.DEBUG, logger="notifier.daemon"):
        run_for(daemon, clock, 300)
    calls = [at for at, _ in dispatcher.calls]
    assert len(calls) <= 8, calls[:10]
    pauses = [later - earlier for earlier, later in itertools.pairwise(calls)]
    assert pauses == sorted(pauses)  # growing pauses
    assert pauses[0] >= 5
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "database is locked" in errors[0].getMessage()


def test_dispatching_resumes_after_the_failure_clears(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    add_pending(engine, 1, clock.wall_ms() - 1000)
    dispatcher = FlakyDispatcher(clock, engine, error=StoreError("database is locked"))

    def heal() -> None:
        dispatcher.error = None

    clock.at[20.0] = heal
    daemon, _, _ = build(with_chat(make_config(database_url)), engine, clock, dispatcher=dispatcher)
    with caplog.at_level(logging.INFO, logger="notifier.daemon"):
        run_for(daemon, clock, 120)
    assert counts_by_state(engine)["sent"] == 1
    assert "works again after" in caplog.text


def test_outbox_retry_is_noticed_within_the_recheck_interval(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()
    now_ms = clock.wall_ms()
    add_pending(engine, 1, now_ms - 1000, due_in_ms=1000 + 10**9)  # a retry far in the future
    dispatcher = FlakyDispatcher(clock, engine)

    def retry_now() -> None:
        retry(engine, now_ms=clock.wall_ms(), include_pending=True)

    clock.at[91.0] = retry_now  # just after a summary refresh (every 30 s)
    daemon, _, _ = build(with_chat(make_config(database_url)), engine, clock, dispatcher=dispatcher)
    run_for(daemon, clock, 200)
    after = [at for at, _ in dispatcher.calls if at >= 91.0]
    assert after, dispatcher.calls
    assert after[0] - 91.0 <= OUTBOX_RECHECK + 0.01  # not the 30 s summary refresh
    assert counts_by_state(engine)["sent"] == 1


# -- stop ------------------------------------------------------------------------------------


def test_stop_gives_due_deliveries_a_grace_period(engine: Engine, database_url: str) -> None:
    clock = FakeClock()
    dispatcher = FakeDispatcher(clock, engine)
    config = with_chat(make_config(database_url))
    daemon, _, _ = build(config, engine, clock, dispatcher=dispatcher)
    # 25 rows become due just as SIGTERM arrives
    clock.on_stop = lambda: add_pending(engine, 25, clock.wall_ms())
    assert run_for(daemon, clock, 60) == 0
    assert pending(engine) == 0
    assert [limit for at, limit in dispatcher.calls if at >= 60] == [10, 10, 10]


def test_stop_keeps_undeliverable_rows_in_the_outbox(engine: Engine, database_url: str) -> None:
    clock = FakeClock()
    add_pending(engine, 3, clock.wall_ms())
    dispatcher = FakeDispatcher(clock, engine, deliver=False)
    daemon, _, _ = build(make_config(database_url), engine, clock, dispatcher=dispatcher)
    assert run_for(daemon, clock, 10) == 0
    assert pending(engine) == 3  # nothing lost: the next start delivers them


def test_stop_waits_for_the_poll_in_progress(engine: Engine, database_url: str) -> None:
    started = threading.Event()
    proceed = threading.Event()
    finished = threading.Event()
    config = make_config(database_url, poll_interval=1, active_poll_interval=0.2)

    class Poller:
        def poll_source(self, source: SourceConfig, /) -> Result:
            started.set()
            proceed.wait(120)
            finished.set()
            return Result(source.name)

    daemon, thread = start_in_thread(config, engine, Poller(), workers=2)
    try:
        assert started.wait(60)
        daemon.request_stop()
        thread.join(0.5)
        assert thread.is_alive()  # still waiting for the poll, however long it takes
    finally:
        proceed.set()
    thread.join(60)
    assert finished.is_set()
    assert not thread.is_alive()


# -- reload ----------------------------------------------------------------------------------


def test_reload_adds_a_source_and_an_invalid_config_keeps_the_running_one(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    configs: list[Config | ConfigError] = [
        make_config(database_url, sources=("a", "b")),
        ConfigError([ConfigProblem("service.poll_interval", "must be at least 1, not 0")]),
    ]

    def loader() -> Config:
        item = configs.pop(0)
        if isinstance(item, ConfigError):
            raise item
        return item

    daemon, poller, _ = build(make_config(database_url), engine, clock, config_loader=loader)
    daemon.start()
    daemon.cycle()
    daemon.request_reload()
    daemon.cycle()
    assert poller.times("b") == [0]
    clock.now = 10
    daemon.request_reload()
    with caplog.at_level(logging.ERROR):
        daemon.cycle()
    assert "service.poll_interval: must be at least 1" in caplog.text
    assert [source.name for source in daemon.config.sources] == ["a", "b"]
    assert set(daemon.schedules) == {"a", "b"}


def test_reload_drops_a_removed_source_and_closes_the_old_poller(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()
    pollers: list[FakePoller] = []

    def factory(_config: Config, _engine: Engine) -> Components:
        pollers.append(FakePoller(clock, idle))
        return Components(pollers[-1], FakeDispatcher(clock, engine))

    daemon = Daemon(
        make_config(database_url, sources=("a", "b")),
        engine,
        components=factory,
        config_loader=lambda: make_config(database_url, sources=("a",)),
        clock=clock,
        wait=clock.wait,
        executor=InlineExecutor(),
    )
    daemon.start()
    daemon.cycle()
    daemon.request_reload()
    clock.now = 100
    daemon.cycle()
    assert set(daemon.schedules) == {"a"}
    assert pollers[0].closed
    assert pollers[1].times("a") == [100]


# -- systemd, status, health -----------------------------------------------------------------


@pytest.fixture
def notify_listener(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


def test_watchdog_every_cycle_status_and_stopping_over_a_real_socket(
    engine: Engine, database_url: str, notify_listener: NotifyListener
) -> None:
    clock = FakeClock()
    notifier = SystemdNotifier(notify_listener.address)
    add_pending(engine, 2, clock.wall_ms(), due_in_ms=10**9)
    daemon, _, _ = build(
        make_config(database_url),
        engine,
        clock,
        notifier=notifier,
        options=DaemonOptions(watchdog_interval=15),
    )
    run_for(daemon, clock, 120)
    notifier.close()
    messages = notify_listener.close()
    watchdogs = [m for m in messages if m == "WATCHDOG=1"]
    assert len(watchdogs) >= 8  # every cycle, and at least every 15 s while idle
    assert max(clock.sleeps) <= 15
    statuses = [m for m in messages if m.startswith("STATUS=")]
    assert any("last poll 2023-11-14 22:" in m and "outbox 2 pending" in m for m in statuses)
    assert any(m.startswith("STOPPING=1") for m in messages)


def test_status_line_names_failing_and_active_sources(engine: Engine, database_url: str) -> None:
    clock = FakeClock()

    def script(name: str, _now: float, _count: int) -> Result:
        if name == "a":
            return Result(name, error=TransportError("down"))
        return Result(name, active=True)

    daemon, _, _ = build(make_config(database_url, sources=("a", "b")), engine, clock, script)
    daemon.start()
    daemon.cycle()
    line = daemon.status_line()
    assert "failing: a" in line
    assert "active: b" in line
    assert "outbox 0 pending, 0 dead" in line


def test_health_goes_stale_when_a_source_keeps_failing(engine: Engine, database_url: str) -> None:
    clock = FakeClock()

    def script(name: str, now: float, _count: int) -> Result:
        return Result(name, error=TransportError("down")) if now > 100 else Result(name)

    config = make_config(database_url, unreachable_after=60)  # stale after 3*60+60 = 240 s
    daemon, _, _ = build(config, engine, clock, script)
    daemon.start()
    for moment in (0, 60, 120, 300, 380):
        clock.now = moment
        daemon.cycle()
        if moment == 300:
            assert daemon.health().healthy
    report = daemon.health()
    assert not report.healthy
    assert report.reasons == ("source a: no successful poll for 320s",)
    assert report.details["sources"]["a"]["last_error"] == "down"


def test_health_goes_stale_when_the_loop_stops_going_round(
    engine: Engine, database_url: str
) -> None:
    clock = FakeClock()
    daemon, _, _ = build(make_config(database_url, unreachable_after=0), engine, clock)
    daemon.start()
    daemon.cycle()
    clock.now = 1000
    report = daemon.health()
    assert not report.healthy
    assert any("run loop" in reason for reason in report.reasons)


EXPECTED_STATS = {"sent": 3, "retry": 2, "dead": 1, "deferred": 4}


@pytest.mark.parametrize(
    ("stats", "expected"),
    [
        ({"sent": 2, "retried": 1, "dead": 0}, {"sent": 2, "retry": 1, "dead": 0}),
        (None, {}),
        (DispatchStats(sent=3, failed=2, dead=1, deferred=4, messages=9), EXPECTED_STATS),
    ],
    ids=["mapping", "none", "dispatch-stats"],
)
def test_dispatch_counts(stats: Any, expected: dict[str, int]) -> None:
    assert dispatch_counts(stats) == expected


def test_metrics_follow_the_polls(engine: Engine, database_url: str) -> None:
    clock = FakeClock()
    metrics = Metrics()
    daemon, _, _ = build(make_config(database_url), engine, clock, metrics=metrics)
    run_for(daemon, clock, 130)
    assert metrics.value("polls_total", source="a") == 3
    assert metrics.value("poll_duration_seconds", source="a") == 3
    assert metrics.value("source_up", source="a") == 1
    assert metrics.value("source_last_success_timestamp_seconds", source="a") == EPOCH + 120
