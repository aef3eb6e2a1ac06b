"""Deliveries per second from the outbox to a local webhook, against bare HTTP posts.

Measured in the same run, against the same local receiver, with the same signed
CloudEvent bodies (1,000 by default):

- bare ``httpx.Client`` posts (keep-alive): the fastest a Python sender gets here, the
  baseline every ratio is printed against;
- bare ``requests.post`` (a new connection per request) and a ``requests.Session``;
- the dispatcher: N outbox rows (one event each) to a ``webhook://`` channel with a signing
  secret: read the rows, render the CloudEvent, sign, POST, record every result in SQLite.

The receiver is a raw HTTP/1.1 keep-alive server on asyncio in its own process (so it
never competes with the sender for the GIL), answering ``200 ok`` at once: fast enough not
to be the bottleneck. The cases run interleaved, ``--rounds`` times (default 5), so a busy
moment of a shared machine hits each alike; each case's best round counts.

Run: ``python benchmarks/bench_dispatch.py [N] [--rounds R]``. The goal of issue 13:
dispatcher <= 2x the time of bare httpx.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import requests
from sqlalchemy import Engine, insert, update

from notifier.channels.webhook import sign
from notifier.config import ChannelConfig, Config, DeliveryConfig, ServiceConfig
from notifier.model import Event, EventType, OperationRecord, cloudevent
from notifier.outbox import Dispatcher
from notifier.store import db
from notifier.store.schema import event_groups, events, outbox

SECRET = "whsec_" + base64.b64encode(b"benchmark-secret-0123456789abcdef").decode()
_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


# -- the receiver (its own process) ---------------------------------------------------------


async def _serve(port_out: Any, count: Any, stop: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                with count.get_lock():
                    count.value += 1
                writer.write(_ANSWER)
                if b"connection: close" in head.lower():
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_out.value = server.sockets[0].getsockname()[1]
    async with server:
        while not stop.is_set():
            await asyncio.sleep(0.05)


def _receiver(port_out: Any, count: Any, stop: Any) -> None:
    asyncio.run(_serve(port_out, count, stop))


class Receiver:
    """The receiver in its own process, for the ``with`` block: ``port``, and ``received``
    (how many requests it answered so far)."""

    def __enter__(self) -> Receiver:
        context = multiprocessing.get_context("spawn")
        self._port = context.Value("i", 0)
        self._received = context.Value("q", 0)
        self._stop = context.Event()
        self._process = context.Process(
            target=_receiver, args=(self._port, self._received, self._stop), daemon=True
        )
        self._process.start()
        deadline = time.monotonic() + 30
        while not self._port.value and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._port.value:
            self.__exit__()
            raise SystemExit("the receiver did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()

    @property
    def port(self) -> int:
        return int(self._port.value)

    @property
    def received(self) -> int:
        return int(self._received.value)


# -- the workload ---------------------------------------------------------------------------


#: The operation every benchmark event belongs to (its record, as the group stores it).
BENCH_RECORD = OperationRecord(
    operation_id="BCSSVC01-99-1618218591906093855",
    status="processing",
    resource_type="BCSSVC01",
    operation_type="99",
    blockchain_id="23604f57-eac9-3777-e9f5-ae87457f2338",
    blockchain_name="bcs-bench",
    record_time=1_618_218_591_906_100_000,
)


def _events(count: int) -> tuple[list[Event], OperationRecord]:
    record = BENCH_RECORD
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


def fill_outbox(
    engine: Engine,
    groups: Sequence[Sequence[Event]],
    *,
    channel: str = "hook",
    record: str | None = None,
    event_ids: Callable[[Sequence[Event]], str | None] = lambda _found: None,
) -> None:
    """One event group a list of ``groups`` (its ``record`` JSON), its events, and its
    pending outbox row to ``channel``, due now; ``event_ids``: the row's routed ids (None:
    a row as written before migration 0007)."""
    now = int(time.time() * 1000)
    with engine.begin() as connection:
        connection.execute(
            insert(event_groups),
            [
                {
                    "id": f"grp_{index}",
                    "source": "bench",
                    "operation_id": found[0].operation_id,
                    "created_at": now,
                    "record": record,
                }
                for index, found in enumerate(groups)
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
                for index, found in enumerate(groups)
                for event in found
            ],
        )
        connection.execute(
            insert(outbox),
            [
                {
                    "group_id": f"grp_{index}",
                    "channel": channel,
                    "state": "pending",
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "updated_at": now,
                    "done_targets": "[]",
                    "event_ids": event_ids(found),
                }
                for index, found in enumerate(groups)
            ],
        )


def reset_outbox(engine: Engine) -> None:
    """Every row pending again, due now, nothing sent."""
    now = int(time.time() * 1000)
    with engine.begin() as connection:
        connection.execute(
            update(outbox).values(state="pending", done_targets="[]", next_attempt_at=now)
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", nargs="?", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count: int = args.count

    with Receiver() as receiver:
        url = f"http://127.0.0.1:{receiver.port}/events"

        found, record = _events(count)
        key = base64.b64decode(SECRET.removeprefix("whsec_"))

        def signed(event: Event) -> tuple[bytes, dict[str, str]]:
            body = json.dumps(cloudevent(event), ensure_ascii=False, separators=(",", ":")).encode()
            timestamp = int(time.time())
            return body, {
                "Content-Type": "application/cloudevents+json",
                "webhook-id": event.id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(key, event.id, timestamp, body),
            }

        def httpx_posts() -> None:
            with httpx.Client() as client:
                for event in found:
                    body, headers = signed(event)
                    client.post(url, content=body, headers=headers).raise_for_status()

        def requests_posts() -> None:
            for event in found:
                body, headers = signed(event)
                requests.post(url, data=body, headers=headers, timeout=10).raise_for_status()

        def session_posts() -> None:
            with requests.Session() as session:
                for event in found:
                    body, headers = signed(event)
                    session.post(url, data=body, headers=headers, timeout=10).raise_for_status()

        with tempfile.TemporaryDirectory() as scratch:
            engine = db.make_engine(f"sqlite:///{Path(scratch) / 'bench.db'}")
            db.upgrade(engine, backup=False)
            fill_outbox(engine, [[event] for event in found], record=json.dumps(record.to_dict()))
            channel = ChannelConfig(
                name="hook", urls=(f"webhook://127.0.0.1:{receiver.port}/events?secret={SECRET}",)
            )
            config = Config(
                service=ServiceConfig(),
                delivery=DeliveryConfig(batch_size=count),
                sources=(),
                channels=(channel,),
            )

            def dispatch() -> None:
                reset_outbox(engine)
                dispatcher = Dispatcher(config, engine)
                started = time.perf_counter()
                stats = dispatcher.dispatch_due()
                timings["dispatch"] = time.perf_counter() - started
                assert stats.sent == count, stats

            timings: dict[str, float] = {}
            cases: list[tuple[str, Callable[[], None]]] = [
                ("bare httpx.Client posts (keep-alive)", httpx_posts),
                ("bare requests.post (new connection each)", requests_posts),
                ("bare requests.Session posts (keep-alive)", session_posts),
                ("Dispatcher.dispatch_due (sign + send + record)", dispatch),
            ]
            best = dict.fromkeys((label for label, _ in cases), float("inf"))
            for _ in range(args.rounds):  # interleaved, so a busy moment hits every case alike
                for label, run in cases:
                    before = receiver.received
                    started = time.perf_counter()
                    run()
                    elapsed = timings.pop("dispatch", time.perf_counter() - started)
                    assert receiver.received - before == count, f"{label}: not all received"
                    best[label] = min(best[label], elapsed)

            print(
                f"{count} signed CloudEvents to a local keep-alive receiver, best of {args.rounds}"
            )
            for label, elapsed in best.items():
                print(f"{label:<46} {count:>6} in {elapsed:6.3f} s = {count / elapsed:8.0f} /s")
            baseline, bare_requests, session, dispatcher_time = best.values()
            engine.dispose()
    print(
        f"time vs bare httpx: dispatcher {dispatcher_time / baseline:.2f}x, "
        f"requests.post {bare_requests / baseline:.2f}x, "
        f"requests.Session {session / baseline:.2f}x  (goal: dispatcher <= 2x)"
    )


if __name__ == "__main__":
    main()
