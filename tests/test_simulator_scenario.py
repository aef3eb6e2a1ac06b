"""The simulator's scenario engine: pure records of simulated time and seed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from notifier.model import TERMINAL_STATUSES
from notifier.simulator.scenario import (
    DEFAULT_STORY,
    TEMPLATES,
    OperationSpec,
    Scenario,
    episode_specs,
)

NS = 1_000_000_000
ORIGIN = 1_705_307_400 * NS  # 2024-01-15T08:30:00Z
OPERATION_ID = re.compile(r"^(BCSSVC0[12]|PLUGIN0[123])-(99|00|01|91|02|03|04|05)-\d{19}$")


def scenario(seed: int = 7, **kwargs: Any) -> Scenario:
    return Scenario(seed=seed, origin_ns=ORIGIN, project_id="p" * 32, domain_id="d" * 32, **kwargs)


def at(seconds: float) -> int:
    return ORIGIN + round(seconds * NS)


def by_kind(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["blockchain_name"], r["resource_type"], r["operation_type"]): r for r in records}


def sub_steps(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for step in (record["operation_process"] or {}).values():
        yield from step["sub_steps"].values()


def test_same_seed_same_records_and_other_seed_other_records() -> None:
    times = [at(t) for t in (-60, 0, 47.5, 120, 333, 900, 5000)]
    first = [scenario(seed=3).records_at(t) for t in times]
    again = [scenario(seed=3).records_at(t) for t in times]
    other = [scenario(seed=4).records_at(t) for t in times]
    assert json.dumps(first) == json.dumps(again)
    assert json.dumps(first) != json.dumps(other)


def test_records_match_the_documented_shape(example_body: dict[str, Any]) -> None:
    example = example_body["operation_records"][0]
    records = scenario().records_at(at(200))
    assert records
    for record in records:
        assert list(record) == list(example)
        assert list(record["cluster_info"]) == list(example["cluster_info"])
        assert OPERATION_ID.match(record["operation_id"])
        created = int(record["operation_id"].rsplit("-", 1)[1])
        assert created <= record["record_time"] <= at(200)
        for step_name, step in (record["operation_process"] or {}).items():
            assert step["step_name"] == step_name
            assert list(step) == list(next(iter(example["operation_process"].values())))
            for sub_name, sub in step["sub_steps"].items():
                assert sub["substep_name"] == sub_name
                assert list(sub) == list(
                    example["operation_process"]["Preparation"]["sub_steps"][
                        "Generate basic configurations"
                    ]
                )
                assert isinstance(sub["start_time"], int)
                assert isinstance(sub["end_time"], int)


def test_maps_are_serialised_in_key_order_not_execution_order() -> None:
    records = scenario().records_at(at(600))
    create = by_kind(records)["bcs-supply", "BCSSVC01", "99"]
    steps = create["operation_process"]
    assert list(steps) == sorted(steps)
    assert [s["serial_num"] for s in steps.values()] != sorted(
        s["serial_num"] for s in steps.values()
    )
    for step in steps.values():
        assert list(step["sub_steps"]) == sorted(step["sub_steps"])


def test_baseline_then_new_operations_appear_over_time() -> None:
    engine = scenario()
    baseline = {r["operation_id"] for r in engine.records_at(at(0))}
    later = {r["operation_id"] for r in engine.records_at(at(400))}
    assert len(baseline) == 4  # three creations and an add-on in the past, one upgrade running
    new = later - baseline
    assert {op.split("-")[1] for op in new} == {"99", "02", "03", "04"}
    assert baseline <= later


def test_upgrade_is_already_running_at_the_origin() -> None:
    upgrade = by_kind(scenario().records_at(at(0)))["bcs-ledger", "BCSSVC01", "01"]
    assert upgrade["operation_status"] == "processing"
    assert upgrade["desc"] == "Upgrade blockchain bcs-ledger to the latest version"


def test_a_queued_operation_is_waiting_with_a_null_process() -> None:
    engine = scenario()
    create = next(p for p in engine.story_plans if p.spec.blockchain == "bcs-supply")
    record = next(
        r for r in engine.records_at(create.created_ns) if r["operation_id"] == create.operation_id
    )
    assert record["operation_status"] == "waiting"
    assert record["operation_process"] is None
    assert record["record_time"] == create.created_ns
    assert record["message"] is None
    assert record["desc"] is None
    assert record["cluster_info"]["node_infos"] is None


def test_not_yet_started_sub_steps_have_the_empty_status_quirk() -> None:
    engine = scenario()
    plan = next(p for p in engine.story_plans if p.spec.blockchain == "bcs-supply")
    step = plan.steps[1]  # Create Other Dependent Resource
    moment = step.sub_steps[1].start_ns
    assert moment is not None
    record = next(r for r in engine.records_at(moment) if r["operation_id"] == plan.operation_id)
    subs = record["operation_process"][step.name]["sub_steps"]
    waiting = subs[step.sub_steps[2].name]
    assert waiting["status"] == ""
    assert waiting["detail"] == "waiting"
    assert (waiting["start_time"], waiting["end_time"], waiting["message"]) == (0, 0, None)
    running = subs[step.sub_steps[1].name]
    assert running["status"] == "processing"
    assert running["start_time"] == moment
    assert running["end_time"] == 0
    assert record["record_time"] == moment
    # a step appears only once it has started
    assert "Create Cluster" not in record["operation_process"]


def _timeline(engine: Scenario, operation_id: str) -> list[dict[str, Any]]:
    plan = next(p for p in engine.story_plans if p.operation_id == operation_id)
    moments = sorted(set(plan.times()))
    return [
        next(r for r in engine.records_at(moment) if r["operation_id"] == operation_id)
        for moment in moments
    ]


@pytest.mark.parametrize(
    ("blockchain", "operation_type", "terminal"),
    [
        ("bcs-supply", "99", "finished"),
        ("bcs-ledger", "01", "finished"),
        ("bcs-finance", "02", "failed"),
        ("bcs-ledger", "03", "stop"),
        ("bcs-ledger", "04", "finished"),
    ],
    ids=["create-finished", "upgrade-finished", "add-org-failed", "scale-org-stop", "join"],
)
@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_lifecycles_reach_their_terminal_state_in_serial_order(
    seed: int, blockchain: str, operation_type: str, terminal: str
) -> None:
    engine = scenario(seed=seed)
    plan = next(
        p
        for p in engine.story_plans
        if p.spec.blockchain == blockchain and p.spec.template.operation_type == operation_type
    )
    timeline = _timeline(engine, plan.operation_id)
    statuses = [record["operation_status"] for record in timeline]
    assert statuses[0] == "waiting"
    assert statuses[-1] == terminal
    assert all(status not in TERMINAL_STATUSES for status in statuses[:-1])
    # the status moves forward only: waiting -> processing -> terminal
    order = {"waiting": 0, "processing": 1, terminal: 2}
    assert [order[s] for s in statuses] == sorted(order[s] for s in statuses)
    # record_time is the last modification: strictly increasing with every change
    times = [record["record_time"] for record in timeline]
    assert times == sorted(times)
    assert len(set(times)) == len(times)
    final = timeline[-1]
    started = sorted(
        (sub for sub in sub_steps(final) if sub["start_time"]), key=lambda s: s["serial_num"]
    )
    # execution order is serial_num order, across steps
    assert [s["start_time"] for s in started] == sorted(s["start_time"] for s in started)
    serials = sorted(sub["serial_num"] for sub in sub_steps(final))
    assert serials == list(range(1, len(serials) + 1))
    for sub in started[:-1]:
        assert sub["status"] == "finished"
        assert sub["end_time"] >= sub["start_time"]
    last = started[-1]
    assert last["status"] == terminal
    step_statuses = {step["status"] for step in final["operation_process"].values()}
    if terminal == "finished":
        assert step_statuses == {"finished"}
        assert final["message"] is None
        assert final["cluster_info"]["node_infos"]
    else:
        assert terminal in step_statuses
        assert final["message"]
        assert final["cluster_info"]["node_infos"] is None


def test_the_failed_operation_says_why() -> None:
    engine = scenario()
    plan = next(p for p in engine.story_plans if p.spec.outcome == "failed")
    record = _timeline(engine, plan.operation_id)[-1]
    failed = [sub for sub in sub_steps(record) if sub["status"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["substep_name"] == TEMPLATES["add_org"].fail_at
    assert failed[0]["message"] == list(TEMPLATES["add_org"].failure)
    assert record["operation_process"]["Deploy Organization"]["status"] == "failed"
    assert "Insufficient cpu" in record["message"][0]
    # later sub-steps of the failed step never start
    later = record["operation_process"]["Deploy Organization"]["sub_steps"]
    assert later["Join peers to channels"]["status"] == ""


def test_the_stopped_operation_stops_mid_sub_step() -> None:
    engine = scenario()
    plan = next(p for p in engine.story_plans if p.spec.outcome == "stop")
    record = _timeline(engine, plan.operation_id)[-1]
    stopped = [sub for sub in sub_steps(record) if sub["status"] == "stop"]
    assert [sub["substep_name"] for sub in stopped] == ["Create peer nodes"]
    assert "Verification" not in record["operation_process"]
    assert record["message"] == ["The operation was stopped by the user."]


def test_story_settles_within_ten_simulated_minutes() -> None:
    for seed in range(20):
        engine = scenario(seed=seed)
        assert engine.story_settled_ns < at(600)
        records = engine.records_at(engine.story_settled_ns)
        assert all(r["operation_status"] in TERMINAL_STATUSES for r in records)


def test_records_never_change_between_plan_instants() -> None:
    engine = scenario()
    first = engine.next_change_after(at(100))
    assert first is not None
    assert engine.records_at(at(100)) == engine.records_at(first - 1)
    assert engine.records_at(first) != engine.records_at(first - 1)


def test_generated_episodes_keep_operations_coming() -> None:
    engine = scenario()
    settled = engine.records_at(at(599))
    later = engine.records_at(at(1199))
    assert len(later) > len(settled)
    new = {r["operation_id"] for r in later} - {r["operation_id"] for r in settled}
    assert any(op.split("-")[1] == "99" for op in new)
    assert episode_specs(7, 1, 600.0) == episode_specs(7, 1, 600.0)
    quiet = scenario(episodes=False)
    assert len(quiet.records_at(at(1199))) == len(quiet.records_at(at(599)))


def test_retention_drops_old_terminal_records() -> None:
    engine = scenario(episodes=False, retention=1800.0)
    names = {r["blockchain_name"] for r in engine.records_at(at(0))}
    assert "bcs-finance" not in names  # created two days ago, finished long since
    operation_types = [r["operation_type"] for r in engine.records_at(at(0))]
    assert operation_types == ["01"]  # only the running upgrade ended (or not) within 30 minutes


def test_records_are_newest_first() -> None:
    records = scenario().records_at(at(400))
    created = [int(r["operation_id"].rsplit("-", 1)[1]) for r in records]
    assert created == sorted(created, reverse=True)


def test_with_operations_adds_to_the_story_without_changing_the_rest() -> None:
    engine = scenario()
    extra = engine.with_operations(OperationSpec(at=10, kind="delete", blockchain="bcs-ledger"))
    before = engine.records_at(at(30))
    after = extra.records_at(at(30))
    assert [r for r in after if r["operation_type"] != "00"] == before
    added = [r for r in after if r["operation_type"] == "00"]
    assert len(added) == 1
    assert added[0]["operation_id"] == extra.story_plans[-1].operation_id
    assert extra.story_plans[-1].spec.kind == "delete"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "explode"}, "unknown operation kind"),
        ({"outcome": "exploded"}, "outcome must be one of"),
        ({"at_substep": "No such thing"}, "has no sub-step"),
    ],
    ids=["kind", "outcome", "substep"],
)
def test_operation_specs_are_validated(kwargs: dict[str, str], message: str) -> None:
    arguments: dict[str, Any] = {"at": 0, "kind": "create", "blockchain": "x"} | kwargs
    with pytest.raises(ValueError, match=message):
        OperationSpec(**arguments)


def test_every_template_plans_every_outcome() -> None:
    for index, kind in enumerate(TEMPLATES):
        for outcome in ("finished", "failed", "stop"):
            spec = OperationSpec(at=index, kind=kind, blockchain="bcs-x", outcome=outcome)
            engine = scenario(story=(spec,), episodes=False)
            plan = engine.story_plans[0]
            record = engine.records_at(plan.ended_ns)[0]
            assert record["operation_status"] == outcome
            assert record["operation_id"].startswith(
                f"{TEMPLATES[kind].resource_type}-{TEMPLATES[kind].operation_type}-"
            )


def test_default_story_is_a_tuple_of_specs() -> None:
    assert all(isinstance(spec, OperationSpec) for spec in DEFAULT_STORY)


def test_retention_bounds_the_records_of_a_long_run() -> None:
    engine = scenario(retention=86_400.0)
    late = at(30 * 86_400)
    records = engine.records_at(late)
    oldest = min(int(r["operation_id"].rsplit("-", 1)[1]) for r in records)
    assert late - oldest < 2 * 86_400 * NS
    assert 100 < len(records) < 1000
    # skipping the early episodes loses nothing retention would have kept
    everything = scenario(retention=None).plans_until(late)
    kept = {plan.operation_id for plan in everything if plan.ended_ns >= late - 86_400 * NS}
    assert {r["operation_id"] for r in records} == kept
