"""Log formats (journal prefixes, JSON lines) and the redaction safety net."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from notifier.config import parse_config
from notifier.logsetup import (
    MASK,
    JournalFormatter,
    Redactor,
    config_secrets,
    configure,
    journal_stream_is_stderr,
    make_formatter,
)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def record(level: int, message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("notifier.daemon", level, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
    ids=["debug", "info", "warning", "error", "critical"],
)
def test_journal_prefixes(level: int, prefix: str) -> None:
    formatter = JournalFormatter(Redactor(), timestamps=False)
    assert formatter.format(record(level, "polled %s", "prod")) == (
        f"{prefix}notifier.daemon: polled prod"
    )


def test_every_traceback_line_keeps_the_priority() -> None:
    formatter = JournalFormatter(Redactor(), timestamps=False)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        entry = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(entry).splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)


def test_timestamps_only_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        stat = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert journal_stream_is_stderr(stream, journal)
        under = make_formatter("journal", Redactor(), stream=stream, environ=journal)
        elsewhere = make_formatter(
            "journal", Redactor(), stream=stream, environ={"JOURNAL_STREAM": "1:2"}
        )
        plain = make_formatter("journal", Redactor(), stream=stream, environ={})
    assert under.format(record(logging.INFO, "hi")) == "<6>notifier.daemon: hi"
    for formatter in (elsewhere, plain):
        line = formatter.format(record(logging.INFO, "hi"))
        assert line.startswith("<6>20")
        assert line.endswith("Z notifier.daemon: hi")


def test_json_lines_carry_level_logger_extra_fields_and_exceptions() -> None:
    formatter = make_formatter("json", Redactor(["hunter2-secret"]), environ={})
    line = formatter.format(
        record(logging.WARNING, "source %s down", "prod", source="prod", failures=3)
    )
    document = json.loads(line)
    assert document["level"] == "warning"
    assert document["logger"] == "notifier.daemon"
    assert document["message"] == "source prod down"
    assert document["source"] == "prod"
    assert document["failures"] == 3
    assert document["time"].endswith("Z")
    leaked = formatter.format(record(logging.ERROR, "password hunter2-secret"))
    assert "hunter2-secret" not in leaked
    assert json.loads(leaked)["message"] == f"password {MASK}"


SECRETS_CONFIG = """
[[sources]]
name = "prod"
endpoint = "https://bcs.example.test"
project_id = "p"
[sources.auth]
type = "aksk"
access_key = "AKIDEXAMPLE0001"
secret_key = "sk-very-secret-value"

[[channels]]
name = "chat"
urls = ["slack://T1234ABCD/B5678EFGH/abcdefghijklmnopqrstuvwx/#bcs",
        "mailtos://ops:mail-password-9@smtp.example.test?to=ops@example.test",
        "webhooks://hooks.example.test/in?secret=whsec_YmNzLW5vdGlmaWVyLXRlc3Qtc2VjcmV0LTMyYnl0ZXM="]
"""


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("signing with sk-very-secret-value", "sk-very-secret-value"),
        ("key AKIDEXAMPLE0001 refused", "AKIDEXAMPLE0001"),
        ("posting to slack://T1234ABCD/B5678EFGH/abcdefghijklmnopqrstuvwx/#bcs", "abcdefghijkl"),
        ("token part abcdefghijklmnopqrstuvwx leaked", "abcdefghijklmnopqrstuvwx"),
        ("smtp login mail-password-9 failed", "mail-password-9"),
        ("X-Auth-Token: MIIEvwYJKoZIhvcNAQcCoIIEsDCCBKwCAQEx", "MIIEvwYJKoZ"),
        ('{"password": "not-in-config-pw"}', "not-in-config-pw"),
        ("https://user:urlpass123@example.test/path", "urlpass123"),
        (
            "Authorization: SDK-HMAC-SHA256 Access=AKOTHER, SignedHeaders=host;x-sdk-date, "
            "Signature=0123abcd",
            "0123abcd",
        ),
        ("url ?token=qwertyuiop&x=1", "qwertyuiop"),
        ("secret whsec_AAAABBBBCCCC", "whsec_AAAABBBBCCCC"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload", "eyJhbGciOiJIUzI1NiJ9"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZDEyMw==", "dXNlcjpwYXNzd29yZDEyMw"),
    ],
    ids=[
        "secret-key",
        "access-key",
        "channel-url",
        "url-token-segment",
        "url-password",
        "iam-token",
        "json-password",
        "userinfo",
        "signature",
        "query-token",
        "webhook-secret",
        "bearer",
        "basic",
    ],
)
def test_redaction(text: str, leak: str) -> None:
    redactor = Redactor(config_secrets(parse_config(SECRETS_CONFIG)))
    cleaned = redactor.redact(text)
    assert leak not in cleaned
    assert MASK in cleaned


@pytest.mark.parametrize(
    "line",
    [
        "prod BCSSVC01-99-1618218591906093855 operation.status_changed waiting -> processing",
        "source staging: the AK/SK signature was rejected: HTTP 401 APIGW.0301",
        "step [Preparation / Generate basic configurations] waiting -> finished",
        "check the access rights of the IAM user",
    ],
    ids=["event", "signature-rejected", "basic-configurations", "access-rights"],
)
def test_redaction_keeps_ordinary_lines(line: str) -> None:
    redactor = Redactor(config_secrets(parse_config(SECRETS_CONFIG)))
    assert redactor.redact(line) == line


def test_configure_replaces_handlers_and_redacts(restore_root_logger: None) -> None:
    stream = io.StringIO()
    configure("text", "info", redactor=Redactor(["topsecret-value"]), stream=stream, environ={})
    logging.getLogger("notifier.test").info("got topsecret-value back")
    logging.getLogger("notifier.test").debug("not shown")
    logging.getLogger("httpx").info("request line with a URL")
    output = stream.getvalue()
    assert "INFO notifier.test: got ******** back" in output
    assert "topsecret-value" not in output
    assert "not shown" not in output
    assert "request line" not in output  # chatty libraries only at debug level


def test_run_chooses_text_on_a_terminal_and_journal_elsewhere() -> None:
    import pty

    from notifier.logsetup import default_format

    leader, follower = pty.openpty()
    read_end, write_end = os.pipe()
    with (
        os.fdopen(leader) as _leader,
        os.fdopen(follower, "w") as terminal,
        os.fdopen(write_end, "w") as pipe,
        os.fdopen(read_end) as _reader,
    ):
        assert default_format(terminal, {}) == "text"
        stat = os.fstat(terminal.fileno())
        journal = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert default_format(terminal, journal) == "journal"  # the journal, on a tty
        assert default_format(pipe, {}) == "journal"
