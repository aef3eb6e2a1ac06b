"""End to end: ``bcs-notifier run`` as a real process against the simulator (manual clock,
moved to every instant a record changes) and a signed-webhook receiver; faults injected
mid-run, and the service stopped with SIGTERM and killed with SIGKILL in the middle. Each in
both poll modes: one complete listing a cycle, and the short lists of incremental polling."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from config_support import sim_source
from e2e_support import (
    NS,
    TERMINAL,
    Cycle,
    GatedSimulator,
    Service,
    Transition,
    WebhookReceiver,
    assert_chains,
    assert_exactly_once,
    assert_in_order,
    expected_transitions,
    operation_deliveries,
    seen_alone,
    webhook_receiver,
    write_config,
)
from net_support import WAIT

from notifier.simulator import OperationSpec

#: A short story with every ending: history, an upgrade running at the start, then a
#: failing "add organisation", a stopped "scale organisation" and a finishing "join channel".
STORY = (
    OperationSpec(at=-3_600, kind="create", blockchain="bcs-ledger"),
    OperationSpec(at=-20, kind="upgrade", blockchain="bcs-ledger"),
    OperationSpec(at=10, kind="add_org", blockchain="bcs-ledger", outcome="failed"),
    OperationSpec(at=30, kind="scale_org", blockchain="bcs-ledger", outcome="stop"),
    OperationSpec(at=45, kind="join_channel", blockchain="bcs-ledger"),
)
#: long enough that an intact answer on a busy machine is never given up on by the client
#: (the oracle counts what the simulator answered intact as seen); the "slow" fault waits
#: longer than this, so that one is
CLIENT_TIMEOUT = 3.0

#: fault injected right before the clock moves to the change instant with this index, and the
#: request of an incremental cycle it is aimed at (the first one of that kind after the move)
FAULTS: dict[int, tuple[str, dict[str, Any], str]] = {
    2: ("500", {}, "waiting"),
    5: ("429", {"retry_after": 1}, "processing"),
    8: ("502", {}, "processing"),
    11: ("truncated", {}, "processing"),
    14: ("count", {}, "waiting"),
    17: ("slow", {"delay": CLIENT_TIMEOUT + 1.0}, "processing"),
    20: ("disconnect", {}, "waiting"),
    # password auth: a 401, one new IAM login, the same request works
    23: ("expire-tokens", {}, "processing"),
}
#: faults on the follow-up that reads a terminal state, injected before the first and the
#: third instant at which an operation ends
END_FAULTS: tuple[tuple[str, dict[str, Any]], ...] = (("500", {}), ("count", {}))

#: incremental polling with the shipped full_poll_interval (unless a test sets it): after the
#: start only short lists, so a fault aimed at one of their requests meets it
BOTH_MODES = pytest.mark.parametrize("poll_mode", ["full", "incremental"])


def assert_mode(cycles: list[Cycle], poll_mode: str) -> None:
    """The cycles were the mode's: incremental ones asked the short lists and followed up on
    what left them (terminal states read with ``?operation_id=``)."""
    committed = [cycle for cycle in cycles if cycle.committed]
    short = [cycle for cycle in committed if not cycle.complete]
    if poll_mode == "full":
        assert not short
    else:
        assert short, "no incremental cycle was committed"
        assert any(cycle.follow_ups for cycle in short), "no terminal state was followed up"


def status_changes(sim: GatedSimulator, instants: list[int]) -> list[set[tuple[str, str]]]:
    """Per instant, the operation status changes it brings, as ``(from, to)`` ("" for an
    operation that appears)."""
    before = {r["operation_id"]: r["operation_status"] for r in sim.records()}
    found = []
    for instant in instants:
        now = {r["operation_id"]: r["operation_status"] for r in sim.scenario.records_at(instant)}
        found.append({(before.get(op, ""), to) for op, to in now.items() if before.get(op) != to})
        before = now
    return found


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _wait_delivered(
    receiver: WebhookReceiver, expected: dict[Transition, int], timeout: float = WAIT
) -> None:
    receiver.wait_for(
        lambda got: len({d.webhook_id for d in operation_deliveries(got)}) >= len(expected),
        timeout,
    )


@BOTH_MODES
def test_run_delivers_every_transition_once_through_faults(tmp_path: Path, poll_mode: str) -> None:
    with GatedSimulator(seed=5, story=STORY) as sim, webhook_receiver() as receiver:
        source = sim_source(sim, "password", "prod", timeout=CLIENT_TIMEOUT, max_retries=0)
        config = write_config(tmp_path, [source], receiver.url, poll_mode=poll_mode)
        service = Service(config, tmp_path)
        try:
            service.start()
            sim.wait_committed_after(0)  # the silent baseline
            instants = sim.change_instants()
            changes = status_changes(sim, instants)
            ends = [i for i, found in enumerate(changes) if any(t in TERMINAL for _, t in found)]
            starts = [i for i, found in enumerate(changes) if ("waiting", "processing") in found]
            assert len(instants) > max(FAULTS) + 3
            assert len(ends) >= 4
            assert len(starts) >= 3
            faults = dict(FAULTS)
            for (kind, options), index in zip(END_FAULTS, ends[::2], strict=True):
                assert index not in faults
                faults[index] = (kind, options, "follow-up")
            # incremental: at these instants the clock moves as the processing list is asked,
            # so that cycle straddles two instants (an operation moves between the two lists,
            # or leaves them and is followed up)
            straddles = [i for i in starts + ends[1::2] if i > 0 and i not in faults]
            assert len(straddles) >= 4
            if poll_mode == "full":
                straddles = []
            for index, instant in enumerate(instants):
                with sim.gate:
                    fault = faults.get(index)
                    if fault is not None:
                        where = fault[2] if poll_mode == "incremental" else None
                        sim.inject_on(where, fault[0], **fault[1])
                    if index in straddles:
                        moves = len(sim.moved)
                        sim.move_on("processing", instant)
                    else:
                        mark = sim.move_to(instant)
                if index in straddles:
                    sim.wait_for(lambda _seen, before=moves: len(sim.moved) > before)
                    mark = sim.moved[-1] + 1
                # a whole cycle begun at this instant (a fault costs the one it lands in)
                sim.wait_committed_after(mark)
            expected = expected_transitions("prod", sim.truths())
            _wait_delivered(receiver, expected)
            assert service.stop(signal.SIGTERM) == 0
        finally:
            service.kill()

        deliveries = receiver.snapshot()
        assert_exactly_once(deliveries, expected)
        assert_in_order(deliveries, expected)
        assert_chains(deliveries, "prod", sim.truths(), expected)
        # every change instant was seen on its own, by a whole cycle: the transitions told
        # are every one the simulator made, none merged into a jump
        cycles = sim.cycles()
        assert set(instants) <= seen_alone(cycles)
        assert_mode(cycles, poll_mode)
        # each straddling cycle was committed, over the two instants
        straddled = {cycle.instants for cycle in cycles if cycle.committed}
        for index in straddles:
            assert frozenset(instants[index - 1 : index + 1]) in straddled
        # every fault was really served, by the request it was aimed at, and each cost
        # exactly one failed cycle
        assert not sim.armed()
        served = sorted((o.fault or "", o.kind) for o in sim.observations if o.fault)
        aimed = [
            (kind, where if poll_mode == "incremental" else "complete")
            for kind, _options, where in faults.values()
            if kind != "expire-tokens"
        ]
        assert served == sorted(aimed)
        assert sum(cycle.failed for cycle in cycles) == len(served)
        rejected = [o for o in sim.observations if o.status == 401]
        assert len(rejected) == 1  # the revoked token, answered by one new login
        assert rejected[0].kind == ("processing" if poll_mode == "incremental" else "complete")
        logins = [r for r in sim.requests() if r.path.startswith("/v3/auth/tokens")]
        assert len(logins) == 2
        log = service.stderr()
        assert "Traceback" not in log
        # and the service failed those cycles itself: none committed part of what it read
        failures = [line for line in log.splitlines() if "prod: poll failed: " in line]
        assert len(failures) == len(served), failures


@BOTH_MODES
def test_restarts_resume_without_resending(tmp_path: Path, poll_mode: str) -> None:
    """SIGTERM while a webhook is in flight: it completes, nothing is sent twice. SIGKILL
    while a webhook is in flight: after the restart exactly that one event is sent again
    (at-least-once), every other event exactly once, and nothing is lost. Incremental: a
    complete listing at each start and every 2 s (wall time) besides the short lists."""
    with GatedSimulator(seed=6, story=STORY) as sim, webhook_receiver() as receiver:
        source = sim_source(sim, "aksk", "prod", timeout=5, max_retries=0)
        every = {"full_poll_interval": 2} if poll_mode == "incremental" else {}
        config = write_config(tmp_path, [source], receiver.url, poll_mode=poll_mode, **every)
        service = Service(config, tmp_path)
        origin = sim.scenario.origin_ns
        settled = sim.scenario.story_settled_ns
        steps = [origin + (settled - origin) * k // 8 for k in range(1, 9)] + [settled + NS]

        def step(target: int) -> dict[Transition, int]:
            mark = sim.move_to(target)
            sim.wait_committed_after(mark)
            expected = expected_transitions("prod", sim.truths())
            _wait_delivered(receiver, expected)
            return expected

        def step_in_flight(target: int) -> str:
            """Move on and hold the first webhook of that poll; returns its id."""
            receiver.http.hold_next()
            mark = sim.move_to(target)
            sim.wait_committed_after(mark)
            assert receiver.http.wait_held(20), "no webhook was sent"
            return receiver.snapshot()[-1].webhook_id

        try:
            service.start()
            sim.wait_committed_after(0)
            step(steps[0])
            step(steps[1])

            # SIGTERM with a send in flight: the send completes, the service exits 0
            graceful_id = step_in_flight(steps[2])
            service.send(signal.SIGTERM)
            # the stop request arrives while the webhook is held
            wait_until(lambda: "stopping: up to" in service.stderr(), "the stop request")
            receiver.http.release()
            assert service.wait() == 0
            assert "Traceback" not in service.stderr()

            mark = sim.mark()
            service.start()
            sim.wait_committed_after(mark)
            step(steps[3])
            step(steps[4])

            # SIGKILL with a send in flight: the receiver has it, the service never knew
            killed_id = step_in_flight(steps[5])
            service.send(signal.SIGKILL)
            assert service.wait() == -signal.SIGKILL
            receiver.http.release()

            mark = sim.mark()
            service.start()
            sim.wait_committed_after(mark)
            for target in steps[6:]:
                expected = step(target)
            receiver.wait_for(lambda got: [d.webhook_id for d in got].count(killed_id) == 2)
            assert service.stop(signal.SIGTERM) == 0
        finally:
            service.kill()

        deliveries = receiver.snapshot()
        assert graceful_id != killed_id
        assert_exactly_once(deliveries, expected, repeats=frozenset({killed_id}))
        assert_in_order(deliveries, expected)
        assert_chains(deliveries, "prod", sim.truths(), expected)
        # three processes, one baseline: the restarts reported nothing as "created" again
        assert sum(1 for t in expected if t.type == "operation.created") == 3
        assert service.runs == 3
        cycles = sim.cycles()
        assert_mode(cycles, poll_mode)
        # each process began with a complete listing
        assert sum(cycle.committed and cycle.complete for cycle in cycles) >= 3
