"""Incremental polling (``poll_mode = "incremental"``) over respx and a real SQLite store.

``FakeApi`` answers ``GET .../operation/record`` as the API does: ``operation_status`` and
``operation_id`` select records, ``count`` is the number returned. A test moves its records
between polls (the story) and checks what each cycle asked and reported.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
from clock_support import FakeClock
from config_support import RECORD_URL, config_toml, source
from sqlalchemy import Engine, func, select

from notifier.bcs import source as bcs_source
from notifier.bcs.client import BcsClient
from notifier.bcs.parse import parse_record
from notifier.config import Config, parse_config
from notifier.model import EventType, canonical_json
from notifier.pipeline import Poller
from notifier.store import db
from notifier.store.schema import events, snapshots

T0 = 1_700_000_000.0
NS = 1_000_000_000


def record(operation_id: str, status: str, record_time: int, steps: int = 2) -> dict[str, Any]:
    """A raw record of ``steps`` steps with two sub-steps each, all in ``status``."""
    sub_status = "finished" if status in ("finished", "failed", "stop") else status
    process = {
        f"Step {index}": {
            "step_name": f"Step {index}",
            "status": sub_status,
            "detail": "",
            "serial_num": index,
            "sub_steps": {
                f"Sub {index}.{sub}": {
                    "substep_name": f"Sub {index}.{sub}",
                    "status": sub_status,
                    "detail": None,
                    "message": None,
                    "start_time": record_time - 10,
                    "end_time": record_time if sub_status == "finished" else 0,
                    "serial_num": index * 2 + sub,
                }
                for sub in range(2)
            },
        }
        for index in range(steps)
    }
    return {
        "operation_id": operation_id,
        "resource_type": "BCSSVC01",
        "operation_type": "99",
        "domain_id": "d1",
        "project_id": "p1",
        "blockchain_id": "chain-1",
        "blockchain_name": "ledger",
        "cluster_info": None,
        "operation_process": process,
        "record_time": record_time,
        "operation_status": status,
        "message": None,
        "desc": None,
    }


class FakeApi:
    """The record API over ``records`` (operation id -> raw record), filters honoured."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self.queries: list[dict[str, str]] = []
        #: a query (as a dict) -> the response to give once instead of the records
        self.failures: list[tuple[Callable[[dict[str, str]], bool], httpx.Response]] = []
        router.get(RECORD_URL).mock(side_effect=self._answer)

    def put(self, raw: dict[str, Any]) -> None:
        self.records[raw["operation_id"]] = copy.deepcopy(raw)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        query = dict(parse_qsl(request.url.query.decode()))
        self.queries.append(query)
        for index, (matches, response) in enumerate(self.failures):
            if matches(query):
                del self.failures[index]
                return response
        selected = [
            raw
            for raw in self.records.values()
            if all(raw.get(key) == value for key, value in query.items())
        ]
        return httpx.Response(200, json={"count": len(selected), "operation_records": selected})

    def cycle_queries(self) -> list[dict[str, str]]:
        taken, self.queries = self.queries, []
        return taken


@pytest.fixture
def api(router: respx.MockRouter) -> FakeApi:
    return FakeApi(router)


def make_clock() -> FakeClock:
    """The shared fake clock at ``T0`` epoch seconds."""
    return FakeClock.at_wall(T0)


def make_config(**service: Any) -> Config:
    settings = {"full_poll_interval": 900, **service}
    return parse_config(config_toml(service=settings, sources=[source(max_retries=0)]))


def make_poller(config: Config, engine: Engine, clock: FakeClock) -> Poller:
    return Poller(
        config,
        engine,
        clock=clock,
        client_factory=lambda src: BcsClient(src, clock=clock, sleep=lambda _s: None),
    )


def stored(engine: Engine) -> dict[str, tuple[str, str, int | None]]:
    """operation id -> (status, content hash, gone_at) of every snapshot."""
    query = select(
        snapshots.c.operation_id, snapshots.c.status, snapshots.c.content_hash, snapshots.c.gone_at
    )
    with engine.connect() as connection:
        return {row[0]: (row[1], row[2], row[3]) for row in connection.execute(query)}


def event_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(events)).scalar_one())


@pytest.fixture
def story(api: FakeApi) -> FakeApi:
    """Baseline: A processing, B finished long ago."""
    api.put(record("OP-A", "processing", 100 * NS))
    api.put(record("OP-B", "finished", 50 * NS))
    return api


def test_a_cycle_asks_the_status_lists_then_follows_up_on_what_left_them(
    engine: Engine, story: FakeApi
) -> None:
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        first = poller.poll_source(config.sources[0])
        assert first.ok
        assert first.complete
        assert first.baseline
        assert story.cycle_queries() == [{}]

        clock.now += 5
        quiet = poller.poll_source(config.sources[0])
        assert quiet.ok
        assert not quiet.complete
        assert quiet.events == ()
        assert story.cycle_queries() == [
            {"operation_status": "waiting"},
            {"operation_status": "processing"},
        ]

        finished = record("OP-A", "finished", 200 * NS)
        story.put(finished)
        clock.now += 5
        result = poller.poll_source(config.sources[0])
        assert story.cycle_queries() == [
            {"operation_status": "waiting"},
            {"operation_status": "processing"},
            {"operation_id": "OP-A"},
        ]
    assert result.ok
    assert not result.complete
    changes = {(e.type, e.step, e.substep, e.to_status) for e in result.events}
    assert (EventType.OPERATION_STATUS_CHANGED, None, None, "finished") in changes
    assert (EventType.SUBSTEP_STATUS_CHANGED, "Step 1", "Sub 1.1", "finished") in changes
    assert stored(engine)["OP-A"][0] == "finished"
    assert not result.active


def test_status_lists_carry_the_single_valued_filters(engine: Engine, story: FakeApi) -> None:
    config = parse_config(
        config_toml(
            sources=[
                source(
                    max_retries=0,
                    filters={"blockchain_id": "chain-1", "operation_type": ["99", "01"]},
                )
            ]
        )
    )
    clock = make_clock()
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        clock.now += 5
        poller.poll_source(config.sources[0])
    assert story.queries == [
        {"blockchain_id": "chain-1"},
        {"blockchain_id": "chain-1", "operation_status": "waiting"},
        {"blockchain_id": "chain-1", "operation_status": "processing"},
    ]


def test_one_created_and_finished_between_polls_comes_with_the_next_full_listing(
    engine: Engine, story: FakeApi
) -> None:
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        story.put(record("OP-C", "finished", 300 * NS))  # never seen waiting or processing
        clock.now += 5
        short = poller.poll_source(config.sources[0])
        assert short.ok
        assert not short.complete
        assert short.events == ()
        assert "OP-C" not in stored(engine)

        clock.now += 900
        full = poller.poll_source(config.sources[0])
    assert full.complete
    assert [(e.type, e.operation_id, e.to_status) for e in full.events if e.step is None] == [
        (EventType.OPERATION_CREATED, "OP-C", "finished")
    ]
    assert stored(engine)["OP-C"][0] == "finished"


@pytest.mark.parametrize(
    "failing",
    [
        {"operation_status": "waiting"},
        {"operation_status": "processing"},
        {"operation_id": "OP-A"},
    ],
    ids=["waiting-list", "processing-list", "follow-up"],
)
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503, text="busy"),
        httpx.Response(200, json={"count": 3, "operation_records": []}),
        httpx.Response(200, text='{"count": 1, "operation_records": [{"operation_id"'),
    ],
    ids=["503", "count-larger", "truncated"],
)
def test_a_failed_short_request_changes_nothing(
    engine: Engine, story: FakeApi, failing: dict[str, str], response: httpx.Response
) -> None:
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        before, events_before = stored(engine), event_count(engine)
        story.put(record("OP-A", "finished", 200 * NS))
        story.put(record("OP-D", "waiting", 210 * NS))
        if failing == {"operation_id": "OP-A"}:
            del story.records["OP-D"]  # so the follow-up is asked
        story.failures.append((lambda query: query == failing, response))
        clock.now += 5
        failed = poller.poll_source(config.sources[0])
        assert not failed.ok
        assert stored(engine) == before
        assert event_count(engine) == events_before
        assert failed.events == ()

        clock.now += 5
        again = poller.poll_source(config.sources[0])
    assert again.ok
    assert ("OP-A", "finished") in {(e.operation_id, e.to_status) for e in again.events}


def test_short_lists_never_mark_gone_and_the_full_listing_does(
    engine: Engine, story: FakeApi
) -> None:
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        del story.records["OP-A"]  # watched, then vanishes: its follow-up finds nothing
        clock.now += 5
        short = poller.poll_source(config.sources[0])
        assert short.ok
        assert not short.complete
        assert story.cycle_queries()[-1] == {"operation_id": "OP-A"}
        assert {key: value[2] for key, value in stored(engine).items()} == {
            "OP-A": None,
            "OP-B": None,
        }
        clock.now += 900
        full = poller.poll_source(config.sources[0])
    assert full.complete
    assert full.events == ()
    rows = stored(engine)
    assert rows["OP-A"][2] is not None
    assert rows["OP-B"][2] is None


def story_steps() -> Iterator[dict[str, Any]]:
    """API states, one per poll: every kind of move, one of them between two polls."""
    yield record("OP-A", "processing", 100 * NS)
    a = record("OP-A", "processing", 110 * NS)
    a["operation_process"]["Step 0"]["sub_steps"]["Sub 0.0"]["status"] = "finished"
    yield a
    yield record("OP-N", "waiting", 120 * NS, steps=1)
    yield record("OP-N", "processing", 130 * NS, steps=1)
    yield record("OP-A", "failed", 140 * NS)
    yield record("OP-N", "finished", 150 * NS, steps=1)
    yield record("OP-X", "stop", 160 * NS)  # created and stopped between two polls


def run_story(engine: Engine, router: respx.MockRouter, mode: str) -> list[str]:
    api = FakeApi(router)
    api.put(record("OP-B", "finished", 50 * NS))
    clock = make_clock()
    config = make_config(poll_mode=mode)
    with make_poller(config, engine, clock) as poller:
        for raw in story_steps():
            api.put(raw)
            clock.now += 5
            assert poller.poll_source(config.sources[0]).ok
        clock.now += 5
        assert poller.poll_source(config.sources[0], full=True).ok
    with engine.connect() as connection:
        return list(connection.scalars(select(events.c.id).order_by(events.c.seq)))


def test_the_same_story_gives_the_same_event_ids_in_both_modes(
    engine: Engine, tmp_path: Any
) -> None:
    from notifier.store import db

    other = db.make_engine(f"sqlite:///{tmp_path / 'full.db'}")
    db.upgrade(other)
    try:
        with respx.mock(assert_all_called=False) as router:
            incremental = run_story(engine, router, "incremental")
        with respx.mock(assert_all_called=False) as router:
            full = run_story(other, router, "full")
    finally:
        other.dispose()
    assert len(full) > 10
    assert incremental == full


def test_an_unchanged_raw_record_is_not_parsed(
    engine: Engine, story: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    real = bcs_source.parse_record

    def counting(raw: Any) -> Any:
        parsed.append(raw["operation_id"])
        return real(raw)

    monkeypatch.setattr(bcs_source, "parse_record", counting)
    clock = make_clock()
    config = make_config(poll_mode="full")
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        assert sorted(parsed) == ["OP-A", "OP-B"]
        parsed.clear()
        clock.now += 5
        same = poller.poll_source(config.sources[0])
        assert same.ok
        assert same.records == 2
        assert same.active
        assert parsed == []
        story.put(record("OP-A", "finished", 200 * NS))
        clock.now += 5
        moved = poller.poll_source(config.sources[0])
        assert parsed == ["OP-A"]
        assert moved.events
    parsed.clear()
    with make_poller(config, engine, clock) as restarted:  # the index comes from the store
        clock.now += 5
        assert restarted.poll_source(config.sources[0]).ok
    assert parsed == []


def test_a_record_changed_by_another_writer_is_parsed_again(
    engine: Engine, story: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory index is checked against the stored content hash every listing."""
    clock = make_clock()
    config = make_config(poll_mode="full")
    parsed: list[str] = []
    real = bcs_source.parse_record
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        with engine.begin() as connection:
            connection.execute(
                snapshots.update()
                .where(snapshots.c.operation_id == "OP-B")
                .values(content_hash="0" * 64)
            )
        monkeypatch.setattr(
            bcs_source, "parse_record", lambda raw: parsed.append(raw["operation_id"]) or real(raw)
        )
        clock.now += 5
        assert poller.poll_source(config.sources[0]).ok
    assert parsed == ["OP-B"]
    assert stored(engine)["OP-B"][1] != "0" * 64


def test_poll_mode_full_lists_everything_every_cycle(engine: Engine, story: FakeApi) -> None:
    clock = make_clock()
    config = make_config(poll_mode="full")
    with make_poller(config, engine, clock) as poller:
        for _ in range(3):
            clock.now += 5
            assert poller.poll_source(config.sources[0]).complete
    assert story.queries == [{}, {}, {}]


def test_run_reconciles_with_a_full_listing_at_start(engine: Engine, story: FakeApi) -> None:
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
    story.cycle_queries()
    clock.now += 5
    restarted = Poller(
        config,
        engine,
        clock=clock,
        reconcile_at_start=True,
        client_factory=lambda src: BcsClient(src, clock=clock),
    )
    with restarted:
        assert restarted.poll_source(config.sources[0]).complete
        clock.now += 5
        assert not restarted.poll_source(config.sources[0]).complete
    assert story.queries[0] == {}


def test_an_operation_moving_between_the_two_lists_is_kept_once(
    engine: Engine, story: FakeApi
) -> None:
    """Waiting when the first list is read, processing when the second is."""
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        poller.poll_source(config.sources[0])
        story.put(record("OP-W", "waiting", 300 * NS))
        waiting = copy.deepcopy(story.records["OP-W"])

        def moved(query: dict[str, str]) -> bool:
            if query == {"operation_status": "waiting"}:
                story.put(record("OP-W", "processing", 310 * NS))
                return True
            return False

        story.failures.append(
            (moved, httpx.Response(200, json={"count": 1, "operation_records": [waiting]}))
        )
        clock.now += 5
        result = poller.poll_source(config.sources[0])
    assert result.ok
    created = [e for e in result.events if e.type is EventType.OPERATION_CREATED]
    assert [(e.operation_id, e.to_status) for e in created] == [("OP-W", "processing")]


def test_records_are_decoded_from_the_stream_with_the_count_after_them(
    engine: Engine, router: respx.MockRouter
) -> None:
    raws = [record(f"OP-{index}", "finished", (index + 1) * NS) for index in range(50)]
    body = json.dumps({"operation_records": raws, "count": 50}).encode()
    chunks = [body[start : start + 777] for start in range(0, len(body), 777)]
    router.get(RECORD_URL).mock(return_value=httpx.Response(200, stream=IterStream(chunks)))
    clock = make_clock()
    config = make_config()
    with make_poller(config, engine, clock) as poller:
        result = poller.poll_source(config.sources[0])
    assert result.ok
    assert result.records == 50
    assert len(stored(engine)) == 50


class IterStream(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks


def test_a_hostile_id_reaches_the_log_printable_and_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The streamed listing names a skipped or repeated record as the parser does: one
    printable line of at most 160 characters, whatever the id holds."""
    from notifier.bcs.source import BodyRecords, read_listing

    hostile = "OP-\nforged log line " + "x" * 5000
    body = {
        "count": 3,
        "operation_records": [
            {"operation_id": hostile, "operation_status": "processing", "record_time": "bad"},
            {"operation_id": "OP-1", "operation_status": "finished", "record_time": 1},
            {"operation_id": "OP-1", "operation_status": "finished", "record_time": 1},
        ],
    }
    with caplog.at_level(logging.WARNING, logger="notifier.bcs.source"):
        read_listing(BodyRecords(body, None), {})
    lines = [record.getMessage() for record in caplog.records]
    assert any("appears twice" in line for line in lines)
    assert lines, "nothing was logged"
    for line in lines:
        assert "\n" not in line
        assert len(line) < 600


def test_a_silent_baseline_stores_every_record_whole(engine: Engine, api: FakeApi) -> None:
    """The baseline's records are kept packed until stored, 500 at a time: what lands in
    the store is each record's full canonical JSON, non-ASCII text included."""
    for number in range(1_201):  # three insert chunks
        raw = record(f"OP-{number:05d}", "finished", (1_000 + number) * NS)
        raw["desc"] = f"链 {number} – naïve"
        api.put(raw)
    config = make_config()
    with make_poller(config, engine, make_clock()) as poller:
        result = poller.poll_source(config.sources[0])
    assert result.ok
    assert not result.events
    query = select(snapshots.c.operation_id, snapshots.c.data, snapshots.c.content_hash)
    with engine.connect() as connection:
        rows = {row[0]: (row[1], row[2]) for row in connection.execute(query)}
    assert len(rows) == 1_201
    for operation_id, raw in api.records.items():
        expected = canonical_json(parse_record(raw).to_dict())
        data, digest = rows[operation_id]
        assert data == expected
        assert digest == hashlib.sha256(expected.encode()).hexdigest()


def test_a_lost_database_reports_newer_operations_with_their_whole_state(
    tmp_path: Path, api: FakeApi
) -> None:
    """No silent baseline after a lost database (its marker remains): the operations
    updated since are reported from their full records (description, message, start)."""
    path = tmp_path / "lost.db"
    api.put(record("OP-OLD", "finished", 100 * NS))
    config = make_config()
    first = db.make_engine(f"sqlite:///{path}")
    db.upgrade(first)
    with make_poller(config, first, make_clock()) as poller:
        assert poller.poll_source(config.sources[0]).ok
    first.dispose()
    for name in ("lost.db", "lost.db-wal", "lost.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    raw = record("OP-NEW", "processing", 200 * NS)
    raw["desc"] = "created while the database was gone"
    raw["message"] = ["step 1 is running"]
    api.put(raw)
    second = db.make_engine(f"sqlite:///{path}")
    db.upgrade(second)
    try:
        with make_poller(config, second, make_clock()) as poller:
            result = poller.poll_source(config.sources[0])
    finally:
        second.dispose()
    assert [(event.operation_id, event.type) for event in result.events] == [
        ("OP-NEW", EventType.OPERATION_CREATED)
    ]
    created = result.events[0]
    assert created.detail == "created while the database was gone"
    assert created.message == ("step 1 is running",)
    assert created.started_at == 200 * NS - 10
