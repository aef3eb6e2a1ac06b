"""Time one ``poll`` cycle over 10,000 mocked operation records.

Baseline measured in the same run: ``json.loads`` of the same response body. Three cycles
are timed on a real SQLite file: the first (baseline insert of every snapshot), an
unchanged re-poll (hash comparison only, no write), and one where 10 % of the records
changed (diff + events + outbox rows). Run: ``python benchmarks/bench_poll.py [N]``.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import respx

from notifier.config import parse_config
from notifier.pipeline import Poller
from notifier.store import db

FIXTURE = Path(__file__).parent.parent / "tests" / "fixtures" / "example_response.json"
ENDPOINT = "https://bcs.bench.test"


def make_body(count: int, changed_every: int = 0) -> bytes:
    template = json.loads(FIXTURE.read_text())["operation_records"][0]
    records: list[dict[str, Any]] = []
    for index in range(count):
        record = copy.deepcopy(template)
        record["operation_id"] = f"BCSSVC01-99-{1618218591906093855 + index}"
        if changed_every and index % changed_every == 0:
            sub = record["operation_process"]["Create Other Dependent Resource"]["sub_steps"]
            sub["Create network storage"].update(status="processing", detail=None)
            record["record_time"] += 1
        records.append(record)
    return json.dumps({"count": count, "operation_records": records}).encode()


def best_of(runs: int, action: Any) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    body = make_body(count)
    changed = make_body(count, changed_every=10)
    print(f"records: {count}, body: {len(body) / 1e6:.1f} MB")

    baseline = best_of(5, lambda: json.loads(body))
    print(f"json.loads of the body (baseline): {baseline * 1000:8.1f} ms")

    config = parse_config(
        f"""
[[sources]]
name = "bench"
endpoint = "{ENDPOINT}"
project_id = "p"
max_response_bytes = 268435456
[sources.auth]
type = "token"
token = "t"
"""
    )
    with tempfile.TemporaryDirectory() as scratch:
        engine = db.make_engine(f"sqlite:///{scratch}/state.db")
        db.upgrade(engine, backup=False)
        url = f"{ENDPOINT}/v2/p/operation/record"
        with respx.mock(assert_all_called=False) as mock, Poller(config, engine) as poller:
            route = mock.get(url)

            def poll(content: bytes) -> tuple[float, int]:
                route.return_value = httpx.Response(200, content=content)
                started = time.perf_counter()
                result = poller.poll_source(config.sources[0])
                assert result.ok, result.error
                return time.perf_counter() - started, len(result.events)

            first, _ = poll(body)
            unchanged, _ = poll(body)
            tracemalloc.start()  # a separate run: tracing slows Python down several times
            poll(body)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            ten_percent, found = poll(changed)
        engine.dispose()

    rows = [
        ("first poll (stores every snapshot)", first),
        ("unchanged re-poll (no write)", unchanged),
        (f"10 % changed ({found} events stored)", ten_percent),
    ]
    for label, seconds in rows:
        print(f"{label:40s} {seconds * 1000:8.1f} ms  = {seconds / baseline:5.1f} x json.loads")
    print(f"peak traced memory of the unchanged re-poll: {peak / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
