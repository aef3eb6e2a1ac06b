"""One cycle end to end over a real SQLite store migrated by Alembic, with a scripted source."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from clock_support import FakeClock
from config_support import channel, config_toml, source
from source_support import Fetched, ScriptedClient, with_new_operation
from sqlalchemy import Engine, func, select

from notifier.config import Config, parse_config
from notifier.errors import IncompleteResponse, TransportError
from notifier.model import EventType
from notifier.pipeline import Poller
from notifier.store.schema import event_groups, events, outbox, snapshots

OP = "BCSSVC01-99-1618218591906093855"
DEPENDENT = "Create Other Dependent Resource"


@pytest.fixture
def engine(store_engine: Engine) -> Engine:
    """Every pipeline test runs on a migrated SQLite file and on a real PostgreSQL database."""
    return store_engine


def make_config(
    *,
    channels: Sequence[dict[str, Any]] = (),
    filters: dict[str, Any] | None = None,
    **service: Any,
) -> Config:
    """The token source "prod" (with ``filters``), ``channels`` and ``[service]`` settings."""
    return parse_config(
        config_toml(service=service, sources=[source(filters=filters)], channels=channels)
    )


def make_clock(start: float = 1_700_000_000.0) -> FakeClock:
    """The shared fake clock at ``start`` epoch seconds."""
    return FakeClock.at_wall(start)


def make_poller(config: Config, engine: Engine, client: ScriptedClient, clock: FakeClock) -> Poller:
    return Poller(config, engine, client_factory=lambda _source: client, clock=clock)


def finish_storage(body: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(body)
    record = body["operation_records"][0]
    sub = record["operation_process"][DEPENDENT]["sub_steps"]["Create network storage"]
    sub.update(status="finished", detail=None, start_time=1, end_time=2)
    record["operation_process"][DEPENDENT]["status"] = "finished"
    record["operation_status"] = "finished"
    record["record_time"] = 1618219200000000000
    return body


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def snapshot_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(snapshots))]


def test_first_poll_is_a_silent_baseline_then_changes_are_reported(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    client = ScriptedClient([example_body, finish_storage(example_body)])
    clock = make_clock()
    config = make_config()
    poller = make_poller(config, engine, client, clock)

    first = poller.poll_source(config.sources[0])
    assert first.ok
    assert first.baseline
    assert first.events == ()
    assert first.active  # the example operation is processing
    assert count(engine, snapshots) == 1
    assert count(engine, events) == 0

    clock.now += 5
    second = poller.poll_source(config.sources[0])
    assert [(e.type, e.to_status) for e in second.events] == [
        (EventType.STEP_STATUS_CHANGED, "finished"),
        (EventType.SUBSTEP_STATUS_CHANGED, "finished"),
        (EventType.OPERATION_STATUS_CHANGED, "finished"),
    ]
    assert not second.active
    assert count(engine, events) == 3
    assert count(engine, event_groups) == 1


def test_unchanged_record_costs_no_write_and_restart_does_not_re_emit(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    config = make_config()
    changed = finish_storage(example_body)
    poller = make_poller(config, engine, ScriptedClient([example_body, changed]), make_clock())
    poller.poll_source(config.sources[0])
    poller.poll_source(config.sources[0])
    before = snapshot_rows(engine)

    # a new process: new Poller, same database, same response
    restarted = make_poller(
        config, engine, ScriptedClient([changed, changed]), make_clock(1_800_000_000)
    )
    for _ in range(2):
        result = restarted.poll_source(config.sources[0])
        assert result.ok
        assert result.events == ()
        assert result.stored == 0
    assert snapshot_rows(engine) == before  # last_seen untouched: nothing was written
    assert count(engine, events) == 3


def test_notify_existing_reports_the_first_poll(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    config = make_config(notify_existing=True)
    poller = make_poller(config, engine, ScriptedClient([example_body]), make_clock())
    result = poller.poll_source(config.sources[0])
    assert [event.type for event in result.events] == [EventType.OPERATION_CREATED]


def test_new_operation_after_baseline_is_created(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    config = make_config()
    client = ScriptedClient([example_body, with_new_operation(example_body)])
    poller = make_poller(config, engine, client, make_clock())
    poller.poll_source(config.sources[0])
    result = poller.poll_source(config.sources[0])
    assert [(e.type, e.operation_id, e.to_status) for e in result.events] == [
        (EventType.OPERATION_CREATED, "BCSSVC01-01-1618218600000000000", "waiting")
    ]


@pytest.mark.parametrize(
    "failure",
    [
        TransportError("read timeout"),
        IncompleteResponse("count is 5 but 1 records were returned"),
        "html",
        {"count": 1},
    ],
    ids=["transport", "incomplete", "html-body", "missing-records"],
)
def test_failed_or_partial_fetch_changes_nothing(
    engine: Engine, example_body: dict[str, Any], failure: Any
) -> None:
    config = make_config()
    client = ScriptedClient([example_body, failure, finish_storage(example_body)])
    clock = make_clock()
    poller = make_poller(config, engine, client, clock)
    poller.poll_source(config.sources[0])
    before = snapshot_rows(engine)

    clock.now += 5
    result = poller.poll_source(config.sources[0])
    assert result.error is not None
    assert result.events == ()
    assert result.active  # falls back to the stored state: still processing
    assert snapshot_rows(engine) == before
    assert count(engine, events) == 0
    state = poller.repository.source_state("prod")
    assert state.consecutive_failures == 1
    assert state.last_error

    clock.now += 5
    recovered = poller.poll_source(config.sources[0])
    assert len(recovered.events) == 3  # nothing was lost: the change is seen after the fault
    assert poller.repository.source_state("prod").consecutive_failures == 0


def test_absent_record_is_marked_gone_and_not_created_again(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    config = make_config()
    empty = {"count": 0, "operation_records": []}
    client = ScriptedClient([example_body, empty, example_body])
    poller = make_poller(config, engine, client, make_clock())
    poller.poll_source(config.sources[0])
    gone = poller.poll_source(config.sources[0])
    assert gone.events == ()
    with engine.connect() as connection:
        assert connection.execute(select(snapshots.c.gone_at)).scalar_one() is not None
    back = poller.poll_source(config.sources[0])
    assert back.events == ()  # not "created" again
    with engine.connect() as connection:
        assert connection.execute(select(snapshots.c.gone_at)).scalar_one() is None


def test_unreachable_once_after_threshold_then_recovered_once(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    config = make_config(unreachable_after=60)
    errors: list[Any] = [TransportError(f"connection refused {n}") for n in range(4)]
    client = ScriptedClient([example_body, *errors, example_body, example_body])
    clock = make_clock()
    poller = make_poller(config, engine, client, clock)
    poller.poll_source(config.sources[0])

    seen: list[EventType] = []
    for step in (0, 30, 61, 90):  # failures at t=0, 30, 61, 90 s of the outage
        clock.now = 1_700_000_100.0 + step
        seen.extend(event.type for event in poller.poll_source(config.sources[0]).events)
    assert seen == [EventType.SOURCE_UNREACHABLE]

    clock.now += 10
    healed = poller.poll_source(config.sources[0])
    assert [event.type for event in healed.events] == [EventType.SOURCE_RECOVERED]
    assert poller.poll_source(config.sources[0]).events == ()
    with engine.connect() as connection:
        payloads = [json.loads(p) for p in connection.scalars(select(events.c.payload))]
    assert payloads[0]["error"] == "connection refused 2"
    assert payloads[0]["source"] == "prod"


def test_outbox_rows_follow_channel_routing(engine: Engine, example_body: dict[str, Any]) -> None:
    config = make_config(
        channels=[
            channel("all", "json://127.0.0.1:9/"),
            channel("failures", "json://127.0.0.1:9/", statuses=["failed"]),
        ]
    )
    client = ScriptedClient([example_body, finish_storage(example_body)])
    poller = make_poller(config, engine, client, make_clock())
    poller.poll_source(config.sources[0])
    poller.poll_source(config.sources[0])
    with engine.connect() as connection:
        rows = connection.execute(select(outbox.c.channel, outbox.c.state)).all()
    assert [tuple(row) for row in rows] == [("all", "pending")]


def test_dry_run_writes_nothing(engine: Engine, example_body: dict[str, Any]) -> None:
    config = make_config()
    client = ScriptedClient([example_body, finish_storage(example_body)])
    poller = make_poller(config, engine, client, make_clock())
    poller.poll_source(config.sources[0])
    before = snapshot_rows(engine)
    result = poller.poll_source(config.sources[0], dry_run=True)
    assert len(result.events) == 3
    assert snapshot_rows(engine) == before
    assert count(engine, events) == 0


def test_multi_valued_filter_narrows_locally(engine: Engine, example_body: dict[str, Any]) -> None:
    config = make_config(filters={"operation_type": ["01", "02"]})
    body = with_new_operation(example_body)  # one "99" record, one "01" record
    poller = make_poller(config, engine, ScriptedClient([body]), make_clock())
    result = poller.poll_source(config.sources[0])
    assert result.records == 1
    with engine.connect() as connection:
        assert connection.scalars(select(snapshots.c.operation_id)).all() == [
            "BCSSVC01-01-1618218600000000000"
        ]


def test_clients_are_reused_and_closed(engine: Engine, example_body: dict[str, Any]) -> None:
    config = make_config()
    made: list[ScriptedClient] = []

    def factory(_source: Any) -> ScriptedClient:
        client = ScriptedClient([example_body, example_body])
        made.append(client)
        return client

    factory_typed: Callable[[Any], ScriptedClient] = factory
    with Poller(config, engine, client_factory=factory_typed, clock=make_clock()) as poller:
        poller.poll_all()
        poller.poll_all()
    assert len(made) == 1
    assert made[0].closed


def test_a_reloaded_poller_adopts_the_clients_of_unchanged_sources(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    made: list[ScriptedClient] = []

    def factory(_source: Any) -> ScriptedClient:
        client = ScriptedClient([example_body] * 3)
        made.append(client)
        return client

    old_config = make_config()
    old = Poller(old_config, engine, client_factory=factory, clock=make_clock())
    old.poll_source(old_config.sources[0])

    same = Poller(make_config(), engine, client_factory=factory, clock=make_clock())
    same.adopt_clients(old)
    same.poll_source(same.config.sources[0])
    assert len(made) == 1  # the client (and its cached IAM token) carried over
    old.close()
    assert not made[0].closed

    base = make_config()
    moved = replace(base, sources=(replace(base.sources[0], timeout=3.0),))
    changed = Poller(moved, engine, client_factory=factory, clock=make_clock())
    changed.adopt_clients(same)
    same.close()
    assert made[0].closed  # the source changed: its old client was not adopted


def test_refused_credentials_rest_until_the_client_says_then_polling_resumes(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    from notifier.errors import SignatureRejected

    config = make_config()
    clock = make_clock()

    class RefusingClient(ScriptedClient):
        retry_not_before: float | None = None

        def fetch(self) -> Fetched:
            try:
                return super().fetch()
            except SignatureRejected:
                self.retry_not_before = clock.now + 300
                raise

    refused = SignatureRejected(status=401, code="APIGW.0301", message="bad signature")
    client = RefusingClient([refused, example_body])
    poller = make_poller(config, engine, client, clock)
    assert isinstance(poller.poll_source(config.sources[0]).error, SignatureRejected)
    assert poller.repository.source_state("prod").rest_until == int((clock.now + 300) * 1000)

    clock.now += 299
    # a new process (fresh client) still honours the stored rest: nothing is fetched
    restarted = make_poller(config, engine, ScriptedClient([]), clock)
    resting = restarted.poll_source(config.sources[0])
    assert resting.error is not None
    assert resting.error.retry_after == pytest.approx(1.0)
    assert "no request before" in str(resting.error)

    clock.now += 2
    resumed = make_poller(config, engine, ScriptedClient([example_body]), clock)
    assert resumed.poll_source(config.sources[0]).ok
    assert resumed.repository.source_state("prod").rest_until is None


def test_a_cleared_rest_makes_the_same_client_try_again(
    engine: Engine, router: Any, example_body: dict[str, Any]
) -> None:
    """The running service keeps its client (and the rest it remembers) across polls: once
    the stored rest is cleared (``source clear-rest``), the client forgets its own too."""
    import httpx
    from bcs_support import ENDPOINT, PROJECT, RECORD_URL
    from config_support import aksk_auth

    from notifier.errors import SignatureRejected
    from notifier.store.repository import Repository

    signed = source(
        "signed",
        endpoint=ENDPOINT,
        project_id=PROJECT,
        max_retries=0,
        auth=aksk_auth("HPUAEXAMPLEAK0000001", "secret-key-0001"),
    )
    config = parse_config(config_toml(sources=[signed]))
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(401, json={"error_code": "APIGW.0301", "error_msg": "x"})
    with Poller(config, engine) as poller:
        assert isinstance(poller.poll_source(config.sources[0]).error, SignatureRejected)
        assert isinstance(poller.poll_source(config.sources[0]).error, SignatureRejected)
        assert route.call_count == 1  # resting

        Repository(engine).clear_rest("signed")
        route.return_value = httpx.Response(200, json=example_body)
        assert poller.poll_source(config.sources[0]).ok

    assert route.call_count == 2


def test_long_operation_ids_and_statuses_are_stored_and_reported(
    engine: Engine, example_body: dict[str, Any]
) -> None:
    """PostgreSQL enforces column lengths: a 300-character operation id and a 100-character
    status are stored and reported like any other; an id too long to store is skipped with
    one warning and the rest of the response still counts."""
    long_id, long_status = "BCSSVC01-99-" + "7" * 288, "s" * 100
    first = copy.deepcopy(example_body)
    record = first["operation_records"][0]
    record["operation_id"] = long_id
    too_long = copy.deepcopy(record)
    too_long["operation_id"] = "x" * 600
    first["operation_records"].append(too_long)
    first["count"] = len(first["operation_records"])
    second = copy.deepcopy(first)
    second["operation_records"][0]["operation_status"] = long_status
    config = make_config()
    poller = make_poller(config, engine, ScriptedClient([first, second]), make_clock())
    baseline = poller.poll_source(config.sources[0])
    assert baseline.ok
    assert baseline.skipped == ("x" * 600,)
    changed = poller.poll_source(config.sources[0])
    assert changed.ok
    status_events = [e for e in changed.events if e.type == EventType.OPERATION_STATUS_CHANGED]
    assert [(e.operation_id, e.to_status) for e in status_events] == [(long_id, long_status)]
    with engine.connect() as connection:
        rows = connection.execute(select(snapshots.c.operation_id, snapshots.c.status)).all()
    assert [(row.operation_id, row.status) for row in rows] == [(long_id, long_status)]
    assert count(engine, events) == 1
