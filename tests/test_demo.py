"""``bcs-notifier demo``: the simulator, the real pipeline and a console channel, run fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from e2e_support import cli_env

from notifier.config import parse_config
from notifier.demo import Demo, DemoOptions, demo_config_text, source_config, summary_lines
from notifier.simulator import Simulator

FAST = {"speed": 400.0, "interval": 0.2}
#: The story whose stall the test checks: the sub-step hangs 150 simulated seconds past
#: its 30 s threshold, which at 150x is one real second for a poll to see it on a busy
#: machine (at 400x it was 0.375 s: a slow poll missed the stall now and then).
STORY_PACE = {"speed": 150.0, "interval": 0.2}


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of the code under test go here, so a test can see none are left."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


@pytest.mark.parametrize("auth", ["aksk", "password", "token"])
def test_source_config_is_the_source_the_simulators_snippet_configures(auth: str) -> None:
    with Simulator(seed=4) as sim:
        text = (
            sim.config_snippet(auth, name="sim")
            + '[[channels]]\nname = "c"\nurls = ["json://127.0.0.1:9"]\n'
        )
        [loaded] = parse_config(text, environ={}).sources
        assert source_config(sim, auth, name="sim") == loaded
        assert loaded.endpoint == sim.endpoint


def test_source_config_refuses_an_unknown_auth_type() -> None:
    with pytest.raises(ValueError, match="auth must be one of"):
        source_config(Simulator(seed=4), "oauth")


@pytest.mark.parametrize("auth", ["aksk", "password", "token"])
def test_the_demo_plays_the_story_and_leaves_nothing_behind(
    auth: str, scratch_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    said: list[str] = []
    threads_before = set(threading.enumerate())

    report = Demo(DemoOptions(auth=auth, **STORY_PACE), say=said.append).run()

    assert report.completed, report.errors
    assert not report.interrupted
    assert report.errors == []
    assert report.failed_polls == 0
    assert report.polls >= 3
    # every delivery went out, one console message each
    assert report.pending == 0
    assert report.dead == 0
    assert report.notifications == report.messages > 0
    assert report.events > report.notifications  # sub-steps are recorded, not messaged
    outcomes = {(o.operation, o.blockchain): o.status for o in report.operations}
    assert outcomes == {
        ("OpUpgrade", "bcs-ledger"): "finished",
        ("OpCreate", "bcs-supply"): "finished",
        ("OpAddOrg", "bcs-finance"): "failed",
        ("OpScaleOrg", "bcs-ledger"): "stop",
        ("OpJoinChannel", "bcs-ledger"): "finished",
    }
    header = said[0]
    assert "bcs-notifier demo" in header
    assert "OpCreate" in header
    assert "bcs-supply" in header
    assert "First poll: 4 operation(s) already there" in said[1]
    printed = capsys.readouterr().out
    assert printed.count("\n=") == report.messages  # one titled console message each
    assert "❌ failed · OpAddOrg · bcs-finance" in printed
    assert "⏹️ stop · OpScaleOrg · bcs-ledger" in printed
    assert "✅ finished · OpCreate · bcs-supply" in printed
    # one stall: the new blockchain's security group hangs far beyond its history
    assert printed.count("⏰ stalled · OpCreate · bcs-supply") == 1
    assert "Sub-step Create Other Dependent Resource › Create security group: stalled" in printed
    assert list(scratch_tmp.iterdir()) == []
    # the simulator's server and the service's workers are gone (apprise keeps its own pool)
    leftover = set(threading.enumerate()) - threads_before
    assert [t.name for t in leftover if t.name.startswith("bcs-")] == []


def test_a_slow_first_poll_never_moves_a_new_operation_into_the_baseline(
    scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The story waits for the baseline: a first poll that takes half a real second (a
    busy machine, a slow IAM login) is 200 simulated seconds at this speed, long enough
    for the story's next operations to start; none of them may be stored silently."""
    from notifier.pipeline import Poller

    real_poll = Poller.poll_source
    polls: list[int] = []

    def slow_first_poll(self: Poller, source: Any, *, dry_run: bool = False) -> Any:
        if not polls:
            threading.Event().wait(0.5)  # the slow machine itself, not a wait for a result
        polls.append(1)
        return real_poll(self, source, dry_run=dry_run)

    monkeypatch.setattr(Poller, "poll_source", slow_first_poll)
    said: list[str] = []

    report = Demo(DemoOptions(**FAST), say=said.append).run()

    assert report.completed, report.errors
    assert "First poll: 4 operation(s) already there" in said[1]
    outcomes = {(o.operation, o.blockchain) for o in report.operations}
    assert ("OpCreate", "bcs-supply") in outcomes


def test_summary_lines_tell_what_happened(scratch_tmp: Path) -> None:
    report = Demo(DemoOptions(**FAST), say=lambda _text: None).run()
    text = "\n".join(summary_lines(report))
    assert f"Demo finished in {report.elapsed:.1f} s." in text
    assert f"events recorded: {report.events}" in text
    assert f"notifications delivered: {report.notifications}" in text
    assert "OpAddOrg       bcs-finance  failed: Deploy Organization failed" in text
    assert "The temporary database was removed." in text


def test_the_demo_config_is_a_valid_config_with_the_simulators_credentials() -> None:
    from notifier.channels.targets import validate_channel
    from notifier.config import parse_config
    from notifier.simulator import Simulator

    simulator = Simulator(seed=3)
    config = parse_config(
        demo_config_text(simulator, DemoOptions(auth="password"), "sqlite:///x.db"),
        channel_validators=(validate_channel,),
    )
    (source,) = config.sources
    assert source.endpoint == simulator.endpoint
    assert source.auth.type == "password"
    assert source.auth.password is not None
    assert source.auth.password.reveal() == simulator.credentials.password
    assert config.service.notify_existing is False
    assert config.channels[0].urls == ("console://stdout",)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"speed": 0}, "speed"),
        ({"auth": "kerberos"}, "auth"),
        ({"interval": 0.05}, "interval"),
    ],
    ids=["speed", "auth", "interval"],
)
def test_demo_options_are_checked(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DemoOptions(**options)  # type: ignore[arg-type]


def _demo_process(tmp_path: Path, *arguments: str) -> subprocess.Popen[str]:
    env = {**cli_env(), "TMPDIR": str(tmp_path)}
    return subprocess.Popen(
        [sys.executable, "-m", "notifier", "demo", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_the_demo_command_exits_zero_by_itself(tmp_path: Path) -> None:
    process = _demo_process(tmp_path, "--speed", "150", "--interval", "0.2", "--seed", "2")
    try:
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out.startswith("bcs-notifier demo\n")
    assert "Demo finished in" in out
    assert "❌ failed · OpAddOrg · bcs-finance" in out
    assert out.count("⏰ stalled · OpCreate · bcs-supply") == 1
    assert err == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_a_stop_signal_ends_the_demo_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    process = _demo_process(tmp_path, "--speed", "2")
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if line.startswith("First poll"):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(30), "".join(lines)
        assert len(list(tmp_path.iterdir())) == 1  # the demo's temporary directory
        os.kill(process.pid, sig)
        assert process.wait(30) == 130
    finally:
        process.kill()
        process.wait(10)
        reader.join(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert "Demo interrupted after" in "".join(lines)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_before_the_demo_has_started_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while the command still imports and builds the demo (before its own signal
    handlers are in place) is the same interruption as a moment later: 130, no "Aborted!"."""
    from click.testing import CliRunner

    from notifier import demo
    from notifier.cli import main

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo.Demo, "__init__", interrupted)

    result = CliRunner().invoke(main, ["demo"])

    assert result.exit_code == 130, result.output
    assert "Aborted" not in result.output


def test_a_terminal_that_cannot_show_the_symbols_gets_plain_ones(tmp_path: Path) -> None:
    """A latin-1 stdout: every message is still delivered, with plain stand-ins."""
    env = {**cli_env(), "TMPDIR": str(tmp_path), "PYTHONIOENCODING": "latin-1"}
    done = subprocess.run(
        [sys.executable, "-m", "notifier", "demo", "--speed", "400", "--interval", "0.2"],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    out = done.stdout.decode("latin-1")
    assert done.returncode == 0, done.stderr.decode("latin-1")
    assert "[x] failed · OpAddOrg · bcs-finance" in out
    assert "[stop] stop · OpScaleOrg · bcs-ledger" in out
    assert "dead: 0" in out
    assert done.stderr == b""


def test_the_demo_exits_1_when_a_notification_could_not_be_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from notifier import demo
    from notifier.cli import main

    def run(self: Demo) -> demo.DemoReport:
        return demo.DemoReport(completed=True, notifications=3, dead=2)

    monkeypatch.setattr(demo.Demo, "run", run)

    result = CliRunner().invoke(main, ["demo"])

    assert result.exit_code == 1, result.output
    assert "dead: 2" in result.output


def test_printable_keeps_what_the_encoding_can_show() -> None:
    from notifier.channels.console import printable

    title = "⏹️ stop · OpScaleOrg · bcs-ledger → 区块链"
    assert printable(title, "utf-8") == title
    assert printable(title, "latin-1") == "[stop] stop · OpScaleOrg · bcs-ledger -> ???"
    assert printable(title, "ascii") == "[stop] stop - OpScaleOrg - bcs-ledger -> ???"
    assert printable(title, "no-such-codec") == title
