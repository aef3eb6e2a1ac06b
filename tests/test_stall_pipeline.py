"""Stall detection end to end: the simulator's stall story (manual clock, real HTTP), the real
client and poller, a real SQLite store migrated by Alembic."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from clock_support import FakeClock, SecondsClock
from config_support import channel, config_toml, sim_source
from sim_support import START
from sqlalchemy import Engine, func, select

import notifier
from notifier.bcs.client import BcsClient
from notifier.cli import main
from notifier.config import Config, SourceConfig, parse_config
from notifier.demo import source_config
from notifier.model import Event, EventType, cloudevent
from notifier.pipeline import Poller, PollResult
from notifier.simulator import OperationSpec, Simulator
from notifier.simulator.clock import NS_PER_SECOND
from notifier.simulator.scenario import OperationPlan, SubStepPlan
from notifier.simulator.stories import STALL_STEP, STALL_SUBSTEP, stall_story
from notifier.stalls import DurationKey, StallSettings
from notifier.store import db
from notifier.store.durations import duration_table
from notifier.store.schema import event_groups, stall_alerts, step_durations

NS = NS_PER_SECOND
SCHEMA = json.loads(
    (Path(notifier.__file__).parent / "schemas" / "cloudevent.schema.json").read_text()
)
KEY = DurationKey("BCSSVC01", "00", STALL_STEP, STALL_SUBSTEP)


def make_config(sim: Simulator, database: str, **service: Any) -> Config:
    settings = {"database": database, "stall_floor": 5, **service}
    return parse_config(
        config_toml(
            service=settings,
            sources=[sim_source(sim, "token", "sim")],
            channels=[
                channel("stalls", "json://127.0.0.1:9/", events=["*.stalled"]),
                channel("lifecycle", "json://127.0.0.1:9/", events=["operation.*"]),
            ],
        )
    )


class Watch:
    """Polls ``sim`` through the real client and poller; collects what each poll wrote."""

    def __init__(
        self, sim: Simulator, config: Config, open_engine: Callable[[], Engine], **poller: Any
    ) -> None:
        self.sim = sim
        self.config = config
        self.open_engine = open_engine
        self.engine = open_engine()
        self.poller_options = poller
        self.poller = self._poller()
        self.events: list[tuple[int, Event, tuple[str, ...]]] = []  # (sim time, event, channels)

    def _poller(self) -> Poller:
        def client(source: SourceConfig) -> BcsClient:
            return BcsClient(source, clock=SecondsClock(self.sim.clock.time), sleep=lambda _s: None)

        options = {"clock": SecondsClock(self.sim.clock.time), **self.poller_options}
        return Poller(self.config, self.engine, client_factory=client, **options)

    def restart(self) -> None:
        """A new process: a new engine on the same file and a new poller."""
        self.poller.close()
        self.engine.dispose()
        self.engine = self.open_engine()
        self.poller = self._poller()

    def poll(self) -> PollResult:
        result = self.poller.poll_source(self.config.sources[0])
        assert result.ok, result.error
        now = self.sim.clock.now_ns()
        for group in result.groups:
            self.events.extend((now, event, group.channels) for event in group.events)
        return result

    def move_to(self, target_ns: int) -> None:
        self.sim.advance(max(target_ns - self.sim.clock.now_ns(), 0) / NS)

    def run_until(
        self, until_ns: int, step: float = 0.5, between: Callable[[], None] = lambda: None
    ) -> None:
        while self.sim.clock.now_ns() < until_ns:
            self.sim.advance(step)
            self.poll()
            between()

    def of(self, *types: EventType) -> list[Event]:
        return [event for _now, event, _channels in self.events if event.type in types]

    def close(self) -> None:
        self.poller.close()


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def simulator(story: tuple[OperationSpec, ...]) -> Simulator:
    return Simulator(seed=1, start=START, story=story, episodes=False, retention=None)


def stuck_sub_step(sim: Simulator) -> tuple[OperationPlan, SubStepPlan]:
    plan = sim.scenario.story_plans[-1]
    return plan, plan.steps[0].sub_steps[0]


@pytest.fixture
def watch(database: str) -> Iterator[Callable[..., Watch]]:
    """Starts a simulator with a story and a watch on a SQLite file (or ``open_engine``)."""
    opened: list[tuple[Simulator, Watch]] = []

    def start(
        story: tuple[OperationSpec, ...] | None = None,
        *,
        open_engine: Callable[[], Engine] | None = None,
        **service: Any,
    ) -> Watch:
        sim = simulator(story or stall_story()).start()
        factory = open_engine or (lambda: db.make_engine(database))
        engine = factory()
        db.upgrade(engine, backup=False)
        engine.dispose()
        result = Watch(sim, make_config(sim, database, **service), factory)
        opened.append((sim, result))
        return result

    yield start
    for sim, result in opened:
        result.close()
        result.engine.dispose()
        sim.stop()


BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


@pytest.fixture
def engines(request: pytest.FixtureRequest, backend: str) -> Callable[[], Engine] | None:
    """For ``backend``: None (the watch's SQLite file) or engines on a fresh database of the
    session's PostgreSQL (conftest's ``postgres``)."""
    if backend != "postgresql":
        return None
    url = str(request.getfixturevalue("postgres").create_database())
    return lambda: db.make_engine(url)


@BACKENDS
def test_a_sub_step_running_far_longer_than_usual_is_one_stall_then_its_status_change(
    watch: Callable[..., Watch],
    engines: Callable[[], Engine] | None,
    backend: str,
) -> None:
    w = watch(open_engine=engines)
    baseline = w.poll()
    assert baseline.baseline
    assert baseline.events == ()
    plan, stuck = stuck_sub_step(w.sim)
    assert stuck.start_ns is not None
    assert stuck.end_ns is not None
    assert stuck.end_ns - stuck.start_ns == 20 * NS

    w.move_to(plan.created_ns)
    w.run_until(plan.ended_ns + 2 * NS)

    stalls = w.of(EventType.SUBSTEP_STALLED, EventType.STEP_STALLED)
    assert len(stalls) == 1
    (stall,) = stalls
    assert stall.type is EventType.SUBSTEP_STALLED
    assert (stall.step, stall.substep) == (STALL_STEP, STALL_SUBSTEP)
    assert stall.stall is not None
    # threshold max(5, 2 x 3.0 s); the Date header has whole seconds, polls come every 0.5 s
    assert stall.stall.threshold_seconds == 6.0
    assert stall.stall.p95_seconds == 3.0
    assert stall.stall.samples == 12
    assert 6.0 < stall.stall.elapsed_seconds <= 7.5
    assert stall.started_at == stuck.start_ns
    assert 6 * NS < stall.record_time - stuck.start_ns <= 7.5 * NS
    # the status change follows when the sub-step moves, after the stall
    changes = [
        event
        for event in w.of(EventType.SUBSTEP_STATUS_CHANGED)
        if event.operation_id == plan.operation_id and event.substep == STALL_SUBSTEP
    ]
    assert [(event.from_status, event.to_status) for event in changes] == [
        ("processing", "finished")
    ]
    order = [event.id for _now, event, _channels in w.events]
    assert order.index(stall.id) < order.index(changes[0].id)
    # routed like any event: to the channel asking for *.stalled, not the other one
    (channels,) = [found for _now, event, found in w.events if event.id == stall.id]
    assert channels == ("stalls",)
    # the stored alert is closed once the sub-step moved
    with w.engine.connect() as connection:
        rows = connection.execute(select(stall_alerts)).mappings().all()
    assert [(row["substep"], row["level"], row["ended_at"] is not None) for row in rows] == [
        (STALL_SUBSTEP, 0, True)
    ]


def test_the_stall_event_is_a_valid_cloudevent(watch: Callable[..., Watch]) -> None:
    w = watch()
    w.poll()
    plan, stuck = stuck_sub_step(w.sim)
    assert stuck.start_ns is not None
    w.move_to(stuck.start_ns)
    w.run_until(stuck.start_ns + 10 * NS)
    (stall,) = w.of(EventType.SUBSTEP_STALLED)
    document = cloudevent(stall)
    jsonschema.validate(document, SCHEMA)
    assert document["type"] == "bcs_notifier.substep.stalled"
    assert document["subject"] == plan.operation_id
    data = document["data"]
    assert data["step"] == STALL_STEP
    assert data["substep"] == STALL_SUBSTEP
    assert set(data) >= {"elapsed_seconds", "threshold_seconds", "p95_seconds", "samples"}
    assert data["started_at"].startswith("2024-01-15T08:31:0")
    broken = json.loads(json.dumps(document))
    del broken["data"]["p95_seconds"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCHEMA)


def test_elapsed_time_is_the_apis_not_the_hosts(watch: Callable[..., Watch]) -> None:
    """The host's clock a day ahead changes nothing: elapsed comes from the API's times."""
    w = watch()
    w.poller.close()
    w.poller_options = {"clock": SecondsClock(lambda: w.sim.clock.time() + 86_400)}
    w.poller = w._poller()
    w.poll()
    plan, stuck = stuck_sub_step(w.sim)
    assert stuck.start_ns is not None
    w.move_to(plan.created_ns)
    w.run_until(stuck.start_ns + 5 * NS)
    assert w.of(EventType.SUBSTEP_STALLED) == []
    w.run_until(stuck.start_ns + 8 * NS)
    (stall,) = w.of(EventType.SUBSTEP_STALLED)
    assert stall.stall is not None
    assert stall.stall.elapsed_seconds < 8


def test_an_operation_type_with_three_samples_gives_no_stall(
    watch: Callable[..., Watch],
) -> None:
    w = watch(stall_story(history=3, stalled_for=200.0))
    w.poll()
    plan, _stuck = stuck_sub_step(w.sim)
    w.move_to(plan.created_ns)
    w.run_until(plan.ended_ns + 2 * NS, step=2.0)
    assert w.of(EventType.SUBSTEP_STALLED, EventType.STEP_STALLED) == []
    # the samples were learned all the same (three history runs and the slow one now)
    rows = {row.key: row.usual for row in duration_table(w.engine, StallSettings())}
    assert rows[KEY].samples == 4
    assert rows[KEY].threshold_ns is None


@BACKENDS
def test_a_restart_in_the_middle_of_a_stall_sends_nothing_again(
    watch: Callable[..., Watch],
    engines: Callable[[], Engine] | None,
    backend: str,
) -> None:
    w = watch(stall_story(stalled_for=60.0), open_engine=engines, stall_reminders=True)
    w.poll()
    plan, stuck = stuck_sub_step(w.sim)
    assert stuck.start_ns is not None
    w.move_to(plan.created_ns)
    w.run_until(stuck.start_ns + 8 * NS)
    assert len(w.of(EventType.SUBSTEP_STALLED)) == 1
    w.restart()
    w.run_until(stuck.start_ns + 11 * NS)
    assert len(w.of(EventType.SUBSTEP_STALLED)) == 1  # nothing re-sent after the restart
    w.run_until(stuck.start_ns + 14 * NS)  # past 2x the threshold: the first reminder
    w.restart()
    w.run_until(plan.ended_ns + 2 * NS, step=1.0)
    stalls = w.of(EventType.SUBSTEP_STALLED)
    reminders = [event.stall.reminder for event in stalls if event.stall is not None]
    assert reminders == [0, 1, 2]  # at 6 s, 12 s and 24 s, never more
    assert len({event.id for event in stalls}) == 3
    elapsed = [event.stall.elapsed_seconds for event in stalls if event.stall is not None]
    assert 6 < elapsed[0] <= 7.5
    assert 12 < elapsed[1] <= 13.5
    assert 24 < elapsed[2] <= 25.5
    # one stall, one stored alert (its level went up with each reminder)
    with w.engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(stall_alerts)).scalar_one()
    assert stored == 1


def test_a_later_stall_of_the_same_step_is_a_new_event(watch: Callable[..., Watch]) -> None:
    """The sub-step moved (the stall ended) and then runs again from a new start (the API
    retried it): a new episode with a new id."""
    w = watch()
    w.poll()
    plan, stuck = stuck_sub_step(w.sim)
    assert stuck.start_ns is not None
    assert stuck.end_ns is not None
    w.move_to(stuck.start_ns)
    w.run_until(stuck.end_ns + NS)
    (first,) = w.of(EventType.SUBSTEP_STALLED)
    again = stuck.end_ns + 3 * NS
    original = w.sim.scenario.records_at

    def retried(now: int) -> list[dict[str, Any]]:
        records = original(now)
        for item in records:
            if now >= again and item["operation_id"] == plan.operation_id:
                step = item["operation_process"][STALL_STEP]
                step["status"] = "processing"
                step["sub_steps"][STALL_SUBSTEP].update(
                    status="processing", start_time=again, end_time=0
                )
                item["operation_status"] = "processing"
                item["record_time"] = max(item["record_time"], again)
        return records

    w.sim.scenario.records_at = retried  # type: ignore[method-assign]
    w.run_until(again + 42 * NS, step=1.0)
    stalls = w.of(EventType.SUBSTEP_STALLED)
    assert len(stalls) == 2
    assert stalls[1].id != first.id
    assert stalls[1].started_at == again
    # the slow run finished successfully, so it is a sample now: p95 of 13 is its 20 s
    assert stalls[1].stall is not None
    assert stalls[1].stall.samples == 13
    assert stalls[1].stall.threshold_seconds == 40.0
    with w.engine.connect() as connection:
        episodes = connection.execute(
            select(stall_alerts.c.episode, stall_alerts.c.ended_at).order_by(stall_alerts.c.episode)
        ).all()
    assert [(episode, ended is not None) for episode, ended in episodes] == [
        (0, True),
        (1, False),
    ]


def test_p95_and_threshold_match_a_hand_computation(
    watch: Callable[..., Watch], database: str, tmp_path: Path
) -> None:
    """History 2.0, 2.0909..., ..., 3.0 s (12 evenly spread): nearest-rank median is the
    6th = 2.4545 s, p95 the ceil(0.95 x 12) = 12th = 3.0 s, threshold max(5, 2 x 3.0) = 6 s."""
    w = watch()
    w.poll()
    rows = {row.key: row.usual for row in duration_table(w.engine, StallSettings(floor_seconds=5))}
    sub = rows[KEY]
    assert sub.samples == 12
    assert sub.median_ns == 2_454_545_455
    assert sub.p95_ns == 3 * NS
    assert sub.threshold_ns == 6 * NS

    config_path = tmp_path / "notifier.toml"
    config_path.write_text(
        config_toml(
            service={"database": database, "stall_floor": 5},
            sources=[sim_source(w.sim, "token", "sim")],
        )
    )
    result = CliRunner().invoke(main, ["--config", str(config_path), "durations", "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    (line,) = [item for item in lines if item["substep"] == STALL_SUBSTEP]
    assert line == {
        "resource_type": "BCSSVC01",
        "operation_type": "00",
        "operation_type_name": "OpDelete",
        "step": STALL_STEP,
        "substep": STALL_SUBSTEP,
        "samples": 12,
        "median_seconds": 2.455,
        "p95_seconds": 3.0,
        "threshold_seconds": 6.0,
    }
    steps = [item for item in lines if item["substep"] is None]
    assert {item["step"] for item in steps} == {"Preparation", "Delete Blockchain"}

    text = CliRunner().invoke(main, ["--config", str(config_path), "durations"])
    assert text.exit_code == 0, text.output
    assert "stall_floor = 5 s" in text.output
    (row,) = [line for line in text.output.splitlines() if STALL_SUBSTEP in line]
    assert row.startswith("BCSSVC01  00 OpDelete")
    assert row.split()[-7:] == ["12", "2.5", "s", "3.0", "s", "6.0", "s"]


def test_samples_are_bounded_per_key(watch: Callable[..., Watch]) -> None:
    """Learning is idempotent and keeps the newest 200 samples of a key."""
    w = watch(stall_story(history=205))
    w.poll()
    with w.engine.connect() as connection:
        count = connection.execute(
            select(func.count())
            .select_from(step_durations)
            .where(step_durations.c.substep == STALL_SUBSTEP)
        ).scalar_one()
        oldest = connection.execute(
            select(func.min(step_durations.c.ended_at)).where(
                step_durations.c.substep == STALL_SUBSTEP
            )
        ).scalar_one()
    assert count == 200
    ends = sorted(
        sub.end_ns
        for plan in w.sim.scenario.story_plans[:-1]
        for sub in plan.steps[0].sub_steps
        if sub.end_ns is not None
    )
    assert oldest == ends[5]  # the five oldest went


def test_the_client_reads_the_apis_clock_from_the_date_header() -> None:
    with simulator(stall_story()) as sim:
        sim.advance(12.7)
        with BcsClient(source_config(sim, "token"), clock=SecondsClock(sim.clock.time)) as client:
            fetched = client.fetch()
    assert fetched.server_time_ns == (START + 12) * NS  # whole seconds, as HTTP dates are


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Mon, 15 Jan 2024 08:30:00 GMT", START * NS),
        (None, None),
        ("yesterday", None),
        ("Thu, 01 Jan 1970 00:00:00 GMT", None),
    ],
    ids=["date", "absent", "unreadable", "epoch"],
)
def test_an_absent_or_odd_date_header_is_no_clock(
    router: Any, header: str | None, expected: int | None
) -> None:
    import httpx

    from notifier.config import AuthConfig, Secret

    source = SourceConfig(
        name="s",
        endpoint="https://bcs.example.test",
        project_id="p",
        auth=AuthConfig(type="token", token=Secret("t")),
    )
    headers = {"Date": header} if header is not None else {}
    router.get("https://bcs.example.test/v2/p/operation/record").mock(
        return_value=httpx.Response(
            200, json={"count": 0, "operation_records": []}, headers=headers
        )
    )
    with BcsClient(source, clock=FakeClock.at_wall(START)) as client:
        assert client.fetch().server_time_ns == expected


@pytest.mark.parametrize("poll_mode", ["full", "incremental"])
def test_a_stall_of_an_operation_whose_record_did_not_change_is_reported(
    watch: Callable[..., Watch], poll_mode: str
) -> None:
    """The hung operation's record is the same at the next poll: a complete listing skips
    it unparsed and watches it through its stored snapshot, the short lists parse it. Both
    report its stall, with the record, and the poll works."""
    w = watch(poll_mode=poll_mode, full_poll_interval=1)
    assert w.poll().baseline
    plan, stuck = stuck_sub_step(w.sim)
    assert stuck.start_ns is not None
    assert stuck.end_ns is not None
    w.move_to(stuck.start_ns + NS)
    started = w.poll()
    assert any(event.operation_id == plan.operation_id for event in started.events)
    w.move_to(stuck.start_ns + 12 * NS)  # past the 6 s threshold, nothing changed since
    assert stuck.end_ns > w.sim.clock.now_ns()
    hung = w.poll()
    assert hung.complete  # full_poll_interval = 1: incremental mode lists everything too
    assert [(event.operation_id, event.type, event.substep) for event in hung.events] == [
        (plan.operation_id, EventType.SUBSTEP_STALLED, STALL_SUBSTEP)
    ]
    with w.engine.connect() as connection:
        stored = connection.execute(
            select(event_groups.c.record).where(event_groups.c.id == hung.groups[0].id)
        ).scalar_one()
    assert plan.operation_id in stored  # the stall's message shows the operation's steps
