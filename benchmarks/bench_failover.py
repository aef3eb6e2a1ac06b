"""Failover of several `bcs-notifier run` instances on one PostgreSQL: takeover times and
duplicate deliveries over many kills of the leader.

A real PostgreSQL (pgserver), the simulator with a story, a signed-webhook receiver and
``--instances`` real ``run`` processes share one database. ``--kills`` times: the story moves
on, the leader is killed with SIGKILL at a random moment (sends may be in flight), and the
bench measures, on the wall clock:

- takeover: from the kill until another instance holds the lease (the ``leases`` row);
- next poll: from the kill until the first intact poll after that takeover;

then the killed instance is started again so ``--instances`` keep running. The same run
measures a baseline: ``--handovers`` graceful handovers (SIGTERM of the leader, which
releases its lease at once). Ratios are printed against the bound the design promises
(``lease_ttl`` + one ``active_poll_interval``) and against the graceful handover.

At the end, once the outbox settled, every instance gets SIGTERM; the deliveries are checked
against the events the database recorded: events lost (recorded, never delivered), one
transition told under two ids, and webhook ids received more than once (at-least-once after
a kill: at most the send in flight). A poll answered to a leader that is killed before its
commit is simply not recorded: the next leader reports the jump it observes.

Usage: python benchmarks/bench_failover.py [--kills 20] [--handovers 5] [--instances 3]
       [--lease-ttl 3] [--active 0.5]
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from config_support import sim_source
from e2e_support import (
    GatedSimulator,
    operation_deliveries,
    webhook_receiver,
    write_config,
)
from pg_support import postgres_server
from scale_support import Cluster, pid_of
from sqlalchemy import select

from notifier.simulator import OperationSpec
from notifier.store.schema import events

STORY = tuple(
    OperationSpec(at=10 + 25 * n, kind=kind, blockchain="bcs-ledger", outcome=outcome)
    for n, (kind, outcome) in enumerate(
        [
            ("add_org", "failed"),
            ("scale_org", "stop"),
            ("join_channel", "finished"),
            ("upgrade", "finished"),
            ("add_org", "finished"),
            ("scale_org", "finished"),
        ]
        * 2
    )
)


def wait(predicate: Any, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)
    return time.monotonic()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def describe(name: str, values: list[float], bound: float, baseline: float | None) -> str:
    median = statistics.median(values)
    text = (
        f"{name:<28} n={len(values):<3} median {median:6.2f}s  p95 {percentile(values, 0.95):6.2f}s"
        f"  max {max(values):6.2f}s  max/bound {max(values) / bound:4.2f}"
    )
    if baseline:
        text += f"  median/graceful {median / baseline:5.1f}x"
    return text


def fail_over(group: Cluster, sim: GatedSimulator, *, graceful: bool) -> tuple[float, float]:
    """Stop the leader (SIGTERM or SIGKILL), restart it; (takeover, next poll) seconds."""
    leader, _epoch = group.wait_leader("prod")
    pid = pid_of(leader)
    time.sleep(random.uniform(0.0, 0.6))
    mark = sim.mark()
    start = time.monotonic()
    leader.send(signal.SIGTERM if graceful else signal.SIGKILL)
    taken = wait(
        lambda: (held := group.lease("prod")) is not None and held[0] != pid, 120, "a takeover"
    )
    mark = max(mark, sim.mark())

    def polled() -> bool:
        return any(o.valid for o in sim.observations[mark:])

    seen = wait(polled, 120, "the next poll")
    leader.wait(60)
    leader.start()  # back as a standby before the next round, so every round has the same
    wait(lambda: "running:" in leader.stderr(), 120, "the restarted instance")  # standbys
    return taken - start, seen - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--handovers", type=int, default=5)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=3.0)
    parser.add_argument("--active", type=float, default=0.5)
    args = parser.parse_args()
    bound = args.lease_ttl + args.active
    with (
        tempfile.TemporaryDirectory() as scratch,
        postgres_server() as server,
        GatedSimulator(seed=11, story=STORY) as sim,
        webhook_receiver() as receiver,
    ):
        url = server.create_database()
        source = sim_source(sim, "aksk", "prod", timeout=10, max_retries=0)
        config = write_config(
            Path(scratch),
            [source],
            receiver.url,
            database=url,
            lease_ttl=args.lease_ttl,
            active_poll_interval=args.active,
        )
        group = Cluster(config, Path(scratch), args.instances, url)
        try:
            group.start()
            wait(lambda: any(o.valid for o in sim.observations), 120, "the baseline")
            instants = sim.change_instants()
            step = max(1, len(instants) // (args.kills + args.handovers + 1))
            position = 0
            results: dict[str, list[tuple[float, float]]] = {"graceful": [], "kill": []}
            plan = ["graceful"] * args.handovers + ["kill"] * args.kills
            for kind in plan:
                if position < len(instants):
                    sim.move_to(instants[min(position, len(instants) - 1)])
                    position += step
                results[kind].append(fail_over(group, sim, graceful=kind == "graceful"))
            for instant in instants[position:]:
                mark = sim.move_to(instant)
                sim.wait_valid_after(mark, 120)
            group.wait_settled(180)
            with group.engine.connect() as connection:
                recorded = set(
                    connection.scalars(
                        select(events.c.id).where(
                            events.c.type.like("operation.%")
                            | events.c.type.like("step.%")
                            | events.c.type.like("substep.%")
                        )
                    )
                )
            codes = group.stop_all()
        finally:
            group.close()
        deliveries = operation_deliveries(receiver.snapshot())
    counts = Counter(d.webhook_id for d in deliveries)
    told: dict[Any, set[str]] = {}
    for delivery in deliveries:
        told.setdefault(delivery.transition, set()).add(delivery.webhook_id)
    graceful_take = [t for t, _ in results["graceful"]]
    graceful_poll = [p for _, p in results["graceful"]]
    base_take = statistics.median(graceful_take) if graceful_take else None
    base_poll = statistics.median(graceful_poll) if graceful_poll else None
    print(
        f"{args.instances} instances, lease_ttl {args.lease_ttl:g}s, active interval "
        f"{args.active:g}s: bound lease_ttl + active = {bound:g}s"
    )
    if graceful_take:
        print(describe("SIGTERM -> takeover", graceful_take, bound, None))
        print(describe("SIGTERM -> next poll", graceful_poll, bound, None))
    print(describe("SIGKILL -> takeover", [t for t, _ in results["kill"]], bound, base_take))
    print(describe("SIGKILL -> next poll", [p for _, p in results["kill"]], bound, base_poll))
    repeated = sum(n - 1 for n in counts.values() if n > 1)
    print(
        f"deliveries: {len(deliveries)} requests, {len(counts)} distinct ids, "
        f"{len(recorded)} events recorded"
    )
    print(
        f"  lost (recorded, never delivered): {len(recorded - set(counts))}; delivered but "
        f"not recorded: {len(set(counts) - recorded)}; one transition under two ids: "
        f"{sum(1 for ids in told.values() if len(ids) > 1)}"
    )
    print(
        f"  repeated ids (same webhook-id again, at-least-once after a kill): {repeated} over "
        f"{args.kills} kills and {args.handovers} graceful handovers"
    )
    print(f"  exit codes at the final SIGTERM: {codes}")


if __name__ == "__main__":
    main()
