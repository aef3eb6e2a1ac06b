"""The daemon with leases (several instances on one database): only led sources are polled,
each under its lease's fence; the sources spread over the instances; a stop hands them over;
``/healthz`` and ``/metrics`` show who leads what. On SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from test_service_daemon import FakeClock, FakeDispatcher, Result, make_config

from notifier.config import SourceConfig
from notifier.daemon import Components, Daemon, InlineExecutor
from notifier.leadership import LeaseKeeper
from notifier.store.lease import Fence, LeaseStore


@dataclass
class FencedPoller:
    clock: FakeClock
    calls: list[tuple[str, int]] = field(default_factory=list)

    def poll_source(self, source: SourceConfig, /, *, fence: Fence | None = None) -> Result:
        assert fence is not None, "a led source is always polled under its fence"
        assert fence.source == source.name
        self.calls.append((source.name, fence.epoch))
        return Result(source.name)

    def polled(self) -> set[str]:
        return {name for name, _ in self.calls}


def _instance(engine: Engine, holder: str, clock: FakeClock) -> tuple[Daemon, FencedPoller]:
    config = make_config(str(engine.url), sources=("s1", "s2"), lease_ttl=30)
    poller = FencedPoller(clock)
    keeper = LeaseKeeper(LeaseStore(engine, holder, 30), 30, clock=clock)
    daemon = Daemon(
        config,
        engine,
        components=lambda _c, _e: Components(poller, FakeDispatcher(clock, engine)),
        clock=clock,
        wait=clock.wait,
        executor=InlineExecutor(),
        leases=keeper,
    )
    daemon.start()
    return daemon, poller


def _metric(daemon: Daemon, source: str) -> str:
    lines = daemon.metrics.render().splitlines()
    return next(
        line for line in lines if line.startswith(f'bcs_notifier_leader{{source="{source}"}}')
    )


def test_instances_split_the_sources_and_hand_them_over_on_stop(store_engine: Engine) -> None:
    clock = FakeClock()
    first, first_poller = _instance(store_engine, "host:1:a", clock)
    first.cycle()
    assert first_poller.polled() == {"s1", "s2"}  # alone: it leads both
    assert _metric(first, "s1").endswith(" 1")
    second, second_poller = _instance(store_engine, "host:2:b", clock)
    second.cycle()
    assert second_poller.calls == []  # a standby: both sources are leased
    assert second.status_line().endswith("; standby")
    assert first.status_line().endswith("; leads s1, s2")
    health = second.health().details
    assert health["sources"]["s1"]["leader"] is False
    assert _metric(second, "s1").endswith(" 0")
    clock.now += 11  # the next lease round: two instances now, one source each
    first.cycle()
    second.cycle()
    led_first = {name for name in ("s1", "s2") if first.health().details["sources"][name]["leader"]}
    led_second = {
        name for name in ("s1", "s2") if second.health().details["sources"][name]["leader"]
    }
    assert len(led_first) == 1
    assert led_first | led_second == {"s1", "s2"}
    assert not led_first & led_second
    assert second_poller.polled() == led_second  # a source it gained is polled at once
    cluster = first.health().details["cluster"]
    leads = {
        item["id"]: [lease["source"] for lease in item["leads"]] for item in cluster["instances"]
    }
    assert leads == {"host:1:a": sorted(led_first), "host:2:b": sorted(led_second)}
    # SIGTERM of the first: its leases go at once, the second takes them at its next round
    first.request_stop()
    first.run()
    assert _metric(first, "s1").endswith(" 0")
    clock.now += 11
    second.cycle()
    assert second_poller.polled() == {"s1", "s2"}
    epochs: dict[str, Any] = {}
    for name, epoch in second_poller.calls:
        epochs[name] = epoch
    assert epochs[sorted(led_first)[0]] == 2  # taken over from the first: a new epoch
