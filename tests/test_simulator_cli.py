"""``bcs-notifier simulate``: a real process serving the simulator on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sim_support import iam_password_body

from notifier.bcs import signing
from notifier.cli import main
from notifier.config import load_config

START = "2024-01-15T08:30:00Z"
NS = 1_000_000_000


class Served:
    """A running ``simulate`` process and what it printed."""

    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.lines = lines
        self.snippet = "".join(lines)
        self.source: dict[str, Any] = tomllib.loads(self.snippet)["sources"][0]

    @property
    def endpoint(self) -> str:
        return str(self.source["endpoint"])


def read_snippet(process: subprocess.Popen[str], timeout: float = 20) -> list[str]:
    """Read stdout up to the closing comment line, failing after ``timeout`` seconds."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("# Ctrl-C"):
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    if not done.wait(timeout):
        process.kill()
        raise AssertionError(f"simulate printed no snippet: {lines!r}")
    return lines


@pytest.fixture
def serve() -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(*arguments: str) -> Served:
        process = subprocess.Popen(
            [sys.executable, "-m", "notifier", "simulate", "--port", "0", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        processes.append(process)
        return Served(process, read_snippet(process))

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def stop(served: Served) -> tuple[int, str]:
    served.process.send_signal(signal.SIGTERM)
    _, stderr = served.process.communicate(timeout=10)
    return served.process.returncode, stderr


def fetch(served: Served) -> httpx.Response:
    """One records request with the credentials of the printed snippet."""
    source = served.source
    auth = source["auth"]
    path = f"/v2/{source['project_id']}/operation/record"
    with httpx.Client(base_url=served.endpoint, timeout=5) as client:
        if auth["type"] == "token":
            return client.get(path, headers={"X-Auth-Token": auth["token"]})
        if auth["type"] == "password":
            body = iam_password_body(
                auth["username"], auth["password"], auth["domain"], {"id": source["project_id"]}
            )
            issued = client.post(f"{auth['iam_endpoint']}/v3/auth/tokens", json=body)
            assert issued.status_code == 201
            return client.get(path, headers={"X-Auth-Token": issued.headers["x-subject-token"]})
        state = client.get("/_sim/state").json()
        now = datetime.fromtimestamp(state["wall_ns"] / NS, tz=UTC)
        headers = {
            "Host": served.endpoint.removeprefix("http://"),
            "X-Sdk-Date": signing.sdk_date(now),
        }
        headers["Authorization"] = signing.sign(
            access_key=auth["access_key"],
            secret_key=auth["secret_key"],
            method="GET",
            path=path,
            query="",
            headers=headers,
            body=b"",
        )
        return client.get(path, headers=headers)


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["token", "password", "aksk"])
def test_simulate_prints_a_working_source_block(serve: Any, tmp_path: Path, auth: str) -> None:
    served = serve("--auth", auth, "--seed", "3")
    assert served.source["auth"]["type"] == auth
    config_file = tmp_path / "notifier.toml"
    config_file.write_text(
        f'[service]\ndatabase = "sqlite:///{tmp_path / "state.db"}"\n\n{served.snippet}',
        encoding="utf-8",
    )
    config = load_config(config_file)
    assert config.sources[0].endpoint == served.endpoint
    assert config.sources[0].auth.type == auth
    response = fetch(served)
    assert response.status_code == 200
    assert response.json()["count"] >= 4
    code, stderr = stop(served)
    assert code == 0
    assert "simulator stopped" in stderr


@pytest.mark.slow
def test_simulate_with_a_stopped_clock_moves_only_when_advanced(serve: Any) -> None:
    served = serve("--speed", "0", "--start", START, "--auth", "token")
    with httpx.Client(base_url=served.endpoint, timeout=5) as client:
        state = client.get("/_sim/state").json()
        assert state["now_ns"] == state["origin_ns"] == 1_705_307_400 * NS
        assert state["count"] == 4
        before = fetch(served).json()
        assert fetch(served).json() == before
        client.post("/_sim/advance", params={"seconds": "600"})
        after = fetch(served).json()
    assert after["count"] == 8
    assert {r["operation_status"] for r in after["operation_records"]} <= {
        "finished",
        "failed",
        "stop",
    }
    assert stop(served)[0] == 0


@pytest.mark.slow
def test_simulate_stops_on_ctrl_c(serve: Any) -> None:
    served = serve("--auth", "token")
    served.process.send_signal(signal.SIGINT)
    _, stderr = served.process.communicate(timeout=10)
    assert served.process.returncode == 0
    assert "Traceback" not in stderr


def test_simulate_rejects_a_bad_start_time() -> None:
    result = CliRunner().invoke(main, ["simulate", "--start", "yesterday"])
    assert result.exit_code == 2
    assert "Unix seconds or ISO 8601" in result.output


def test_simulate_rejects_a_naive_start_time() -> None:
    result = CliRunner().invoke(main, ["simulate", "--start", "2024-01-15T08:30:00"])
    assert result.exit_code == 2
    assert "UTC offset" in result.output


def test_simulate_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(main, ["simulate", "--port", str(port)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output
