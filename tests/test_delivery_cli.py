"""`outbox list|retry|purge|dispatch|reassign` and `test-channel` through the real click
commands."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from config_support import channel, write_config
from delivery_support import insert_group, record, status_event
from net_support import http_receiver
from sqlalchemy import select

from notifier.cli import main
from notifier.store import db
from notifier.store.schema import outbox

SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def _config(tmp_path: Path, urls: list[str]) -> Path:
    return write_config(tmp_path, delivery={"max_attempts": 1}, channels=[channel("ops", *urls)])


def _run(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_outbox_lifecycle_through_the_cli(tmp_path: Path) -> None:
    with http_receiver(default_status=500) as receiver:
        config = _config(tmp_path, [f"json://user:pa55word@{receiver.base}/"])
        engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
        db.upgrade(engine)
        rec = record(status="failed")
        insert_group(
            engine,
            [status_event(rec, "processing", "failed")],
            rec,
            ["ops"],
            now_ms=int(time.time() * 1000),
        )

        code, output = _run(config, "outbox", "dispatch")
        assert code == 1
        assert "1 dead" in output

        code, output = _run(config, "outbox")
        assert code == 0
        assert "#1 dead attempts=1 channel=ops prod/BCSSVC01-99-1700000000000000001" in output
        assert "dead after 1 attempts" in output
        assert "pa55word" not in output
        assert "(0 pending, 0 sent, 1 dead)" in output

        code, output = _run(config, "outbox", "list", "--json")
        [row] = [json.loads(line) for line in output.splitlines()]
        assert (row["id"], row["state"], row["events"]) == (1, "dead", 1)

        receiver.default_status = 200
        assert _run(config, "outbox", "retry") == (0, "1 delivery due again\n")
        code, output = _run(config, "outbox", "dispatch")
        assert (code, output.split(",")[0]) == (0, "1 sent")
        assert len(receiver.accepted) == 1

        assert (
            _run(config, "outbox", "purge", "--older-than", "1h")[1] == "purged 0 sent deliveries\n"
        )
        assert _run(config, "outbox", "purge")[1] == "purged 1 sent delivery\n"
        code, output = _run(config, "outbox", "list", "--state", "all")
        assert "no pending/sent/dead deliveries" in output
    engine.dispose()


def test_test_channel_sends_to_every_target(tmp_path: Path) -> None:
    with http_receiver() as receiver:
        config = _config(
            tmp_path,
            [f"webhook://{receiver.base}/hook?secret={SECRET}", f"json://{receiver.base}/json"],
        )
        code, output = _run(config, "test-channel", "ops")
        requests = list(receiver.accepted)
    assert code == 0, output
    assert output.count("ok ") == 2
    assert "secret=****" in output
    hook, chat = requests
    assert hook.json()["type"] == "bcs_notifier.test"
    assert hook.headers["webhook-id"] == hook.json()["id"]
    assert chat.json()["title"].startswith("[test] ❌ failed · OpCreate")


def test_test_channel_reports_failures_and_unknown_names(tmp_path: Path) -> None:
    with http_receiver(default_status=502) as receiver:
        config = _config(tmp_path, [f"json://{receiver.base}/"])
        code, output = _run(config, "test-channel", "ops")
        assert code == 1
        assert "FAILED" in output
    code, output = _run(config, "test-channel", "nope")
    assert code == 2
    assert "no channel named 'nope' (known: ops)" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["outbox", "purge", "--no-sent"], "nothing to purge"),
        (["outbox", "purge", "--older-than", "soon"], "not a duration"),
    ],
    ids=["nothing", "bad-duration"],
)
def test_outbox_purge_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    config = _config(tmp_path, ["console://"])
    code, output = _run(config, *args)
    assert code == 2
    assert message in output


def test_the_cli_shows_reassigns_and_purges_rows_of_unconfigured_channels(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, channels=[channel("chat", "console://")])
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine)
    for number, name in enumerate(("old", "old", "gone")):
        rec = record(operation_id=f"BCSSVC01-99-17000000000000009{number:02d}", status="failed")
        insert_group(engine, [status_event(rec, "processing", "failed")], rec, [name])
    code, listed = _run(config, "outbox", "list")
    assert code == 0
    assert "channel 'old' is not configured" in listed
    assert "waiting for channels that are not configured: gone (1), old (2)" in listed
    code, status = _run(config, "status", "--json")
    assert json.loads(status)["outbox"]["unconfigured_channels"] == {"gone": 1, "old": 2}

    code, output = _run(config, "outbox", "reassign", "old", "nope")
    assert code == 2
    assert "no channel named 'nope'" in output
    code, output = _run(config, "outbox", "reassign", "old", "chat")
    assert (code, output.strip()) == (0, "2 deliveries of old handed to chat, due now")
    code, output = _run(config, "outbox", "purge", "--unconfigured")
    assert (code, output.strip()) == (0, "purged 1 unconfigured channels' delivery")
    with engine.connect() as connection:
        channels = sorted(connection.execute(select(outbox.c.channel)).scalars())
    assert channels == ["chat", "chat"]
    engine.dispose()


def test_reassign_routes_for_the_new_channel_and_says_what_it_left(tmp_path: Path) -> None:
    """NEW takes only failures: a row carrying a finished operation has nothing for it, and
    a row whose group NEW already has stays with OLD."""
    config = write_config(tmp_path, channels=[channel("chat", "console://", statuses=["failed"])])
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine)
    statuses = {0: "failed", 1: "finished", 2: "failed"}
    events = {}
    for number, status in statuses.items():
        rec = record(operation_id=f"BCSSVC01-99-17000000000000007{number:02d}", status=status)
        events[number] = status_event(rec, "processing", status)
        channels = ["old", "chat"] if number == 2 else ["old"]
        routed = {name: [events[number].id] for name in channels}
        insert_group(engine, [events[number]], rec, channels, routed=routed)
    code, output = _run(config, "outbox", "reassign", "old", "chat")
    assert code == 0
    assert output.splitlines() == [
        "2 deliveries of old handed to chat, due now",
        "1 of them carries no event chat's filters admit: nothing is sent for them (they "
        "become sent)",
        "1 delivery left with old: chat already has their event groups (`outbox purge "
        "--unconfigured` deletes them)",
    ]
    with engine.connect() as connection:
        rows = connection.execute(
            select(outbox.c.channel, outbox.c.event_ids).order_by(outbox.c.id)
        ).all()
    assert [(row.channel, json.loads(row.event_ids)) for row in rows] == [
        ("chat", [events[0].id]),
        ("chat", []),
        ("old", [events[2].id]),
        ("chat", [events[2].id]),
    ]
    engine.dispose()
