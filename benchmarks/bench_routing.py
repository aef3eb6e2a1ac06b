"""What routing once per event (at write, ``outbox.event_ids``) saves the dispatcher.

Measured in the same run, against the same local keep-alive webhook receiver (its own
process, from ``bench_dispatch.py``), with the same outbox contents in two SQLite files:

- baseline: rows as written before migration 0007 (``event_ids`` NULL), which the
  dispatcher routes through the channel's filters itself, once per dispatch (the code
  before this change routed every row twice: at dispatch and again when it checked the
  row complete; the routing calls' own cost is printed apart);
- rows with stored ``event_ids`` (what the planner routed when the events were recorded):
  the dispatcher sends them as they are.

N groups (500 by default) of 4 events each, to one ``webhook://`` channel with realistic
filters (event globs, statuses, 51 blockchains, resource and operation types) that admit 2
of the 4, so both cases send the same 2 x N signed CloudEvents. The cases run interleaved,
``--rounds`` times (default 5); each case's best round counts. Also printed: what the
routing calls alone cost (``matching_events`` twice per row, as the old dispatch made them).

Run: ``python benchmarks/bench_routing.py [N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench_dispatch import BENCH_RECORD, SECRET, Receiver, fill_outbox, reset_outbox
from sqlalchemy import Engine

from notifier.config import ChannelConfig, Config, DeliveryConfig, ServiceConfig
from notifier.model import Event, EventType
from notifier.outbox import Dispatcher
from notifier.routing import matching_events, routes
from notifier.store import db

_KINDS = (
    (EventType.SUBSTEP_STATUS_CHANGED, "processing", "finished"),  # admitted
    (EventType.STEP_STATUS_CHANGED, "processing", "finished"),  # refused: event glob
    (EventType.OPERATION_STATUS_CHANGED, "waiting", "processing"),  # refused: status
    (EventType.SUBSTEP_STATUS_CHANGED, "processing", "failed"),  # admitted
)


def _groups(count: int) -> list[list[Event]]:
    record = BENCH_RECORD
    return [
        [
            Event(
                id=f"evt_{index:024x}{number:08x}",
                type=kind,
                source="bench",
                operation_id=f"BCSSVC01-99-{1618218591906093855 + index}",
                record_time=record.record_time + index,
                operation=record.summary(),
                step="Create Other Dependent Resource",
                substep="Create EIP" if kind == EventType.SUBSTEP_STATUS_CHANGED else None,
                from_status=before,
                to_status=after,
            )
            for number, (kind, before, after) in enumerate(_KINDS)
        ]
        for index in range(count)
    ]


def _routed(channel: ChannelConfig) -> Callable[[Sequence[Event]], str]:
    """The ``event_ids`` the planner stores for ``channel``'s row of a group."""
    return lambda found: json.dumps(list(routes([channel], found)[channel.name]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("count", nargs="?", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    count: int = args.count

    with Receiver() as receiver:
        channel = ChannelConfig(
            name="hook",
            urls=(f"webhook://127.0.0.1:{receiver.port}/events?secret={SECRET}",),
            events=("operation.*", "substep.*"),
            statuses=("failed", "finished"),
            blockchains=(*(f"bcs-{number}" for number in range(50)), "bcs-bench"),
            resource_types=("BCSSVC01",),
            operation_types=("99",),
        )
        config = Config(
            service=ServiceConfig(),
            delivery=DeliveryConfig(batch_size=count),
            sources=(),
            channels=(channel,),
        )
        groups = _groups(count)
        expected = sum(len(matching_events(channel, found)) for found in groups)

        with tempfile.TemporaryDirectory() as scratch:
            engines: dict[str, Engine] = {}
            labels = {
                "legacy": "event_ids NULL: routed at dispatch (pre-0007)",
                "stored": "stored event_ids: routed at write (now)",
            }
            for name in labels:
                engine = db.make_engine(f"sqlite:///{Path(scratch) / f'{name}.db'}")
                db.upgrade(engine, backup=False)
                fill_outbox(
                    engine,
                    groups,
                    channel=channel.name,
                    **({"event_ids": _routed(channel)} if name == "stored" else {}),
                )
                engines[name] = engine

            best = dict.fromkeys(labels, float("inf"))
            for _ in range(args.rounds):  # interleaved, so a busy moment hits both alike
                for name, engine in engines.items():
                    reset_outbox(engine)
                    dispatcher = Dispatcher(config, engine)
                    before = receiver.received
                    started = time.perf_counter()
                    stats = dispatcher.dispatch_due()
                    elapsed = time.perf_counter() - started
                    assert stats.sent == count, stats
                    assert receiver.received - before == expected, f"{name}: not all received"
                    best[name] = min(best[name], elapsed)

            routing_best = float("inf")
            for _ in range(args.rounds):
                started = time.perf_counter()
                for found in groups:
                    matching_events(channel, found)  # at dispatch
                    matching_events(channel, found)  # and again at completion
                routing_best = min(routing_best, time.perf_counter() - started)
            for engine in engines.values():
                engine.dispose()

    print(
        f"{count} outbox rows x {len(_KINDS)} events, {expected} signed CloudEvents sent per "
        f"dispatch, best of {args.rounds}"
    )
    for name, label in labels.items():
        elapsed = best[name]
        print(f"{label:<46} {elapsed:6.3f} s = {count / elapsed:7.0f} rows/s")
    baseline = best["legacy"]
    print(
        f"time vs pre-0007 rows: {best['stored'] / baseline:.2f}x; the old routing calls alone "
        f"(2 per row): {routing_best * 1000:.1f} ms = {routing_best / baseline:.1%} of the "
        "old dispatch"
    )


if __name__ == "__main__":
    main()
