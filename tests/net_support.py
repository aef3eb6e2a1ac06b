"""Real local servers for the tests, on 127.0.0.1 only: an HTTP receiver for webhooks and
chat targets, an SMTP inbox (aiosmtpd), a systemd notify socket, a free port, and an
independent Standard Webhooks signature check."""

from __future__ import annotations

import base64
import email
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WAIT = 60.0  # seconds any single wait may take before the test fails (a busy machine)


# -- a real local HTTP receiver ---------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int = 200

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every request and answers ``statuses`` one per request while the list lasts,
    then ``default_status``; waits ``delay`` seconds before answering. ``hold_next`` keeps one
    coming request in flight (recorded, not yet answered) so a test can kill the sender."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    delay: float = 0.0
    hold_timeout: float = 30.0
    lock: threading.Condition = field(default_factory=threading.Condition)
    _hold_in: int | None = None
    _held: threading.Event = field(default_factory=threading.Event)
    _released: threading.Event = field(default_factory=threading.Event)

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else self.default_status

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.requests)

    @property
    def accepted(self) -> list[Received]:
        return [request for request in self.snapshot() if 200 <= request.status < 300]

    def bodies(self) -> list[Any]:
        return [request.json() for request in self.accepted]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = WAIT) -> None:
        """Until ``predicate(requests so far)`` holds; fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not predicate(self.requests):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out with {len(self.requests)} requests")
                self.lock.wait(remaining)

    def hold_next(self, *, skip: int = 0) -> None:
        """``skip`` coming requests are answered as usual; the one after them is recorded, then
        its answer waits for ``release()`` (a send in flight while the test kills the sender)."""
        with self.lock:
            self._hold_in = skip
            self._held.clear()
            self._released.clear()

    def wait_held(self, timeout: float = WAIT) -> bool:
        """Whether the request that ``hold_next`` waits for arrived within ``timeout``."""
        return self._held.wait(timeout)

    def release(self) -> None:
        self._released.set()

    def _record(self, request: Received) -> bool:
        """Records ``request``; returns whether it is the one to hold."""
        with self.lock:
            self.requests.append(request)
            hold = self._hold_in == 0
            if self._hold_in is not None:
                self._hold_in = None if hold else self._hold_in - 1
            self.lock.notify_all()
        return hold


@contextmanager
def serve(receiver: Receiver) -> Iterator[Receiver]:
    """Serves ``receiver`` on 127.0.0.1 (a free port) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if receiver.delay:
                threading.Event().wait(receiver.delay)
            status = receiver.next_status()
            headers = {key.lower(): value for key, value in self.headers.items()}
            if receiver._record(Received("POST", self.path, headers, body, status)):
                receiver._held.set()
                receiver._released.wait(receiver.hold_timeout)
            payload = b"" if status == 204 else b"ok" if status < 400 else b"nope"
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True  # the sender was killed mid-request

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def http_receiver(**kwargs: Any) -> Iterator[Receiver]:
    """A ``Receiver(**kwargs)`` served on 127.0.0.1."""
    with serve(Receiver(**kwargs)) as receiver:
        yield receiver


def verify_standard_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Written from the Standard Webhooks spec, independent of notifier.channels.webhook."""
    key = base64.b64decode(secret.split("_", 1)[1])
    to_sign = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}."
    expected = base64.b64encode(hmac.new(key, to_sign.encode() + body, hashlib.sha256).digest())
    for candidate in headers.get("webhook-signature", "").split(" "):
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected.decode()):
            return True
    return False


# -- a real local SMTP server -----------------------------------------------------------------


class Inbox:
    """What a local SMTP server received: the messages and each one's recipients."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[Message] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@contextmanager
def smtp_inbox() -> Iterator[Inbox]:
    """An aiosmtpd server on 127.0.0.1 (a free port) until the block ends."""
    from aiosmtpd.controller import Controller

    inbox = Inbox(free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


# -- a systemd notify socket ------------------------------------------------------------------


class NotifyListener:
    """A real unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``; a thread
    keeps reading it into ``messages``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.address = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.address)
        self.socket.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.socket.recv(65536).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.splitlines()]

    def close(self) -> list[str]:
        """Stops reading, keeps what was sent before (a datagram is queued when sent), and
        returns every message; closing again only returns them."""
        if self.socket.fileno() == -1:
            return self.messages
        self._stop.set()
        self._thread.join(5)
        self.socket.setblocking(False)
        while True:
            try:
                self.messages.append(self.socket.recv(65536).decode())
            except OSError:  # BlockingIOError: nothing left
                break
        self.socket.close()
        return self.messages


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def point_slack_at(monkeypatch: Any, receiver: Receiver) -> None:
    """Make ``slack://`` targets post to ``receiver`` (webhooks under ``/services``, the bot
    API under ``/api``) instead of Slack."""
    from notifier.channels import slack

    monkeypatch.setattr(slack, "HOOK_BASE", f"http://{receiver.base}/services")
    monkeypatch.setattr(slack, "HOOK_GOV_BASE", f"http://{receiver.base}/gov/services")
    monkeypatch.setattr(slack, "API_BASE", f"http://{receiver.base}/api")
