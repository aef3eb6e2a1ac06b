"""What stall detection costs a poll cycle, against the same poller with it switched off.

Records come from the simulator's scenario engine: N finished creates (history, 14 timed
sub-steps and 4 steps each, so about 18 samples per operation) and A creates in progress.
Each cycle is timed on a real SQLite file, in the same run, best of seven (interleaved in
alternating order), with the real ``StallWatch`` and with one that learns and checks
nothing (the baseline):

- the first poll (the baseline: every snapshot stored, every sample learned);
- an unchanged re-poll (no snapshot written; every running step checked for a stall);
- a poll 30 simulated seconds later (some sub-steps finished: samples learned, diffs).

Run: ``python benchmarks/bench_stalls.py [N] [A]`` (default 2000 and 50).
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from email.utils import formatdate
from typing import Any

import httpx
import respx

from notifier.config import parse_config
from notifier.model import OperationRecord
from notifier.pipeline import Poller
from notifier.simulator.scenario import OperationSpec, Scenario
from notifier.store import db
from notifier.store.durations import StallCycle, StallWatch, StallWrite

ENDPOINT = "https://bcs.bench.test"
NS = 1_000_000_000
ORIGIN = int(time.time()) * NS  # the records' simulated "now" (the client checks clock skew)


class NoStalls(StallWatch):
    """The baseline: learns nothing, checks nothing."""

    def observe(
        self,
        source: str,
        records: Sequence[OperationRecord],
        changed: Iterable[tuple[OperationRecord | None, OperationRecord]],
        now_ns: int,
        *,
        check: bool = True,
    ) -> StallCycle:
        return StallCycle((), StallWrite(source))


def bodies(history: int, active: int) -> list[bytes]:
    story = [
        OperationSpec(at=-600.0 * (index + 1), kind="create", blockchain=f"bcs-{index:05d}")
        for index in range(history)
    ]
    story += [
        OperationSpec(at=-200.0 - index, kind="create", blockchain=f"bcs-live-{index:03d}")
        for index in range(active)
    ]
    scenario = Scenario(
        seed=1,
        origin_ns=ORIGIN,
        project_id="p",
        domain_id="d",
        story=story,
        episodes=False,
        retention=None,
    )
    found = []
    for offset in (0, 0, 30):
        records = scenario.records_at(ORIGIN + offset * NS)
        found.append(json.dumps({"count": len(records), "operation_records": records}).encode())
    return found


def run(config: Any, responses: list[bytes], watch: type[StallWatch]) -> list[tuple[float, int]]:
    timings = []
    with tempfile.TemporaryDirectory() as scratch:
        engine = db.make_engine(f"sqlite:///{scratch}/state.db")
        db.upgrade(engine, backup=False)
        url = f"{ENDPOINT}/v2/p/operation/record"
        with respx.mock(assert_all_called=False) as mock, Poller(config, engine) as poller:
            poller.stalls = watch(engine, poller.stalls.settings)
            route = mock.get(url)
            for content in responses:
                date = formatdate(ORIGIN / NS + 30, usegmt=True)
                route.return_value = httpx.Response(200, content=content, headers={"Date": date})
                started = time.perf_counter()
                result = poller.poll_source(config.sources[0])
                assert result.ok, result.error
                timings.append((time.perf_counter() - started, len(result.events)))
        engine.dispose()
    return timings


def main() -> None:
    history = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    active = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    responses = bodies(history, active)
    print(f"operations: {history} finished + {active} in progress")
    config = parse_config(
        f"""
[service]
stall_floor = 1
stall_min_samples = 10
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
    best: dict[str, list[float]] = {}
    variants = [("off", NoStalls), ("on", StallWatch)]
    for round_number in range(7):
        # alternate the order (a run pays for the garbage of the one before) and collect first
        for name, watch in variants if round_number % 2 else variants[::-1]:
            gc.collect()
            timings = run(config, responses, watch)
            previous = best.get(name)
            seconds = [timing for timing, _events in timings]
            best[name] = seconds if previous is None else list(map(min, previous, seconds))
    labels = ("first poll (baseline, learns)", "unchanged re-poll (checks)", "30 s later")
    print(f"{'cycle':34s} {'off (ms)':>9s} {'on (ms)':>9s} {'on/off':>7s}")
    for index, label in enumerate(labels):
        off, on = best["off"][index], best["on"][index]
        print(f"{label:34s} {off * 1000:9.1f} {on * 1000:9.1f} {on / off:7.2f}")


if __name__ == "__main__":
    main()
