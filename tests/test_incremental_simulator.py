"""Incremental polling against the simulator (real HTTP on 127.0.0.1, manual clock): the
story's every terminal state is reported, with the same event ids as ``poll_mode = "full"``,
and ``bcs-notifier poll`` as a process imports neither apprise nor Alembic when idle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from clock_support import SecondsClock
from config_support import sim_source, write_config
from sim_support import START
from sqlalchemy import Engine, select

from notifier.bcs.client import BcsClient
from notifier.config import Config, parse_config
from notifier.model import TERMINAL_STATUSES
from notifier.pipeline import Poller
from notifier.simulator import Simulator
from notifier.store import db
from notifier.store.schema import events

STEP = 20.0  # simulated seconds between polls


def sim_config(sim: Simulator, mode: str) -> Config:
    text = f'[service]\npoll_mode = "{mode}"\nfull_poll_interval = 600\n\n'
    return parse_config(text + sim_source(sim, "token", "sim", max_retries=0))


def play(sim: Simulator, engine: Engine, mode: str) -> list[tuple[str, str, str | None]]:
    """Poll every ``STEP`` simulated seconds until the story settled, then once with a
    complete listing; the recorded events as (id, operation, to)."""
    config = sim_config(sim, mode)
    clock = SecondsClock(lambda: sim.clock.now_ns() / 1e9)  # the simulated clock
    with Poller(
        config, engine, clock=clock, client_factory=lambda source: BcsClient(source, clock=clock)
    ) as poller:
        for _ in range(int(3600 / STEP)):
            assert poller.poll_source(config.sources[0]).ok
            if sim.story_remaining() == 0:
                break
            sim.advance(STEP)
        sim.advance(STEP)
        assert poller.poll_source(config.sources[0], full=True).ok
    with engine.connect() as connection:
        rows = connection.execute(select(events.c.id, events.c.payload).order_by(events.c.seq))
        return [
            (row.id, json.loads(row.payload)["operation_id"], json.loads(row.payload)["to"])
            for row in rows
        ]


def new_engine(path: Path) -> Engine:
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    return engine


def test_the_story_gives_the_same_events_in_both_modes_and_every_terminal_state(
    tmp_path: Path,
) -> None:
    results = {}
    requests = {}
    for mode in ("incremental", "full"):
        engine = new_engine(tmp_path / f"{mode}.db")
        try:
            with Simulator(seed=5, start=START) as sim:
                results[mode] = play(sim, engine, mode)
                truth = sim.records()
                requests[mode] = [dict(parse_qsl(entry.query)) for entry in sim.requests()]
        finally:
            engine.dispose()
    # the same events (ids included); operations may come in another order within a cycle
    assert sorted(results["incremental"]) == sorted(results["full"])
    assert len(results["full"]) > 20
    # every operation that ended after the baseline was reported with its terminal state
    reported = {(operation, to) for _id, operation, to in results["incremental"]}
    ended = [
        raw
        for raw in truth
        if raw["operation_status"] in TERMINAL_STATUSES and raw["record_time"] > START * 10**9
    ]
    assert len(ended) >= 5
    for raw in ended:
        if raw["operation_status"] in TERMINAL_STATUSES:
            assert (raw["operation_id"], raw["operation_status"]) in reported, raw["operation_id"]
    # the incremental run listed everything only at the start, every 600 s and at the end
    complete = [query for query in requests["incremental"] if query == {}]
    assert 2 <= len(complete) <= 2 + 3600 / 600
    assert {"operation_status": "waiting"} in requests["incremental"]
    assert any("operation_id" in query for query in requests["incremental"])
    assert all(query == {} for query in requests["full"])


def test_the_simulator_answers_a_follow_up_with_the_one_record(tmp_path: Path) -> None:
    with Simulator(seed=5, start=START) as sim:
        sim.advance(3600)
        truth = sim.records()
        config = sim_config(sim, "incremental")
        with BcsClient(config.sources[0]) as client:
            first = truth[0]["operation_id"]
            one = client.fetch_records(
                lambda raw: [item["operation_id"] for item in raw.records()],
                [("operation_id", first)],
            )
            finished = client.fetch_records(
                lambda raw: {item["operation_status"] for item in raw.records()},
                [("operation_status", "finished")],
            )
    assert one.value == [first]
    assert finished.value == {"finished"}


def run_poll(config: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``bcs-notifier poll`` in a fresh interpreter; also which of apprise, alembic and jinja2
    it imported."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['bcs-notifier', '--config', {str(config)!r}, 'poll', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('notifier', run_name='__main__')\n"
        "except SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
        "loaded = sorted({name.split('.')[0] for name in sys.modules} & "
        "{'apprise', 'alembic', 'jinja2'})\n"
        "print('LOADED', ','.join(loaded), file=sys.stderr)\nsys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    line = [row for row in done.stderr.splitlines() if row.startswith("LOADED")][-1]
    return done, [name for name in line.removeprefix("LOADED ").split(",") if name]


@pytest.mark.slow
def test_an_idle_poll_imports_neither_apprise_nor_alembic(tmp_path: Path) -> None:
    with Simulator(seed=5, start=START) as sim:
        receiver = {"name": "hooks", "urls": ["json://127.0.0.1:9/never"]}
        config = write_config(
            tmp_path, sources=[sim_source(sim, "token", "sim")], channels=[receiver]
        )
        first, loaded = run_poll(config)
        assert first.returncode == 0, first.stderr
        assert "alembic" in loaded  # the first poll creates the schema
        assert "baseline" in first.stderr

        idle, loaded = run_poll(config)
        assert idle.returncode == 0, idle.stderr
        assert loaded == []
        queries = [entry.query for entry in sim.requests() if "operation/record" in entry.path]
        assert queries[-2:] == ["operation_status=waiting", "operation_status=processing"]

        full, loaded = run_poll(config, "--full")
        assert full.returncode == 0, full.stderr
        assert loaded == []
        assert [entry.query for entry in sim.requests()][-1] == ""


@pytest.mark.slow
def test_a_bad_channel_url_still_exits_78_when_there_is_something_to_deliver(
    tmp_path: Path,
) -> None:
    with Simulator(seed=5, start=START) as sim:
        config = write_config(
            tmp_path,
            service={"notify_existing": True},
            sources=[sim_source(sim, "token", "sim")],
            channels=[{"name": "hooks", "urls": ["nosuchscheme://x"]}],
        )
        done, loaded = run_poll(config)
    assert done.returncode == 78, done.stderr
    assert "channels[0].urls" in done.stderr
    assert "apprise" in loaded
