"""The dispatcher over a real migrated SQLite file: routing, retries, dead letters, pacing,
coalescing, per-target bookkeeping (keyed by URL), one bad template, row or stored event
failing alone, rows of unconfigured channels waiting, and the list/retry/purge/reassign
helpers."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

import pytest
from delivery_support import (
    NOW_MS,
    FakeClock,
    event_for,
    insert_group,
    make_config,
    record,
    status_event,
    substep_failed,
)
from net_support import Receiver, http_receiver, point_slack_at
from sqlalchemy import Engine, select, update

from notifier import outbox as outbox_module
from notifier.channels.slack import SlackSender
from notifier.channels.targets import url_key
from notifier.config import ChannelConfig
from notifier.model import Event, EventType
from notifier.outbox import Dispatcher, backoff_seconds, list_entries
from notifier.store.schema import events, outbox
from notifier.store.status import outbox_summary


@pytest.fixture
def engine(store_engine: Engine) -> Engine:
    """Every outbox test runs on a migrated SQLite file and on a real PostgreSQL database."""
    return store_engine


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(select(outbox).order_by(outbox.c.id)))


def _dispatcher(
    engine: Engine, channels: list[ChannelConfig], **delivery: Any
) -> tuple[Dispatcher, FakeClock]:
    clock = FakeClock()
    dispatcher = Dispatcher(
        make_config(channels, **delivery), engine, clock=clock, sleep=clock.sleep, rand=lambda: 0.5
    )
    return dispatcher, clock


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 0.0), (1, 7.5), (2, 15.0), (3, 30.0), (10, 75.0)],
    ids=["none", "first", "second", "third", "capped"],
)
def test_backoff_is_exponential_with_jitter_and_capped(attempts: int, expected: float) -> None:
    assert backoff_seconds(attempts, 10, 100, lambda: 0.5) == expected
    if attempts:
        low = backoff_seconds(attempts, 10, 100, lambda: 0.0)
        high = backoff_seconds(attempts, 10, 100, lambda: 1.0)
        assert low == high / 2


@pytest.mark.parametrize(
    ("channel", "event_types", "expected"),
    [
        (
            ChannelConfig(name="c", urls=("x",)),
            ["operation.status_changed", "substep.status_changed"],
            2,
        ),
        (
            ChannelConfig(name="c", urls=("x",), events=("operation.*",)),
            ["operation.status_changed", "substep.status_changed"],
            1,
        ),
        (
            ChannelConfig(name="c", urls=("x",), statuses=("failed",)),
            ["operation.status_changed"],
            1,
        ),
        (
            ChannelConfig(name="c", urls=("x",), statuses=("finished",)),
            ["operation.status_changed"],
            0,
        ),
        (
            ChannelConfig(name="c", urls=("x",), blockchains=("bcs-other",)),
            ["operation.status_changed"],
            0,
        ),
        (
            ChannelConfig(name="c", urls=("x",), blockchains=("bcs-prod",)),
            ["operation.status_changed"],
            1,
        ),
        (
            ChannelConfig(name="c", urls=("x",), operation_types=("00",)),
            ["operation.status_changed"],
            0,
        ),
        (ChannelConfig(name="c", urls=("x",), sources=("other",)), ["operation.status_changed"], 0),
    ],
    ids=[
        "all",
        "glob",
        "status-match",
        "status-miss",
        "chain-miss",
        "chain-name",
        "optype-miss",
        "source-miss",
    ],
)
def test_webhook_gets_only_the_events_its_filters_admit(
    engine: Engine, channel: ChannelConfig, event_types: list[str], expected: int
) -> None:
    rec = record(status="failed")
    events = []
    for event_type in event_types:
        if event_type == "operation.status_changed":
            events.append(status_event(rec, "processing", "failed"))
        else:
            events.append(substep_failed(rec, "s", "x"))
    with http_receiver() as receiver:
        hook = ChannelConfig(**{**channel.__dict__, "urls": (f"webhook://{receiver.base}/",)})
        insert_group(engine, events, rec, ["c"])
        dispatcher, _ = _dispatcher(engine, [hook])
        stats = dispatcher.dispatch_due()
        received = receiver.accepted
    assert len(received) == expected
    assert stats.sent == 1  # nothing (left) to send is delivered too


def test_partial_failure_never_resends_to_the_target_that_succeeded(engine: Engine) -> None:
    rec = record(status="failed")
    with http_receiver() as good, http_receiver(default_status=500) as bad:
        channel = ChannelConfig(name="c", urls=(f"json://{good.base}/", f"json://{bad.base}/"))
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["c"])
        dispatcher, clock = _dispatcher(engine, [channel], backoff_initial=10)
        first = dispatcher.dispatch_due()
        [row] = _rows(engine)
        assert (first.failed, row.state, row.attempts) == (1, "pending", 1)
        assert json.loads(row.done_targets) == [url_key(channel.urls[0])]
        assert "HTTP Error 500" in row.last_error or "500" in row.last_error
        bad.default_status = 200
        clock.advance(60)
        second = dispatcher.dispatch_due()
        good_count, bad_count = len(good.requests), len(bad.requests)
    assert second.sent == 1
    assert (good_count, bad_count) == (1, 2)
    [row] = _rows(engine)
    assert row.state == "sent"
    assert sorted(json.loads(row.done_targets)) == sorted(map(url_key, channel.urls))


def test_dead_after_max_attempts_then_retry_and_purge(engine: Engine) -> None:
    rec = record(status="failed")
    with http_receiver(default_status=503) as receiver:
        channel = ChannelConfig(name="c", urls=(f"json://{receiver.base}/",))
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["c"])
        dispatcher, clock = _dispatcher(
            engine, [channel], max_attempts=3, backoff_initial=1, backoff_max=1
        )
        outcomes = []
        for _ in range(4):
            stats = dispatcher.dispatch_due()
            outcomes.append((stats.failed, stats.dead))
            clock.advance(5)
        assert outcomes == [(1, 0), (1, 0), (0, 1), (0, 0)]
        [entry] = list_entries(engine)
        assert entry.state == "dead"
        assert entry.last_error is not None
        assert entry.last_error.startswith("dead after 3 attempts")
        assert outbox_module.counts_by_state(engine) == {"pending": 0, "sent": 0, "dead": 1}

        receiver.default_status = 200
        assert outbox_module.retry(engine, now_ms=clock.wall_ms()) == 1
        assert dispatcher.dispatch_due().sent == 1
    assert outbox_module.purge(engine, states=["dead"]) == 0
    assert outbox_module.purge(engine, states=["sent"], older_than_ms=0) == 0
    assert outbox_module.purge(engine, states=["sent"]) == 1
    assert _rows(engine) == []


def test_dead_after_max_age_even_with_attempts_left(engine: Engine) -> None:
    rec = record(status="failed")
    with http_receiver(default_status=500) as receiver:
        channel = ChannelConfig(name="c", urls=(f"json://{receiver.base}/",))
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["c"])
        dispatcher, clock = _dispatcher(engine, [channel], max_age=3600, max_attempts=100)
        clock.advance(3601)
        stats = dispatcher.dispatch_due()
    assert stats.dead == 1
    assert "max_age" in _rows(engine)[0].last_error


def test_backlog_for_one_operation_is_coalesced_into_one_message_in_order(engine: Engine) -> None:
    cycles = [("waiting", "processing"), ("processing", "failed")]
    with http_receiver(default_status=500) as receiver:
        channel = ChannelConfig(name="c", urls=(f"json://{receiver.base}/",))
        dispatcher, clock = _dispatcher(engine, [channel], backoff_initial=30)
        for index, (old, new) in enumerate(cycles):
            rec = record(status=new, record_time=1_700_000_000_000_000_000 + index * 10**12)
            insert_group(engine, [status_event(rec, old, new)], rec, ["c"], now_ms=NOW_MS + index)
            dispatcher.dispatch_due()
            clock.advance(1)
        receiver.default_status = 200
        clock.advance(600)
        stats = dispatcher.dispatch_due()
        messages = receiver.bodies()
    assert stats.sent == 2
    assert len(messages) == 1
    body = messages[0]["message"]
    assert body.index("waiting → processing") < body.index("processing → failed")
    assert messages[0]["title"].startswith("❌ failed")


def test_one_message_per_operation_per_cycle(engine: Engine) -> None:
    with http_receiver() as receiver:
        channel = ChannelConfig(name="c", urls=(f"json://{receiver.base}/",))
        for number in range(3):
            rec = record(
                operation_id=f"BCSSVC01-99-17000000000000000{number:02d}", status="finished"
            )
            events: list[Event] = [
                event_for(
                    rec,
                    EventType.STEP_STATUS_CHANGED,
                    step_name="a",
                    from_status="processing",
                    to_status="finished",
                ),
                status_event(rec, "processing", "finished"),
            ]
            insert_group(engine, events, rec, ["c"])
        dispatcher, _ = _dispatcher(engine, [channel])
        stats = dispatcher.dispatch_due()
        titles = [body["title"] for body in receiver.bodies()]
    assert (stats.sent, stats.messages) == (3, 3)
    assert titles == ["✅ finished · OpCreate · bcs-prod"] * 3


def test_slack_payload_and_pacing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = ChannelConfig(
        name="slack", urls=("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#ops",)
    )
    for number in range(12):
        rec = record(
            operation_id=f"BCSSVC01-99-17000000000000001{number:02d}",
            status="failed",
            name="bcs_<prod>",
        )
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["slack"])
    dispatcher, clock = _dispatcher(engine, [channel])
    times: list[float] = []
    post = SlackSender._post

    def timed_post(self: SlackSender, payload: dict[str, Any], limit: Any) -> Any:
        times.append(clock.monotonic())
        return post(self, payload, limit)

    monkeypatch.setattr(SlackSender, "_post", timed_post)
    with http_receiver() as receiver:
        point_slack_at(monkeypatch, receiver)
        first = dispatcher.dispatch_due()
        assert first.sent == 5  # 1 + 4 paced sends fit the 5 s pacing budget
        assert first.deferred == 7
        assert all(later - earlier >= 1.2 - 1e-9 for earlier, later in itertools.pairwise(times))
        assert dispatcher.dispatch_due().handled == 0  # deferred rows wait their turn
        for _ in range(10):
            clock.advance(1.2)
            dispatcher.dispatch_due()
        requests = receiver.snapshot()
    assert len(requests) == 12
    assert outbox_module.counts_by_state(engine)["sent"] == 12

    assert requests[0].path == "/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ"
    payload = requests[0].json()
    assert payload["channel"] == "#ops"
    assert payload["blocks"][0]["text"]["text"] == "❌ failed · OpCreate · bcs_<prod>"  # plain
    assert payload["text"].startswith("❌ failed · OpCreate · bcs_&lt;prod&gt;")  # mrkdwn
    assert "processing → failed" in json.dumps(payload, ensure_ascii=False)


def test_console_target_prints_markdown_or_text(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = record(status="failed")
    insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["md", "txt"])
    channels = [
        ChannelConfig(name="md", urls=("console://?format=markdown",)),
        ChannelConfig(name="txt", urls=("console://",)),
    ]
    dispatcher, _ = _dispatcher(engine, channels)
    assert dispatcher.dispatch_due().sent == 2
    out = capsys.readouterr().out
    assert "## ❌ failed · OpCreate · bcs-prod" in out
    assert "**Operation**: processing → failed" in out
    assert "❌ failed · OpCreate · bcs-prod\n=====" in out
    assert "- ❌ Operation: processing → failed" in out


def test_errors_and_logs_never_show_url_secrets(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    rec = record(status="failed")
    with http_receiver(default_status=500) as receiver:
        channel = ChannelConfig(
            name="c",
            urls=(
                f"json://admin:hunter2pass@{receiver.base}/x?+Authorization=Bearer%20tok3n-s3cret",
            ),
        )
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, ["c"])
        dispatcher, _ = _dispatcher(engine, [channel])
        dispatcher.dispatch_due()
    stored = json.dumps([dict(row._mapping) for row in _rows(engine)])
    for secret in ("hunter2pass", "tok3n-s3cret"):
        assert secret not in stored
        assert secret not in caplog.text
    assert "json://admin:****@" in stored


# -- one failing template, row or stored event never blocks the batch ---------------------------


def _json_url(receiver: Receiver) -> str:
    return f"json://{receiver.base}/"


def _operation(number: int, status: str = "failed") -> tuple[list[Event], Any]:
    rec = record(operation_id=f"BCSSVC01-99-17000000000000009{number:02d}", status=status)
    return [status_event(rec, "processing", status)], rec


def test_a_template_failing_for_some_data_falls_back_and_the_batch_goes_on(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with http_receiver() as inbox:
        channel = ChannelConfig(
            name="c", urls=(_json_url(inbox),), body="n={{ 100 // (events|length - 1) }}"
        )
        for number in range(3):
            group_events, rec = _operation(number)
            insert_group(engine, group_events, rec, ["c"])
        with caplog.at_level(logging.WARNING, logger="notifier.outbox"):
            stats = _dispatcher(engine, [channel])[0].dispatch_due()
        bodies = inbox.bodies()
    assert stats.sent == 3
    assert len(bodies) == 3
    assert all("processing → failed" in body["message"] for body in bodies)  # the default
    assert caplog.text.count("sending the default message") == 1  # once, not per message
    assert "ZeroDivisionError" in caplog.text


def test_an_unexpected_error_for_one_row_fails_that_row_only(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = outbox_module.Dispatcher._deliver
    poisoned = "BCSSVC01-99-1700000000000000901"

    def deliver(self: Any, target: Any, rows: Any, **message: Any) -> Any:
        if poisoned in message["body"]:
            raise OverflowError("int too large to convert\nto float")
        return real(self, target, rows, **message)

    # an unexpected error while sending (rendering has a plain fallback: see
    # test_hostile.py) fails its row only, with backoff
    monkeypatch.setattr(outbox_module.Dispatcher, "_deliver", deliver)
    with http_receiver() as inbox:
        channel = ChannelConfig(name="c", urls=(_json_url(inbox),))
        for number in range(3):
            group_events, rec = _operation(number)
            insert_group(engine, group_events, rec, ["c"])
        dispatcher, clock = _dispatcher(engine, [channel], max_attempts=3, backoff_initial=10)
        with caplog.at_level(logging.WARNING, logger="notifier.outbox"):
            first = dispatcher.dispatch_due()
            rows = _rows(engine)
            for _ in range(5):
                clock.advance(3600)
                dispatcher.dispatch_due()
        received = len(inbox.bodies())
    assert (first.sent, first.failed) == (2, 1)
    failed = rows[1]
    assert (failed.state, failed.attempts) == ("pending", 1)
    assert failed.next_attempt_at > NOW_MS  # backoff, not due again at once
    assert "internal error: OverflowError: int too large to convert to float" in failed.last_error
    assert "\n" not in failed.last_error
    assert [row.state for row in _rows(engine)] == ["sent", "dead", "sent"]
    assert received == 2
    assert caplog.text.count("Traceback") == 1  # the traceback once, then one line each


def test_an_unreadable_stored_event_fails_its_row_only(engine: Engine) -> None:
    with http_receiver() as inbox:
        channel = ChannelConfig(name="c", urls=(_json_url(inbox),))
        groups = []
        for number in range(3):
            group_events, rec = _operation(number)
            groups.append(insert_group(engine, group_events, rec, ["c"]))
        with engine.begin() as connection:
            connection.execute(
                update(events).where(events.c.group_id == groups[0]).values(payload="{not json")
            )
        stats = _dispatcher(engine, [channel])[0].dispatch_due()
        received = len(inbox.bodies())
    # an unreadable stored event never becomes readable by retrying: dead at once, said so
    assert (stats.sent, stats.failed, stats.dead, received) == (2, 0, 1, 2)
    broken = _rows(engine)[0]
    assert (broken.state, broken.attempts) == ("dead", 1)
    assert broken.last_error.startswith(
        "permanent failure, not retried: stored event unreadable: JSONDecodeError"
    )


# -- done_targets keys follow the URL, not its position -------------------------------------------


def test_removing_the_url_that_succeeded_still_delivers_to_the_one_that_failed(
    engine: Engine,
) -> None:
    with http_receiver() as good, http_receiver(default_status=500) as bad:
        group_events, rec = _operation(1)
        insert_group(engine, group_events, rec, ["c"])
        both = ChannelConfig(name="c", urls=(_json_url(good), _json_url(bad)))
        first = _dispatcher(engine, [both])[0].dispatch_due()
        [row] = _rows(engine)
        assert (first.failed, json.loads(row.done_targets)) == (1, [url_key(_json_url(good))])
        bad.default_status = 200
        only_b = ChannelConfig(name="c", urls=(_json_url(bad),))  # A removed: B is now position 0
        outbox_module.retry(engine, now_ms=NOW_MS, include_pending=True)
        second = _dispatcher(engine, [only_b])[0].dispatch_due()
        received = (len(good.bodies()), len(bad.bodies()))
    assert second.sent == 1
    assert received == (1, 1)  # B got it; A was not asked again


def test_rows_with_positional_keys_are_read_as_before(engine: Engine) -> None:
    """Rows written before the keys came from URLs: "0" still means the first URL."""
    with http_receiver() as first_url, http_receiver() as second_url:
        group_events, rec = _operation(1)
        insert_group(engine, group_events, rec, ["c"])
        with engine.begin() as connection:
            connection.execute(update(outbox).values(done_targets='["0"]'))
        channel = ChannelConfig(name="c", urls=(_json_url(first_url), _json_url(second_url)))
        stats = _dispatcher(engine, [channel])[0].dispatch_due()
        received = (len(first_url.bodies()), len(second_url.bodies()))
    assert stats.sent == 1
    assert received == (0, 1)
    assert json.loads(_rows(engine)[0].done_targets) == ["0", url_key(_json_url(second_url))]


# -- rows of a channel that is not configured wait ----------------------------------------------


def test_rows_of_a_renamed_channel_wait_and_can_be_reassigned(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    for number in range(3):
        group_events, rec = _operation(number)
        insert_group(engine, group_events, rec, ["hook"])
    with http_receiver() as inbox:
        renamed = ChannelConfig(name="hook-renamed", urls=(_json_url(inbox),))
        dispatcher, clock = _dispatcher(engine, [renamed], max_attempts=1)
        with caplog.at_level(logging.WARNING, logger="notifier.outbox"):
            for _ in range(3):
                stats = dispatcher.dispatch_due()
                assert stats.handled == 0
                clock.advance(60)
        rows = _rows(engine)
        assert [(row.state, row.attempts, row.last_error) for row in rows] == [
            ("pending", 0, None)
        ] * 3
        assert caplog.text.count("wait for channel 'hook'") == 1  # once, not per row or pass
        summary = outbox_summary(engine, NOW_MS + 10**6, ["hook-renamed"])
        assert (summary.pending, summary.due, summary.unconfigured) == (3, 0, {"hook": 3})

        done = outbox_module.reassign(
            engine, old="hook", new="hook-renamed", now_ms=NOW_MS, admits=lambda event: True
        )
        assert (done.moved, done.empty, done.kept) == (3, 0, 0)
        assert dispatcher.dispatch_due().sent == 3
        assert len(inbox.bodies()) == 3
