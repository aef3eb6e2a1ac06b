"""End to end: ``bcs-notifier poll`` as a real process, run again and again against the
simulator (manual clock) with faults in between, delivering to a signed-webhook receiver; in
both poll modes (incremental: the short lists, the last poll ``--full``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from config_support import sim_source
from e2e_support import (
    TERMINAL,
    GatedSimulator,
    assert_chains,
    assert_exactly_once,
    assert_in_order,
    expected_transitions,
    health_types,
    run_cli,
    webhook_receiver,
    write_config,
)

EX_UNAVAILABLE = 69


@pytest.mark.parametrize("poll_mode", ["full", "incremental"])
def test_repeated_polls_deliver_every_observed_transition_once_through_faults(
    tmp_path: Path, poll_mode: str
) -> None:
    with GatedSimulator(seed=11) as sim, webhook_receiver() as receiver:
        source = sim_source(sim, "password", "prod", timeout=3, max_retries=0)
        # unreachable_after = 0: every failed streak is reported once, and its end once
        config = write_config(
            tmp_path, [source], receiver.url, unreachable_after=0, poll_mode=poll_mode
        )
        origin = sim.clock.now_ns()
        settled = sim.scenario.story_settled_ns

        def poll(expect: int = 0, *options: str) -> str:
            done = run_cli("--config", str(config), "poll", "--json", *options)
            assert done.returncode == expect, done.stderr
            return done.stderr

        assert "baseline" in poll()
        assert receiver.snapshot() == []  # the first poll is silent

        plan: list[tuple[float, tuple[str, str] | None]] = [
            # (seconds after the story's origin, fault injected before that poll and the
            # request of an incremental cycle it is aimed at)
            (60, None),
            (75, ("500", "waiting")),
            (130, ("truncated", "processing")),
            (130, None),  # the jump since 60 s is reported now, nothing of the failures
            (170, ("count", "processing")),
            (240, ("502", "follow-up")),  # "add organisation" ended at 139 s
            (330, None),
            # incremental: a complete listing (--full) reconciles what the short lists missed
            ((settled - origin) / 1e9 + 1, None),
        ]
        for number, (at, fault) in enumerate(plan, 1):
            sim.move_to(origin + round(at * 1e9))
            before = len(receiver.snapshot())
            if number == len(plan) and poll_mode == "incremental":
                poll(0, "--full")
            elif fault is not None:
                sim.inject_on(fault[1] if poll_mode == "incremental" else None, fault[0])
                error = poll(EX_UNAVAILABLE)
                lines = [line for line in error.splitlines() if line.startswith("error:")]
                assert len(lines) == 1, error
                # a failed poll delivers at most the source's health event, never a transition
                new = receiver.snapshot()[before:]
                assert all(d.document["type"].startswith("bcs_notifier.source.") for d in new)
            else:
                poll()

        cycles = sim.cycles()
        # one cycle a poll; a fault costs the poll it was injected before, at its aim
        served = [(o.fault, o.kind) for o in sim.observations if o.fault]
        aimed = [fault for _at, fault in plan if fault is not None]
        incremental = poll_mode == "incremental"
        assert served == [(kind, where if incremental else "complete") for kind, where in aimed]
        assert len(cycles) == 1 + len(plan)
        assert [cycle.failed for cycle in cycles] == [False] + [f is not None for _, f in plan]
        assert all(cycle.committed for cycle in cycles if not cycle.failed)
        assert [cycle.complete for cycle in cycles] == (
            [True] * len(cycles) if poll_mode == "full" else [True] + [False] * 7 + [True]
        )
        truths = sim.truths()
        expected = expected_transitions("prod", truths)
        deliveries = receiver.snapshot()
        assert_exactly_once(deliveries, expected)
        assert_in_order(deliveries, expected)
        assert_chains(deliveries, "prod", truths, expected)
        # two failed streaks (500 + truncated; count + 502), each reported once and its end once
        assert health_types(deliveries) == ["source.unreachable", "source.recovered"] * 2
        # the story is over and the last intact poll saw the end of every operation
        assert truths[-1][1] == sim.records()
        assert {r["operation_status"] for r in sim.records()} <= {"finished", "failed", "stop"}
        assert any(
            t.to_status == "failed" and t.type == "operation.status_changed" for t in expected
        )
        if poll_mode == "incremental":
            # an operation created and finished between two polls: the short lists cannot
            # see it, the closing complete listing reports it, as the observed jump
            closing = cycles[-1].index
            jumps = [t for t, index in expected.items() if index == closing]
            assert any(t.type == "operation.created" and t.to_status in TERMINAL for t in jumps)
            # and terminal states the short lists did not show were read with follow-ups
            assert any(cycle.follow_ups for cycle in cycles)
        # password auth: each poll process logs in to IAM once, failed polls included
        logins = [r for r in sim.requests() if r.path.startswith("/v3/auth/tokens")]
        assert len(logins) == 1 + len(plan)

        # `events --json` prints the same CloudEvents the webhook got, oldest first
        listed = run_cli("--config", str(config), "events", "--json")
        assert listed.returncode == 0, listed.stderr
        documents = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [d["id"] for d in documents] == [d.webhook_id for d in deliveries]
        assert documents == [d.document for d in deliveries]
