"""The simulator's stories for stall detection, and ``OperationSpec(took=...)``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from test_simulator_cli import Served, read_snippet

from notifier.simulator import OperationSpec, Scenario
from notifier.simulator.scenario import DEFAULT_STORY, SubStepPlan, plan_operation
from notifier.simulator.stories import (
    DEMO_STALL,
    DEMO_STORY,
    STALL_STEP,
    STALL_STORY,
    STALL_SUBSTEP,
    stall_story,
)

NS = 1_000_000_000
ORIGIN = 1_705_307_400 * NS


def scenario(story: tuple[OperationSpec, ...], seed: int = 0) -> Scenario:
    return Scenario(
        seed=seed, origin_ns=ORIGIN, project_id="p", domain_id="d", story=story, episodes=False
    )


def test_took_fixes_a_sub_steps_duration_and_leaves_the_rest_as_they_were() -> None:
    spec = OperationSpec(at=10, kind="create", blockchain="bcs-x")
    slow = OperationSpec(
        at=10, kind="create", blockchain="bcs-x", took=(("Create security group", 300.0),)
    )
    usual = plan_operation(0, "k", ORIGIN, spec)
    changed = plan_operation(0, "k", ORIGIN, slow)
    assert usual.created_ns == changed.created_ns
    subs = {sub.name: sub for step in changed.steps for sub in step.sub_steps}
    before = {sub.name: sub for step in usual.steps for sub in step.sub_steps}
    group = subs["Create security group"]
    assert group.start_ns == before["Create security group"].start_ns
    assert group.end_ns is not None
    assert group.start_ns is not None
    assert group.end_ns - group.start_ns == 300 * NS
    # everything before it is the same; later sub-steps keep their own durations
    assert subs["Create network storage"] == before["Create network storage"]

    def took(sub: SubStepPlan) -> int:
        assert sub.start_ns is not None
        assert sub.end_ns is not None
        return sub.end_ns - sub.start_ns

    for name in ("Create CCE cluster", "Deploy peer nodes"):
        assert took(subs[name]) == took(before[name])


@pytest.mark.parametrize(
    ("took", "message"),
    [((("No such step", 1.0),), "no sub-step"), ((("Create EIP", -1.0),), "cannot take")],
    ids=["unknown", "negative"],
)
def test_took_is_checked(took: tuple[tuple[str, float], ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperationSpec(at=0, kind="create", blockchain="b", took=took)


def test_the_stall_story_has_twelve_short_runs_then_one_that_hangs() -> None:
    plans = scenario(STALL_STORY).story_plans
    durations = []
    for plan in plans:
        (step, *_rest) = plan.steps
        assert step.name == STALL_STEP
        (sub,) = step.sub_steps
        assert sub.name == STALL_SUBSTEP
        assert sub.end_ns is not None
        assert sub.start_ns is not None
        durations.append((sub.end_ns - sub.start_ns) / NS)
    assert len(durations) == 13
    assert min(durations[:12]) == 2.0
    assert max(durations[:12]) == 3.0
    assert durations[12] == 20.0
    assert all(plan.ended_ns < ORIGIN for plan in plans[:12])
    assert plans[12].created_ns > ORIGIN
    assert len(stall_story(history=3)) == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_demo_story_settles_about_when_the_default_did(seed: int) -> None:
    default = scenario(DEFAULT_STORY, seed).story_settled_ns - ORIGIN
    demo = scenario(DEMO_STORY, seed).story_settled_ns - ORIGIN
    assert abs(demo - default) < 60 * NS  # 4 s of a demo at 15x
    (stalling,) = [spec for spec in DEMO_STORY if DEMO_STALL in spec.took]
    assert stalling.blockchain == "bcs-supply"
    assert [spec.outcome for spec in DEMO_STORY] == [spec.outcome for spec in DEFAULT_STORY]


def test_simulate_serves_the_stall_story() -> None:
    arguments = ["--port", "0", "--speed", "0", "--story", "stall", "--story-only"]
    process = subprocess.Popen(
        [sys.executable, "-m", "notifier", "simulate", *arguments, "--auth", "token"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        served = Served(process, read_snippet(process))
        source = served.source
        with httpx.Client(base_url=served.endpoint, timeout=5) as client:
            body = client.get(
                f"/v2/{source['project_id']}/operation/record",
                headers={"X-Auth-Token": source["auth"]["token"]},
            ).json()
        assert body["count"] == 12
        assert {record["operation_type"] for record in body["operation_records"]} == {"00"}
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
