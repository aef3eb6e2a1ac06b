"""sd_notify over real unix datagram sockets, the watchdog settings, the printed unit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.systemd import (
    SystemdNotifier,
    UnitOptions,
    credentials_in,
    notify_address,
    sqlite_directory,
    unit_options_for,
    unit_text,
    watchdog_interval,
)


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify"))
    server.settimeout(2)
    yield server
    server.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    name = f"bcs-notifier-test-{uuid.uuid4().hex}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    yield server, f"@{name}"
    server.close()


def test_notify_over_a_path_socket(path_socket: socket.socket) -> None:
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": path_socket.getsockname()})
    assert notifier.enabled
    assert notifier.ready("ready; 1 source")
    message = path_socket.recv(4096).decode()
    assert message.splitlines() == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=ready; 1 source"]
    assert notifier.watchdog()
    assert path_socket.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("line one\nline two")
    assert path_socket.recv(4096) == b"STATUS=line one line two"
    assert notifier.stopping()
    assert path_socket.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_notify_over_an_abstract_socket(abstract_socket: tuple[socket.socket, str]) -> None:
    server, name = abstract_socket
    notifier = SystemdNotifier.from_environ({"NOTIFY_SOCKET": name})
    assert notifier.reloading()
    assert server.recv(4096) == b"RELOADING=1"
    notifier.close()


def test_no_socket_means_no_op_and_a_vanished_socket_is_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert not SystemdNotifier.from_environ({}).ready()
    gone = SystemdNotifier(str(tmp_path / "nobody-listens"))
    assert not gone.watchdog()
    assert not gone.watchdog()
    assert caplog.text.count("cannot notify systemd") == 1
    gone.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@abstract/name", "\0abstract/name"),
        ("vsock:2:1234", None),
        ("", None),
        (None, None),
    ],
    ids=["path", "abstract", "vsock-unsupported", "empty", "unset"],
)
def test_notify_address(value: str | None, expected: str | None) -> None:
    assert notify_address(value) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["set", "our-pid", "other-pid", "zero", "garbage", "unset"],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


# -- the unit --------------------------------------------------------------------------------

REQUIRED = [
    "Type=notify",
    "WatchdogSec=60",
    "Restart=on-failure",
    "RestartPreventExitStatus=78",
    "StateDirectory=bcs-notifier",
    "ConfigurationDirectory=bcs-notifier",
    "DynamicUser=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet=",
    "ExecReload=/bin/kill -HUP $MAINPID",
    "LoadCredential=bcs-password:/etc/bcs-notifier/credentials/bcs-password",
    "LoadCredential=ak:/etc/bcs-notifier/credentials/ak",
    "PrivateMounts=yes",
    "PrivateUsers=yes",
]


def write_config(path: Path, database: str = "sqlite:////var/lib/bcs-notifier/state.db") -> Path:
    path.write_text(
        f"""
[service]
database = "{database}"
[service.http]
port = 9400
[[sources]]
name = "prod"
endpoint = "https://bcs.example.test"
project_id = "p"
[sources.auth]
type = "password"
iam_endpoint = "https://iam.example.test"
domain = "d"
username = "u"
password_file = "bcs-password"
[[sources]]
name = "other"
endpoint = "https://bcs.example.test"
project_id = "p"
[sources.auth]
type = "aksk"
access_key_file = "ak"
secret_key_file = "/etc/bcs-notifier/sk"
"""
    )
    return path


def options(tmp_path: Path, **overrides: object) -> UnitOptions:
    config = write_config(tmp_path / "notifier.toml")
    base = unit_options_for(
        config,
        database_url="sqlite:////var/lib/bcs-notifier/state.db",
        http_port=9400,
        exec_start=["/opt/bcs-notifier/bin/bcs-notifier"],
    )
    values = {**base.__dict__, "config_path": Path("/etc/bcs-notifier/notifier.toml")}
    values.update(overrides)
    return UnitOptions(**values)  # type: ignore[arg-type]


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and line[0] not in "#[" and "=" in line]


def test_unit_has_every_required_directive(tmp_path: Path) -> None:
    text = unit_text(options(tmp_path))
    lines = directives(text)
    for required in REQUIRED:
        assert required in lines, required
    assert (
        "ExecStart=/opt/bcs-notifier/bin/bcs-notifier --config /etc/bcs-notifier/notifier.toml run"
        in lines
    )
    assert not any(line.startswith("ReadWritePaths=") for line in lines)


def test_every_directive_is_commented(tmp_path: Path) -> None:
    lines = unit_text(options(tmp_path)).splitlines()
    for index, line in enumerate(lines):
        if line and line[0] not in "#[" and "=" in line:
            assert lines[index - 1].startswith("# "), line


def test_credentials_are_the_relative_file_keys(tmp_path: Path) -> None:
    assert credentials_in(write_config(tmp_path / "c.toml")) == ["bcs-password", "ak"]
    assert credentials_in(tmp_path / "missing.toml") == []


def test_unit_options_follow_the_install(tmp_path: Path) -> None:
    unit = unit_text(
        options(
            tmp_path,
            user="bcs",
            database_dir=Path("/srv/bcs"),
            exec_start=["/home/ops/venv/bin/bcs-notifier"],
            stop_grace=30.0,
        )
    )
    lines = directives(unit)
    assert "User=bcs" in lines
    assert "Group=bcs" in lines
    assert "DynamicUser=yes" not in lines
    assert "ReadWritePaths=/srv/bcs" in lines
    assert "ProtectHome=read-only" in lines
    assert "TimeoutStopSec=90" in lines
    assert any(line.endswith(" run --stop-grace 30") for line in lines)


def test_a_relative_database_path_is_flagged(tmp_path: Path) -> None:
    config = write_config(tmp_path / "notifier.toml")
    found = unit_options_for(config, database_url="sqlite:///state.db", exec_start=["/bin/x"])
    assert found.database_dir is None
    assert "# WARNING: service.database 'sqlite:///state.db' is a relative path" in unit_text(found)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////var/lib/bcs-notifier/state.db", Path("/var/lib/bcs-notifier")),
        ("sqlite:///data/state.db", Path("data")),
        ("sqlite://", None),
        ("postgresql://u@db/bcs", None),
    ],
    ids=["absolute", "relative", "memory", "postgres"],
)
def test_sqlite_directory(url: str, expected: Path | None) -> None:
    assert sqlite_directory(url) == expected


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_accepts_the_printed_unit(tmp_path: Path) -> None:
    config = write_config(tmp_path / "notifier.toml")
    unit = tmp_path / "bcs-notifier.service"
    printed = subprocess.run(
        [sys.executable, "-m", "notifier", "--config", str(config), "print-unit"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    unit.write_text(printed.stdout)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    # unknown or misspelled directives are only warnings: there must be none
    assert verify.stderr.strip() == "", verify.stderr


def test_credentials_come_from_the_folder_next_to_the_config(tmp_path: Path) -> None:
    """Where the config's *_file keys are found outside the service, so the unit and a
    root shell (`status`, `check-config`) read the same files."""
    (tmp_path / "srv" / "bcs").mkdir(parents=True)
    config = write_config(tmp_path / "srv" / "bcs" / "notifier.toml")
    printed = subprocess.run(
        [sys.executable, "-m", "notifier", "--config", str(config), "print-unit"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = directives(printed)
    folder = config.resolve().parent / "credentials"
    assert f"LoadCredential=bcs-password:{folder / 'bcs-password'}" in lines
    assert f"LoadCredential=ak:{folder / 'ak'}" in lines
    assert f"Put each file in {folder}/ (mode 0600, root)." in printed.replace("\n# ", " ")
    assert "/etc/bcs-notifier/credentials" not in printed


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_security_finds_the_namespaces_private(tmp_path: Path) -> None:
    config = write_config(tmp_path / "notifier.toml")
    unit = tmp_path / "bcs-notifier.service"
    printed = subprocess.run(
        [sys.executable, "-m", "notifier", "--config", str(config), "print-unit"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    unit.write_text(printed.stdout)
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Overall exposure level" in security.stdout, security.stderr
    exposed = [line for line in security.stdout.splitlines() if line.startswith("✗")]
    for setting in ("PrivateUsers=", "PrivateMounts=", "ProtectSystem=", "PrivateTmp="):
        assert not any(line.split()[1] == setting for line in exposed), exposed


@pytest.mark.parametrize(
    ("url", "unit"),
    [
        ("postgresql+psycopg://postgres@/bcs?host=%2Frun%2Fpostgresql", "postgresql.service"),
        ("postgresql+psycopg://bcs@localhost/bcs", "postgresql.service"),
        ("postgresql+psycopg://bcs@127.0.0.1:5433/bcs", "postgresql.service"),
        ("postgresql+psycopg://bcs@db.example.com/bcs", None),
        ("postgresql+psycopg://bcs@/bcs?host=db.example.com", None),
        ("sqlite:////var/lib/bcs-notifier/state.db", None),
    ],
    ids=["socket-dir", "localhost", "loopback-port", "remote", "remote-in-query", "sqlite"],
)
def test_a_local_database_server_is_started_first(
    tmp_path: Path, url: str, unit: str | None
) -> None:
    config = write_config(tmp_path / "notifier.toml")
    found = unit_options_for(config, database_url=url, exec_start=["/bin/x"])
    assert found.database_unit == unit
    lines = directives(unit_text(found))
    if unit is None:
        assert not [line for line in lines if "postgresql" in line]
    else:
        assert f"Wants={unit}" in lines
        assert f"After={unit}" in lines
