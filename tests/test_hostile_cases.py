"""The cases issue 14 reproduced one by one: API values past int64 or with lone surrogates,
times no calendar shows (also in events stored by older versions), permanent delivery
failures, config files that used to cost a traceback or were accepted, a read-only or full
store, and a database deleted under a running service."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import respx
from click.testing import CliRunner
from config_support import RECORD_URL, channel, source, write_config
from hostile_support import body_text, good_record
from net_support import http_receiver
from sqlalchemy import Engine, insert
from test_service_daemon import FakeClock, Result, build, make_config

from notifier.channels.render import RenderOptions, format_duration, format_time, render_message
from notifier.cli import main
from notifier.config import ChannelConfig, load_config
from notifier.errors import ConfigError, StoreError
from notifier.model import Event, EventType, cloudevent, ns_to_rfc3339
from notifier.outbox import Dispatcher
from notifier.pipeline import Poller
from notifier.store import db
from notifier.store.guard import BaselineMarker
from notifier.store.repository import Repository
from notifier.store.schema import event_groups, events, outbox

INT64_MAX = 2**63 - 1


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- values from the API -----------------------------------------------------------------------


def _hostile_body(**changes: Any) -> str:
    """Two good records and a third with ``changes`` (a placeholder-free JSON text)."""
    records = [good_record(0, 1), good_record(1, 1), dict(good_record(2, 1), **changes)]
    return body_text(records)


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        pytest.param('"record_time": 9223372036854775808', INT64_MAX, id="record_time-2**63"),
        pytest.param('"record_time": ' + "9" * 5000, INT64_MAX, id="5000-digit-literal"),
        pytest.param('"record_time": -99999999999999999999', 0, id="before-1970"),
    ],
)
def test_numbers_past_int64_are_clamped_and_the_poll_goes_on(
    engine: Engine, router: respx.MockRouter, caplog: pytest.LogCaptureFixture, raw: str, kept: int
) -> None:
    config = load_config(write_config(engine_dir(engine)))
    text = _hostile_body().replace('"record_time": 1700000060000000002', raw)
    assert raw in text
    router.get(RECORD_URL).respond(200, text=text, headers={"Content-Type": "application/json"})
    with caplog.at_level(logging.WARNING), Poller(config, engine) as poller:
        first = poller.poll_source(config.sources[0])
    assert first.ok
    assert first.records == 3
    stored = Repository(engine).load_records("prod", ["BCSSVC01-99-1700000000000000002"])
    assert stored["BCSSVC01-99-1700000000000000002"].record_time == kept
    warnings = [r.getMessage() for r in caplog.records if "bounded values" in r.getMessage()]
    assert len(warnings) == 1
    assert "BCSSVC01-99-1700000000000000002" in warnings[0]


def test_a_lone_surrogate_is_replaced_and_the_other_records_still_report(
    engine: Engine, router: respx.MockRouter
) -> None:
    config = load_config(write_config(engine_dir(engine)))
    route = router.get(RECORD_URL)
    route.respond(200, text=_hostile_body(), headers={"Content-Type": "application/json"})
    with Poller(config, engine) as poller:
        assert poller.poll_source(config.sources[0]).baseline
        moved = [good_record(0, 2), good_record(1, 1), good_record(2, 2)]
        moved[2]["operation_process"]["Preparation"]["detail"] = "\ud800 bad \udfff"
        moved[2]["message"] = ["ok", "\ud83d"]
        route.respond(200, text=body_text(moved), headers={"Content-Type": "application/json"})
        second = poller.poll_source(config.sources[0])
    assert second.ok
    changed = {event.operation_id for event in second.events}
    assert changed == {"BCSSVC01-99-1700000000000000000", "BCSSVC01-99-1700000000000000002"}
    record = Repository(engine).load_records("prod", ["BCSSVC01-99-1700000000000000002"])
    step = record["BCSSVC01-99-1700000000000000002"].steps[0]
    assert step.detail == "\ufffd bad \ufffd"
    for event in second.events:
        json.dumps(cloudevent(event), ensure_ascii=False).encode("utf-8")


def test_a_record_nested_too_deep_for_the_decoder_costs_only_itself(
    engine: Engine, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_config(engine_dir(engine)))
    deep = good_record(2, 1)
    text = body_text([good_record(0, 1), good_record(1, 1), dict(deep, operation_process="DEEP")])
    text = text.replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    router.get(RECORD_URL).respond(200, text=text, headers={"Content-Type": "application/json"})
    with caplog.at_level(logging.WARNING), Poller(config, engine) as poller:
        result = poller.poll_source(config.sources[0])
    assert result.ok
    assert result.records == 2
    assert result.skipped == ("BCSSVC01-99-1700000000000000002",)
    assert "nests deeper than the decoder allows" in caplog.text


def test_an_id_longer_than_the_store_holds_is_skipped_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from notifier.bcs.parse import parse_response

    body = json.loads(
        # 300 characters are stored since migration 0004 (issue 12); past 512 is skipped
        body_text([good_record(0, 1), dict(good_record(1, 1), operation_id="x" * 600)])
    )
    with caplog.at_level(logging.WARNING):
        parsed = parse_response(body)
    assert [record.operation_id for record in parsed.records] == ["BCSSVC01-99-1700000000000000000"]
    assert parsed.skipped == ("x" * 600,)
    assert len(caplog.records) == 1
    assert "at most 512" in caplog.records[0].getMessage()


def engine_dir(engine: Engine) -> Path:
    return Path(str(engine.url.database)).parent


# -- rendering of any stored time --------------------------------------------------------------


@pytest.mark.parametrize(
    "nanoseconds", [10**30, 253_402_300_800 * 10**9, 10**400], ids=["1e30", "year-10000", "1e400"]
)
def test_times_no_calendar_shows_still_render(nanoseconds: int) -> None:
    assert ns_to_rfc3339(nanoseconds) == "9999-12-30T00:00:00.000000000Z"
    assert format_time(nanoseconds, __import__("zoneinfo").ZoneInfo("Pacific/Kiritimati"))
    assert format_duration(1, nanoseconds) is not None


def _absurd_event(number: int) -> Event:
    return Event(
        id=f"evt_absurd_{number}",
        type=EventType.SUBSTEP_STATUS_CHANGED,
        source="prod",
        operation_id=f"BCSSVC01-99-17000000000000009{number:02d}",
        record_time=1_700_000_000_000_000_000,
        operation={"operation_id": "x", "status": "processing", "record_time": 10**30},
        step="Preparation",
        substep="Generate",
        from_status="processing",
        to_status="finished",
        started_at=10**30,
        ended_at=10**40,
    )


def _store_as_an_older_version_did(engine: Engine, event: Event, channels: list[str]) -> None:
    """An event with absurd times, written straight into the tables (as before issue 14)."""
    group = f"grp_{event.id}"
    with engine.begin() as connection:
        connection.execute(
            insert(event_groups).values(
                id=group, source="prod", operation_id=event.operation_id, created_at=1, record=None
            )
        )
        connection.execute(
            insert(events).values(
                id=event.id,
                group_id=group,
                source="prod",
                operation_id=event.operation_id,
                type=str(event.type),
                record_time=1,
                created_at=1,
                payload=json.dumps(event.to_dict()),
            )
        )
        for name in channels:
            connection.execute(
                insert(outbox).values(
                    group_id=group,
                    channel=name,
                    state="pending",
                    attempts=0,
                    created_at=1,
                    next_attempt_at=1,
                    updated_at=1,
                    done_targets="[]",
                )
            )


def test_events_stored_with_absurd_times_list_render_and_deliver(
    engine: Engine, tmp_path: Path
) -> None:
    with http_receiver() as inbox:
        hooks, chat = f"webhook://{inbox.base}", f"json://{inbox.base}"
        path = write_config(
            engine_dir(engine),
            channels=[channel("hooks", f"{hooks}/h"), channel("chat", f"{chat}/c")],
        )
        _store_as_an_older_version_did(engine, _absurd_event(1), ["hooks", "chat"])
        for flag in ("--json", None):
            result = _cli("--config", str(path), "events", *([flag] if flag else []))
            assert result.exit_code == 0, result.output
            assert "substep.status_changed" in result.stdout
        document = json.loads(_cli("--config", str(path), "events", "--json").stdout)
        assert document["data"]["started_at"] == "2262-04-11T23:47:16.854775807Z"  # int64 max
        stats = Dispatcher(load_config(path), engine).dispatch_due()
        inbox.wait_for(lambda received: len(received) >= 2)
    assert (stats.sent, stats.failed, stats.dead) == (2, 0, 0)


def test_a_message_that_cannot_be_built_falls_back_to_a_plain_list(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notifier.outbox.delivery as outbox_module

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise ValueError("year 3170843 is out of range")

    monkeypatch.setattr(outbox_module, "render_message", broken)
    with http_receiver() as inbox:
        config = make_config(f"sqlite:///{engine.url.database}")
        config = type(config)(
            service=config.service,
            delivery=config.delivery,
            sources=config.sources,
            channels=(ChannelConfig(name="chat", urls=(f"json://{inbox.base}/c",)),),
        )
        _store_as_an_older_version_did(engine, _absurd_event(2), ["chat"])
        stats = Dispatcher(config, engine).dispatch_due()
        inbox.wait_for(lambda received: len(received) >= 1)
        body = inbox.bodies()[0]
    assert stats.sent == 1
    assert "substep.status_changed" in body["message"]


def test_every_renderer_survives_stored_absurd_values() -> None:
    event = _absurd_event(3)
    for fmt in ("markdown", "html", "text"):
        message = render_message([event], None, RenderOptions(format=fmt, budget=500))
        assert message.body


# -- config files --------------------------------------------------------------------------------


BASE = """
[service]
database = "sqlite:///{directory}/state.db"
{service}
[delivery]
{delivery}
[[sources]]
name = "prod"
endpoint = {endpoint}
project_id = "p1"
{source}
[sources.auth]
type = "token"
token = "t"
"""


@pytest.mark.parametrize(
    ("section", "line", "path"),
    [
        ("service", "active_poll_interval = nan", "service.active_poll_interval"),
        ("service", "poll_interval = inf", "service.poll_interval"),
        ("service", "unreachable_after = -inf", "service.unreachable_after"),
        ("service", "poll_jitter = nan", "service.poll_jitter"),
        ("source", "timeout = nan", "sources[0].timeout"),
        ("source", "timeout = 1e23", "sources[0].timeout"),
        ("delivery", "max_attempts = 100000000000000000000000", "delivery.max_attempts"),
        ("delivery", "max_age = 1e23", "delivery.max_age"),
        ("delivery", "backoff_max = -1", "delivery.backoff_max"),
        ("service", 'database = ""', "service.database"),
        ("service", 'database = "nosuchdb://x"', "service.database"),
        ("service", 'database = "sqlite://"', "service.database"),
        ("source", 'ca_file = "/nonexistent/ca.pem"', "sources[0].ca_file"),
        ("source", 'ca_file = "/proc/version"', "sources[0].ca_file"),
        ("endpoint", '"http://[::1"', "sources[0].endpoint"),
        ("endpoint", '"http://bcs.example\\u0000.test"', "sources[0].endpoint"),
        ("endpoint", '"http://bcs.example:99999"', "sources[0].endpoint"),
    ],
    ids=lambda value: value if isinstance(value, str) and "." not in value else None,
)
def test_bad_values_exit_78_naming_the_key(
    tmp_path: Path, section: str, line: str, path: str
) -> None:
    parts = {"service": "", "delivery": "", "source": "", "endpoint": '"https://bcs.example.test"'}
    if section == "service" and line.startswith("database"):
        text = BASE.replace('database = "sqlite:///{directory}/state.db"', line)
    else:
        text = BASE
        parts[section] = line
    file = tmp_path / "notifier.toml"
    file.write_text(text.format(directory=tmp_path, **parts))
    with pytest.raises(ConfigError) as raised:
        load_config(file)
    assert path in [problem.path for problem in raised.value.problems]
    result = _cli("--config", str(file), "check-config")
    assert result.exit_code == 78
    assert path in result.stderr


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[service]\npoll_interval = 5\n# caf\xe9\n", "not UTF-8 text: byte 0xe9 on line 3"),
        (b"x = " + b"[" * 20000 + b"]", "nested too deeply"),
        (b"[service]\npoll_interval = " + b"7" * 4301 + b"\n", "not valid TOML"),
    ],
    ids=["not-utf8", "deep-nesting", "4301-digits"],
)
def test_unreadable_files_exit_78_without_a_traceback(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    file = tmp_path / "notifier.toml"
    file.write_bytes(content)
    result = _cli("--config", str(file), "check-config")
    assert result.exit_code == 78
    assert reason in result.stderr
    assert "Traceback" not in result.stderr


# -- a store that fails, a database that vanishes -----------------------------------------------


def test_a_store_failure_is_logged_once_then_when_it_works_again(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    def script(name: str, _now: float, count: int) -> Result:
        if count < 5:
            try:
                raise sqlite3.OperationalError("attempt to write a readonly database")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"could not store the cycle of {name}: {exc} #{count}") from exc
        return Result(name)

    clock = FakeClock()
    daemon, poller, _ = build(
        make_config(f"sqlite:///{engine.url.database}"), engine, clock, script
    )
    daemon.start()
    with caplog.at_level(logging.DEBUG, logger="notifier.daemon"):
        while len(poller.calls) < 7:
            daemon.cycle()
            clock.now = min(s.next_at for s in daemon.schedules.values()) + 0.001
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "readonly database" in errors[0].getMessage()
    assert "Traceback" not in caplog.text  # a store error is one line, not a traceback
    assert [m for m in caplog.messages if m.startswith("source a: polling works again")] == [
        "source a: polling works again after 5 failed poll(s)"
    ]


def test_a_database_deleted_under_the_running_service_stops_it_loudly(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    daemon, poller, _ = build(make_config(f"sqlite:///{engine.url.database}"), engine, clock)
    daemon.start()
    daemon.cycle()
    assert daemon.health().healthy
    assert len(poller.calls) == 1
    database = Path(str(engine.url.database))
    for leftover in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        leftover.unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="notifier.daemon"):
        for _ in range(3):
            clock.now += 120
            daemon.cycle()
    assert len(poller.calls) == 1  # nothing polled on a database that is not there
    lost = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(lost) == 1
    assert "was deleted under the running service" in lost[0].getMessage()
    health = daemon.health()
    assert not health.healthy
    assert any("deleted" in reason for reason in health.reasons)
    assert daemon.status_line().startswith("DATABASE LOST")


def test_a_fresh_database_where_one_existed_reports_what_changed(
    tmp_path: Path, router: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, sources=[source()])
    config = load_config(path)
    route = router.get(RECORD_URL)
    old, moving = good_record(0, 3), good_record(1, 1)
    route.respond(200, text=body_text([old, moving]), headers={"Content-Type": "application/json"})

    def poll() -> tuple[Event, ...]:
        engine = db.make_engine(config.service.database)
        db.upgrade(engine)
        try:
            with Poller(config, engine) as poller:
                result = poller.poll_source(config.sources[0])
            assert result.ok
            return result.events
        finally:
            engine.dispose()

    assert poll() == ()  # the first baseline is silent
    marker = BaselineMarker(tmp_path / "state.db.baselines.json")
    assert marker.get("prod") is not None
    for leftover in tmp_path.glob("state.db*"):
        if not leftover.name.endswith(".baselines.json"):
            leftover.unlink()
    from notifier.cli.service import collect_status

    with pytest.raises(StoreError, match="held the baseline of prod: it was deleted or moved"):
        collect_status(config, 0)  # what `status` says (not "no database yet")
    moved = good_record(1, 3)  # finished while there was no database
    route.respond(200, text=body_text([old, moved]), headers={"Content-Type": "application/json"})
    with caplog.at_level(logging.ERROR, logger="notifier.pipeline"):
        found = poll()
    assert [(e.operation_id, e.type, e.to_status) for e in found] == [
        ("BCSSVC01-99-1700000000000000001", EventType.OPERATION_CREATED, "finished")
    ]
    assert "the database was deleted or replaced" in caplog.text
    assert poll() == ()  # and from then on, as usual


@pytest.mark.parametrize("log_format", ["text", "journal", "json"])
def test_a_lone_surrogate_from_the_api_can_be_logged(log_format: str) -> None:
    import io

    from notifier.logsetup import Redactor, make_formatter

    formatter = make_formatter(log_format, Redactor(), stream=io.StringIO(), environ={})
    record = logging.LogRecord(
        "notifier.bcs", logging.WARNING, __file__, 1, "error_msg %s", ("bad \ud800",), None
    )
    line = formatter.format(record)
    line.encode("utf-8")  # a handler writing UTF-8 never fails on it
    assert "bad" in line


def test_a_record_the_diff_cannot_handle_is_skipped_and_tried_again(
    engine: Engine, router: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    import notifier.pipeline as pipeline_module

    real = pipeline_module.diff_record
    poisoned = "BCSSVC01-99-1700000000000000001"

    def diff(source_name: str, before: Any, current: Any) -> Any:
        if current.operation_id == poisoned:
            raise OverflowError("a bug meets odd data")
        return real(source_name, before, current)

    config = load_config(write_config(engine_dir(engine)))
    route = router.get(RECORD_URL)
    headers = {"Content-Type": "application/json"}
    route.respond(200, text=body_text([good_record(0, 1), good_record(1, 1)]), headers=headers)
    with Poller(config, engine) as poller:
        assert poller.poll_source(config.sources[0]).ok
        monkeypatch.setattr(pipeline_module, "diff_record", diff)
        moved = body_text([good_record(0, 3), good_record(1, 3)])
        route.respond(200, text=moved, headers=headers)
        second = poller.poll_source(config.sources[0])
        monkeypatch.setattr(pipeline_module, "diff_record", real)
        third = poller.poll_source(config.sources[0])
    assert second.ok
    assert {event.operation_id for event in second.events} == {"BCSSVC01-99-1700000000000000000"}
    # not stored while it could not be diffed: the next poll reports its change
    assert {event.operation_id for event in third.events} == {poisoned}


def test_a_webhook_body_always_encodes() -> None:
    from notifier.channels.webhook import _as_cloudevent

    _, wrapped = _as_cloudevent("text with \ud800", "title \udfff", "info")
    assert "\ufffd".encode() in wrapped
    _, as_is = _as_cloudevent('{"specversion": "1.0", "id": "e1", "x": "\ud800"}', "t", "info")
    assert as_is.decode("utf-8")
