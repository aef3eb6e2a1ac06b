"""Scripted stories beyond :data:`~notifier.simulator.scenario.DEFAULT_STORY`.

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

from typing import Final

from notifier.simulator.scenario import DEFAULT_STORY, OperationSpec

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

STORIES: Final = {"default": DEFAULT_STORY, "stall": STALL_STORY, "demo": DEMO_STORY}
