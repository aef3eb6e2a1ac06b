"""Deliveries per second from the outbox to a local webhook, against bare HTTP posts.

Measured in the same run, against the same local receiver (a threaded ``http.server`` on
127.0.0.1), with the same CloudEvent bodies:

- ``httpx.Client`` posts (keep-alive): the fastest a Python sender gets here;
- bare ``requests.post`` (a new connection per request): what apprise plugins do;
- the dispatcher: N outbox rows (one event each) to a ``webhook://`` channel with a signing
  secret: read the rows, render the CloudEvent, sign, POST through apprise, and record every
  success in SQLite right after it (what makes a crash never re-send it).

Run: ``python benchmarks/bench_dispatch.py [N]`` (default 1000).
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import requests
from sqlalchemy import insert

from notifier.config import ChannelConfig, Config, DeliveryConfig, ServiceConfig
from notifier.model import Event, EventType, OperationRecord, cloudevent
from notifier.outbox import Dispatcher
from notifier.store import db
from notifier.store.schema import event_groups, events, outbox

SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-0123456789abcdef").decode()


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive clients wait for delayed ACKs (40 ms)
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _Receiver.lock:
            _Receiver.count += 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        return


def _events(count: int) -> tuple[list[Event], OperationRecord]:
    record = OperationRecord(
        operation_id="BCSSVC01-99-1618218591906093855",
        status="processing",
        resource_type="BCSSVC01",
        operation_type="99",
        blockchain_id="23604f57-eac9-3777-e9f5-ae87457f2338",
        blockchain_name="bcs-bench",
        record_time=1_618_218_591_906_100_000,
    )
    found = [
        Event(
            id=f"evt_{index:032x}",
            type=EventType.SUBSTEP_STATUS_CHANGED,
            source="bench",
            operation_id=f"BCSSVC01-99-{1618218591906093855 + index}",
            record_time=record.record_time + index,
            operation=record.summary(),
            step="Create Other Dependent Resource",
            substep="Create EIP",
            from_status="processing",
            to_status="finished",
        )
        for index in range(count)
    ]
    return found, record


def _fill_outbox(engine: object, found: list[Event], record: OperationRecord) -> None:
    now = int(time.time() * 1000)
    with engine.begin() as connection:  # type: ignore[attr-defined]
        connection.execute(
            insert(event_groups),
            [
                {
                    "id": f"grp_{index}",
                    "source": "bench",
                    "operation_id": event.operation_id,
                    "created_at": now,
                    "record": json.dumps(record.to_dict()),
                }
                for index, event in enumerate(found)
            ],
        )
        connection.execute(
            insert(events),
            [
                {
                    "id": event.id,
                    "group_id": f"grp_{index}",
                    "source": "bench",
                    "operation_id": event.operation_id,
                    "type": str(event.type),
                    "record_time": event.record_time,
                    "created_at": now,
                    "payload": json.dumps(event.to_dict()),
                }
                for index, event in enumerate(found)
            ],
        )
        connection.execute(
            insert(outbox),
            [
                {
                    "group_id": f"grp_{index}",
                    "channel": "hook",
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "updated_at": now,
                    "done_targets": "[]",
                }
                for index in range(len(found))
            ],
        )


def _timed(label: str, count: int, run: Callable[[], None]) -> float:
    before = _Receiver.count
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    received = _Receiver.count - before
    assert received == count, f"{label}: {received} of {count} received"
    rate = count / elapsed
    print(f"{label:<44} {count:>6} in {elapsed:6.2f} s = {rate:8.0f} /s")
    return rate


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}/events"
    found, record = _events(count)
    bodies = [json.dumps(cloudevent(event), separators=(",", ":")).encode() for event in found]
    headers = {"Content-Type": "application/cloudevents+json"}

    def httpx_posts() -> None:
        with httpx.Client() as client:
            for body in bodies:
                client.post(url, content=body, headers=headers).raise_for_status()

    def requests_posts() -> None:
        for body in bodies:
            requests.post(url, data=body, headers=headers, timeout=10).raise_for_status()

    with tempfile.TemporaryDirectory() as scratch:
        engine = db.make_engine(f"sqlite:///{Path(scratch) / 'bench.db'}")
        db.upgrade(engine, backup=False)
        _fill_outbox(engine, found, record)
        channel = ChannelConfig(
            name="hook", urls=(f"webhook://127.0.0.1:{port}/events?secret={SECRET}",)
        )
        config = Config(
            service=ServiceConfig(),
            delivery=DeliveryConfig(batch_size=count),
            sources=(),
            channels=(channel,),
        )
        dispatcher = Dispatcher(config, engine)

        def dispatch() -> None:
            stats = dispatcher.dispatch_due()
            assert stats.sent == count, stats

        print(f"{count} deliveries to a local webhook (one CloudEvent each)")
        baseline = _timed("bare httpx.Client posts (keep-alive)", count, httpx_posts)
        bare_requests = _timed("bare requests.post (what apprise does)", count, requests_posts)
        rate = _timed("Dispatcher.dispatch_due (sign + record)", count, dispatch)
        engine.dispose()
    server.shutdown()
    print(
        f"dispatcher / httpx = {rate / baseline:.2f}x, "
        f"dispatcher / requests.post = {rate / bare_requests:.2f}x"
    )


if __name__ == "__main__":
    main()
