"""One-shot commands log through the redacting handler, like ``run``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import respx
from click.testing import CliRunner
from config_support import RECORD_URL, aksk_auth, channel, source, write_config

from notifier.cli import main

IAM = "https://iam.example.test"


def test_debug_logs_of_poll_show_no_secret(tmp_path: Path, example_body: dict[str, Any]) -> None:
    password = {
        "type": "password",
        "iam_endpoint": IAM,
        "domain": "d",
        "username": "u",
        "password": "Pa55-word-in-config",
    }
    config = write_config(
        tmp_path,
        sources=[source(auth=password)],
        channels=[channel("hook", "json://127.0.0.1:9/p?-apikey=QuerySecretABC")],
    )
    issued = "MIIEvwYJKoZIhvcNAQcCoIIEsDCCBKwCAQExDTALBglghkgBZQMEAgEw"
    with respx.mock:
        respx.post(f"{IAM}/v3/auth/tokens").mock(
            return_value=httpx.Response(
                201,
                headers={"X-Subject-Token": issued},
                json={"token": {"expires_at": "2099-01-01T00:00:00.000000Z"}},
            )
        )
        respx.get(RECORD_URL).mock(return_value=httpx.Response(200, json=example_body))
        result = CliRunner().invoke(main, ["--config", str(config), "--log-level", "debug", "poll"])
    assert result.exit_code == 0, result.output
    assert "DEBUG" in result.stderr  # debug logging really was on
    for secret in ("Pa55-word-in-config", "QuerySecretABC", issued[:20]):
        assert secret not in result.stderr


def test_poll_names_skipped_malformed_records_without_log_noise(
    tmp_path: Path, example_body: dict[str, Any]
) -> None:
    config = write_config(tmp_path)
    broken = {"operation_id": "BCSSVC01-99-1", "record_time": "soon"}
    body = {**example_body, "count": 2}
    body["operation_records"] = [broken, *example_body["operation_records"]]
    with respx.mock:
        respx.get(RECORD_URL).mock(return_value=httpx.Response(200, json=body))
        result = CliRunner().invoke(main, ["--config", str(config), "poll"])
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "warning: prod: skipped 1 malformed record(s): BCSSVC01-99-1 "
        "(details with --log-level warning)"
    )
    assert "first poll, 1 operation(s) stored" in lines[1]
    assert len(lines) == 2  # no log lines at the default level


def test_repeated_polls_while_resting_keep_the_original_reason(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, sources=[source("signed", auth=aksk_auth("AK", "wrong"))])
    with respx.mock:
        respx.get(RECORD_URL).mock(
            return_value=httpx.Response(
                401, json={"error_code": "APIGW.0301", "error_msg": "bad signature"}
            )
        )
        outputs = [
            CliRunner().invoke(main, ["--config", str(config), "poll"]).stderr for _ in range(4)
        ]
    assert "APIGW.0301" in outputs[0]
    assert outputs[1] == outputs[3]  # the message does not grow with every poll
    assert outputs[1].count("credentials refused earlier") == 1
    assert "APIGW.0301: bad signature" in outputs[3]


def test_status_without_a_database_says_so_and_creates_nothing(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, service={"database": f"sqlite:///{tmp_path / 'sub' / 'state.db'}"}
    )
    result = CliRunner().invoke(main, ["--config", str(config), "status"])
    assert result.exit_code == 1
    assert "no database yet" in result.stderr
    assert not (tmp_path / "sub").exists()


def test_poll_refuses_to_write_beside_a_running_service(
    tmp_path: Path, example_body: dict[str, Any]
) -> None:
    from notifier.store import db
    from notifier.store.lock import InstanceLock

    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, service={"database": url})
    engine = db.make_engine(url)
    db.upgrade(engine)
    with respx.mock:
        route = respx.get(RECORD_URL).mock(return_value=httpx.Response(200, json=example_body))
        with InstanceLock(engine):  # what `run` holds
            refused = CliRunner().invoke(main, ["--config", str(config), "poll"])
            looked = CliRunner().invoke(main, ["--config", str(config), "poll", "--dry-run"])
        done = CliRunner().invoke(main, ["--config", str(config), "poll"])
    engine.dispose()
    assert refused.exit_code == 69
    assert "another bcs-notifier run" in refused.stderr
    assert "poll --dry-run" in refused.stderr
    assert looked.exit_code == 0
    assert done.exit_code == 0
    assert route.call_count == 2  # the refused poll did not even fetch


def test_dry_runs_also_rest_a_refused_key(tmp_path: Path) -> None:
    from notifier.store import db

    url = f"sqlite:///{tmp_path / 'state.db'}"
    signed = source("signed", auth=aksk_auth("AK", "wrong"))
    config = write_config(tmp_path, service={"database": url}, sources=[signed])
    engine = db.make_engine(url)
    db.upgrade(engine)
    engine.dispose()
    with respx.mock:
        route = respx.get(RECORD_URL).mock(
            return_value=httpx.Response(401, json={"error_code": "APIGW.0301", "error_msg": "x"})
        )
        for _ in range(4):
            result = CliRunner().invoke(main, ["--config", str(config), "poll", "--dry-run"])
            assert result.exit_code == 69
    assert route.call_count == 1


def test_outbox_dispatch_refuses_beside_a_running_service(tmp_path: Path) -> None:
    from notifier.store import db
    from notifier.store.lock import InstanceLock

    url = f"sqlite:///{tmp_path / 'state.db'}"
    config = write_config(tmp_path, service={"database": url})
    engine = db.make_engine(url)
    db.upgrade(engine)
    with InstanceLock(engine):  # what `run` holds
        refused = CliRunner().invoke(main, ["--config", str(config), "outbox", "dispatch"])
    engine.dispose()
    assert refused.exit_code == 69
    assert "the running service delivers due rows itself" in refused.stderr
    done = CliRunner().invoke(main, ["--config", str(config), "outbox", "dispatch"])
    assert done.exit_code == 0
