"""The scenario engine: what the simulated BCS back end holds at a given simulated time.

Pure and deterministic: a :class:`Scenario` is built from a seed, an origin (the simulated
time the story is anchored to) and a list of
:class:`~notifier.simulator.stories.OperationSpec` (the stories and the operation templates
are in :mod:`notifier.simulator.stories`); :meth:`Scenario.records_at`
maps a simulated time in nanoseconds to the operation records the real API would return, in
the exact shape of ``GET /v2/{project_id}/operation/record`` with its quirks:

* integer nanosecond timestamps, ``0`` for "not yet"; ``record_time`` is the last change;
* steps appear when they start; a started step lists all its sub-steps, the ones not yet
  started as ``"status": ""`` with ``"detail": "waiting"``;
* ``message``, ``detail``, ``desc`` and ``node_infos`` are ``null`` where nothing is known; a
  queued operation's ``operation_process`` is ``null``;
* maps keyed by names and serialised in key order (as Go does), not in execution order;
  sub-step ``serial_num`` counts across the whole operation, not per step;
* operation ids ``<resource_type>-<operation_type>-<19-digit creation nanoseconds>``.

After the scripted story, when ``episodes`` is on, a new generated episode starts every
``period`` simulated seconds, so a long-running simulator keeps producing new operations.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from notifier.simulator.stories import (
    DEFAULT_STORY,
    OUTCOMES,
    TEMPLATES,
    OperationSpec,
    Template,
    episode_specs,
)

NS: Final = 1_000_000_000
_EPISODE_SLACK_NS: Final = 3600 * NS


# -- plans: every timestamp of an operation, computed once -------------------------------------


@dataclass(frozen=True, slots=True)
class SubStepPlan:
    name: str
    serial_num: int
    start_ns: int | None  # None: never starts
    end_ns: int | None
    outcome: str = "finished"
    detail: str | None = None
    message: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class StepPlan:
    name: str
    serial_num: int
    sub_steps: tuple[SubStepPlan, ...]

    @property
    def start_ns(self) -> int | None:
        return self.sub_steps[0].start_ns if self.sub_steps else None


@dataclass(frozen=True, slots=True)
class OperationPlan:
    spec: OperationSpec
    operation_id: str
    blockchain_id: str
    created_ns: int
    ended_ns: int
    steps: tuple[StepPlan, ...]
    message: tuple[str, ...] | None
    desc: str | None
    cluster_name: str
    cluster_id: str
    nodes: tuple[tuple[str, str], ...] = field(default=())

    @property
    def outcome(self) -> str:
        return self.spec.outcome

    def times(self) -> list[int]:
        """Every instant the record changes."""
        moments = [self.created_ns, self.ended_ns]
        for step in self.steps:
            for sub in step.sub_steps:
                moments.extend(t for t in (sub.start_ns, sub.end_ns) if t is not None)
        return moments


def derived_uuid(*parts: object) -> str:
    """A stable UUID-shaped id from arbitrary parts (like the API's blockchain ids)."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def derived_hex(length: int, *parts: object) -> str:
    return hashlib.sha256("/".join(str(part) for part in parts).encode()).hexdigest()[:length]


def _seconds(rng: random.Random, low: float, high: float) -> int:
    if high <= 0:
        return 0
    return round(rng.uniform(low, high) * NS)


def plan_operation(seed: int, key: str, origin_ns: int, spec: OperationSpec) -> OperationPlan:
    """Every timestamp of one operation; a pure function of its inputs."""
    rng = random.Random(f"{seed}/{key}/{spec}")  # noqa: S311 - simulation, not security
    template = spec.template
    created_ns = origin_ns + round(spec.at * NS) + rng.randrange(NS)
    operation_id = f"{template.resource_type}-{template.operation_type}-{created_ns:019d}"
    stop_at = spec.at_substep or template.fail_at
    took = dict(spec.took)
    cursor = created_ns + _seconds(rng, 2, 6)  # queued ("waiting") first
    serial = 0
    ended_ns: int | None = None
    message: tuple[str, ...] | None = None
    steps: list[StepPlan] = []
    for step_index, (step_name, sub_templates) in enumerate(template.steps, start=1):
        subs: list[SubStepPlan] = []
        for name, low, high in sub_templates:
            serial += 1
            if ended_ns is not None:
                subs.append(SubStepPlan(name, serial, None, None))
                continue
            start = cursor
            end = start + _seconds(rng, low, high)
            if name in took:
                end = start + round(took[name] * NS)
            if spec.outcome != "finished" and name == stop_at:
                if spec.outcome == "failed":
                    subs.append(
                        SubStepPlan(name, serial, start, end, "failed", "failed", template.failure)
                    )
                    message = (f"{step_name} failed: {template.failure[0]}",)
                else:
                    end = start + max((end - start) // 2, NS)
                    subs.append(SubStepPlan(name, serial, start, end, "stop", "stopped by user"))
                    message = ("The operation was stopped by the user.",)
                ended_ns = end + _seconds(rng, 0.1, 0.5)
                continue
            subs.append(SubStepPlan(name, serial, start, end))
            cursor = end + _seconds(rng, 0.05, 1.0)
        steps.append(StepPlan(step_name, step_index, tuple(subs)))
        if ended_ns is not None:
            break
    if ended_ns is None:
        ended_ns = cursor + _seconds(rng, 0.5, 2.0)
    cluster_name = f"{spec.blockchain}-cce"
    nodes = tuple(
        (f"{spec.blockchain}-{role}", derived_uuid(seed, "node", spec.blockchain, role))
        for role in ("orderer-0", "peer-0-org1", "peer-1-org1")
    )
    return OperationPlan(
        spec=spec,
        operation_id=operation_id,
        blockchain_id=derived_uuid(seed, "blockchain", spec.blockchain),
        created_ns=created_ns,
        ended_ns=ended_ns,
        steps=tuple(steps),
        message=message,
        desc=template.desc.format(name=spec.blockchain) if template.desc else None,
        cluster_name=cluster_name,
        cluster_id=derived_uuid(seed, "cluster", spec.blockchain),
        nodes=nodes,
    )


# -- rendering: a plan at a given time, in the API's JSON shape ---------------------------------


def _render_sub_step(sub: SubStepPlan, now: int) -> dict[str, Any]:
    if sub.start_ns is None or sub.start_ns > now:
        status, detail, message, start, end = "", "waiting", None, 0, 0
    elif sub.end_ns is None or sub.end_ns > now:
        status, detail, message, start, end = "processing", None, None, sub.start_ns, 0
    else:
        status, detail = sub.outcome, sub.detail
        message = list(sub.message) if sub.message is not None else None
        start, end = sub.start_ns, sub.end_ns
    return {
        "substep_name": sub.name,
        "detail": detail,
        "status": status,
        "message": message,
        "start_time": start,
        "end_time": end,
        "serial_num": sub.serial_num,
    }


def _step_status(sub_steps: Iterable[dict[str, Any]]) -> str:
    statuses = [sub["status"] for sub in sub_steps]
    for terminal in ("failed", "stop"):
        if terminal in statuses:
            return terminal
    return "finished" if all(status == "finished" for status in statuses) else "processing"


def render_operation(
    plan: OperationPlan, now: int, *, project_id: str, domain_id: str
) -> dict[str, Any] | None:
    """The record of ``plan`` at simulated time ``now``; None before it exists."""
    if now < plan.created_ns:
        return None
    process: dict[str, Any] = {}
    for step in plan.steps:
        if step.start_ns is None or step.start_ns > now:
            continue
        sub_steps = {sub.name: _render_sub_step(sub, now) for sub in step.sub_steps}
        process[step.name] = {
            "step_name": step.name,
            "status": _step_status(sub_steps.values()),
            "detail": "",
            "sub_steps": dict(sorted(sub_steps.items())),
            "serial_num": step.serial_num,
        }
    status = plan.outcome if now >= plan.ended_ns else "processing" if process else "waiting"
    terminal = status in OUTCOMES
    template = plan.spec.template
    finished_chain = terminal and status == "finished" and template.kind != "delete"
    return {
        "operation_id": plan.operation_id,
        "resource_type": template.resource_type,
        "operation_type": template.operation_type,
        "domain_id": domain_id,
        "project_id": project_id,
        "blockchain_id": plan.blockchain_id,
        "blockchain_name": plan.spec.blockchain,
        "cluster_info": {
            "cluster_type": "cce",
            "name": plan.cluster_name,
            "cluster_id": plan.cluster_id,
            "node_infos": (
                [{"name": name, "id": node_id} for name, node_id in plan.nodes]
                if finished_chain
                else None
            ),
        },
        "operation_process": dict(sorted(process.items())) if process else None,
        "record_time": max(moment for moment in plan.times() if moment <= now),
        "operation_status": status,
        "message": list(plan.message) if terminal and plan.message is not None else None,
        "desc": plan.desc,
    }


class Scenario:
    """Deterministic records of a simulated BCS project over simulated time.

    ``records_at(t)`` depends only on the constructor arguments and ``t``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        origin_ns: int,
        project_id: str,
        domain_id: str,
        story: Sequence[OperationSpec] = DEFAULT_STORY,
        episodes: bool = True,
        period: float = 600.0,
        retention: float | None = 7 * 86_400.0,
    ) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.seed = seed
        self.origin_ns = origin_ns
        self.project_id = project_id
        self.domain_id = domain_id
        self.story = tuple(story)
        self.episodes = episodes
        self.period = period
        self.retention = retention
        self._story_plans = tuple(
            plan_operation(seed, f"story/{index}", origin_ns, spec)
            for index, spec in enumerate(self.story)
        )
        self._episode_plans: dict[int, tuple[OperationPlan, ...]] = {}
        self._lock = threading.Lock()

    def with_operations(self, *specs: OperationSpec) -> Scenario:
        """A copy with ``specs`` appended to the story."""
        return Scenario(
            seed=self.seed,
            origin_ns=self.origin_ns,
            project_id=self.project_id,
            domain_id=self.domain_id,
            story=self.story + specs,
            episodes=self.episodes,
            period=self.period,
            retention=self.retention,
        )

    @property
    def story_plans(self) -> tuple[OperationPlan, ...]:
        """The plans of the scripted story, in story order."""
        return self._story_plans

    @property
    def story_settled_ns(self) -> int:
        """When every operation of the scripted story has reached its terminal state."""
        return max((plan.ended_ns for plan in self._story_plans), default=self.origin_ns)

    def _episode(self, index: int) -> tuple[OperationPlan, ...]:
        with self._lock:
            plans = self._episode_plans.get(index)
            if plans is None:
                plans = tuple(
                    plan_operation(self.seed, f"episode/{index}/{number}", self.origin_ns, spec)
                    for number, spec in enumerate(episode_specs(self.seed, index, self.period))
                )
                self._episode_plans[index] = plans
            return plans

    def _forget_episodes_before(self, first: int) -> None:
        with self._lock:
            for index in [index for index in self._episode_plans if index < first]:
                del self._episode_plans[index]

    def plans_until(self, now: int) -> list[OperationPlan]:
        """Every operation created at or before ``now`` (and not yet purged by retention)."""
        plans = [plan for plan in self._story_plans if plan.created_ns <= now]
        if self.episodes and now >= self.origin_ns:
            period_ns = round(self.period * NS)
            last = int((now - self.origin_ns) // period_ns)
            first = 1
            if self.retention is not None:
                # an episode's operations start within its period and last well under an
                # hour: episodes that ended long before the retention horizon are skipped
                horizon = now - round(self.retention * NS) - period_ns - _EPISODE_SLACK_NS
                first = max(1, int((horizon - self.origin_ns) // period_ns))
                self._forget_episodes_before(first)
            for index in range(first, last + 1):
                plans.extend(plan for plan in self._episode(index) if plan.created_ns <= now)
        if self.retention is not None:
            horizon = now - round(self.retention * NS)
            plans = [plan for plan in plans if plan.ended_ns >= horizon]
        plans.sort(key=lambda plan: (plan.created_ns, plan.operation_id), reverse=True)
        return plans

    def records_at(self, now: int) -> list[dict[str, Any]]:
        """The API's ``operation_records`` at simulated time ``now``, newest first."""
        records = []
        for plan in self.plans_until(now):
            record = render_operation(
                plan, now, project_id=self.project_id, domain_id=self.domain_id
            )
            if record is not None:
                records.append(record)
        return records

    def next_change_after(self, now: int) -> int | None:
        """The first instant after ``now`` at which a story record changes (None: never)."""
        later = [t for plan in self._story_plans for t in plan.times() if t > now]
        return min(later) if later else None

    def plan(self, operation_id: str, now: int) -> OperationPlan | None:
        for plan in self.plans_until(now):
            if plan.operation_id == operation_id:
                return plan
        return None


__all__ = [
    "DEFAULT_STORY",
    "OUTCOMES",
    "TEMPLATES",
    "OperationPlan",
    "OperationSpec",
    "Scenario",
    "Template",
    "derived_hex",
    "derived_uuid",
    "episode_specs",
    "plan_operation",
    "render_operation",
]
