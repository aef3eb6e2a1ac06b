"""The stories the simulator tells: what each kind of operation looks like, and when.

* :data:`TEMPLATES`: each kind of operation (create, delete, upgrade, add-on ...) as the API
  shows it: its resource and operation type, its steps and sub-steps with how long each
  usually takes, where it fails and what it says then;
* :class:`OperationSpec`: one scripted operation (what, on which blockchain, when, how it
  ends); a story is a sequence of them, turned into records by
  :class:`~notifier.simulator.scenario.Scenario`;
* :data:`DEFAULT_STORY`, :data:`STALL_STORY`, :data:`DEMO_STORY` (named in :data:`STORIES`
  for ``bcs-notifier simulate --story``) and :func:`episode_specs`, the generated episodes
  that follow the story in a long-running simulator.

``STALL_STORY``: twelve finished deletions whose only preparation sub-step took 2-3 s
(history the service learns from on its first poll), then, 60 s after the origin, a
deletion whose same sub-step hangs for 20 s before it finishes. With ``stall_floor = 5``
the threshold is ``max(5, 2.0 x 3.0 s) = 6 s``: one ``substep.stalled`` about 6 s into the
sub-step, and the ``substep.status_changed`` to finished when it moves.

``DEMO_STORY``: the default story with one stall the demo shows: the new blockchain's
"Create security group" (3-10 s in the history) hangs for three minutes, long enough to be
seen processing past its threshold even by a demo run 400 times faster than real time;
its cluster then comes up faster than usual to make up for it, so the story still settles
when it did.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

OUTCOMES: Final = ("finished", "failed", "stop")


# -- operation templates: each kind of operation --------------------------------------------------

#: (sub-step name, minimum seconds, maximum seconds)
SubStepTemplate = tuple[str, float, float]
StepTemplate = tuple[str, tuple[SubStepTemplate, ...]]


@dataclass(frozen=True, slots=True)
class Template:
    """The shape of one kind of operation: its steps, where it fails, what it says then."""

    kind: str
    resource_type: str
    operation_type: str
    steps: tuple[StepTemplate, ...]
    fail_at: str
    failure: tuple[str, ...]
    desc: str | None = None

    def sub_step_names(self) -> list[str]:
        return [sub[0] for _, subs in self.steps for sub in subs]


def _template(
    kind: str,
    resource_type: str,
    operation_type: str,
    steps: Sequence[StepTemplate],
    fail_at: str,
    failure: str,
    desc: str | None = None,
) -> Template:
    return Template(kind, resource_type, operation_type, tuple(steps), fail_at, (failure,), desc)


def _addon(kind: str, resource_type: str, label: str, failure: str) -> Template:
    return _template(
        kind,
        resource_type,
        "99",
        [
            ("Preparation", (("Generate add-on configurations", 0, 0),)),
            ("Deploy Add-on", ((f"Install {label} add-on", 15, 40), ("Check add-on status", 3, 8))),
        ],
        f"Install {label} add-on",
        failure,
    )


TEMPLATES: Final[dict[str, Template]] = {
    template.kind: template
    for template in (
        _template(
            "create",
            "BCSSVC01",
            "99",
            [
                (
                    "Preparation",
                    (("Generate basic configurations", 0, 0), ("Check resource quotas", 1, 4)),
                ),
                (
                    "Create Other Dependent Resource",
                    (
                        ("Create EIP", 0, 0),
                        ("Create network storage", 25, 70),
                        ("Create security group", 3, 10),
                    ),
                ),
                (
                    "Create Cluster",
                    (
                        ("Create CCE cluster", 100, 160),
                        ("Create node pool", 45, 90),
                        ("Wait for nodes to be ready", 30, 60),
                    ),
                ),
                (
                    "Deploy Blockchain",
                    (
                        ("Generate certificates", 3, 8),
                        ("Deploy orderer nodes", 20, 40),
                        ("Deploy peer nodes", 30, 60),
                        ("Create channel", 5, 12),
                        ("Instantiate chaincode", 10, 25),
                        ("Check blockchain status", 4, 10),
                    ),
                ),
            ],
            "Create node pool",
            "Failed to create node pool: insufficient ECS quota for flavor c6.xlarge.2 "
            "in AZ cn-north-4a.",
        ),
        _template(
            "create_ugbaas",
            "BCSSVC02",
            "99",
            [
                (
                    "Preparation",
                    (("Generate basic configurations", 0, 0), ("Check resource quotas", 1, 4)),
                ),
                (
                    "Create Other Dependent Resource",
                    (("Create EIP", 0, 0), ("Create network storage", 20, 50)),
                ),
                (
                    "Deploy Blockchain",
                    (
                        ("Generate certificates", 3, 8),
                        ("Deploy consensus nodes", 30, 60),
                        ("Deploy contract engine", 20, 40),
                        ("Check blockchain status", 4, 10),
                    ),
                ),
            ],
            "Deploy consensus nodes",
            "Consensus node node-2 did not become ready within 600s.",
        ),
        _template(
            "delete",
            "BCSSVC01",
            "00",
            [
                ("Preparation", (("Check dependent resources", 1, 3),)),
                (
                    "Delete Blockchain",
                    (
                        ("Delete peer nodes", 10, 25),
                        ("Delete orderer nodes", 8, 20),
                        ("Delete network storage", 5, 15),
                        ("Release EIP", 1, 3),
                    ),
                ),
            ],
            "Delete network storage",
            "SFS Turbo file system is still mounted by 1 client(s).",
        ),
        _template(
            "upgrade",
            "BCSSVC01",
            "01",
            [
                (
                    "Preparation",
                    (("Check blockchain status", 2, 5), ("Back up configurations", 5, 12)),
                ),
                (
                    "Upgrade Blockchain",
                    (("Upgrade orderer nodes", 20, 45), ("Upgrade peer nodes", 30, 70)),
                ),
                ("Verification", (("Check node health", 5, 12),)),
            ],
            "Upgrade peer nodes",
            "Peer peer-1-org1 failed its readiness probe after the upgrade.",
            desc="Upgrade blockchain {name} to the latest version",
        ),
        _template(
            "rollback",
            "BCSSVC01",
            "91",
            [
                ("Preparation", (("Check backup", 2, 5),)),
                (
                    "Roll Back Blockchain",
                    (("Roll back orderer nodes", 15, 35), ("Roll back peer nodes", 20, 50)),
                ),
                ("Verification", (("Check node health", 5, 12),)),
            ],
            "Roll back peer nodes",
            "Backup of peer peer-0-org1 is incomplete.",
            desc="Roll back the last upgrade of blockchain {name}",
        ),
        _template(
            "add_org",
            "BCSSVC01",
            "02",
            [
                (
                    "Preparation",
                    (("Generate organization certificates", 3, 8), ("Check resource quotas", 1, 4)),
                ),
                ("Create Other Dependent Resource", (("Create network storage", 20, 50),)),
                (
                    "Deploy Organization",
                    (
                        ("Deploy peer nodes", 25, 60),
                        ("Update channel configuration", 5, 15),
                        ("Join peers to channels", 5, 15),
                    ),
                ),
            ],
            "Deploy peer nodes",
            "Pod peer-0-org3 failed to start: 0/3 nodes are available: 3 Insufficient cpu.",
        ),
        _template(
            "scale_org",
            "BCSSVC01",
            "03",
            [
                ("Preparation", (("Check resource quotas", 1, 4),)),
                (
                    "Scale Organization",
                    (
                        ("Create peer nodes", 40, 90),
                        ("Join peers to channels", 5, 15),
                        ("Install chaincode on new peers", 10, 25),
                    ),
                ),
                ("Verification", (("Check peer status", 3, 8),)),
            ],
            "Create peer nodes",
            "Quota exceeded: no more than 10 peers per organization.",
        ),
        _template(
            "join_channel",
            "BCSSVC01",
            "04",
            [
                ("Preparation", (("Check channel configuration", 1, 4),)),
                (
                    "Join Channel",
                    (
                        ("Update channel configuration", 5, 15),
                        ("Join peers to channel", 5, 15),
                        ("Install chaincode", 10, 25),
                    ),
                ),
            ],
            "Update channel configuration",
            "Channel configuration update rejected: signature policy not satisfied "
            "(1 of 2 admins).",
        ),
        _template(
            "join_union",
            "BCSSVC01",
            "05",
            [
                ("Preparation", (("Validate invitation", 1, 3),)),
                (
                    "Join Union",
                    (
                        ("Exchange certificates", 5, 15),
                        ("Update union configuration", 10, 25),
                        ("Join union channel", 5, 15),
                    ),
                ),
            ],
            "Update union configuration",
            "The union invitation has expired.",
        ),
        _addon(
            "restful_addon",
            "PLUGIN01",
            "RESTful API",
            "Image pull failed: swr.cn-north-4.myhuaweicloud.com/bcs/restful-api: i/o timeout.",
        ),
        _addon(
            "trusted_addon",
            "PLUGIN02",
            "trusted computing",
            "The trusted execution environment is not available on the selected nodes.",
        ),
        _addon(
            "light_node_addon",
            "PLUGIN03",
            "light-node",
            "Light-node service port 30605 is already in use.",
        ),
    )
}


# -- scripted stories ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperationSpec:
    """One scripted operation: what, on which blockchain, when, and how it ends.

    ``at`` is in simulated seconds after the scenario's origin (negative: history that is
    already there at the origin). ``at_substep`` is where a ``failed``/``stop`` outcome
    happens (default: the template's usual failure point).
    """

    at: float
    kind: str
    blockchain: str
    outcome: str = "finished"
    at_substep: str | None = None
    #: sub-steps that take exactly this many seconds instead of their template's range,
    #: ``(("Create security group", 600.0),)``: a stalling or an unusually fast step (not
    #: in the repr, which seeds the story's randomness: other timings stay as they were)
    took: tuple[tuple[str, float], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        template = TEMPLATES.get(self.kind)
        if template is None:
            raise ValueError(f"unknown operation kind {self.kind!r} (one of {sorted(TEMPLATES)})")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")
        if self.at_substep is not None and self.at_substep not in template.sub_step_names():
            raise ValueError(f"{self.kind} has no sub-step {self.at_substep!r}")
        for name, seconds in self.took:
            if name not in template.sub_step_names():
                raise ValueError(f"{self.kind} has no sub-step {name!r}")
            if seconds < 0:
                raise ValueError(f"took: {name!r} cannot take {seconds} s")

    @property
    def template(self) -> Template:
        return TEMPLATES[self.kind]


#: The scripted story: three blockchains with history, one upgrade already running at the
#: origin, then a new blockchain, a failing "add organisation", a stopped "scale
#: organisation" and a "join channel". Everything is terminal about 480 s after the origin.
DEFAULT_STORY: Final[tuple[OperationSpec, ...]] = (
    OperationSpec(at=-2 * 86_400, kind="create", blockchain="bcs-finance"),
    OperationSpec(at=-7_200, kind="create", blockchain="bcs-ledger"),
    OperationSpec(at=-3_000, kind="restful_addon", blockchain="bcs-ledger"),
    OperationSpec(at=-40, kind="upgrade", blockchain="bcs-ledger"),
    OperationSpec(at=45, kind="create", blockchain="bcs-supply"),
    OperationSpec(at=70, kind="add_org", blockchain="bcs-finance", outcome="failed"),
    OperationSpec(at=150, kind="scale_org", blockchain="bcs-ledger", outcome="stop"),
    OperationSpec(at=300, kind="join_channel", blockchain="bcs-ledger"),
)


STALL_KIND: Final = "delete"
STALL_STEP: Final = "Preparation"
STALL_SUBSTEP: Final = "Check dependent resources"


def stall_story(
    *,
    history: int = 12,
    usual: tuple[float, float] = (2.0, 3.0),
    stalled_for: float = 20.0,
    start_at: float = 60.0,
) -> tuple[OperationSpec, ...]:
    """``history`` finished deletions whose :data:`STALL_SUBSTEP` took from ``usual[0]`` to
    ``usual[1]`` seconds (evenly spread), then one at ``start_at`` where it takes
    ``stalled_for`` seconds."""
    low, high = usual
    spread = (high - low) / (history - 1) if history > 1 else 0.0
    past = tuple(
        OperationSpec(
            at=-3_600.0 * (history - index),
            kind=STALL_KIND,
            blockchain=f"bcs-old-{index:02d}",
            took=((STALL_SUBSTEP, low + spread * index),),
        )
        for index in range(history)
    )
    stalling = OperationSpec(
        at=start_at,
        kind=STALL_KIND,
        blockchain="bcs-stuck",
        took=((STALL_SUBSTEP, stalled_for),),
    )
    return (*past, stalling)


STALL_STORY: Final = stall_story()

#: the sub-step of the demo's stall and how long it hangs there (simulated seconds)
DEMO_STALL: Final = ("Create security group", 180.0)
#: what makes up for it: fast but plausible (none of them is a stall)
_DEMO_FAST: Final = (
    ("Create CCE cluster", 40.0),
    ("Create node pool", 30.0),
    ("Wait for nodes to be ready", 20.0),
)


def _demo_story() -> tuple[OperationSpec, ...]:
    story = []
    for spec in DEFAULT_STORY:
        if spec.kind == "create" and spec.at > 0:
            spec = OperationSpec(  # noqa: PLW2901
                at=spec.at,
                kind=spec.kind,
                blockchain=spec.blockchain,
                outcome=spec.outcome,
                at_substep=spec.at_substep,
                took=(DEMO_STALL, *_DEMO_FAST),
            )
        story.append(spec)
    return tuple(story)


DEMO_STORY: Final = _demo_story()


# -- generated episodes after the story ---------------------------------------------------------

_STORY_CHAINS: Final = ("bcs-ledger", "bcs-finance", "bcs-supply")
_EPISODE_KINDS: Final = (
    "upgrade",
    "rollback",
    "add_org",
    "scale_org",
    "join_channel",
    "join_union",
    "restful_addon",
    "trusted_addon",
    "light_node_addon",
)
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


def _outcome(rng: random.Random, failed: float, stop: float) -> str:
    roll = rng.random()
    if roll < failed:
        return "failed"
    if roll < failed + stop:
        return "stop"
    return "finished"


def episode_specs(seed: int, index: int, period: float) -> tuple[OperationSpec, ...]:
    """The generated operations of episode ``index`` (>= 1), ``index * period`` after origin."""
    rng = random.Random(f"{seed}/episode/{index}")  # noqa: S311 - simulation, not security
    base = index * period
    chain = "bcs-" + "".join(rng.choice(_ALPHABET) for _ in range(6))
    kind = "create_ugbaas" if rng.random() < 0.2 else "create"
    create = OperationSpec(
        at=base + rng.uniform(0, period * 0.05),
        kind=kind,
        blockchain=chain,
        outcome=_outcome(rng, 0.15, 0.05),
    )
    specs = [create]
    for target in rng.sample(_STORY_CHAINS, k=rng.randint(0, 2)):
        specs.append(
            OperationSpec(
                at=base + rng.uniform(period * 0.1, period * 0.5),
                kind=rng.choice(_EPISODE_KINDS),
                blockchain=target,
                outcome=_outcome(rng, 0.2, 0.1),
            )
        )
    if create.outcome == "finished" and kind == "create" and rng.random() < 0.3:
        specs.append(OperationSpec(at=base + period * 0.9, kind="delete", blockchain=chain))
    return tuple(specs)


STORIES: Final = {"default": DEFAULT_STORY, "stall": STALL_STORY, "demo": DEMO_STORY}
