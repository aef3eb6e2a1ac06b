"""Scale-out end to end on a real PostgreSQL: two and three ``bcs-notifier run`` processes
against the simulator (manual clock) and a signed-webhook receiver. The leader is killed
(SIGKILL), frozen past its lease (SIGSTOP with a poll in flight, then SIGCONT) or has its
database sessions terminated; every transition is still delivered exactly once under one
id, nothing is invented by a stale write, and SIGTERM stops every instance with exit 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from config_support import sim_source
from e2e_support import (
    GatedSimulator,
    Transition,
    WebhookReceiver,
    assert_chains,
    assert_exactly_once,
    assert_in_order,
    expected_transitions,
    operation_deliveries,
    webhook_receiver,
    write_config,
)
from net_support import WAIT
from pg_support import database_name
from scale_support import Cluster, cluster, pid_of, settings
from sqlalchemy import select

from notifier.simulator import OperationSpec
from notifier.store.schema import snapshots, source_state

pytestmark = pytest.mark.slow

STORY = (
    OperationSpec(at=-3_600, kind="create", blockchain="bcs-ledger"),
    OperationSpec(at=-20, kind="upgrade", blockchain="bcs-ledger"),
    OperationSpec(at=10, kind="add_org", blockchain="bcs-ledger", outcome="failed"),
    OperationSpec(at=30, kind="scale_org", blockchain="bcs-ledger", outcome="stop"),
    OperationSpec(at=45, kind="join_channel", blockchain="bcs-ledger"),
)


class Story:
    """Moves the simulator through its change instants, each one seen and delivered."""

    def __init__(self, sim: GatedSimulator, receiver: WebhookReceiver) -> None:
        self.sim = sim
        self.receiver = receiver
        self.instants = sim.change_instants()
        self.position = 0
        self.expected: dict[Transition, int] = {}

    def step(self, count: int = 1) -> None:
        for _ in range(count):
            mark = self.sim.move_to(self.instants[self.position])
            self.position += 1
            self.sim.wait_valid_after(mark)
            self.delivered()

    def rest(self) -> None:
        self.step(len(self.instants) - self.position)

    def delivered(self) -> None:
        self.expected = expected_transitions("prod", self.sim.truths())
        wanted = len(self.expected)
        self.receiver.wait_for(
            lambda got: len({d.webhook_id for d in operation_deliveries(got)}) >= wanted, WAIT
        )

    def check(self, repeats: frozenset[str] = frozenset()) -> None:
        deliveries = self.receiver.snapshot()
        assert_exactly_once(deliveries, self.expected, repeats=repeats)
        assert_in_order(deliveries, self.expected)
        assert_chains(deliveries, "prod", self.sim.truths(), self.expected)


def _start(tmp_path: Path, sim: GatedSimulator, receiver: WebhookReceiver, url: str) -> Path:
    source = sim_source(sim, "aksk", "prod", timeout=10, max_retries=0)
    return write_config(tmp_path, [source], receiver.url, **settings(url))


def _stored_statuses(group: Cluster) -> dict[str, str]:
    with group.engine.connect() as connection:
        rows = connection.execute(select(snapshots.c.operation_id, snapshots.c.status))
        return {row.operation_id: row.status for row in rows}


def _final_statuses(sim: GatedSimulator) -> dict[str, str]:
    records = sim.truths()[-1][1]
    return {r["operation_id"]: str(r["operation_status"]).strip().lower() for r in records}


def _wait_baseline_stored(group: Cluster, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    query = select(source_state.c.baseline_at).where(source_state.c.source == "prod")
    while True:
        with group.engine.connect() as connection:
            if connection.execute(query).scalar() is not None:
                return
        if time.monotonic() > deadline:
            raise AssertionError("the baseline was never stored")
        time.sleep(0.05)


def _wait_log(group: Cluster, text: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while text not in group.logs():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never logged")
        time.sleep(0.1)


@pytest.mark.parametrize("instances", [2, 3], ids=["two", "three"])
def test_kill_9_of_the_leader_hands_over_and_loses_nothing(
    tmp_path: Path, postgres: Any, instances: int
) -> None:
    url = postgres.create_database()
    with GatedSimulator(seed=7, story=STORY) as sim, webhook_receiver() as receiver:
        config = _start(tmp_path, sim, receiver, url)
        story = Story(sim, receiver)
        with cluster(config, tmp_path, instances, url) as group:
            group.start()
            sim.wait_valid_after(0)  # the silent baseline, by whichever instance leads
            leader, epoch = group.wait_leader("prod")
            story.step(len(story.instants) // 2)
            group.wait_settled()  # no delivery in flight: none may be repeated
            leader.send(signal.SIGKILL)
            assert leader.wait() == -signal.SIGKILL
            # the story moves on while nobody leads: the next leader must see it
            story.step()
            successor, new_epoch = group.wait_leader("prod", not_pid=pid_of(leader))
            assert successor is not leader
            assert new_epoch > epoch
            story.rest()
            assert group.stop_all() == [0] * (instances - 1)
            assert _stored_statuses(group) == _final_statuses(sim)
            assert "Traceback" not in group.logs()
        story.check()


def test_a_frozen_leader_resumes_without_writing_anything_stale(
    tmp_path: Path, postgres: Any
) -> None:
    """SIGSTOP the leader while the answer to its poll is on the way, for longer than the
    lease; the others take over and the story moves on; SIGCONT: the old leader's poll
    (now stale) is rolled back by the fencing check, and it becomes a standby."""
    url = postgres.create_database()
    with GatedSimulator(seed=8, story=STORY) as sim, webhook_receiver() as receiver:
        config = _start(tmp_path, sim, receiver, url)
        story = Story(sim, receiver)
        with cluster(config, tmp_path, 3, url) as group:
            group.start()
            sim.wait_valid_after(0)
            leader, epoch = group.wait_leader("prod")
            story.step(3)
            with sim.gate:  # the leader's next poll is answered one second late
                sim.inject("slow", delay=1.0)
                mark = sim.move_to(story.instants[story.position])
            story.position += 1
            sim.wait_requests_after(mark)
            leader.send(signal.SIGSTOP)
            try:
                successor, new_epoch = group.wait_leader("prod", not_pid=pid_of(leader))
                assert successor is not leader
                assert new_epoch > epoch
                sim.wait_valid_after(mark)
                story.delivered()
                story.step(3)  # the store is now well past what the frozen poll saw
            finally:
                leader.send(signal.SIGCONT)
            _wait_log(group, "was lost")  # its poll's transaction was fenced and rolled back
            story.rest()
            assert leader.alive()
            assert group.stop_all() == [0, 0, 0]
            assert _stored_statuses(group) == _final_statuses(sim)
            assert "Traceback" not in group.logs()
        story.check()


def test_terminated_database_sessions_change_nothing(tmp_path: Path, postgres: Any) -> None:
    """``pg_terminate_backend`` of every session of the leader, again and again: it
    reconnects; no poll is lost or doubled, no delivery sent twice."""
    url = postgres.create_database()
    with GatedSimulator(seed=9, story=STORY) as sim, webhook_receiver() as receiver:
        config = _start(tmp_path, sim, receiver, url)
        story = Story(sim, receiver)
        with cluster(config, tmp_path, 2, url) as group:
            group.start()
            sim.wait_valid_after(0)
            # the oracle takes the first served response as the baseline: a baseline whose
            # write is cut off is taken again later, silently, with what the story moved meanwhile
            _wait_baseline_stored(group)
            terminated = 0
            while story.position < len(story.instants):
                leader, _epoch = group.wait_leader("prod")
                terminated += postgres.terminate_process_sessions(
                    database_name(url), pid_of(leader)
                )
                story.step()
            assert terminated > 0
            assert group.stop_all() == [0, 0]
            assert _stored_statuses(group) == _final_statuses(sim)
        story.check()


def test_sigterm_of_the_leader_hands_over_at_once(tmp_path: Path, postgres: Any) -> None:
    url = postgres.create_database()
    with GatedSimulator(seed=10, story=STORY) as sim, webhook_receiver() as receiver:
        config = _start(tmp_path, sim, receiver, url)
        story = Story(sim, receiver)
        with cluster(config, tmp_path, 2, url) as group:
            group.start()
            sim.wait_valid_after(0)
            leader, epoch = group.wait_leader("prod")
            story.step(2)
            leader.send(signal.SIGTERM)
            assert leader.wait() == 0
            assert "released the lease" in leader.stderr()
            successor, new_epoch = group.wait_leader("prod", not_pid=pid_of(leader))
            assert successor is not leader
            assert new_epoch == epoch + 1
            story.rest()
            assert group.stop_all() == [0]
        story.check()
