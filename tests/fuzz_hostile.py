"""Fuzz the real CLI with hostile API records and mutated config files (standalone).

    python tests/fuzz_hostile.py [--polls 300] [--configs 500] [--seed 1] [--subprocess]

Polls: a local HTTP server on 127.0.0.1 plays the BCS API; each session is a fresh
database polled ``--per-session`` times by ``bcs-notifier poll --json`` while good records
move through their states beside hostile ones (tests/hostile_support.py: wrong types, nulls,
1 MB strings, nesting 600 deep, lone surrogates, numbers past int64 and past 4,300 digits,
5,000 steps, odd ids, ...). A second database polled with the good records alone is the
oracle. Every event is delivered to a local receiver through a webhook:// channel
(CloudEvents) and a json:// channel (rendered messages). Configs: ``bcs-notifier
check-config`` on mutated files (tests/hostile_support.py).

Counts: tracebacks, crashed commands (exit other than 0, or 69 for a poll the source
failed), deliveries not sent with the receiver up (content failures), good-record
transitions lost or invented, and invalid configs that did not exit 78 naming the key.
By default commands run in this process through click's runner (the same ``main``);
``--subprocess`` runs each as its own ``bcs-notifier`` process (slower). Exit 1 when any
count is not 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.hostile_support import (
    body_text,
    config_text,
    good_id,
    good_record,
    hostile_record,
)


class _State:
    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.received: list[bytes] = []
        self.lock = threading.Lock()


@contextmanager
def _server() -> Iterator[tuple[str, _State]]:
    state = _State()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            project = self.path.split("/")[2] if self.path.count("/") >= 3 else ""
            body = state.bodies.get(project, b'{"count": 0, "operation_records": []}')
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                # the client read enough to know it must read the answer again whole (deep
                # nesting, huge numbers: notifier.bcs.stream) and closed: a client's right,
                # not a traceback of the service under test
                self.close_connection = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            with state.lock:
                state.received.append(self.rfile.read(length))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


class _Cli:
    def __init__(self, *, subprocess_mode: bool) -> None:
        self.subprocess_mode = subprocess_mode
        self.script = str(Path(sys.executable).with_name("bcs-notifier"))

    def __call__(self, *args: str) -> tuple[int, str, str]:
        if self.subprocess_mode:
            done = subprocess.run(
                [self.script, *args], capture_output=True, text=True, timeout=300, check=False
            )
            return done.returncode, done.stdout, done.stderr
        from click.testing import CliRunner

        from notifier.cli import main

        result = CliRunner().invoke(main, list(args), catch_exceptions=True)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            stderr += "".join(traceback.format_exception(result.exception))
        return result.exit_code, result.stdout, stderr


def _config(directory: Path, endpoint: str, project: str, hooks: str) -> Path:
    path = directory / f"{project}.toml"
    path.write_text(
        f"""[service]
database = "sqlite:///{directory / project}.db"

[delivery]
max_attempts = 3
backoff_initial = 0

[[sources]]
name = "prod"
endpoint = "{endpoint}"
project_id = "{project}"
timeout = 30

[sources.auth]
type = "token"
token = "t"

[[channels]]
name = "hooks"
urls = ["{hooks.replace("http://", "webhook://")}/hook"]

[[channels]]
name = "chat"
urls = ["{hooks.replace("http://", "json://")}/chat"]
"""
    )
    return path


def _event_ids(stdout: str) -> list[tuple[str, str]]:
    found = []
    for line in stdout.splitlines():
        document = json.loads(line)
        found.append((document["subject"], document["id"]))
    return found


def _undelivered(database: Path) -> list[tuple[str, str | None]]:
    import sqlite3

    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT state, last_error FROM outbox WHERE state != 'sent'")
        return list(rows.fetchall())


def fuzz_polls(
    count: int, per_session: int, rng: random.Random, cli: _Cli, counts: collections.Counter[str]
) -> collections.Counter[str]:
    kinds: collections.Counter[str] = collections.Counter()
    with _server() as (endpoint, state):
        done = 0
        session = 0
        while done < count:
            session += 1
            directory = Path(tempfile.mkdtemp(prefix="bcs-fuzz-"))
            try:
                mixed = _config(directory, endpoint, "mixed", endpoint)
                alone = _config(directory, endpoint, "alone", endpoint)
                goods = rng.randint(1, 4)
                for number in range(per_session):
                    good = [good_record(i, min(number + i % 2, 3)) for i in range(goods)]
                    bad: list[Any] = []
                    for index in range(rng.randint(1, 4)):
                        record, applied = hostile_record(rng, 1000 * number + index)
                        bad.append(record)
                        kinds.update(applied)
                    records = good + bad
                    rng.shuffle(records)
                    state.bodies["mixed"] = body_text(records).encode()
                    state.bodies["alone"] = body_text(good).encode()
                    code, out, err = cli("--config", str(mixed), "poll", "--json")
                    done += 1
                    counts["polls"] += 1
                    if "Traceback" in err:
                        counts["tracebacks"] += 1
                        print(f"traceback in poll (session {session}):\n{err[-3000:]}")
                    if code != 0:
                        counts["crashed polls"] += 1
                        print(f"poll exited {code} (session {session}): {err[-800:]}")
                        continue
                    ref_code, ref_out, ref_err = cli("--config", str(alone), "poll", "--json")
                    if ref_code != 0:
                        print(f"oracle poll exited {ref_code}: {ref_err[-800:]}")
                        counts["oracle failures"] += 1
                        continue
                    good_ids = {good_id(i) for i in range(goods)}
                    found = {e for e in _event_ids(out) if e[0] in good_ids}
                    expected = set(_event_ids(ref_out))
                    counts["good transitions"] += len(expected)
                    counts["lost transitions"] += len(expected - found)
                    counts["invented transitions"] += len(found - expected)
                for config in (mixed,):
                    code, out, err = cli("--config", str(config), "events", "--json")
                    if code != 0 or "Traceback" in err:
                        counts["failed events --json"] += 1
                        print(f"events --json exited {code}: {err[-800:]}")
                    code, out, err = cli("--config", str(config), "events")
                    if code != 0 or "Traceback" in err:
                        counts["failed events"] += 1
                for row_state, error in _undelivered(directory / "mixed.db"):
                    counts["content-failed deliveries"] += 1
                    print(f"undelivered ({row_state}): {error}")
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        counts["deliveries received"] += len(state.received)
    return kinds


def fuzz_configs(
    count: int, rng: random.Random, cli: _Cli, counts: collections.Counter[str]
) -> collections.Counter[str]:
    kinds: collections.Counter[str] = collections.Counter()
    directory = Path(tempfile.mkdtemp(prefix="bcs-fuzz-config-"))
    try:
        for _ in range(count):
            text, path, kind = config_text(rng, directory)
            kinds[kind] += 1
            file = directory / "notifier.toml"
            file.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
            code, _out, err = cli("--config", str(file), "check-config")
            counts["configs"] += 1
            if "Traceback" in err:
                counts["config tracebacks"] += 1
                print(f"traceback for {kind}:\n{err[-2000:]}")
            if path:
                counts["invalid configs"] += 1
                if code != 78 or path not in err:
                    counts["invalid configs without 78 + key path"] += 1
                    print(f"{kind}: exit {code}, expected 78 naming {path!r}: {err[-400:]}")
            elif code not in (0, 78):
                counts["file-level breaks not exit 0/78"] += 1
                print(f"{kind}: exit {code}: {err[-400:]}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return kinds


BAD_COUNTS = (
    "tracebacks",
    "crashed polls",
    "oracle failures",
    "lost transitions",
    "invented transitions",
    "failed events --json",
    "failed events",
    "content-failed deliveries",
    "config tracebacks",
    "invalid configs without 78 + key path",
    "file-level breaks not exit 0/78",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--per-session", type=int, default=5)
    parser.add_argument("--configs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--subprocess", action="store_true")
    options = parser.parse_args()
    rng = random.Random(options.seed)  # noqa: S311 - fuzzing, not cryptography
    cli = _Cli(subprocess_mode=options.subprocess)
    counts: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    record_kinds = fuzz_polls(options.polls, options.per_session, rng, cli, counts)
    config_kinds = fuzz_configs(options.configs, rng, cli, counts)
    print(f"\n== fuzz run, seed {options.seed}, {time.monotonic() - started:.0f} s ==")
    for key in ("polls", "good transitions", "deliveries received", "configs", "invalid configs"):
        print(f"{key:>40}: {counts[key]}")
    for key in BAD_COUNTS:
        print(f"{key:>40}: {counts[key]}")
    print("record mutations applied:")
    for kind, number in sorted(record_kinds.items()):
        print(f"  {number:5d}  {kind}")
    print("config mutations:")
    for kind, number in sorted(config_kinds.items()):
        print(f"  {number:5d}  {kind}")
    return 1 if any(counts[key] for key in BAD_COUNTS) else 0


if __name__ == "__main__":
    sys.exit(main())
