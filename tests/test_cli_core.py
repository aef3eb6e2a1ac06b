"""The core commands through click's runner, with respx standing in for the BCS API."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from bcs_support import ENDPOINT, PROJECT, RECORD_URL
from click.testing import CliRunner, Result
from config_support import aksk_auth, channel, source, token_auth, write_config
from sqlalchemy import select

from notifier.cli import main
from notifier.store import db
from notifier.store.schema import snapshots

DEPENDENT = "Create Other Dependent Resource"
HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PROD = source(
    "prod", endpoint=ENDPOINT, project_id=PROJECT, max_retries=0, auth=token_auth("${BCS_TOKEN}")
)


def prod_config(tmp_path: Path, *sources: dict[str, Any], **settings: Any) -> Path:
    """The "prod" token source (token from $BCS_TOKEN), then ``sources``."""
    return write_config(tmp_path, sources=[PROD, *sources], **settings)


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BCS_TOKEN", "tok-SECRET-123")
    return prod_config(tmp_path)


def run(config_path: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config_path), *args], catch_exceptions=False)


def step_forward(body: dict[str, Any]) -> dict[str, Any]:
    """Network storage starts; a new step with a sub-step appears."""
    body = copy.deepcopy(body)
    record = body["operation_records"][0]
    storage = record["operation_process"][DEPENDENT]["sub_steps"]["Create network storage"]
    storage.update(status="processing", detail=None, start_time=1618219100000000000)
    record["operation_process"]["Create Cluster"] = {
        "step_name": "Create Cluster",
        "status": "waiting",
        "detail": "",
        "serial_num": 3,
        "sub_steps": None,
    }
    record["record_time"] = 1618219100000000000
    return body


def finished(body: dict[str, Any]) -> dict[str, Any]:
    body = step_forward(body)
    record = body["operation_records"][0]
    storage = record["operation_process"][DEPENDENT]["sub_steps"]["Create network storage"]
    storage.update(status="finished", end_time=1618219200000000000)
    record["operation_process"][DEPENDENT]["status"] = "finished"
    record["operation_process"]["Create Cluster"]["status"] = "finished"
    record["operation_status"] = "finished"
    record["record_time"] = 1618219200000000000
    return body


def stored_snapshots(tmp_path: Path) -> list[tuple[Any, ...]]:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as connection:
        rows = [tuple(row) for row in connection.execute(select(snapshots))]
    engine.dispose()
    return rows


def test_polls_print_exactly_the_transitions_and_nothing_after_restart(
    config_path: Path, router: respx.MockRouter, example_body: dict[str, Any]
) -> None:
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(200, json=example_body)
    first = run(config_path, "poll")
    assert first.exit_code == 0, first.output
    assert first.stdout == ""
    assert "first poll, 1 operation(s) stored as the baseline" in first.stderr
    assert route.calls.last.request.headers["X-Auth-Token"] == "tok-SECRET-123"

    route.return_value = httpx.Response(200, json=step_forward(example_body))
    second = run(config_path, "poll")
    assert second.exit_code == 0, second.output
    assert second.stdout.splitlines() == [
        "2021-04-12T09:18:20.000000000Z prod BCSSVC01-99-1618218591906093855 "
        "substep.status_changed [Create Other Dependent Resource / Create network storage] "
        "waiting -> processing",
        "2021-04-12T09:18:20.000000000Z prod BCSSVC01-99-1618218591906093855 "
        "step.created [Create Cluster] -> waiting",
    ]

    route.return_value = httpx.Response(200, json=finished(example_body))
    third = run(config_path, "poll", "--json")
    documents = [json.loads(line) for line in third.stdout.splitlines()]
    assert [(d["type"], d["data"]["step"], d["data"]["to"]) for d in documents] == [
        ("bcs_notifier.step.status_changed", DEPENDENT, "finished"),
        ("bcs_notifier.substep.status_changed", DEPENDENT, "finished"),
        ("bcs_notifier.step.status_changed", "Create Cluster", "finished"),
        ("bcs_notifier.operation.status_changed", None, "finished"),
    ]

    # the same response again, and again in a new invocation (a restarted process)
    for _ in range(2):
        quiet = run(config_path, "poll")
        assert quiet.exit_code == 0
        assert quiet.stdout == ""

    history = run(config_path, "events", "--json")
    ids = [json.loads(line)["id"] for line in history.stdout.splitlines()]
    assert len(ids) == 6
    assert len(set(ids)) == 6
    assert ids[2:] == [d["id"] for d in documents]
    only = run(config_path, "events", "--operation", "nope")
    assert only.stdout == ""


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            httpx.Response(500, json={"error_code": "BCS.5000500", "error_msg": "Internal"}),
            "HTTP 500 BCS.5000500",
        ),
        (
            httpx.Response(429, json={"error_code": "APIGW.0308", "error_msg": "throttled"}),
            "HTTP 429 APIGW.0308",
        ),
        (httpx.ReadTimeout("timed out"), "timed out"),
        (
            httpx.Response(502, text="<html><body><h1>502 Bad Gateway</h1></body></html>"),
            "502 Bad Gateway",
        ),
        (httpx.Response(200, text='{"count": 1, "operation_records": [{"operat'), "JSON"),
        (httpx.Response(200, json={"count": 3, "operation_records": []}), "count is 3"),
    ],
    ids=["500", "429", "timeout", "html", "truncated-json", "partial"],
)
def test_a_failed_poll_changes_nothing_and_says_why_in_one_line(
    config_path: Path,
    tmp_path: Path,
    router: respx.MockRouter,
    example_body: dict[str, Any],
    response: Any,
    reason: str,
) -> None:
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(200, json=example_body)
    assert run(config_path, "poll").exit_code == 0
    before = stored_snapshots(tmp_path)

    if isinstance(response, Exception):
        route.side_effect = response
    else:
        response.headers["X-Request-Id"] = "req-abc"
        route.side_effect = None
        route.return_value = response
    result = run(config_path, "poll")
    assert result.exit_code == 69
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: prod: ")
    assert reason in lines[0]
    if not isinstance(response, Exception):
        assert "req-abc" in lines[0]
    assert "tok-SECRET-123" not in result.output
    assert stored_snapshots(tmp_path) == before


def test_dry_run_on_a_new_database_leaves_nothing_behind(
    config_path: Path, tmp_path: Path, router: respx.MockRouter, example_body: dict[str, Any]
) -> None:
    router.get(RECORD_URL).return_value = httpx.Response(200, json=example_body)
    result = run(config_path, "poll", "--dry-run")
    assert result.exit_code == 0
    assert "would be stored as the baseline" in result.stderr
    assert not (tmp_path / "state.db").exists()


def test_dry_run_reports_without_storing(
    config_path: Path, tmp_path: Path, router: respx.MockRouter, example_body: dict[str, Any]
) -> None:
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(200, json=example_body)
    run(config_path, "poll")
    before = stored_snapshots(tmp_path)
    route.return_value = httpx.Response(200, json=finished(example_body))
    dry = run(config_path, "poll", "--dry-run")
    assert len(dry.stdout.splitlines()) == 4
    assert stored_snapshots(tmp_path) == before
    assert len(run(config_path, "poll").stdout.splitlines()) == 4  # still reported for real


def test_bad_config_names_every_key_and_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[service]
poll_interval = 0
typo = true
[[sources]]
name = "prod"
endpoint = "https://x"
[sources.auth]
type = "magic"
"""
    )
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 78
    for expected in (
        "service.poll_interval: must be at least 1, not 0",
        "service.typo: unknown key",
        "sources[0].project_id: is required",
        "sources[0].auth.type: must be one of token, password, aksk",
    ):
        assert f"{path}: {expected}" in result.stderr
    for command in (["poll"], ["events"], ["db", "upgrade"]):
        assert CliRunner().invoke(main, ["--config", str(path), *command]).exit_code == 78


def test_check_config_ok(config_path: Path) -> None:
    result = run(config_path, "check-config")
    assert result.exit_code == 0
    assert "OK (1 source(s), 0 channel(s))" in result.stdout


def test_db_commands(config_path: Path) -> None:
    assert run(config_path, "db", "upgrade").exit_code == 0
    assert "up to date" in run(config_path, "db", "current").stdout


@pytest.mark.parametrize(
    "command",
    [
        ["db", "current"],
        ["events"],
        ["outbox", "list"],
        ["outbox"],
        ["status"],
        # the commands that change deliveries have nothing to change before the first poll
        ["outbox", "retry", "--pending"],
        ["outbox", "purge", "--dead"],
        ["outbox", "reassign", "old", "chat"],
        ["outbox", "dispatch"],
    ],
    ids=" ".join,
)
def test_a_command_that_reads_or_changes_deliveries_never_creates_a_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("BCS_TOKEN", "tok-SECRET-123")
    config_path = prod_config(tmp_path, channels=[channel("chat", "json://127.0.0.1:9/")])
    before = sorted(tmp_path.iterdir())

    result = run(config_path, *command)

    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: no database yet at {tmp_path / 'state.db'}"), line
    assert "bcs-notifier poll" in line
    assert sorted(tmp_path.iterdir()) == before
    # and afterwards the service starts on a fresh database as usual
    assert run(config_path, "db", "upgrade").exit_code == 0
    assert run(config_path, "db", "current").exit_code == 0


def test_two_sources_with_different_auth_side_by_side(
    tmp_path: Path,
    router: respx.MockRouter,
    example_body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BCS_TOKEN", "tok")
    path = prod_config(
        tmp_path,
        source(
            "staging",
            endpoint="https://bcs.cn-south-1.myhuaweicloud.com",
            project_id="fedcba9876543210fedcba9876543210",
            max_retries=0,
            auth=aksk_auth("HPUAEXAMPLEAK0000001", "exampleSecretKey0123456789abcdefEXAMPLE0"),
        ),
    )
    staging_url = "https://bcs.cn-south-1.myhuaweicloud.com/v2/fedcba9876543210fedcba9876543210/operation/record"
    prod = router.get(RECORD_URL)
    prod.return_value = httpx.Response(200, json=example_body)
    staging = router.get(staging_url)
    staging.return_value = httpx.Response(500, json={"error_code": "BCS.5000500", "error_msg": "x"})
    result = run(path, "poll")
    assert result.exit_code == 69  # staging failed...
    assert "prod: first poll" in result.stderr  # ...but prod was polled and stored
    assert "error: staging: HTTP 500" in result.stderr
    assert prod.calls.last.request.headers["X-Auth-Token"] == "tok"
    signed = staging.calls.last.request.headers["Authorization"]
    assert signed.startswith("SDK-HMAC-SHA256 Access=HPUAEXAMPLEAK0000001, SignedHeaders=")
    assert "X-Auth-Token" not in staging.calls.last.request.headers

    staging.return_value = httpx.Response(200, json=finished(example_body))
    prod.return_value = httpx.Response(200, json=finished(example_body))
    again = run(path, "poll", "--json")
    sources = {json.loads(line)["source"] for line in again.stdout.splitlines()}
    assert sources == {"bcs-notifier/prod"}  # staging's first success is its silent baseline
    assert run(path, "events", "--source", "staging").stdout == ""


def test_poll_delivers_what_it_recorded_and_a_down_target_gets_it_later(
    tmp_path: Path,
    router: respx.MockRouter,
    example_body: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from net_support import http_receiver

    monkeypatch.setenv("BCS_TOKEN", "tok")
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(200, json=example_body)
    with http_receiver(statuses=[503]) as hook, http_receiver() as chat:
        path = prod_config(
            tmp_path,
            delivery={"backoff_initial": 0},
            channels=[
                channel("hooks", f"webhook://{hook.base}/bcs?secret={HOOK_SECRET}"),
                channel("chat", f"json://{chat.base}/chat"),
            ],
        )
        assert run(path, "poll").exit_code == 0
        assert hook.requests == []  # the baseline sends nothing

        route.return_value = httpx.Response(200, json=finished(example_body))
        result = run(path, "poll")
        assert result.exit_code == 0
        assert len(result.stdout.splitlines()) == 4
        assert "1 sent, 1 failed (retried later)" in result.stderr
        assert len(chat.accepted) == 1  # one message for the operation
        assert hook.accepted == []

        route.return_value = httpx.Response(200, json=finished(example_body))
        again = run(path, "poll")  # nothing new, but the failed webhook rows are due again
        assert again.stdout == ""
        delivered = [request.headers["webhook-id"] for request in hook.accepted]
        history = [
            json.loads(line)["id"] for line in run(path, "events", "--json").stdout.splitlines()
        ]
        assert delivered == history  # one request per event, in order, once
        assert len(chat.accepted) == 1  # the chat target is not sent to again


def test_a_refused_signature_rests_the_key_across_poll_invocations(
    tmp_path: Path, router: respx.MockRouter, example_body: dict[str, Any]
) -> None:
    """Five refused signatures in a row lock an AK for 5 minutes: separate ``poll``
    processes (or a restarted ``run``) must not each send one."""
    signed = source(
        "signed",
        endpoint=ENDPOINT,
        project_id=PROJECT,
        max_retries=3,
        auth=aksk_auth("HPUAEXAMPLEAK0000001", "wrong-secret"),
    )
    path = write_config(tmp_path, sources=[signed])
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(
        401,
        json={"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"},
    )
    first = run(path, "poll")
    assert first.exit_code == 69
    assert "APIGW.0301" in first.stderr
    assert route.call_count == 1  # a refused signature is never retried

    for _ in range(5):
        again = run(path, "poll")
        assert again.exit_code == 69
        assert "no request before" in again.stderr
    assert route.call_count == 1  # no further signed request while the key rests
    assert "wrong-secret" not in first.output + again.output


def test_status_shows_a_credential_rest_and_clear_rest_ends_it(
    tmp_path: Path, router: respx.MockRouter, example_body: dict[str, Any]
) -> None:
    signed = source(
        "signed",
        endpoint=ENDPOINT,
        project_id=PROJECT,
        max_retries=0,
        auth=aksk_auth("HPUAEXAMPLEAK0000001", "wrong-secret"),
    )
    path = write_config(tmp_path, sources=[signed])
    assert run(path, "source", "clear-rest", "signed").exit_code == 1  # no database yet
    route = router.get(RECORD_URL)
    route.return_value = httpx.Response(
        401,
        json={"error_code": "APIGW.0301", "error_msg": "Incorrect IAM authentication information"},
    )
    assert run(path, "poll").exit_code == 69

    text = run(path, "status").stdout
    assert "credentials resting until " in text
    assert "APIGW.0301" in text
    assert "`bcs-notifier source clear-rest signed` ends the rest" in text
    (state,) = json.loads(run(path, "status", "--json").stdout)["sources"]
    assert state["resting_until"] is not None
    assert "APIGW.0301" in state["rest_reason"]

    cleared = run(path, "source", "clear-rest", "signed")
    assert cleared.exit_code == 0
    assert f"signed: credential rest until {state['resting_until']} cleared" in cleared.stdout
    route.return_value = httpx.Response(200, json=example_body)  # the key works again
    assert run(path, "poll").exit_code == 0
    assert route.call_count == 2  # tried again at once, not 5 minutes later
    assert "resting" not in run(path, "status").stdout
    assert "not resting" in run(path, "source", "clear-rest", "signed").stdout
    unknown = run(path, "source", "clear-rest", "nope")
    assert unknown.exit_code == 2
    assert "no source named nope" in unknown.output
    assert "wrong-secret" not in text + cleared.output
