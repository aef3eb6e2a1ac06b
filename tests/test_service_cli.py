"""The service commands through click: status, print-unit, run's refusals, fast --help."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import config_support
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, insert

from notifier.cli import main
from notifier.store.lock import InstanceLock
from notifier.store.schema import event_groups, outbox, source_state


def write_config(
    tmp_path: Path,
    database_url: str,
    *,
    sources: tuple[str, ...] = ("prod",),
    poll_mode: str = "incremental",
) -> Path:
    return config_support.write_config(
        tmp_path,
        service={"database": database_url, "poll_mode": poll_mode},
        sources=[
            config_support.source(
                name, project_id="p", auth=config_support.token_auth(f"tok-{name}-secret-value")
            )
            for name in sources
        ],
    )


def fill(engine: Engine) -> None:
    # "now" when the rows are written: the status ages below are relative to the test's run,
    # not to the collection of this module (a long suite runs it minutes later)
    now_ms = int(time.time() * 1000)
    with engine.begin() as connection:
        connection.execute(
            insert(source_state).values(
                source="prod",
                baseline_at=now_ms - 3_600_000,
                last_poll_at=now_ms - 5_000,
                last_success_at=now_ms - 600_000,
                consecutive_failures=4,
                failing_since=now_ms - 590_000,
                last_error="HTTP 401 APIGW.0301: token tok-prod-secret-value rejected",
                unreachable_reported=True,
            )
        )
        for index, state in enumerate(("pending", "pending", "dead", "sent")):
            group = f"grp_{index}"
            connection.execute(
                insert(event_groups).values(
                    id=group, source="prod", operation_id="op", created_at=now_ms
                )
            )
            connection.execute(
                insert(outbox).values(
                    group_id=group,
                    channel="chat",
                    state=state,
                    attempts=1,
                    created_at=now_ms - 120_000 * (index + 1),
                    next_attempt_at=now_ms + (10**9 if index else -1),
                    updated_at=now_ms,
                    done_targets="[]",
                )
            )


def test_status_text(engine: Engine, database_url: str, tmp_path: Path) -> None:
    fill(engine)
    config = write_config(tmp_path, database_url, sources=("prod", "new"))
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "service: not running"
    assert lines[2].startswith("  prod: 4 failed poll(s) in a row, reported unreachable; ")
    assert "(10m ago)" in lines[2]
    assert lines[3] == "    last error: HTTP 401 APIGW.0301: token ******** rejected"
    assert lines[4] == "  new: never polled; last successful poll never (never)"
    # the config has no channel "chat": its rows wait, they are not due
    assert lines[5].startswith("outbox: 2 pending (0 due), oldest undelivered ")
    assert lines[5].endswith("(4m ago); 1 dead; 1 sent")
    assert lines[6].startswith("  waiting for channels that are not configured: chat (2) ")
    assert "tok-prod-secret-value" not in result.output


@pytest.mark.parametrize("poll_mode", ["incremental", "full"])
def test_status_shows_the_last_complete_listing(
    engine: Engine, database_url: str, tmp_path: Path, poll_mode: str
) -> None:
    """Incremental polling lists everything only now and then: status says when it last did."""
    now_ms = int(time.time() * 1000)
    with engine.begin() as connection:
        connection.execute(
            insert(source_state).values(
                source="prod",
                baseline_at=now_ms - 7_200_000,
                last_poll_at=now_ms - 1_000,
                last_success_at=now_ms - 1_000,
                last_full_at=now_ms - 420_000,
                consecutive_failures=0,
                unreachable_reported=False,
            )
        )
    config = write_config(tmp_path, database_url, poll_mode=poll_mode)
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 0, result.output
    listing = [line for line in result.output.splitlines() if "last complete listing" in line]
    if poll_mode == "incremental":  # a full poll lists everything every cycle: no line
        assert len(listing) == 1
        assert listing[0].startswith("    last complete listing ")
        assert listing[0].endswith("(7m ago)")
    else:
        assert listing == []
    report = json.loads(
        CliRunner().invoke(main, ["--config", str(config), "status", "--json"]).output
    )
    prod = report["sources"][0]
    assert 419 <= prod["last_full_listing_age"] <= 500
    assert prod["last_full_listing"].endswith("Z")


def test_status_json_and_running(engine: Engine, database_url: str, tmp_path: Path) -> None:
    fill(engine)
    config = write_config(tmp_path, database_url)
    with InstanceLock(engine):
        result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["running"] is True
    assert report["pid"] > 0
    prod = report["sources"][0]
    assert prod["consecutive_failures"] == 4
    assert 599 <= prod["last_success_age"] <= 700
    assert report["outbox"]["pending"] == 2
    assert report["outbox"]["dead"] == 1
    assert 239 <= report["outbox"]["oldest_pending_age"] <= 300


def test_status_on_an_unmigrated_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'fresh.db'}")
    (tmp_path / "fresh.db").touch()  # exists, but was never migrated
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert "run `bcs-notifier db upgrade`" in result.output


def test_run_refuses_a_database_in_use(engine: Engine, database_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, database_url)
    with InstanceLock(engine):
        result = CliRunner().invoke(
            main,
            ["--config", str(config), "run", "--log-format", "text"],
            env={"NOTIFY_SOCKET": ""},
        )
    assert result.exit_code == 69


def _run_beside_a_running_service(
    engine: Engine, config: Path, *arguments: str, terminal: bool
) -> tuple[int, str]:
    """``run`` refused by the instance lock, its stderr a terminal or a pipe."""
    import os
    import pty

    env = {**os.environ, "NOTIFY_SOCKET": "", "JOURNAL_STREAM": ""}
    env.pop("BCS_NOTIFIER_LOG_FORMAT", None)
    command = [sys.executable, "-m", "notifier", "--config", str(config), *arguments]
    with InstanceLock(engine):
        if not terminal:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=60, env=env, check=False
            )
            return done.returncode, done.stderr
        leader, follower = pty.openpty()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, env=env
        )
        os.close(follower)
        output = b""
        try:
            while chunk := os.read(leader, 4096):
                output += chunk
        except OSError:  # EIO: the process closed the terminal
            pass
        finally:
            os.close(leader)
        return process.wait(60), output.decode()


def test_run_on_a_terminal_logs_text_and_journal_prefixes_elsewhere(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path, database_url)

    code, terminal = _run_beside_a_running_service(engine, config, "run", terminal=True)
    assert code == 69, terminal
    (line,) = [line for line in terminal.splitlines() if "not starting" in line]
    assert not line.startswith("<"), line
    assert " ERROR notifier.cli: not starting: " in line

    code, piped = _run_beside_a_running_service(engine, config, "run", terminal=False)
    assert code == 69, piped
    assert piped.startswith("<3>"), piped


def test_run_logs_the_config_loading_in_the_chosen_format(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    """apprise logs while the config is read (its plugins load for the URL checks): those
    lines come out as JSON like the rest, not in the one-shot commands' text format."""
    config = write_config(tmp_path, database_url)

    code, output = _run_beside_a_running_service(
        engine, config, "--log-level", "debug", "run", "--log-format", "json", terminal=False
    )

    assert code == 69, output
    records = [json.loads(line) for line in output.splitlines()]
    assert any(record["logger"].startswith("apprise") for record in records), output
    assert records[-1]["message"].startswith("not starting: ")


def test_run_with_an_invalid_config_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "notifier.toml"
    config.write_text("[service]\npoll_interval = 0\n")
    result = CliRunner().invoke(main, ["--config", str(config), "run"])
    assert result.exit_code == 78
    assert "service.poll_interval" in result.output


def test_print_unit_options(tmp_path: Path, database_url: str) -> None:
    config = write_config(tmp_path, database_url)
    result = CliRunner().invoke(
        main,
        ["--config", str(config), "print-unit", "--user", "bcs", "--watchdog-sec", "120"],
    )
    assert result.exit_code == 0, result.output
    assert "\nUser=bcs\n" in result.output
    assert "\nWatchdogSec=120\n" in result.output
    assert f"--config {config.resolve()} run\n" in result.output
    assert f"\nReadWritePaths={tmp_path}\n" in result.output  # the database is not in /var/lib


def test_print_unit_group_needs_user() -> None:
    result = CliRunner().invoke(main, ["print-unit", "--group", "bcs"])
    assert result.exit_code == 2
    assert "--group needs --user" in result.output


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["status", "--help"]])
def test_help_imports_no_heavy_library(command: list[str]) -> None:
    script = (
        "import sys\n"
        "from notifier.cli import main\n"
        f"try:\n    main({command!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('sqlalchemy', 'httpx', 'apprise', 'jinja2', 'alembic')"
        " if m in sys.modules]\n"
        "print(heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_run_checks_channel_urls_at_start_and_at_each_reload(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run`` hands the channel checks to ``load_config`` itself (no registry filled by an
    import): an unloadable URL is a config error at start (exit 78) and in a reload."""
    import notifier.daemon
    from notifier.config import Config
    from notifier.errors import ConfigError

    config = write_config(tmp_path, database_url)
    good = config.read_text()
    bad = good + '\n[[channels]]\nname = "ops"\nurls = ["unknownschema://x.test/"]\n'
    config.write_text(bad)
    result = CliRunner().invoke(main, ["--config", str(config), "run"])
    assert result.exit_code == 78, result.output
    assert "channels[0].urls[0]" in result.output

    loaders: list[Callable[[], Config]] = []

    def serve(config: Config, *, config_loader: Callable[[], Config], **_: object) -> int:
        loaders.append(config_loader)
        return 0

    monkeypatch.setattr(notifier.daemon, "serve", serve)
    config.write_text(good)
    result = CliRunner().invoke(main, ["--config", str(config), "run"], env={"NOTIFY_SOCKET": ""})
    assert result.exit_code == 0, result.output
    (loader,) = loaders
    config.write_text(bad)
    with pytest.raises(ConfigError) as raised:
        loader()
    assert [problem.path for problem in raised.value.problems] == ["channels[0].urls[0]"]


def test_status_on_postgresql_shows_every_instance_and_what_it_leads(
    postgres: object, tmp_path: Path
) -> None:
    """No lock file to look at: the service runs while an instance heartbeats; each one is
    listed with the sources it leads, their epoch and lease expiry."""
    from notifier.store import db
    from notifier.store.lease import LeaseStore

    url = postgres.create_database()  # type: ignore[attr-defined]
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        config = write_config(tmp_path, url, sources=("prod", "test"))
        result = CliRunner().invoke(main, ["--config", str(config), "status"])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[:3] == ["service: not running", "instances:", "  none"]
        leader = LeaseStore(engine, "host-a:101:aaaa", ttl=30)
        standby = LeaseStore(engine, "host-b:202:bbbb", ttl=30)
        leader.heartbeat(hostname="host-a", pid=101)
        standby.heartbeat(hostname="host-b", pid=202)
        leader.acquire("prod")
        leader.acquire("test")
        result = CliRunner().invoke(main, ["--config", str(config), "status", "--json"])
        report = json.loads(result.output)
        assert report["running"] is True
        by_pid = {item["pid"]: item for item in report["instances"]}
        assert [lease["source"] for lease in by_pid[101]["leads"]] == ["prod", "test"]
        assert {lease["epoch"] for lease in by_pid[101]["leads"]} == {1}
        assert by_pid[202]["leads"] == []
        text = CliRunner().invoke(main, ["--config", str(config), "status"]).output
        assert text.splitlines()[0] == "service: running (2 instances)"
        assert "host-b:202:bbbb: alive, pid 202 on host-b; leads nothing (standby)" in text
        assert "leads prod (epoch 1, lease expires in " in text
        # a one-off command that must not run beside the service is refused (exit 69)
        refused = CliRunner().invoke(main, ["--config", str(config), "poll"])
        assert refused.exit_code == 69, refused.output
        leader.unregister()
        standby.unregister()
        result = CliRunner().invoke(main, ["--config", str(config), "status"])
        assert result.output.splitlines()[0] == "service: not running"
    finally:
        engine.dispose()
